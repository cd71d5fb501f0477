#!/usr/bin/env bash
# Build llmvisor and serve the quick start: three mock models on 127.0.0.1:8080.
# Another example: `scripts/quickstart.sh examples/two-gpu.toml` (seed 003's two-GPU
# layout with routes and keys) or `examples/homelab.toml`. Extra arguments go to
# `llmvisor serve`. Stop with Ctrl-C; every model process stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."
config=examples/quickstart.toml
if [ $# -gt 0 ] && [ "${1%.toml}" != "$1" ]; then
  config=$1
  shift
fi
scripts/deps.sh
cargo build --release --locked --bins
export PATH="$PWD/target/release:$PATH"
llmvisor check-config --config "$config"
echo "llmvisor: http://127.0.0.1:8080 ($config; try: curl -s localhost:8080/health)"
exec llmvisor serve --config "$config" "$@"
