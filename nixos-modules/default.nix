# Every llmvisor module. Each part is off until enabled: `services.llmvisor.enable`,
# `llmvisor.{nvidia,firewall,tailscale,monitoring}.enable`,
# `llmvisor.frontends.{openWebui,n8n}.enable`.
{
  imports = [
    ./llmvisor.nix
    ./nvidia.nix
    ./firewall.nix
    ./tailscale.nix
    ./frontends.nix
    ./monitoring.nix
  ];
}
