{
  description = "llmvisor: systemd-native supervisor and OpenAI-compatible router for self-hosted LLMs on NixOS";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  # This file only wires the files together: the package is nixos-modules/package.nix,
  # the modules are nixos-modules/*.nix, the hosts hosts/<name>/, the VM tests
  # tests/nixos/*.nix.
  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The modules' package defaults to the one this flake builds. The key makes
      # the module system include it once, however many of our modules a host imports.
      packageDefault = {
        key = "llmvisor-flake#package-default";
        imports = [
          ./nixos-modules/llmvisor.nix
          (
            { pkgs, ... }:
            {
              services.llmvisor.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.llmvisor;
            }
          )
        ];
      };
      withPackage = path: {
        imports = [
          path
          packageDefault
        ];
      };

      nixFilesIn =
        dir:
        lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".nix" name) (builtins.readDir dir);
      # hosts/fleet/ is not one host but three, deployed together (below).
      hostNames = lib.attrNames (
        lib.filterAttrs (name: type: type == "directory" && name != "fleet") (builtins.readDir ./hosts)
      );

      # hosts/fleet/: a gateway and two GPU nodes, as colmena's hive and as hosts.
      fleet = import ./hosts/fleet/hive.nix {
        inherit lib;
        nixpkgs = nixpkgs.legacyPackages.x86_64-linux;
        modules = [ self.nixosModules.default ];
      };
    in
    {
      overlays.default = final: _prev: {
        llmvisor = final.callPackage ./nixos-modules/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        llmvisor = pkgs.callPackage ./nixos-modules/package.nix { };
        default = llmvisor;
      });

      nixosModules = {
        default = withPackage ./nixos-modules;
        llmvisor = withPackage ./nixos-modules/llmvisor.nix;
        nvidia = withPackage ./nixos-modules/nvidia.nix;
        firewall = withPackage ./nixos-modules/firewall.nix;
        tailscale = withPackage ./nixos-modules/tailscale.nix;
        frontends = withPackage ./nixos-modules/frontends.nix;
        monitoring = withPackage ./nixos-modules/monitoring.nix;
        backup = withPackage ./nixos-modules/backup.nix;
      };

      # Every directory in hosts/ is a host: hosts/<name>/default.nix; and the fleet's
      # hosts fleet-gateway, fleet-gpu1, fleet-gpu2 (hosts/fleet/hive.nix).
      nixosConfigurations =
        lib.genAttrs hostNames (
          name:
          lib.nixosSystem {
            modules = [
              self.nixosModules.default
              ./hosts/${name}
            ];
          }
        )
        // lib.mapAttrs (
          _: host:
          lib.nixosSystem {
            modules = [
              self.nixosModules.default
              host
            ];
          }
        ) fleet.hosts;

      # The fleet for `colmena apply`: colmena 0.4 (nixpkgs 25.11) reads this output,
      # and newer ones do when there is no `colmenaHive` (which would need colmena
      # as a flake input: docs/nixos.md, "Fleet").
      colmena = fleet.colmena;

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          package = self.packages.${system}.llmvisor;

          # Every tests/nixos/<name>.nix, as check vm-<name>.
          vmTests = lib.mapAttrs' (
            file: _:
            lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (
              pkgs.testers.runNixOSTest {
                imports = [ ./tests/nixos/${file} ];
                defaults.imports = [ self.nixosModules.default ];
              }
            )
          ) (nixFilesIn ./tests/nixos);

          # Every host of this system, as check host-<name>.
          hosts = lib.mapAttrs' (name: host: lib.nameValuePair "host-${name}" host.config.system.build.toplevel) (
            lib.filterAttrs (
              _: host: host.pkgs.stdenv.hostPlatform.system == system
            ) self.nixosConfigurations
          );
        in
        {
          inherit package;
          clippy = package.overrideAttrs (old: {
            pname = "llmvisor-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --all-targets -- -D warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
          });
        }
        // vmTests
        // hosts
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.llmvisor ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.nixfmt-tree
            pkgs.python3
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);
    };
}
