#!/usr/bin/env bash
# Cost of OpenTelemetry traces ([telemetry] otlp_endpoint): req/s at c=64 through
# two llmvisors in one run, one with traces off and one exporting every span to a
# collector, each in front of its own mock (same flags), legs alternated.
#
#   bench/trace.sh          # about 2 minutes; prints a Markdown table
#
# The collector is nginx answering 200 to every OTLP POST (it reads and discards
# the body): what is measured is llmvisor's side (making, queueing, encoding and
# sending the spans), not a collector's storage. Load is bounded in count and time
# and stays on loopback. Needs `oha` and nginx (as bench/run.sh). Reported, never
# asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v oha >/dev/null || { echo "bench: oha not found; cargo install oha --locked" >&2; exit 1; }
command -v nginx >/dev/null || apt-get install -y -qq nginx-light >&2
DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-3}
BASE=${BENCH_PORT:-18400}
OFF_PORT=$BASE ON_PORT=$((BASE + 1)) OFF_MOCK=$((BASE + 2)) ON_MOCK=$((BASE + 3)) SINK=$((BASE + 4))
cargo build --release --locked --bins >&2
BIN=$PWD/target/release
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

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

config() { # listen port, mock port, telemetry table
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
auth = "none"
[store]
enabled = false
$3
[models.fast]
kind = "command"
command = ["$BIN/llmvisor-mock", "--port", "{port}", "--served-name", "{served_name}", "--max-tokens", "16"]
port = $2
max_concurrent = 256
max_queue = 1024
idle_ttl = "0"
EOF
}
config "$OFF_PORT" "$OFF_MOCK" "" > "$work/off.toml"
# BENCH_OTLP: another collector address (a closed port measures the spans' making
# alone: the exporter then backs off and drops nearly all of them).
config "$ON_PORT" "$ON_MOCK" "[telemetry]
otlp_endpoint = \"${BENCH_OTLP:-http://127.0.0.1:$SINK}\"" > "$work/on.toml"
mkdir -p "$work/off" "$work/on"
STATE_DIRECTORY=$work/off RUST_LOG=warn "$BIN/llmvisor" serve --config "$work/off.toml" 2>"$work/off.log" & pids+=($!)
STATE_DIRECTORY=$work/on RUST_LOG=warn "$BIN/llmvisor" serve --config "$work/on.toml" 2>"$work/on.log" & pids+=($!)
body='{"model":"fast","max_tokens":16,"messages":[{"role":"user","content":"benchmark prompt of a few words"}]}'
for p in "$OFF_PORT" "$ON_PORT"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$p/v1/chat/completions" -H 'content-type: application/json' -d "$body" >/dev/null
done
rps() { oha --no-tui --output-format json -z "$DURATION" -c 64 -m POST -H 'content-type: application/json' \
  -d "$body" "http://127.0.0.1:$1/v1/chat/completions" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["summary"]["requestsPerSec"])'; }
metric() { curl -sf "http://127.0.0.1:$ON_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "| round | off req/s | on req/s | on / off |"
echo "| --- | --- | --- | --- |"
ratios=()
for r in $(seq "$ROUNDS"); do
  # Alternate which goes first, so a drift of the machine's load hits both.
  if [ $((r % 2)) -eq 1 ]; then off=$(rps "$OFF_PORT"); on=$(rps "$ON_PORT"); else on=$(rps "$ON_PORT"); off=$(rps "$OFF_PORT"); fi
  ratio=$(python3 -c "print(f'{$on / $off:.3f}')")
  ratios+=("$ratio")
  printf '| %s | %.0f | %.0f | %s |\n' "$r" "$off" "$on" "$ratio"
done
echo
echo "median on/off: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
echo "spans exported $(metric llmvisor_trace_spans_exported_total), dropped $(metric llmvisor_trace_spans_dropped_total), failed $(metric llmvisor_trace_spans_failed_total)"
echo "load average before $load_before, after $(cut -d' ' -f1 /proc/loadavg) ($(nproc) CPUs)"
