#!/usr/bin/env bash
# Heap allocations per proxied request: a count, not a time, so it does not move
# with the machine's load. Uprobes on mimalloc's entry points in the llmvisor
# binary (`mi_malloc_aligned`, `mi_zalloc_aligned`, `mi_realloc_aligned`: what the
# `mimalloc` crate's GlobalAlloc calls; C code, so LTO does not inline them away)
# count every allocation llmvisor makes while a keep-alive client sends N
# sequential chat requests to one warm llmvisor-mock model, non-streaming and
# streaming. Optionally the top allocation sites (DWARF call graphs; the debug
# build names them best).
#
#   bench/allocs.sh                      # target/release if built, else target/debug; N=1000
#   BIN=target/debug N=300 SITES=1 bench/allocs.sh
#
# Needs root, perf (Debian's linux-perf) and tracefs (mounted here if missing).
# Loopback only; bounded by N. Reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$([ -x target/release/llmvisor ] && echo target/release || echo target/debug)}
BIN=$(cd "$BIN" && pwd)
N=${N:-1000}
PORT=${BENCH_PORT:-18780}
command -v perf >/dev/null || apt-get install -y -qq linux-perf >&2
[ -e /sys/kernel/tracing/uprobe_events ] || mount -t tracefs nodev /sys/kernel/tracing
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  perf probe -q -d 'probe_llmvisor:*' 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/llmvisor.toml" <<TOML
[server]
listen = ["127.0.0.1:$PORT"]
auth = "none"

[units]
manager = "process"

[store]
enabled = false

[models.m]
kind = "command"
command = ["$BIN/llmvisor-mock", "--port", "{port}", "--served-name", "m", "--max-tokens", "16"]
port = $((PORT + 1))
max_concurrent = 64
TOML
cat > "$work/load.py" <<'PY'
import http.client, json, sys
n, stream, port = int(sys.argv[1]), sys.argv[2] == "stream", int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"model": "m", "max_tokens": 16, "stream": stream,
                   "messages": [{"role": "user", "content": "hello there"}]})
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse()
    d = r.read()
    assert r.status == 200, (r.status, d)
PY
perf probe -q -d 'probe_llmvisor:*' 2>/dev/null || true
for f in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
  perf probe -q -x "$BIN/llmvisor" --add "$f"
done
"$BIN/llmvisor" serve --config "$work/llmvisor.toml" > "$work/llmvisor.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf "127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
python3 "$work/load.py" 20 plain "$PORT"   # cold start and warm-up
events=-eprobe_llmvisor:mi_malloc_aligned,probe_llmvisor:mi_zalloc_aligned,probe_llmvisor:mi_realloc_aligned
echo "| leg | requests | allocations | per request |"
echo "| --- | --- | --- | --- |"
for leg in idle plain stream; do
  if [ $leg = idle ]; then
    cmd=(sleep 2)
  else
    cmd=(python3 "$work/load.py" "$N" "$leg" "$PORT")
  fi
  total=$(perf stat -x, "$events" -p "$pid" -- "${cmd[@]}" 2>&1 >/dev/null |
    awk -F, '$1 ~ /^[0-9]+$/ {s += $1} END {print s + 0}')
  if [ $leg = idle ]; then
    echo "| idle, 2 s | 0 | $total | |"
  else
    echo "| $leg | $N | $total | $(awk -v t="$total" -v n="$N" 'BEGIN {printf "%.1f", t / n}') |"
  fi
done
if [ -n "${SITES:-}" ]; then
  perf record -q -e probe_llmvisor:mi_malloc_aligned -e probe_llmvisor:mi_zalloc_aligned \
    --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- python3 "$work/load.py" 200 plain "$PORT" 2>/dev/null
  perf script -i "$work/perf.data" 2>/dev/null | python3 -c '
import collections, re, sys
skip = re.compile(r"^(alloc::|core::|std::|__rust|<alloc::|<core::|<std::|hashbrown|<hashbrown|_?mi_|<T as alloc|bytes::bytes_mut|<bytes::bytes_mut)")
sites = collections.Counter()
for s in sys.stdin.read().split("\n\n"):
    frames = [re.sub(r"\+0x[0-9a-f]+$", "", l.strip().split(None, 1)[1].rsplit(" (", 1)[0])
              for l in s.strip().split("\n")[1:] if len(l.strip().split(None, 1)) == 2]
    site = next((f for f in frames if not skip.match(f)), None)
    if site:
        sites[site[:120]] += 1
print("\nTop allocation sites, per non-streaming request (first frame outside std/alloc):")
for k, v in sites.most_common(25):
    print(f"  {v / 200:5.2f}  {k}")
'
fi
