# Three VMs: hosts/fleet in miniature. Two GPU nodes run llmvisor with the project's
# mock backend (llmvisor-mock) standing in for vLLM; each requires a key and opens
# llmvisor's port on the test network's interface (eth1) alone, which plays the
# tailnet (a plain test network: the fleet's logic does not depend on Tailscale, so
# no Headscale here). The gateway routes `chat` over both nodes with the helpers of
# hosts/fleet/fleet.nix (peer providers health-checked every 2 s, least-outstanding),
# its own mock model as the last resort. Nodes reach each other by node name.
#
# A request through the gateway reaches a node; concurrent requests spread over
# both; a node stopped in the middle of a stream of requests costs none of them and
# is taken out by the health check within a few intervals; it gets work again once
# it is back; with both nodes down the gateway's own model answers.
{ lib, ... }:
let
  fleet = import ../../hosts/fleet/fleet.nix { inherit lib; };

  gpuNodes = [
    "gpu1"
    "gpu2"
  ];
  keyDir = "/etc/llmvisor-test";
  # Test keys in the store, read-only to root: fine in a VM, never on a real host.
  testerKey = "fleet-test-tester-key-0123456789abcdef";
  peerKey = node: "fleet-test-${node}-key-0123456789abcdef";
  keyFile = text: {
    inherit text;
    mode = "0400";
  };

  # About 0.8 s per answer (16 tokens, 50 ms each): concurrent requests overlap.
  mock = package: {
    kind = "command";
    command = [
      "${package}/bin/llmvisor-mock"
      "--port"
      "{port}"
      "--served-name"
      "{served_name}"
      "--token-delay"
      "50ms"
    ];
  };

  gpuNode =
    name:
    { config, ... }:
    {
      llmvisor.firewall = {
        enable = true;
        tailnetInterface = "eth1";
      };
      services.llmvisor = {
        enable = true;
        listen = [ "0.0.0.0" ];
        openFirewall = true;
        firewallInterface = "eth1";
        clients.gateway.keyFile = "${keyDir}/gateway.key";
        models.chat = mock config.services.llmvisor.package // {
          idle_ttl = 0;
        };
      };
      environment.etc."llmvisor-test/gateway.key" = keyFile (peerKey name);
    };
