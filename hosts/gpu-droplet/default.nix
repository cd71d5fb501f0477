# gpu-droplet: seed 001's cloud GPU host without k3s or Docker. One GPU, reachable
# only over Tailscale (the public interface answers SSH alone), llmvisor with a vLLM
# and an Ollama model plus OpenAI as a fallback provider, Open WebUI and n8n, and
# Prometheus/Grafana; everything published as HTTPS on the tailnet by
# `tailscale serve`:
#
#   https://gpu-lab.<tailnet>.ts.net        llmvisor's OpenAI API
#   https://gpu-lab.<tailnet>.ts.net:8443   Open WebUI
#   https://gpu-lab.<tailnet>.ts.net:10000  n8n
#   https://gpu-lab.<tailnet>.ts.net:3000   Grafana
#
# From seed 000's VPS: the journal in Loki next to Grafana, and nightly encrypted
# backups to S3 (the usage store, Open WebUI, n8n's database).
#
# Copy this directory, replace hardware.nix, set tailnetDomain, create the files
# below (root-owned, mode 0600), then `nixos-rebuild switch --flake .#<name>`:
#   /var/lib/secrets/llmvisor/{admin,laptop,open-webui,n8n}.key  one key each,
#       each its own (`openssl rand -hex 32 > FILE`);
#   /var/lib/secrets/llmvisor/openai.key     your OpenAI API key;
#   /var/lib/secrets/tailscale-auth-key      an auth key from the Tailscale admin console;
#   /var/lib/secrets/restic-repository       the repository, e.g. s3:s3.amazonaws.com/BUCKET/gpu-lab;
#   /var/lib/secrets/restic-password         the repository's password (`openssl rand -hex 32`);
#   /var/lib/secrets/restic-s3.env           AWS_ACCESS_KEY_ID=… and AWS_SECRET_ACCESS_KEY=… lines;
#   /var/lib/secrets/grafana-secret-key, grafana-admin-password  (`openssl rand -hex 32`).
{ ... }:
let
  secrets = "/var/lib/secrets/llmvisor";
in
{
  imports = [ ./hardware.nix ];

  networking.hostName = "gpu-lab";
  time.timeZone = "UTC";
  system.stateVersion = "25.11";

  # The NVIDIA driver and CUDA are unfree.
  nixpkgs.config.allowUnfree = true;
  llmvisor.nvidia = {
    enable = true;
    cudaSupport = true;
  };

  services.openssh = {
    enable = true;
    settings = {
      PasswordAuthentication = false;
      PermitRootLogin = "prohibit-password";
    };
  };

  llmvisor.tailscale = {
    enable = true;
    authKeyFile = "/var/lib/secrets/tailscale-auth-key";
    hostName = "gpu-lab";
    # Your tailnet's MagicDNS domain (Tailscale admin console → DNS).
    tailnetDomain = "example-tailnet.ts.net";
    serve.enable = true;
  };

  # Seed 001's "SSH only public": services are reached through tailscale serve.
  llmvisor.firewall.enable = true;

  services.llmvisor = {
    enable = true;
    # Loopback only: tailscale serve is the way in from the tailnet.
    listen = [ "127.0.0.1" ];
    adminKeyFile = "${secrets}/admin.key";
    memoryMax = "160G";

    models = {
      deepseek-r1 = {
        kind = "vllm";
        model = "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B";
        gpus = [ 0 ];
        context_length = 32768;
        gpu_memory_utilization = 0.6;
        max_concurrent = 16;
        start_timeout = "15m";
        idle_ttl = "1h";
        allow_network = true;
      };
      # Ollama keeps its models in the unit's state directory
      # (/var/lib/llmvisor/models/llama3.1/ollama). The first start pulls the tag
      # (docs/configuration.md, "kind = ollama"), which is why this model may use
      # the network; without it, fill the store beforehand.
      "llama3.1" = {
        kind = "ollama";
        model = "llama3.1:8b";
        gpus = [ 0 ];
        context_length = 16384;
        max_concurrent = 4;
        idle_ttl = "30m";
        allow_network = true;
      };
    };

    providers.openai = {
      baseUrl = "https://api.openai.com/v1";
      keyFile = "${secrets}/openai.key";
      models."gpt-4o-mini" = "gpt-4o-mini";
    };

    # `chat`: the local model first, OpenAI when it cannot serve.
    settings.routes.chat = {
      targets = [ "deepseek-r1" ];
      fallback = [ "openai/gpt-4o-mini" ];
    };

    # A laptop on the tailnet with its own key, batch priority for scripts.
    clients.laptop = {
      keyFile = "${secrets}/laptop.key";
      rpm = 120;
    };
  };

  llmvisor.frontends = {
    openWebui = {
      enable = true;
      llmvisorKeyFile = "${secrets}/open-webui.key";
    };
    n8n = {
      enable = true;
      llmvisorKeyFile = "${secrets}/n8n.key";
    };
  };

  llmvisor.backup = {
    enable = true;
    # "s3:https://s3.<region>.amazonaws.com/<bucket>/gpu-lab", and its keys
    # (AWS_ACCESS_KEY_ID=…, AWS_SECRET_ACCESS_KEY=…) in the environment file.
    repositoryFile = "/var/lib/secrets/restic-repository";
    passwordFile = "/var/lib/secrets/restic-password";
    environmentFile = "/var/lib/secrets/restic-s3.env";
  };

  llmvisor.monitoring = {
    enable = true;
    logs.enable = true;
    # Seed 001's Phoenix: a trace per request, here in Tempo next to the metrics.
    traces.enable = true;
    grafana = {
      secretKeyFile = "/var/lib/secrets/grafana-secret-key";
      adminPasswordFile = "/var/lib/secrets/grafana-admin-password";
    };
  };
}
