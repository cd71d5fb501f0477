#!/usr/bin/env bash
# Wake from sleep vs cold start, through llmvisor, with llmvisor-mock standing in
# for vLLM (its --startup-delay plays the weight loading, --wake-delay the wake).
#
#   bench/wake.sh            # about 30 s; prints a Markdown table
#   BENCH_PROFILE=debug bench/wake.sh   # use target/debug (no release build)
#
# Bounded: ROUNDS rounds (default 5) of cold start, sleep, wake; every wait has a
# deadline. Figures are reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${BENCH_ROUNDS:-5}
PORT=${BENCH_PORT:-18400}
LOAD=${BENCH_LOAD:-5s}     # the mock's "weight loading" (vLLM: 30-100 s for 8B-72B)
WAKE=${BENCH_WAKE:-300ms}  # the mock's wake (vLLM level-1 wake: well under a second)
PROFILE=${BENCH_PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release --locked --bins >&2; fi
BIN=$PWD/target/$PROFILE
work=$(mktemp -d)
lv=
trap 'kill $lv 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/wake.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
auth = "none"
[units]
manager = "process"
[gpu]
simulate = [{ name = "Sim 24G", memory = "24GiB" }]
[models.m]
kind = "command"
command = ["$BIN/llmvisor-mock", "--port", "{port}", "--served-name", "{served_name}", "--startup-delay", "$LOAD", "--wake-delay", "$WAKE"]
port = $((PORT + 1))
gpus = [0]
vram = "18GiB"
idle_action = "sleep"
idle_ttl = "1s"
TOML
"$BIN/llmvisor" serve --config "$work/wake.toml" 2>"$work/log" &
lv=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
req() { curl -s -o /dev/null -w '%{time_total}' -H 'content-type: application/json' \
  -d '{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}' \
  "http://127.0.0.1:$PORT/v1/chat/completions"; }
state() { curl -s "http://127.0.0.1:$PORT/health" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p'; }
wait_state() { for _ in $(seq 200); do [ "$(state)" = "$1" ] && return 0; sleep 0.05; done; echo "bench: not $1" >&2; exit 1; }
echo "| round | cold start (s) | wake (s) | ratio |"
echo "| --- | --- | --- | --- |"
for r in $(seq "$ROUNDS"); do
  curl -s -X POST "http://127.0.0.1:$PORT/admin/models/m/stop" >/dev/null
  wait_state stopped
  cold=$(req)
  wait_state sleeping
  wake=$(req)
  echo "| $r | $cold | $wake | $(awk -v c="$cold" -v w="$wake" 'BEGIN{printf "%.1fx", c/w}') |"
done
echo
echo "mock: --startup-delay $LOAD (cold), --wake-delay $WAKE (wake); llmvisor $PROFILE build"
