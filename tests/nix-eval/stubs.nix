# Stand-ins for the NixOS options the llmvisor modules, the example hosts and the VM
# tests' nodes touch, so they can be evaluated with nixpkgs' `lib` alone
# (`lib.evalModules`) where there is no nixpkgs checkout.
#
# Each stub names the real module it stands for and declares what that module
# declares for the options we set or read: the same type (so a value NixOS refuses
# is refused here), the same default and `apply` (so what our modules read is what
# NixOS would give them), and the side effects the real module has unconditionally
# or whenever it is enabled, on options our modules or checks read (firewall ports
# and trusted interfaces, systemd units, /etc, users, assertions). Namespaces our
# code sets are declared option by option, without a freeform type, so a misspelt
# or removed option fails evaluation here as it would on NixOS. Where the real
# module declares more than we use, only what we use is declared: a new, valid
# option then fails here first and is added to the stub. tests/nix-eval/README.md
# lists every stub, the nixpkgs file and version it was checked against, and what
# was checked.
#
# What NixOS does with the values (unit files, the nftables ruleset, builds) only
# a real build and the VM tests show.
#
# `realModules = true` (eval.nix with `--arg realModules <dir>`): the real NixOS
# firewall, nftables and Tailscale modules are evaluated instead of their stubs, so
# the stubs of `networking.firewall.*`, `networking.nftables.*` and
# `services.tailscale.*` and their side effects are left out, and the options and
# packages those real modules read or set that nothing else here declares are
# added (see `realModuleOptions` and `realPkgs`; tests/nix-eval/README.md).
{
  lib,
  realModules ? false,
}:
let
  inherit (lib) mkOption types;

  opt =
    type: default:
    mkOption {
      inherit type default;
      description = "stub";
    };
  # An option without a default: reading it unset fails, as in NixOS.
  req =
    type:
    mkOption {
      inherit type;
      description = "stub";
    };
  optApply =
    type: default: apply:
    mkOption {
      inherit type default apply;
      description = "stub";
    };
  bool = opt types.bool;
  enable = opt types.bool false;
  str = opt types.str;
  nullStr = opt (types.nullOr types.str) null;
  strList = opt (types.listOf types.str) [ ];
  lines = opt types.lines "";

  # Namespaces the NixOS stubs do not model option by option (nothing of ours sets
  # them, or only through a real module's side effect): any value, lists
  # concatenate as most NixOS list options do.
  loose = lib.mkOptionType {
    name = "loose";
    description = "stub value";
    check = _: true;
    merge =
      loc: defs:
      let
        values = map (d: d.value) defs;
        plainSet = v: lib.isAttrs v && !(v ? outPath);
      in
      if lib.all lib.isList values then
        lib.concatLists values
      else if lib.all plainSet values then
        (types.attrsOf loose).merge loc defs
      else
        types.anything.merge loc defs;
  };
  ns = opt (types.attrsOf loose) { };
  freeformSubmodule =
    options:
    types.submodule {
      freeformType = types.lazyAttrsOf loose;
      inherit options;
    };

  fakePackage =
    name:
    let
      self = {
        type = "derivation";
        inherit name;
        pname = name;
        version = "0";
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
        outputs = [ "out" ];
        out = self;
        bin = self;
        meta.mainProgram = name;
      };
    in
    self;

  # The NVIDIA driver of boot.kernelPackages.nvidiaPackages: a version at or past
  # 560, as nixos-25.11's `stable` and `dc` are, so `hardware.nvidia.open` has no
  # default (see the hardware.nvidia stub).
  fakeNvidia =
    branch:
    fakePackage "nvidia-x11-${branch}"
    // {
      version = "580.0";
      open = fakePackage "nvidia-open-${branch}";
      firmware = fakePackage "nvidia-firmware-${branch}";
      persistenced = fakePackage "nvidia-persistenced-${branch}";
      settings = fakePackage "nvidia-settings-${branch}";
    };

  # What the real firewall, nftables and Tailscale modules call on `pkgs` besides
  # (only with `realModules`): trivial builders that keep their arguments, and
  # packages.
  realPkgs =
    {
      writeScriptBin = name: text: fakePackage name // { inherit text; };
      writeScript = name: text: fakePackage name // { inherit text; };
      writeText = name: text: fakePackage name // { inherit text; };
      writeTextFile = args: fakePackage args.name // args;
      runtimeShell = "/nix/store/00000000000000000000000000000000-bash/bin/bash";
      buildPackages = lib.genAttrs [
        "iana-etc"
        "libredirect"
        "nftables"
      ] fakePackage
      // {
        lklWithFirewall = fakePackage "lkl" // { lib = fakePackage "lkl-lib"; };
      };
    }
    // lib.genAttrs [
      "getent"
      "kmod"
      "nixos-firewall-tool"
      "openresolv"
      "procps"
    ] fakePackage;

  # boot.kernelPackages.kernel, for the real firewall modules (only with
  # `realModules`): firewall-iptables.nix tests `kernel.config.isEnabled
  # "IP_NF_MATCH_RPFILTER"` or `kernel.features.netfilterRPFilter` (nixpkgs'
  # kernel builders set `features.netfilterRPFilter = true`, as read in the index;
  # that the common config also enables IP_NF_MATCH_RPFILTER is from memory);
  # firewall.nix reads `kernel.version` only for its conntrack-helper assertion
  # (6.12, 25.11's default kernel, from memory).
  fakeKernel = fakePackage "linux" // {
    version = "6.12.0";
    features = {
      efiBootStub = true;
      netfilterRPFilter = true;
      ia32Emulation = true;
    };
    config.isEnabled = option: lib.elem option [ "IP_NF_MATCH_RPFILTER" ];
  };

  # What the modules call on `pkgs`.
  pkgs = lib.optionalAttrs realModules realPkgs // {
    formats = lib.genAttrs [ "toml" "json" "yaml" ] (
      _:
      { }:
      {
        type = types.lazyAttrsOf loose;
        generate = name: value: fakePackage name // { settings = value; };
      }
    );
    writeTextDir =
      path: text:
      fakePackage "dir-${baseNameOf path}" // { inherit path text; };
    writeShellScriptBin =
      name: text:
      fakePackage name // { inherit text; };
    runCommand =
      name: env: buildCommand:
      fakePackage name // { inherit env buildCommand; };
    writeShellScript = name: text: fakePackage name // { inherit text; };
    callPackage = _path: _args: fakePackage "llmvisor";
    stdenv.hostPlatform.system = "x86_64-linux";
  }
  // lib.genAttrs [
    "coreutils"
    "curl"
    "grafana-alloy"
    "grafana-loki"
    "headscale"
    "jq"
    "qdrant"
    "qdrant-web-ui"
    "restic"
    "sqlite"
    "tempo"
    "util-linux"
    "llama-cpp"
    "llmvisor"
    "n8n"
    "nftables"
    "iptables"
    "ollama"
    "ollama-cuda"
    "open-webui"
    "openssh"
    "postgresql"
    "prometheus"
    "prometheus-node-exporter"
    "prometheus-nvidia-gpu-exporter"
    "grafana"
    "tailscale"
    "vllm"
  ] fakePackage
  // lib.mapAttrs
    (
      name: main:
      let
        p = fakePackage name;
      in
      if main == null then
        p // { meta = removeAttrs p.meta [ "mainProgram" ]; }
      else
        lib.recursiveUpdate p { meta.mainProgram = main; }
    )
    {
      # nixpkgs' own meta.mainProgram (what lib.getExe runs), where it is not the
      # attribute's name; null: none (getExe then warns and guesses the name).
      grafana-alloy = "alloy";
      grafana-loki = "loki";
      prometheus-node-exporter = "node_exporter";
      prometheus-nvidia-gpu-exporter = "nvidia_gpu_exporter";
      llama-cpp = "llama";
      ollama-cuda = "ollama";
      tempo = null;
      qdrant = null;
      vllm = null;
      util-linux = null;
      coreutils = null;
      postgresql = null;
    }
  // {
    # Unfree in nixpkgs (meta.license.free = false): pkgs/by-name/n8/n8n
    # (`licenses.sustainableUse`) and pkgs/by-name/op/open-webui ("Open WebUI
    # License": "Nixpkgs treats this custom license as non-free").
    n8n = unfreePackage "n8n" "Sustainable Use License";
    open-webui = unfreePackage "open-webui" "Open WebUI License";
  };

  # A package nixpkgs marks unfree.
  unfreePackage =
    name: license:
    lib.recursiveUpdate (fakePackage name) {
      meta.license = {
        fullName = license;
        free = false;
      };
    };

  # nixpkgs' check-meta (pkgs/stdenv/generic/check-meta.nix): a package whose
  # license is unfree refuses to evaluate unless nixpkgs.config.allowUnfree, or
  # allowUnfreePredicate, admits it. A VM test's node cannot set nixpkgs.config
  # (its pkgs are the flake's, read-only), so there it is never admitted.
  unfreeAdmitted =
    config: pkg:
    let
      c = config.nixpkgs.config;
    in
    {
      assertion =
        (pkg.meta.license.free or true)
        || (c.allowUnfree or false)
        || ((c.allowUnfreePredicate or (_: false)) pkg);
      message = "Package ‘${pkg.name}’ has an unfree license (‘${pkg.meta.license.fullName or "unfree"}’), refusing to evaluate (nixpkgs.config.allowUnfree, or allowUnfreePredicate).";
    };

  # ---------------------------------------------------------------------------
  # nixos/modules/services/networking/firewall.nix (+ firewall-nftables.nix):
  # port lists are sorted and de-duplicated (`apply`), ranges are
  # listOf (attrsOf port), the same four options per interface.
  canonicalPorts = ports: lib.unique (builtins.sort builtins.lessThan ports);
  portList = optApply (types.listOf types.port) [ ] canonicalPorts;
  portRanges = opt (types.listOf (types.attrsOf types.port)) [ ];
  firewallPorts = {
    allowedTCPPorts = portList;
    allowedUDPPorts = portList;
    allowedTCPPortRanges = portRanges;
    allowedUDPPortRanges = portRanges;
  };

  # ---------------------------------------------------------------------------
  # nixos/lib/systemd-unit-options.nix: a unit setting (`serviceConfig.X`,
  # `sliceConfig.X`). Lists concatenate; a list next to a single value makes a list
  # of both; two different single values are a conflict, as in NixOS.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    description = "systemd unit setting";
    check =
      v:
      lib.isBool v
      || lib.isInt v
      || lib.isString v
      || lib.isPath v
      || lib.isDerivation v
      || (lib.isAttrs v && v ? outPath)
      || lib.isList v;
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  unitSettings = opt (types.attrsOf unitOption) { };
  unitNames = strList;

  # The options of [Unit] and [Install] every unit kind has.
  commonUnitOptions = {
    enable = bool true;
    description = str "";
    documentation = strList;
    requires = unitNames;
    wants = unitNames;
    upholds = unitNames;
    after = unitNames;
    before = unitNames;
    bindsTo = unitNames;
    partOf = unitNames;
    conflicts = unitNames;
    requisite = unitNames;
    wantedBy = unitNames;
    requiredBy = unitNames;
    upheldBy = unitNames;
    aliases = unitNames;
    onFailure = unitNames;
    onSuccess = unitNames;
    unitConfig = unitSettings;
    restartTriggers = opt (types.listOf types.unspecified) [ ];
    reloadTriggers = opt (types.listOf unitOption) [ ];
    startLimitBurst = opt types.int 0;
    startLimitIntervalSec = opt types.int 0;
    overrideStrategy = opt (types.enum [
      "asDropinIfExists"
      "asDropin"
    ]) "asDropinIfExists";
  };

  serviceUnit = types.submodule (
    { name, ... }:
    {
      options = commonUnitOptions // {
        # readOnly in NixOS: the unit's file name.
        name = opt types.str "${name}.service";
        environment = opt (types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        )) { };
        path = opt (types.listOf (
          types.oneOf [
            types.package
            types.str
          ]
        )) [ ];
        serviceConfig = unitSettings;
        script = lines;
        scriptArgs = str "";
        preStart = lines;
        postStart = lines;
        reload = lines;
        preStop = lines;
        postStop = lines;
        enableStrictShellChecks = bool false;
        restartIfChanged = bool true;
        reloadIfChanged = bool false;
        stopIfChanged = bool true;
        startAt = opt (types.either types.str (types.listOf types.str)) [ ];
        # nixos/modules/security/systemd-confinement.nix
        confinement = ns;
      };
    }
  );

  # nixos/lib/systemd-unit-options.nix: a timer (restic's).
  timerUnit = types.submodule (
    { name, ... }:
    {
      options = commonUnitOptions // {
        name = opt types.str "${name}.timer";
        timerConfig = unitSettings;
      };
    }
  );

  sliceUnit = types.submodule (
    { name, ... }:
    {
      options = commonUnitOptions // {
        name = opt types.str "${name}.slice";
        sliceConfig = unitSettings;
      };
    }
  );

  targetUnit = types.submodule (
    { name, ... }:
    {
      options = commonUnitOptions // {
        name = opt types.str "${name}.target";
      };
    }
  );

  # ---------------------------------------------------------------------------
  # nixos/modules/system/etc/etc.nix: environment.etc.<name>.
  etcFile = types.submodule (
    { name, config, ... }:
    {
      options = {
        enable = bool true;
        target = str name;
        text = opt (types.nullOr types.lines) null;
        source = req types.path;
        mode = str "symlink";
        uid = opt types.int 0;
        gid = opt types.int 0;
        user = str "+${toString config.uid}";
        group = str "+${toString config.gid}";
      };
      config.source = lib.mkIf (config.text != null) (
        lib.mkDefault (fakePackage "etc-${baseNameOf name}")
      );
    }
  );

  # ---------------------------------------------------------------------------
  # nixos/modules/tasks/filesystems.nix: fileSystems.<mountPoint>.
  fileSystem = types.submodule (
    { name, ... }:
    {
      options = {
        mountPoint = str name;
        device = nullStr;
        fsType = str "auto";
        options = opt (types.nonEmptyListOf types.nonEmptyStr) [ "defaults" ];
        label = nullStr;
        neededForBoot = bool false;
      };
    }
  );

  # ---------------------------------------------------------------------------
  # nixos/modules/services/misc/n8n.nix: services.n8n.environment (the module that
  # replaced `settings` and `webhookUrl` with it).
  n8nEnvValue = types.oneOf [
    types.str
    (types.coercedTo types.int toString types.str)
    (types.coercedTo types.bool builtins.toJSON types.str)
  ];

  # ---------------------------------------------------------------------------
  # nixos/modules/services/monitoring/prometheus/default.nix: a scrape job. The real
  # submodule declares every field of Prometheus' scrape_config, none freeform,
  # nearly all `nullOr` with default null (dropped when rendered); only the ones
  # our modules use are declared here.
  nullOpt = type: opt (types.nullOr type) null;
  staticConfig = types.submodule {
    options = {
      targets = req (types.listOf types.str);
      labels = opt (types.attrsOf types.str) { };
    };
  };
  scrapeConfig = types.submodule {
    options = {
      job_name = req types.str;
      static_configs = nullOpt (types.listOf staticConfig);
      metrics_path = nullOpt types.str;
      scheme = nullOpt (
        types.enum [
          "http"
          "https"
        ]
      );
      scrape_interval = nullOpt types.str;
      scrape_timeout = nullOpt types.str;
      authorization = nullOpt types.attrs;
      bearer_token_file = nullOpt types.str;
      params = nullOpt (types.attrsOf (types.listOf types.str));
      honor_labels = nullOpt types.bool;
    };
  };
  # nixos/modules/services/monitoring/prometheus/exporters.nix: the options every
  # exporter has (mkExporterOpts).
  exporter =
    name: port: extraOptions:
    opt (types.submodule {
      options = {
        enable = enable;
        port = opt types.port port;
        listenAddress = str "0.0.0.0";
        extraFlags = strList;
        openFirewall = bool false;
        firewallFilter = nullStr;
        firewallRules = opt (types.nullOr types.lines) null;
        user = str "${name}-exporter";
        group = str "${name}-exporter";
      }
      // extraOptions;
    }) { };

  # ---------------------------------------------------------------------------
  # nixos/modules/services/monitoring/grafana.nix: `settings` is freeform INI with
  # some declared keys; a datasource or dashboard provider is freeform with some
  # declared keys.
  grafanaSection = options: opt (freeformSubmodule options) { };
  grafanaDatasource = freeformSubmodule {
    name = req types.str;
    type = req types.str;
    uid = nullStr;
    url = str "";
    access = opt (types.enum [
      "proxy"
      "direct"
    ]) "proxy";
    isDefault = bool false;
    jsonData = opt (types.nullOr types.attrs) null;
    secureJsonData = opt (types.nullOr types.attrs) null;
    editable = bool false;
  };
  grafanaProvider = freeformSubmodule {
    name = str "default";
    type = str "file";
    options.path = opt (types.nullOr types.path) null;
  };

  options = config: {
    # nixos/modules/misc/assertions.nix
    assertions = opt (types.listOf types.unspecified) [ ];
    warnings = opt (types.listOf types.str) [ ];

    # nixos/modules/system/boot/kernel.nix, loader/grub/grub.nix,
    # loader/systemd-boot/systemd-boot.nix, loader/efi.nix,
    # system/boot/modprobe.nix, misc/nixpkgs.nix' stateVersion in misc/version.nix
    boot = {
      kernelModules = strList;
      blacklistedKernelModules = strList;
      extraModprobeConfig = lines;
      kernelParams = strList;
      kernel.sysctl = ns;
      # The real default is pkgs.linuxPackages; here, just what the NVIDIA module
      # reads.
      kernelPackages = opt types.raw (
        {
          nvidiaPackages = {
            stable = fakeNvidia "stable";
            production = fakeNvidia "production";
            dc = fakeNvidia "dc";
          };
        }
        // lib.optionalAttrs realModules { kernel = fakeKernel; }
      );
      initrd.availableKernelModules = strList;
      initrd.kernelModules = strList;
      loader = {
        grub = {
          enable = bool true;
          device = str "";
          devices = strList;
          efiSupport = bool false;
        };
        systemd-boot.enable = bool false;
        efi.canTouchEfiVariables = bool false;
      };
    };

    # nixos/modules/tasks/filesystems.nix
    fileSystems = opt (types.attrsOf fileSystem) { };

    # nixos/modules/config/locale.nix
    time.timeZone = nullStr;

    # nixos/modules/misc/nixpkgs.nix: hostPlatform is elaborated (`apply`), so it
    # reads as an attribute set with `.system`, not as the string that was set.
    nixpkgs = {
      hostPlatform = mkOption {
        type = types.either types.str types.attrs;
        apply = lib.systems.elaborate;
        description = "stub";
      };
      config = ns;
      overlays = opt (types.listOf types.unspecified) [ ];
    };

    # nixos/modules/misc/version.nix, system/activation/top-level.nix
    system = {
      stateVersion = str "25.11";
      build = ns;
      checks = opt (types.listOf types.package) [ ];
    };

    # nixos/modules/config/users-groups.nix: nothing of ours sets users; the real
    # modules' side effects land here.
    users = {
      users = opt (types.attrsOf (freeformSubmodule { })) { };
      groups = opt (types.attrsOf (freeformSubmodule { })) { };
    };

    # nixos/modules/system/etc/etc.nix, config/system-path.nix,
    # config/shells-environment.nix
    environment = {
      etc = opt (types.attrsOf etcFile) { };
      systemPackages = opt (types.listOf types.package) [ ];
      variables = optApply (types.attrsOf (types.either types.str (types.listOf types.str))) { } (
        lib.mapAttrs (_: v: if lib.isList v then lib.concatStringsSep ":" v else v)
      );
    };

    # The VM test framework's options (nixos/lib/testing, qemu-vm.nix).
    virtualisation = ns;
    # nixos/modules/system/activation/specialisation.nix
    specialisation = ns;

    # nixos/modules/system/boot/systemd.nix
    systemd = {
      services = opt (types.attrsOf serviceUnit) { };
      slices = opt (types.attrsOf sliceUnit) { };
      targets = opt (types.attrsOf targetUnit) { };
      timers = opt (types.attrsOf timerUnit) { };
      packages = opt (types.listOf types.package) [ ];
      network = ns;
    };

    # nixos/modules/security/wrappers/default.nix (tailscaled's path reads it)
    security.wrapperDir = str "/run/wrappers/bin";

    networking = {
      # nixos/modules/tasks/network-interfaces.nix
      hostName = opt (types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$") "nixos";
      useDHCP = bool true;
      useNetworkd = bool false;
      enableIPv6 = bool true;
      # nixos/modules/services/networking/dhcpcd.nix
      dhcpcd.denyInterfaces = strList;
    }
    // lib.optionalAttrs (!realModules) {
      # nixos/modules/services/networking/nftables.nix
      nftables = {
        enable = bool false;
        rulesetFile = opt (types.nullOr types.path) null;
        tables = ns;
      };
      # nixos/modules/services/networking/firewall.nix, firewall-nftables.nix
      firewall = firewallPorts // {
        enable = bool true;
        backend = opt (types.enum [
          "iptables"
          "nftables"
          "firewalld"
        ]) (if config.networking.nftables.enable then "nftables" else "iptables");
        trustedInterfaces = strList;
        interfaces = opt (types.attrsOf (types.submodule { options = firewallPorts; })) { };
        allowPing = bool true;
        pingLimit = nullStr;
        rejectPackets = bool false;
        logRefusedConnections = bool false;
        checkReversePath = opt (types.either types.bool (
          types.enum [
            "strict"
            "loose"
          ]
        )) true;
        filterForward = bool false;
        extraCommands = lines;
        extraStopCommands = lines;
        extraInputRules = lines;
        extraForwardRules = lines;
      };
    };

    services = {
      # nixos/modules/services/networking/ssh/sshd.nix
      openssh = {
        enable = enable;
        openFirewall = bool true;
        ports = opt (types.listOf types.port) [ 22 ];
        startWhenNeeded = bool false;
        listenAddresses = opt (types.listOf types.attrs) [ ];
        extraConfig = lines;
        settings = opt (freeformSubmodule {
          PasswordAuthentication = opt (types.nullOr types.bool) true;
          KbdInteractiveAuthentication = opt (types.nullOr types.bool) true;
          PermitRootLogin = opt (types.nullOr (
            types.enum [
              "yes"
              "without-password"
              "prohibit-password"
              "forced-commands-only"
              "no"
            ]
          )) "prohibit-password";
          UsePAM = opt (types.nullOr types.bool) true;
          X11Forwarding = opt (types.nullOr types.bool) false;
          AllowUsers = opt (types.nullOr (types.listOf types.str)) null;
          AllowGroups = opt (types.nullOr (types.listOf types.str)) null;
        }) { };
      };
    }
    // lib.optionalAttrs (!realModules) {
      # nixos/modules/services/networking/tailscale.nix
      tailscale = {
        enable = enable;
        package = opt types.package pkgs.tailscale;
        port = opt types.port 41641;
        interfaceName = str "tailscale0";
        openFirewall = bool false;
        permitCertUid = opt (types.nullOr types.nonEmptyStr) null;
        useRoutingFeatures = opt (types.enum [
          "none"
          "client"
          "server"
          "both"
        ]) "none";
        authKeyFile = opt (types.nullOr types.path) null;
        authKeyParameters = {
          ephemeral = opt (types.nullOr types.bool) null;
          preauthorized = opt (types.nullOr types.bool) null;
          baseURL = nullStr;
        };
        extraUpFlags = strList;
        extraSetFlags = strList;
        extraDaemonFlags = strList;
        disableTaildrop = bool false;
        disableUpstreamLogging = bool false;
      };
    }
    // {
      # nixos/modules/services/misc/open-webui.nix
      open-webui = {
        enable = enable;
        package = opt types.package pkgs.open-webui;
        stateDir = opt types.path "/var/lib/open-webui";
        host = str "127.0.0.1";
        port = opt types.port 8080;
        environment = opt (types.attrsOf types.str) {
          SCARF_NO_ANALYTICS = "True";
          DO_NOT_TRACK = "True";
          ANONYMIZED_TELEMETRY = "False";
        };
        openFirewall = bool false;
      };

      # nixos/modules/services/misc/n8n.nix
      n8n = {
        enable = enable;
        package = opt types.package pkgs.n8n;
        openFirewall = bool false;
        customNodes = opt (types.listOf types.package) [ ];
        environment = opt (types.submodule {
          freeformType = types.attrsOf n8nEnvValue;
          options = {
            GENERIC_TIMEZONE = opt (types.nullOr types.str) config.time.timeZone;
            N8N_PORT = opt (types.coercedTo types.port toString types.str) 5678;
            N8N_USER_FOLDER = mkOption {
              type = types.path;
              default = "/var/lib/n8n";
              readOnly = true;
              description = "stub";
            };
            N8N_DIAGNOSTICS_ENABLED = opt (types.coercedTo types.bool builtins.toJSON types.str) false;
            N8N_VERSION_NOTIFICATIONS_ENABLED = opt (types.coercedTo types.bool builtins.toJSON types.str) false;
          };
        }) { };
      };

      # nixos/modules/services/databases/postgresql.nix
      postgresql = {
        enable = enable;
        package = opt types.package pkgs.postgresql;
        enableTCPIP = bool false;
        authentication = lines;
        identMap = lines;
        initialScript = opt (types.nullOr types.path) null;
        ensureDatabases = strList;
        ensureUsers = opt (types.listOf (
          types.submodule {
            options = {
              name = req types.str;
              ensureDBOwnership = bool false;
              ensureClauses = lib.genAttrs [
                "superuser"
                "createrole"
                "createdb"
                "inherit"
                "login"
                "replication"
                "bypassrls"
              ] (_: opt (types.nullOr types.bool) null);
            };
          }
        )) [ ];
        settings = opt (freeformSubmodule {
          port = opt types.port 5432;
        }) { };
      };

      # nixos/modules/services/monitoring/prometheus/default.nix (+ exporters.nix,
      # exporters/node.nix, exporters/nvidia-gpu.nix)
      prometheus = {
        enable = enable;
        package = opt types.package pkgs.prometheus;
        port = opt types.port 9090;
        listenAddress = str "0.0.0.0";
        retentionTime = nullStr;
        stateDir = str "prometheus2";
        extraFlags = strList;
        checkConfig = opt (types.either types.bool (types.enum [ "syntax-only" ])) true;
        enableReload = bool false;
        globalConfig = opt (types.submodule {
          options = {
            scrape_interval = nullStr;
            scrape_timeout = nullStr;
            evaluation_interval = nullStr;
            external_labels = opt (types.nullOr (types.attrsOf types.str)) null;
          };
        }) { };
        scrapeConfigs = opt (types.listOf scrapeConfig) [ ];
        ruleFiles = opt (types.listOf types.path) [ ];
        rules = strList;
        exporters = {
          node = exporter "node" 9100 {
            enabledCollectors = strList;
            disabledCollectors = strList;
          };
          nvidia-gpu = exporter "nvidia-gpu" 9835 { };
        };
      };

      # nixos/modules/services/monitoring/grafana.nix
      grafana = {
        enable = enable;
        package = opt types.package pkgs.grafana;
        dataDir = opt types.path "/var/lib/grafana";
        settings = opt (freeformSubmodule {
          server = grafanaSection {
            protocol = opt (types.enum [
              "http"
              "https"
              "h2"
              "socket"
            ]) "http";
            http_addr = str "127.0.0.1";
            http_port = opt types.port 3000;
            domain = str "localhost";
            root_url = str "%(protocol)s://%(domain)s:%(http_port)s/";
            enforce_domain = bool false;
            serve_from_sub_path = bool false;
          };
          security = grafanaSection {
            admin_user = str "admin";
            admin_password = str "admin";
            secret_key = str "SW2YcwTIb9zpOOhoPsMm";
          };
          database = grafanaSection {
            password = str "";
          };
          analytics = grafanaSection {
            reporting_enabled = bool true;
          };
        }) { };
        provision = {
          enable = enable;
          datasources = {
            settings = opt (types.nullOr (
              types.submodule {
                options = {
                  apiVersion = opt types.int 1;
                  datasources = opt (types.listOf grafanaDatasource) [ ];
                  deleteDatasources = opt (types.listOf types.attrs) [ ];
                };
              }
            )) null;
            path = opt (types.nullOr types.path) null;
          };
          dashboards = {
            settings = opt (types.nullOr (
              types.submodule {
                options = {
                  apiVersion = opt types.int 1;
                  providers = opt (types.listOf grafanaProvider) [ ];
                };
              }
            )) null;
            path = opt (types.nullOr types.path) null;
          };
        };
      };

      # nixos/modules/services/monitoring/loki.nix
      loki = {
        enable = enable;
        user = str "loki";
        group = str "loki";
        package = opt types.package pkgs.grafana-loki;
        dataDir = opt types.path "/var/lib/loki";
        configuration = opt (pkgs.formats.json { }).type { };
        configFile = opt (types.nullOr types.path) null;
        extraFlags = strList;
      };

      # nixos/modules/services/tracing/tempo.nix (NixOS/nixpkgs 9253afca): its
      # four options, all of them.
      tempo = {
        enable = enable;
        settings = opt (pkgs.formats.yaml { }).type { };
        configFile = opt (types.nullOr types.path) null;
        extraFlags = strList;
      };

      # nixos/modules/services/monitoring/alloy.nix
      alloy = {
        enable = enable;
        package = opt types.package pkgs.grafana-alloy;
        configPath = opt types.path "/etc/alloy";
        environmentFile = opt (types.nullOr types.path) null;
        extraFlags = strList;
      };

      # nixos/modules/services/backup/restic.nix
      restic.backups = opt (types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              passwordFile = req types.str;
              environmentFile = nullStr;
              rcloneOptions = opt (types.nullOr (types.attrsOf (types.oneOf [ types.str types.bool ]))) null;
              rcloneConfig = opt (types.nullOr (types.attrsOf (types.oneOf [ types.str types.bool ]))) null;
              rcloneConfigFile = opt (types.nullOr types.path) null;
              inhibitsSleep = bool false;
              repository = nullStr;
              repositoryFile = opt (types.nullOr types.path) null;
              paths = opt (types.nullOr (types.listOf types.str)) [ ];
              exclude = strList;
              timerConfig = opt (types.nullOr (types.attrsOf unitOption)) {
                OnCalendar = "daily";
                Persistent = true;
              };
              user = str "root";
              extraBackupArgs = strList;
              extraOptions = strList;
              initialize = bool false;
              pruneOpts = strList;
              runCheck = bool (builtins.length config.checkOpts > 0);
              checkOpts = strList;
              dynamicFilesFrom = nullStr;
              backupPrepareCommand = nullStr;
              backupCleanupCommand = nullStr;
              package = opt types.package pkgs.restic;
              createWrapper = bool true;
              progressFps = opt (types.nullOr (types.addCheck types.number (x: x >= 0))) null;
            };
          }
        )
      )) { };

      # nixos/modules/services/search/qdrant.nix
      qdrant = {
        enable = enable;
        settings = opt (pkgs.formats.yaml { }).type { };
      };

      # nixos/modules/services/networking/headscale.nix
      headscale = {
        enable = enable;
        package = opt types.package pkgs.headscale;
        user = str "headscale";
        group = str "headscale";
        address = str "127.0.0.1";
        port = opt types.port 8080;
        settings = opt (types.submodule {
          freeformType = (pkgs.formats.yaml { }).type;
          options = {
            server_url = str "http://127.0.0.1:8080";
            noise.private_key_path = opt types.path "/var/lib/headscale/noise_private.key";
            prefixes = {
              v4 = str "100.64.0.0/10";
              v6 = str "fd7a:115c:a1e0::/48";
              allocation = opt (types.enum [ "sequential" "random" ]) "sequential";
            };
            derp = {
              urls = opt (types.listOf types.str) [ "https://controlplane.tailscale.com/derpmap/default" ];
              paths = opt (types.listOf types.path) [ ];
              auto_update_enabled = bool true;
              update_frequency = str "24h";
              server.private_key_path = opt types.path "/var/lib/headscale/derp_server_private.key";
            };
            ephemeral_node_inactivity_timeout = str "30m";
            database = {
              type = opt (types.enum [ "sqlite" "sqlite3" "postgres" ]) "sqlite";
              sqlite = {
                path = opt (types.nullOr types.str) "/var/lib/headscale/db.sqlite";
                write_ahead_log = bool true;
              };
              postgres = {
                host = nullStr;
                port = opt (types.nullOr types.port) null;
                name = nullStr;
                user = nullStr;
                password_file = opt (types.nullOr types.path) null;
              };
            };
            log = {
              level = str "info";
              format = str "text";
            };
            dns = {
              magic_dns = bool true;
              base_domain = str "";
              nameservers.global = strList;
              search_domains = strList;
            };
            tls_letsencrypt_hostname = opt (types.nullOr types.str) "";
            tls_letsencrypt_challenge_type = opt (types.enum [ "TLS-ALPN-01" "HTTP-01" ]) "HTTP-01";
            tls_letsencrypt_listen = opt (types.nullOr types.str) ":http";
            tls_cert_path = opt (types.nullOr types.path) null;
            tls_key_path = opt (types.nullOr types.path) null;
            policy = {
              mode = opt (types.enum [ "file" "database" ]) "file";
              path = opt (types.nullOr types.path) null;
            };
          };
        }) { };
      };

      # nixos/modules/services/x11/xserver.nix
      xserver.videoDrivers = opt (types.listOf types.str) [
        "modesetting"
        "fbdev"
      ];
    };

    hardware = {
      # nixos/modules/hardware/video/nvidia.nix
      nvidia = {
        enabled = mkOption {
          type = types.bool;
          readOnly = true;
          description = "stub";
        };
        datacenter.enable = enable;
        package = opt types.raw (
          config.boot.kernelPackages.nvidiaPackages.${
            if config.hardware.nvidia.datacenter.enable then "dc" else "stable"
          }
        );
        # The real default is `false` for a driver older than 560, else null (no
        # default: the assertion below asks for a choice).
        open = opt (types.nullOr types.bool) null;
        nvidiaPersistenced = bool false;
        nvidiaSettings = bool true;
        modesetting.enable = bool true;
        powerManagement.enable = bool false;
        powerManagement.finegrained = bool false;
        gsp.enable = bool true;
      };
      # nixos/modules/hardware/graphics.nix
      graphics = {
        enable = enable;
        enable32Bit = bool false;
        extraPackages = opt (types.listOf types.package) [ ];
        extraPackages32 = opt (types.listOf types.package) [ ];
      };
    };
  };

  # ---------------------------------------------------------------------------
  # With `realModules`: the options the real firewall.nix, firewall-iptables.nix,
  # firewall-nftables.nix, nftables.nix and tailscale.nix read or set that the
  # stubs above do not declare. (What they read that the stubs do declare:
  # boot.{kernelModules, blacklistedKernelModules, extraModprobeConfig,
  # kernel.sysctl, kernelPackages}, environment.{systemPackages, etc},
  # networking.{useNetworkd, enableIPv6, dhcpcd.denyInterfaces},
  # security.wrapperDir, system.stateVersion, systemd.{services, packages,
  # network}, assertions.)
  realModuleOptions =
    { config, pkgs, ... }:
    {
      options = {
        # nixos/modules/services/networking/firewalld/: firewall.nix's `backend`
        # default reads it. mkEnableOption (default false).
        services.firewalld.enable = enable;
        # nixos/modules/services/networking/networkmanager.nix: tailscale.nix orders
        # tailscaled after NetworkManager-wait-online with it. mkEnableOption.
        networking.networkmanager.enable = enable;
        # nixos/modules/config/resolvconf.nix: tailscaled's path gets the package
        # when enabled.
        networking.resolvconf = {
          enable = opt types.bool (!(config.environment.etc ? "resolv.conf"));
          package = opt types.package pkgs.openresolv;
        };
        # nixos/modules/misc/meta.nix: `meta.maintainers` of tailscale.nix. The
        # real type checks each entry against lib.maintainers, which a
        # nixpkgs.lib checkout does not have (maintainers/ is outside lib/), so the
        # entries are `raw` (never forced) here.
        meta = {
          maintainers = opt (types.listOf types.raw) [ ];
          teams = opt (types.listOf types.raw) [ ];
          doc = opt (types.nullOr types.path) null;
          buildDocsInSandbox = bool true;
        };
      };
    };

  # ---------------------------------------------------------------------------
  # The real modules' side effects on what our modules and checks read.
  sideEffects =
    { config, ... }:
    let
      fw = config.networking.firewall;
      ssh = config.services.openssh;
      ts = config.services.tailscale;
      ow = config.services.open-webui;
      n8n = config.services.n8n;
      pg = config.services.postgresql;
      prom = config.services.prometheus;
      graf = config.services.grafana;
      loki = config.services.loki;
      alloy = config.services.alloy;
      tempo = config.services.tempo;
      restic = config.services.restic.backups;
      qdrant = config.services.qdrant;
      hs = config.services.headscale;
      nv = config.hardware.nvidia;
      nvidiaOnX11 = lib.elem "nvidia" config.services.xserver.videoDrivers;
      exporterUnit =
        name: conf: extra:
        lib.mkIf conf.enable {
          systemd.services."prometheus-${name}-exporter" = lib.mkMerge [
            {
              wantedBy = [ "multi-user.target" ];
              after = [ "network.target" ];
              serviceConfig = {
                Restart = lib.mkDefault "always";
                DynamicUser = lib.mkDefault true;
                User = lib.mkDefault conf.user;
                Group = conf.group;
                PrivateDevices = lib.mkDefault true;
                ProtectSystem = lib.mkDefault "strict";
              };
            }
            extra
          ];
          networking.firewall.extraInputRules = lib.mkIf (
            conf.openFirewall && config.networking.nftables.enable
          ) conf.firewallRules;
        };
    in
    {
      imports = [
        # nixos/modules/services/misc/n8n.nix
        (lib.mkRemovedOptionModule [
          "services"
          "n8n"
          "settings"
        ] "Use services.n8n.environment instead.")
        (lib.mkRemovedOptionModule [
          "services"
          "n8n"
          "webhookUrl"
        ] "Use services.n8n.environment.WEBHOOK_URL instead.")
      ];

      config = lib.mkMerge [
        # hardware/video/nvidia.nix: the driver is on when X asks for "nvidia" or the
        # datacenter driver is enabled; the package follows the branch.
        {
          hardware.nvidia.enabled = nvidiaOnX11 || nv.datacenter.enable;
        }

        # firewall.nix: loopback is always trusted while the firewall is on. (This
        # and the next two: not with `realModules`, where the real modules do it.)
        (lib.mkIf (!realModules && fw.enable) {
          networking.firewall.trustedInterfaces = [ "lo" ];
          assertions = [
            {
              assertion = fw.filterForward -> config.networking.nftables.enable;
              message = "filterForward only works with the nftables based firewall";
            }
          ];
        })

        # firewall-nftables.nix
        (lib.mkIf (!realModules && fw.enable && fw.backend == "nftables") {
          assertions = [
            {
              assertion = fw.extraCommands == "";
              message = "extraCommands is incompatible with the nftables based firewall: ${fw.extraCommands}";
            }
            {
              assertion = fw.extraStopCommands == "";
              message = "extraStopCommands is incompatible with the nftables based firewall: ${fw.extraStopCommands}";
            }
            {
              assertion = fw.pingLimit == null || !(lib.hasPrefix "--" fw.pingLimit);
              message = "nftables syntax like \"2/second\" should be used in networking.firewall.pingLimit";
            }
            {
              assertion = config.networking.nftables.rulesetFile == null;
              message = "networking.nftables.rulesetFile conflicts with the firewall";
            }
          ];
        })

        # sshd.nix: openFirewall (default true) opens every port in `ports`.
        (lib.mkIf ssh.enable {
          networking.firewall.allowedTCPPorts = lib.optionals ssh.openFirewall ssh.ports;
          environment.etc."ssh/sshd_config".source = fakePackage "sshd.conf-final";
          systemd.services.sshd = lib.mkIf (!ssh.startWhenNeeded) {
            description = "SSH Daemon";
            wantedBy = [ "multi-user.target" ];
            after = [ "network.target" ];
          };
          assertions =
            let
              duplicates = lib.filter (l: lib.length l > 1) (
                lib.attrValues (lib.groupBy lib.toLower (lib.attrNames ssh.settings))
              );
            in
            [
              {
                assertion = duplicates == [ ];
                message = "Duplicate sshd config key; does your capitalization match the option's? Duplicate keys: ${toString (lib.flatten duplicates)}";
              }
            ];
        })

        # tailscale.nix: tailscaled; the auto-connect unit with an auth key; the UDP
        # port only with openFirewall (default false).
        (lib.mkIf (!realModules && ts.enable) {
          environment.systemPackages = [ ts.package ];
          systemd.packages = [ ts.package ];
          networking.dhcpcd.denyInterfaces = [ ts.interfaceName ];
          networking.firewall.allowedUDPPorts = lib.mkIf ts.openFirewall [ ts.port ];
          networking.firewall.checkReversePath = lib.mkIf (
            ts.useRoutingFeatures == "client" || ts.useRoutingFeatures == "both"
          ) "loose";
          systemd.services.tailscaled = {
            wantedBy = [ "multi-user.target" ];
            serviceConfig.Environment = [
              "PORT=${toString ts.port}"
              ''"FLAGS=--tun ${lib.escapeShellArg ts.interfaceName} ${lib.concatStringsSep " " ts.extraDaemonFlags}"''
            ];
            stopIfChanged = false;
          };
          systemd.services.tailscaled-autoconnect = lib.mkIf (ts.authKeyFile != null) {
            after = [ "tailscaled.service" ];
            wants = [ "tailscaled.service" ];
            wantedBy = [ "multi-user.target" ];
            serviceConfig.Type = "notify";
            path = [
              ts.package
              pkgs.jq
            ];
            enableStrictShellChecks = true;
            script = "tailscale up --auth-key \"$(cat ${ts.authKeyFile})\" ${lib.escapeShellArgs ts.extraUpFlags}";
          };
          systemd.services.tailscaled-set = lib.mkIf (ts.extraSetFlags != [ ]) {
            after = [ "tailscaled.service" ];
            wants = [ "tailscaled.service" ];
            wantedBy = [ "multi-user.target" ];
            serviceConfig.Type = "oneshot";
            script = "tailscale set ${lib.escapeShellArgs ts.extraSetFlags}";
          };
        })

        # open-webui.nix: a DynamicUser unit; its environment is a few fixed
        # variables plus `environment`.
        (lib.mkIf ow.enable {
          assertions = [ (unfreeAdmitted config ow.package) ];
          systemd.services.open-webui = {
            description = "User-friendly WebUI for LLMs";
            wantedBy = [ "multi-user.target" ];
            after = [ "network.target" ];
            environment = {
              STATIC_DIR = ".";
              DATA_DIR = ".";
              HF_HOME = ".";
              SENTENCE_TRANSFORMERS_HOME = ".";
            }
            // ow.environment;
            serviceConfig = {
              ExecStart = "${lib.getExe ow.package} serve --host ${ow.host} --port ${toString ow.port}";
              WorkingDirectory = ow.stateDir;
              StateDirectory = "open-webui";
              RuntimeDirectory = "open-webui";
              DynamicUser = true;
              PrivateTmp = true;
              MemoryDenyWriteExecute = false;
              UMask = "0077";
            };
          };
          networking.firewall = lib.mkIf ow.openFirewall { allowedTCPPorts = [ ow.port ]; };
        })

        # n8n.nix: a DynamicUser unit whose environment is `environment` (variables
        # ending in _FILE become credentials), HOME its user folder.
        (lib.mkIf n8n.enable (
          let
            env = lib.filterAttrs (_: v: v != null) n8n.environment;
            plain = lib.filterAttrs (name: _: !(lib.hasSuffix "_FILE" name)) env;
            files = lib.filterAttrs (name: _: lib.hasSuffix "_FILE" name) env;
          in
          {
            assertions = [ (unfreeAdmitted config n8n.package) ];
            systemd.services.n8n = {
              description = "n8n service";
              after = [ "network.target" ];
              wantedBy = [ "multi-user.target" ];
              environment =
                plain
                // {
                  HOME = n8n.environment.N8N_USER_FOLDER;
                }
                // lib.mapAttrs (name: _: "%d/${lib.toLower name}") files;
              serviceConfig = {
                Type = "simple";
                ExecStart = lib.getExe n8n.package;
                Restart = "on-failure";
                StateDirectory = "n8n";
                LoadCredential = lib.mapAttrsToList (name: path: "${lib.toLower name}:${path}") files;
                DynamicUser = "true";
                ProtectSystem = "strict";
                MemoryDenyWriteExecute = "no";
              };
            };
            networking.firewall = lib.mkIf n8n.openFirewall {
              allowedTCPPorts = [ (lib.toInt n8n.environment.N8N_PORT) ];
            };
          }
        ))

        # postgresql.nix: every ensureDBOwnership user needs its database.
        (lib.mkIf pg.enable {
          assertions = map (u: {
            assertion = u.ensureDBOwnership -> lib.elem u.name pg.ensureDatabases;
            message = ''
              For each database user defined with `services.postgresql.ensureUsers` and
              `ensureDBOwnership = true;`, a database with the same name must be defined
              in `services.postgresql.ensureDatabases`.

              Offender: ${u.name} has not been found among databases.
            '';
          }) pg.ensureUsers;
          users.users.postgres = {
            name = "postgres";
            group = "postgres";
          };
          users.groups.postgres = { };
          # Since nixos-25.11 the target is what boot starts; the server wants it,
          # and the ensure* statements run in postgresql-setup.service after the
          # server (a new or wiped host has n8n's database only once it ran).
          systemd.targets.postgresql = {
            description = "PostgreSQL";
            wantedBy = [ "multi-user.target" ];
            requires = [
              "postgresql.service"
              "postgresql-setup.service"
            ];
          };
          systemd.services.postgresql = {
            description = "PostgreSQL Server";
            after = [ "network.target" ];
            wants = [ "postgresql.target" ];
            partOf = [ "postgresql.target" ];
            serviceConfig = {
              User = "postgres";
              Group = "postgres";
              RuntimeDirectory = "postgresql";
            };
          };
          systemd.services.postgresql-setup = {
            description = "PostgreSQL Setup Scripts";
            requires = [ "postgresql.service" ];
            after = [ "postgresql.service" ];
            serviceConfig = {
              User = "postgres";
              Group = "postgres";
              Type = "oneshot";
              RemainAfterExit = true;
            };
          };
        })

        # prometheus/default.nix: a static user `prometheus`; no port in
        # listenAddress.
        (lib.mkIf prom.enable {
          assertions = [
            (
              let
                legacy = builtins.match "(.*\\..*|.*]):([[:digit:]]+)" prom.listenAddress;
              in
              {
                assertion = legacy == null;
                message = "Do not specify the port for Prometheus to listen on in the listenAddress option; use the port option instead.";
              }
            )
          ];
          systemd.services.prometheus = {
            wantedBy = [ "multi-user.target" ];
            after = [ "network.target" ];
            serviceConfig = {
              ExecStart = "${lib.getExe prom.package} --web.listen-address=${prom.listenAddress}:${toString prom.port}";
              User = "prometheus";
              StateDirectory = prom.stateDir;
              CapabilityBoundingSet = [ "" ];
              DevicePolicy = "strict";
              Restart = "always";
            };
          };
          users.users.prometheus = {
            description = "Prometheus daemon user";
            group = "prometheus";
          };
          users.groups.prometheus = { };
        })

        # prometheus/exporters.nix (+ exporters/node.nix, exporters/nvidia-gpu.nix)
        (exporterUnit "node" prom.exporters.node {
          serviceConfig.ExecStart = "${pkgs.prometheus-node-exporter}/bin/node_exporter ${
            lib.concatMapStringsSep " " (c: "--collector.${c}") prom.exporters.node.enabledCollectors
          } --web.listen-address ${prom.exporters.node.listenAddress}:${toString prom.exporters.node.port}";
        })
        (exporterUnit "nvidia-gpu" prom.exporters.nvidia-gpu {
          serviceConfig.ExecStart = "${pkgs.prometheus-nvidia-gpu-exporter}/bin/nvidia_gpu_exporter --web.listen-address ${prom.exporters.nvidia-gpu.listenAddress}:${toString prom.exporters.nvidia-gpu.port} --nvidia-smi-command ${nv.package.bin}/bin/nvidia-smi";
        })

        # grafana.nix: a static user `grafana`; secrets must come from files or the
        # environment, or they land in the store.
        (lib.mkIf graf.enable (
          let
            notFromFile =
              value: default:
              builtins.match "${
                lib.optionalString (default != null) "^${default}$|"
              }^\\$__(file|env)\\{.*}$|^\\$[^_\\$][^ ]+$" value == null;
          in
          {
            warnings =
              lib.optional
                (
                  notFromFile graf.settings.database.password ""
                  || notFromFile graf.settings.security.admin_password "admin"
                )
                ''
                  Grafana passwords will be stored as plaintext in the Nix store!
                  Use file provider or an env-var instead.
                '';
            assertions = [
              {
                assertion = graf.provision.datasources.settings == null || graf.provision.datasources.path == null;
                message = "Cannot set both datasources settings and datasources path";
              }
              {
                assertion =
                  graf.provision.datasources.settings == null
                  || lib.all (d: d.type == "prometheus" -> d.access != "direct") graf.provision.datasources.settings.datasources;
                message = "For datasources of type `prometheus`, the `direct` access mode is not supported anymore (since Grafana 9.2.0)";
              }
              {
                assertion = graf.provision.dashboards.settings == null || graf.provision.dashboards.path == null;
                message = "Cannot set both dashboards settings and dashboards path";
              }
            ];
            systemd.services.grafana = {
              description = "Grafana Service Daemon";
              wantedBy = [ "multi-user.target" ];
              after = [ "networking.target" ];
              serviceConfig = {
                WorkingDirectory = graf.dataDir;
                User = "grafana";
                RuntimeDirectory = "grafana";
                CapabilityBoundingSet = [ "" ];
                ProtectSystem = "full";
                UMask = "0027";
              };
            };
            users.users.grafana = {
              description = "Grafana user";
              home = graf.dataDir;
              group = "grafana";
            };
            users.groups.grafana = { };
          }
        ))

        # loki.nix: exactly one of configuration and configFile; a static user.
        (lib.mkIf loki.enable {
          assertions = [
            {
              assertion =
                (loki.configuration == { } -> loki.configFile != null)
                && (loki.configFile != null -> loki.configuration == { });
              message = ''
                Please specify either
                'services.loki.configuration' or
                'services.loki.configFile'.
              '';
            }
          ];
          environment.systemPackages = [ loki.package ];
          users.groups.${loki.group} = { };
          users.users.${loki.user} = {
            description = "Loki Service User";
            group = loki.group;
            home = loki.dataDir;
            isSystemUser = true;
          };
          systemd.services.loki = {
            description = "Loki Service Daemon";
            wantedBy = [ "multi-user.target" ];
            serviceConfig = {
              ExecStart = "${loki.package}/bin/loki --config.file=${
                if loki.configFile == null then (pkgs.formats.json { }).generate "loki-config.json" loki.configuration else loki.configFile
              } ${lib.escapeShellArgs loki.extraFlags}";
              User = loki.user;
              WorkingDirectory = loki.dataDir;
            };
          };
        })

        # tempo.nix: exactly one of settings and configFile; a DynamicUser unit
        # whose state is /var/lib/tempo, reading the settings as YAML.
        (lib.mkIf tempo.enable {
          environment.systemPackages = [ pkgs.tempo ];
          assertions = [
            {
              assertion = ((tempo.settings == { }) != (tempo.configFile == null));
              message = ''
                Please specify a configuration for Tempo with either
                'services.tempo.settings' or
                'services.tempo.configFile'.
              '';
            }
          ];
          systemd.services.tempo = {
            description = "Grafana Tempo Service Daemon";
            wantedBy = [ "multi-user.target" ];
            serviceConfig = {
              ExecStart = "${pkgs.tempo}/bin/tempo --config.file=${
                if tempo.configFile == null then (pkgs.formats.yaml { }).generate "config.yaml" tempo.settings else tempo.configFile
              } ${lib.escapeShellArgs tempo.extraFlags}";
              DynamicUser = true;
              Restart = "always";
              ProtectSystem = "full";
              DevicePolicy = "closed";
              NoNewPrivileges = true;
              WorkingDirectory = "/var/lib/tempo";
              StateDirectory = "tempo";
            };
          };
        })

        # alloy.nix: a DynamicUser unit in the systemd-journal group, reloaded when a
        # /etc/alloy/*.alloy file changes.
        (lib.mkIf alloy.enable {
          systemd.services.alloy = {
            after = [ "network.target" ];
            wantedBy = [ "multi-user.target" ];
            reloadTriggers = lib.mapAttrsToList (_: v: v.source or null) (
              lib.filterAttrs (n: _: lib.hasPrefix "alloy/" n && lib.hasSuffix ".alloy" n) config.environment.etc
            );
            serviceConfig = {
              Restart = "always";
              DynamicUser = true;
              SupplementaryGroups = [ "systemd-journal" ];
              ExecStart = "${lib.getExe alloy.package} run ${alloy.configPath} ${lib.escapeShellArgs alloy.extraFlags}";
              ConfigurationDirectory = "alloy";
              StateDirectory = "alloy";
            };
          };
        })

        # restic.nix: one of repository and repositoryFile; a oneshot unit per
        # backup whose preStart runs backupPrepareCommand, a timer, a wrapper.
        {
          assertions = lib.mapAttrsToList (n: v: {
            assertion = (v.repository == null) != (v.repositoryFile == null);
            message = "services.restic.backups.${n}: exactly one of repository or repositoryFile should be set";
          }) restic;
          systemd.services = lib.mapAttrs' (
            name: b:
            lib.nameValuePair "restic-backups-${name}" {
              environment = {
                RESTIC_CACHE_DIR = "/var/cache/restic-backups-${name}";
                RESTIC_PASSWORD_FILE = b.passwordFile;
                RESTIC_REPOSITORY = b.repository;
                RESTIC_REPOSITORY_FILE = b.repositoryFile;
              };
              restartIfChanged = false;
              wants = [ "network-online.target" ];
              after = [ "network-online.target" ];
              serviceConfig = {
                Type = "oneshot";
                ExecStart =
                  lib.optional (b.paths != null && b.paths != [ ]) "${lib.getExe b.package} backup ${lib.concatStringsSep " " b.extraBackupArgs} --files-from=/run/restic-backups-${name}/includes"
                  ++ lib.optionals (b.pruneOpts != [ ]) [
                    "${lib.getExe b.package} unlock"
                    "${lib.getExe b.package} forget --prune ${lib.concatStringsSep " " b.pruneOpts}"
                  ];
                User = b.user;
                RuntimeDirectory = "restic-backups-${name}";
                CacheDirectory = "restic-backups-${name}";
                PrivateTmp = true;
              }
              // lib.optionalAttrs (b.environmentFile != null) { EnvironmentFile = b.environmentFile; };
              preStart = lib.concatStringsSep "\n" (
                lib.optional (b.backupPrepareCommand != null) "${pkgs.writeShellScript "backupPrepareCommand" b.backupPrepareCommand}"
                ++ lib.optional b.initialize "${lib.getExe b.package} cat config > /dev/null || ${lib.getExe b.package} init"
                ++ lib.optional (b.paths != null && b.paths != [ ]) "cat ${lib.concatStringsSep " " b.paths} >> /run/restic-backups-${name}/includes"
              );
            }
          ) restic;
          systemd.timers = lib.mapAttrs' (
            name: b:
            lib.nameValuePair "restic-backups-${name}" {
              wantedBy = [ "timers.target" ];
              timerConfig = b.timerConfig;
            }
          ) (lib.filterAttrs (_: b: b.timerConfig != null) restic);
          environment.systemPackages = lib.mapAttrsToList (name: _: fakePackage "restic-${name}") (
            lib.filterAttrs (_: b: b.createWrapper) restic
          );
        }

        # qdrant.nix: its settings' defaults (loopback, ports 6333/6334) and a
        # DynamicUser unit.
        (lib.mkIf qdrant.enable {
          services.qdrant.settings = {
            storage.storage_path = lib.mkDefault "/var/lib/qdrant/storage";
            storage.snapshots_path = lib.mkDefault "/var/lib/qdrant/snapshots";
            service.http_port = lib.mkDefault 6333;
            service.grpc_port = lib.mkDefault 6334;
            service.host = lib.mkDefault "127.0.0.1";
            service.enable_cors = lib.mkDefault true;
            cluster.enabled = lib.mkDefault false;
            telemetry_disabled = lib.mkDefault true;
          };
          systemd.services.qdrant = {
            description = "Vector Search Engine for the next generation of AI applications";
            wantedBy = [ "multi-user.target" ];
            after = [ "network.target" ];
            serviceConfig = {
              ExecStart = "${pkgs.qdrant}/bin/qdrant --config-path ${(pkgs.formats.yaml { }).generate "config.yaml" qdrant.settings}";
              DynamicUser = true;
              StateDirectory = "qdrant";
            };
          };
        })

        # headscale.nix: MagicDNS needs a base domain; listen_addr from address and
        # port; the bind capability below port 1024.
        (lib.mkIf hs.enable {
          assertions = [
            {
              assertion = hs.settings.dns.magic_dns -> hs.settings.dns.base_domain != "";
              message = "dns.base_domain must be set when using MagicDNS";
            }
          ];
          services.headscale.settings = {
            disable_check_updates = true;
            unix_socket = "/run/headscale/headscale.sock";
            listen_addr = lib.mkDefault "${hs.address}:${toString hs.port}";
            tls_letsencrypt_cache_dir = "/var/lib/headscale/.cache";
          };
          environment.etc."headscale/config.yaml".source = fakePackage "headscale.yaml";
          environment.systemPackages = [ hs.package ];
          users.groups.headscale = lib.mkIf (hs.group == "headscale") { };
          users.users.headscale = lib.mkIf (hs.user == "headscale") {
            home = "/var/lib/headscale";
            group = hs.group;
            isSystemUser = true;
          };
          systemd.services.headscale =
            let
              caps = [ "CAP_CHOWN" ] ++ lib.optional (hs.port < 1024) "CAP_NET_BIND_SERVICE";
            in
            {
              description = "headscale coordination server for Tailscale";
              wants = [ "network-online.target" ];
              after = [ "network-online.target" ];
              wantedBy = [ "multi-user.target" ];
              script = "exec ${lib.getExe hs.package} serve --config ${(pkgs.formats.yaml { }).generate "headscale.yaml" hs.settings}";
              serviceConfig = {
                User = hs.user;
                Group = hs.group;
                StateDirectory = "headscale";
                CapabilityBoundingSet = caps;
                AmbientCapabilities = caps;
              };
            };
        })

        # nvidia.nix: both drivers at once, or a >= 560 driver without `open`, are
        # refused.
        (lib.mkIf nv.enabled {
          assertions = [
            {
              assertion = !(nvidiaOnX11 && nv.datacenter.enable);
              message = "You cannot configure both X11 and Data Center drivers at the same time.";
            }
            {
              assertion = nv.open != null || nv.datacenter.enable;
              message = "You must configure `hardware.nvidia.open` on NVIDIA driver versions >= 560.";
            }
          ];
          hardware.graphics.extraPackages = [ nv.package.out ];
          systemd.services.nvidia-persistenced = lib.mkIf nv.nvidiaPersistenced {
            description = "NVIDIA Persistence Daemon";
            wantedBy = [ "multi-user.target" ];
            serviceConfig.Type = "forking";
          };
        })
      ];
    };
in
{
  inherit pkgs fakePackage;

  module =
    { config, ... }:
    {
      imports = [ sideEffects ] ++ lib.optional realModules realModuleOptions;
      options = options config;
    };
}
