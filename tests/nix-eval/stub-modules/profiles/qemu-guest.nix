# Stands in for nixpkgs' nixos/modules/profiles/qemu-guest.nix in tests/nix-eval.
{ }
