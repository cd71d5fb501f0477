# fleet-gpu1: the first GPU node (gpu-node.nix).
{
  imports = [ ./gpu-node.nix ];
  networking.hostName = "fleet-gpu1";
}
