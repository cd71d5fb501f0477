//! Real clients against the real binary: the official `openai` and `anthropic`
//! Python packages. Needs Python with them (`.venv/` made by `.ci/run`, or any
//! `python3` that can import them). Without it a test says SKIPPED loudly; under CI
//! it fails instead.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A Python interpreter that can import `openai`, if there is one.
fn python_with_openai() -> Option<String> {
    python_with("openai")
}

/// A Python interpreter that can import `module`, if there is one.
fn python_with(module: &str) -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    [venv, "python3"].into_iter().find_map(|py| {
        let ok = (py == "python3" || Path::new(py).exists())
            && Command::new(py)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success());
        ok.then(|| py.to_string())
    })
}

#[tokio::test]
async fn official_openai_python_client() {
    let Some(python) = python_with_openai() else {
        let msg = "the `openai` Python package is not installed (run .ci/run or `python3 -m venv .venv && .venv/bin/pip install openai`)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("\n**** SKIPPED official_openai_python_client: {msg} ****\n");
        return;
    };
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "qwen",
            &[],
            "served_name = \"Qwen/Qwen2.5-7B-Instruct\"\naliases = [\"gpt-4o-mini\"]",
        ),
    )
    .await;
    let base = lv.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/openai_client.py"
            ))
            .args([&base, "gpt-4o-mini"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "openai client failed:\n{stdout}\n{stderr}\nllmvisor log:\n{}",
        lv.log()
    );
    // Every request of the script reached the backend but the two refused ones.
    assert_eq!(lv.mock_stats("qwen").await["requests"], 4);
}

/// The `anthropic` SDK on `/v1/messages`, translated to chat completions for a
/// backend that serves only OpenAI's API (the mock, standing in for vLLM).
#[tokio::test]
async fn official_anthropic_python_client() {
    let Some(python) = python_with("anthropic") else {
        let msg = "the `anthropic` Python package is not installed (run .ci/run or `.venv/bin/pip install anthropic`)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("\n**** SKIPPED official_anthropic_python_client: {msg} ****\n");
        return;
    };
    let lv = Llmvisor::start(
        "[clients.claude]\nkey_sha256 = \"333a721092ce3efd6de2e4e0962d75f1d025c7d6776573aaa982d30e8d255493\"\n",
        &mock_model("local", &[], "aliases = [\"claude-local\"]"),
    )
    .await;
    let base = lv.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/anthropic_client.py"
            ))
            .args([&base, "claude-local"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "anthropic client failed:\n{stdout}\n{stderr}\nllmvisor log:\n{}",
        lv.log()
    );
    // The message and the stream reached the backend as chat completions.
    assert_eq!(lv.mock_stats("local").await["requests"], 2);
}
