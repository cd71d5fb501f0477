# llmvisor.tailscale: join the tailnet with an auth key file, under a MagicDNS host
# name, and optionally publish llmvisor and the front-ends as HTTPS on the tailnet
# with `tailscale serve`. The control server is Tailscale's, or a self-hosted
# Headscale (`loginServer`; `headscale.enable` runs one on this host).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) literalExpression mkOption types;
  cfg = config.llmvisor.tailscale;
  tailscale = config.services.tailscale.package;

  serveTarget = {
    options = {
      httpsPort = mkOption {
        type = types.port;
        example = 8443;
        description = "The HTTPS port on the node's tailnet name.";
      };
      proxyTo = mkOption {
        type = types.str;
        example = "http://127.0.0.1:8080";
        description = "The local address `tailscale serve` forwards to.";
      };
    };
  };

  hs = cfg.headscale;
  # https://host[:port][/…] → host
  urlHost =
    url:
    lib.head (lib.splitString ":" (lib.head (lib.splitString "/" (lib.removePrefix "https://" (lib.removePrefix "http://" url)))));

  serveCommands = lib.concatMapStringsSep "\n" (
    t: "tailscale serve --bg --https=${toString t.httpsPort} ${lib.escapeShellArg t.proxyTo}"
  ) (lib.attrValues cfg.serve.targets);
