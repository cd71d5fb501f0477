# The fleet's shape, shared by its three hosts, by hive.nix (colmena) and by the VM
# test tests/nixos/fleet.nix, which builds its gateway with the same `peer` and
# `spread` helpers. Adding a GPU node: a file like gpu1.nix, its name in `gpuNodes`,
# its entry in hive.nix.
{ lib }:
rec {
  # Your tailnet's MagicDNS domain (Tailscale admin console → DNS). The gateway
  # reaches each node at http://<node>.<tailnetDomain>:<port>.
  tailnetDomain = "example-tailnet.ts.net";

  # llmvisor's port on every host.
  port = 8080;

  # Where the keys live on every host; colmena's `deployment.keys` write them here
  # (hive.nix), outside the Nix store, on every `colmena apply` or `colmena upload-keys`.
  secrets = "/var/lib/secrets/llmvisor";

  gateway = "fleet-gateway";
  gpuNodes = [
    "fleet-gpu1"
    "fleet-gpu2"
  ];

  # The key the gateway presents to `node`: the gateway holds one per node (so a
  # node that leaks its copy opens no other node), the node holds its own as the
  # key of its client `gateway`.
  peerKey = node: "peer-${node}.key";

  # How the gateway watches its peers: GET /health every 2 s (1 s to answer); two
  # misses in a row take a node out, two passes bring it back. A node that stops
  # is out within about 5 s; until then a request sent to it fails before its
  # first byte (connection refused, or `upstream_connect_timeout` for a host that
  # vanished) and is retried on another node.
  health = {
    health_path = "/health";
    health_interval = "2s";
    health_timeout = "1s";
    unhealthy_after = 2;
    healthy_after = 2;
  };

  # `services.llmvisor.providers.<node>` of the gateway: a peer llmvisor at `url`
  # (scheme, host and port), authenticated with the key in `keyFile`.
  peer =
    {
      url,
      keyFile,
      # Longest wait for a node's response headers: a non-streaming completion
      # sends them only when done, and a node may first cold-start its model.
      timeout ? "15m",
    }:
    {
      baseUrl = "${url}/v1";
      inherit keyFile timeout;
    }
    // health;

  # `services.llmvisor.settings.routes.<name>` of the gateway: `model` as served by
  # every node in `nodes`, least-outstanding first, down nodes skipped; `fallback`
  # when no node can serve.
  spread =
    {
      nodes,
      model,
      fallback ? [ ],
    }:
    {
      targets = map (node: "${node}/${model}") nodes;
      strategy = "least-outstanding";
    }
    // lib.optionalAttrs (fallback != [ ]) { inherit fallback; };
}
