#!/usr/bin/env bash
# The Nix checks that run without a binary cache (the rest is `nix flake check`, on a
# machine with Nix and KVM; see docs/nixos.md):
#
#  1. every .nix file parses, with a Nix that nixpkgs 25.11 supports (>= 2.18);
#  2. flake.lock is a lock file of version 7 that pins nixpkgs;
#  3. `llmvisor check-config` accepts the settings each example host generates
#     (tests/nix-eval/hosts/<host>.toml, kept equal to the module's output by 4);
#  4. with NIXPKGS_LIB (a checkout of nix-community/nixpkgs.lib): every module, the
#     flake's wiring, the package's attributes, the hosts and the VM tests' nodes are
#     evaluated with lib.evalModules against stubs checked against the real NixOS
#     modules (tests/nix-eval/README.md); their checks must hold and every generated
#     TOML must pass `llmvisor check-config`;
#  5. with NIXOS_REAL_MODULES too (a directory holding nixos/modules/..., such as a
#     nixpkgs checkout, kept outside this repository): the same cases once more
#     with the REAL NixOS firewall (firewall.nix, firewall-iptables.nix,
#     firewall-nftables.nix), nftables and Tailscale modules in place of their
#     stubs, so their own assertions count; reported as `real:<case>`. Without it,
#     this part is skipped loudly (not a CI failure: CI has no nixpkgs).
#
# Which Nix: Debian 12's nix-bin is 2.8, too old for nixpkgs 25.11's lib
# (lib/minfeatures.nix), so as root the checks run Nix 2.26 from a Debian 13 root
# made by scripts/nix-root.sh (cached; `chroot` with /proc and the repository
# bind-mounted at the same paths). Otherwise a `nix-instantiate` on PATH of version
# >= 2.18 is used. Without either it skips loudly (under CI=true it fails). Nix reads
# a configuration of our own (no build users, no substituters), and what it prints
# on stderr is kept apart from the JSON it prints on stdout.
#
# The scripts a module writes for a VM test (vm-backup's) are golden files in
# tests/system/, which the system tests run for real; after a deliberate change of
# the module, UPDATE_GOLDEN=1 writes them anew (review the diff).
#
# LLMVISOR_BIN names the llmvisor binary to use (default: target/debug/llmvisor,
# built when missing or older than src/).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

loud() {
  echo "*** SKIPPED: $* ***" >&2
}

skip() {
  loud "$@"
  if [ "${CI:-}" = true ]; then
    echo "under CI=true this is a failure" >&2
    exit 1
  fi
}

# Nix's configuration: ours alone, so a machine without a nixbld group (or with
# someone's substituters) evaluates the same way.
work=$(mktemp -d)
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/nix-conf"
printf '%s\n' 'build-users-group =' 'sandbox = false' 'substituters =' \
  'experimental-features = nix-command flakes' >"$work/nix-conf/nix.conf"
export NIX_CONF_DIR=$work/nix-conf

# "nix-instantiate (Nix) 2.26.3" -> is it >= 2.18?
version_ok() {
  python3 - "$1" <<'PY'
import re, sys
m = re.search(r"(\d+)\.(\d+)", sys.argv[1])
sys.exit(0 if m and (int(m[1]), int(m[2])) >= (2, 18) else 1)
PY
}

nix_root=
# bind DIR: DIR at the same path inside the Nix root.
bind() {
  local inside=$nix_root$1
  mkdir -p "$inside"
  if ! mountpoint -q "$inside"; then
    mount --bind "$1" "$inside"
    mounted+=("$inside")
  fi
}

nix=()
if [ "$(id -u)" = 0 ] && { scripts/nix-root.sh --check || command -v debootstrap >/dev/null 2>&1; }; then
  nix_root=$(scripts/nix-root.sh)
  if ! mountpoint -q "$nix_root/proc"; then
    mount -t proc proc "$nix_root/proc"
    mounted+=("$nix_root/proc")
  fi
  bind "$repo"
  mkdir -p "$nix_root/etc/llmvisor-nix-conf"
  cp "$work/nix-conf/nix.conf" "$nix_root/etc/llmvisor-nix-conf/nix.conf"
  nix=(chroot "$nix_root" env NIX_CONF_DIR=/etc/llmvisor-nix-conf HOME=/root)
elif command -v nix-instantiate >/dev/null 2>&1 && version_ok "$(nix-instantiate --version)"; then
  nix=(env)
else
  skip "Nix checks: no Nix >= 2.18 (as root with debootstrap, scripts/nix-root.sh makes one from Debian 13; found: $(nix-instantiate --version 2>/dev/null || echo none))"
  exit 0
fi
if ! nix_version=$("${nix[@]}" nix-instantiate --version 2>"$work/version.err"); then
  cat "$work/version.err" >&2
  exit 1
fi
if ! version_ok "$nix_version"; then
  echo "check-nix: $nix_version is older than 2.18, which nixpkgs 25.11 needs" >&2
  exit 1
