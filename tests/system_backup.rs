//! `llmvisor.backup` (nixos-modules/backup.nix) for real: the two scripts the module
//! writes for tests/nixos/backup.nix's machine (golden files in tests/system/,
//! kept equal to the module's output by scripts/check-nix.sh) run in the real-systemd container with Debian's restic and
//! sqlite3 in place of nixpkgs' (their store paths swapped for Debian's; restic
//! 0.14 here, nixpkgs 25.11 has a later one). The VM test's steps, which cannot run
//! here (no KVM): requests in llmvisor's usage store; Open WebUI's state directory
//! (a `DynamicUser=` unit's, under /var/lib/private) with a database in WAL mode
//! and an upload; the module's prepare script, then `restic backup` of the
//! module's paths and excludes (as NixOS's restic unit runs it; the command is a
//! golden file too, made from the module's `paths` and `exclude`); everything wiped;
//! `llmvisor-backup-restore` with llmvisor running; the requests, the database row
//! and the upload are back, and new requests are recorded in the restored store.
//!
//! Open WebUI itself is a stand-in unit that keeps its state directory the way the
//! NixOS unit does (`DynamicUser=`, `StateDirectory=open-webui`): the restore stops
//! and starts it, as it would the real one.

mod common;

use std::time::Duration;

use common::eventually;
use common::system::{Container, mock_model};

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
        .replace(&format!("{stub}restic/bin/restic"), "/usr/bin/restic");
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
async fn backup_wipe_and_restore_bring_the_usage_store_and_open_webui_back() {
    require_systemd!();
    let c = Container::boot(&mock_model("chat", &[], "")).await;
    let sh = |cmd: &str| {
        let (ok, out) = c.run(&["/bin/sh", "-c", cmd]);
        assert!(ok, "{cmd}:\n{out}");
        out
    };
    let ow = "/var/lib/private/open-webui";
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

    // The backup, as NixOS's restic unit runs it: the prepare script, the
    // repository made when missing (`initialize`), the paths and the excludes.
    let restic = "RESTIC_REPOSITORY_FILE=/etc/llmvisor-test/restic-repository RESTIC_PASSWORD_FILE=/etc/llmvisor-test/restic-password";
    let prepared = sh("/usr/local/sbin/bk-prepare");
    for copy in [
        "/var/lib/llmvisor/usage.sqlite -> /var/lib/llmvisor-backup/usage.sqlite",
        "integrity ok",
        "open-webui-webui.db",
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
    ] {
        assert!(files.contains(f), "{f} not in the snapshot:\n{files}");
    }
    assert!(
        !files.contains(&format!("{ow}/webui.db\n")),
        "the live database is in the snapshot:\n{files}"
    );

    // Wiped: the store and its WAL, Open WebUI's directory, the copies.
    sh(&format!(
        "systemctl stop llmvisor.service && rm -rf /var/lib/llmvisor/usage.sqlite* {ow} /var/lib/llmvisor-backup && systemctl start llmvisor.service"
    ));
    assert_ne!(requests(&c), Ok(3), "the usage store was not wiped");

    // Restored while llmvisor runs, as an operator would.
    let restored = sh("/usr/local/sbin/llmvisor-backup-restore latest");
    for line in [
        "restored /var/lib/llmvisor/usage.sqlite".to_string(),
        format!("restored {ow}/webui.db"),
    ] {
        assert!(restored.contains(&line), "no {line:?} in:\n{restored}");
    }
    assert_eq!(c.show("llmvisor.service", "ActiveState"), "active");
    assert_eq!(c.show("open-webui.service", "ActiveState"), "active");
    assert_eq!(requests(&c), Ok(3));
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