in
{
  name = "llmvisor-fleet";

  nodes.gpu1 = gpuNode "gpu1";
  nodes.gpu2 = gpuNode "gpu2";

  nodes.gateway =
    { config, pkgs, ... }:
    {
      services.llmvisor = {
        enable = true;
        clients.tester.keyFile = "${keyDir}/tester.key";
        settings.server.upstream_connect_timeout = "2s";
        providers = lib.genAttrs gpuNodes (
          node:
          fleet.peer {
            url = "http://${node}:8080";
            keyFile = "${keyDir}/peer-${node}.key";
          }
        );
        settings.routes.chat = fleet.spread {
          nodes = gpuNodes;
          model = "chat";
          fallback = [ "local" ];
        };
        models.local = mock config.services.llmvisor.package;
      };
      environment.etc = {
        "llmvisor-test/tester.key" = keyFile testerKey;
      }
      // lib.listToAttrs (
        map (node: lib.nameValuePair "llmvisor-test/peer-${node}.key" (keyFile (peerKey node))) gpuNodes
      );
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];

      # A steady stream of requests through the gateway, one at a time, each line
      # "<n> <status> <x-llmvisor-target>"; started with `systemctl start --no-block`.
      systemd.services.fleet-load = {
        path = [
          pkgs.curl
          pkgs.coreutils
          pkgs.gnugrep
        ];
        environment.REQUESTS = "40";
        serviceConfig.Type = "oneshot";
        script = ''
          log=/tmp/fleet-load.log
          : > "$log"
          for i in $(seq 1 "$REQUESTS"); do
            code=$(curl -s -o /dev/null -D /tmp/fleet-load.headers -w '%{http_code}' \
              -H "Authorization: Bearer $(cat ${keyDir}/tester.key)" \
              -H 'content-type: application/json' \
              -d '{"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}' \
              http://127.0.0.1:8080/v1/chat/completions || true)
            target=$(grep -i '^x-llmvisor-target:' /tmp/fleet-load.headers | cut -d' ' -f2 | tr -d '\r' || true)
            echo "$i $code ''${target:--}" >> "$log"
            sleep 0.2
          done
          touch "$log.done"
        '';
      };
    };

  testScript = ''
    import json
    import time

    TESTER = "${testerKey}"
    BODY = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Hello"}]})

    def chat(key=TESTER, url="http://127.0.0.1:8080", machine=gateway):
        """One chat completion from `machine`: (status, x-llmvisor-target)."""
        out = machine.succeed(
            f"curl -s -o /dev/null -D - -w 'status=%{{http_code}}' -H 'Authorization: Bearer {key}' "
            f"-H 'content-type: application/json' -d '{BODY}' {url}/v1/chat/completions"
        )
        target = None
        for line in out.splitlines():
            if line.lower().startswith("x-llmvisor-target:"):
                target = line.split(":", 1)[1].strip()
        return int(out.rsplit("status=", 1)[1]), target

    def wait_provider(node, healthy, timeout=60):
        want = "true" if healthy else "false"
        gateway.wait_until_succeeds(
            f"curl -s http://127.0.0.1:8080/health | jq -e '.providers.{node}.healthy == {want}'",
            timeout=timeout,
        )

    start_all()
    for node in (gpu1, gpu2, gateway):
        node.wait_for_unit("llmvisor.service")
        node.wait_for_open_port(8080)

    with subtest("the nodes answer the gateway's key only"):
        for name in ("gpu1", "gpu2"):
            status, _ = chat(key="not-a-key", url=f"http://{name}:8080")
            assert status == 401, status
        assert chat(key="${peerKey "gpu1"}", url="http://gpu1:8080")[0] == 200
        assert chat(key="${peerKey "gpu2"}", url="http://gpu2:8080")[0] == 200
        # The wrong node's key is no key at all.
        assert chat(key="${peerKey "gpu1"}", url="http://gpu2:8080")[0] == 401

    with subtest("the nodes open llmvisor's port on eth1 only"):
        rules = gpu1.succeed("nft list ruleset")
        assert "eth1" in rules, rules

    with subtest("a request through the gateway reaches a node"):
        wait_provider("gpu1", True)
        wait_provider("gpu2", True)
        status, target = chat()
        assert status == 200, status
        assert target in ("gpu1/chat", "gpu2/chat"), target

    with subtest("least-outstanding spreads concurrent requests over both nodes"):
        out = gateway.succeed(
            "seq 8 | xargs -P 8 -I{} "
            f"curl -s -o /dev/null -D - -H 'Authorization: Bearer {TESTER}' "
            f"-H 'content-type: application/json' -d '{BODY}' http://127.0.0.1:8080/v1/chat/completions"
            " | grep -i '^x-llmvisor-target:'"
        )
        seen = {line.split(":", 1)[1].strip() for line in out.splitlines()}
        assert seen == {"gpu1/chat", "gpu2/chat"}, seen

    with subtest("a node stops: its requests fail over, none is lost"):
        gateway.succeed("systemctl start --no-block fleet-load.service")
        gateway.wait_until_succeeds("test $(wc -l < /tmp/fleet-load.log) -ge 5")
        stopped = time.monotonic()
        gpu1.succeed("systemctl stop llmvisor.service")
        # Two missed checks 2 s apart, each given 1 s: about 5 s; the bound is loose.
        wait_provider("gpu1", False, timeout=20)
        print(f"gpu1 marked down {time.monotonic() - stopped:.1f} s after it stopped")
        gateway.wait_until_succeeds("test -e /tmp/fleet-load.log.done", timeout=120)
        lines = [line.split() for line in gateway.succeed("cat /tmp/fleet-load.log").splitlines()]
        assert len(lines) == 40, lines
        failed = [line for line in lines if line[1] != "200"]
        assert not failed, f"requests lost: {failed}"
        targets = [line[2] for line in lines]
        assert set(targets) <= {"gpu1/chat", "gpu2/chat"}, targets
        # Ties go to the first node: gpu1 served until it stopped, gpu2 after.
        assert targets[0] == "gpu1/chat", targets
        assert targets[-1] == "gpu2/chat", targets

    with subtest("a node that comes back gets work again"):
        gpu1.succeed("systemctl start llmvisor.service")
        gpu1.wait_for_open_port(8080)
        wait_provider("gpu1", True)
        # Its circuit breaker may still be open from the failed attempts; it lets a
        # trial request through after its cooldown.
        gateway.wait_until_succeeds(
            f"curl -s -o /dev/null -D - -H 'Authorization: Bearer {TESTER}' "
            f"-H 'content-type: application/json' -d '{BODY}' http://127.0.0.1:8080/v1/chat/completions"
            " | grep -i '^x-llmvisor-target: gpu1/chat'",
            timeout=90,
        )

    with subtest("with every node down, the gateway's own model answers"):
        gpu1.succeed("systemctl stop llmvisor.service")
        gpu2.succeed("systemctl stop llmvisor.service")
        wait_provider("gpu1", False, timeout=30)
        wait_provider("gpu2", False, timeout=30)
        status, target = chat()
        assert status == 200, status
        assert target == "local", target
        health = json.loads(gateway.succeed("curl -s http://127.0.0.1:8080/health"))
        assert health["status"] == "degraded", health
        assert health["providers"]["gpu1"]["last_check_error"], health
  '';
}
