# One VM: llmvisor (with the mock backend standing in for vLLM) records requests in
# its usage store; Open WebUI's state directory holds a database and an upload;
# `llmvisor.backup` backs both up to a local restic repository; then everything is
# wiped and `llmvisor-backup-restore` brings it back.
#
# Open WebUI itself is not started (it wants to download models from the network
# at start, which a test VM does not have): its database and upload are made in
# its state directory by the test, as Open WebUI lays them out (webui.db,
# uploads/). The backup treats them as it would Open WebUI's own.
{ lib, ... }:
let
  key = "backup-test-key-0123456789abcdef";
  auth = "-H 'Authorization: Bearer ${key}'";
  ow = "/var/lib/private/open-webui";
in
{
  name = "llmvisor-backup";

  nodes.machine =
    { config, pkgs, ... }:
    {
      services.llmvisor = {
        enable = true;
        clients.tester.keyFile = "/etc/llmvisor-test/tester.key";
        models.chat = {
          kind = "command";
          command = [
            "${config.services.llmvisor.package}/bin/llmvisor-mock"
            "--port"
            "{port}"
            "--served-name"
            "{served_name}"
          ];
        };
      };

      llmvisor.frontends.openWebui = {
        enable = true;
        llmvisorKeyFile = "/etc/llmvisor-test/tester.key";
      };
      # Its files are made by the test (see above).
      systemd.services.open-webui.wantedBy = lib.mkForce [ ];

      llmvisor.backup = {
        enable = true;
        # Test secrets in /etc; on a host they live outside the store.
        repositoryFile = "/etc/llmvisor-test/restic-repository";
        passwordFile = "/etc/llmvisor-test/restic-password";
        # Started by the test, not by the clock.
        timerConfig = null;
      };

      environment.etc = {
        "llmvisor-test/tester.key".text = key;
        "llmvisor-test/restic-repository".text = "/var/lib/restic-repository";
        "llmvisor-test/restic-password".text = "backup-test-password";
      };
      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.sqlite
      ];
    };

  testScript = ''
    import json

    machine.wait_for_unit("llmvisor.service")

    with subtest("the usage store has requests"):
        for _ in range(3):
            machine.succeed(
                "curl -sf ${auth} -H 'Content-Type: application/json' "
                + "-d '{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}' "
                + "http://127.0.0.1:8080/v1/chat/completions"
            )
        machine.wait_until_succeeds(
            "llmvisor usage --db /var/lib/llmvisor/usage.sqlite --json | jq -e '.[-1].requests == 3'"
        )

    with subtest("Open WebUI's data"):
        machine.succeed(
            "install -d -m 700 ${ow}/uploads",
            "sqlite3 ${ow}/webui.db 'PRAGMA journal_mode=WAL; CREATE TABLE chat (id INTEGER PRIMARY KEY, title TEXT); INSERT INTO chat (title) VALUES (\"kept across the restore\");'",
            "echo 'a document' > ${ow}/uploads/doc.txt",
        )

    with subtest("a backup"):
        machine.succeed("systemctl start restic-backups-llmvisor.service")
        snapshots = json.loads(machine.succeed("restic-llmvisor snapshots --json"))
        assert len(snapshots) == 1, snapshots
        files = machine.succeed("restic-llmvisor ls latest")
        for f in ["/var/lib/llmvisor-backup/usage.sqlite", "/var/lib/llmvisor-backup/open-webui-webui.db", "${ow}/uploads/doc.txt"]:
            assert f in files, f"{f} not in the snapshot:\n{files}"
        # The live database is not in it: its consistent copy is.
        assert "${ow}/webui.db\n" not in files, files

    with subtest("wiped"):
        machine.succeed(
            "systemctl stop llmvisor.service",
            "rm -rf /var/lib/llmvisor/usage.sqlite* ${ow} /var/lib/llmvisor-backup",
        )

    with subtest("restored"):
        machine.succeed("llmvisor-backup-restore latest >&2")
        machine.succeed("systemctl start llmvisor.service")
        machine.wait_for_unit("llmvisor.service")
        machine.succeed(
            "llmvisor usage --db /var/lib/llmvisor/usage.sqlite --json | jq -e '.[-1].requests == 3'"
        )
        machine.succeed("sqlite3 ${ow}/webui.db 'SELECT title FROM chat' | grep -q 'kept across the restore'")
        machine.succeed("grep -q 'a document' ${ow}/uploads/doc.txt")
        # New requests are recorded in the restored store.
        machine.succeed(
            "curl -sf ${auth} -H 'Content-Type: application/json' "
            + "-d '{\"model\": \"chat\", \"messages\": []}' http://127.0.0.1:8080/v1/chat/completions"
        )
        machine.wait_until_succeeds(
            "llmvisor usage --db /var/lib/llmvisor/usage.sqlite --json | jq -e '.[-1].requests == 4'"
        )
  '';
}
