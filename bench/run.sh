#!/usr/bin/env bash
# Overhead of llmvisor against the same backend reached directly, in one run.
#
#   bench/run.sh            # about 2 minutes; prints a Markdown table
#
# Load is bounded in count and time and stays on loopback. Needs `oha`
# (`cargo install oha --locked`); streams are measured by bench/streamload.rs
# because oha reports whole responses only. Targets are reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v oha >/dev/null || { echo "bench: oha not found; cargo install oha --locked" >&2; exit 1; }
# The peer leg is always there: Debian's nginx-light.
command -v nginx >/dev/null || apt-get install -y -qq nginx-light >&2 || echo "bench: no nginx; the peer leg is skipped" >&2
DURATION=${BENCH_DURATION:-10s}
LV_PORT=${BENCH_PORT:-18300}
FAST_PORT=$((LV_PORT + 1)) PACED_PORT=$((LV_PORT + 2)) COLD_PORT=$((LV_PORT + 3)) NGINX_PORT=$((LV_PORT + 4))

cargo build --release --locked --bins --example streamload >&2
BIN=$PWD/target/release
STREAMLOAD=$PWD/target/release/examples/streamload
work=$(mktemp -d)
nginx_pid=
trap 'kill "$lv" $nginx_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

mock() { printf '["%s", "--port", "{port}", "--served-name", "{served_name}"%s]' "$BIN/llmvisor-mock" "$1"; }
cat > "$work/bench.toml" <<EOF
[server]
listen = "127.0.0.1:$LV_PORT"
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

[models.cold]
kind = "command"
command = $(mock ', "--startup-delay", "2s", "--max-tokens", "4"')
port = $COLD_PORT
idle_ttl = "0"
EOF
# 20 routes with three rules each, all reaching `fast`: the routed leg asks for the
# last one, whose rules test the endpoint and the estimated prompt length (so every
# request is estimated), against the same model asked for by name.
for i in $(seq -w 0 19); do
  cat >> "$work/bench.toml" <<EOF

[routes.r$i]
targets = ["fast"]
[[routes.r$i.rules]]
endpoints = ["embeddings"]
targets = ["fast"]
[[routes.r$i.rules]]
min_prompt_tokens = 100000
targets = ["fast"]
[[routes.r$i.rules]]
max_prompt_tokens = 50000
endpoints = ["chat/completions"]
targets = ["fast"]
EOF
done

STATE_DIRECTORY=$work RUST_LOG=warn "$BIN/llmvisor" serve --config "$work/bench.toml" 2>"$work/llmvisor.log" &
lv=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$LV_PORT/health" >/dev/null && break; sleep 0.1; done

chat() { printf '{"model":"%s","max_tokens":%s,"messages":[{"role":"user","content":"benchmark prompt of a few words"}]}' "$1" "$2"; }
# Start both warm models through llmvisor; the direct leg then hits the same processes.
curl -sf "http://127.0.0.1:$LV_PORT/v1/chat/completions" -H 'content-type: application/json' -d "$(chat fast 1)" >/dev/null
curl -sf "http://127.0.0.1:$LV_PORT/v1/chat/completions" -H 'content-type: application/json' -d "$(chat paced 1)" >/dev/null

# Peak RSS of llmvisor while the load runs.
rss_sampler() { local max=0; while kill -0 "$lv" 2>/dev/null; do
  r=$(awk '/VmRSS/{print $2}' "/proc/$lv/status" 2>/dev/null || echo 0); [ "${r:-0}" -gt "$max" ] && max=$r
  echo "$max" > "$work/rss_kb"; sleep 0.2; done; }
rss_sampler & sampler=$!

