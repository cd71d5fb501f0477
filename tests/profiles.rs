//! Profiles through the binary: seed 003's day/night layout (examples/day-night.toml)
//! on simulated GPUs, switched by the test clock (`LLMVISOR_TEST_CLOCK` and
//! `POST /admin/test/clock`), never by waiting for 2 AM. Exclusive switches drain
//! in-flight requests; a model outside its window gets 503 with `Retry-After`, or
//! its route's fallback; the manual override; the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The example with the mock's real path, free ports, short delays.
fn example(listen: u16) -> String {
    common::example(
        "day-night.toml",
        listen,
        &[
            (
                "\"--startup-delay\", \"1s\"",
                "\"--startup-delay\", \"200ms\"",
            ),
            (
                "\"--startup-delay\", \"2s\"",
                "\"--startup-delay\", \"300ms\"",
            ),
        ],
    )
    .replace("[server]\n", "[server]\nshutdown_grace = \"5s\"\n")
}

/// llmvisor on `config` with the test clock starting at `clock` (UTC).
async fn launch(config: &str, clock: &str) -> (Llmvisor, u16) {
    let port = free_port();
    let config = config.replace("LISTEN_PORT", &port.to_string());
    let lv = Llmvisor::start_raw_env(
        port,
        &config,
        &[("TZ", "UTC"), ("LLMVISOR_TEST_CLOCK", clock)],
    )
    .await;
    (lv, port)
}

async fn set_clock(lv: &Llmvisor, now: &str) {
    let r = lv.post("/admin/test/clock", &json!({"now": now})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn example_lv(clock: &str) -> (Llmvisor, u16) {
    let port = free_port();
    let (lv, p) = launch(
        &example(port).replace(&format!("127.0.0.1:{port}"), "127.0.0.1:LISTEN_PORT"),
        clock,
    )
    .await;
    (lv, p)
}

#[tokio::test]
async fn day_to_night_drains_the_day_models_and_preloads_the_72b_on_both_gpus() {
    let (lv, _) = example_lv("2025-06-01T12:00:00").await;
    assert_eq!(
        lv.get_json("/admin/profiles").await["active"],
        json!(["day"])
    );

    // By day: an 8B model on GPU 0; the 72B model is refused until 02:00 (14 h).
    assert_eq!(lv.chat("llama-gpu0").await.status(), 200);
    assert_eq!(lv.model("llama-gpu0").await["gpus"], json!([0]));
    let r = lv.chat("qwen-72b").await;
    assert_eq!(r.status(), 503);
    let after = retry_after(&r);
    assert!(
        (14 * 3600 - 30..=14 * 3600).contains(&after),
        "Retry-After {after}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_scheduled", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("profile(s) night"),
        "{body}"
    );
    // The route falls back to the day model.
    let r = lv.chat("big").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmvisor-target"], "llama-gpu1");

    // A long request in flight on GPU 0 when night begins: it is drained, not cut.
    let client = lv.client.clone();
    let url = lv.url("/v1/chat/completions");
    let long = tokio::spawn(async move {
        let r = client
            .post(url)
            .json(&json!({"model": "llama-gpu0", "max_tokens": 40, "messages": [{"role": "user", "content": "a long answer"}]}))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    lv.wait_count("llama-gpu0", "in_flight", 1).await;
    set_clock(&lv, "2025-06-02T02:00:00").await;
    lv.wait_state("llama-gpu0", "draining", Duration::from_secs(3))
        .await;
    // New requests for day models are refused meanwhile (night is exclusive): 4 h.
    let r = lv.chat("llama-gpu1").await;
    assert_eq!(r.status(), 503);
    assert!((4 * 3600 - 30..=4 * 3600).contains(&retry_after(&r)));
    let (status, text) = long.await.unwrap();
    assert_eq!(status, 200, "{text}");
    lv.wait_state("llama-gpu0", "stopped", Duration::from_secs(5))
        .await;
    lv.wait_state("llama-gpu1", "stopped", Duration::from_secs(5))
        .await;

    // The night model was preloaded on both GPUs.
    lv.wait_state("qwen-72b", "ready", Duration::from_secs(10))
        .await;
    assert_eq!(lv.model("qwen-72b").await["gpus"], json!([0, 1]));
    let gpus = lv.get_json("/admin/gpus").await;
    assert_eq!(gpus["simulated"], true);
    for g in gpus["gpus"].as_array().unwrap() {
        assert_eq!(g["models"][0]["model"], "qwen-72b", "{gpus:#}");
        assert_eq!(g["memory_free"].as_u64().unwrap(), 2 << 30, "{gpus:#}");
    }
    let r = lv.chat("big").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmvisor-target"], "qwen-72b");
    assert!(lv.log().contains("profile switch: draining and stopping"));
    assert_eq!(
        lv.metric("llmvisor_profile_active{profile=\"night\"}")
            .await,
        1.0
    );

    // 06:00: day again; the 72B model stops, day models start on demand.
    set_clock(&lv, "2025-06-02T06:00:00").await;
    lv.wait_state("qwen-72b", "stopped", Duration::from_secs(5))
        .await;
    assert_eq!(lv.chat("llama-gpu1").await.status(), 200);
}

#[tokio::test]
async fn manual_override_through_the_cli() {
    let (lv, port) = example_lv("2025-06-01T12:00:00").await;
    let cfg = lv.dir.path().join("llmvisor.toml");
    let run = |args: &[&str]| {
        let out = Command::new(LLMVISOR)
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let _ = port;
    let status = run(&["profile", "status"]);
    assert!(status.contains("active: day"), "{status}");
    assert!(
        status.contains("next switch: 2025-06-02T02:00:00"),
        "{status}"
    );

    let out = run(&["profile", "activate", "night", "--for", "2h"]);
    assert!(out.contains("active: night"), "{out}");
    assert!(
        out.contains("override: night until 2025-06-01T14:00"),
        "{out}"
    );
    lv.wait_state("qwen-72b", "ready", Duration::from_secs(10))
        .await;
    let r = lv.chat("llama-gpu0").await;
    assert_eq!(r.status(), 503);
    assert!((2 * 3600 - 30..=2 * 3600).contains(&retry_after(&r)));

    let out = run(&["profile", "resume"]);
    assert!(out.contains("active: day"), "{out}");
    lv.wait_state("qwen-72b", "stopped", Duration::from_secs(5))
        .await;
    assert_eq!(lv.chat("llama-gpu0").await.status(), 200);

    // Without the test clock, the clock cannot be moved.
    let lv2 = Llmvisor::start("", &mock_model("m", &[], "")).await;
    let r = lv2
        .post("/admin/test/clock", &json!({"now": "2025-06-01T02:00:00"}))
        .await;
    assert_eq!(r.status(), 403);
}
