//! Model lifecycle through the real binary: on-demand start, one start for many
//! requests, idle stop, monitoring never starts a model, cold starts visible,
//! graceful shutdown with no orphans.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn on_demand_start_and_monitoring_never_starts_a_model() {
    let lv = Llmvisor::start("", &mock_model("m1", &[], "")).await;
    assert_eq!(lv.state("m1").await, "stopped");

    // Monitoring endpoints must not wake the model.
    let models = lv.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "m1");
    assert_eq!(models["data"][0]["state"], "stopped");
    let _ = lv.client.get(lv.url("/metrics")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lv.state("m1").await, "stopped");
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"m1\"}").await,
        0.0
    );

    let resp = lv.chat("m1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmvisor-model"], "m1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(lv.state("m1").await, "ready");
    let m = lv.model("m1").await;
    assert!(m["since"].as_str().unwrap().ends_with('Z'));
    let metrics = lv.metrics_text().await;
    for series in [
        "llmvisor_requests_total{route=\"m1\",target=\"m1\",client=\"anonymous\",endpoint=\"chat/completions\",status=\"200\"} 1",
        "llmvisor_model_state{model=\"m1\",state=\"ready\"} 1",
        "llmvisor_cold_start_duration_seconds_count{model=\"m1\"} 1",
        "llmvisor_requests_in_flight{model=\"m1\"} 0",
        "llmvisor_queue_depth{model=\"m1\"} 0",
        "llmvisor_request_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(series), "missing {series} in:\n{metrics}");
    }
}

#[tokio::test]
async fn concurrent_requests_to_a_stopped_model_cause_one_start() {
    let lv = Llmvisor::start("", &mock_model("slow", &["--startup-delay", "700ms"], "")).await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = lv.client.clone();
        let url = lv.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    // While it loads, /health and /v1/models show it, with the time elapsed.
    eventually(Duration::from_secs(5), async || {
        let m = lv.model("slow").await;
        // The requests are on their way until then.
        if m["state"] == "stopped" {
            return Err(format!("{m}"));
        }
        assert!(
            m["state"] == "loading" || m["state"] == "starting",
            "expected a cold start in progress: {m}"
        );
        if m["queued"] == 12 && m["state_seconds"].as_f64().unwrap() >= 0.1 {
            Ok(())
        } else {
            Err(format!("{m}"))
        }
    })
    .await;
    let listed = lv.get_json("/v1/models").await;
    assert!(listed["data"][0]["state"] == "loading" || listed["data"][0]["state"] == "starting");

    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(t0.elapsed() >= Duration::from_millis(700));
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"slow\"}")
            .await,
        1.0
    );
    let stats = lv.mock_stats("slow").await;
    assert_eq!(stats["requests"], 12);
}

#[tokio::test]
async fn idle_model_is_stopped_but_never_while_a_request_is_in_flight() {
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "idle",
            &["--token-delay", "100ms", "--max-tokens", "20"],
            "idle_ttl = \"1s\"",
        ),
    )
    .await;
    assert_eq!(lv.chat("idle").await.status(), 200);
    let pid = lv.mock_stats("idle").await["pid"].as_u64().unwrap() as u32;

    // A 2 s request outlives the 1 s TTL: the model must stay up for it.
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "idle", "messages": [{"role": "user", "content": "long"}], "max_tokens": 20}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(lv.state("idle").await, "ready");
    let t_idle = Instant::now();
    lv.wait_state("idle", "stopped", Duration::from_secs(5))
        .await;
    let waited = t_idle.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "stopped after {waited:?}"
    );
    assert!(!alive(pid), "the backend process {pid} is still running");
    assert!(lv.log().contains("idle for 1s; stopping"), "{}", lv.log());

    // And it comes back on demand.
    assert_eq!(lv.chat("idle").await.status(), 200);
}

