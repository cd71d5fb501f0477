#!/usr/bin/env bash
# vLLM's own command-line parser, for tests/engines.rs: vLLM from PyPI in a venv cached
# outside the clone, keyed by the vLLM version the `vllm` kind is written for. No GPU
# is needed: tests/engines.rs parses every rendered `vllm serve` argv with vLLM's own
# parser (scripts/vllm-parse.py) in one Python process.
#
# The venv holds exactly scripts/vllm-parser-requirements.txt (pip --no-deps): vLLM,
# torch with the CUDA libraries it links (torch does not import without them), and
# every package `vllm serve`'s parser imports; not the GPU kernel packages it never
# imports (triton, flashinfer, ...). Measured 2026-12-01: 6.1 GB, installed in 519 s; the full
# `pip install vllm==0.33.0` would be about 9.4 GB.
#
#   $CACHE/vllm-$VERSION/venv/            the venv
#   $CACHE/vllm-$VERSION/install.log
#   $CACHE/vllm-$VERSION/install-seconds  how long the install took
#   $CACHE/vllm-$VERSION/size             du -sh of the venv
#   $CACHE/vllm-$VERSION/.installed       the requirements' hash, written last
#
# CACHE is $LLMVISOR_TEST_CACHE, else /var/cache/llmvisor-test as root, else
# ${XDG_CACHE_HOME:-~/.cache}/llmvisor-test (as for scripts/llama-fixture.sh). pip's
# temporary files go under $CACHE too (TMPDIR), so a tmpfs cache keeps them off disk.
#
#   scripts/vllm-fixture.sh           install when missing, print the venv's python
#   scripts/vllm-fixture.sh --check   exit 0 when installed, 1 if not
#   scripts/vllm-fixture.sh --print   print the venv's python (install nothing)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
reqs=$repo/scripts/vllm-parser-requirements.txt
# The version the `vllm` kind is written for (docs/configuration.md, "kind = vllm").
VERSION=$(sed -n 's/^vllm==//p' "$reqs")
ID=$(sha256sum <"$reqs" | cut -d' ' -f1)

. "$(dirname "$0")/test-cache.sh"
dir=$cache/vllm-$VERSION
py=$dir/venv/bin/python

complete() { [ -x "$py" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$ID" ]; }

case "${1:-}" in
  --check) complete; exit ;;
  --print) echo "$py"; exit ;;
  "") ;;
  *) echo "usage: $0 [--check|--print]" >&2; exit 2 ;;
esac

if complete; then
  echo "== vllm $VERSION: cached in $dir (installed in $(cat "$dir/install-seconds" 2>/dev/null || echo '?') s, $(cat "$dir/size" 2>/dev/null || echo '?'))"
  echo "$py"
  exit 0
fi

umask 022
mkdir -p "$dir"
avail=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
if [ "$avail" -lt $((9 * 1024 * 1024)) ]; then
  echo "vllm-fixture: $dir has $((avail / 1024 / 1024)) GB free; the venv needs about 9 GB while installing (6.1 GB after)" >&2
  exit 1
fi
echo "== vllm $VERSION: installing into $dir/venv (about 9 minutes, 6.1 GB; log: $dir/install.log)"
t0=$(date +%s)
rm -rf "$dir/venv" "$dir/.installed" "$dir/tmp"
mkdir -p "$dir/tmp"
python3 -m venv "$dir/venv"
# Two rounds, the CUDA libraries and torch first, so that the downloaded wheels of
# only one round sit next to the venv. --no-cache-dir: no second copy in pip's cache.
big='^(torch|nvidia-|cuda-)'
pipi() { TMPDIR=$dir/tmp "$py" -m pip install --disable-pip-version-check --no-cache-dir --no-deps "$@"; }
{
  pipi $(grep -E "$big" "$reqs") && pipi $(grep -v '^#' "$reqs" | grep -Ev "$big")
} >"$dir/install.log" 2>&1 || {
  tail -n 40 "$dir/install.log" >&2
  echo "vllm install failed; full log: $dir/install.log" >&2
  rm -rf "$dir/tmp"
  exit 1
}
rm -rf "$dir/tmp"
# The parser imports (about 13 s): a broken venv fails here, not in the test.
VLLM_TARGET_DEVICE=cpu "$py" -c 'import vllm.entrypoints.cli.serve' >>"$dir/install.log" 2>&1 || {
  tail -n 20 "$dir/install.log" >&2
  echo "vllm installed but its CLI does not import; full log: $dir/install.log" >&2
  exit 1
}
t1=$(date +%s)
echo "$((t1 - t0))" >"$dir/install-seconds"
du -sh "$dir/venv" | cut -f1 >"$dir/size"
echo "$ID" >"$dir/.installed"
chmod -R a+rX "$dir"
echo "== vllm $VERSION: installed in $((t1 - t0)) s, $(cat "$dir/size")"
echo "$py"
