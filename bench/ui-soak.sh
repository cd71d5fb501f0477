#!/usr/bin/env bash
# A page left open (issue 19): does /ui grow in memory? llmvisor (release build)
# serves a mock model with no token delay; the page (headless Chromium, the
# driver of tests/ui) follows the Requests view and the model's log while SOAK_N
# requests go through one keep-alive connection, and one more /admin/events feed
# is opened and never read. Prints llmvisor's RSS (VmRSS) and the page's JS heap
# after a forced GC (CDP HeapProfiler.collectGarbage + Runtime.getHeapUsage) at
# 10 %, 25 %, 50 %, 75 % and 100 % of the run. Figures are reported, never asserted.
#
#   bench/ui-soak.sh              # 5,000 requests, about a minute after the build
#   SOAK_N=20000 bench/ui-soak.sh
#
# Loopback only, bounded in count.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${BENCH_PORT:-18600}
export SOAK_N=${SOAK_N:-5000} SOAK_MODEL=fast
# BENCH_PROFILE=debug: the debug build (faster to build; RSS figures larger).
PROFILE=${BENCH_PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release --locked --bins >&2; else cargo build --locked --bins >&2; fi
BIN=$PWD/target/$PROFILE
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
cat >"$dir/llmvisor.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
auth = "none"
[units]
manager = "process"
[models.fast]
kind = "command"
command = ["$BIN/llmvisor-mock", "--port", "{port}", "--served-name", "{served_name}", "--token-delay", "0ms"]
served_name = "fast"
port = $((PORT + 1))
TOML
STATE_DIRECTORY=$dir RUST_LOG=warn "$BIN/llmvisor" serve --config "$dir/llmvisor.toml" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
curl -sf -X POST "http://127.0.0.1:$PORT/admin/models/fast/start" >/dev/null
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/health" | grep -q '"state":"ready"' && break
  sleep 0.1
done
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
SOAK_PID=$pid $python tests/ui/drive.py "http://127.0.0.1:$PORT" soak "$dir/shots"
echo "llmvisor RSS at the end: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
