# llmvisor.firewall: "SSH only public". An nftables firewall where the public
# interfaces answer on SSH alone (or nothing: tailnet only), and every service port
# is open on the tailnet interface only.
{
  config,
  lib,
  ...
}:
let
  inherit (lib) literalExpression mkOption types;
  cfg = config.llmvisor.firewall;
  fw = config.networking.firewall;
  sshPorts = config.services.openssh.ports;

  # What the public interfaces may answer on.
  publicTCP = lib.optionals cfg.publicSSH sshPorts;
  # Tailscale's WireGuard port, only where Tailscale runs: a host without it keeps
  # "SSH only public" literally.
  publicUDP = lib.optional (
    cfg.allowTailscaleUDP && config.services.tailscale.enable
  ) config.services.tailscale.port;

  # NixOS's firewall module always trusts loopback (its default adds "lo" to
  # networking.firewall.trustedInterfaces); only the tailnet may be trusted besides.
  trustedOK = [
    "lo"
    cfg.tailnetInterface
  ];
  strayTrusted = lib.subtractLists trustedOK fw.trustedInterfaces;
in
{
  options.llmvisor.firewall = {
    enable = lib.mkEnableOption ''
      the "SSH only public" nftables firewall: public interfaces answer on SSH alone,
      services on the tailnet interface alone'';

    publicSSH = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Answer SSH on the public interfaces. `false`: SSH only over the tailnet; keep
        a console (the cloud provider's) for when Tailscale is down.
      '';
    };

    tailnetInterface = mkOption {
      type = types.str;
      default = config.services.tailscale.interfaceName;
      defaultText = literalExpression "config.services.tailscale.interfaceName";
      example = "tailscale0";
      description = "The tailnet's interface: the only one where service ports open.";
    };

    tailnetTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      example = [
        8080
        3000
      ];
      description = ''
        Service ports open on the tailnet interface. The modules of this flake add
        their own (llmvisor's `openFirewall`, front-ends and monitoring when exposed);
        list others here.
      '';
    };

    allowTailscaleUDP = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Let Tailscale's WireGuard port (`services.tailscale.port`, UDP) in on the
        public interfaces, for direct connections between nodes, when
        `services.tailscale.enable` is set (without Tailscale nothing but SSH is
        public, whatever this says). WireGuard answers only authenticated peers;
        without it, traffic is relayed through DERP.
      '';
    };

    extraPublicTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      example = [ 443 ];
      description = ''
        Public TCP ports besides SSH, for a host that must serve the internet (a
        deliberate exception: say why next to it).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    networking.nftables.enable = true;
    networking.firewall = {
      enable = true;
      allowedTCPPorts = publicTCP ++ cfg.extraPublicTCPPorts;
      allowedUDPPorts = publicUDP;
      interfaces.${cfg.tailnetInterface} = {
        allowedTCPPorts = cfg.tailnetTCPPorts ++ lib.optionals (!cfg.publicSSH) sshPorts;
      };
    };
    # The OpenSSH module opens its ports everywhere; this module decides instead.
    services.openssh.openFirewall = lib.mkDefault false;

    assertions = [
      {
        assertion = fw.enable;
        message = "llmvisor.firewall.enable: networking.firewall.enable must stay true.";
      }
      {
        assertion = lib.subtractLists (publicTCP ++ cfg.extraPublicTCPPorts) fw.allowedTCPPorts == [ ];
        message = "llmvisor.firewall: TCP ports ${
          toString (lib.subtractLists (publicTCP ++ cfg.extraPublicTCPPorts) fw.allowedTCPPorts)
        } are open on every interface (networking.firewall.allowedTCPPorts, often some module's openFirewall); open them on the tailnet with llmvisor.firewall.tailnetTCPPorts, or list them in llmvisor.firewall.extraPublicTCPPorts.";
      }
      {
        assertion = lib.subtractLists publicUDP fw.allowedUDPPorts == [ ];
        message = "llmvisor.firewall: UDP ports ${toString (lib.subtractLists publicUDP fw.allowedUDPPorts)} are open on every interface (networking.firewall.allowedUDPPorts).";
      }
      {
        assertion = fw.allowedTCPPortRanges == [ ] && fw.allowedUDPPortRanges == [ ];
        message = "llmvisor.firewall: port ranges are open on every interface (networking.firewall.allowedTCPPortRanges / allowedUDPPortRanges).";
      }
      {
        assertion = strayTrusted == [ ];
        message = "llmvisor.firewall: networking.firewall.trustedInterfaces (${toString strayTrusted}) opens every port on those interfaces; only loopback and the tailnet interface may be trusted.";
      }
    ];
  };
}
