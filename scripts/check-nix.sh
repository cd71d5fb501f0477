#!/usr/bin/env bash
# The Nix checks that run without a Nix store or binary cache (the rest is
# `nix flake check`, on a machine with Nix and KVM; see docs/nixos.md):
#
#  1. every .nix file parses (nix-instantiate --parse, Debian's nix-bin);
#  2. flake.lock is a lock file of version 7 that pins nixpkgs;
#  3. `llmvisor check-config` accepts the settings each example host generates
#     (tests/nix-eval/hosts/<host>.toml, kept equal to the module's output by 4);
#  4. with NIXPKGS_LIB (a checkout of nix-community/nixpkgs.lib): every module, the
#     flake's wiring, the hosts and the VM tests' nodes are evaluated with
#     lib.evalModules against stubs (tests/nix-eval/), their checks must hold and
#     every generated TOML must pass `llmvisor check-config`.
#
# Without nix-instantiate it skips loudly (under CI=true it fails); without
# NIXPKGS_LIB, part 4 skips loudly. LLMVISOR_BIN names the llmvisor binary to use
# (default: target/debug/llmvisor, built when missing or older than src/).
set -euo pipefail
cd "$(dirname "$0")/.."

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

if ! command -v nix-instantiate >/dev/null 2>&1; then
  skip "Nix checks: nix-instantiate is missing (apt-get install nix-bin)"
  exit 0
fi

echo "== nix: every .nix file parses"
mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
for f in "${nix_files[@]}"; do
  [ -f "$f" ] || continue
  nix-instantiate --parse "$f" >/dev/null
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
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
eval_nix=(nix-instantiate --eval --strict --json tests/nix-eval/eval.nix --arg nixpkgsLib "$NIXPKGS_LIB")
mapfile -t cases < <("${eval_nix[@]}" -A __cases 2>/dev/null | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))')
args=()
for c in "${cases[@]}"; do
  "${eval_nix[@]}" -A "$c" >"$out/$c.json" 2>&1 || true
  args+=("$c=$out/$c.json")
done
python3 tests/nix-eval/report.py "$llmvisor" "$out/toml" "${args[@]}"
