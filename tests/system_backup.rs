//! `llmvisor.backup` (nixos-modules/backup.nix) for real: the two scripts the module
//! writes for tests/nixos/backup.nix's machine (golden files in tests/system/,
//! kept equal to the module's output by scripts/check-nix.sh) run in the real-systemd container with Debian's restic and
//! sqlite3 in place of nixpkgs' (their store paths swapped for Debian's; restic
//! 0.14 here, nixpkgs 25.11 has a later one). The VM test's steps, which cannot run
//! here (no KVM): requests in llmvisor's usage store; Open WebUI's state directory
//! (a `DynamicUser=` unit's, under /var/lib/private) with a database in WAL mode
//! and an upload; n8n's PostgreSQL database with a table of its role's, and its
//! state directory with the key file; the module's prepare script (`pg_dump` with
//! Debian's PostgreSQL 15 in place of nixpkgs'), then `restic backup` of the
//! module's paths and excludes (as NixOS's restic unit runs it; the command is a
//! golden file too, made from the module's `paths` and `exclude`); everything wiped,
//! PostgreSQL's data directory too; `llmvisor-backup-restore` with llmvisor
//! running; the requests, the database rows (n8n's owned by its role again) and
//! the files are back, and new requests are recorded in the restored store.
//!
//! Open WebUI and n8n themselves are stand-in units that keep their state
//! directories the way the NixOS units do (`DynamicUser=`, `StateDirectory=`): the
//! restore stops and starts them, as it would the real ones. PostgreSQL is the
//! real server, run by units written as nixpkgs' module writes them
//! ([`postgresql_units`]).

mod common;

use std::time::Duration;

use common::eventually;
use common::system::{Container, mock_model};

/// Debian 12's PostgreSQL programs (tests/system/prepare-root.sh installs them).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// NixOS's PostgreSQL units as nixpkgs' module (nixos-25.11,
/// nixos/modules/services/databases/postgresql.nix) writes them, with Debian's
/// programs: `postgresql.target` (what boot starts) requires the server and
/// `postgresql-setup.service`, which runs after the server and makes the
/// `ensureDatabases` and `ensureUsers` that llmvisor.frontends.n8n sets (the
/// database `n8n`, owned by the role `n8n`) with the statements the module's
/// script runs; the server initialises an empty data directory first
/// (`initdb -U postgres`) and authenticates local users by peer, as NixOS's
/// default `authentication`. Left out: the hardening, and TCP (the container
/// shares the host's network: it listens on its socket only, where NixOS's
/// default also listens on localhost).
fn postgresql_units() -> [(&'static str, String); 4] {
    let data = "/var/lib/postgresql/15";
    [
        (
            "/etc/systemd/system/postgresql.target",
            "[Unit]\nDescription=PostgreSQL\nRequires=postgresql.service postgresql-setup.service\n"
                .to_string(),
        ),
        (
            "/etc/systemd/system/postgresql.service",
            format!(
                "[Unit]\nDescription=PostgreSQL Server\nAfter=network.target\nWants=postgresql.target\nPartOf=postgresql.target\n\
                 [Service]\nType=notify\nUser=postgres\nGroup=postgres\nRuntimeDirectory=postgresql\n\
                 StateDirectory=postgresql postgresql/15\nStateDirectoryMode=0750\nEnvironment=PGDATA={data}\n\
                 ExecStartPre=/bin/sh -c 'test -e {data}/PG_VERSION || {PG_BIN}/initdb -U postgres --auth-local=peer'\n\
                 ExecStart={PG_BIN}/postgres -c listen_addresses= -c unix_socket_directories=/run/postgresql\n\
                 KillSignal=SIGINT\nKillMode=mixed\n"
            ),
        ),
        (
            "/etc/systemd/system/postgresql-setup.service",
            "[Unit]\nDescription=PostgreSQL Setup Scripts\nRequires=postgresql.service\nAfter=postgresql.service\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\nUser=postgres\nGroup=postgres\n\
             ExecStart=/usr/local/sbin/postgresql-setup\n"
                .to_string(),
        ),
        (
            "/usr/local/sbin/postgresql-setup",
            format!(
                "#!/bin/bash\nset -e\npsql={PG_BIN}/psql\n\
                 while ! $psql -d postgres -c 'SELECT 1' >/dev/null 2>&1; do\n\
                 \x20 if ! systemctl is-active --quiet postgresql.service; then exit 1; fi\n\
                 \x20 sleep 0.1\ndone\n\
                 $psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'n8n'\" | grep -q 1 || $psql -tAc 'CREATE DATABASE \"n8n\"'\n\
                 $psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='n8n'\" | grep -q 1 || $psql -tAc 'CREATE USER \"n8n\"'\n\
                 $psql -tAc 'ALTER DATABASE \"n8n\" OWNER TO \"n8n\";'\n"
            ),
        ),
    ]
}

/// A golden script with the stubs' store paths swapped for the container's
/// programs.
fn script(name: &str) -> String {
    let path = match name {
        "prepare" => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/system/vm-backup.prepare.sh"
        ),
        "backup" => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/system/vm-backup.backup.sh"
        ),
        _ => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/system/vm-backup.restore.sh"
        ),
    };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let stub = "/nix/store/00000000000000000000000000000000-";
    let text = text
        .replace(
            &format!("{stub}llmvisor/bin/llmvisor"),
            "/usr/local/bin/llmvisor",
        )
        .replace(&format!("{stub}restic/bin/restic"), "/usr/bin/restic")
        .replace(
            &format!("{stub}util-linux/bin/runuser"),
            "/usr/sbin/runuser",
        )
        .replace(&format!("{stub}postgresql/bin/"), &format!("{PG_BIN}/"));
    assert!(
        !text.contains("/nix/store/"),
        "a store path left in {path}:\n{text}"
    );
    text
}

