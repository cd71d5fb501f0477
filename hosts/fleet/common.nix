# What the fleet's three hosts share: SSH for colmena (root, keys only), the tailnet
# the hosts talk over, and "SSH only public": llmvisor's port opens on the tailnet
# interface alone.
{ lib, ... }:
let
  fleet = import ./fleet.nix { inherit lib; };
in
{
  imports = [ ./hardware.nix ];

  time.timeZone = "UTC";
  system.stateVersion = "25.11";

  # colmena deploys as root over SSH (deployment.targetUser's default).
  services.openssh = {
    enable = true;
    settings = {
      PasswordAuthentication = false;
      PermitRootLogin = "prohibit-password";
    };
  };

  # The hosts reach each other as <hostName>.<tailnetDomain>. The auth key is one of
  # colmena's keys (hive.nix).
  llmvisor.tailscale = {
    enable = true;
    authKeyFile = "${fleet.secrets}/tailscale-auth-key";
    inherit (fleet) tailnetDomain;
  };

  llmvisor.firewall.enable = true;

  services.llmvisor.port = fleet.port;
}
