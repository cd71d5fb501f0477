# services.llmvisor: the supervisor and router as a NixOS service.
#
# The module stays thin: it renders `settings` to TOML, checks the file with
# `llmvisor check-config` at build time, and runs llmvisor under the hardened unit
# of docs/llmvisor.service. llmvisor itself validates every key.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) literalExpression mkOption types;

  cfg = config.services.llmvisor;
  settingsFormat = pkgs.formats.toml { };

  # The file llmvisor reads. A stable path, so that SIGHUP (reload) re-reads the
  # new generation after `nixos-rebuild switch` has updated /etc.
  configPath = "/etc/llmvisor/llmvisor.toml";

  # Names under $CREDENTIALS_DIRECTORY; llmvisor resolves a relative key_file there.
  clientCredential = name: "client-${name}";
  providerCredential = name: "provider-${name}";
  adminCredential = "admin";
  otlpHeadersCredential = "otlp-headers";

  # Executables of the model kinds that run a packaged server.
  kindExecutables = {
    vllm = "vllm";
    ollama = "ollama";
    llama-cpp = "llama-server";
  };

  # nixpkgs' servers for each kind. CUDA builds of vllm and llama-cpp follow
  # `nixpkgs.config.cudaSupport`; Ollama has a separate CUDA package, whose CUDA
  # libraries nixpkgs marks unfree: a host that says it has no GPU
  # (`llmvisor.nvidia.cpuOnly`) gets the CPU build, and needs no allowUnfree for it.
  cpuOnlyHost = (config.llmvisor.nvidia.enable or false) && (config.llmvisor.nvidia.cpuOnly or false);
  defaultPackageFor =
    kind:
    {
      vllm = pkgs.vllm;
      ollama = if cpuOnlyHost then pkgs.ollama else pkgs.ollama-cuda;
      llama-cpp = pkgs.llama-cpp;
    }
    .${kind} or null;

  formatListen =
    address:
    if lib.hasInfix ":" address then
      "[${address}]:${toString cfg.port}"
    else
      "${address}:${toString cfg.port}";

  isLoopback = address: lib.hasPrefix "127." address || address == "::1";

  # TOML has no null: options left unset are dropped, and so is `package` (a Nix-only
  # convenience that becomes `executable`).
  dropNulls =
    value:
    if lib.isAttrs value && !lib.isDerivation value then
      lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: v: v != null) value)
    else if lib.isList value then
      map dropNulls value
    else
      value;

  renderModel = _name: model: dropNulls (removeAttrs model [ "package" ]);

  keyFileType = types.str;

  modelModule =
    { name, config, ... }:
    {
      freeformType = settingsFormat.type;

      options = {
        kind = mkOption {
          type = types.enum [
            "vllm"
            "ollama"
            "llama-cpp"
            "command"
          ];
          example = "vllm";
          description = ''
            The kind of inference server: `vllm`, `ollama`, `llama-cpp` (llama.cpp's
            `llama-server`) or `command` (any OpenAI-compatible server given as an argv
            in `command`).
          '';
        };

        model = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "Qwen/Qwen2.5-7B-Instruct";
          description = ''
            What to serve: a Hugging Face id or local path (`vllm`), a tag (`ollama`),
            a GGUF path (`llama-cpp`). Not used by `command`.
          '';
        };

        command = mkOption {
          type = types.nullOr (types.listOf types.str);
          default = null;
          example = literalExpression ''
            [ "''${pkgs.my-server}/bin/my-server" "--port" "{port}" "--name" "{served_name}" ]
          '';
          description = ''
            The argv of a `kind = "command"` model. `{port}`, `{served_name}` and `{name}`
            are replaced by llmvisor. Use absolute paths: model units do not see a `PATH`.
          '';
        };

        package = mkOption {
          type = types.nullOr types.package;
          default = defaultPackageFor config.kind;
          defaultText = literalExpression ''
            { vllm = pkgs.vllm; ollama = pkgs.ollama-cuda; llama-cpp = pkgs.llama-cpp; }.''${kind} or null
            # pkgs.ollama for Ollama with llmvisor.nvidia.cpuOnly
          '';
          example = literalExpression "pkgs.ollama";
          description = ''
            The package whose server runs this model; `executable` defaults to its
            `bin/vllm`, `bin/ollama` or `bin/llama-server`. Not written to the TOML file.
            vLLM and llama.cpp are built with CUDA when `nixpkgs.config.cudaSupport` is
            set. Ollama's default is `pkgs.ollama-cuda`, whose CUDA libraries nixpkgs
            marks unfree (`nixpkgs.config.allowUnfree`, which the NVIDIA driver needs
            too), and `pkgs.ollama` (CPU) on a host with `llmvisor.nvidia.cpuOnly`.
          '';
        };

        executable = mkOption {
          type = types.nullOr types.str;
          default =
            if config.package != null && kindExecutables ? ${config.kind} then
              lib.getExe' config.package kindExecutables.${config.kind}
            else
              null;
          defaultText = literalExpression ''"''${package}/bin/vllm"  # or bin/ollama, bin/llama-server'';
          example = "/opt/vllm/.venv/bin/vllm";
          description = ''
            The program to run instead of the kind's default. Derived from `package`.
          '';
        };

        gpus = mkOption {
          type = types.listOf types.ints.unsigned;
          default = [ ];
          example = [
            0
            1
          ];
          description = ''
            NVIDIA device indices (PCI bus order) the model may use: its
            `CUDA_VISIBLE_DEVICES` and `DeviceAllow=` for exactly these `/dev/nvidiaN`.
          '';
        };

        aliases = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "gpt-4o-mini" ];
          description = "More public names clients may ask for.";
        };

        idle_ttl = mkOption {
          type = types.nullOr (types.either types.str types.int);
          default = null;
          example = "30m";
          description = ''
            Stop the model after this long with nothing in flight; `0` keeps it
            running once started. llmvisor's default: `"30m"`.
          '';
        };
      };
    };

  clientModule =
    { name, ... }:
    {
      options = {
        keyFile = mkOption {
          type = keyFileType;
          example = "/run/secrets/llmvisor-open-webui";
          description = ''
            A file outside the Nix store holding this client's key (one line). It is
            passed to the service with `LoadCredential=` as `${clientCredential name}`;
            the key never enters the store.
          '';
        };
        models = mkOption {
          type = types.listOf types.str;
          default = [ "*" ];
          example = [
            "chat"
            "embed*"
          ];
          description = "Public model names (globs) this client may use.";
        };
        rpm = mkOption {
          type = types.ints.unsigned;
          default = 0;
          example = 600;
          description = "Requests per minute at most; 0: no limit.";
        };
        tpm = mkOption {
          type = types.ints.unsigned;
          default = 0;
          example = 200000;
          description = "Tokens per minute at most; 0: no limit.";
        };
        priority = mkOption {
          type = types.enum [
            "interactive"
            "batch"
          ];
          default = "interactive";
          example = "batch";
          description = "Interactive requests go first in every queue.";
        };
      };
    };

  providerModule = {
    freeformType = settingsFormat.type;
    options = {
      baseUrl = mkOption {
        type = types.str;
        example = "https://api.openai.com/v1";
        description = "Base URL up to and including the API version.";
      };
      keyFile = mkOption {
        type = types.nullOr keyFileType;
        default = null;
        example = "/run/secrets/openai";
        description = ''
          A file outside the Nix store with the provider's API key, passed with
          `LoadCredential=`.
        '';
      };
    };
  };

  # What is written to the TOML file.
  rendered = dropNulls cfg.settings;

  rawConfigFile = settingsFormat.generate "llmvisor.toml" rendered;

  # A bad setting fails `nixos-rebuild` with llmvisor's own message.
  checkedConfigFile =
    if cfg.checkConfig then
      pkgs.runCommand "llmvisor-checked.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          cp ${rawConfigFile} llmvisor.toml
          llmvisor check-config --config llmvisor.toml
          cp llmvisor.toml $out
        ''
    else
      rawConfigFile;

  credentials =
    lib.mapAttrsToList (name: c: "${clientCredential name}:${c.keyFile}") cfg.clients
    ++ lib.mapAttrsToList (name: p: "${providerCredential name}:${p.keyFile}") (
      lib.filterAttrs (_: p: p.keyFile != null) cfg.providers
    )
    ++ lib.optional (cfg.adminKeyFile != null) "${adminCredential}:${cfg.adminKeyFile}"
    ++ lib.optional (cfg.otlpHeadersFile != null) "${otlpHeadersCredential}:${cfg.otlpHeadersFile}";

  # The files whose keys must differ: the clients' and the admin's.
  keyHolders =
    lib.mapAttrsToList (name: c: {
      option = "services.llmvisor.clients.${name}.keyFile";
      path = c.keyFile;
    }) cfg.clients
    ++ lib.optional (cfg.adminKeyFile != null) {
      option = "services.llmvisor.adminKeyFile";
      path = cfg.adminKeyFile;
    };
  keyFiles =
    lib.mapAttrsToList (name: c: {
      option = "services.llmvisor.clients.${name}.keyFile";
      path = c.keyFile;
    }) cfg.clients
    ++ lib.mapAttrsToList (name: p: {
      option = "services.llmvisor.providers.${name}.keyFile";
      path = p.keyFile;
    }) (lib.filterAttrs (_: p: p.keyFile != null) cfg.providers)
    ++ lib.optional (cfg.adminKeyFile != null) {
      option = "services.llmvisor.adminKeyFile";
      path = cfg.adminKeyFile;
    }
    ++ lib.optional (cfg.otlpHeadersFile != null) {
      option = "services.llmvisor.otlpHeadersFile";
      path = cfg.otlpHeadersFile;
    };
