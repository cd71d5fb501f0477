#!/usr/bin/env bash
# Real backend: llama.cpp's llama-server on the tiny GGUF (scripts/llama-fixture.sh),
# streamed through llmvisor and straight to the same server process, in one run:
# tokens per second delivered and time to first token, at 1 and 4 streams at once,
# plus the cold start (first token of a request to the stopped model).
#
#   bench/real.sh           # about 1 minute after the build; prints a Markdown table
#
# Bounded in count and time, loopback only. The legs alternate (direct, llmvisor,
# direct, llmvisor, …) so that drift of the machine hits both alike; the table shows
# the median of the rounds. Figures are reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${BENCH_ROUNDS:-3}
TOKENS=${BENCH_TOKENS:-128}
LV_PORT=${BENCH_PORT:-18400}
LLAMA_PORT=$((LV_PORT + 1))

scripts/llama-fixture.sh --check || {
  echo "bench/real.sh: the fixture is missing; run scripts/llama-fixture.sh (about 8 minutes)" >&2
  exit 1
}
# shellcheck disable=SC1090
. <(scripts/llama-fixture.sh --print)

cargo build --release --locked --bin llmvisor --example streamload >&2
BIN=$PWD/target/release
STREAMLOAD=$BIN/examples/streamload
work=$(mktemp -d)
lv=
trap '[ -n "$lv" ] && kill "$lv" 2>/dev/null; wait 2>/dev/null; [ -n "${BENCH_KEEP:-}" ] && echo "bench: kept $work" >&2 || rm -rf "$work"' EXIT

# --ignore-eos and --temp 0 as the server's defaults: every request generates exactly
# max_tokens tokens (the tiny model would otherwise stop at a random </s>).
cat >"$work/bench.toml" <<EOF
[server]
listen = "127.0.0.1:$LV_PORT"
auth = "none"

[units]
manager = "process"

[models.tiny]
kind = "llama-cpp"
executable = "$LLMVISOR_LLAMA_SERVER"
model = "$LLMVISOR_TINY_GGUF"
port = $LLAMA_PORT
context_length = 4096
max_concurrent = 4
idle_ttl = "0"
extra_args = ["--ignore-eos", "--temp", "0"]
EOF

RUST_LOG=warn "$BIN/llmvisor" serve --config "$work/bench.toml" 2>"$work/llmvisor.log" &
lv=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$LV_PORT/health" >/dev/null && break; sleep 0.1; done

# Cold start: the first streamed token of a request to the stopped model, 3 times.
: >"$work/cold.jsonl"
for _ in 1 2 3; do
  "$STREAMLOAD" --url "http://127.0.0.1:$LV_PORT" --model tiny --concurrency 1 --requests 1 \
    --max-tokens 8 >>"$work/cold.jsonl"
  curl -s -X POST "http://127.0.0.1:$LV_PORT/admin/models/tiny/stop" >/dev/null
  for _ in $(seq 200); do
    curl -s "http://127.0.0.1:$LV_PORT/health" | grep -q '"tiny":{[^}]*"state":"stopped"' && break
    sleep 0.05
  done
done
# Warm it (and the server's caches) before the measured legs.
"$STREAMLOAD" --url "http://127.0.0.1:$LV_PORT" --model tiny --concurrency 4 --requests 8 \
  --max-tokens 16 >/dev/null

: >"$work/legs.jsonl"
for round in $(seq "$ROUNDS"); do
  for c in 1 4; do
    n=$((c * 8))
    for leg in direct llmvisor; do
      port=$LLAMA_PORT
      [ "$leg" = llmvisor ] && port=$LV_PORT
      echo "bench: round $round, $leg, $c stream(s) at once, $n streams of $TOKENS tokens" >&2
      "$STREAMLOAD" --url "http://127.0.0.1:$port" --model tiny --concurrency "$c" --requests "$n" \
        --max-tokens "$TOKENS" --timeout-secs 120 |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r["leg"]=sys.argv[1]; r["c"]=int(sys.argv[2]); print(json.dumps(r))' "$leg" "$c" \
          >>"$work/legs.jsonl"
    done
  done
done

"$LLMVISOR_LLAMA_SERVER" --version 2>&1 | grep -m1 -i version >"$work/version" || true
python3 - "$work" "$TOKENS" "$ROUNDS" <<'PY'
import json, os, platform, statistics, sys
w, tokens, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
legs = [json.loads(l) for l in open(os.path.join(w, "legs.jsonl"))]
cold = [json.loads(l) for l in open(os.path.join(w, "cold.jsonl"))]
version = open(os.path.join(w, "version")).read().strip() or "llama-server"
# Every stream generates exactly `tokens` tokens (--ignore-eos): tokens/s counts
# those of the streams that completed. (streamload counts `content` events, fewer
# than tokens here: llama-server holds back byte tokens until they form UTF-8.)
for r in legs:
    r["tps"] = r["ok"] * tokens / r["elapsed_s"]
def med(leg, c, key):
    return statistics.median(r[key] for r in legs if r["leg"] == leg and r["c"] == c)
def errs(leg):
    return sum(r["errors"] for r in legs if r["leg"] == leg)
total = {leg: sum(r["requests"] for r in legs if r["leg"] == leg) for leg in ("direct", "llmvisor")}
errors = sum(r["errors"] for r in legs) + sum(r["errors"] for r in cold)
bad_gw = sum(1 for l in open(os.path.join(w, "llmvisor.log")) if "status=502" in l)
print(f"Machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; loopback; "
      f"release build; {version}; tiny GGUF (2 layers, width 64, F32), {tokens} tokens per stream, "
      f"median of {rounds} alternating rounds.\n")
print("| measure | direct to llama-server | through llmvisor | result |")
print("| --- | --- | --- | --- |")
for c in (1, 4):
    d, l = med("direct", c, "tps"), med("llmvisor", c, "tps")
    print(f"| tokens/s, {c} stream(s) at once | {d:.0f} | {l:.0f} | {l / d:.3f}x |")
    d, l = med("direct", c, "ttft_p50_ms"), med("llmvisor", c, "ttft_p50_ms")
    print(f"| time to first token p50, {c} stream(s) at once | {d:.2f} ms | {l:.2f} ms | {l - d:+.2f} ms |")
cs = " / ".join(f"{r['ttft_p50_ms']:.0f} ms" for r in cold)
print(f"| cold start: first token of a request to the stopped model | | {cs} | |")
print(f"| streams that failed | {errs('direct')} of {total['direct']} | {errs('llmvisor')} of {total['llmvisor']} | |")
print(f"\nErrors during the run: {errors} (llmvisor answered 502 {bad_gw} times: the backend closed a reused connection).")
PY
