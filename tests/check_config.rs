//! `llmvisor check-config` and `serve` with a bad file: every problem with its key
//! path, exit 1, nothing started.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(LLMVISOR)
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BAD: &str = r#"
[server]
listen = ["127.0.0.1:notaport"]
[models.a]
kind = "command"
command = []
port = 9100
[models.b]
kind = "vllm"
model = "x"
port = 9100
max_concurrent = 0
idle_ttl = "soonish"
"#;

#[test]
fn check_config_lists_every_problem_and_exits_1() {
    let bad = BAD.replace("idle_ttl = \"soonish\"\n", "");
    let (code, _, err) = run(&["check-config"], &bad);
    assert_eq!(code, 1, "{err}");
    for expected in [
        "server.listen[0]: `127.0.0.1:notaport` is not an address",
        "models.a.command: kind = \"command\" needs a non-empty argv",
        "models.b.port: 9100 is also the port of models.a",
        "models.b.max_concurrent: must be at least 1",
        "server.auth: is \"required\" (the default) but no [clients.<name>] has a key",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("5 problem(s)"), "{err}");
}

#[test]
fn parse_errors_name_the_key_and_line() {
    let (code, _, err) = run(&["check-config"], BAD);
    assert_eq!(code, 1);
    assert!(
        err.contains("models.b.idle_ttl: ") && err.contains("soonish"),
        "{err}"
    );
    assert!(err.contains("line 13"), "{err}");
    let (code, _, err) = run(
        &["check-config"],
        "[models.a]\nkind = \"command\"\ncommand = [\"x\"]\nmax_concurent = 2\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `max_concurent`"), "{err}");
}

#[test]
fn check_config_accepts_the_quickstart() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.toml"
    ))
    .unwrap();
    let (code, out, err) = run(&["check-config"], &text);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok — 3 model(s)"), "{out}");
}

#[test]
fn serve_with_a_bad_config_starts_nothing() {
    let port = free_port();
    let bad = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[models.a]\nkind = \"command\"\ncommand = [\"{MOCK}\", \"--port\", \"{{port}}\"]\nmax_queue = 1\nqueue_timeout = 0\n"
    );
    let (code, _, err) = run(&["serve"], &bad);
    assert_eq!(code, 1);
    assert!(
        err.contains("models.a.queue_timeout: must be more than 0"),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
    // The listener was never bound.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port still free");
}

#[test]
fn version_and_help() {
    let out = Command::new(LLMVISOR).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("llmvisor "));
    let out = Command::new(LLMVISOR)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--config") && help.contains("--log-level"),
        "{help}"
    );
}

#[test]
fn render_unit_prints_the_properties_and_a_systemd_run_line() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.toml");
    let out = Command::new(LLMVISOR)
        .args(["render-unit", "--config", config, "gpt-4o-mini"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "# llmvisor-model-chat.service (spec hash ",
        "Slice=llmvisor.slice",
        "DevicePolicy=closed",
        "DynamicUser=yes",
        "IPAddressDeny=any",
        "ExecStart=llmvisor-mock --port 28101 --served-name Qwen/Qwen2.5-7B-Instruct",
        "systemd-run --unit=llmvisor-model-chat.service -p ",
        // The kernel's OOM-kill count after the main process (src/units/oom_report.rs).
        &format!("ExecStopPost=-{LLMVISOR} exit-report\n"),
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // That command, as the unit runs it: after a failure it always reports.
    let out = Command::new(LLMVISOR)
        .arg("exit-report")
        .env("SERVICE_RESULT", "signal")
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.starts_with("llmvisor exit-report: "), "{report}");
    let out = Command::new(LLMVISOR)
        .args(["render-unit", "--config", config, "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model `nope`"));
}
