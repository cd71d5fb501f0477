//! SIGHUP re-reads the configuration and applies only the difference; a bad file
//! is rejected and the running configuration stays.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn reload_applies_only_what_changed() {
    let keep = mock_model("keep", &[], "");
    let change = mock_model("change", &[], "");
    let drop_me = mock_model("gone", &[], "");
    let lv = Llmvisor::start("", &format!("{keep}{change}{drop_me}")).await;
    for m in ["keep", "change", "gone"] {
        assert_eq!(lv.chat(m).await.status(), 200);
    }
    let pid = |stats: serde_json::Value| stats["pid"].as_u64().unwrap();
    let keep_pid = pid(lv.mock_stats("keep").await);
    let change_pid = pid(lv.mock_stats("change").await);
    let gone_pid = pid(lv.mock_stats("gone").await) as u32;

    // A bad file is rejected with its problems; nothing changes.
    lv.reconfigure("[models.broken]\nkind = \"command\"\ncommand = []\n");
    lv.wait_log("reload rejected", Duration::from_secs(5)).await;
    assert!(lv.log().contains("models.broken.command"), "{}", lv.log());
    assert_eq!(lv.chat("gone").await.status(), 200);

    // keep: identical; change: one more argument; gone: removed; new: added.
    let changed = change.replace(
        "\"{served_name}\"",
        "\"{served_name}\", \"--max-tokens\", \"3\"",
    );
    let added = mock_model("new", &[], "");
    lv.reconfigure(&format!("{keep}{changed}{added}"));
    lv.wait_log("reloaded ", Duration::from_secs(5)).await;
    let log = lv.log();
    assert!(
        log.contains("added [\"new\"], restarted [\"change\"]"),
        "{log}"
    );
    assert!(log.contains("removed [\"gone\"], unchanged 1"), "{log}");

    // The unchanged model kept its process and state.
    assert_eq!(lv.state("keep").await, "ready");
    assert_eq!(pid(lv.mock_stats("keep").await), keep_pid);
    // The changed one was running, so it comes back with the new command.
    lv.wait_state("change", "ready", Duration::from_secs(10))
        .await;
    assert_ne!(pid(lv.mock_stats("change").await), change_pid);
    let body: serde_json::Value = lv
        .post(
            "/v1/chat/completions",
            &serde_json::json!({"model": "change", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 3);
    // The removed one is gone, process and name.
    eventually(Duration::from_secs(5), async || {
        if alive(gone_pid) {
            Err("removed model still running".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(lv.chat("gone").await.status(), 404);
    // The new one starts on demand.
    assert_eq!(lv.state("new").await, "stopped");
    assert_eq!(lv.chat("new").await.status(), 200);
}

#[tokio::test]
async fn a_request_queued_across_a_reload_is_served_by_the_new_instance() {
    let base = mock_model(
        "q",
        &["--token-delay", "100ms", "--max-tokens", "10"],
        "max_concurrent = 1\n",
    );
    let lv = Llmvisor::start("", &base).await;
    assert_eq!(lv.chat("q").await.status(), 200);
    let old_pid = lv.mock_stats("q").await["pid"].as_u64().unwrap() as u32;
    let in_flight = lv.spawn_chat("q");
    // Ordered by what /health shows, not by time: one at the backend, then one
    // waiting for its slot.
    let depth = async |in_flight: u64, queued: u64| {
        eventually(Duration::from_secs(5), async || {
            let m = lv.model("q").await;
            if m["in_flight"] == in_flight && m["queued"] == queued {
                Ok(())
            } else {
                Err(format!("want {in_flight} in flight, {queued} queued: {m}"))
            }
        })
        .await
    };
    depth(1, 0).await;
    let queued = lv.spawn_chat("q");
    depth(1, 1).await;

    let changed = base.replace("\"10\"]", "\"11\"]");
    lv.reconfigure(&changed);
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request drains"
    );
    assert_eq!(
        queued.await.unwrap(),
        200,
        "the queued request is served after the swap"
    );
    lv.wait_state("q", "ready", Duration::from_secs(10)).await;
    assert!(!alive(old_pid));
    let log = lv.log();
    assert!(
        !log.contains("Address already in use"),
        "two copies raced:\n{log}"
    );
    assert_eq!(
        log.matches("llmvisor-mock listening on").count(),
        2,
        "{log}"
    );
}

#[tokio::test]
async fn two_quick_reloads_leave_exactly_one_process() {
    let base = mock_model("d", &["--max-tokens", "10"], "");
    let lv = Llmvisor::start("", &base).await;
    assert_eq!(lv.chat("d").await.status(), 200);
    lv.reconfigure(&base.replace("\"10\"]", "\"11\"]"));
    lv.reconfigure(&base.replace("\"10\"]", "\"12\"]"));
    // Served by the last configuration's process (a request during the swap may
    // wait for it or be answered by the earlier one; the last answer counts).
    eventually(Duration::from_secs(10), async || {
        let body: serde_json::Value = lv
            .post(
                "/v1/chat/completions",
                &serde_json::json!({"model": "d", "messages": [{"role": "user", "content": "x"}]}),
            )
            .await
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["usage"]["completion_tokens"] == 12 {
            Ok(())
        } else {
            Err(format!("{body}"))
        }
    })
    .await;
    // Only the last configuration's process runs.
    let mocks = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
            .filter(|c| c.contains("--served-name\0d\0") && c.contains(MOCK))
            .count()
    };
    eventually(Duration::from_secs(5), async || match mocks() {
        1 => Ok(()),
        n => Err(format!("{n} processes: {}", lv.log())),
    })
    .await;
    assert!(!lv.log().contains("already running"), "{}", lv.log());
}
