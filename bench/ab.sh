#!/usr/bin/env bash
# Two llmvisor binaries (or one binary under two environments) against each other,
# in one run, alternating A/B every round, so a machine whose load moves (2 shared
# cores) moves both legs alike. For build settings and hot-path changes: build the
# old binary, copy it aside, build the new one, compare.
#
#   bench/ab.sh OLD_BIN NEW_BIN            # 3 rounds, 5 s legs: about 3 minutes
#   AB_ENV_B='MIMALLOC_PURGE_DELAY=0' bench/ab.sh BIN BIN   # same binary, B with env
#
# Per leg, each in a fresh llmvisor: idle RSS once warm; CPU per proxied request at
# c=64 (utime+stime ÷ answered, as bench/run.sh); CPU per relayed SSE event over 256
# paced streams; peak RSS over the whole leg (c=64, the streams, then c=256). Each
# round also measures the backend directly and nginx (the peer), for the ratios.
# Prints every round and the medians with their spread; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1") B=$(realpath "$2")
ROUNDS=${AB_ROUNDS:-3}
DURATION=${AB_DURATION:-5s}
PORT=${AB_PORT:-18400}
FAST_PORT=$((PORT + 1)) PACED_PORT=$((PORT + 2)) NGINX_PORT=$((PORT + 4))
MOCK=${AB_MOCK:-$PWD/target/release/llmvisor-mock}
STREAMLOAD=${AB_STREAMLOAD:-$PWD/target/release/examples/streamload}
command -v oha >/dev/null || { echo "ab: oha not found; cargo install oha --locked" >&2; exit 1; }
work=$(mktemp -d)
lv= nginx_pid= sampler=
trap 'kill $lv $nginx_pid $sampler 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

mock() { printf '["%s", "--port", "{port}", "--served-name", "{served_name}"%s]' "$MOCK" "$1"; }
cat > "$work/ab.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
auth = "none"

[models.fast]
kind = "command"
command = $(mock ', "--max-tokens", "16"')
port = $FAST_PORT
max_concurrent = 256
max_queue = 1024
idle_ttl = "0"

[models.paced]
kind = "command"
command = $(mock ', "--max-tokens", "50", "--token-delay", "20ms"')
port = $PACED_PORT
max_concurrent = 256
idle_ttl = "0"
EOF
chat() { printf '{"model":"%s","max_tokens":%s,"messages":[{"role":"user","content":"benchmark prompt of a few words"}]}' "$1" "$2"; }
body=$(chat fast 16)
ohajson() { oha --no-tui --output-format json "$@" 2>/dev/null; }
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

start() { # start BIN ENV...: a fresh llmvisor with both models warm
  local bin=$1; shift
  if [ -n "$lv" ]; then kill "$lv" 2>/dev/null || true; wait "$lv" 2>/dev/null || true; fi
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$FAST_PORT/health" || break; sleep 0.1; done
  env STATE_DIRECTORY="$work" RUST_LOG=warn "$@" "$bin" serve --config "$work/ab.toml" 2>>"$work/llmvisor.log" &
  lv=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' -d "$(chat fast 1)" >/dev/null
  curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' -d "$(chat paced 1)" >/dev/null
}

if command -v nginx >/dev/null; then
  mkdir -p "$work/nginx"
  cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  upstream mock { server 127.0.0.1:$FAST_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; tcp_nodelay on; }
  }
}
NGINX
fi

