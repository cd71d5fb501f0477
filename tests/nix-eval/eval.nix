# Evaluates the llmvisor modules, the flake's wiring, the example hosts and the VM
# tests' nodes with nixpkgs' `lib` and the stubs of ./stubs.nix, and checks what they
# render: the unit, the slice, the firewall, credentials and the TOML settings.
#
#   nix-instantiate --eval --strict --json tests/nix-eval/eval.nix --arg nixpkgsLib "$NIXPKGS_LIB"
#
# Output: { <case> = { failedAssertions; checks = [ { name; ok; got } ]; toml; }; }.
# scripts/check-nix.sh prints it, and runs `llmvisor check-config` on every `toml`.
#
# `--arg realModules /path` (a directory holding nixos/modules/..., e.g. a nixpkgs
# checkout; never this repository): the real NixOS firewall, nftables and Tailscale
# modules replace their stubs, so every case's failedAssertions include their own
# assertions (tests/nix-eval/README.md, "Real-module mode").
{
  nixpkgsLib,
  realModules ? null,
}:
let
  lib = import (if builtins.pathExists (nixpkgsLib + "/lib") then nixpkgsLib + "/lib" else nixpkgsLib);
  real = realModules != null;
  stubs = import ./stubs.nix {
    inherit lib;
    realModules = real;
  };
  inherit (stubs) pkgs;
  repo = ../..;

  # The real modules: those that declare networking.firewall.*,
  # networking.nftables.* and services.tailscale.* in nixos/modules/module-list.nix
  # (firewall-iptables.nix imports ./helpers.nix itself).
  realModuleFiles =
    let
      dir = if builtins.isString realModules then /. + realModules else realModules;
    in
    map (f: dir + "/nixos/modules/services/networking/${f}") [
      "firewall.nix"
      "firewall-iptables.nix"
      "firewall-nftables.nix"
      "nftables.nix"
      "tailscale.nix"
    ];
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  evalSystem =
    modules:
    lib.evalModules {
      modules = [ stubs.module ] ++ lib.optionals real realModuleFiles ++ modules;
      specialArgs = {
        inherit pkgs;
        modulesPath = ./stub-modules;
      };
    };

  # flake.nix's outputs, with nixpkgs replaced by lib and the stubs.
  fakeNixpkgs = {
    lib = lib // {
      nixosSystem =
        args:
        let
          system = evalSystem args.modules;
        in
        system
        // {
          pkgs = pkgs // {
            stdenv.hostPlatform.system = system.config.nixpkgs.hostPlatform.system;
          };
        };
    };
    legacyPackages = lib.genAttrs systems (
      system:
      pkgs
      // {
        stdenv.hostPlatform.system = system;
        testers.runNixOSTest = test: stubs.fakePackage "nixos-test" // { inherit test; };
      }
      // lib.genAttrs [
        "clippy"
        "rustfmt"
        "rust-analyzer"
        "nixfmt-tree"
        "python3"
      ] stubs.fakePackage
      // {
        mkShell = args: stubs.fakePackage "shell" // args;
      }
    );
  };
  flake = import (repo + "/flake.nix");
  self = flake.outputs {
    inherit self;
    nixpkgs = fakeNixpkgs;
  };
  modules = self.nixosModules;

  # --- helpers -----------------------------------------------------------------

  # What a check shows when it fails; functions cannot be printed.
  printable =
    v:
    if lib.isFunction v then
      "<function>"
    else if lib.isAttrs v && !(v ? outPath) then
      lib.mapAttrs (_: printable) v
    else if lib.isList v then
      map printable v
    else
      v;
  check = name: ok: got: {
    inherit name ok;
    got = printable got;
  };
  eq = name: got: want: check name (got == want) got;
  has = name: list: item: check name (lib.elem item list) list;
  contains = name: text: part: check name (lib.hasInfix part text) text;

  failed = cfg: map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);

  # One case: a system evaluated from `mods`, checks on its config.
  case =
    {
      mods,
      checks ? _: [ ],
      toml ? true,
      expectFailures ? [ ],
    }:
    let
      cfg = (evalSystem ([ modules.default ] ++ mods)).config;
      failures = failed cfg;
      expected = map (
        prefix: check "fails with ${prefix}…" (lib.any (lib.hasPrefix prefix) failures) failures
      ) expectFailures;
    in
    {
      failedAssertions = if expectFailures == [ ] then failures else [ ];
      # Every failed assertion of an expected failure: report.py compares the
      # `real:` run's with the stubs' (the same messages, not just the prefixes).
      expectedFailureMessages = if expectFailures == [ ] then null else failures;
      checks = expected ++ checks cfg;
      toml = if toml then cfg.services.llmvisor.renderedSettings else null;
    };

  unitOf = cfg: cfg.systemd.services.llmvisor;
  sc = cfg: (unitOf cfg).serviceConfig;

  mockModel = {
    kind = "command";
    command = [
      "/run/current-system/sw/bin/llmvisor-mock"
      "--port"
      "{port}"
    ];
  };

  hostCase =
    name:
    let
      host = self.nixosConfigurations.${name};
    in
    {
      failedAssertions = failed host.config;
      checks = [
        (eq "package is the flake's" host.config.services.llmvisor.package.name "llmvisor")
        (eq "hostPlatform" host.config.nixpkgs.hostPlatform.system "x86_64-linux")
      ];
      toml = host.config.services.llmvisor.renderedSettings;
      golden = name;
    };

  # A VM test's node, evaluated like a host (the test framework's own options are
  # stubs).
  vmTest = file: import (repo + "/tests/nixos/${file}") { inherit lib; };
  # What a host with the front-ends sets (docs/nixos.md): Open WebUI and n8n are
  # unfree in nixpkgs.
  frontendsUnfree = {
    nixpkgs.config.allowUnfreePredicate =
      pkg:
      builtins.elem (lib.getName pkg) [
        "open-webui"
        "n8n"
      ];
  };
  # A host without an NVIDIA GPU.
  cpuOnlyHost.llmvisor.nvidia = {
    enable = true;
    cpuOnly = true;
  };
  # The host of the front-end cases: llmvisor and `tailscale serve` on gpu-lab.
  frontendsHost = {
    networking.hostName = "gpu-lab";
    llmvisor.tailscale = {
      enable = true;
      tailnetDomain = "tail1234.ts.net";
      serve.enable = true;
    };
    services.llmvisor = {
      enable = true;
      models.chat = mockModel;
    };
  };
  vmNode =
    file: node: extra:
    (evalSystem ([
      modules.default
      (vmTest file).nodes.${node}
    ] ++ extra)).config;
  # docs/llmvisor.service's [Service] settings (what the system tests boot under
  # real systemd), by key; a key given twice (SystemCallFilter) is a list.
  shippedService =
    let
      lines = lib.splitString "\n" (builtins.readFile (repo + "/docs/llmvisor.service"));
      section = lib.foldl' (
        acc: l:
        if lib.hasPrefix "[" l then
          acc // { inService = l == "[Service]"; }
        else if acc.inService && l != "" && !(lib.hasPrefix "#" l) then
          let
            m = builtins.match "([A-Za-z]+)=(.*)" l;
            k = lib.elemAt m 0;
            v = lib.elemAt m 1;
          in
          acc // { kv = acc.kv // { ${k} = (acc.kv.${k} or [ ]) ++ [ v ]; }; }
        else
          acc
      ) { inService = false; kv = { }; } lines;
    in
    section.kv;
  # A serviceConfig value as systemd reads it: its words, from one assignment or
  # several (the settings compared here add up: `A=x y` is `A=x` and `A=y`).
  unitValues =
    v:
    if lib.isList v then
      lib.concatMap unitValues v
    else if lib.isBool v then
      [ (if v then "yes" else "no") ]
    else
      lib.filter (w: w != "") (lib.splitString " " (toString v));
  # The module's llmvisor.service holds every setting of the shipped unit, but
  # those that name paths (the store's, not /usr/local's) or were checked apart.
  sameAsShipped =
    cfg:
    let
      differ = [
        "ExecStart"
        "ExecReload"
      ];
      # What only the module sets: the keys, as credentials.
      extra = [ "LoadCredential" ];
      service = sc cfg;
      shipped = lib.mapAttrs (_: unitValues) shippedService;
      wrong = lib.filter (k: !(lib.elem k differ) && unitValues (service.${k} or [ ]) != shipped.${k}) (
        lib.attrNames shipped
      );
      more = lib.filter (k: !(shipped ? ${k}) && !(lib.elem k extra)) (lib.attrNames service);
    in
    check "llmvisor.service has the settings of docs/llmvisor.service (the unit the system tests boot), and no others" (
      wrong == [ ] && more == [ ]
    ) (
      map (k: "${k}: module ${toString (unitValues (service.${k} or [ ]))}, shipped ${toString shipped.${k}}") wrong
      ++ map (k: "${k}: only in the module") more
    );
  # The credentials a VM node's llmvisor.service loads (`LoadCredential=`), by
  # name, with the text its environment.etc gives each file: report.py runs
  # `llmvisor check-config` with them in $CREDENTIALS_DIRECTORY, so the keys are
  # read as the service reads them at start. `null` when one is not such a file.
  vmCredentials =
    cfg:
    let
      loaded = map (
        c:
        let
          m = builtins.match "([^:]+):(.*)" c;
          path = lib.elemAt m 1;
          e = cfg.environment.etc.${lib.removePrefix "/etc/" path} or null;
        in
        {
          name = lib.elemAt m 0;
          text = if lib.hasPrefix "/etc/" path && e != null then e.text else null;
        }
      ) ((sc cfg).LoadCredential or [ ]);
    in
    if loaded != [ ] && lib.all (c: c.text != null) loaded then
      lib.listToAttrs (map (c: lib.nameValuePair c.name c.text) loaded)
    else
      null;
