#!/usr/bin/env bash
# Make the Debian root the system tests boot with systemd-nspawn (cached: only the
# first run downloads). Needs root, debootstrap and systemd-container.
#   tests/system/prepare-root.sh [DIR]   (default $LLMVISOR_TEST_ROOT or
#                                         /var/cache/llmvisor-test/root)
set -euo pipefail
root=${1:-${LLMVISOR_TEST_ROOT:-/var/cache/llmvisor-test/root}}
if [ -x "$root/usr/lib/systemd/systemd" ] && [ -e "$root/.llmvisor-root-ok" ]; then
  echo "system test root: $root (cached)"
  exit 0
fi
rm -rf "$root"
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$root" \
  "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Nothing in the container needs a getty or the network configured.
chroot "$root" systemctl mask console-getty.service getty@tty1.service systemd-networkd.service \
  systemd-resolved.service >/dev/null 2>&1 || true
touch "$root/.llmvisor-root-ok"
echo "system test root: $root (built)"
