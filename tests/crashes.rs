//! Backend crashes: in-flight requests get 502 (streams an SSE error event), the
//! model shows `failed` with its exit status, the next request restarts it with
//! backoff, a crash loop leaves it failed until an operator starts it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn crash_gives_502_then_the_next_request_restarts_the_model() {
    let lv = Llmvisor::start(
        "",
        &mock_model("c", &["--crash-after", "2"], "restart_backoff = \"200ms\""),
    )
    .await;
    assert_eq!(lv.chat("c").await.status(), 200);
    let first_pid = lv.mock_stats("c").await["pid"].as_u64().unwrap();
    let resp = lv.chat("c").await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backend_error");

    lv.wait_state("c", "failed", Duration::from_secs(3)).await;
    let m = lv.model("c").await;
    assert_eq!(m["exit"]["code"], 1, "{m}");
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with status 1"),
        "{m}"
    );
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("crashing after 2 requests"),
        "{m}"
    );

    let t0 = Instant::now();
    assert_eq!(lv.chat("c").await.status(), 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "restarted without backoff"
    );
    assert_ne!(lv.mock_stats("c").await["pid"].as_u64().unwrap(), first_pid);
    assert_eq!(lv.state("c").await, "ready");
    assert_eq!(
        lv.metric("llmvisor_model_failures_total{model=\"c\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn crash_loop_stays_failed_until_an_operator_starts_it() {
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "loop",
            &["--crash-after", "1"],
            "restart_backoff = \"50ms\"\nmax_restarts = 3\nrestart_window = \"1m\"",
        ),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(lv.chat("loop").await.status(), 502);
        lv.wait_state("loop", "failed", Duration::from_secs(3))
            .await;
    }
    let m = lv.model("loop").await;
    assert_eq!(m["restarts_paused"], true, "{m}");
    let resp = lv.chat("loop").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator")
    );
    // It stays failed: no restart happens by itself.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(lv.state("loop").await, "failed");
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"loop\"}")
            .await,
        3.0
    );

    // Stopping it does not lift the lock-out.
    let resp = lv
        .client
        .post(lv.url("/admin/models/loop/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(lv.state("loop").await, "failed");
    assert_eq!(lv.chat("loop").await.status(), 503);

    // An operator starts it again.
    let resp = lv
        .client
        .post(lv.url("/admin/models/loop/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    lv.wait_state("loop", "ready", Duration::from_secs(5)).await;
    assert_eq!(lv.model("loop").await["restarts_paused"], false);
    let resp = lv
        .client
        .post(lv.url("/admin/models/loop/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "already running: nothing to start");

    // And stops it.
    let resp = lv
        .client
        .post(lv.url("/admin/models/loop/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    lv.wait_state("loop", "stopped", Duration::from_secs(5))
        .await;
    let resp = lv
        .client
        .post(lv.url("/admin/models/nope/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_stream_cut_by_a_crash_ends_with_an_error_event() {
    let lv = Llmvisor::start(
        "",
        &mock_model("s", &["--token-delay", "100ms", "--max-tokens", "100"], ""),
    )
    .await;
    assert_eq!(lv.chat("s").await.status(), 200);
    let pid = lv.mock_stats("s").await["pid"].as_u64().unwrap() as u32;
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "s", "stream": true, "messages": [{"role": "user", "content": "go"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).into_owned();
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), stream.next()).await {
        match chunk {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => break,
        }
    }
    assert!(text.contains(r#"data: {"error":"#), "{text}");
    assert!(text.contains("backend_error"), "{text}");
    lv.wait_state("s", "failed", Duration::from_secs(3)).await;
    let m = lv.model("s").await;
    assert_eq!(m["exit"]["signal"], 9, "{m}");
    assert!(m["last_error"].as_str().unwrap().contains("SIGKILL"), "{m}");
    // The next request brings it back.
    assert_eq!(lv.chat("s").await.status(), 200);
}

#[tokio::test]
async fn oom_exit_is_reported_with_the_backend_message() {
    let lv = Llmvisor::start(
        "",
        &mock_model("o", &["--oom-after", "1"], "restart_backoff = \"50ms\""),
    )
    .await;
    assert_eq!(lv.chat("o").await.status(), 502);
    lv.wait_state("o", "failed", Duration::from_secs(3)).await;
    let m = lv.model("o").await;
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("CUDA out of memory"),
        "{m}"
    );
    assert!(
        lv.log().contains("CUDA out of memory"),
        "model output is logged with its name"
    );
}

#[tokio::test]
async fn a_restart_waits_for_the_old_process_to_exit() {
    // Never healthy, and takes a second to exit on SIGTERM (like a backend freeing
    // GPU memory). Each request must see a real start that times out — never a
    // start refused because the previous process still runs.
    let models = format!(
        r#"[models.slowexit]
kind = "command"
command = ["sh", "-c", "trap 'sleep 1; exit 0' TERM; while true; do sleep 0.1; done"]
port = {}
start_timeout = "400ms"
restart_backoff = "50ms"
max_restarts = 5
"#,
        free_port()
    );
    let lv = Llmvisor::start("", &models).await;
    for round in 1..=2 {
        let resp = lv.chat("slowexit").await;
        assert_eq!(resp.status(), 503, "round {round}");
        lv.wait_state("slowexit", "failed", Duration::from_secs(5))
            .await;
        let m = lv.model("slowexit").await;
        assert!(
            m["last_error"]
                .as_str()
                .unwrap()
                .contains("not healthy within"),
            "round {round}: {m}"
        );
    }
    assert_eq!(
        lv.metric("llmvisor_model_failures_total{model=\"slowexit\"}")
            .await,
        2.0
    );
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"slowexit\"}")
            .await,
        2.0
    );
    assert!(!lv.log().contains("already running"), "{}", lv.log());
}
