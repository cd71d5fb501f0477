# One VM: llmvisor (with the mock backend standing in for vLLM) records requests in
# its usage store; Open WebUI's state directory holds a database and an upload;
# n8n's PostgreSQL database holds a table of its role's and its state directory
# the key file; `llmvisor.backup` backs them up to a local restic repository; then
# everything is wiped (PostgreSQL's whole data directory too, as on a new host)
# and `llmvisor-backup-restore` brings it back.
#
# Open WebUI and n8n themselves are not started (Open WebUI wants to download
# models from the network at start, which a test VM does not have; n8n is not
# needed to hold its data): their files and n8n's rows are made by the test, as
# they lay them out (webui.db, uploads/; n8n's tables owned by its role, .n8n/config).
# The backup treats them as it would their own.
{ lib, ... }:
let
  key = "backup-test-key-0123456789abcdef";
  auth = "-H 'Authorization: Bearer ${key}'";
  ow = "/var/lib/private/open-webui";
  n8nDir = "/var/lib/private/n8n";
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
        # Its own: llmvisor refuses two clients with one key.
        llmvisorKeyFile = "/etc/llmvisor-test/open-webui.key";
      };
      # Its files are made by the test (see above).
      systemd.services.open-webui.wantedBy = lib.mkForce [ ];
      # Open WebUI and n8n are unfree in nixpkgs, and a test node's pkgs (the
      # flake's) cannot admit them; nor does the test run either: stand-ins in
      # their place, which say so if started.
      services.open-webui.package = pkgs.writeShellScriptBin "open-webui" ''
        echo "a stand-in: the backup test does not run Open WebUI" >&2
        exit 1
      '';
      services.n8n.package = pkgs.writeShellScriptBin "n8n" ''
        echo "a stand-in: the backup test does not run n8n" >&2
        exit 1
      '';

      # n8n's PostgreSQL database and state directory; n8n itself is not started
      # (as Open WebUI): the test writes a row as its role and the file n8n keeps
      # its credentials' key in.
      llmvisor.frontends.n8n = {
        enable = true;
        # Its own: llmvisor refuses two clients with one key.
        llmvisorKeyFile = "/etc/llmvisor-test/n8n.key";
      };
      systemd.services.n8n.wantedBy = lib.mkForce [ ];

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
        "llmvisor-test/open-webui.key".text = "backup-test-open-webui-key-0123456";
        "llmvisor-test/n8n.key".text = "backup-test-n8n-key-0123456789abcd";
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

    with subtest("n8n's data"):
        machine.wait_for_unit("postgresql-setup.service")
        machine.succeed(
            "runuser -u postgres -- psql -v ON_ERROR_STOP=1 -d n8n -c \"SET ROLE n8n; CREATE TABLE workflow (id serial PRIMARY KEY, name text); INSERT INTO workflow (name) VALUES ('kept across the restore');\"",
            "install -d -m 700 ${n8nDir}/.n8n",
            "echo '{\"encryptionKey\": \"test-key\"}' > ${n8nDir}/.n8n/config",
        )

    with subtest("a backup"):
        machine.succeed("systemctl start restic-backups-llmvisor.service")
        snapshots = json.loads(machine.succeed("restic-llmvisor snapshots --json"))
        assert len(snapshots) == 1, snapshots
        files = machine.succeed("restic-llmvisor ls latest")
        for f in ["/var/lib/llmvisor-backup/usage.sqlite", "/var/lib/llmvisor-backup/open-webui-webui.db", "${ow}/uploads/doc.txt", "/var/lib/llmvisor-backup/n8n.pgdump", "${n8nDir}/.n8n/config"]:
            assert f in files, f"{f} not in the snapshot:\n{files}"
        # The live database is not in it: its consistent copy is.
        assert "${ow}/webui.db\n" not in files, files

    with subtest("wiped"):
        machine.succeed(
            "systemctl stop llmvisor.service",
            "rm -rf /var/lib/llmvisor/usage.sqlite* ${ow} /var/lib/llmvisor-backup",
            # PostgreSQL's whole data directory, as on a new host: the restore
            # starts it afresh, and its setup makes n8n's empty database and role.
            "systemctl stop postgresql.target postgresql.service",
            "rm -rf /var/lib/postgresql ${n8nDir}",
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
        assert machine.succeed(
            "runuser -u postgres -- psql -tA -d n8n -c 'SELECT name FROM workflow'"
        ).strip() == "kept across the restore"
        # Its tables are its role's again, not the superuser's that restored them.
        assert machine.succeed(
            "runuser -u postgres -- psql -tA -d n8n -c \"SELECT tableowner FROM pg_tables WHERE tablename = 'workflow'\""
        ).strip() == "n8n"
        machine.succeed("grep -q test-key ${n8nDir}/.n8n/config")
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