/// The usage store's request count, by `llmvisor usage` in the container.
fn requests(c: &Container) -> Result<u64, String> {
    let (ok, out) = c.run(&[
        "/usr/local/bin/llmvisor",
        "usage",
        "--db",
        "/var/lib/llmvisor/usage.sqlite",
        "--json",
    ]);
    if !ok {
        return Err(out);
    }
    // stdout's JSON, then whatever stderr said.
    let v: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| out.clone())?;
    v.as_array()
        .and_then(|rows| rows.last())
        .and_then(|r| r["requests"].as_u64())
        .ok_or(out)
}

#[tokio::test]
async fn backup_wipe_and_restore_bring_the_usage_store_open_webui_and_n8n_back() {
    require_systemd!();
    let c = Container::boot(&mock_model("chat", &[], "")).await;
    let sh = |cmd: &str| {
        let (ok, out) = c.run(&["/bin/sh", "-c", cmd]);
        assert!(ok, "{cmd}:\n{out}");
        out
    };
    let ow = "/var/lib/private/open-webui";
    let n8n = "/var/lib/private/n8n";
    // `Type=exec`: `systemctl start` returns once the service's process has
    // exec'd, so after its state directory was made. (With the default
    // `Type=simple` it returns at the fork, and CI's `test -d` once ran first.)
    sh(&format!(
        "mkdir -p /etc/llmvisor-test /usr/local/sbin && \
         echo /var/lib/restic-repository > /etc/llmvisor-test/restic-repository && \
         echo backup-test-password > /etc/llmvisor-test/restic-password && \
         printf '[Service]\\nType=exec\\nDynamicUser=yes\\nStateDirectory=open-webui\\nExecStart=/bin/sleep infinity\\n' \
           > /etc/systemd/system/open-webui.service && \
         systemctl daemon-reload && systemctl start open-webui.service && \
         test -d {ow}"
    ));
    // PostgreSQL as NixOS runs it for n8n, and n8n as a stand-in that keeps its
    // state directory as the NixOS unit does (`DynamicUser=`, `StateDirectory=n8n`).
    for (path, text) in postgresql_units() {
        sh(&format!("cat > {path} <<'EOF'\n{text}EOF"));
    }
    sh(&format!(
        "chmod +x /usr/local/sbin/postgresql-setup && \
         printf '[Service]\\nType=exec\\nDynamicUser=yes\\nStateDirectory=n8n\\nExecStart=/bin/sleep infinity\\n' \
           > /etc/systemd/system/n8n.service && \
         systemctl daemon-reload && systemctl start postgresql.target n8n.service && test -d {n8n}"
    ));
    // What the restore relies on, read from this systemd (252): a target is
    // ordered after the units it requires, so starting it waits for the setup.
    let after = c.show("postgresql.target", "After");
    assert!(
        after.contains("postgresql-setup.service") && after.contains("postgresql.service"),
        "postgresql.target is not ordered after its units: {after}"
    );
    for (name, text) in [
        ("bk-prepare", script("prepare")),
        ("llmvisor-backup-restore", script("restore")),
    ] {
        sh(&format!(
            "cat > /usr/local/sbin/{name} <<'EOF'\n#!/bin/bash\n{text}\nEOF\nchmod +x /usr/local/sbin/{name}"
        ));
    }

    for _ in 0..3 {
        assert_eq!(c.chat("chat").await.status(), 200);
    }
    eventually(Duration::from_secs(10), async || match requests(&c) {
        Ok(3) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
    sh(&format!(
        "install -d -m 700 {ow}/uploads && \
         sqlite3 {ow}/webui.db \"PRAGMA journal_mode=WAL; CREATE TABLE chat (id INTEGER PRIMARY KEY, title TEXT); INSERT INTO chat (title) VALUES ('kept across the restore');\" && \
         echo 'a document' > {ow}/uploads/doc.txt"
    ));

    // n8n's data: a table of its role's in its database, and the file it keeps
    // the key of its stored credentials in.
    let psql = |sql: &str| {
        sh(&format!(
            "runuser -u postgres -- {PG_BIN}/psql -v ON_ERROR_STOP=1 -tA -d n8n -c \"{sql}\""
        ))
    };
    psql(
        "SET ROLE n8n; CREATE TABLE workflow (id serial PRIMARY KEY, name text); \
         INSERT INTO workflow (name) VALUES ('kept across the restore');",
    );
    sh(&format!(
        "install -d -m 700 {n8n}/.n8n && echo '{{\"encryptionKey\": \"test-key\"}}' > {n8n}/.n8n/config"
    ));

    // The backup, as NixOS's restic unit runs it: the prepare script, the
    // repository made when missing (`initialize`), the paths and the excludes.
    let restic = "RESTIC_REPOSITORY_FILE=/etc/llmvisor-test/restic-repository RESTIC_PASSWORD_FILE=/etc/llmvisor-test/restic-password";
    let prepared = sh("/usr/local/sbin/bk-prepare");
    for copy in [
        "/var/lib/llmvisor/usage.sqlite -> /var/lib/llmvisor-backup/usage.sqlite",
        "integrity ok",
        "open-webui-webui.db",
        "n8n.pgdump",
    ] {
        assert!(prepared.contains(copy), "{copy:?} not in:\n{prepared}");
    }
    sh(&format!(
        "export {restic}; (restic cat config >/dev/null 2>&1 || restic init) && {}",
        script("backup").trim()
    ));
    let files = sh(&format!("export {restic}; restic ls latest"));
    for f in [
        "/var/lib/llmvisor-backup/usage.sqlite",
        "/var/lib/llmvisor-backup/open-webui-webui.db",
        &format!("{ow}/uploads/doc.txt"),
        "/var/lib/llmvisor-backup/n8n.pgdump",
        &format!("{n8n}/.n8n/config"),
    ] {
        assert!(files.contains(f), "{f} not in the snapshot:\n{files}");
    }
    assert!(
        !files.contains(&format!("{ow}/webui.db\n")),
        "the live database is in the snapshot:\n{files}"
    );

    // Wiped: the store and its WAL, Open WebUI's directory, n8n's, the copies,
    // and PostgreSQL's whole data directory (as on a new host: the restore
    // starts it afresh, and its setup makes n8n's database and role, empty).
    sh(&format!(
        "systemctl stop llmvisor.service postgresql.target postgresql.service && \
         rm -rf /var/lib/llmvisor/usage.sqlite* {ow} {n8n} /var/lib/llmvisor-backup /var/lib/postgresql/15 && \
         systemctl start llmvisor.service"
    ));
    assert_ne!(requests(&c), Ok(3), "the usage store was not wiped");
    assert_eq!(c.show("postgresql.service", "ActiveState"), "inactive");

    // Restored while llmvisor runs, as an operator would.
    let restored = sh("/usr/local/sbin/llmvisor-backup-restore latest");
    for line in [
        "restored /var/lib/llmvisor/usage.sqlite".to_string(),
        format!("restored {ow}/webui.db"),
        "restored n8n's database".to_string(),
    ] {
        assert!(restored.contains(&line), "no {line:?} in:\n{restored}");
    }
    assert_eq!(c.show("llmvisor.service", "ActiveState"), "active");
    assert_eq!(c.show("open-webui.service", "ActiveState"), "active");
    assert_eq!(c.show("n8n.service", "ActiveState"), "active");
    // llmvisor's state directory has its mode (systemd's 0755, which systemd also
    // sets again when llmvisor starts): its models' dynamic users reach their own
    // directories through it.
    assert_eq!(sh("stat -c %a /var/lib/llmvisor").trim(), "755");
    assert_eq!(requests(&c), Ok(3));
    assert_eq!(
        psql("SELECT name FROM workflow").trim(),
        "kept across the restore"
    );
    // Its tables are its role's again, not the superuser's that restored them.
    assert_eq!(
        psql("SELECT tableowner FROM pg_tables WHERE tablename = 'workflow'").trim(),
        "n8n"
    );
    assert!(sh(&format!("cat {n8n}/.n8n/config")).contains("test-key"));
    assert_eq!(
        sh(&format!("sqlite3 {ow}/webui.db 'SELECT title FROM chat'")).trim(),
        "kept across the restore"
    );
    assert_eq!(
        sh(&format!("cat {ow}/uploads/doc.txt")).trim(),
        "a document"
    );
    // The database belongs to Open WebUI's (dynamic) user again, like its directory.
    assert_eq!(
        sh(&format!("stat -c %u {ow}/webui.db")),
        sh(&format!("stat -c %u {ow}"))
    );
    // New requests go into the restored store (on a new connection: the restore
    // restarted llmvisor, which closed the client's kept-alive one).
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = fresh
        .post(c.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "chat", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually(Duration::from_secs(10), async || match requests(&c) {
        Ok(4) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .await;
}
