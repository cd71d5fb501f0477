# ─── REPLACE THIS FILE ─────────────────────────────────────────────────────────
# The machine-specific part of the homelab-2x3090 example: disks, boot loader,
# kernel modules and network interface. Generate yours on the machine with
# `nixos-generate-config --show-hardware-config` and keep the GPU lines below.
{ lib, ... }:
{
  nixpkgs.hostPlatform = "x86_64-linux";

  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  boot.initrd.availableKernelModules = [
    "nvme"
    "xhci_pci"
    "ahci"
    "usbhid"
    "sd_mod"
  ];
  boot.kernelModules = [ "kvm-amd" ];

  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-label/boot";
    fsType = "vfat";
    options = [ "umask=0077" ];
  };
  # Model weights: a large, fast disk for the models' cache directories
  # (/var/cache/private/llmvisor/models/<name>, where vLLM keeps Hugging Face files).
  fileSystems."/var/cache" = {
    device = "/dev/disk/by-label/models";
    fsType = "ext4";
  };

  networking.useDHCP = lib.mkDefault true;

  # Two RTX 3090 (Ampere): the open kernel module supports them.
  llmvisor.nvidia = {
    driver = "consumer";
    open = true;
  };
}
