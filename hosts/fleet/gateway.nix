# fleet-gateway: seed 004's "several GPU hosts behind one API". No GPU of its own:
# llmvisor here routes `chat` over the GPU nodes (each a provider with an active
# health check on the node's own llmvisor), least-outstanding first; a node that
# fails its checks gets nothing until it passes again, and a request whose node dies
# before answering is retried on another node. A small CPU model on the gateway is
# the last resort when no node can serve. Clients reach the gateway as
# https://fleet-gateway.<tailnet>.ts.net through `tailscale serve`.
{ lib, ... }:
let
  fleet = import ./fleet.nix { inherit lib; };
in
{
  imports = [ ./common.nix ];

  networking.hostName = fleet.gateway;

  # HTTPS on the tailnet; llmvisor itself listens on loopback only.
  llmvisor.tailscale.serve.enable = true;

  services.llmvisor = {
    enable = true;
    listen = [ "127.0.0.1" ];
    # Proxied tailnet requests arrive from loopback: /admin/* needs its own key.
    adminKeyFile = "${fleet.secrets}/admin.key";

    settings.server = {
      # A node that vanished (power, network) is given up on quickly; the request
      # goes to the next node.
      upstream_connect_timeout = "2s";
      # A request may try each node and then the local model.
      max_attempts = 3;
    };

    # One provider per node: http://<node>.<tailnet>:8080/v1, health-checked.
    providers = lib.genAttrs fleet.gpuNodes (
      node:
      fleet.peer {
        url = "http://${node}.${fleet.tailnetDomain}:${toString fleet.port}";
        keyFile = "${fleet.secrets}/${fleet.peerKey node}";
      }
      // {
        context_length = 32768;
      }
    );

    settings.routes.chat = fleet.spread {
      nodes = fleet.gpuNodes;
      model = "qwen-7b";
      fallback = [ "gateway-small" ];
    };

    # The last resort, on the gateway's CPU: Qwen2.5 0.5B with llama.cpp. Put the
    # GGUF file there first (readable by every user: model units run as a dynamic
    # user).
    models.gateway-small = {
      kind = "llama-cpp";
      model = "/var/lib/models/qwen2.5-0.5b-instruct-q4_k_m.gguf";
      context_length = 8192;
      max_concurrent = 2;
      idle_ttl = "10m";
    };

    clients = {
      laptop.keyFile = "${fleet.secrets}/laptop.key";
      apps = {
        keyFile = "${fleet.secrets}/apps.key";
        priority = "batch";
        rpm = 600;
      };
    };
  };
}
