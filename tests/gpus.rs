//! GPUs through the binary, on simulated GPUs: placement and eviction of idle
//! models, the 503 that says what holds the memory, out-of-memory step-down with
//! `llmvisor-mock --oom-after`, vLLM-style sleep and wake, `llmvisor gpus`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const ONE_GPU: &str = "[gpu]\nsimulate = [{ name = \"Sim 24G\", memory = \"24GiB\" }]\n";

#[tokio::test]
async fn an_idle_model_is_evicted_for_room_and_a_busy_one_gives_a_503_that_says_why() {
    let models = format!(
        "{ONE_GPU}{}{}",
        mock_model(
            "a",
            &["--token-delay", "100ms"],
            "gpus = \"any\"\nvram = \"16GiB\"\nstart_timeout = \"1500ms\""
        ),
        mock_model(
            "b",
            &["--token-delay", "100ms"],
            "gpus = \"any\"\nvram = \"16GiB\"\nstart_timeout = \"1500ms\""
        ),
    );
    let lv = Llmvisor::start("", &models).await;
    assert_eq!(lv.chat("a").await.status(), 200);
    assert_eq!(lv.model("a").await["gpus"], json!([0]));
    // b needs 16 GiB, 8 are free: a is idle, so it is stopped for b.
    assert_eq!(lv.chat("b").await.status(), 200);
    assert_eq!(lv.state("a").await, "stopped");
    assert!(
        lv.log().contains("stopping to make room on the GPU for b"),
        "{}",
        lv.log()
    );
    assert_eq!(
        lv.metric("llmvisor_model_evictions_total{model=\"a\"}")
            .await,
        1.0
    );

    // b busy (16 tokens × 100 ms): a waits start_timeout, then 503 naming b.
    let busy = lv.spawn_chat("b");
    lv.wait_count("b", "in_flight", 1).await;
    let t0 = Instant::now();
    let r = lv.chat("a").await;
    assert_eq!(r.status(), 503);
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_gpu_room", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("needs 16 GiB on one GPU; GPU 0 (Sim 24G): 8 GiB free of 24 GiB, held by b (16 GiB, 1 in flight)"),
        "{msg}"
    );
    assert_eq!(busy.await.unwrap(), 200);
    // Once b is idle again, a gets the GPU.
    assert_eq!(lv.chat("a").await.status(), 200);
    assert_eq!(lv.state("b").await, "stopped");

    let gpus = lv.get_json("/admin/gpus").await;
    assert_eq!(gpus["source"], "simulated");
    assert_eq!(gpus["gpus"][0]["memory_used"], 16u64 << 30);
    assert_eq!(gpus["gpus"][0]["models"][0]["model"], "a");
    let m = lv.metrics_text().await;
    assert!(
        m.contains("llmvisor_gpu_memory_free_bytes{gpu=\"0\",uuid=\"SIMULATED-0\",name=\"Sim 24G\",simulated=\"true\"} 8589934592"),
        "{m}"
    );
}

#[tokio::test]
async fn tensor_parallel_takes_two_gpus_and_pinned_models_stay_put() {
    let models = format!(
        "[gpu]\nsimulate = [{{ name = \"A\", memory = \"24GiB\" }}, {{ name = \"B\", memory = \"24GiB\" }}]\n{}{}",
        mock_model("small", &[], "gpus = [1]\nvram = \"4GiB\""),
        mock_model(
            "tp",
            &[],
            "gpus = \"any\"\ntensor_parallel = 2\nvram = \"21GiB\"\nstart_timeout = \"1s\""
        ),
    );
    let lv = Llmvisor::start("", &models).await;
    assert_eq!(lv.chat("small").await.status(), 200);
    assert_eq!(lv.model("small").await["gpus"], json!([1]));
    assert_eq!(lv.chat("tp").await.status(), 200);
    assert_eq!(lv.model("tp").await["gpus"], json!([0, 1]));
    assert_eq!(lv.state("small").await, "stopped");
    let h = lv.model("tp").await;
    assert_eq!(h["gpu"]["tensor_parallel"], 2, "{h}");
}