ohajson() { oha --no-tui --output-format json "$@" 2>/dev/null; }
# utime + stime (clock ticks) of processes and all their threads.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
# Run a command and write the CPU ticks the processes $PIDS spent meanwhile to $1.
cpu_of() { local out=$1; shift; local a b; a=$(ticks $PIDS); "$@"; b=$(ticks $PIDS); echo $((b - a)) > "$out"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
idle_rss=$(rss_kb "$lv")

# A peer for scale: nginx as a plain keep-alive reverse proxy to the same backend
# (optional; Debian's nginx-light). It does no parsing, routing or queueing.
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
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & nginx_pid=$!
  sleep 0.5
fi
body=$(chat fast 16)
echo "bench: c=64 throughput, $DURATION per leg" >&2
ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$FAST_PORT/v1/chat/completions" > "$work/direct64.json"
PIDS=$lv cpu_of "$work/lv64.cpu" ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/lv64.json"
routed=$(chat r19 16)
# Routing cost: the model by name and the 20-route table, alternating, same process.
for round in 1 2; do
  ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/named64_$round.json"
  ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$routed" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/routed64_$round.json"
done
if [ -n "$nginx_pid" ]; then
  nginx_pids="$nginx_pid $(cat /proc/"$nginx_pid"/task/*/children)"
  PIDS=$nginx_pids cpu_of "$work/nginx64.cpu" ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" > "$work/nginx64.json"
  ohajson -n 3000 -c 1 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" > "$work/nginx1.json"
fi
echo "bench: c=1 latency, 3000 requests per leg" >&2
ohajson -n 3000 -c 1 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$FAST_PORT/v1/chat/completions" > "$work/direct1.json"
ohajson -n 3000 -c 1 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/lv1.json"
ohajson -n 3000 -c 1 -m POST -H 'content-type: application/json' -d "$routed" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/routed1.json"
echo "bench: time to first streamed byte, c=1, 1000 streams per leg" >&2
"$STREAMLOAD" --url "http://127.0.0.1:$FAST_PORT" --model fast --concurrency 1 --requests 1000 > "$work/direct_ttfb.json"
"$STREAMLOAD" --url "http://127.0.0.1:$LV_PORT" --model fast --concurrency 1 --requests 1000 > "$work/lv_ttfb.json"
echo "bench: 256 paced streams (a token every 20 ms, 50 tokens), 1280 streams per leg" >&2
"$STREAMLOAD" --url "http://127.0.0.1:$PACED_PORT" --model paced --concurrency 256 --requests 1280 --max-tokens 50 > "$work/direct_paced.json"
PIDS=$lv cpu_of "$work/lv_paced.cpu" "$STREAMLOAD" --url "http://127.0.0.1:$LV_PORT" --model paced --concurrency 256 --requests 1280 --max-tokens 50 > "$work/lv_paced.json"
echo "bench: c=256 non-streaming, for the peak RSS" >&2
ohajson -z "$DURATION" -c 256 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/lv256.json"
kill "$sampler" 2>/dev/null || true

echo "bench: cold start with a backend that is healthy after 2 s, 3 times" >&2
: > "$work/cold.txt"
for _ in 1 2 3; do
  curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://127.0.0.1:$LV_PORT/v1/chat/completions" \
    -H 'content-type: application/json' -d "$(chat cold 1)" >> "$work/cold.txt"
  curl -s -X POST "http://127.0.0.1:$LV_PORT/admin/models/cold/stop" >/dev/null
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$LV_PORT/health" | grep -q '"cold":{[^}]*"state":"stopped"' && break; sleep 0.05
  done
done

echo "bench: the usage store on and off, each in a fresh llmvisor, alternating, c=64, $DURATION per leg" >&2
cp "$work/bench.toml" "$work/bench-store-on.toml"
cp "$work/bench.toml" "$work/bench-store-off.toml"
printf '\n[store]\nenabled = false\n' >> "$work/bench-store-off.toml"
restart() {
  kill "$lv" 2>/dev/null; wait "$lv" 2>/dev/null || true
  STATE_DIRECTORY=$work RUST_LOG=warn LLMVISOR_THREAD_PER_CORE=${TPC:-0} "$BIN/llmvisor" serve --config "$work/bench-store-$1.toml" 2>>"$work/llmvisor.log" &
  lv=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$LV_PORT/health" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$LV_PORT/v1/chat/completions" -H 'content-type: application/json' -d "$(chat fast 1)" >/dev/null
}
for round in 1 2 3; do
  for mode in on off; do
    restart "$mode"
    ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/store_${mode}64_$round.json"
    if [ "$mode" = on ]; then
      sleep 0.5
      curl -s "http://127.0.0.1:$LV_PORT/metrics" | awk '/^llmvisor_store_(written|dropped)_records_total/{print $1, $2}' > "$work/store_counts.txt"
      # CPU of the writer thread (utime + stime, clock ticks) for those rows.
      for t in /proc/$lv/task/*; do
        [ "$(cat "$t/comm")" = llmvisor-store ] && awk '{print "writer_ticks", $14 + $15}' "$t/stat" >> "$work/store_counts.txt"
      done
    fi
  done
done

echo "bench: thread-per-core vs the multi-thread runtime, fresh process each, alternating, c=64, $DURATION per leg" >&2
for round in 1 2; do
  for tpc in 0 1; do
    TPC=$tpc restart off
    PIDS=$lv cpu_of "$work/tpc${tpc}_$round.cpu" ohajson -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$LV_PORT/v1/chat/completions" > "$work/tpc${tpc}_$round.json"
  done
done
echo "$idle_rss" > "$work/idle_rss_kb"
uptime > "$work/uptime"

python3 - "$work" <<'PY'
import json, os, platform, sys
w = sys.argv[1]
HZ = os.sysconf('SC_CLK_TCK')
def j(name): return json.load(open(os.path.join(w, name)))
def cpu(name): return int(open(os.path.join(w, name)).read().strip() or 0) / HZ
def have(name): return os.path.exists(os.path.join(w, name))
d64, l64, d1, l1 = j("direct64.json"), j("lv64.json"), j("direct1.json"), j("lv1.json")
dt, lt, dp, lp = j("direct_ttfb.json"), j("lv_ttfb.json"), j("direct_paced.json"), j("lv_paced.json")
rss_mb = int(open(os.path.join(w, "rss_kb")).read().strip() or 0) / 1024
idle_mb = int(open(os.path.join(w, "idle_rss_kb")).read().strip() or 0) / 1024
cold = [float(x) for x in open(os.path.join(w, "cold.txt")).read().split()]
def rps(r): return r["summary"]["requestsPerSec"]
def ok(r): return r["summary"]["successRate"]
def answered(r): return sum(r.get("statusCodeDistribution", {}).values())
def p(r, q): return r["latencyPercentiles"][q] * 1000
def us_per(cpu_s, n): return cpu_s / n * 1e6 if n else float("nan")
rows = []
def row(name, direct, through, result, target, met):
    verdict = "" if target.startswith("(") else ("met" if met else "**missed**")
    rows.append(f"| {name} | {direct} | {through} | {result} | {target} | {verdict} |")
ratio = rps(l64) / rps(d64)
lv_us = us_per(cpu("lv64.cpu"), answered(l64))
ng = have("nginx64.json")
if ng:
    n64, n1 = j("nginx64.json"), j("nginx1.json")
    ng_us = us_per(cpu("nginx64.cpu"), answered(n64))
    nratio = rps(n64) / rps(d64)
    row("CPU per proxied request, c=64 (utime+stime / answered)", f"nginx {ng_us:.1f} µs", f"{lv_us:.1f} µs", f"{lv_us / ng_us:.2f}x nginx's", "<= nginx", lv_us <= ng_us)
    row("req/s, c=64, ratio to direct", f"{rps(d64):.0f} (nginx {rps(n64):.0f} = {nratio:.2f}x)", f"{rps(l64):.0f}", f"{ratio:.2f}x", ">= nginx's ratio", ratio >= nratio)
else:
    row("CPU per proxied request, c=64", "", f"{lv_us:.1f} µs", "", "(no nginx)", True)
    row("req/s, c=64, ratio to direct", f"{rps(d64):.0f}", f"{rps(l64):.0f}", f"{ratio:.2f}x", "(no nginx)", True)
added = p(l1, "p50") - p(d1, "p50")
row("p50 latency, c=1", f"{p(d1,'p50'):.3f} ms", f"{p(l1,'p50'):.3f} ms", f"+{added:.3f} ms", "<= +0.10 ms", added <= 0.10)
if ng:
    row("  nginx p50 latency, c=1", f"{p(d1,'p50'):.3f} ms", f"{p(n1,'p50'):.3f} ms (nginx)", f"+{p(n1,'p50')-p(d1,'p50'):.3f} ms", "(context)", True)
row("p99 latency, c=1", f"{p(d1,'p99'):.3f} ms", f"{p(l1,'p99'):.3f} ms", f"+{p(l1,'p99')-p(d1,'p99'):.3f} ms", "(reported)", True)
addb = lt["ttfb_p50_ms"] - dt["ttfb_p50_ms"]
row("time to first streamed byte, p50, c=1", f"{dt['ttfb_p50_ms']:.3f} ms", f"{lt['ttfb_p50_ms']:.3f} ms", f"+{addb:.3f} ms", "<= +1 ms", addb <= 1.0)
# Each paced stream is a role event, 50 token events, a final event and [DONE].
events = lp["tokens"] + 3 * lp["ok"]
sse_us = us_per(cpu("lv_paced.cpu"), events)
row("CPU per relayed SSE event, 256 paced streams", "", f"{sse_us:.2f} µs ({events} events)", "", "<= 5 µs", sse_us <= 5)
tr = lp["tokens_per_s"] / dp["tokens_per_s"]
row("tokens/s, 256 paced streams", f"{dp['tokens_per_s']:.0f}", f"{lp['tokens_per_s']:.0f}", f"{tr:.3f}x", ">= 0.99x", tr >= 0.99)
row("peak RSS under c=256 load / idle", "", f"{rss_mb:.1f} MB / {idle_mb:.1f} MB", "", "< 30 / < 15 MB", rss_mb < 30 and idle_mb < 15)
def rounds(prefix, n): return [rps(j(f"{prefix}_{r}.json")) for r in range(1, n + 1)]
son, soff = rounds("store_on64", 3), rounds("store_off64", 3)
sr = sum(son) / sum(soff)
per_round = ", ".join(f"{a / b:.3f}" for a, b in zip(son, soff))
counts = dict(l.split() for l in open(os.path.join(w, "store_counts.txt")) if l.strip())
row("usage store on vs off, req/s c=64 (fresh process each, 3 alternating rounds)", f"{sum(soff)/3:.0f} (off)", f"{sum(son)/3:.0f} (on)", f"{sr:.3f}x (rounds {per_round})", ">= 0.97x", sr >= 0.97)
written = float(counts.get('llmvisor_store_written_records_total', 0))
ticks = float(counts.get('writer_ticks', 0)) / HZ
per = f", writer CPU {ticks:.2f} s = {ticks / written * 1e6:.1f} µs/row" if written else ""
row("  rows written / dropped in the last store-on leg", "", f"{written:.0f} / {float(counts.get('llmvisor_store_dropped_records_total', 0)):.0f}{per}", "", "(reported)", True)
r1 = j("routed1.json")
named, routed = sum(rounds("named64", 2)) / 2, sum(rounds("routed64", 2)) / 2
rr = routed / named
row("routing: 20 routes x 3 rules, req/s c=64 (vs the model by name, alternating, 2 rounds)", f"{named:.0f}", f"{routed:.0f}", f"{rr:.3f}x", ">= 0.97x", rr >= 0.97)
row("routing: p50 latency c=1 (vs the model by name)", f"{p(l1,'p50'):.3f} ms", f"{p(r1,'p50'):.3f} ms", f"+{p(r1,'p50')-p(l1,'p50'):.3f} ms", "(reported)", True)
worst = max(cold)
row("cold start: first byte, 2 s backend", "", " / ".join(f"{c:.3f} s" for c in cold), f"worst {worst:.3f} s", "<= 2.15 s", worst <= 2.15)
tpc = {m: [(rps(j(f"tpc{m}_{r}.json")), us_per(cpu(f"tpc{m}_{r}.cpu"), answered(j(f"tpc{m}_{r}.json")))) for r in (1, 2)] for m in (0, 1)}
def avg(m, i): return sum(x[i] for x in tpc[m]) / 2
row("runtime: thread-per-core vs multi-thread, req/s c=64 (2 alternating rounds)", f"{avg(0,0):.0f} (multi-thread)", f"{avg(1,0):.0f} (per core)", f"{avg(1,0)/avg(0,0):.3f}x", "(reported)", True)
row("runtime: CPU per request, thread-per-core vs multi-thread", f"{avg(0,1):.1f} µs", f"{avg(1,1):.1f} µs", f"{avg(1,1)/avg(0,1):.3f}x", "(reported)", True)
errors = (1 - ok(d64)) + (1 - ok(l64)) + (1 - ok(d1)) + (1 - ok(l1)) + (1 - ok(j("lv256.json"))) + dt["errors"] + lt["errors"] + dp["errors"] + lp["errors"]
load = open(os.path.join(w, "uptime")).read().strip()
print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; loopback; release build; at the end: {load}\n")
print("| measure | direct (or peer) | through llmvisor | result | target | |")
print("| --- | --- | --- | --- | --- | --- |")
print("\n".join(rows))
print(f"\nErrors during the run: {errors:g} (success rates and stream errors summed).")
PY