in
{
  options.services.llmvisor = {
    enable = lib.mkEnableOption "llmvisor, the LLM model supervisor and OpenAI-compatible router";

    package = lib.mkPackageOption pkgs "llmvisor" {
      example = "inputs.llmvisor.packages.\${pkgs.stdenv.hostPlatform.system}.llmvisor";
      extraDescription = "This flake's modules default to the package the flake builds.";
    };

    listen = mkOption {
      type = types.listOf types.str;
      default = [ "127.0.0.1" ];
      example = [
        "127.0.0.1"
        "0.0.0.0"
      ];
      description = ''
        IP addresses the API listens on, each with `port` (`settings.server.listen`).
        Host names are not accepted. To serve the tailnet, listen on `0.0.0.0` and set
        `openFirewall`: the port is then opened on the tailnet interface only.
      '';
    };

    port = mkOption {
      type = types.port;
      default = 8080;
      example = 4000;
      description = "Port of the OpenAI-compatible API.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Open `port` on `firewallInterface` (the tailnet) only, never on every
        interface: adds it to
        `networking.firewall.interfaces.<firewallInterface>.allowedTCPPorts`.
      '';
    };

    firewallInterface = mkOption {
      type = types.str;
      default = config.services.tailscale.interfaceName;
      defaultText = literalExpression "config.services.tailscale.interfaceName";
      example = "wg0";
      description = "The interface `openFirewall` opens the port on.";
    };

    logLevel = mkOption {
      type = types.str;
      default = "info";
      example = "info,llmvisor::fleet=debug";
      description = ''
        Log filter passed as `--log-level` (`error`, `warn`, `info`, `debug`, `trace`,
        or per-module directives).
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Check the generated file with `llmvisor check-config` when the system is
        built, so a bad setting fails `nixos-rebuild` with llmvisor's message. Turn off
        only when cross-compiling, where the build machine cannot run `cfg.package`.
      '';
    };

    models = mkOption {
      type = types.attrsOf (types.submodule modelModule);
      default = { };
      example = literalExpression ''
        {
          qwen-7b = {
            kind = "vllm";
            model = "Qwen/Qwen2.5-7B-Instruct";
            gpus = [ 0 ];
            aliases = [ "gpt-4o-mini" ];
            context_length = 32768;
            max_concurrent = 16;
          };
          llama3 = {
            kind = "ollama";
            model = "llama3.1:8b";
            gpus = [ 1 ];
          };
        }
      '';
      description = ''
        Model instances, written to `[models.<name>]`. The declared options add Nix
        conveniences (`package` sets `executable`); every other key of
        docs/configuration.md (`max_concurrent`, `context_length`, `env`,
        `memory_max`, …) is passed through as written, and llmvisor checks it.
        The name becomes the unit `llmvisor-model-<name>.service`.
      '';
    };

    clients = mkOption {
      type = types.attrsOf (types.submodule clientModule);
      default = { };
      example = literalExpression ''
        {
          open-webui.keyFile = "/run/secrets/llmvisor-open-webui";
          n8n = {
            keyFile = "/run/secrets/llmvisor-n8n";
            priority = "batch";
            rpm = 600;
          };
        }
      '';
      description = ''
        Callers of the API, each with a key file, written to `[clients.<name>]` with
        `key_file = "client-<name>"`: a systemd credential, so the key stays out of the
        store. A client known only by its key's hash goes in
        `settings.clients.<name>.key_sha256` instead. Each client needs a key of its
        own, and the admin key is none of theirs (llmvisor refuses to start
        otherwise): evaluation fails when one file is given twice.
      '';
    };

    adminKeyFile = mkOption {
      type = types.nullOr keyFileType;
      default = null;
      example = "/run/secrets/llmvisor-admin";
      description = ''
        A file outside the store with the key that guards `/admin/*` (`[admin]`) and
        the operator's page at `/ui`. Without it they answer only on loopback
        connections that no proxy forwarded (`tailscale serve` sends
        `X-Forwarded-For`); set it to use them over the tailnet.
      '';
    };

    providers = mkOption {
      type = types.attrsOf (types.submodule providerModule);
      default = { };
      example = literalExpression ''
        {
          openai = {
            baseUrl = "https://api.openai.com/v1";
            keyFile = "/run/secrets/openai";
            models = { gpt-4o = "gpt-4o"; };
          };
        }
      '';
      description = ''
        Remote OpenAI-compatible endpoints, written to `[providers.<name>]` with
        `base_url` and `key_file = "provider-<name>"`; other keys pass through.
      '';
    };

    memoryMax = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "200G";
      description = ''
        Memory cap of `llmvisor.slice`, which holds every model unit (`MemoryMax=`):
        however the models add up, they cannot take the host's last memory.
      '';
    };

    memoryHigh = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "180G";
      description = "`MemoryHigh=` of `llmvisor.slice`: above it, models are throttled and reclaimed.";
    };

    otlpEndpoint = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "http://127.0.0.1:4318";
      description = ''
        An OpenTelemetry collector's OTLP/HTTP address (`[telemetry] otlp_endpoint`):
        one trace per request, with spans for the cold start, the queue wait, the
        call to the backend and the first token, and GenAI attributes (model,
        tokens, client, route). Prompt text is sent only with
        `settings.telemetry.capture_content = true`. `null`: no traces.
        An `https://` collector is checked against Mozilla's roots, or against
        `settings.telemetry.ca_file` (a PEM file of your own CA; not a secret).
      '';
    };

    otlpHeadersFile = mkOption {
      type = types.nullOr keyFileType;
      default = null;
      example = "/run/secrets/otlp-headers";
      description = ''
        A file of `Name: value` lines sent as headers with every trace export
        (`[telemetry] headers_file`), for a collector that wants a secret, such as
        Grafana Cloud's `Authorization: Basic …`. An absolute path outside the Nix
        store (sops-nix, agenix), passed to the service with `LoadCredential=`; its
        values are never logged. Headers that are not secret go in
        `settings.telemetry.headers`.
      '';
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          server = {
            listen = mkOption {
              type = types.listOf types.str;
              default = map formatListen cfg.listen;
              defaultText = literalExpression ''map (a: "''${a}:''${toString config.services.llmvisor.port}") config.services.llmvisor.listen'';
              example = [
                "127.0.0.1:8080"
                "100.64.0.1:8080"
              ];
              description = "`IP:port` addresses the API listens on.";
            };
            auth = mkOption {
              type = types.enum [
                "required"
                "none"
              ];
              default = "required";
              example = "none";
              description = ''
                `required`: every `/v1/*` request carries a client's key. `none`: no
                keys; llmvisor allows it on loopback listeners only.
              '';
            };
          };
          units.manager = mkOption {
            type = types.enum [
              "auto"
              "systemd"
              "systemd-user"
              "process"
            ];
            default = "systemd";
            example = "auto";
            description = ''
              How models run. On NixOS, transient units of the system manager
              (`llmvisor-model-<name>.service` in `llmvisor.slice`).
            '';
          };
        };
      };
      default = { };
      example = literalExpression ''
        {
          server.upstream_header_timeout = "15m";
          routes.chat = {
            targets = [ "qwen-long" "qwen-fast" ];
            rules = [ { min_prompt_tokens = 4096; targets = [ "qwen-long" ]; } ];
            fallback = [ "openai/gpt-4o-mini" ];
          };
        }
      '';
      description = ''
        llmvisor's configuration (docs/configuration.md), written as TOML to
        `/etc/llmvisor/llmvisor.toml`. `models`, `clients`, `providers` and the
        `[admin]` key are filled from the typed options above; anything else
        (`[routes]`, `[server]` timeouts, …) goes here as llmvisor spells it.
      '';
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = checkedConfigFile;
      defaultText = literalExpression "the generated, checked TOML file";
      description = "The generated configuration file (after `llmvisor check-config`).";
    };

    renderedSettings = mkOption {
      type = types.attrs;
      internal = true;
      readOnly = true;
      default = rendered;
      description = "The settings as written to the TOML file (for tests).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map (k: {
        assertion = lib.hasPrefix "/" k.path && !lib.hasPrefix builtins.storeDir k.path;
        message = "${k.option}: `${k.path}` must be an absolute path outside the Nix store (keys never enter the store); give it as a string, not a Nix path.";
      }) keyFiles
      # llmvisor refuses two clients with one key, and an admin key that is a
      # client's, when it reads the files at start; the same file twice is that,
      # and is known here already.
      ++ lib.concatLists (
        lib.mapAttrsToList (
          path: owners:
          lib.optional (lib.length owners > 1) {
            assertion = false;
            message = "${lib.concatStringsSep ", " owners}: the same key file `${path}`; llmvisor refuses to start when two clients (or a client and the admin) have one key: give each its own file.";
          }
        ) (lib.zipAttrs (map (k: { ${k.path} = k.option; }) keyHolders))
      )
      ++ [
        {
          assertion = cfg.openFirewall -> !(lib.all isLoopback cfg.listen);
          message = "services.llmvisor.openFirewall: llmvisor listens only on loopback (${lib.concatStringsSep ", " cfg.listen}); add \"0.0.0.0\" to services.llmvisor.listen.";
        }
        {
          assertion =
            (config.llmvisor.tailscale.serve.enable or false) -> cfg.settings.server.auth == "required";
          message = "services.llmvisor.settings.server.auth: `tailscale serve` forwards tailnet requests from loopback, so auth = \"none\" would open the API to the whole tailnet; keep \"required\".";
        }
      ];

    services.llmvisor.settings = {
      models = lib.mapAttrs renderModel cfg.models;
      clients = lib.mapAttrs (name: c: {
        key_file = clientCredential name;
        inherit (c)
          models
          rpm
          tpm
          priority
          ;
      }) cfg.clients;
      providers = lib.mapAttrs (
        name: p:
        removeAttrs p [
          "baseUrl"
          "keyFile"
        ]
        // {
          base_url = p.baseUrl;
        }
        // lib.optionalAttrs (p.keyFile != null) { key_file = providerCredential name; }
      ) cfg.providers;
    }
    // lib.optionalAttrs (cfg.adminKeyFile != null) { admin.key_file = adminCredential; }
    // lib.optionalAttrs (cfg.otlpEndpoint != null || cfg.otlpHeadersFile != null) {
      telemetry =
        lib.optionalAttrs (cfg.otlpEndpoint != null) { otlp_endpoint = cfg.otlpEndpoint; }
        // lib.optionalAttrs (cfg.otlpHeadersFile != null) { headers_file = otlpHeadersCredential; };
    };

    environment.etc."llmvisor/llmvisor.toml".source = cfg.configFile;
    environment.systemPackages = [ cfg.package ];
    # `llmvisor status` and `llmvisor logs` find the configuration without --config.
    environment.variables.LLMVISOR_CONFIG = configPath;

    networking.firewall.interfaces = lib.mkIf cfg.openFirewall {
      ${cfg.firewallInterface}.allowedTCPPorts = [ cfg.port ];
    };

    # Every model unit runs in this slice: one memory cap over all of them.
    systemd.slices.llmvisor = {
      description = "llmvisor model servers";
      sliceConfig =
        lib.optionalAttrs (cfg.memoryMax != null) { MemoryMax = cfg.memoryMax; }
        // lib.optionalAttrs (cfg.memoryHigh != null) { MemoryHigh = cfg.memoryHigh; };
    };

    systemd.services.llmvisor = {
      description = "llmvisor: LLM model supervisor and OpenAI-compatible router";
      documentation = [ "https://github.com/llmvisor/llmvisor" ];
      wantedBy = [ "multi-user.target" ];
      after = [
        "network.target"
        "dbus.service"
      ];
      wants = [ "dbus.service" ];

      # `nixos-rebuild switch` must not cold-start every model. A new configuration
      # only reloads (SIGHUP: llmvisor re-reads /etc/llmvisor/llmvisor.toml and applies
      # the difference); a new package or unit is left running and listed as "NOT
      # restarting", for the operator to restart when convenient.
      restartIfChanged = false;
      reloadTriggers = [ cfg.configFile ];

      serviceConfig = {
        Type = "notify";
        ExecStart = "${lib.getExe' cfg.package "llmvisor"} serve --config ${configPath} --log-level ${lib.escapeShellArg cfg.logLevel}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        RestartSec = 2;
        WatchdogSec = 30;
        TimeoutStopSec = 60;
        # Models are transient units of their own; under the process manager they are
        # children, stopped by llmvisor and SIGKILLed after the timeout.
        KillMode = "mixed";
        # A file descriptor per client connection (and per backend connection):
        # settings.server.max_connections = 4096 needs about 8,500; systemd's
        # default soft limit is 1024.
        LimitNOFILE = 65536;
        LoadCredential = credentials;

        # Identity: root, because systemd lets only root start system units without
        # polkit rules; but without any capability (llmvisor also drops them itself).
        User = "root";
        CapabilityBoundingSet = [ "" ];
        AmbientCapabilities = [ "" ];
        NoNewPrivileges = true;

        # File system: read-only everywhere but the state directory (usage database;
        # model units get llmvisor/models/<name> of their own). Its mode is
        # systemd's default, 0755: a model unit's dynamic user reaches its own
        # directory (its HOME, Ollama's store) through it, and under 0700 it could
        # not (checked under systemd 252: "Permission denied"). The files in it are
        # 0600 (UMask).
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        StateDirectory = "llmvisor";
        UMask = "0077";

        # Device access: none. Model units get their GPUs through DeviceAllow=.
        PrivateDevices = true;

        # Kernel protection
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RestrictNamespaces = true;

        # System calls
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources"
        ];
        # A filtered call fails with EPERM instead of killing llmvisor.
        SystemCallErrorNumber = "EPERM";

        # Network: TCP for the API and the backends, a Unix socket for D-Bus and the
        # journal.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
      };
    };
  };
}
