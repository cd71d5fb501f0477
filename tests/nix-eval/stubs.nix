# Small stand-ins for the NixOS options and packages the llmvisor modules and the
# example hosts touch, so the modules can be evaluated with nixpkgs' `lib` alone
# (`lib.evalModules`) where there is no nixpkgs checkout. They model how NixOS
# merges (lists concatenate, priorities apply, defaults the modules read), not what
# NixOS does with the values: that part only a real build and the VM tests show.
{ lib }:
let
  inherit (lib) mkOption types;

  # Like types.anything, but lists concatenate as most NixOS list options do.
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

  freeform = options: {
    freeformType = types.lazyAttrsOf loose;
    inherit options;
  };

  opt =
    type: default:
    mkOption {
      inherit type default;
      description = "stub";
    };
  ns = opt (types.attrsOf loose) { };
  service = options: opt (types.submodule (freeform options)) { };
  ports = default: opt (types.listOf types.port) default;

  fakePackage =
    name:
    let
      self = {
        type = "derivation";
        inherit name;
        pname = name;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        outputs = [ "out" ];
        out = self;
        meta.mainProgram = name;
      };
    in
    self;

  # What the modules call on `pkgs`.
  pkgs = {
    formats.toml =
      { }:
      {
        type = types.lazyAttrsOf loose;
        generate = name: value: fakePackage name // { settings = value; };
      };
    runCommand =
      name: env: buildCommand:
      fakePackage name // { inherit env buildCommand; };
    writeShellScript = name: text: fakePackage name // { inherit text; };
    callPackage = _path: _args: fakePackage "llmvisor";
    stdenv.hostPlatform.system = "x86_64-linux";
  }
  // lib.genAttrs [
    "coreutils"
    "jq"
    "llama-cpp"
    "llmvisor"
    "n8n"
    "ollama"
    "ollama-cuda"
    "open-webui"
    "tailscale"
    "vllm"
  ] fakePackage;

  firewallInterface = types.submodule {
    options = {
      allowedTCPPorts = ports [ ];
      allowedUDPPorts = ports [ ];
    };
  };

  serviceUnit = types.submodule (freeform {
    serviceConfig = ns;
    environment = opt (types.lazyAttrsOf loose) { };
  });

  options = {
    assertions = opt (types.listOf types.attrs) [ ];
    warnings = opt (types.listOf types.str) [ ];

    boot = ns;
    fileSystems = ns;
    hardware = ns;
    nixpkgs = ns;
    system = ns;
    time = ns;
    users = ns;
    environment = ns;
    # The VM test framework's options.
    virtualisation = ns;
    specialisation = ns;

    systemd = {
      services = opt (types.attrsOf serviceUnit) { };
      slices = ns;
    };

    networking = {
      hostName = opt types.str "nixos";
      useDHCP = opt types.bool true;
      nftables.enable = opt types.bool false;
      firewall = {
        enable = opt types.bool true;
        allowedTCPPorts = ports [ ];
        allowedUDPPorts = ports [ ];
        allowedTCPPortRanges = opt (types.listOf types.attrs) [ ];
        allowedUDPPortRanges = opt (types.listOf types.attrs) [ ];
        trustedInterfaces = opt (types.listOf types.str) [ ];
        interfaces = opt (types.attrsOf firewallInterface) { };
      };
    };

    services = {
      openssh = service {
        enable = opt types.bool false;
        openFirewall = opt types.bool true;
        ports = ports [ 22 ];
      };
      tailscale = service {
        enable = opt types.bool false;
        package = opt types.package pkgs.tailscale;
        interfaceName = opt types.str "tailscale0";
        port = opt types.port 41641;
        authKeyFile = opt (types.nullOr types.str) null;
        extraUpFlags = opt (types.listOf types.str) [ ];
      };
      open-webui = service {
        enable = opt types.bool false;
        package = opt types.package pkgs.open-webui;
        host = opt types.str "127.0.0.1";
        port = opt types.port 8080;
        environment = opt (types.attrsOf types.str) { };
      };
      n8n = service { enable = opt types.bool false; };
      postgresql = service { enable = opt types.bool false; };
      prometheus = service {
        enable = opt types.bool false;
        port = opt types.port 9090;
        scrapeConfigs = opt (types.listOf types.attrs) [ ];
        exporters = {
          node = service {
            enable = opt types.bool false;
            port = opt types.port 9100;
          };
          nvidia-gpu = service {
            enable = opt types.bool false;
            port = opt types.port 9835;
          };
        };
      };
      grafana = service { enable = opt types.bool false; };
      xserver.videoDrivers = opt (types.listOf types.str) [ ];
    };
  };
in
{
  inherit pkgs fakePackage;

  module = {
    inherit options;
  };
}
