# A GPU node of the fleet: llmvisor with the models the gateway spreads work over,
# on the tailnet, answering only the gateway's key. Every node serves the same model
# names, so the gateway's routes can name `<node>/<model>` for each of them.
{ lib, ... }:
let
  fleet = import ./fleet.nix { inherit lib; };
in
{
  imports = [ ./common.nix ];

  # The NVIDIA driver and CUDA are unfree.
  nixpkgs.config.allowUnfree = true;
  llmvisor.nvidia = {
    enable = true;
    cudaSupport = true;
  };

  services.llmvisor = {
    enable = true;
    # The tailnet reaches the API on the tailscale0 interface alone.
    listen = [ "0.0.0.0" ];
    openFirewall = true;
    memoryMax = "100G";

    # The only caller: the gateway, with the key colmena puts on this node.
    clients.gateway = {
      keyFile = "${fleet.secrets}/gateway.key";
      models = [ "qwen-7b" ];
    };

    models.qwen-7b = {
      kind = "vllm";
      model = "Qwen/Qwen2.5-7B-Instruct-AWQ";
      gpus = [ 0 ];
      context_length = 32768;
      gpu_memory_utilization = 0.9;
      max_concurrent = 32;
      max_queue = 64;
      start_timeout = "15m";
      # A fleet node keeps its model loaded: the gateway expects it ready.
      idle_ttl = 0;
      # Downloads the weights on the first start, into the unit's cache directory.
      allow_network = true;
    };
  };
}
