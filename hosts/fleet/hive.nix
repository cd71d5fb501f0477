# The fleet as colmena deploys it. flake.nix exposes
#
#   colmena                       this hive, read by `colmena apply` (colmena 0.4, the
#                                 one in nixpkgs 25.11; no flake input needed)
#   nixosConfigurations.fleet-*   the same hosts without colmena's `deployment`
#                                 options, built by `nix flake check` like every host
#
# `hosts` maps each node to its host module; `colmena` adds where each node is
# reached and which keys colmena copies onto it. Keys are read on the machine that
# runs colmena (from ~/.config/llmvisor-fleet/ here: replace `fromDeployer` with
# `pass show …`, `sops -d …` or whatever holds your secrets) and written straight to
# the hosts' `fleet.secrets`, never into the Nix store.
{
  lib,
  # An initialized nixpkgs (the flake's nixpkgs.legacyPackages.x86_64-linux).
  nixpkgs,
  # Modules every node imports (the flake's nixosModules.default).
  modules,
}:
let
  fleet = import ./fleet.nix { inherit lib; };

  hosts = {
    ${fleet.gateway} = ./gateway.nix;
    fleet-gpu1 = ./gpu1.nix;
    fleet-gpu2 = ./gpu2.nix;
  };

  # Where the hosts are reached for deployment: their LAN or public addresses
  # (documentation addresses here), since the tailnet is up only after the first
  # deployment. Afterwards "<node>.<tailnetDomain>" works too.
  targetHosts = {
    ${fleet.gateway} = "192.0.2.10";
    fleet-gpu1 = "192.0.2.11";
    fleet-gpu2 = "192.0.2.12";
  };

  fromDeployer = file: [
    "sh"
    "-c"
    "cat \"$HOME/.config/llmvisor-fleet/${file}\""
  ];

  # A key file in the hosts' secrets directory, root-only (llmvisor and tailscaled
  # run as root and hand the keys on with LoadCredential=).
  key = name: source: {
    ${name} = {
      keyCommand = fromDeployer source;
      destDir = fleet.secrets;
      permissions = "0400";
    };
  };

  keysOf = {
    ${fleet.gateway} = lib.mergeAttrsList (
      [
        (key "admin.key" "admin.key")
        (key "laptop.key" "laptop.key")
        (key "apps.key" "apps.key")
      ]
      # One key per node; the node gets the same file as its gateway.key.
      ++ map (node: key (fleet.peerKey node) (fleet.peerKey node)) fleet.gpuNodes
    );
  }
  // lib.genAttrs fleet.gpuNodes (node: key "gateway.key" (fleet.peerKey node));

  node = name: {
    imports = [ hosts.${name} ];
    deployment = {
      targetHost = targetHosts.${name};
      tags = [ "fleet" ] ++ (if name == fleet.gateway then [ "gateway" ] else [ "gpu" ]);
      keys = keysOf.${name};
    };
  };
in
{
  inherit hosts;

  colmena = {
    meta = {
      description = "llmvisor fleet: one gateway, two GPU nodes (hosts/fleet)";
      inherit nixpkgs;
    };

    defaults = {
      imports = modules;
      deployment.keys = key "tailscale-auth-key" "tailscale-auth-key";
    };
  }
  // lib.mapAttrs (name: _: node name) hosts;
}
