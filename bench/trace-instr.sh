#!/usr/bin/env bash
# Cost of traces ([telemetry] otlp_endpoint) in instructions per request: a count,
# not a time, so it does not move with the machine's load (bench/trace.sh's req/s
# ratio on 2 shared cores moves by ±10 % between rounds; this does not).
#
# llmvisor runs under valgrind's callgrind with instrumentation off; a keep-alive
# client warms it up (W requests), instrumentation goes on, N sequential chat
# requests go to a warm `llmvisor-mock` model (not instrumented: a child process),
# llmvisor is given 2 s to export what it queued, and instrumentation goes off. The
# count covers every thread of llmvisor: the request path, and with traces on the
# making, queueing, encoding and sending of the spans to a collector stand-in
# (nginx answering 200 to every OTLP POST). Once with traces off, once on.
#
#   bench/trace-instr.sh              # target/release if built; N=2000
#   N=500 BIN=target/debug bench/trace-instr.sh
#   SAMPLE=0.1 bench/trace-instr.sh   # traces on with [telemetry] sample_ratio = 0.1
#
# At c=1 the exporter copies the threads' small chunks into one export or not,
# as its timing falls: the whole-process count moves by about ±650 between runs
# (docs/benchmarks.md, session 34). The trace module's own functions' count
# (printed last: `RequestSpan::*`, `Shared::push`, ..., their self cost) does
# not move: 1,701 and 1,703 in the two runs that read +2,932 and +4,208. KEEP=1
# keeps the callgrind files for a per-function comparison.
#
# The kernel's share (system calls) is not counted; traces add one POST per 512
# spans and a `traceparent` header to each backend request. Loopback only; bounded
# by N. Reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$([ -x target/release/llmvisor ] && echo target/release || echo target/debug)}
BIN=$(cd "$BIN" && pwd)
N=${N:-2000}
W=${W:-200}
PORT=${BENCH_PORT:-18820}
SINK=$((PORT + 5))
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >&2
command -v nginx >/dev/null || apt-get install -y -qq nginx-light >&2
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"' EXIT

mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_max_body_size 64m;
  client_body_buffer_size 4m;
  server {
    listen 127.0.0.1:$SINK;
    location = /v1/traces { default_type application/x-protobuf; return 200 ""; }
  }
}
NGINX
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)

cat > "$work/load.py" <<'PY'
import http.client, json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"model": "m", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "benchmark prompt of a few words"}]})
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    d = r.read()
    assert r.status == 200, (r.status, d)
PY

# One leg: prints the instructions per request; $1 off|on.
leg() {
  local telemetry="" pid total
  [ "$1" = on ] && telemetry="[telemetry]
otlp_endpoint = \"http://127.0.0.1:$SINK\"
sample_ratio = ${SAMPLE:-1.0}"
  cat > "$work/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
auth = "none"
[units]
manager = "process"
[store]
enabled = false
$telemetry
[models.m]
kind = "command"
command = ["$BIN/llmvisor-mock", "--port", "{port}", "--served-name", "m", "--max-tokens", "16"]
port = $((PORT + 1))
max_concurrent = 64
idle_ttl = "0"
TOML
  mkdir -p "$work/$1"
  STATE_DIRECTORY=$work/$1 RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/$1.cg" "$BIN/llmvisor" serve --config "$work/$1.toml" \
    2>"$work/$1.log" &
  pid=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
  python3 "$work/load.py" "$W" "$PORT"
  sleep 2 # the warm-up's spans exported before counting starts
  callgrind_control -i on "$pid" >/dev/null
  python3 "$work/load.py" "$N" "$PORT"
  sleep 2 # the exporter lingers up to 500 ms; what it queued is sent
  callgrind_control -i off "$pid" >/dev/null
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(awk '/^totals:/ {print $2; exit}' "$work/$1.cg")
  python3 -c "print(f'{$total / $N:.0f}')"
}
off=$(leg off)
on=$(leg on)
echo "| traces | instructions per request (llmvisor, user space) |"
echo "| --- | --- |"
echo "| off | $off |"
echo "| on | $on |"
echo
python3 -c "print(f'on / off: {$on / $off:.3f} ($(( on - off )) instructions per request for traces; sample_ratio ${SAMPLE:-1.0}, N=$N, $BIN)')"
# The trace module's own functions (their self cost, the calls they make not
# counted): the request path's share, which does not move with the exporter's
# timing at c=1 as the whole process's does.
own() {
  callgrind_annotate --inclusive=no --auto=no --threshold=100 "$work/$1.cg" 2>/dev/null |
    awk '/llmvisor::telemetry::trace::/ {gsub(",", "", $1); s += $1} END {print s + 0}'
}
python3 -c "print(f'the trace module\'s own functions: {($(own on) - $(own off)) / $N:.0f} instructions per request more (their self cost)')"
