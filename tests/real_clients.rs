//! Real clients against the real binary: the official `openai` Python package.
//! Needs Python with `openai` (`.venv/` made by `.ci/run`, or any `python3` that can
//! import it). Without it the test says SKIPPED loudly; under CI it fails instead.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A Python interpreter that can import `openai`, if there is one.
fn python_with_openai() -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    [venv, "python3"].into_iter().find_map(|py| {
        let ok = (py == "python3" || Path::new(py).exists())
            && Command::new(py)
                .args(["-c", "import openai"])
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
