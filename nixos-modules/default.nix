# Every llmvisor module. Each part is off until enabled: `services.llmvisor.enable`,
# `llmvisor.{nvidia,firewall,tailscale,monitoring,backup}.enable`,
# `llmvisor.frontends.{openWebui,n8n,qdrant}.enable`,
# `llmvisor.monitoring.logs.enable`, `llmvisor.tailscale.headscale.enable`.
{
  imports = [
    ./llmvisor.nix
    ./nvidia.nix
    ./firewall.nix
    ./tailscale.nix
    ./frontends.nix
    ./monitoring.nix
    ./backup.nix
  ];
}
