# fleet-gpu2: the second GPU node (gpu-node.nix).
{
  imports = [ ./gpu-node.nix ];
  networking.hostName = "fleet-gpu2";
}