#[tokio::test]
async fn streaming_request_waiting_for_a_cold_start_gets_keepalive_comments() {
    let lv = Llmvisor::start(
        "stream_keepalive_interval = \"300ms\"",
        &mock_model(
            "cold",
            &["--startup-delay", "1200ms", "--max-tokens", "3"],
            "",
        ),
    )
    .await;
    let t0 = Instant::now();
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "cold", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let chunks = read_stream(resp, t0).await;
    let text: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    let comments = text
        .lines()
        .filter(|l| l.starts_with(": loading cold ("))
        .count();
    assert!(comments >= 2, "expected loading comments:\n{text}");
    assert!(text.contains("\"chat.completion.chunk\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn a_backend_that_stalls_after_a_cold_start_ends_the_stream_with_an_error() {
    let lv = Llmvisor::start(
        "stream_keepalive_interval = \"200ms\"\nupstream_idle_timeout = \"1s\"",
        &mock_model(
            "cold",
            &["--startup-delay", "800ms", "--stall-after", "2"],
            "",
        ),
    )
    .await;
    let t0 = Instant::now();
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "cold", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    // Without an idle timer this stream never ended.
    let chunks = tokio::time::timeout(Duration::from_secs(10), read_stream(resp, t0))
        .await
        .expect("the stream ends within the idle timeout");
    let text: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert!(text.contains(": loading cold ("), "{text}");
    assert!(text.contains("\"chat.completion.chunk\""), "{text}");
    let last = text.trim_end().lines().last().unwrap_or_default();
    assert!(last.contains("\"code\":\"backend_timeout\""), "{text}");
    // The request is accounted as a backend timeout.
    lv.wait_log("error=\"backend_timeout\"", Duration::from_secs(2))
        .await;
}

/// The idle timer measures the gap since the backend's last data, not the stream's
/// age: tokens every 300 ms for about 3 s under a 1 s `upstream_idle_timeout` end
/// with `[DONE]`. (The relay moves a timestamp per event and re-arms its timer only
/// when it fires; a timer armed once and never moved would cut this stream at 1 s.)
#[tokio::test]
async fn a_stream_longer_than_the_idle_timeout_with_short_gaps_completes() {
    let lv = Llmvisor::start(
        "upstream_idle_timeout = \"1s\"",
        &mock_model("paced", &["--token-delay", "300ms"], ""),
    )
    .await;
    let t0 = Instant::now();
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "paced", "stream": true, "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let chunks = tokio::time::timeout(Duration::from_secs(20), read_stream(resp, t0))
        .await
        .expect("the stream ends");
    let text: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert!(t0.elapsed() > Duration::from_millis(2500), "{text}");
    assert!(!text.contains("backend_timeout"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn keepalive_can_be_turned_off() {
    let lv = Llmvisor::start(
        "stream_keepalive = false\nstream_keepalive_interval = \"200ms\"",
        &mock_model(
            "cold",
            &["--startup-delay", "800ms", "--max-tokens", "2"],
            "",
        ),
    )
    .await;
    let t0 = Instant::now();
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "cold", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let text: String = read_stream(resp, t0)
        .await
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert!(!text.contains(": loading"), "{text}");
    assert!(text.contains("[DONE]"));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_leaves_no_orphans() {
    let mut lv = Llmvisor::start(
        "",
        &format!(
            "{}{}",
            mock_model("a", &["--token-delay", "50ms", "--max-tokens", "20"], ""),
            mock_model("b", &[], "")
        ),
    )
    .await;
    assert_eq!(lv.chat("a").await.status(), 200);
    assert_eq!(lv.chat("b").await.status(), 200);
    let pid_a = lv.mock_stats("a").await["pid"].as_u64().unwrap() as u32;
    let pid_b = lv.mock_stats("b").await["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid_a) && alive(pid_b));

    // A 1 s request in flight when SIGTERM arrives still completes.
    let client = lv.client.clone();
    let url = lv.url("/v1/chat/completions");
    let inflight = tokio::spawn(async move {
        let r = client
            .post(url)
            .json(&json!({"model": "a", "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<serde_json::Value>().await.ok())
    });
    lv.wait_count("a", "in_flight", 1).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = lv.terminate(Duration::from_secs(15));
        (s, lv)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    let (code, body) = inflight.await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(body.unwrap()["usage"]["completion_tokens"], 20);
    for pid in [pid_a, pid_b] {
        assert!(!alive(pid), "backend {pid} outlived llmvisor");
    }
    let log = status.1.log();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
}

#[tokio::test]
async fn backends_die_with_a_killed_supervisor() {
    let mut lv = Llmvisor::start("", &mock_model("a", &[], "")).await;
    assert_eq!(lv.chat("a").await.status(), 200);
    let pid = lv.mock_stats("a").await["pid"].as_u64().unwrap() as u32;
    let mut child = lv.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    eventually(Duration::from_secs(5), async || {
        if alive(pid) {
            Err(format!("backend {pid} outlived a SIGKILLed llmvisor"))
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test]
async fn status_command_shows_every_model() {
    let lv = Llmvisor::start(
        "",
        &format!("{}{}", mock_model("a", &[], ""), mock_model("b", &[], "")),
    )
    .await;
    assert_eq!(lv.chat("a").await.status(), 200);
    let out = std::process::Command::new(LLMVISOR)
        .args(["status", "--config"])
        .arg(lv.dir.path().join("llmvisor.toml"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains("process unit manager"), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{table}"))
            .to_string()
    };
    assert!(
        row("a").contains("ready") && row("a").contains("llmvisor-model-a.service"),
        "{table}"
    );
    assert!(row("b").contains("stopped"), "{table}");
}
