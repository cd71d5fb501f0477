# ─── REPLACE THIS FILE ─────────────────────────────────────────────────────────
# The machine-specific part of the fleet example, one placeholder for all three
# hosts. Give each host its own: generate it on the machine with
# `nixos-generate-config --show-hardware-config`, save it as hardware-<host>.nix,
# import that from gateway.nix / gpu1.nix / gpu2.nix, and drop this file's import
# from common.nix.
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

  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-label/boot";
    fsType = "vfat";
    options = [ "umask=0077" ];
  };

  networking.useDHCP = lib.mkDefault true;
}
