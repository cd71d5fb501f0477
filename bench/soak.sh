#!/usr/bin/env bash
# Soak and slow-client attacks: llmvisor (release build, the shipped [server]
# defaults but a 10 s write_timeout so the non-reading clients are cut inside the
# run) serving the mock, normal requests on 4 keep-alive connections throughout,
# and in the middle phase 5,000 idle sockets, 200 slow-body senders and 20 streams
# that are never read (bench/soak.py). Prints RSS, fds, connections and requests
# in flight before, during and after, the normal requests' latency per phase, and
# each attack's outcomes.
#
#   bench/soak.sh            # about 1.5 minutes after the build
#   BENCH_PHASE=60 bench/soak.sh
#
# Loopback only (attackers bind 127.0.0.2 and up, so they are other clients),
# bounded in count and time. Figures are reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE=${BENCH_PHASE:-20}
LV_PORT=${BENCH_PORT:-18500}
FAST_PORT=$((LV_PORT + 1)) LONG_PORT=$((LV_PORT + 2))

# The attackers hold about 5,300 sockets; llmvisor raises its own soft limit.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 6000 ] || {
  echo "bench/soak.sh: the open-file limit is $(ulimit -n); 6000 are needed" >&2
  exit 1
}

cargo build --release --locked --bins >&2
BIN=$PWD/target/release
work=$(mktemp -d)
lv=
trap '[ -n "$lv" ] && kill "$lv" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

mock() { printf '["%s", "--port", "{port}", "--served-name", "{served_name}"%s]' "$BIN/llmvisor-mock" "$1"; }
cat >"$work/soak.toml" <<EOF
[units]
manager = "process"

[server]
listen = "127.0.0.1:$LV_PORT"
auth = "none"
write_timeout = "10s"

[store]
enabled = false

[models.fast]
kind = "command"
command = $(mock ', "--max-tokens", "8"')
port = $FAST_PORT
max_concurrent = 64
idle_ttl = "0"

[models.long]
kind = "command"
command = $(mock ', "--max-tokens", "1000000"')
port = $LONG_PORT
max_concurrent = 32
idle_ttl = "0"
EOF

"$BIN/llmvisor" serve --config "$work/soak.toml" --log-level warn 2>"$work/llmvisor.log" &
lv=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$LV_PORT/health" >/dev/null && break
  sleep 0.1
done
# Warm both models.
curl -sf "http://127.0.0.1:$LV_PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "fast", "messages": [{"role": "user", "content": "hi"}]}' >/dev/null
curl -sf "http://127.0.0.1:$LV_PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "long", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}' >/dev/null

echo "bench/soak.sh: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, phases of ${PHASE} s"
echo
python3 bench/soak.py --url "http://127.0.0.1:$LV_PORT" --pid "$lv" --model fast --stream-model long --phase "$PHASE"
echo
echo "llmvisor's warnings and errors during the run:"
grep -cE ' (WARN|ERROR) ' "$work/llmvisor.log" | sed 's/^/  lines: /'
grep -E ' (WARN|ERROR) ' "$work/llmvisor.log" | sed -E 's/^[^ ]+ //' | sort | uniq -c | sort -rn | head -5
