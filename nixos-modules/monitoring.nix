# llmvisor.monitoring: Prometheus scraping llmvisor's /metrics, the node exporter
# (with systemd unit states, so every llmvisor-model-* unit shows) and an NVIDIA GPU
# exporter; Grafana with the llmvisor dashboard provisioned from this repository.
# With `logs.enable`: Loki on loopback, fed from the journal by Grafana Alloy with
# llmvisor's MODEL= as a label and CLIENT=/ROUTE= as structured metadata, and the
# dashboard's logs panel. With `traces.enable`: Grafana Tempo on loopback taking
# llmvisor's OTLP traces (services.llmvisor.otlpEndpoint), a Grafana data source.
{
  config,
  lib,
  pkgs,
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

  logs = cfg.logs;
  lokiUrl = "http://127.0.0.1:${toString logs.port}";

  traces = cfg.traces;
  tempoUrl = "http://127.0.0.1:${toString traces.queryPort}";

  # Grafana Alloy: the journal to Loki. A model's unit is named by its unit
  # (llmvisor-model-<name>.service); llmvisor's own lines carry MODEL=, CLIENT=,
  # ROUTE= (src/telemetry, src/api/account.rs), which the source exposes as
  # __journal_model etc. `model` and `unit` stay labels (a few values each);
  # client and route become structured metadata (the pipeline starts with the
  # labels in its extracted map), so they do not multiply the streams.
  alloyConfig = ''
    loki.relabel "journal" {
      forward_to = []

      rule {
        source_labels = ["__journal__systemd_unit"]
        target_label  = "unit"
      }
      rule {
        source_labels = ["__journal_priority_keyword"]
        target_label  = "level"
      }
      rule {
        source_labels = ["__journal__systemd_unit"]
        regex         = "llmvisor-model-(.+)\\.service"
        target_label  = "model"
      }
      // A model under `units.manager = "systemd-user"`.
      rule {
        source_labels = ["__journal__systemd_user_unit"]
        regex         = "llmvisor-model-(.+)\\.service"
        target_label  = "model"
      }
      // systemd's own lines about a model's unit (started, failed, OOM-killed):
      // written by PID 1 (_SYSTEMD_UNIT=init.scope) with UNIT=<the unit>.
      rule {
        source_labels = ["__journal_unit"]
        regex         = "llmvisor-model-(.+)\\.service"
        target_label  = "model"
      }
      rule {
        source_labels = ["__journal_model"]
        regex         = "(.+)"
        target_label  = "model"
      }
      rule {
        source_labels = ["__journal_client"]
        regex         = "(.+)"
        target_label  = "client"
      }
      rule {
        source_labels = ["__journal_route"]
        regex         = "(.+)"
        target_label  = "route"
      }
    }

    loki.source.journal "journal" {
      forward_to    = [loki.process.llmvisor.receiver]
      relabel_rules = loki.relabel.journal.rules
      max_age       = "12h"
      labels        = {host = ${builtins.toJSON config.networking.hostName}}
    }

    loki.process "llmvisor" {
      // The labels go first: the values stay in the extracted map, which the
      // structured metadata is taken from once. (The other way round, Alloy
      // before its PR #5965 took each value twice: from the map and from the
      // label.)
      stage.label_drop {
        values = ["client", "route"]
      }
      stage.structured_metadata {
        values = {client = "", route = ""}
      }
      forward_to = [loki.write.local.receiver]
    }

    loki.write "local" {
      endpoint {
        url = "${lokiUrl}/loki/api/v1/push"
      }
    }
  '';

  # The dashboard of the repository, without its Loki panels and links when there
  # is no Loki (they would only show "data source not found").
  dashboard = lib.importJSON ./grafana/llmvisor-dashboard.json;
  usesLoki = p: (p.datasource.uid or null) == "loki";
  # The logs panel, which the model panels' links open.
  logsPanel = (lib.findFirst usesLoki { id = null; } dashboard.panels).id;
  withoutLogs = dashboard // {
    panels = map (
      p:
      if p ? fieldConfig.defaults.links then
        lib.recursiveUpdate p { fieldConfig.defaults.links = lib.filter (l: !(lib.hasInfix "viewPanel=${toString logsPanel}" l.url)) p.fieldConfig.defaults.links; }
      else
        p
    ) (lib.filter (p: !(usesLoki p) && (p.title or "") != "Logs") dashboard.panels);
  };
  dashboards =
    if logs.enable then
      ./grafana
    else
      pkgs.writeTextDir "llmvisor-dashboard.json" (builtins.toJSON withoutLogs);

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

    logs = {
      enable = lib.mkEnableOption ''
        Loki (`services.loki`, on 127.0.0.1) with Grafana Alloy (`services.alloy`)
        shipping the journal to it: llmvisor's `MODEL=` as the label `model` (also
        for each model unit's own output), `CLIENT=` and `ROUTE=` as structured
        metadata; Grafana gets Loki as a data source and the dashboard its logs panel
      '';

      port = mkOption {
        type = types.port;
        default = 3100;
        example = 3101;
        description = "Loki's HTTP port on 127.0.0.1.";
      };

      retention = mkOption {
        type = types.str;
        default = "30d";
        example = "90d";
        description = "How long Loki keeps logs (`limits_config.retention_period`, applied by its compactor).";
      };
    };

    traces = {
      enable = lib.mkEnableOption ''
        Grafana Tempo (`services.tempo`, every listener on 127.0.0.1) taking OTLP/HTTP
        traces, with `services.llmvisor.otlpEndpoint` pointed at it (one trace per
        request: cold start, queue wait, the backend call, GenAI attributes) and
        Grafana given Tempo as a data source
      '';

      port = mkOption {
        type = types.port;
        default = 4318;
        example = 4319;
        description = "Tempo's OTLP/HTTP receiver port on 127.0.0.1 (llmvisor sends to it).";
      };

      queryPort = mkOption {
        type = types.port;
        default = 3200;
        example = 3201;
        description = "Tempo's HTTP API port on 127.0.0.1 (Grafana queries it).";
      };

      retention = mkOption {
        type = types.str;
        default = "336h";
        example = "720h";
        description = "How long Tempo keeps traces (`compactor.compaction.block_retention`, a Go duration).";
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
          ]
          ++ lib.optional logs.enable {
            name = "Loki";
            type = "loki";
            uid = "loki";
            url = lokiUrl;
          }
          ++ lib.optional traces.enable {
            name = "Tempo";
            type = "tempo";
            uid = "tempo";
            url = tempoUrl;
          };
        };
        dashboards.settings = {
          apiVersion = 1;
          providers = [
            {
              name = "llmvisor";
              folder = "llmvisor";
              options.path = dashboards;
            }
          ];
        };
      };
    };

    # Loki, single binary, filesystem storage under its dataDir: the TSDB index and
    # schema v13, which structured metadata needs.
    services.loki = lib.mkIf logs.enable {
      enable = true;
      configuration = {
        auth_enabled = false;
        analytics.reporting_enabled = false;
        server = {
          http_listen_address = "127.0.0.1";
          http_listen_port = logs.port;
          grpc_listen_address = "127.0.0.1";
          grpc_listen_port = 9096;
        };
        common = {
          instance_addr = "127.0.0.1";
          path_prefix = config.services.loki.dataDir;
          replication_factor = 1;
          ring.kvstore.store = "inmemory";
          storage.filesystem = {
            chunks_directory = "${config.services.loki.dataDir}/chunks";
            rules_directory = "${config.services.loki.dataDir}/rules";
          };
        };
        schema_config.configs = [
          {
            from = "2025-01-01";
            store = "tsdb";
            object_store = "filesystem";
            schema = "v13";
            index = {
              prefix = "index_";
              period = "24h";
            };
          }
        ];
        limits_config = {
          retention_period = logs.retention;
          allow_structured_metadata = true;
        };
        compactor = {
          working_directory = "${config.services.loki.dataDir}/compactor";
          retention_enabled = true;
          delete_request_store = "filesystem";
        };
      };
    };

    # Tempo, single binary, local storage under its StateDirectory (/var/lib/tempo,
    # a DynamicUser's). Every listener on loopback: the HTTP API, gRPC (9095 by
    # default on every address), memberlist (7946, likewise) and the OTLP receiver.
    services.llmvisor.otlpEndpoint = lib.mkIf traces.enable (
      lib.mkDefault "http://127.0.0.1:${toString traces.port}"
    );
    services.tempo = lib.mkIf traces.enable {
      enable = true;
      settings = {
        usage_report.reporting_enabled = false;
        server = {
          http_listen_address = "127.0.0.1";
          http_listen_port = traces.queryPort;
          grpc_listen_address = "127.0.0.1";
          grpc_listen_port = 9095;
        };
        memberlist.bind_addr = [ "127.0.0.1" ];
        distributor.receivers.otlp.protocols.http.endpoint = "127.0.0.1:${toString traces.port}";
        storage.trace = {
          backend = "local";
          local.path = "/var/lib/tempo/traces";
          wal.path = "/var/lib/tempo/wal";
        };
        compactor.compaction.block_retention = traces.retention;
      };
    };
    systemd.services.llmvisor = lib.mkIf traces.enable {
      # Tempo first: an export to a collector not listening yet is counted as
      # failed and dropped, not retried.
      after = [ "tempo.service" ];
      wants = [ "tempo.service" ];
    };

    services.alloy = lib.mkIf logs.enable {
      enable = true;
      extraFlags = [
        "--server.http.listen-addr=127.0.0.1:12345"
        "--disable-reporting"
      ];
    };
    environment.etc."alloy/config.alloy" = lib.mkIf logs.enable { text = alloyConfig; };
    systemd.services.alloy = lib.mkIf logs.enable {
      after = [ "loki.service" ];
      wants = [ "loki.service" ];
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