in
let
  cases = {
  # The unit, the slice and the TOML of a minimal service.
  minimal = case {
    mods = [
      {
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          settings.server.auth = "none";
        };
      }
    ];
    checks = cfg: [
      (sameAsShipped cfg)
      (eq "Type=notify" (sc cfg).Type "notify")
      (eq "WatchdogSec" (sc cfg).WatchdogSec 30)
      (eq "restartIfChanged = false" (unitOf cfg).restartIfChanged false)
      (eq "reload on a new configuration" (unitOf cfg).reloadTriggers [ cfg.services.llmvisor.configFile ])
      (contains "ExecReload sends SIGHUP" (sc cfg).ExecReload "kill -HUP $MAINPID")
      (contains "ExecStart reads the stable path" (sc cfg).ExecStart "serve --config /etc/llmvisor/llmvisor.toml --log-level info")
      (eq "/etc/llmvisor/llmvisor.toml" cfg.environment.etc."llmvisor/llmvisor.toml".source cfg.services.llmvisor.configFile)
      (contains "the file is checked by llmvisor check-config" cfg.services.llmvisor.configFile.buildCommand "llmvisor check-config --config llmvisor.toml")
      (eq "no capabilities" (sc cfg).CapabilityBoundingSet [ "" ])
      (eq "NoNewPrivileges" (sc cfg).NoNewPrivileges true)
      (eq "LimitNOFILE for the client connections" (sc cfg).LimitNOFILE 65536)
      (eq "ProtectSystem" (sc cfg).ProtectSystem "strict")
      (eq "PrivateDevices" (sc cfg).PrivateDevices true)
      (eq "MemoryDenyWriteExecute" (sc cfg).MemoryDenyWriteExecute true)
      (eq "StateDirectory" (sc cfg).StateDirectory "llmvisor")
      (eq "no credentials" (sc cfg).LoadCredential [ ])
      (eq "slice without a cap" cfg.systemd.slices.llmvisor.sliceConfig { })
      (eq "no firewall port" cfg.networking.firewall.interfaces { })
      (eq "server.listen" cfg.services.llmvisor.renderedSettings.server.listen [ "127.0.0.1:8080" ])
      (eq "units.manager" cfg.services.llmvisor.renderedSettings.units.manager "systemd")
      (eq "a command model is written as is" cfg.services.llmvisor.renderedSettings.models.chat {
        inherit (mockModel) kind command;
        gpus = [ ];
        aliases = [ ];
      })
      (eq "no [admin] without a key" (cfg.services.llmvisor.renderedSettings ? admin) false)
    ];
  };

  # Keys as credentials, the tailnet port, the slice's memory cap.
  keys = case {
    mods = [
      {
        services.llmvisor = {
          enable = true;
          listen = [
            "127.0.0.1"
            "0.0.0.0"
            "::1"
          ];
          port = 4000;
          openFirewall = true;
          memoryMax = "100G";
          memoryHigh = "90G";
          logLevel = "debug";
          models.chat = mockModel;
          clients.open-webui.keyFile = "/run/secrets/open-webui";
          clients.n8n = {
            keyFile = "/run/secrets/n8n";
            priority = "batch";
            rpm = 60;
            models = [ "chat" ];
          };
          settings.server.upstream_header_timeout = "15m";
          settings.clients.laptop.key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
          adminKeyFile = "/run/secrets/admin";
          providers.openai = {
            baseUrl = "https://api.openai.com/v1";
            keyFile = "/run/secrets/openai";
            models.gpt-4o-mini = "gpt-4o-mini";
          };
        };
      }
    ];
    checks =
      cfg:
      let
        s = cfg.services.llmvisor.renderedSettings;
      in
      [
        (eq "LoadCredential" (lib.sort (a: b: a < b) (sc cfg).LoadCredential) [
          "admin:/run/secrets/admin"
          "client-n8n:/run/secrets/n8n"
          "client-open-webui:/run/secrets/open-webui"
          "provider-openai:/run/secrets/openai"
        ])
        (eq "clients.open-webui" s.clients.open-webui {
          key_file = "client-open-webui";
          models = [ "*" ];
          rpm = 0;
          tpm = 0;
          priority = "interactive";
        })
        (eq "clients.n8n.priority" s.clients.n8n.priority "batch")
        (eq "undeclared keys next to declared ones" s.server.upstream_header_timeout "15m")
        (eq "settings.clients merge with clients" s.clients.laptop.key_sha256 "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        (eq "admin.key_file" s.admin { key_file = "admin"; })
        (eq "providers.openai" s.providers.openai {
          base_url = "https://api.openai.com/v1";
          key_file = "provider-openai";
          models.gpt-4o-mini = "gpt-4o-mini";
        })
        (eq "server.listen (IPv6 in brackets)" s.server.listen [
          "127.0.0.1:4000"
          "0.0.0.0:4000"
          "[::1]:4000"
        ])
        (eq "port on the tailnet interface only" cfg.networking.firewall.interfaces.tailscale0.allowedTCPPorts [ 4000 ])
        (eq "no port on every interface" cfg.networking.firewall.allowedTCPPorts [ ])
        (eq "slice memory cap" cfg.systemd.slices.llmvisor.sliceConfig {
          MemoryMax = "100G";
          MemoryHigh = "90G";
        })
        (contains "log level" (sc cfg).ExecStart "--log-level debug")
      ];
  };

  # nixos-modules/package.nix with the real lib: name, version, the source file set
  # (report.py checks it against the tracked files and the files the tests open),
  # and a lock file buildRustPackage can vendor without hashes of ours.
  package =
    let
      drv = import (repo + "/nixos-modules/package.nix") {
        inherit lib;
        rustPlatform.buildRustPackage = args: args;
        pkg-config = stubs.fakePackage "pkg-config";
        systemd = stubs.fakePackage "systemd";
        openssl = stubs.fakePackage "openssl";
      };
      cargoToml = lib.importTOML (repo + "/Cargo.toml");
      lock = lib.importTOML drv.cargoLock.lockFile;
      srcFiles = map (f: lib.removePrefix "./" (lib.path.removePrefix repo f)) (
        lib.fileset.toList drv.passthru.srcFileset
      );
      remote = lib.filter (p: p ? source) lock.package;
    in
    {
      failedAssertions = [ ];
      checks = [
        (eq "pname" drv.pname "llmvisor")
        (eq "version is Cargo.toml's" drv.version cargoToml.package.version)
        (eq "src is a file set's source" (drv.src ? outPath) true)
        (eq "cargoLock.lockFile is the repository's" drv.cargoLock.lockFile (repo + "/Cargo.lock"))
        (eq "Cargo.lock version 3 or 4" (lib.elem lock.version [
          3
          4
        ]) true)
        (eq "every locked crate comes from crates.io (no git sources needing outputHashes)" (lib.filter (
          p: p.source != "registry+https://github.com/rust-lang/crates.io-index"
        ) remote) [ ])
        (eq "every locked crate has a checksum" (lib.filter (p: !(p ? checksum)) remote) [ ])
        (has "the binary's source is in src" srcFiles "src/main.rs")
        (has "the mock's source is in src" srcFiles "src/bin/llmvisor-mock/main.rs")
        (has "the example target's source is in src" srcFiles "bench/streamload.rs")
        (eq "no NixOS test in src" (lib.filter (f: lib.hasPrefix "tests/nixos/" f || lib.hasPrefix "tests/nix-eval/" f) srcFiles) [ ])
        (eq "the tests' openssl command" (map (p: p.name) drv.nativeCheckInputs) [ "openssl" ])
        (eq "mainProgram" drv.meta.mainProgram "llmvisor")
        (eq "license" drv.meta.license.spdxId "Apache-2.0")
      ];
      toml = null;
      inherit srcFiles;
    };

  # Models of the packaged kinds get their executables from nixpkgs.
  packages = case {
    mods = [
      {
        services.llmvisor = {
          enable = true;
          models = {
            qwen = {
              kind = "vllm";
              model = "Qwen/Qwen2.5-7B-Instruct";
              gpus = [ 0 ];
            };
            llama = {
              kind = "ollama";
              model = "llama3.1:8b";
            };
            embed = {
              kind = "llama-cpp";
              model = "/srv/models/bge-m3.gguf";
              embeddings = true;
            };
            cpu-llama = {
              kind = "ollama";
              model = "llama3.2:1b";
              package = pkgs.ollama;
            };
            own = {
              kind = "vllm";
              model = "x/y";
              executable = "/opt/vllm/bin/vllm";
            };
          };
          settings.server.auth = "none";
        };
      }
    ];
    checks =
      cfg:
      let
        m = cfg.services.llmvisor.renderedSettings.models;
      in
      [
        (eq "vllm → pkgs.vllm" m.qwen.executable "${pkgs.vllm}/bin/vllm")
        (eq "ollama → pkgs.ollama-cuda" m.llama.executable "${pkgs.ollama-cuda}/bin/ollama")
        (eq "llama-cpp → pkgs.llama-cpp" m.embed.executable "${pkgs.llama-cpp}/bin/llama-server")
        (eq "package override" m.cpu-llama.executable "${pkgs.ollama}/bin/ollama")
        (eq "explicit executable" m.own.executable "/opt/vllm/bin/vllm")
        (eq "package is not written" (lib.any (x: x ? package) (lib.attrValues m)) false)
        (eq "freeform keys pass through" m.embed.embeddings true)
      ];
  };

  # Keys in the store are refused, with the option's path first.
  store-key = case {
    toml = false;
    mods = [
      {
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          clients.x.keyFile = "/nix/store/00000000000000000000000000000000-key";
          adminKeyFile = "relative/admin.key";
          otlpHeadersFile = "/nix/store/00000000000000000000000000000000-otlp-headers";
          openFirewall = true;
        };
      }
    ];
    expectFailures = [
      "services.llmvisor.clients.x.keyFile:"
      "services.llmvisor.adminKeyFile:"
      "services.llmvisor.otlpHeadersFile:"
      "services.llmvisor.openFirewall:"
    ];
  };

  # Two clients with one key file, and the admin key file a client's: llmvisor
  # refuses both when it reads the files at start (clients.<name>: "has the same
  # key as clients.<other>"; admin: "the admin key is also the key of
  # clients.<name>"), so the module refuses them first.
  shared-key = case {
    toml = false;
    mods = [
      {
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          clients = {
            a.keyFile = "/run/secrets/one";
            b.keyFile = "/run/secrets/one";
            c.keyFile = "/run/secrets/two";
            d.keyFile = "/run/secrets/three";
          };
          adminKeyFile = "/run/secrets/two";
        };
      }
    ];
    expectFailures = [
      "services.llmvisor.clients.a.keyFile, services.llmvisor.clients.b.keyFile: the same key file `/run/secrets/one`"
      "services.llmvisor.clients.c.keyFile, services.llmvisor.adminKeyFile: the same key file `/run/secrets/two`"
    ];
  };

  # "SSH only public".
  firewall = case {
    mods = [
      {
        services.openssh.enable = true;
        llmvisor.firewall = {
          enable = true;
          tailnetTCPPorts = [ 9999 ];
        };
        services.llmvisor = {
          enable = true;
          listen = [ "0.0.0.0" ];
          openFirewall = true;
          models.chat = mockModel;
          clients.t.keyFile = "/run/secrets/t";
        };
      }
    ];
    checks =
      cfg:
      let
        fw = cfg.networking.firewall;
      in
      [
        (eq "nftables" cfg.networking.nftables.enable true)
        (eq "public TCP: SSH" fw.allowedTCPPorts [ 22 ])
        (eq "no public UDP port without Tailscale" fw.allowedUDPPorts [ ])
        (has "loopback trusted, as NixOS always does" fw.trustedInterfaces "lo")
        (eq "tailnet TCP" (lib.sort (a: b: a < b) fw.interfaces.tailscale0.allowedTCPPorts) [
          8080
          9999
        ])
        (eq "openssh does not open its own port" cfg.services.openssh.openFirewall false)
      ];
  };

  # With Tailscale, its WireGuard port is the one public UDP port.
  firewall-with-tailscale = case {
    toml = false;
    mods = [
      {
        services.openssh.enable = true;
        llmvisor.firewall.enable = true;
        llmvisor.tailscale.enable = true;
      }
    ];
    checks = cfg: [
      (eq "public TCP: SSH" cfg.networking.firewall.allowedTCPPorts [ 22 ])
      (eq "public UDP: WireGuard" cfg.networking.firewall.allowedUDPPorts [ 41641 ])
    ];
  };

  firewall-tailnet-only = case {
    toml = false;
    mods = [
      {
        services.openssh.enable = true;
        llmvisor.firewall = {
          enable = true;
          publicSSH = false;
          allowTailscaleUDP = false;
        };
      }
    ];
    checks = cfg: [
      (eq "no public TCP port" cfg.networking.firewall.allowedTCPPorts [ ])
      (eq "no public UDP port" cfg.networking.firewall.allowedUDPPorts [ ])
      (eq "SSH on the tailnet" cfg.networking.firewall.interfaces.tailscale0.allowedTCPPorts [ 22 ])
    ];
  };

  firewall-stray-port = case {
    toml = false;
    mods = [
      {
        llmvisor.firewall.enable = true;
        networking.firewall.allowedTCPPorts = [ 3000 ];
        networking.firewall.trustedInterfaces = [ "eth0" ];
      }
    ];
    expectFailures = [
      "llmvisor.firewall: TCP ports 3000"
      "llmvisor.firewall: networking.firewall.trustedInterfaces"
    ];
  };

  # The nftables firewall refuses iptables commands (firewall-nftables.nix's
  # assertion: the stub's, or the real one with `realModules`).
  firewall-extra-commands = case {
    toml = false;
    mods = [
      {
        llmvisor.firewall.enable = true;
        networking.firewall.extraCommands = "iptables -A nixos-fw -p tcp --dport 3000 -j nixos-fw-accept";
      }
    ];
    expectFailures = [ "extraCommands is incompatible with the nftables based firewall" ];
  };

  tailscale = case {
    mods = [
      {
        networking.hostName = "gpu-lab";
        llmvisor.tailscale = {
          enable = true;
          authKeyFile = "/run/secrets/ts";
          tailnetDomain = "tail1234.ts.net";
          serve.enable = true;
        };
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          clients.t.keyFile = "/run/secrets/t";
        };
      }
    ];
    checks =
      cfg:
      let
        unit = cfg.systemd.services.llmvisor-tailscale-serve;
      in
      [
        (eq "services.tailscale.enable" cfg.services.tailscale.enable true)
        (eq "auth key file" cfg.services.tailscale.authKeyFile "/run/secrets/ts")
        (eq "MagicDNS name" cfg.services.tailscale.extraUpFlags [ "--hostname=gpu-lab" ])
        (eq "fqdn" cfg.llmvisor.tailscale.fqdn "gpu-lab.tail1234.ts.net")
        (eq "serve unit is a oneshot" unit.serviceConfig.Type "oneshot")
        (has "after tailscaled" unit.after "tailscaled.service")
        (contains "serves llmvisor on 443" unit.script "tailscale serve --bg --https=443 http://127.0.0.1:8080")
        (contains "waits for a running node" unit.script "BackendState")
      ];
  };

  tailscale-serve-auth-none = case {
    toml = false;
    mods = [
      {
        llmvisor.tailscale = {
          enable = true;
          serve.enable = true;
        };
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          settings.server.auth = "none";
        };
      }
    ];
    expectFailures = [ "services.llmvisor.settings.server.auth:" ];
  };

  # A host's own n8n settings, through the n8n module's interface, are kept: the
  # front-end module's are defaults there (its port aside, which is its option).
  frontends-own-n8n = case {
    toml = false;
    mods = [
      frontendsUnfree
      frontendsHost
      {
        llmvisor.frontends.n8n = {
          enable = true;
          port = 5999;
          llmvisorKeyFile = "/run/secrets/n8n";
        };
        services.n8n.environment.WEBHOOK_URL = "https://hooks.example.com/";
      }
    ];
    checks = cfg: [
      (eq "the host's webhook URL" cfg.systemd.services.n8n.environment.WEBHOOK_URL "https://hooks.example.com/")
      (eq "the front-end's port, in n8n's own option" cfg.services.n8n.environment.N8N_PORT "5999")
      (eq "the unit listens there" cfg.systemd.services.n8n.environment.N8N_PORT "5999")
    ];
  };

  frontends = case {
    mods = [
      frontendsUnfree
      frontendsHost
      {
        llmvisor.frontends = {
          openWebui = {
            enable = true;
            llmvisorKeyFile = "/run/secrets/ow";
          };
          n8n = {
            enable = true;
            llmvisorKeyFile = "/run/secrets/n8n";
          };
        };
      }
    ];
    checks =
      cfg:
      let
        ow = cfg.systemd.services.open-webui;
        n8n = cfg.systemd.services.n8n;
        s = cfg.services.llmvisor.renderedSettings;
      in
      [
        (eq "Open WebUI client" s.clients.open-webui.key_file "client-open-webui")
        (eq "n8n client, batch" s.clients.n8n.priority "batch")
        (eq "Open WebUI on loopback" cfg.services.open-webui.host "127.0.0.1")
        (eq "Open WebUI port" cfg.services.open-webui.port 8081)
        (eq "Open WebUI → llmvisor" cfg.services.open-webui.environment.OPENAI_API_BASE_URL "http://127.0.0.1:8080/v1")
        (eq "Open WebUI URL" cfg.services.open-webui.environment.WEBUI_URL "https://gpu-lab.tail1234.ts.net:8443")
        (eq "Open WebUI key credential" ow.serviceConfig.LoadCredential [ "llmvisor-key:/run/secrets/ow" ])
        (contains "Open WebUI reads its key at start" ow.serviceConfig.ExecStart.text "OPENAI_API_KEY=$(< \"$CREDENTIALS_DIRECTORY/llmvisor-key\")")
        (eq "n8n key credential" n8n.serviceConfig.LoadCredential [ "llmvisor-key:/run/secrets/n8n" ])
        (contains "n8n OpenAI credential" n8n.serviceConfig.ExecStart.text "{openAiApi: {apiKey: $key, url: $url}}")
        (eq "n8n database" n8n.environment.DB_TYPE "postgresdb")
        (eq "n8n socket" n8n.environment.DB_POSTGRESDB_HOST "/run/postgresql")
        (eq "n8n webhook URL" n8n.environment.WEBHOOK_URL "https://gpu-lab.tail1234.ts.net:10000/")
        (has "n8n after postgresql" n8n.after "postgresql.service")
        (eq "postgres database" cfg.services.postgresql.ensureDatabases [ "n8n" ])
        (eq "postgres user" (map (u: { inherit (u) name ensureDBOwnership; }) cfg.services.postgresql.ensureUsers) [
          {
            name = "n8n";
            ensureDBOwnership = true;
          }
        ])
        (eq "n8n firewall closed" cfg.services.n8n.openFirewall false)
        (contains "serves Open WebUI" cfg.systemd.services.llmvisor-tailscale-serve.script "--https=8443 http://127.0.0.1:8081")
        (contains "serves n8n" cfg.systemd.services.llmvisor-tailscale-serve.script "--https=10000 http://127.0.0.1:5678")
        (eq "nothing opened without exposeOnTailnet" cfg.networking.firewall.interfaces { })
      ];
  };

  monitoring = case {
    mods = [
      {
        llmvisor.nvidia.enable = true;
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          clients.t.keyFile = "/run/secrets/t";
        };
        llmvisor.monitoring = {
          enable = true;
          exposeOnTailnet = true;
          llmvisorScrapeKeyFile = "/run/secrets/prom";
          grafana = {
            secretKeyFile = "/run/secrets/gsk";
            adminPasswordFile = "/run/secrets/gpw";
          };
        };
      }
    ];
    checks =
      cfg:
      let
        p = cfg.services.prometheus;
        g = cfg.services.grafana;
      in
      [
        (eq "scrape jobs" (map (j: j.job_name) p.scrapeConfigs) [
          "llmvisor"
          "node"
          "nvidia-gpu"
        ])
        (eq "llmvisor target" (lib.head p.scrapeConfigs).static_configs [
          {
            targets = [ "127.0.0.1:8080" ];
            labels = { };
          }
        ])
        (eq "scrape key as a bearer credential" (lib.head p.scrapeConfigs).authorization {
          type = "Bearer";
          credentials_file = "/run/credentials/prometheus.service/llmvisor-key";
        })
        (eq "Prometheus credential" cfg.systemd.services.prometheus.serviceConfig.LoadCredential [
          "llmvisor-key:/run/secrets/prom"
        ])
        (eq "llmvisor client for Prometheus, no models" cfg.services.llmvisor.renderedSettings.clients.prometheus.models [ ])
        (eq "node exporter on loopback" p.exporters.node.listenAddress "127.0.0.1")
        (eq "systemd collector" p.exporters.node.enabledCollectors [ "systemd" ])
        (eq "GPU exporter" p.exporters.nvidia-gpu.enable true)
        (eq "dashboard provisioned from the repository's (without its logs panel: no Loki here)" (lib.head g.provision.dashboards.settings.providers).options.path.path "llmvisor-dashboard.json")
        (check "dashboard JSON present" (builtins.pathExists (repo + "/nixos-modules/grafana/llmvisor-dashboard.json")) null)
        (eq "Grafana secrets from credentials" g.settings.security.secret_key "$__file{/run/credentials/grafana.service/secret-key}")
        (eq "Grafana credentials" cfg.systemd.services.grafana.serviceConfig.LoadCredential [
          "secret-key:/run/secrets/gsk"
          "admin-password:/run/secrets/gpw"
        ])
        (eq "Grafana on the tailnet" cfg.networking.firewall.interfaces.tailscale0.allowedTCPPorts [ 3000 ])
      ];
  };

  # llmvisor.monitoring.logs: Loki, Alloy reading the journal, Grafana's data
  # source and the dashboard's logs panel.
  monitoring-logs = case {
    mods = [
      {
        networking.hostName = "gpu-lab";
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          clients.t.keyFile = "/run/secrets/t";
        };
        llmvisor.monitoring = {
          enable = true;
          logs = {
            enable = true;
            retention = "14d";
          };
          grafana = {
            secretKeyFile = "/run/secrets/gsk";
            adminPasswordFile = "/run/secrets/gpw";
          };
        };
      }
    ];
    checks =
      cfg:
      let
        loki = cfg.services.loki.configuration;
        alloy = cfg.environment.etc."alloy/config.alloy".text;
        g = cfg.services.grafana;
        dash = lib.importJSON (repo + "/nixos-modules/grafana/llmvisor-dashboard.json");
        logsPanel = lib.findFirst (p: p.type == "logs") null dash.panels;
      in
      [
        (eq "Loki on loopback" loki.server.http_listen_address "127.0.0.1")
        (eq "Loki's port" loki.server.http_listen_port 3100)
        (eq "Loki: TSDB, schema v13 (structured metadata)" (map (c: { inherit (c) store schema; }) loki.schema_config.configs) [
          {
            store = "tsdb";
            schema = "v13";
          }
        ])
        (eq "retention" loki.limits_config.retention_period "14d")
        (eq "structured metadata allowed" loki.limits_config.allow_structured_metadata true)
        (eq "the compactor applies retention" loki.compactor.retention_enabled true)
        (check "Loki's unit" (lib.hasInfix "loki-config.json" cfg.systemd.services.loki.serviceConfig.ExecStart) cfg.systemd.services.loki.serviceConfig.ExecStart)
        (eq "Alloy on" cfg.services.alloy.enable true)
        (has "Alloy reads the journal" cfg.systemd.services.alloy.serviceConfig.SupplementaryGroups "systemd-journal")
        (eq "Alloy reloads when its file changes" (lib.length cfg.systemd.services.alloy.reloadTriggers) 1)
        (contains "Alloy: the journal" alloy "loki.source.journal \"journal\"")
        (contains "Alloy: MODEL= is the label model" alloy "source_labels = [\"__journal_model\"]")
        (contains "Alloy: a model unit's output is its model's" alloy "regex         = \"llmvisor-model-(.+)\\\\.service\"")
        (contains "Alloy: CLIENT=" alloy "source_labels = [\"__journal_client\"]")
        (contains "Alloy: ROUTE=" alloy "source_labels = [\"__journal_route\"]")
        (contains "Alloy: client and route as structured metadata" alloy "values = {client = \"\", route = \"\"}")
        (contains "Alloy: and not as labels" alloy "values = [\"client\", \"route\"]")
        # Dropped as labels first, so the metadata is taken once, from the extracted
        # map (Alloy before its PR #5965 took it from the labels too).
        (check "Alloy: the labels go before the metadata is taken" (lib.hasInfix "stage.label_drop" (
          lib.head (lib.splitString "stage.structured_metadata" alloy)
        )) null)
        (contains "Alloy: systemd's lines about a model's unit are its model's" alloy "source_labels = [\"__journal_unit\"]")
        (contains "Alloy pushes to Loki" alloy "url = \"http://127.0.0.1:3100/loki/api/v1/push\"")
        (contains "Alloy's host label" alloy "labels        = {host = \"gpu-lab\"}")
        (eq "Grafana data sources" (map (d: { inherit (d) uid type url; }) g.provision.datasources.settings.datasources) [
          {
            uid = "prometheus";
            type = "prometheus";
            url = "http://127.0.0.1:9090";
          }
          {
            uid = "loki";
            type = "loki";
            url = "http://127.0.0.1:3100";
          }
        ])
        (eq "the repository's dashboard, logs panel included" (lib.head g.provision.dashboards.settings.providers).options.path (
          repo + "/nixos-modules/grafana"
        ))
        (eq "the logs panel queries Loki for $model" (logsPanel.datasource.uid or null) "loki")
        (contains "the logs panel's query" (lib.head logsPanel.targets).expr "{model=~\"$model\", model=~\".+\"}")
        (check "the model panels link to the logs panel" (
          lib.length (
            lib.filter (
              p: lib.any (l: lib.hasInfix "viewPanel=${toString logsPanel.id}" l.url) (p.fieldConfig.defaults.links or [ ])
            ) dash.panels
          ) >= 2
        ) null)
      ];
  };

  # Without logs the dashboard loses its Loki panel, row and links.
  monitoring-no-logs = case {
    toml = false;
    mods = [
      {
        services.llmvisor.enable = true;
        llmvisor.monitoring = {
          enable = true;
          grafana = {
            secretKeyFile = "/run/secrets/gsk";
            adminPasswordFile = "/run/secrets/gpw";
          };
        };
      }
    ];
    checks =
      cfg:
      let
        dir = (lib.head cfg.services.grafana.provision.dashboards.settings.providers).options.path;
        dash = builtins.fromJSON dir.text;
        full = lib.importJSON (repo + "/nixos-modules/grafana/llmvisor-dashboard.json");
      in
      [
        (eq "no Loki" cfg.services.loki.enable false)
        (eq "no Alloy" cfg.services.alloy.enable false)
        (eq "no Tempo" cfg.services.tempo.enable false)
        (eq "no traces" (cfg.services.llmvisor.renderedSettings ? telemetry) false)
        (eq "one data source" (map (d: d.uid) cfg.services.grafana.provision.datasources.settings.datasources) [ "prometheus" ])
        (eq "a generated dashboard file" dir.path "llmvisor-dashboard.json")
        (eq "two panels fewer (the row and the logs)" (lib.length dash.panels) (lib.length full.panels - 2))
        (eq "nothing queries Loki" (lib.filter (p: (p.datasource.uid or "") == "loki") dash.panels) [ ])
        (eq "no link to the logs panel" (lib.filter (p: (p.fieldConfig.defaults.links or [ ]) != [ ]) dash.panels) [ ])
        (eq "the rest is unchanged" (lib.elemAt dash.panels 1) (lib.elemAt full.panels 1))
      ];
  };

  # llmvisor.monitoring.traces: Tempo on loopback, llmvisor's otlpEndpoint at
  # it (the rendered TOML is checked by `llmvisor check-config`), Grafana's data
  # source. The stub of services.tempo is the real tempo.nix's four options and
  # its unit (NixOS/nixpkgs 9253afca).
  monitoring-traces = case {
    mods = [
      {
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          clients.t.keyFile = "/run/secrets/t";
        };
        llmvisor.monitoring = {
          enable = true;
          traces = {
            enable = true;
            retention = "72h";
          };
          grafana = {
            secretKeyFile = "/run/secrets/gsk";
            adminPasswordFile = "/run/secrets/gpw";
          };
        };
      }
    ];
    checks =
      cfg:
      let
        t = cfg.services.tempo.settings;
        unit = cfg.systemd.services.tempo;
      in
      [
        (eq "llmvisor sends its traces to Tempo" cfg.services.llmvisor.renderedSettings.telemetry.otlp_endpoint "http://127.0.0.1:4318")
        (eq "Tempo on" cfg.services.tempo.enable true)
        (eq "OTLP/HTTP on loopback" t.distributor.receivers.otlp.protocols.http.endpoint "127.0.0.1:4318")
        (eq "no OTLP/gRPC receiver" (t.distributor.receivers.otlp.protocols ? grpc) false)
        (eq "the API on loopback" [ t.server.http_listen_address t.server.http_listen_port ] [ "127.0.0.1" 3200 ])
        (eq "gRPC on loopback" t.server.grpc_listen_address "127.0.0.1")
        (eq "memberlist on loopback" t.memberlist.bind_addr [ "127.0.0.1" ])
        (eq "retention" t.compactor.compaction.block_retention "72h")
        (eq "no usage report" t.usage_report.reporting_enabled false)
        (check "storage in Tempo's state directory" (lib.all (p: lib.hasPrefix "/var/lib/${unit.serviceConfig.StateDirectory}/" p) [ t.storage.trace.local.path t.storage.trace.wal.path ]) null)
        (contains "the unit reads the settings" unit.serviceConfig.ExecStart "--config.file=")
        (eq "data sources" (map (d: d.uid) cfg.services.grafana.provision.datasources.settings.datasources) [ "prometheus" "tempo" ])
        (eq "Grafana reads Tempo's API" (lib.last cfg.services.grafana.provision.datasources.settings.datasources).url "http://127.0.0.1:3200")
        (has "llmvisor after Tempo" cfg.systemd.services.llmvisor.after "tempo.service")
        (eq "nothing opened" cfg.networking.firewall.allowedTCPPorts [ ])
      ];
  };

  # An operator's own collector wins over the monitoring's Tempo.
  monitoring-traces-elsewhere = case {
    toml = false;
    mods = [
      {
        services.llmvisor = {
          enable = true;
          otlpEndpoint = "http://10.0.0.5:4318";
        };
        llmvisor.monitoring = {
          enable = true;
          traces.enable = true;
          grafana = {
            secretKeyFile = "/run/secrets/gsk";
            adminPasswordFile = "/run/secrets/gpw";
          };
        };
      }
    ];
    checks = cfg: [
      (eq "the operator's collector" cfg.services.llmvisor.renderedSettings.telemetry.otlp_endpoint "http://10.0.0.5:4318")
    ];
  };

  # A collector elsewhere over https that wants a secret header (Grafana Cloud's
  # OTLP gateway): the header file a credential, the plain headers in the TOML.
  traces-to-a-cloud-collector = case {
    mods = [
      {
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
          clients.t.keyFile = "/run/secrets/t";
          otlpEndpoint = "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp";
          otlpHeadersFile = "/run/secrets/otlp-headers";
          settings.telemetry.headers.X-Scope-OrgID = "homelab";
        };
      }
    ];
    checks =
      cfg:
      let
        t = cfg.services.llmvisor.renderedSettings.telemetry;
      in
      [
        (eq "telemetry" t {
          otlp_endpoint = "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp";
          headers_file = "otlp-headers";
          headers.X-Scope-OrgID = "homelab";
        })
        (has "the header file a credential" (sc cfg).LoadCredential "otlp-headers:/run/secrets/otlp-headers")
      ];
  };

  # llmvisor.backup on services.restic.backups: the copies, the dump, the
  # snapshots; secrets from files; a timer; the restore command.
  backup = case {
    mods = [
      frontendsUnfree
      {
        services.llmvisor = {
          enable = true;
          models = {
            chat = mockModel;
            embed = mockModel;
          };
        };
        llmvisor.frontends = {
          openWebui = {
            enable = true;
            llmvisorKeyFile = "/run/secrets/ow";
          };
          n8n = {
            enable = true;
            llmvisorKeyFile = "/run/secrets/n8n";
          };
          qdrant = {
            enable = true;
            embeddingModel = "embed";
          };
        };
        llmvisor.backup = {
          enable = true;
          repositoryFile = "/run/secrets/restic-repository";
          passwordFile = "/run/secrets/restic-password";
          environmentFile = "/run/secrets/restic-s3.env";
        };
      }
    ];
    checks =
      cfg:
      let
        b = cfg.services.restic.backups.llmvisor;
        unit = cfg.systemd.services.restic-backups-llmvisor;
        prepare = b.backupPrepareCommand;
        script = (lib.findFirst (p: p.name == "llmvisor-backup-restore") null cfg.environment.systemPackages).text;
      in
      [
        (eq "repository from a file" b.repositoryFile "/run/secrets/restic-repository")
        (eq "no repository in the store" b.repository null)
        (eq "password from a file" unit.environment.RESTIC_PASSWORD_FILE "/run/secrets/restic-password")
        (eq "credentials from a file" unit.serviceConfig.EnvironmentFile "/run/secrets/restic-s3.env")
        (eq "a timer" cfg.systemd.timers.restic-backups-llmvisor.timerConfig.OnCalendar "03:00")
        (eq "created on first run" b.initialize true)
        (eq "what restic reads" b.paths [
          "/var/lib/llmvisor-backup"
          "/var/lib/private/open-webui"
          "/var/lib/private/n8n"
        ])
        (eq "not the live Open WebUI database" b.exclude [
          "/var/lib/private/open-webui/webui.db"
          "/var/lib/private/open-webui/webui.db-*"
          "/var/lib/private/open-webui/cache"
        ])
        (contains "the prepare step runs in the unit's preStart" unit.preStart "backupPrepareCommand")
        (contains "the usage store: llmvisor store-backup" prepare "${pkgs.llmvisor}/bin/llmvisor store-backup --db /var/lib/llmvisor/usage.sqlite /var/lib/llmvisor-backup/usage.sqlite")
        (contains "Open WebUI's database: store-backup" prepare "store-backup --db /var/lib/private/open-webui/webui.db /var/lib/llmvisor-backup/open-webui-webui.db")
        (contains "n8n: pg_dump as postgres" prepare "-u postgres -- ${pkgs.postgresql}/bin/pg_dump --format=custom n8n > /var/lib/llmvisor-backup/n8n.pgdump")
        (contains "Qdrant: a snapshot per collection" prepare "/snapshots?wait=true")
        (contains "Qdrant: downloaded, then deleted from Qdrant" prepare "-X DELETE")
        (has "after PostgreSQL" unit.after "postgresql.service")
        (has "after Qdrant" unit.after "qdrant.service")
        (contains "restore: stops the services" script "for u in llmvisor.service open-webui.service n8n.service")
        (contains "restore: the usage store swapped in without a stale -wal" script "swap /var/lib/llmvisor-backup/usage.sqlite /var/lib/llmvisor/usage.sqlite")
        (contains "restore: Open WebUI's database" script "swap /var/lib/llmvisor-backup/open-webui-webui.db /var/lib/private/open-webui/webui.db")
        # The dump is root's: read by the script's shell, not by the postgres user.
        (contains "restore: pg_restore from root's dump on stdin" script "pg_restore --clean --if-exists -d n8n < /var/lib/llmvisor-backup/n8n.pgdump")
        (contains "restore: n8n's database and role made first (postgresql-setup)" script "systemctl start postgresql.target")
        (contains "restore: Qdrant's snapshots uploaded" script "/snapshots/upload?priority=snapshot")
      ];
  };

  # Qdrant for Open WebUI's RAG, embeddings through llmvisor.
  qdrant = case {
    mods = [
      frontendsUnfree
      {
        services.llmvisor = {
          enable = true;
          models.bge = mockModel // {
            aliases = [ "text-embedding-3-small" ];
          };
        };
        llmvisor.frontends = {
          openWebui = {
            enable = true;
            llmvisorKeyFile = "/run/secrets/ow";
          };
          qdrant = {
            enable = true;
            embeddingModel = "text-embedding-3-small";
          };
        };
      }
    ];
    checks =
      cfg:
      let
        env = cfg.services.open-webui.environment;
        q = cfg.services.qdrant.settings;
      in
      [
        (eq "Qdrant on" cfg.services.qdrant.enable true)
        (eq "Qdrant on loopback" q.service.host "127.0.0.1")
        (eq "Qdrant's ports" [ q.service.http_port q.service.grpc_port ] [ 6333 6334 ])
        (eq "no telemetry" q.telemetry_disabled true)
        (eq "Open WebUI's vector store" env.VECTOR_DB "qdrant")
        (eq "Open WebUI → Qdrant" env.QDRANT_URI "http://127.0.0.1:6333")
        (eq "embeddings through llmvisor" env.RAG_EMBEDDING_ENGINE "openai")
        (eq "llmvisor's URL" env.RAG_OPENAI_API_BASE_URL "http://127.0.0.1:8080/v1")
        (eq "the embedding model" env.RAG_EMBEDDING_MODEL "text-embedding-3-small")
        (eq "Open WebUI's own key (OPENAI_API_KEY at start) also embeds" (env ? RAG_OPENAI_API_KEY) false)
        (has "Open WebUI after Qdrant" cfg.systemd.services.open-webui.after "qdrant.service")
        (eq "nothing opened" cfg.networking.firewall.allowedTCPPorts [ ])
      ];
  };

  qdrant-unknown-model = case {
    toml = false;
    mods = [
      {
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
        };
        llmvisor.frontends = {
          openWebui = {
            enable = true;
            llmvisorKeyFile = "/run/secrets/ow";
          };
          qdrant = {
            enable = true;
            embeddingModel = "bge-m3";
          };
        };
      }
    ];
    expectFailures = [ "llmvisor.frontends.qdrant.embeddingModel:" ];
  };

  # Headscale on this host; its own node logs in to it.
  headscale = case {
    mods = [
      {
        llmvisor.firewall.enable = true;
        services.llmvisor.clients.t.keyFile = "/run/secrets/t";
        llmvisor.tailscale = {
          enable = true;
          authKeyFile = "/run/secrets/ts";
          headscale = {
            enable = true;
            serverUrl = "https://headscale.example.org";
            baseDomain = "tailnet.example.org";
          };
        };
        services.llmvisor = {
          enable = true;
          models.chat = mockModel;
        };
      }
    ];
    checks =
      cfg:
      let
        h = cfg.services.headscale;
      in
      [
        (eq "Headscale on" h.enable true)
        (eq "server_url" h.settings.server_url "https://headscale.example.org")
        (eq "MagicDNS domain" h.settings.dns.base_domain "tailnet.example.org")
        (eq "listens on every address, port 443" h.settings.listen_addr "0.0.0.0:443")
        (eq "Let's Encrypt for the server's name" h.settings.tls_letsencrypt_hostname "headscale.example.org")
        (eq "TLS-ALPN-01: port 443 alone" h.settings.tls_letsencrypt_challenge_type "TLS-ALPN-01")
        (has "may bind 443" cfg.systemd.services.headscale.serviceConfig.AmbientCapabilities "CAP_NET_BIND_SERVICE")
        (eq "public: SSH and Headscale" cfg.networking.firewall.allowedTCPPorts [ 22 443 ])
        (eq "this node logs in to it" cfg.services.tailscale.extraUpFlags [
          "--hostname=nixos"
          "--login-server=https://headscale.example.org"
        ])
        (has "after Headscale" cfg.systemd.services.tailscaled-autoconnect.after "headscale.service")
      ];
  };

  # A node of a Headscale tailnet run elsewhere.
  headscale-node = case {
    toml = false;
    mods = [
      {
        llmvisor.tailscale = {
          enable = true;
          authKeyFile = "/run/secrets/ts";
          loginServer = "https://headscale.example.org";
        };
      }
    ];
    checks = cfg: [
      (eq "no Headscale here" cfg.services.headscale.enable false)
      (has "--login-server" cfg.services.tailscale.extraUpFlags "--login-server=https://headscale.example.org")
      (contains "used when joining" cfg.systemd.services.tailscaled-autoconnect.script "--login-server=https://headscale.example.org")
    ];
  };

  headscale-same-domain = case {
    toml = false;
    mods = [
      {
        llmvisor.tailscale = {
          enable = true;
          headscale = {
            enable = true;
            serverUrl = "https://hs.example.org";
            baseDomain = "example.org";
          };
        };
      }
    ];
    expectFailures = [ "llmvisor.tailscale.headscale.baseDomain:" ];
  };

  # The new stubs declare option by option, as the real modules do: a misspelt
  # option fails evaluation (tryEval catches the module system's throw).
  misspelt-options =
    let
      fails =
        name: mod:
        let
          cfg = (evalSystem [ modules.default mod ]).config;
          # The namespace the definition is in, forced whole.
          path = lib.take 2 (lib.splitString "." name);
          r = builtins.tryEval (builtins.deepSeq (lib.attrByPath path null cfg) true);
        in
        check "${name} is refused" (!r.success) r.success;
    in
    {
      failedAssertions = [ ];
      toml = null;
      checks = [
        (fails "services.restic.backups.x.pasword" { services.restic.backups.x.pasword = "/p"; })
        (fails "services.loki.configuraton" { services.loki.configuraton = { }; })
        (fails "services.alloy.extraFlag" { services.alloy.extraFlag = [ ]; })
        (fails "services.qdrant.setings" { services.qdrant.setings = { }; })
        (fails "services.headscale.settings.dns.magic_dns (a bool)" { services.headscale.settings.dns.magic_dns = "yes"; })
        (fails "services.headscale.adress" { services.headscale.adress = "0.0.0.0"; })
        (fails "llmvisor.backup.repository" { llmvisor.backup.repository = "/r"; })
        (fails "llmvisor.monitoring.logs.retension" { llmvisor.monitoring.logs.retension = "1d"; })
        (fails "llmvisor.monitoring.traces.retension" { llmvisor.monitoring.traces.retension = "1d"; })
        (fails "services.tempo.setings" { services.tempo.setings = { }; })
        (fails "llmvisor.frontends.qdrant.embedingModel" { llmvisor.frontends.qdrant.embedingModel = "x"; })
        (fails "llmvisor.tailscale.headscale.serverURL" { llmvisor.tailscale.headscale.serverURL = "x"; })
        (fails "systemd.timers.x.timerconfig" { systemd.timers.x.timerconfig = { }; })
        (check "a correct one is accepted" (builtins.tryEval (builtins.deepSeq (evalSystem [ modules.default { services.qdrant.settings.service.http_port = 6400; } ]).config.services.qdrant.settings true)).success null)
      ];
    };

  nvidia = case {
    toml = false;
    mods = [ { llmvisor.nvidia.enable = true; } ];
    checks = cfg: [
      (eq "consumer driver" cfg.services.xserver.videoDrivers [ "nvidia" ])
      (eq "open module" cfg.hardware.nvidia.open true)
      (eq "persistenced" cfg.hardware.nvidia.nvidiaPersistenced true)
      (eq "not datacenter" cfg.hardware.nvidia.datacenter.enable false)
      (eq "graphics" cfg.hardware.graphics.enable true)
      (eq "cudaSupport untouched" (cfg.nixpkgs.config or { }) { })
    ];
  };

  nvidia-datacenter = case {
    toml = false;
    mods = [
      {
        llmvisor.nvidia = {
          enable = true;
          driver = "datacenter";
          cudaSupport = true;
        };
      }
    ];
    checks = cfg: [
      (eq "datacenter driver" cfg.hardware.nvidia.datacenter.enable true)
      (eq "no X driver" (lib.elem "nvidia" cfg.services.xserver.videoDrivers) false)
      (eq "cudaSupport" cfg.nixpkgs.config.cudaSupport true)
    ];
  };

  # A host without a GPU: Ollama's CPU build by default (the CUDA one pulls in
  # unfree CUDA libraries, and no GPU would use them).
  cpu-only-ollama = case {
    mods = [
      cpuOnlyHost
      {
        services.llmvisor = {
          enable = true;
          models.llama = {
            kind = "ollama";
            model = "llama3.1:8b";
          };
          settings.server.auth = "none";
        };
      }
    ];
    checks = cfg: [
      (eq "ollama → pkgs.ollama" cfg.services.llmvisor.renderedSettings.models.llama.executable "${pkgs.ollama}/bin/ollama")
    ];
  };

  nvidia-cpu-only = case {
    toml = false;
    mods = [
      cpuOnlyHost
      {
        services.llmvisor = {
          enable = true;
          models.chat = mockModel // {
            gpus = [ 0 ];
          };
        };
      }
    ];
    expectFailures = [ "services.llmvisor.models.chat.gpus:" ];
  };

  # The flake's outputs and its module wiring.
  flake = {
    failedAssertions = [ ];
    toml = null;
    checks =
      let
        cfg =
          (evalSystem [
            modules.llmvisor
            modules.frontends
            modules.monitoring
            modules.default
            { services.llmvisor.enable = true; }
          ]).config;
      in
      [
        (eq "nixosModules" (lib.attrNames self.nixosModules) [
          "backup"
          "default"
          "firewall"
          "frontends"
          "llmvisor"
          "monitoring"
          "nvidia"
          "tailscale"
        ])
        (eq "nixosConfigurations: every host" (lib.attrNames self.nixosConfigurations) [
          "fleet-gateway"
          "fleet-gpu1"
          "fleet-gpu2"
          "gpu-droplet"
          "homelab-2x3090"
        ])
        (eq "packages" (lib.attrNames self.packages.x86_64-linux) [
          "default"
          "llmvisor"
        ])
        (eq "systems" (lib.attrNames self.packages) [
          "aarch64-linux"
          "x86_64-linux"
        ])
        (eq "checks: package, clippy, every VM test, every host" (lib.attrNames self.checks.x86_64-linux) [
          "clippy"
          "host-fleet-gateway"
          "host-fleet-gpu1"
          "host-fleet-gpu2"
          "host-gpu-droplet"
          "host-homelab-2x3090"
          "package"
          "vm-backup"
          "vm-firewall"
          "vm-fleet"
          "vm-lifecycle"
        ])
        (eq "aarch64 checks hold no x86_64 host" (lib.attrNames self.checks.aarch64-linux) [
          "clippy"
          "package"
          "vm-backup"
          "vm-firewall"
          "vm-fleet"
          "vm-lifecycle"
        ])
        (eq "overlay" (self.overlays.default pkgs pkgs).llmvisor.name "llmvisor")
        (eq "several modules, one package default" cfg.services.llmvisor.package.name "llmvisor")
        (check "devShell and formatter" (self.devShells.x86_64-linux ? default && self.formatter ? x86_64-linux) null)
      ];
  };

  # Every option of the modules has a description and an example (read-only and
  # internal ones aside).
  docs =
    let
      evaluated = evalSystem [ modules.default ];
      ours = lib.filter (
        o: lib.any (d: lib.hasInfix "/nixos-modules/" (toString d)) o.declarations
      ) (lib.optionAttrSetToDocList evaluated.options);
      lacking = lib.filter (
        o: o.visible && !o.internal && !o.readOnly && (o.description or null == null || !(o ? example))
      ) ours;
    in
    {
      failedAssertions = [ ];
      toml = null;
      checks = [
        (check "options found" (lib.length ours > 60) (lib.length ours))
        (eq "options without a description or an example" (map (o: o.name) lacking) [ ])
      ];
    };

  host-homelab-2x3090 =
    let
      h = hostCase "homelab-2x3090";
      cfg = self.nixosConfigurations.homelab-2x3090.config;
    in
    h
    // {
      checks = h.checks ++ [
        (eq "Qdrant for Open WebUI, bge-m3 embeds" cfg.services.open-webui.environment.RAG_EMBEDDING_MODEL "bge-m3")
        (eq "Loki" cfg.services.loki.enable true)
        (eq "backed up: the usage store's copy, Open WebUI, n8n" cfg.services.restic.backups.llmvisor.paths [
          "/var/lib/llmvisor-backup"
          "/var/lib/private/open-webui"
          "/var/lib/private/n8n"
        ])
        (contains "and Qdrant's collections" cfg.services.restic.backups.llmvisor.backupPrepareCommand "/collections")
      ];
    };
  host-gpu-droplet =
    let
      h = hostCase "gpu-droplet";
      cfg = self.nixosConfigurations.gpu-droplet.config;
    in
    h
    // {
      checks = h.checks ++ [
        (eq "Loki" cfg.services.loki.enable true)
        (eq "S3 credentials from a file" cfg.systemd.services.restic-backups-llmvisor.serviceConfig.EnvironmentFile "/var/lib/secrets/restic-s3.env")
      ];
    };

  # The VM tests' nodes: their llmvisor settings must pass check-config too.
  vm-lifecycle =
    let
      cfg = vmNode "lifecycle.nix" "machine" [ ];
    in
    {
      failedAssertions = failed cfg;
      checks = [
        (eq "the mock stands in for vLLM" (lib.head cfg.services.llmvisor.renderedSettings.models.chat.command) "${pkgs.llmvisor}/bin/llmvisor-mock")
      ];
      credentials = vmCredentials cfg;
      toml = cfg.services.llmvisor.renderedSettings;
    };
  vm-lifecycle-reloaded =
    let
      cfg = vmNode "lifecycle.nix" "machine" [
        (vmTest "lifecycle.nix").nodes.machine.specialisation.reloaded.configuration
      ];
    in
    {
      failedAssertions = failed cfg;
      checks = [
        (eq "one model more" (lib.attrNames cfg.services.llmvisor.renderedSettings.models) [
          "chat"
          "embed"
        ])
        (eq "chat's queue" cfg.services.llmvisor.renderedSettings.models.chat.max_queue 7)
      ];
      toml = cfg.services.llmvisor.renderedSettings;
    };
  vm-backup =
    let
      cfg = vmNode "backup.nix" "machine" [ ];
      b = cfg.services.restic.backups.llmvisor;
    in
    {
      failedAssertions = failed cfg;
      checks = [
        (eq "the test's repository file" b.repositoryFile "/etc/llmvisor-test/restic-repository")
        (eq "no timer: the test starts it" (cfg.systemd.timers ? restic-backups-llmvisor) false)
        (eq "the usage store, Open WebUI and n8n" b.paths [
          "/var/lib/llmvisor-backup"
          "/var/lib/private/open-webui"
          "/var/lib/private/n8n"
        ])
        (eq "Open WebUI does not start" cfg.systemd.services.open-webui.wantedBy [ ])
        (eq "n8n does not start" cfg.systemd.services.n8n.wantedBy [ ])
        (eq "n8n's database" cfg.services.postgresql.ensureDatabases [ "n8n" ])
        (contains "the usage store's copy" b.backupPrepareCommand "store-backup --db /var/lib/llmvisor/usage.sqlite")
        (contains "n8n's dump" b.backupPrepareCommand "pg_dump --format=custom n8n")
        (check "the restore command is installed" (lib.any (p: p.name == "llmvisor-backup-restore") cfg.environment.systemPackages) null)
        (check "the wrapper restic-llmvisor is installed" (lib.any (p: p.name == "restic-llmvisor") cfg.environment.systemPackages) null)
      ];
      credentials = vmCredentials cfg;
      toml = cfg.services.llmvisor.renderedSettings;
      # The two scripts the module writes, as text (their store paths are the
      # stubs'), for running them elsewhere: `-A vm-backup.scripts`.
      scripts = {
        prepare = b.backupPrepareCommand;
        # What NixOS's restic unit runs after it, from the module's paths and
        # excludes (restic.nix passes them as --files-from and --exclude-file).
        backup = "restic backup ${lib.concatStringsSep " " b.paths}${
          lib.concatMapStrings (e: " --exclude '${e}'") b.exclude
        }\n";
        restore = (lib.findFirst (p: p.name == "llmvisor-backup-restore") null cfg.environment.systemPackages).text;
      };
    };
  vm-firewall-server =
    let
      cfg = vmNode "firewall.nix" "server" [ ];
    in
    {
      failedAssertions = failed cfg;
      checks = [
        (eq "public: SSH" cfg.networking.firewall.allowedTCPPorts [ 22 ])
        (eq "llmvisor on tailnet0" cfg.networking.firewall.interfaces.tailnet0.allowedTCPPorts [ 8080 ])
      ];
      credentials = vmCredentials cfg;
      toml = cfg.services.llmvisor.renderedSettings;
    };

  # --- hosts/fleet (colmena's hive and three hosts) and tests/nixos/fleet.nix -----
  inherit
    (
      let
        fleet = import (repo + "/hosts/fleet/fleet.nix") { inherit lib; };
        hive = self.colmena;
        fleetHosts = [
          "fleet-gateway"
          "fleet-gpu1"
          "fleet-gpu2"
        ];
        secret = file: "${fleet.secrets}/${file}";
        sorted = lib.sort (a: b: a < b);

        # colmena 0.4's `deployment` options (src/nix/hive/options.nix), the part the
        # hive sets, declared as colmena declares them, and its assertion that a key
        # has exactly one source (src/nix/hive/modules.nix).
        colmenaKey =
          { name, config, ... }:
          {
            options = {
              name = lib.mkOption {
                type = lib.types.str;
                default = name;
              };
              text = lib.mkOption {
                type = lib.types.nullOr lib.types.str;
                default = null;
              };
              keyFile = lib.mkOption {
                type = lib.types.nullOr lib.types.path;
                default = null;
              };
              keyCommand = lib.mkOption {
                type = lib.types.nullOr (lib.types.addCheck (lib.types.listOf lib.types.str) (l: l != [ ]));
                default = null;
              };
              destDir = lib.mkOption {
                type = lib.types.path;
                default = "/run/keys";
              };
              path = lib.mkOption {
                type = lib.types.path;
                default = "${config.destDir}/${config.name}";
              };
              user = lib.mkOption {
                type = lib.types.str;
                default = "root";
              };
              group = lib.mkOption {
                type = lib.types.str;
                default = "root";
              };
              permissions = lib.mkOption {
                type = lib.types.str;
                default = "0600";
              };
              uploadAt = lib.mkOption {
                type = lib.types.enum [
                  "pre-activation"
                  "post-activation"
                ];
                default = "pre-activation";
              };
            };
          };
        colmenaDeployment =
          name:
          { config, ... }:
          {
            options.deployment = {
              targetHost = lib.mkOption {
                type = lib.types.nullOr lib.types.str;
                default = name;
              };
              targetUser = lib.mkOption {
                type = lib.types.nullOr lib.types.str;
                default = "root";
              };
              tags = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [ ];
              };
              keys = lib.mkOption {
                type = lib.types.attrsOf (lib.types.submodule colmenaKey);
                default = { };
              };
            };
            config.assertions = lib.mapAttrsToList (key: k: {
              assertion = lib.length (lib.filter (x: x != null) [ k.text k.keyCommand k.keyFile ]) == 1;
              message = "${name}.deployment.keys.${key}: exactly one of text, keyCommand and keyFile must be set.";
            }) config.deployment.keys;
          };

        # A node as colmena evaluates it: colmena's options, the hive's defaults, the
        # node's entry.
        colmenaNode =
          name:
          (evalSystem [
            (colmenaDeployment name)
            hive.defaults
            hive.${name}
          ]).config;

        # Every key file a host's services read: llmvisor's credentials, Tailscale's
        # auth key.
        keyFilesRead =
          cfg:
          map (c: lib.concatStringsSep ":" (lib.tail (lib.splitString ":" c))) (sc cfg).LoadCredential
          ++ lib.optional (cfg.services.tailscale.authKeyFile != null) cfg.services.tailscale.authKeyFile;

        colmenaChecks =
          name:
          let
            node = colmenaNode name;
            host = self.nixosConfigurations.${name}.config;
            keys = lib.attrValues node.deployment.keys;
          in
          [
            (eq "colmena's node renders what nixosConfigurations.${name} renders" node.services.llmvisor.renderedSettings host.services.llmvisor.renderedSettings)
            (eq "colmena's node has the same credentials" (sorted (sc node).LoadCredential) (sorted (sc host).LoadCredential))
            (eq "colmena delivers every key file the services read" (lib.subtractLists (map (k: k.path) keys) (keyFilesRead host)) [ ])
            (eq "colmena delivers no key nothing reads" (lib.subtractLists (keyFilesRead host) (map (k: k.path) keys)) [ ])
            (eq "keys come from the deployer by command, not from the store" (lib.filter (k: k.keyCommand == null) keys) [ ])
            (eq "keys are root-only" (lib.unique (map (k: k.permissions) keys)) [ "0400" ])
            (eq "colmena's assertions hold" (failed node) [ ])
          ];

        hostFleetCase =
          name: extra:
          let
            h = hostCase name;
            cfg = self.nixosConfigurations.${name}.config;
          in
          h
          // {
            checks = h.checks ++ colmenaChecks name ++ extra cfg cfg.services.llmvisor.renderedSettings;
          };

        # The VM test's nodes.
        vmGateway = vmNode "fleet.nix" "gateway" [ ];
        vmGpu = node: vmNode "fleet.nix" node [ ];
        vmGpuCase =
          node:
          let
            cfg = vmGpu node;
            s = cfg.services.llmvisor.renderedSettings;
          in
          {
            failedAssertions = failed cfg;
            checks = [
              (eq "public: SSH only" cfg.networking.firewall.allowedTCPPorts [ 22 ])
              (eq "llmvisor on eth1 (the test network plays the tailnet)" cfg.networking.firewall.interfaces.eth1.allowedTCPPorts [ 8080 ])
              (eq "listens on every address" s.server.listen [ "0.0.0.0:8080" ])
              (eq "keys required" s.server.auth "required")
              (eq "the gateway is a client" s.clients.gateway.key_file "client-gateway")
              (eq "its key file" (sc cfg).LoadCredential [ "client-gateway:/etc/llmvisor-test/gateway.key" ])
              (eq "the mock stands in for vLLM" (lib.head s.models.chat.command) "${pkgs.llmvisor}/bin/llmvisor-mock")
              (eq "the model stays loaded" s.models.chat.idle_ttl 0)
            ];
            credentials = vmCredentials cfg;
            toml = s;
          };
      in
      {
        # The flake's `colmena` output as colmena 0.4 reads it.
        fleet-colmena = {
          failedAssertions = [ ];
          toml = null;
          checks = [
            (eq "meta, defaults and one attribute per node" (lib.attrNames hive) ([ "defaults" ] ++ fleetHosts ++ [ "meta" ]))
            (eq "meta.nixpkgs: an initialized nixpkgs (x86_64-linux)" hive.meta.nixpkgs.stdenv.hostPlatform.system "x86_64-linux")
            (check "meta.nixpkgs is no flake (colmena refuses uninitialized nixpkgs)" (!(hive.meta.nixpkgs ? outputs) && !(hive.meta.nixpkgs ? outPath)) null)
            (eq "targets" (map (n: (colmenaNode n).deployment.targetHost) fleetHosts) [
              "192.0.2.10"
              "192.0.2.11"
              "192.0.2.12"
            ])
            (eq "tags: @fleet, @gateway, @gpu" (map (n: (colmenaNode n).deployment.tags) fleetHosts) [
              [ "fleet" "gateway" ]
              [ "fleet" "gpu" ]
              [ "fleet" "gpu" ]
            ])
            (eq "nixosConfigurations.fleet-*: the hive's hosts" (lib.filter (lib.hasPrefix "fleet-") (lib.attrNames self.nixosConfigurations)) fleetHosts)
            (eq "each node's gateway.key is the gateway's key for that node" (map (
              n: (colmenaNode n).deployment.keys."gateway.key".keyCommand
            ) fleet.gpuNodes) (map (n: (colmenaNode "fleet-gateway").deployment.keys.${fleet.peerKey n}.keyCommand) fleet.gpuNodes))
            (eq "host checks" (lib.filter (n: lib.hasPrefix "host-fleet-" n) (lib.attrNames self.checks.x86_64-linux)) (
              map (n: "host-${n}") fleetHosts
            ))
            (has "the VM test is a check" (lib.attrNames self.checks.x86_64-linux) "vm-fleet")
          ];
        };

        host-fleet-gateway = hostFleetCase "fleet-gateway" (
          cfg: s: [
            (eq "providers: one per node" (lib.attrNames s.providers) fleet.gpuNodes)
            (eq "providers.fleet-gpu1" s.providers.fleet-gpu1 {
              base_url = "http://fleet-gpu1.example-tailnet.ts.net:8080/v1";
              key_file = "provider-fleet-gpu1";
              timeout = "15m";
              context_length = 32768;
              health_path = "/health";
              health_interval = "2s";
              health_timeout = "1s";
              unhealthy_after = 2;
              healthy_after = 2;
            })
            (eq "routes.chat over the nodes, least-outstanding, local fallback" s.routes.chat {
              targets = [
                "fleet-gpu1/qwen-7b"
                "fleet-gpu2/qwen-7b"
              ];
              strategy = "least-outstanding";
              fallback = [ "gateway-small" ];
            })
            (has "the key for fleet-gpu1 is a credential" (sc cfg).LoadCredential "provider-fleet-gpu1:${secret "peer-fleet-gpu1.key"}")
            (eq "loopback only; tailscale serve is the way in" s.server.listen [ "127.0.0.1:8080" ])
            (eq "no port open" cfg.networking.firewall.interfaces.tailscale0.allowedTCPPorts [ ])
            (contains "tailscale serve" cfg.systemd.services.llmvisor-tailscale-serve.script "--https=443 http://127.0.0.1:8080")
          ]
        );

        host-fleet-gpu1 = hostFleetCase "fleet-gpu1" (
          cfg: s: [
            (eq "hostName" cfg.networking.hostName "fleet-gpu1")
            (eq "the gateway, the only client" s.clients {
              gateway = {
                key_file = "client-gateway";
                models = [ "qwen-7b" ];
                rpm = 0;
                tpm = 0;
                priority = "interactive";
              };
            })
            (eq "its key" (sc cfg).LoadCredential [ "client-gateway:${secret "gateway.key"}" ])
            (eq "on the tailnet" s.server.listen [ "0.0.0.0:8080" ])
            (eq "port on tailscale0 only" cfg.networking.firewall.interfaces.tailscale0.allowedTCPPorts [ 8080 ])
            (eq "public: SSH" cfg.networking.firewall.allowedTCPPorts [ 22 ])
            (eq "the model the gateway names" (lib.attrNames s.models) [ "qwen-7b" ])
            (eq "CUDA" cfg.nixpkgs.config.cudaSupport true)
          ]
        );

        host-fleet-gpu2 = hostFleetCase "fleet-gpu2" (
          cfg: s: [
            (eq "hostName" cfg.networking.hostName "fleet-gpu2")
            (eq "its key" (sc cfg).LoadCredential [ "client-gateway:${secret "gateway.key"}" ])
          ]
        );

        vm-fleet-gateway =
          let
            cfg = vmGateway;
            s = cfg.services.llmvisor.renderedSettings;
            etc = c: f: c.environment.etc."llmvisor-test/${f}".text;
          in
          {
            failedAssertions = failed cfg;
            checks = [
              (eq "providers.gpu1: the node by its name, health-checked" s.providers.gpu1 {
                base_url = "http://gpu1:8080/v1";
                key_file = "provider-gpu1";
                timeout = "15m";
                health_path = "/health";
                health_interval = "2s";
                health_timeout = "1s";
                unhealthy_after = 2;
                healthy_after = 2;
              })
              (eq "providers.gpu2" s.providers.gpu2.base_url "http://gpu2:8080/v1")
              (eq "routes.chat" s.routes.chat {
                targets = [
                  "gpu1/chat"
                  "gpu2/chat"
                ];
                strategy = "least-outstanding";
                fallback = [ "local" ];
              })
              (eq "a dead node is given up on after 2 s" s.server.upstream_connect_timeout "2s")
              (eq "credentials" (sorted (sc cfg).LoadCredential) [
                "client-tester:/etc/llmvisor-test/tester.key"
                "provider-gpu1:/etc/llmvisor-test/peer-gpu1.key"
                "provider-gpu2:/etc/llmvisor-test/peer-gpu2.key"
              ])
              (eq "the gateway's key for gpu1 is gpu1's" (etc cfg "peer-gpu1.key") (etc (vmGpu "gpu1") "gateway.key"))
              (eq "the gateway's key for gpu2 is gpu2's" (etc cfg "peer-gpu2.key") (etc (vmGpu "gpu2") "gateway.key"))
              (check "the nodes' keys differ" (etc cfg "peer-gpu1.key" != etc cfg "peer-gpu2.key") null)
              (eq "keys root-only" cfg.environment.etc."llmvisor-test/peer-gpu1.key".mode "0400")
              (contains "the load reports each request's target" cfg.systemd.services.fleet-load.script "x-llmvisor-target")
            ];
            credentials = vmCredentials cfg;
            toml = s;
          };

        vm-fleet-gpu1 = vmGpuCase "gpu1";
        vm-fleet-gpu2 = vmGpuCase "gpu2";
      }
    )
    fleet-colmena
    host-fleet-gateway
    host-fleet-gpu1
    host-fleet-gpu2
    vm-fleet-gateway
    vm-fleet-gpu1
    vm-fleet-gpu2
    ;
};
  # Only with `realModules`: the real modules are the ones in effect (their
  # options are declared by the files under realModules, their assertions are
  # among every host's and VM node's, their renderings evaluate).
  realCases = {
    real-modules =
      let
        dir = toString (if builtins.isString realModules then /. + realModules else realModules);
        options = (evalSystem [ modules.default ]).options;
        declaredBy =
          opt: file:
          check "${lib.showOption opt.loc} is declared by the real ${file}" (
            map toString opt.declarations == [ "${dir}/nixos/modules/services/networking/${file}" ]
          ) (map toString opt.declarations);
        hosts = lib.mapAttrs (_: h: h.config) self.nixosConfigurations;
        nodes = {
          vm-firewall-server = vmNode "firewall.nix" "server" [ ];
          vm-fleet-gateway = vmNode "fleet.nix" "gateway" [ ];
          vm-fleet-gpu1 = vmNode "fleet.nix" "gpu1" [ ];
          vm-fleet-gpu2 = vmNode "fleet.nix" "gpu2" [ ];
          vm-lifecycle = vmNode "lifecycle.nix" "machine" [ ];
        };
        messages = cfg: map (a: a.message) cfg.assertions;
        # One assertion of each real module that is active on a system.
        realAssertions =
          cfg:
          [ "filterForward only works with the nftables based firewall" ]
          ++ (
            if cfg.networking.firewall.backend == "nftables" then
              [ "networking.nftables.rulesetFile conflicts with the firewall" ]
            else
              [ "This kernel does not support rpfilter" ]
          );
        carriesReal =
          name: cfg:
          check "${name}: the real firewall modules' assertions are evaluated (backend ${cfg.networking.firewall.backend})" (
            lib.all (m: lib.elem m (messages cfg)) (realAssertions cfg)
          ) (messages cfg);
        ruleset = cfg: cfg.networking.nftables.tables.nixos-fw.content;
        gpu1 = hosts.fleet-gpu1;
      in
      {
        failedAssertions = [ ];
        toml = null;
        checks = [
          (declaredBy options.networking.firewall.enable "firewall.nix")
          (declaredBy options.networking.firewall.extraCommands "firewall-iptables.nix")
          (declaredBy options.networking.firewall.extraInputRules "firewall-nftables.nix")
          (declaredBy options.networking.nftables.enable "nftables.nix")
          (declaredBy options.services.tailscale.enable "tailscale.nix")
        ]
        ++ lib.mapAttrsToList carriesReal (hosts // nodes)
        ++ [
          (eq "every host uses the nftables backend" (lib.mapAttrs (_: c: c.networking.firewall.backend) hosts) (
            lib.mapAttrs (_: _: "nftables") hosts
          ))
          (contains "fleet-gpu1's nftables ruleset: SSH public" (ruleset gpu1) " tcp dport { 22 } accept")
          (contains "fleet-gpu1's nftables ruleset: llmvisor on tailscale0" (ruleset gpu1) "iifname tailscale0 tcp dport { 8080 } accept")
          (contains "fleet-gpu1's nftables ruleset: Tailscale's UDP port public" (ruleset gpu1) " udp dport { 41641 } accept")
          (contains "fleet-gpu1's nftables ruleset: loopback trusted" (ruleset gpu1) ''iifname { "lo" } accept'')
          (contains "fleet-gpu1's nftables unit loads the table" (lib.elemAt gpu1.systemd.services.nftables.serviceConfig.ExecStart 1).text "table inet nixos-fw {")
          (contains "vm-firewall-server's ruleset: llmvisor on tailnet0" (ruleset nodes.vm-firewall-server) "iifname tailnet0 tcp dport { 8080 } accept")
          (eq "fleet-gpu1: tailscaled-autoconnect with the auth key" (lib.hasInfix "${hosts.fleet-gpu1.services.tailscale.authKeyFile}" gpu1.systemd.services.tailscaled-autoconnect.script) true)
          (eq "vm-lifecycle: the iptables firewall (the default backend), reverse-path check on" {
            inherit (nodes.vm-lifecycle.networking.firewall) backend checkReversePath;
            unit = nodes.vm-lifecycle.systemd.services ? firewall;
          } {
            backend = "iptables";
            checkReversePath = true;
            unit = true;
          })
        ];
      };
  };
  all = cases // lib.optionalAttrs real realCases;
in
all // { __cases = lib.attrNames all; }