leg() { # leg NAME BIN ENV...
  local name=$1 a b; shift
  start "$@"
  sleep 1
  rss_kb "$lv" > "$work/$name.idle"
  ( max=0; while kill -0 "$lv" 2>/dev/null; do r=$(rss_kb "$lv" 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$max" ] && max=$r; echo "$max" > "$work/$name.peak.tmp"; mv "$work/$name.peak.tmp" "$work/$name.peak"; sleep 0.1; done ) & sampler=$!
  a=$(ticks "$lv")
  ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$PORT/v1/chat/completions" > "$work/$name.c64.json"
  b=$(ticks "$lv"); echo $((b - a)) > "$work/$name.c64.cpu"
  a=$(ticks "$lv")
  "$STREAMLOAD" --url "http://127.0.0.1:$PORT" --model paced --concurrency 256 --requests 768 --max-tokens 50 > "$work/$name.sse.json"
  b=$(ticks "$lv"); echo $((b - a)) > "$work/$name.sse.cpu"
  ohajson -z "$DURATION" -c 256 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$PORT/v1/chat/completions" > "$work/$name.c256.json"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=
}

read -r -a ENV_A <<< "${AB_ENV_A:-}"
read -r -a ENV_B <<< "${AB_ENV_B:-}"
uptime > "$work/load_start"
for r in $(seq "$ROUNDS"); do
  echo "ab: round $r of $ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  # Direct and nginx against the fast mock, which the A leg's llmvisor starts.
  start "$A" "${ENV_A[@]}"
  ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$FAST_PORT/v1/chat/completions" > "$work/direct.$r.json"
  if command -v nginx >/dev/null; then
    nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & nginx_pid=$!
    sleep 0.5
    pids="$nginx_pid $(cat /proc/"$nginx_pid"/task/*/children)"
    a=$(ticks $pids)
    ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" > "$work/nginx.$r.json"
    b=$(ticks $pids); echo $((b - a)) > "$work/nginx.$r.cpu"
    kill "$nginx_pid" || true; wait "$nginx_pid" 2>/dev/null || true; nginx_pid=
  fi
  # Alternate which goes first, so neither always follows the direct leg.
  if [ $((r % 2)) = 1 ]; then
    leg "A.$r" "$A" "${ENV_A[@]}"; leg "B.$r" "$B" "${ENV_B[@]}"
  else
    leg "B.$r" "$B" "${ENV_B[@]}"; leg "A.$r" "$A" "${ENV_A[@]}"
  fi
done
uptime > "$work/load_end"

python3 - "$work" "$ROUNDS" "$A" "$B" "${AB_ENV_A:-}" "${AB_ENV_B:-}" <<'PY'
import json, os, statistics, sys
w, n = sys.argv[1], int(sys.argv[2])
HZ = os.sysconf('SC_CLK_TCK')
def j(f): return json.load(open(os.path.join(w, f)))
def num(f): return int(open(os.path.join(w, f)).read().strip() or 0) if os.path.exists(os.path.join(w, f)) else 0
def have(f): return os.path.exists(os.path.join(w, f))
def answered(r): return sum(r.get("statusCodeDistribution", {}).values())
def rps(r): return r["summary"]["requestsPerSec"]
figs = {}
for v in "AB":
    for r in range(1, n + 1):
        p = f"{v}.{r}"
        c64, sse = j(p + ".c64.json"), j(p + ".sse.json")
        events = sse["tokens"] + 3 * sse["ok"]
        d = rps(j(f"direct.{r}.json"))
        figs.setdefault(v, []).append({
            "cpu_req_us": num(p + ".c64.cpu") / HZ / answered(c64) * 1e6,
            "rps_ratio": rps(c64) / d,
            "sse_us": num(p + ".sse.cpu") / HZ / events * 1e6,
            "peak_mb": num(p + ".peak") / 1024,
            "idle_mb": num(p + ".idle") / 1024,
            "errors": (1 - c64["summary"]["successRate"]) + (1 - j(p + ".c256.json")["summary"]["successRate"]) + sse["errors"],
        })
ng = [(num(f"nginx.{r}.cpu") / HZ / answered(j(f"nginx.{r}.json")) * 1e6, rps(j(f"nginx.{r}.json")) / rps(j(f"direct.{r}.json")))
      for r in range(1, n + 1) if have(f"nginx.{r}.json")]
print(f"A = {sys.argv[3]} {sys.argv[5]}".rstrip())
print(f"B = {sys.argv[4]} {sys.argv[6]}".rstrip())
print(f"load at start: {open(os.path.join(w, 'load_start')).read().strip()}")
print(f"load at end:   {open(os.path.join(w, 'load_end')).read().strip()}\n")
names = [("cpu_req_us", "CPU per request, c=64 (µs)", 1), ("rps_ratio", "req/s c=64, ratio to direct", 3),
         ("sse_us", "CPU per SSE event, 256 paced streams (µs)", 2), ("peak_mb", "peak RSS, c=64 + 256 streams + c=256 (MB)", 1),
         ("idle_mb", "idle RSS, warm (MB)", 1), ("errors", "errors", 0)]
print("| figure | A rounds | B rounds | A median | B median | B / A |")
print("| --- | --- | --- | --- | --- | --- |")
for k, label, dp in names:
    a = [f[k] for f in figs["A"]]; b = [f[k] for f in figs["B"]]
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = f"{mb / ma:.3f}" if ma else ""
    fmt = lambda xs: ", ".join(f"{x:.{dp}f}" for x in xs)
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {ma:.{dp}f} | {mb:.{dp}f} | {ratio} |")
if ng:
    print(f"\nnginx, same rounds: CPU per request {', '.join(f'{c:.1f}' for c, _ in ng)} µs; req/s ratio to direct {', '.join(f'{x:.3f}' for _, x in ng)}")
PY
