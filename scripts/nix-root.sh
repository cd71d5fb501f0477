#!/usr/bin/env bash
# A Nix that nixpkgs 25.11 supports, for scripts/check-nix.sh on Debian 12.
#
# Debian 12's nix-bin is 2.8; nixpkgs 25.11's lib asks for >= 2.18
# (lib/minfeatures.nix) and lib.fileset for builtins.readFileType (2.14). Debian 13
# (trixie) packages nix-bin 2.26. This script debootstraps a minimal trixie root with
# nix-bin in it (about 1.5 minutes, once; cached like the system-test root) and
# prints the root's path. check-nix.sh runs Nix from it with `chroot` (after
# mounting /proc, which Nix reads) and binds the repository into it.
#
#   scripts/nix-root.sh [DIR]     (default $LLMVISOR_NIX_ROOT, else
#                                  /var/cache/llmvisor-test/nix-root as root,
#                                  else ~/.cache/llmvisor-test/nix-root)
#   scripts/nix-root.sh --check   exit 0 when the root is complete, 1 if not
#
# Needs root and debootstrap (chroot and mounts need root as well).
set -euo pipefail

check=false
if [ "${1:-}" = --check ]; then
  check=true
  shift
fi
if [ -n "${1:-}" ]; then
  root=$1
elif [ -n "${LLMVISOR_NIX_ROOT:-}" ]; then
  root=$LLMVISOR_NIX_ROOT
elif [ "$(id -u)" = 0 ]; then
  root=/var/cache/llmvisor-test/nix-root
else
  root=${XDG_CACHE_HOME:-$HOME/.cache}/llmvisor-test/nix-root
fi

# Bump when the contents change, so cached roots are rebuilt.
STAMP="trixie nix-bin libdbi-perl v2"
if [ -x "$root/usr/bin/nix-instantiate" ] && [ "$(cat "$root/.llmvisor-nix-root-ok" 2>/dev/null)" = "$STAMP" ]; then
  $check && exit 0
  echo "$root"
  exit 0
fi
$check && exit 1

if [ "$(id -u)" != 0 ]; then
  echo "scripts/nix-root.sh: building the Nix root needs root (debootstrap, chroot)" >&2
  exit 1
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "scripts/nix-root.sh: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
}

# Nothing may be mounted in a root we are about to delete.
if [ -d "$root" ]; then
  while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done < <(awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r)
fi
rm -rf "$root"
mkdir -p "$(dirname "$root")"
start=$(date +%s)
# libdbi-perl: nix-bin's libdbd-sqlite3-perl depends on the virtual perl-dbdabi-94,
# which debootstrap does not resolve by itself.
debootstrap --variant=minbase --include=nix-bin,libdbi-perl trixie "$root" \
  "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
# Nix evaluates only: no build users, no sandbox, no substituters (no network).
mkdir -p "$root/etc/nix"
cat >"$root/etc/nix/nix.conf" <<'EOF'
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command flakes
EOF
# Nix reads /proc (its own executable, the garbage collector's stack bounds).
mount -t proc proc "$root/proc"
version=$(chroot "$root" nix-instantiate --version) || {
  umount "$root/proc"
  echo "scripts/nix-root.sh: nix-instantiate does not run in $root" >&2
  exit 1
}
umount "$root/proc"
echo "$STAMP" >"$root/.llmvisor-nix-root-ok"
echo "nix root: $version in $(($(date +%s) - start)) s" >&2
echo "$root"
