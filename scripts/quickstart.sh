#!/usr/bin/env bash
# Build llmvisor and serve the quick start: three mock models on 127.0.0.1:8080.
# Stop with Ctrl-C; every model process stops with it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked --bins
export PATH="$PWD/target/release:$PATH"
echo "llmvisor: http://127.0.0.1:8080 (models: chat, big, embed; try: curl -s localhost:8080/v1/models)"
exec llmvisor serve --config examples/quickstart.toml "$@"
