#!/usr/bin/env bash
# Everything CI checks: formatting, lints, the Nix files (parse, hosts' settings,
# module evaluation when NIXPKGS_LIB is set), unit and integration tests, and the
# official `openai` Python client against a running llmvisor.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== nix (flake, modules, hosts: scripts/check-nix.sh)"
scripts/check-nix.sh
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
