#!/usr/bin/env bash
# Make the Debian root the system tests boot with systemd-nspawn (cached: only the
# first run downloads). Needs root, debootstrap and systemd-container.
#   tests/system/prepare-root.sh [DIR]   (default $LLMVISOR_TEST_ROOT or
#                                         /var/cache/llmvisor-test/root)
set -euo pipefail
root=${1:-${LLMVISOR_TEST_ROOT:-/var/cache/llmvisor-test/root}}
# The version of what the root holds: a root made by an older version of this
# script is made again.
version=3
if [ -x "$root/usr/lib/systemd/systemd" ] && [ "$(cat "$root/.llmvisor-root-ok" 2>/dev/null)" = "$version" ]; then
  echo "system test root: $root (cached)"
  exit 0
fi
rm -rf "$root"
mkdir -p "$(dirname "$root")"
# restic, sqlite3 and PostgreSQL's server: tests/system_backup.rs runs
# llmvisor.backup's scripts with them (n8n's database is a PostgreSQL one).
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,restic,sqlite3,postgresql-15 bookworm "$root" \
  "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The test runs PostgreSQL's server as NixOS does (its own units, its own data
# directory): Debian's cluster and its units go.
chroot "$root" pg_dropcluster 15 main >/dev/null 2>&1 || true
chroot "$root" systemctl disable postgresql.service >/dev/null 2>&1 || true
# Nothing in the container needs a getty or the network configured.
chroot "$root" systemctl mask console-getty.service getty@tty1.service systemd-networkd.service \
  systemd-resolved.service >/dev/null 2>&1 || true
echo "$version" >"$root/.llmvisor-root-ok"
echo "system test root: $root (built)"
