# llmvisor.frontends: Open WebUI and n8n (with PostgreSQL), hosted natively from
# nixpkgs' own modules, bound to localhost (or the tailnet), each pointed at
# llmvisor with an API key of its own from a file; optionally Qdrant on loopback as
# Open WebUI's vector store, with embeddings from one of llmvisor's models.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) literalExpression mkOption types;
  cfg = config.llmvisor.frontends;
  ts = config.llmvisor.tailscale;
  tailnetInterface = config.services.tailscale.interfaceName;
  llmvisorUrl = "http://127.0.0.1:${toString config.services.llmvisor.port}/v1";
  bindAddress = if cfg.exposeOnTailnet then "0.0.0.0" else "127.0.0.1";
  served = ts.enable && ts.serve.enable && ts.fqdn != null;

  ow = config.services.open-webui;
  owCfg = cfg.openWebui;
  n8nCfg = cfg.n8n;
  qd = cfg.qdrant;
  rag = owCfg.enable && qd.enable;
  # What llmvisor answers to: instance names, their aliases, routes, and
  # provider/model targets.
  llmvisorNames =
    lib.attrNames config.services.llmvisor.models
    ++ lib.concatMap (m: m.aliases or [ ]) (lib.attrValues config.services.llmvisor.models)
    ++ lib.attrNames (config.services.llmvisor.settings.routes or { });
  n8nPackage = config.services.n8n.package or pkgs.n8n;
  n8nUrl = "https://${toString ts.fqdn}:${toString n8nCfg.httpsPort}/";

  keyFileOption =
    client:
    mkOption {
      type = types.str;
      example = "/run/secrets/llmvisor-${client}";
      description = ''
        A file outside the Nix store with this front-end's llmvisor API key (one
        line). The same file registers the llmvisor client `${client}`
        (`services.llmvisor.clients.${client}`) and is handed to the front-end with
        `LoadCredential=`, so the key never enters the store.
      '';
    };

  httpsPortOption =
    default:
    mkOption {
      type = types.port;
      inherit default;
      example = default + 1;
      description = "HTTPS port on the tailnet when `llmvisor.tailscale.serve` is enabled.";
    };
