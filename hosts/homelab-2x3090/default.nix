# homelab-2x3090: seed 003's two-GPU box. GPU 0 serves long contexts for
# interactive use (Open WebUI), GPU 1 serves throughput (n8n, batch) plus embeddings
# and a reranker. Public names route by prompt length and client. From seed 004's
# home lab: Qdrant for Open WebUI's documents (embedded by bge-m3 on GPU 1), the
# journal in Loki next to Grafana, and nightly backups (usage store, Open WebUI,
# n8n's database, Qdrant) to a restic repository.
#
# Copy this directory, replace hardware.nix, create the files below (root-owned,
# mode 0600), then `nixos-rebuild switch --flake .#<name>`:
#   /var/lib/secrets/llmvisor/*.key          one key each, each its own
#       (`openssl rand -hex 32 > FILE`);
#   /var/lib/secrets/tailscale-auth-key      an auth key from the Tailscale admin console;
#   /var/lib/secrets/restic-repository       the repository's location (a path or URL);
#   /var/lib/secrets/restic-password         the repository's password (`openssl rand -hex 32`);
#   /var/lib/secrets/grafana-secret-key, grafana-admin-password  (`openssl rand -hex 32`).
{ ... }:
let
  secrets = "/var/lib/secrets/llmvisor";

  # vLLM on one GPU, 4-bit (AWQ) weights, so that the instances of a GPU fit on its
  # 24 GiB together: the memory fractions of each GPU's models add up to 0.9. Each
  # model downloads its weights on first start (allow_network) into its unit's cache
  # directory, /var/cache/private/llmvisor/models/<name> (the large disk of
  # hardware.nix); once they are there, `allow_network = false` keeps it offline.
  vllm =
    {
      model,
      gpu,
      contextLength,
      memoryFraction,
      maxConcurrent,
    }:
    {
      kind = "vllm";
      inherit model;
      gpus = [ gpu ];
      context_length = contextLength;
      gpu_memory_utilization = memoryFraction;
      max_concurrent = maxConcurrent;
      max_queue = 32;
      start_timeout = "10m";
      idle_ttl = "30m";
      allow_network = true;
      memory_max = "24GiB";
    };
in
{
  imports = [ ./hardware.nix ];

  networking.hostName = "homelab-2x3090";
  time.timeZone = "Europe/Berlin";
  system.stateVersion = "25.11";

  # The NVIDIA driver and CUDA are unfree.
  nixpkgs.config.allowUnfree = true;
  llmvisor.nvidia = {
    enable = true;
    persistenced = true;
    # vLLM and PyTorch with CUDA (see docs/nixos.md on binary caches).
    cudaSupport = true;
  };

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };

  llmvisor.tailscale = {
    enable = true;
    authKeyFile = "/var/lib/secrets/tailscale-auth-key";
  };

  # SSH on the LAN; the API and the front-ends on the tailnet only.
  llmvisor.firewall.enable = true;

  services.llmvisor = {
    enable = true;
    listen = [ "0.0.0.0" ];
    openFirewall = true;
    adminKeyFile = "${secrets}/admin.key";
    # All models together may not take the host's last 16 GiB.
    memoryMax = "112G";

    models = {
      # GPU 0: long context, few requests at a time.
      llama-long = vllm {
        model = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4";
        gpu = 0;
        contextLength = 32768;
        memoryFraction = 0.5;
        maxConcurrent = 3;
      };
      coder-long = vllm {
        model = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ";
        gpu = 0;
        contextLength = 16384;
        memoryFraction = 0.4;
        maxConcurrent = 2;
      };

      # GPU 1: short context, more requests at a time, next to the embedder and
      # the reranker. vLLM recognises both as pooling models by their architecture.
      llama-fast = vllm {
        model = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4";
        gpu = 1;
        contextLength = 8192;
        memoryFraction = 0.35;
        maxConcurrent = 6;
      };
      coder-fast = vllm {
        model = "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ";
        gpu = 1;
        contextLength = 8192;
        memoryFraction = 0.35;
        maxConcurrent = 6;
      };
      bge-m3 =
        vllm {
          model = "BAAI/bge-m3";
          gpu = 1;
          contextLength = 8192;
          memoryFraction = 0.1;
          maxConcurrent = 16;
        }
        // {
          aliases = [ "text-embedding-3-small" ];
          idle_ttl = 0;
        };
      bge-reranker =
        vllm {
          model = "BAAI/bge-reranker-v2-m3";
          gpu = 1;
          contextLength = 8192;
          memoryFraction = 0.1;
          maxConcurrent = 16;
        };
    };

    # Seed 003's routing: long prompts and interactive chat go to GPU 0, automation
    # and everything else to GPU 1. Seed 003's night profile (a 72B model over both
    # GPUs from 02:00 to 06:00) is added here once llmvisor has profiles.
    settings.routes = {
      chat = {
        targets = [
          "llama-long"
          "llama-fast"
        ];
        rules = [
          {
            min_prompt_tokens = 4096;
            targets = [ "llama-long" ];
          }
          {
            clients = [ "open-webui" ];
            targets = [ "llama-long" ];
          }
        ];
        default = [ "llama-fast" ];
        fallback = [ "llama-long" ];
      };
      coder = {
        targets = [
          "coder-long"
          "coder-fast"
        ];
        rules = [
          {
            min_prompt_tokens = 4096;
            targets = [ "coder-long" ];
          }
          {
            clients = [ "open-webui" ];
            targets = [ "coder-long" ];
          }
        ];
        default = [ "coder-fast" ];
      };
    };
  };

  llmvisor.frontends = {
    # Plain HTTP on the tailnet: http://homelab-2x3090:8081 and :5678.
    exposeOnTailnet = true;
    openWebui = {
      enable = true;
      llmvisorKeyFile = "${secrets}/open-webui.key";
    };
    n8n = {
      enable = true;
      llmvisorKeyFile = "${secrets}/n8n.key";
    };
    # Open WebUI's RAG: documents in Qdrant (127.0.0.1:6333), embedded by bge-m3.
    qdrant = {
      enable = true;
      embeddingModel = "bge-m3";
    };
  };

  # Every night: the usage store, Open WebUI, n8n's database and Qdrant's
  # collections, encrypted, to the repository named in the file (a NAS over SFTP,
  # an S3 bucket, a USB disk). docs/operations.md, "Backups", has the restore.
  llmvisor.backup = {
    enable = true;
    repositoryFile = "/var/lib/secrets/restic-repository";
    passwordFile = "/var/lib/secrets/restic-password";
  };

  llmvisor.monitoring = {
    enable = true;
    exposeOnTailnet = true;
    # The journal in Loki: each model's log in Grafana, requests by client and route.
    logs.enable = true;
    grafana = {
      secretKeyFile = "/var/lib/secrets/grafana-secret-key";
      adminPasswordFile = "/var/lib/secrets/grafana-admin-password";
    };
  };
}
