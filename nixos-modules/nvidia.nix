# llmvisor.nvidia: the NVIDIA driver for a headless inference host.
{
  config,
  lib,
  ...
}:
let
  inherit (lib) literalExpression mkOption types;
  cfg = config.llmvisor.nvidia;
in
{
  options.llmvisor.nvidia = {
    enable = lib.mkEnableOption "the NVIDIA driver, persistence daemon and CUDA settings for llmvisor's models";

    cpuOnly = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        A host without an NVIDIA GPU (or a VM test): install no driver, and check that
        no model of `services.llmvisor.models` asks for `gpus`. Models then run on the
        CPU (llama.cpp, Ollama) or are remote providers.
      '';
    };

    driver = mkOption {
      type = types.enum [
        "consumer"
        "datacenter"
      ];
      default = "consumer";
      example = "datacenter";
      description = ''
        `consumer`: the regular driver branch (`package`), right for GeForce and
        workstation cards and for single datacenter GPUs. `datacenter`: nixpkgs'
        datacenter driver (`hardware.nvidia.datacenter.enable`), which adds the fabric
        manager for NVSwitch systems (HGX/DGX).
      '';
    };

    package = mkOption {
      type = types.nullOr types.package;
      default = null;
      example = literalExpression "config.boot.kernelPackages.nvidiaPackages.production";
      description = ''
        The driver package. `null`: nixpkgs' default for `driver` (`stable`, or the
        datacenter branch).
      '';
    };

    open = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Use NVIDIA's open kernel module (`hardware.nvidia.open`). Required for
        Blackwell, recommended from Turing on (RTX 20xx, A100, H100); set `false`
        for older cards.
      '';
    };

    persistenced = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Run `nvidia-persistenced`, which keeps the driver initialised while no
        process uses a GPU, so a cold-starting model does not also wait for the
        driver (seconds per GPU) and `nvidia-smi` answers at once.
      '';
    };

    cudaSupport = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Set `nixpkgs.config.cudaSupport`, so vLLM, llama.cpp and PyTorch are built with
        CUDA. Their CUDA builds are not in cache.nixos.org; add a CUDA binary cache
        (see docs/nixos.md) or expect long builds. Has no effect when the host's `pkgs`
        is passed in from outside (`nixpkgs.pkgs`).
      '';
    };
  };

  config = lib.mkMerge [
    (lib.mkIf (cfg.enable && !cfg.cpuOnly) {
      # The driver; `videoDrivers` selects it without starting an X server.
      services.xserver.videoDrivers = lib.mkIf (cfg.driver == "consumer") [ "nvidia" ];
      hardware.nvidia = {
        datacenter.enable = cfg.driver == "datacenter";
        package = lib.mkIf (cfg.package != null) cfg.package;
        open = cfg.open;
        nvidiaPersistenced = cfg.persistenced;
        # Headless: no settings GUI.
        nvidiaSettings = false;
      };
      # CUDA's user-space libraries (libcuda) come with the graphics driver stack.
      hardware.graphics.enable = true;
      nixpkgs.config.cudaSupport = lib.mkIf cfg.cudaSupport true;
      # The nvidia-uvm node CUDA needs exists from boot, before the first model starts.
      boot.kernelModules = [ "nvidia-uvm" ];
    })

    (lib.mkIf (cfg.enable && cfg.cpuOnly) {
      assertions = lib.mapAttrsToList (name: m: {
        assertion = (m.gpus or [ ]) == [ ];
        message = "services.llmvisor.models.${name}.gpus: llmvisor.nvidia.cpuOnly is set, so no model may ask for GPUs.";
      }) (config.services.llmvisor.models or { });
    })
  ];
}
