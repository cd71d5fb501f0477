# One VM: llmvisor under the NixOS module, with the project's mock backend
# (llmvisor-mock) standing in for vLLM. A request starts llmvisor-model-chat.service
# in llmvisor.slice; a switch to a changed configuration reloads llmvisor without
# restarting it or the model; the idle TTL then stops the model.
{ lib, ... }:
let
  key = "lifecycle-test-key-0123456789abcdef";
  auth = "-H 'Authorization: Bearer ${key}'";

  mock =
    package: extra:
    {
      kind = "command";
      command = [
        "${package}/bin/llmvisor-mock"
        "--port"
        "{port}"
        "--served-name"
        "{served_name}"
        "--startup-delay"
        "2s"
      ];
      idle_ttl = "45s";
    }
    // extra;

  # What the machine boots with.
  base =
    { config, pkgs, ... }:
    {
      services.llmvisor = {
        enable = true;
        # The key file lives outside the store path the module sees (a string path);
        # in a test a copy in /etc is fine.
        clients.tester.keyFile = "/etc/llmvisor-test/tester.key";
        models.chat = mock config.services.llmvisor.package { aliases = [ "gpt-4o-mini" ]; };
      };
      environment.etc."llmvisor-test/tester.key".text = key;
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];
    };

  # The next generation: one model more, and a queue setting of `chat` that does not
  # change what its unit runs. `nixos-rebuild switch` to it must only reload.
  reloaded =
    { config, ... }:
    {
      services.llmvisor.models = {
        chat.max_queue = 7;
        embed = mock config.services.llmvisor.package { };
      };
    };
in
{
  name = "llmvisor-lifecycle";

  nodes.machine = {
    imports = [ base ];
    specialisation.reloaded.configuration = reloaded;
    virtualisation.memorySize = 1024;
  };

  testScript = ''
    import json

    def api(path, body=None):
        data = f"-H 'content-type: application/json' -d '{json.dumps(body)}'" if body else ""
        return json.loads(machine.succeed(f"curl -sSf ${auth} {data} http://127.0.0.1:8080{path}"))

    def show(unit, prop):
        return machine.succeed(f"systemctl show -P {prop} {unit}").strip()

    machine.wait_for_unit("llmvisor.service")
    machine.wait_for_open_port(8080)

    with subtest("no model runs before a request"):
        machine.fail("systemctl is-active llmvisor-model-chat.service")
        models = [m["id"] for m in api("/v1/models")["data"]]
        assert "chat" in models and "gpt-4o-mini" in models, models

    with subtest("a request without a key is refused"):
        code = machine.succeed(
            "curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' "
            "-d '{\"model\": \"chat\", \"messages\": []}' http://127.0.0.1:8080/v1/chat/completions"
        )
        assert code in ("401", "403"), code

    with subtest("a request starts llmvisor-model-chat.service"):
        reply = api("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]})
        assert reply["choices"][0]["message"]["content"], reply
        machine.succeed("systemctl is-active llmvisor-model-chat.service")
        assert show("llmvisor-model-chat.service", "Slice") == "llmvisor.slice"
        status = machine.succeed("systemctl status llmvisor-model-chat.service")
        assert "llmvisor-mock" in status, status
        machine.succeed("systemctl status llmvisor.slice")

    with subtest("switching to a changed configuration reloads, and the model keeps running"):
        supervisor = show("llmvisor.service", "MainPID")
        model = show("llmvisor-model-chat.service", "InvocationID")
        machine.succeed("/run/current-system/specialisation/reloaded/bin/switch-to-configuration test")
        machine.wait_until_succeeds(
            "curl -sSf ${auth} http://127.0.0.1:8080/v1/models | jq -e '.data[] | select(.id == \"embed\")'"
        )
        assert show("llmvisor.service", "MainPID") == supervisor, "llmvisor was restarted"
        assert show("llmvisor-model-chat.service", "InvocationID") == model, "the model was restarted"
        machine.succeed("systemctl is-active llmvisor-model-chat.service")

    with subtest("the idle TTL stops the model"):
        machine.wait_until_fails("systemctl is-active llmvisor-model-chat.service", timeout=120)
        machine.succeed("systemctl is-active llmvisor.service")
  '';
}