in
{
  imports = [
    ./llmvisor.nix
    ./tailscale.nix
  ];

  options.llmvisor.frontends = {
    exposeOnTailnet = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Bind the front-ends to every address and open their ports on the tailnet
        interface only (plain HTTP over WireGuard). Without it they listen on
        127.0.0.1 and are reached through `tailscale serve` (HTTPS) or an SSH tunnel.
      '';
    };

    openWebui = {
      enable = lib.mkEnableOption "Open WebUI (`services.open-webui`) as llmvisor's chat front-end";

      port = mkOption {
        type = types.port;
        default = 8081;
        example = 3080;
        description = "Open WebUI's port (8080 is llmvisor's).";
      };

      llmvisorKeyFile = keyFileOption "open-webui";

      httpsPort = httpsPortOption 8443;

      models = mkOption {
        type = types.listOf types.str;
        default = [ "*" ];
        example = [
          "chat"
          "coder"
        ];
        description = "Public model names (globs) the Open WebUI client may use.";
      };
    };

    qdrant = {
      enable = lib.mkEnableOption ''
        Qdrant (`services.qdrant`) on 127.0.0.1 as the vector store of Open WebUI's
        RAG (documents, knowledge bases), which then embeds through llmvisor
        (`embeddingModel`); n8n's Qdrant nodes can use it too
      '';

      port = mkOption {
        type = types.port;
        default = 6333;
        example = 6340;
        description = "Qdrant's HTTP port on 127.0.0.1 (its gRPC port is the next one).";
      };

      embeddingModel = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "bge-m3";
        description = ''
          The llmvisor model (or alias, or route) Open WebUI embeds documents and
          queries with, through llmvisor's `/v1/embeddings` with Open WebUI's key
          (`RAG_EMBEDDING_ENGINE=openai`). Needed with Open WebUI.
        '';
      };
    };

    n8n = {
      enable = lib.mkEnableOption "n8n (`services.n8n`) with PostgreSQL, for workflows that call llmvisor";

      port = mkOption {
        type = types.port;
        default = 5678;
        example = 5679;
        description = "n8n's port.";
      };

      llmvisorKeyFile = keyFileOption "n8n";

      httpsPort = httpsPortOption 10000;

      priority = mkOption {
        type = types.enum [
          "interactive"
          "batch"
        ];
        default = "batch";
        example = "interactive";
        description = ''
          Queue priority of n8n's requests: `batch` lets interactive chat go first.
        '';
      };
    };
  };

  config = lib.mkMerge [
    {
      assertions = [
        {
          assertion = (owCfg.enable || n8nCfg.enable) -> config.services.llmvisor.enable;
          message = "llmvisor.frontends: the front-ends talk to llmvisor; set services.llmvisor.enable = true.";
        }
        {
          assertion = rag -> qd.embeddingModel != null;
          message = "llmvisor.frontends.qdrant.embeddingModel: Open WebUI needs a llmvisor model to embed with (an embedding model, e.g. bge-m3).";
        }
        {
          assertion =
            rag && qd.embeddingModel != null
            -> lib.elem qd.embeddingModel llmvisorNames || lib.hasInfix "/" qd.embeddingModel;
          message = "llmvisor.frontends.qdrant.embeddingModel: `${toString qd.embeddingModel}` is not a model, alias or route of services.llmvisor (nor a provider/model).";
        }
      ];
    }

    (lib.mkIf qd.enable {
      services.qdrant = {
        enable = true;
        settings = {
          service = {
            host = "127.0.0.1";
            http_port = qd.port;
            grpc_port = qd.port + 1;
          };
          telemetry_disabled = true;
        };
      };
    })

    (lib.mkIf owCfg.enable {
      services.llmvisor.clients.open-webui = {
        keyFile = owCfg.llmvisorKeyFile;
        models = owCfg.models;
        priority = "interactive";
      };

      services.open-webui = {
        enable = true;
        host = bindAddress;
        port = owCfg.port;
        environment = {
          # llmvisor is Open WebUI's only backend.
          OPENAI_API_BASE_URL = llmvisorUrl;
          ENABLE_OLLAMA_API = "False";
          # The key and URL come from here on every start, not from Open WebUI's
          # database, so rotating the key file takes effect.
          ENABLE_PERSISTENT_CONFIG = "False";
          SCARF_NO_ANALYTICS = "True";
          DO_NOT_TRACK = "True";
          ANONYMIZED_TELEMETRY = "False";
        }
        // lib.optionalAttrs rag {
          # Documents in Qdrant; embeddings from llmvisor with Open WebUI's own key
          # (RAG_OPENAI_API_KEY defaults to OPENAI_API_KEY, set at start).
          VECTOR_DB = "qdrant";
          QDRANT_URI = "http://127.0.0.1:${toString qd.port}";
          RAG_EMBEDDING_ENGINE = "openai";
          RAG_OPENAI_API_BASE_URL = llmvisorUrl;
          RAG_EMBEDDING_MODEL = qd.embeddingModel;
        }
        // lib.optionalAttrs served {
          WEBUI_URL = "https://${ts.fqdn}:${toString owCfg.httpsPort}";
        };
      };

      # The key is read from the credential at start, never written to the store.
      systemd.services.open-webui = {
        after = [ "llmvisor.service" ] ++ lib.optional rag "qdrant.service";
        wants = lib.optional rag "qdrant.service";
        serviceConfig = {
          LoadCredential = [ "llmvisor-key:${owCfg.llmvisorKeyFile}" ];
          ExecStart = lib.mkForce (
            pkgs.writeShellScript "open-webui-start" ''
              OPENAI_API_KEY=$(< "$CREDENTIALS_DIRECTORY/llmvisor-key")
              export OPENAI_API_KEY
              exec ${lib.getExe ow.package} serve --host ${ow.host} --port ${toString ow.port}
            ''
          );
        };
      };

      llmvisor.tailscale.serve.targets.open-webui = {
        httpsPort = owCfg.httpsPort;
        proxyTo = "http://127.0.0.1:${toString owCfg.port}";
      };

      networking.firewall.interfaces = lib.mkIf cfg.exposeOnTailnet {
        ${tailnetInterface}.allowedTCPPorts = [ owCfg.port ];
      };
    })

    (lib.mkIf n8nCfg.enable {
      services.llmvisor.clients.n8n = {
        keyFile = n8nCfg.llmvisorKeyFile;
        priority = n8nCfg.priority;
      };

      services.n8n.enable = true;
      services.n8n.openFirewall = false;

      # n8n's database: a local PostgreSQL reached over its Unix socket with peer
      # authentication (n8n runs as the dynamic user `n8n`), so there is no password.
      services.postgresql = {
        enable = true;
        ensureDatabases = [ "n8n" ];
        ensureUsers = [
          {
            name = "n8n";
            ensureDBOwnership = true;
          }
        ];
      };

      systemd.services.n8n = {
        requires = [ "postgresql.service" ];
        # postgresql-setup.service / postgresql.target run ensureUsers in newer
        # nixpkgs; After= on a unit that does not exist is ignored.
        after = [
          "postgresql.service"
          "postgresql-setup.service"
          "postgresql.target"
          "llmvisor.service"
        ];
        path = [ pkgs.jq ];
        # n8n's OpenAI credential (type openAiApi) is filled with llmvisor's URL and
        # n8n's key for every workflow, from the credential file, at each start.
        serviceConfig = {
          LoadCredential = [ "llmvisor-key:${n8nCfg.llmvisorKeyFile}" ];
          ExecStart = lib.mkForce (
            pkgs.writeShellScript "n8n-start" ''
              key=$(< "$CREDENTIALS_DIRECTORY/llmvisor-key")
              CREDENTIALS_OVERWRITE_DATA=$(jq -cn --arg key "$key" --arg url ${lib.escapeShellArg llmvisorUrl} \
                '{openAiApi: {apiKey: $key, url: $url}}')
              export CREDENTIALS_OVERWRITE_DATA
              unset key
              exec ${lib.getExe' n8nPackage "n8n"}
            ''
          );
        };
      };
      # Through the n8n module's own interface (its `environment` becomes the
      # unit's, and its N8N_PORT is the port openFirewall would open), not over it:
      # the port is this module's option; what a host sets for the others wins
      # over these defaults.
      services.n8n.environment = {
        N8N_PORT = n8nCfg.port;
        DB_TYPE = lib.mkDefault "postgresdb";
        DB_POSTGRESDB_HOST = lib.mkDefault "/run/postgresql";
        DB_POSTGRESDB_DATABASE = lib.mkDefault "n8n";
        DB_POSTGRESDB_USER = lib.mkDefault "n8n";
        N8N_LISTEN_ADDRESS = lib.mkDefault bindAddress;
      }
      // (
        if served then
          {
            N8N_PROTOCOL = lib.mkDefault "https";
            N8N_HOST = lib.mkDefault ts.fqdn;
            N8N_EDITOR_BASE_URL = lib.mkDefault n8nUrl;
            WEBHOOK_URL = lib.mkDefault n8nUrl;
          }
        else
          {
            # Plain HTTP on loopback or the tailnet: no Secure cookie, or the editor
            # cannot log in.
            N8N_SECURE_COOKIE = lib.mkDefault "false";
          }
      );

      llmvisor.tailscale.serve.targets.n8n = {
        httpsPort = n8nCfg.httpsPort;
        proxyTo = "http://127.0.0.1:${toString n8nCfg.port}";
      };

      networking.firewall.interfaces = lib.mkIf cfg.exposeOnTailnet {
        ${tailnetInterface}.allowedTCPPorts = [ n8nCfg.port ];
      };
    })
  ];
}
