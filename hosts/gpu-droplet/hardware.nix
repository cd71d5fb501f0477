# ─── REPLACE THIS FILE ─────────────────────────────────────────────────────────
# The machine-specific part of the gpu-droplet example: a cloud VM with one NVIDIA
# GPU (an H100 here), booted with GRUB on a virtio disk. Take the values from your
# provider's NixOS image or `nixos-generate-config --show-hardware-config`.
{ lib, modulesPath, ... }:
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  nixpkgs.hostPlatform = "x86_64-linux";

  boot.loader.grub = {
    enable = true;
    device = "/dev/vda";
  };
  boot.initrd.availableKernelModules = [
    "virtio_pci"
    "virtio_blk"
    "virtio_scsi"
    "ahci"
    "sd_mod"
  ];

  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };

  # The public interface; the firewall keeps it to SSH.
  networking.useDHCP = lib.mkDefault true;

  # One H100 (Hopper): the production driver branch with the open kernel module.
  llmvisor.nvidia = {
    driver = "consumer";
    open = true;
  };
}
