# llmvisor.monitoring: Prometheus scraping llmvisor's /metrics, the node exporter
# (with systemd unit states, so every llmvisor-model-* unit shows) and an NVIDIA GPU
# exporter; Grafana with the llmvisor dashboard provisioned from this repository.
{
  config,
  lib,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.llmvisor.monitoring;
  ts = config.llmvisor.tailscale;
  tailnetInterface = config.services.tailscale.interfaceName;
  exporters = config.services.prometheus.exporters;
  gpu = cfg.gpuExporter;
  served = ts.enable && ts.serve.enable && ts.fqdn != null;

  credential = name: "/run/credentials/grafana.service/${name}";

  staticJob = name: port: extra: {
    job_name = name;
    static_configs = [ { targets = [ "127.0.0.1:${toString port}" ]; } ];
  }
  // extra;
in
{
  imports = [
    ./llmvisor.nix
    ./tailscale.nix
    ./nvidia.nix
  ];

  options.llmvisor.monitoring = {
    enable = lib.mkEnableOption "Prometheus, the node and NVIDIA GPU exporters, and Grafana with the llmvisor dashboard";

    scrapeInterval = mkOption {
      type = types.str;
      default = "15s";
      example = "5s";
      description = "How often Prometheus scrapes llmvisor and the exporters.";
    };

    retention = mkOption {
      type = types.str;
      default = "30d";
      example = "90d";
      description = "How long Prometheus keeps samples.";
    };

    gpuExporter = mkOption {
      type = types.bool;
      default = config.llmvisor.nvidia.enable && !config.llmvisor.nvidia.cpuOnly;
      defaultText = lib.literalExpression "config.llmvisor.nvidia.enable && !config.llmvisor.nvidia.cpuOnly";
      example = false;
      description = "Run and scrape the NVIDIA GPU exporter (`nvidia_gpu_exporter`, from `nvidia-smi`).";
    };

    llmvisorScrapeKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/llmvisor-prometheus";
      description = ''
        A key Prometheus sends as `Authorization: Bearer` when scraping llmvisor,
        for a llmvisor that asks for one on `/metrics`. Passed to Prometheus with
        `LoadCredential=` and registered as the llmvisor client `prometheus`.
      '';
    };

    grafana = {
      port = mkOption {
        type = types.port;
        default = 3000;
        example = 3001;
        description = "Grafana's port on 127.0.0.1 (or every address with `exposeOnTailnet`).";
      };

      secretKeyFile = mkOption {
        type = types.str;
        example = "/run/secrets/grafana-secret-key";
        description = ''
          A file outside the Nix store with Grafana's `security.secret_key` (it
          encrypts data-source secrets). Make one with `openssl rand -hex 32`.
        '';
      };

      adminPasswordFile = mkOption {
        type = types.str;
        example = "/run/secrets/grafana-admin-password";
        description = "A file outside the Nix store with the password of Grafana's `admin` user.";
      };

      httpsPort = mkOption {
        type = types.port;
        default = 3000;
        example = 3443;
        description = "HTTPS port on the tailnet when `llmvisor.tailscale.serve` is enabled.";
      };
    };

    exposeOnTailnet = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Bind Grafana to every address and open its port on the tailnet interface
        only. Prometheus and the exporters always stay on 127.0.0.1.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = config.services.llmvisor.enable;
        message = "llmvisor.monitoring.enable: there is no llmvisor to scrape; set services.llmvisor.enable = true.";
      }
    ];

    services.llmvisor.clients = lib.mkIf (cfg.llmvisorScrapeKeyFile != null) {
      prometheus = {
        keyFile = cfg.llmvisorScrapeKeyFile;
        # A client that may use no model: it only reads /metrics.
        models = [ ];
        priority = "batch";
      };
    };

    services.prometheus = {
      enable = true;
      listenAddress = "127.0.0.1";
      port = 9090;
      retentionTime = cfg.retention;
      globalConfig.scrape_interval = cfg.scrapeInterval;
      # promtool cannot see a credential that exists only while Prometheus runs.
      checkConfig = lib.mkIf (cfg.llmvisorScrapeKeyFile != null) "syntax-only";
      scrapeConfigs = [
        (staticJob "llmvisor" config.services.llmvisor.port (
          {
            metrics_path = "/metrics";
          }
          // lib.optionalAttrs (cfg.llmvisorScrapeKeyFile != null) {
            authorization = {
              type = "Bearer";
              credentials_file = "/run/credentials/prometheus.service/llmvisor-key";
            };
          }
        ))
        (staticJob "node" exporters.node.port { })
      ]
      ++ lib.optional gpu (staticJob "nvidia-gpu" exporters.nvidia-gpu.port { });

      exporters.node = {
        enable = true;
        listenAddress = "127.0.0.1";
        # systemd: unit states, so llmvisor-model-* units show in Grafana.
        enabledCollectors = [ "systemd" ];
      };

      exporters.nvidia-gpu = lib.mkIf gpu {
        enable = true;
        listenAddress = "127.0.0.1";
      };
    };

    systemd.services.prometheus.serviceConfig.LoadCredential = lib.mkIf (
      cfg.llmvisorScrapeKeyFile != null
    ) [ "llmvisor-key:${cfg.llmvisorScrapeKeyFile}" ];

    services.grafana = {
      enable = true;
      settings = {
        server = {
          http_addr = if cfg.exposeOnTailnet then "0.0.0.0" else "127.0.0.1";
          http_port = cfg.grafana.port;
        }
        // lib.optionalAttrs served {
          domain = ts.fqdn;
          root_url = "https://${ts.fqdn}:${toString cfg.grafana.httpsPort}/";
        };
        # Grafana reads these files itself ($__file{}), from its credentials.
        security = {
          secret_key = "$__file{${credential "secret-key"}}";
          admin_user = "admin";
          admin_password = "$__file{${credential "admin-password"}}";
        };
        analytics.reporting_enabled = false;
      };
      provision = {
        enable = true;
        datasources.settings = {
          apiVersion = 1;
          datasources = [
            {
              name = "Prometheus";
              type = "prometheus";
              uid = "prometheus";
              url = "http://127.0.0.1:${toString config.services.prometheus.port}";
              isDefault = true;
            }
          ];
        };
        dashboards.settings = {
          apiVersion = 1;
          providers = [
            {
              name = "llmvisor";
              folder = "llmvisor";
              options.path = ./grafana;
            }
          ];
        };
      };
    };

    systemd.services.grafana.serviceConfig.LoadCredential = [
      "secret-key:${cfg.grafana.secretKeyFile}"
      "admin-password:${cfg.grafana.adminPasswordFile}"
    ];

    llmvisor.tailscale.serve.targets.grafana = {
      httpsPort = cfg.grafana.httpsPort;
      proxyTo = "http://127.0.0.1:${toString cfg.grafana.port}";
    };

    networking.firewall.interfaces = lib.mkIf cfg.exposeOnTailnet {
      ${tailnetInterface}.allowedTCPPorts = [ cfg.grafana.port ];
    };
  };
}