#[tokio::test]
async fn cuda_oom_lowers_max_concurrent_step_by_step_and_a_reload_restores_it() {
    let model = mock_model(
        "big",
        &["--oom-after", "2"],
        "max_concurrent = 4\nrestart_backoff = \"50ms\"\nmax_restarts = 10",
    );
    let lv = Llmvisor::start("", &model).await;
    assert_eq!(lv.chat("big").await.status(), 200);
    assert_eq!(lv.chat("big").await.status(), 502);
    lv.wait_state("big", "failed", Duration::from_secs(5)).await;
    assert_eq!(lv.model("big").await["max_concurrent"], 2);
    // The next request restarts it with max_concurrent 4 → 2.
    assert_eq!(lv.chat("big").await.status(), 200);
    let m = lv.model("big").await;
    assert_eq!(m["max_concurrent"], 2, "{m}");
    let oom = &m["gpu"]["oom"];
    assert_eq!(oom["count"], 1, "{m}");
    assert_eq!(oom["configured_max_concurrent"], 4);
    assert!(
        oom["reason"]
            .as_str()
            .unwrap()
            .contains("CUDA out of memory"),
        "{m}"
    );
    assert_eq!(
        lv.metric("llmvisor_model_oom_total{model=\"big\"}").await,
        1.0
    );
    assert!(
        lv.log()
            .contains("CUDA out of memory: the next start uses max_concurrent 4 → 2")
    );

    // `llmvisor status` shows the reduced value and why.
    let out = std::process::Command::new(LLMVISOR)
        .args(["status", "--config"])
        .arg(lv.dir.path().join("llmvisor.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("big: max_concurrent 2 (configured 4) after CUDA out of memory"),
        "{text}"
    );

    // Again: 2 → 1, and 1 is the floor.
    assert_eq!(lv.chat("big").await.status(), 502);
    lv.wait_state("big", "failed", Duration::from_secs(5)).await;
    assert_eq!(lv.chat("big").await.status(), 200);
    assert_eq!(lv.model("big").await["max_concurrent"], 1);
    assert_eq!(lv.chat("big").await.status(), 502);
    lv.wait_state("big", "failed", Duration::from_secs(5)).await;
    assert_eq!(lv.chat("big").await.status(), 200);
    assert_eq!(lv.model("big").await["max_concurrent"], 1);
    assert_eq!(lv.model("big").await["gpu"]["oom"]["count"], 3);

    // A reload (same file) restores the configured values.
    lv.reconfigure(&model);
    lv.wait_log("reloaded", Duration::from_secs(5)).await;
    eventually(Duration::from_secs(5), async || {
        let m = lv.model("big").await;
        (m["max_concurrent"] == 4 && m["gpu"]["oom"].is_null())
            .then_some(())
            .ok_or(m.to_string())
    })
    .await;
}

#[tokio::test]
async fn an_idle_model_sleeps_and_the_next_request_wakes_it_much_faster_than_a_cold_start() {
    let models = format!(
        "{ONE_GPU}{}",
        mock_model(
            "sleepy",
            &["--startup-delay", "1s", "--wake-delay", "30ms"],
            "gpus = [0]\nvram = \"20GiB\"\nidle_action = \"sleep\"\nidle_ttl = \"300ms\"",
        )
    );
    let lv = Llmvisor::start("", &models).await;
    let t0 = Instant::now();
    assert_eq!(lv.chat("sleepy").await.status(), 200);
    let cold = t0.elapsed();
    lv.wait_state("sleepy", "sleeping", Duration::from_secs(3))
        .await;
    let pid = lv.mock_stats("sleepy").await["pid"].clone();
    // Its memory counts as free while it sleeps.
    let gpus = lv.get_json("/admin/gpus").await;
    assert_eq!(gpus["gpus"][0]["memory_free"], 24u64 << 30, "{gpus:#}");
    assert_eq!(
        lv.metric("llmvisor_model_state{model=\"sleepy\",state=\"sleeping\"}")
            .await,
        1.0
    );

    let t1 = Instant::now();
    let r = lv.chat("sleepy").await;
    assert_eq!(r.status(), 200);
    let wake = t1.elapsed();
    let stats = lv.mock_stats("sleepy").await;
    assert_eq!(stats["pid"], pid, "the same process, not a restart");
    assert_eq!(stats["sleeps"], 1);
    assert_eq!(stats["wakes"], 1);
    assert_eq!(
        lv.metric("llmvisor_model_wakes_total{model=\"sleepy\"}")
            .await,
        1.0
    );
    println!(
        "cold start {:.0} ms, wake {:.0} ms",
        cold.as_secs_f64() * 1e3,
        wake.as_secs_f64() * 1e3
    );
    assert!(wake < cold / 2, "wake {wake:?} vs cold {cold:?}");
}

#[tokio::test]
async fn a_sleeping_model_is_stopped_outright_when_its_memory_is_taken() {
    let models = format!(
        "{ONE_GPU}{}{}",
        mock_model(
            "sleepy",
            &[],
            "gpus = [0]\nvram = \"20GiB\"\nidle_action = \"sleep\"\nidle_ttl = \"200ms\""
        ),
        mock_model("other", &[], "gpus = [0]\nvram = \"10GiB\""),
    );
    let lv = Llmvisor::start("", &models).await;
    assert_eq!(lv.chat("sleepy").await.status(), 200);
    lv.wait_state("sleepy", "sleeping", Duration::from_secs(3))
        .await;
    assert_eq!(lv.chat("other").await.status(), 200);
    assert_eq!(lv.state("sleepy").await, "stopped");
    // And a request for it evicts the idle `other` and cold-starts it.
    assert_eq!(lv.chat("sleepy").await.status(), 200);
    assert_eq!(lv.state("other").await, "stopped");
}

#[test]
fn gpus_command_lists_simulated_gpus_without_a_running_llmvisor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nauth = \"none\"\n{ONE_GPU}{}",
            free_port(),
            mock_model("m", &[], "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(LLMVISOR)
        .args(["gpus", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SIMULATED"), "{text}");
    assert!(text.contains("Sim 24G"), "{text}");
    assert!(text.contains("0 B / 24 GiB"), "{text}");
}
