#!/usr/bin/env bash
# Build dependencies of llmvisor beyond Rust: a C compiler (mimalloc), pkg-config
# and libsystemd's headers (the journal reader). Installs them with apt-get when
# missing (as root, or through sudo); says what to install otherwise.
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || need+=(libsystemd-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
elif command -v sudo >/dev/null 2>&1; then
  sudo apt-get update -q
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
else
  echo "llmvisor needs: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 1
fi
