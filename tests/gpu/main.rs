//! The real NVML path. On a host with an NVIDIA driver: `llmvisor gpus` lists the
//! real GPUs, and a one-GPU placement (`gpus = "any"`, a small `vram`) lands on a
//! real GPU with room, its `CUDA_VISIBLE_DEVICES` naming that GPU's UUID. Without a
//! driver every test says so loudly and checks the one-line "no NVIDIA driver" path
//! instead.

#[path = "../common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn gpus_json() -> Value {
    let out = std::process::Command::new(LLMVISOR)
        .args(["gpus", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn skip_without_driver(report: &Value) -> bool {
    if report["source"] == "none" {
        eprintln!(
            "\n*** SKIPPED the real-GPU part: {} ***\n",
            report["message"].as_str().unwrap_or("no NVML")
        );
        return true;
    }
    false
}

#[test]
fn llmvisor_gpus_reads_the_real_inventory_or_says_there_is_no_driver() {
    let out = std::process::Command::new(LLMVISOR)
        .arg("gpus")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let report = gpus_json();
    if skip_without_driver(&report) {
        assert_eq!(
            text.trim(),
            "no NVIDIA driver: libnvidia-ml.so.1 could not be loaded — running without GPU telemetry"
        );
        return;
    }
    print!("{text}");
    assert_eq!(report["source"], "nvml");
    let gpus = report["gpus"].as_array().unwrap();
    assert!(!gpus.is_empty(), "{report:#}");
    for g in gpus {
        assert!(g["uuid"].as_str().unwrap().starts_with("GPU-"), "{g}");
        assert!(g["memory_total"].as_u64().unwrap() > 0);
        assert_eq!(g["simulated"], false);
        assert!(text.contains(g["name"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn one_gpu_placement_on_the_real_inventory() {
    let report = gpus_json();
    if skip_without_driver(&report) {
        // The supervisor runs without GPU telemetry and says why in /health; a
        // pinned model still starts, one that needs placement cannot.
        let models = format!(
            "{}{}",
            mock_model("pinned", &[], "gpus = [0]"),
            mock_model(
                "anywhere",
                &[],
                "gpus = \"any\"\nvram = \"1GiB\"\nstart_timeout = \"1s\""
            ),
        );
        let lv = Llmvisor::start("", &models).await;
        let h = lv.get_json("/health").await;
        assert_eq!(h["gpu"]["source"], "none");
        assert!(
            h["gpu"]["message"]
                .as_str()
                .unwrap()
                .starts_with("no NVIDIA driver")
        );
        assert_eq!(lv.chat("pinned").await.status(), 200);
        let r = lv.chat("anywhere").await;
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "no_gpu_room", "{body}");
        assert!(lv.log().contains("no NVIDIA driver"));
        return;
    }
    let gpus = report["gpus"].as_array().unwrap();
    let best = gpus
        .iter()
        .max_by_key(|g| g["memory_free"].as_u64().unwrap())
        .unwrap();
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "probe",
            &[],
            "gpus = \"any\"\nvram = \"256MiB\"\nstart_timeout = \"10s\"",
        ),
    )
    .await;
    assert_eq!(lv.chat("probe").await.status(), 200);
    let placed = lv.model("probe").await["gpus"].clone();
    assert_eq!(placed.as_array().unwrap().len(), 1, "{placed}");
    assert_eq!(
        placed[0], best["index"],
        "placed on the GPU with the most free memory"
    );
    assert!(
        lv.log().contains(best["uuid"].as_str().unwrap()),
        "CUDA_VISIBLE_DEVICES names the UUID:\n{}",
        lv.log()
    );
    let admin = lv.get_json("/admin/gpus").await;
    assert_eq!(admin["source"], "nvml");
    lv.wait_state("probe", "ready", Duration::from_secs(1))
        .await;
}
