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
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(gone_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "removed model still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lv.chat("gone").await.status(), 404);
    // The new one starts on demand.
    assert_eq!(lv.state("new").await, "stopped");
    assert_eq!(lv.chat("new").await.status(), 200);
}
