# Stands in for nixpkgs' nixos/modules/profiles/qemu-guest.nix in tests/nix-eval
# (checked against NixOS/nixpkgs 07320dad4b16): it only adds the virtio drivers to
# the initrd, the options below.
{
  boot.initrd.availableKernelModules = [
    "virtio_net"
    "virtio_pci"
    "virtio_mmio"
    "virtio_blk"
    "virtio_scsi"
    "9p"
    "9pnet_virtio"
  ];
  boot.initrd.kernelModules = [
    "virtio_balloon"
    "virtio_console"
    "virtio_rng"
    "virtio_gpu"
  ];
}
