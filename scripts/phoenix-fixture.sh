#!/usr/bin/env bash
# A real OTLP backend for tests/tracing.rs: Arize Phoenix, the trace UI seed 001
# sends its gateway's spans to, from PyPI (`arize-phoenix`, pinned), in a venv
# cached outside the clone by version (about 850 MB; 3-5 minutes to install once):
#
#   $CACHE/phoenix-$VERSION/venv/bin/phoenix
#   $CACHE/phoenix -> phoenix-$VERSION/venv   (what tests/tracing.rs runs)
#
# CACHE as scripts/llama-fixture.sh: $LLMVISOR_TEST_CACHE, else
# /var/cache/llmvisor-test as root, else ${XDG_CACHE_HOME:-~/.cache}/llmvisor-test.
#
#   scripts/phoenix-fixture.sh           install what is missing, print the path
#   scripts/phoenix-fixture.sh --check   exit 0 when installed, 1 if not
set -euo pipefail
VERSION=${PHOENIX_VERSION:-20.26.1}
. "$(dirname "$0")/test-cache.sh"
dir=$cache/phoenix-$VERSION
installed() {
  [ -x "$dir/venv/bin/phoenix" ] && [ "$(cat "$dir/.built" 2>/dev/null)" = "$VERSION" ]
}
case "${1:-}" in
  --check) installed && [ "$(readlink "$cache/phoenix")" = "phoenix-$VERSION/venv" ]; exit ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
if ! installed; then
  echo "== phoenix: installing arize-phoenix==$VERSION into $dir (3-5 minutes; log: $dir/install.log)"
  t0=$(date +%s)
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m venv "$dir/venv" || {
    echo "phoenix: python3 -m venv failed (apt-get install python3-venv)" >&2
    exit 1
  }
  # --no-cache-dir: no second copy of the wheels in pip's cache. Only Phoenix is
  # pinned; its dependencies are what PyPI resolves to on the day.
  "$dir/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check "arize-phoenix==$VERSION" >"$dir/install.log" 2>&1 || {
    tail -n 40 "$dir/install.log" >&2
    echo "phoenix install failed; full log: $dir/install.log" >&2
    exit 1
  }
  echo "$VERSION" >"$dir/.built"
  echo "== phoenix: installed in $(($(date +%s) - t0)) s"
fi
ln -sfn "phoenix-$VERSION/venv" "$cache/phoenix"
echo "PHOENIX=$cache/phoenix/bin/phoenix"