fi
echo "== nix: $nix_version${nix_root:+ (in $nix_root)}"

echo "== nix: every .nix file parses"
mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
for f in "${nix_files[@]}"; do
  [ -f "$f" ] || continue
  if ! "${nix[@]}" nix-instantiate --parse "$repo/$f" >/dev/null 2>"$work/parse.err"; then
    echo "$f does not parse:" >&2
    cat "$work/parse.err" >&2
    exit 1
  fi
done
echo "${#nix_files[@]} files parse"
echo "== nix: flake.lock"
python3 - <<'EOF'
import json
lock = json.load(open("flake.lock"))
assert lock["version"] == 7, lock["version"]
node = lock["nodes"][lock["nodes"][lock["root"]]["inputs"]["nixpkgs"]]
locked = node["locked"]
assert (locked["type"], locked["owner"], locked["repo"]) == ("github", "NixOS", "nixpkgs"), locked
assert node["original"]["ref"] == "nixos-25.11", node["original"]
assert len(locked["rev"]) == 40 and locked["narHash"].startswith("sha256-"), locked
print(f"nixpkgs nixos-25.11 at {locked['rev']}")
EOF

# The llmvisor that checks the settings: LLMVISOR_BIN, or this tree's debug build.
llmvisor=${LLMVISOR_BIN:-target/debug/llmvisor}
if [ -z "${LLMVISOR_BIN:-}" ] &&
  { [ ! -x "$llmvisor" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$llmvisor" -print -quit)" ]; }; then
  cargo build --quiet --locked --bin llmvisor
fi

echo "== nix: llmvisor check-config accepts each host's settings"
for toml in tests/nix-eval/hosts/*.toml; do
  "$llmvisor" check-config --config "$toml"
done

echo "== nix: modules evaluated with nixpkgs.lib and stubs (tests/nix-eval)"
if [ -z "${NIXPKGS_LIB:-}" ]; then
  # CI cannot fetch nixpkgs.lib (no internet), so this part is not a CI failure.
  loud "module evaluation: NIXPKGS_LIB is unset (set it to a checkout of github:nix-community/nixpkgs.lib)"
  exit 0
fi
lib_dir=$(cd "$NIXPKGS_LIB" && pwd)
[ -z "$nix_root" ] || bind "$lib_dir"
out=$work/out
mkdir -p "$out"
args=()

# run_cases PREFIX DIR [NIX-ARGS...]: evaluates every case of eval.nix (with the
# extra arguments), each into DIR/<case>.json, and adds PREFIX<case>=FILE to args.
# Stdout is the JSON; stderr (warnings, traces) goes to a file of its own, which
# report.py shows when the case does not evaluate.
run_cases() {
  local prefix=$1 dir=$2 c
  shift 2
  local eval_nix=("${nix[@]}" nix-instantiate --eval --strict --json "$repo/tests/nix-eval/eval.nix" --arg nixpkgsLib "$lib_dir" "$@")
  mkdir -p "$dir"
  if ! "${eval_nix[@]}" -A __cases >"$dir/__cases.json" 2>"$dir/__cases.err"; then
    echo "tests/nix-eval/eval.nix${*:+ ($*)} does not evaluate:" >&2
    cat "$dir/__cases.err" >&2
    exit 1
  fi
  local cases
  mapfile -t cases < <(python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))))' "$dir/__cases.json")
  for c in "${cases[@]}"; do
    "${eval_nix[@]}" -A "$c" >"$dir/$c.json" 2>"$dir/$c.err" || true
    args+=("$prefix$c=$dir/$c.json")
  done
}

run_cases "" "$out/stubs"

echo "== nix: the same with the real NixOS firewall, nftables and Tailscale modules"
if [ -z "${NIXOS_REAL_MODULES:-}" ]; then
  loud "real-module evaluation: NIXOS_REAL_MODULES is unset (set it to a directory holding nixos/modules/services/networking/{firewall,firewall-iptables,firewall-nftables,nftables,tailscale}.nix, e.g. a nixpkgs checkout; tests/nix-eval/README.md)"
else
  real_dir=$(cd "$NIXOS_REAL_MODULES" && pwd)
  case "$real_dir/" in
  "$repo"/*)
    echo "check-nix: NIXOS_REAL_MODULES ($real_dir) must be outside the repository" >&2
    exit 1
    ;;
  esac
  for f in firewall.nix firewall-iptables.nix firewall-nftables.nix nftables.nix tailscale.nix; do
    if [ ! -f "$real_dir/nixos/modules/services/networking/$f" ]; then
      echo "check-nix: $real_dir/nixos/modules/services/networking/$f is missing" >&2
      exit 1
    fi
  done
  [ -z "$nix_root" ] || bind "$real_dir"
  echo "real modules from $real_dir"
  run_cases "real:" "$out/real" --arg realModules "$real_dir"
fi

python3 tests/nix-eval/report.py "$llmvisor" "$out/toml" "${args[@]}"