in
{
  imports = [ ./firewall.nix ];

  options.llmvisor.tailscale = {
    enable = lib.mkEnableOption "Tailscale for the llmvisor host (auth key file, MagicDNS name, optional tailscale serve)";

    authKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/tailscale-auth-key";
      description = ''
        A file outside the Nix store holding a Tailscale auth key, used to join the
        tailnet at boot (`services.tailscale.authKeyFile`). `null`: run `tailscale up`
        by hand once.
      '';
    };

    hostName = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      example = "gpu-lab";
      description = ''
        The node's MagicDNS name (`tailscale up --hostname`), applied when joining
        with `authKeyFile`.
      '';
    };

    tailnetDomain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "tail1234.ts.net";
      description = ''
        The tailnet's MagicDNS domain, shown in the Tailscale admin console. With it,
        the front-ends learn their public URLs (`https://<hostName>.<tailnetDomain>`).
      '';
    };

    fqdn = mkOption {
      type = types.nullOr types.str;
      readOnly = true;
      default = if cfg.tailnetDomain == null then null else "${cfg.hostName}.${cfg.tailnetDomain}";
      defaultText = literalExpression ''"''${hostName}.''${tailnetDomain}"'';
      description = "The node's full MagicDNS name, when `tailnetDomain` is set.";
    };

    loginServer = mkOption {
      type = types.nullOr types.str;
      default = if hs.enable then hs.serverUrl else null;
      defaultText = literalExpression "if headscale.enable then headscale.serverUrl else null";
      example = "https://headscale.example.org";
      description = ''
        The tailnet's control server when it is not Tailscale's: a Headscale URL,
        passed as `tailscale up --login-server` (with `authKeyFile`, a key from
        `headscale preauthkeys create`). `null`: Tailscale's own.
      '';
    };

    headscale = {
      enable = lib.mkEnableOption ''
        Headscale (`services.headscale`) on this host: the tailnet's own control
        server in place of Tailscale's; this host and the others join it with
        `loginServer`
      '';

      serverUrl = mkOption {
        type = types.str;
        example = "https://headscale.example.org";
        description = "The URL the nodes reach Headscale at (its `server_url`); a DNS name pointing at this host.";
      };

      baseDomain = mkOption {
        type = types.str;
        example = "tailnet.example.org";
        description = ''
          The tailnet's MagicDNS domain (`dns.base_domain`): nodes are
          `<name>.<baseDomain>`. It must differ from `serverUrl`'s domain.
        '';
      };

      port = mkOption {
        type = types.port;
        default = 443;
        example = 8443;
        description = "Headscale's port.";
      };

      acme = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = ''
          `true`: Headscale listens on every address at `port` with a Let's Encrypt
          certificate for `serverUrl`'s host (TLS-ALPN-01 on that port, so only it
          opens on public interfaces). `false`: plain HTTP on 127.0.0.1:`port`, for
          a TLS reverse proxy of your own in front.
        '';
      };
    };

    serve = {
      enable = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = ''
          Publish `serve.targets` as HTTPS on the tailnet with `tailscale serve`, from
          a oneshot unit after `tailscaled`. Needs MagicDNS and HTTPS certificates
          enabled for the tailnet. Requests arrive at the services from loopback, so
          keep llmvisor's `auth = "required"` and set its admin key.
        '';
      };

      targets = mkOption {
        type = types.attrsOf (types.submodule serveTarget);
        default = { };
        example = literalExpression ''
          {
            llmvisor = { httpsPort = 443; proxyTo = "http://127.0.0.1:8080"; };
            grafana = { httpsPort = 3000; proxyTo = "http://127.0.0.1:3000"; };
          }
        '';
        description = ''
          What to publish, by name. llmvisor (port 443) is added when
          `services.llmvisor` is enabled; the front-ends module adds its own.
        '';
      };
    };
  };

  config = lib.mkIf cfg.enable {
    warnings = lib.optional (cfg.serve.enable && cfg.loginServer != null) ''
      llmvisor.tailscale.serve: `tailscale serve` publishes HTTPS with certificates
      from Tailscale's control server; with a login server of your own
      (${cfg.loginServer}) the nodes may get none.
    '';

    assertions = [
      {
        assertion = hs.enable -> lib.hasPrefix "https://" hs.serverUrl || !hs.acme;
        message = "llmvisor.tailscale.headscale.serverUrl: must be an https:// URL (the nodes' clients require TLS; acme gets its certificate).";
      }
      {
        assertion = hs.enable -> urlHost hs.serverUrl != hs.baseDomain && !lib.hasSuffix ".${hs.baseDomain}" (urlHost hs.serverUrl);
        message = "llmvisor.tailscale.headscale.baseDomain: must not be or contain serverUrl's host (Headscale refuses it).";
      }
      {
        assertion =
          cfg.authKeyFile == null
          || (lib.hasPrefix "/" cfg.authKeyFile && !lib.hasPrefix builtins.storeDir cfg.authKeyFile);
        message = "llmvisor.tailscale.authKeyFile: `${toString cfg.authKeyFile}` must be an absolute path outside the Nix store; give it as a string, not a Nix path.";
      }
      {
        assertion =
          let
            ports = map (t: t.httpsPort) (lib.attrValues cfg.serve.targets);
          in
          lib.length ports == lib.length (lib.unique ports);
        message = "llmvisor.tailscale.serve.targets: two targets use the same httpsPort.";
      }
    ];

    services.tailscale = {
      enable = true;
      authKeyFile = lib.mkIf (cfg.authKeyFile != null) cfg.authKeyFile;
      extraUpFlags = [
        "--hostname=${cfg.hostName}"
      ]
      ++ lib.optional (cfg.loginServer != null) "--login-server=${cfg.loginServer}";
    };

    services.headscale = lib.mkIf hs.enable {
      enable = true;
      address = if hs.acme then "0.0.0.0" else "127.0.0.1";
      inherit (hs) port;
      settings = {
        server_url = hs.serverUrl;
        dns = {
          magic_dns = true;
          base_domain = hs.baseDomain;
        };
      }
      // lib.optionalAttrs hs.acme {
        tls_letsencrypt_hostname = urlHost hs.serverUrl;
        tls_letsencrypt_challenge_type = "TLS-ALPN-01";
      };
    };
    # The nodes, this one included, reach Headscale from anywhere.
    networking.firewall.allowedTCPPorts = lib.mkIf (hs.enable && hs.acme) [ hs.port ];
    llmvisor.firewall.extraPublicTCPPorts = lib.mkIf (hs.enable && hs.acme) [ hs.port ];
    # This host's own node logs in once its control server runs.
    systemd.services.tailscaled-autoconnect = lib.mkIf (hs.enable && cfg.authKeyFile != null) {
      after = [ "headscale.service" ];
      wants = [ "headscale.service" ];
    };

    llmvisor.tailscale.serve.targets.llmvisor = lib.mkIf (config.services.llmvisor.enable or false) {
      httpsPort = lib.mkDefault 443;
      proxyTo = lib.mkDefault "http://127.0.0.1:${toString config.services.llmvisor.port}";
    };

    systemd.services.llmvisor-tailscale-serve = lib.mkIf cfg.serve.enable {
      description = "tailscale serve: HTTPS on the tailnet for llmvisor and the front-ends";
      wantedBy = [ "multi-user.target" ];
      wants = [ "tailscaled.service" ];
      after = [
        "tailscaled.service"
        "tailscaled-autoconnect.service"
      ];
      path = [
        tailscale
        pkgs.jq
      ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      # tailscaled is up before the node has logged in; serve needs a running node.
      script = ''
        state=unknown
        for _ in $(seq 1 120); do
          state=$(tailscale status --json --peers=false | jq -r .BackendState) || state=unknown
          [ "$state" = Running ] && break
          sleep 1
        done
        if [ "$state" != Running ]; then
          echo "tailscale is not running after 120 s (state: $state); nothing served" >&2
          exit 1
        fi
        tailscale serve reset
        ${serveCommands}
        tailscale serve status
      '';
      preStop = "tailscale serve reset";
    };
  };
}
