//! Headless Chromium for tests: Debian's `chromium`, driven over its DevTools
//! protocol by `tests/ui/drive.py` (standard library only: CDP over
//! `--remote-debugging-pipe`). Without `chromium` or `python3` a test says
//! SKIPPED loudly; under CI it fails.

use std::process::Command;

use super::Llmvisor;

/// Chromium and Python, or None (after saying SKIPPED, or failing under CI).
pub fn browser_or_skip(test: &str) -> Option<String> {
    let have = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let python = [venv, "python3"]
        .into_iter()
        .find(|p| have(p))
        .map(str::to_string);
    let missing = match (&python, have("chromium")) {
        (Some(_), true) => return python,
        (None, _) => "python3",
        (_, false) => "chromium (apt-get install chromium)",
    };
    let msg = format!("{missing} is not installed");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("\n**** SKIPPED {test}: {msg} ****\n");
    None
}

/// Run the driver's `scenario` against `lv` with extra environment variables;
/// screenshots go to `target/ui-shots/<scenario>/` (docs/ui/ holds copies from
/// such a run). Returns the driver's output.
pub async fn drive(
    python: String,
    lv: &Llmvisor,
    scenario: &str,
    env: &[(&str, String)],
) -> String {
    let shots = format!("{}/ui-shots/{scenario}", env!("CARGO_TARGET_TMPDIR"));
    let args = [
        format!("{}/tests/ui/drive.py", env!("CARGO_MANIFEST_DIR")),
        lv.base.clone(),
        scenario.to_string(),
        shots,
    ];
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).args(args).envs(env).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the page test ({scenario}) failed:\n{stdout}\n{stderr}\nllmvisor log:\n{}",
        lv.log()
    );
    eprintln!("{stdout}");
    stdout
}
