//! System tests with a real systemd: a Debian root (`tests/system/prepare-root.sh`)
//! booted with `systemd-nspawn --boot --register=no --keep-unit`, sharing the host
//! network, llmvisor inside under the shipped `docs/llmvisor.service` (`Type=notify`,
//! hardened) with `manager = "systemd"`.
//! The test talks to llmvisor over loopback and to systemd through `nsenter`.
//!
//! Needs root, `systemd-nspawn`, `nsenter` and the prepared root (and for the real
//! llama-server test, the fixture of `scripts/llama-fixture.sh`). Without them each
//! test says SKIPPED loudly; under `CI=true` it fails instead. The harness is
//! tests/common/system.rs; the limits the kernel enforces are proven by
//! tests/system_limits.rs.

mod common;
#[macro_use]
mod llama_fixture;

use std::time::Duration;

use common::system::{Container, mock_model};
use common::{eventually, free_port};
use serde_json::{Value, json};

#[tokio::test]
async fn a_request_creates_a_sandboxed_unit_and_idle_ttl_removes_it() {
    require_systemd!();
    let c = Container::boot(&mock_model(
        "m1",
        &[],
        "idle_ttl = \"2s\"\nmemory_max = \"2GiB\"\ntasks_max = 256\n",
    ))
    .await;
    // Type=notify: systemctl start returned, so the API answers at once.
    let first = c.client.get(c.url("/health")).send().await;
    assert!(
        first.is_ok_and(|r| r.status().is_success()),
        "active before the API answered"
    );
    assert_eq!(c.show("llmvisor.service", "ActiveState"), "active");
    assert_eq!(c.model("m1").await["state"], "stopped");
    assert_eq!(
        c.show("llmvisor-model-m1.service", "LoadState"),
        "not-found"
    );

    assert_eq!(c.chat("m1").await.status(), 200);
    let unit = "llmvisor-model-m1.service";
    assert_eq!(c.show(unit, "ActiveState"), "active");
    assert_eq!(c.show(unit, "Slice"), "llmvisor.slice");
    assert_eq!(c.show(unit, "DynamicUser"), "yes");
    assert_eq!(c.show(unit, "DevicePolicy"), "closed");
    assert_eq!(c.show(unit, "PrivateDevices"), "yes");
    assert_eq!(c.show(unit, "ProtectSystem"), "strict");
    assert_eq!(c.show(unit, "NoNewPrivileges"), "yes");
    assert_eq!(c.show(unit, "CapabilityBoundingSet"), "");
    assert_eq!(c.show(unit, "KillMode"), "mixed");
    assert_eq!(c.show(unit, "MemoryMax"), (2u64 << 30).to_string());
    assert_eq!(c.show(unit, "TasksMax"), "256");
    assert!(c.show(unit, "IPAddressDeny").contains("0.0.0.0/0"));
    let env = c.show(unit, "Environment");
    assert!(
        env.contains("LLMVISOR_MODEL=m1") && env.contains("LLMVISOR_SPEC_HASH="),
        "{env}"
    );
    let health = c.model("m1").await;
    assert_eq!(health["unit"], unit);

    // systemd's own rating of the sandbox (recorded in docs/security.md).
    let model_score = c.exposure(unit);
    let supervisor_score = c.exposure("llmvisor.service");
    eprintln!(
        "systemd-analyze security: {unit} {model_score}, llmvisor.service {supervisor_score}"
    );
    // 1.4 measured: a model without GPUs also gets PrivateDevices=yes.
    assert!(model_score <= 1.5, "model unit exposure {model_score}");
    assert!(
        supervisor_score <= 3.0,
        "llmvisor.service exposure {supervisor_score}"
    );

    // The model's own output is in its unit's journal: `llmvisor logs` and the
    // admin route show it, with llmvisor's lines about the model.
    eventually(Duration::from_secs(5), async || {
        let logs = c.sh(&["/usr/local/bin/llmvisor", "logs", "m1", "-n", "50"]);
        if logs.contains("llmvisor-mock listening on http://127.0.0.1:")
            && logs.contains("ready after")
        {
            return Ok(());
        }
        Err(format!("llmvisor logs m1:\n{logs}"))
    })
    .await;
    // -f prints the last lines and keeps following until stopped.
    let followed = c.sh(&[
        "sh",
        "-c",
        "timeout 2 /usr/local/bin/llmvisor logs m1 -f; echo rc=$?",
    ]);
    assert!(
        followed.contains("rc=124"),
        "logs -f did not keep following:\n{followed}"
    );
    assert!(
        followed.contains("llmvisor-mock listening on"),
        "logs -f:\n{followed}"
    );
    // systemctl status shows llmvisor's one-line summary (STATUS=).
    eventually(Duration::from_secs(5), async || {
        if !c.show("llmvisor.service", "StatusText").contains("1 ready") {
            Err(format!(
                "StatusText: {}",
                c.show("llmvisor.service", "StatusText")
            ))
        } else {
            Ok(())
        }
    })
    .await;
    let api: Value = c
        .client
        .get(c.url("/admin/models/m1/logs?lines=20"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["unit"], unit);
    assert!(
        api["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("llmvisor-mock listening")),
        "{api}"
    );

    // The request's log line is in the journal with queryable fields.
    eventually(Duration::from_secs(5), async || {
        let lines = c.sh(&[
            "journalctl",
            "--no-pager",
            "-o",
            "json",
            "-u",
            "llmvisor.service",
            "MODEL=m1",
            "CLIENT=anonymous",
        ]);
        if lines.contains("\"ROUTE\":\"m1\"") && lines.contains("\"STATUS\":\"200\"") {
            return Ok(());
        }
        Err(format!("journalctl MODEL=m1:\n{lines}"))
    })
    .await;
    // The operator page's feed follows the same journal under systemd: the last
    // lines on connect, then each new one (this request's log line).
    {
        let feed = c
            .client
            .get(c.url("/admin/events?logs=m1"))
            .send()
            .await
            .unwrap();
        assert_eq!(feed.status(), 200);
        let mut feed = feed.bytes_stream();
        let mut seen = String::new();
        let mut read_until = async |seen: &mut String, from: usize, want: &str| {
            let found = tokio::time::timeout(Duration::from_secs(10), async {
                while !seen[from..].contains(want) {
                    match futures_util::StreamExt::next(&mut feed).await {
                        Some(Ok(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
                        _ => return false,
                    }
                }
                true
            })
            .await;
            assert!(found == Ok(true), "no {want:?} in the feed:\n{seen}");
        };
        read_until(&mut seen, 0, "llmvisor-mock listening").await;
        let before = seen.len();
        assert_eq!(c.chat("m1").await.status(), 200);
        read_until(&mut seen, before, ": request\"").await;
    }

    // The usage store lives in the service's StateDirectory, writable under
    // ProtectSystem=strict, and `llmvisor usage` reads it beside the service
    // (two requests: the first chat and the one the feed check sent).
    eventually(Duration::from_secs(5), async || {
        let usage = c.sh(&[
            "/usr/local/bin/llmvisor",
            "usage",
            "--json",
            "--db",
            "/var/lib/llmvisor/usage.sqlite",
        ]);
        if usage.contains("\"requests\": 2") {
            return Ok(());
        }
        Err(format!("llmvisor usage:\n{usage}"))
    })
    .await;

    // Idle for 2 s: the unit is stopped and collected.
    c.wait_state("m1", "stopped", Duration::from_secs(10)).await;
    eventually(Duration::from_secs(5), async || {
        if c.show(unit, "LoadState") != "not-found" {
            Err(format!(
                "the unit is still loaded: {}",
                c.show(unit, "ActiveState")
            ))
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_killed_model_is_failed_then_restarted_and_a_restarted_llmvisor_adopts_units() {
    require_systemd!();
    let c = Container::boot(&mock_model("m2", &[], "restart_backoff = \"100ms\"\n")).await;
    let unit = "llmvisor-model-m2.service";
    assert_eq!(c.chat("m2").await.status(), 200);
    let pid = c.show(unit, "MainPID");
    assert_ne!(pid, "0");

    // Killing the model's main process: the unit fails, llmvisor shows why.
    c.kill9(&pid);
    c.wait_state("m2", "failed", Duration::from_secs(10)).await;
    let m = c.model("m2").await;
    assert_eq!(m["exit"]["signal"], 9, "{m}");
    // The next request restarts it.
    assert_eq!(c.chat("m2").await.status(), 200);
    let pid = c.show(unit, "MainPID");
    assert_eq!(
        c.metric("llmvisor_model_starts_total{model=\"m2\"}").await,
        2.0
    );

    // kill -9 llmvisor: systemd restarts it, the running unit is adopted (same
    // process, no new start) and keeps serving.
    let lv = c.show("llmvisor.service", "MainPID");
    c.kill9(&lv);
    eventually(Duration::from_secs(20), async || {
        let now = c.show("llmvisor.service", "MainPID");
        if now != lv && now != "0" && c.show("llmvisor.service", "ActiveState") == "active" {
            return Ok(());
        }
        Err("llmvisor was not restarted".to_string())
    })
    .await;
    c.wait_state("m2", "ready", Duration::from_secs(10)).await;
    assert_eq!(
        c.show(unit, "MainPID"),
        pid,
        "the model was restarted instead of adopted"
    );
    assert_eq!(
        c.metric("llmvisor_model_starts_total{model=\"m2\"}").await,
        0.0
    );
    assert_eq!(c.chat("m2").await.status(), 200);
    let log = c.journal("llmvisor.service");
    assert!(log.contains("adopted the running unit"), "{log}");

    // `llmvisor status` shows the unit and its main PID from systemd.
    let table = c.sh(&[
        "/usr/local/bin/llmvisor",
        "status",
        "--config",
        "/etc/llmvisor/llmvisor.toml",
    ]);
    let row = table
        .lines()
        .find(|l| l.starts_with("m2 "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("ready") && row.contains(unit) && row.contains(&pid),
        "{table}"
    );
    assert!(table.contains("systemd unit manager"), "{table}");
}

#[tokio::test]
async fn reload_restarts_only_the_changed_unit() {
    require_systemd!();
    let a = mock_model("a", &[], "");
    let b = mock_model("b", &[], "");
    let idle = mock_model("c", &[], "");
    let c = Container::boot(&format!("{a}{b}{idle}")).await;
    assert_eq!(c.chat("a").await.status(), 200);
    assert_eq!(c.chat("b").await.status(), 200);
    assert_eq!(c.chat("c").await.status(), 200);
    let pid_a = c.show("llmvisor-model-a.service", "MainPID");
    let pid_b = c.show("llmvisor-model-b.service", "MainPID");
    let pid_c = c.show("llmvisor-model-c.service", "MainPID");

    // b gets another argument (its process changes); c only a new queue limit (its
    // process does not: the running unit is kept); a is untouched.
    let b2 = b.replace(
        "\"{served_name}\"]",
        "\"{served_name}\", \"--max-tokens\", \"3\"]",
    );
    let c2 = format!("{idle}max_queue = 7\n");
    c.reconfigure(&format!("{a}{b2}{c2}"));
    eventually(Duration::from_secs(15), async || {
        let now_b = c.show("llmvisor-model-b.service", "MainPID");
        if now_b != pid_b && now_b != "0" && c.model("b").await["state"] == "ready" {
            return Ok(());
        }
        Err(format!(
            "b was not restarted\n{}",
            c.journal("llmvisor.service")
        ))
    })
    .await;
    assert_eq!(c.show("llmvisor-model-a.service", "MainPID"), pid_a);
    assert_eq!(c.show("llmvisor-model-c.service", "MainPID"), pid_c);
    c.wait_state("c", "ready", Duration::from_secs(10)).await;
    assert_eq!(c.model("c").await["max_queue"], 7);
    assert_eq!(c.show("llmvisor.service", "ActiveState"), "active");
}

#[tokio::test]
async fn a_backend_that_dies_at_once_is_failed_with_its_status_and_output() {
    require_systemd!();
    let models = format!(
        "[models.boom]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"echo boom-marker >&2; sleep 0.3; exit 3\"]\nport = {}\nstart_timeout = \"20s\"\n",
        free_port()
    );
    let c = Container::boot(&models).await;
    let resp = c.chat("boom").await;
    assert_eq!(resp.status(), 503);
    let m = c.model("boom").await;
    assert_eq!(m["state"], "failed", "{m}");
    assert_eq!(m["exit"]["code"], 3, "{m}");
    assert!(
        m["last_error"].as_str().unwrap().contains("boom-marker"),
        "{m}"
    );
    // The failed unit stays for the operator to inspect until the next start.
    assert_eq!(
        c.show("llmvisor-model-boom.service", "ActiveState"),
        "failed"
    );
}

/// A real llama.cpp server as a sandboxed transient unit: DynamicUser, ProtectSystem
/// =strict, the model reached through a read-only path, answering through llmvisor.
#[tokio::test]
async fn a_real_llama_server_runs_as_a_sandboxed_unit_and_answers_through_llmvisor() {
    require_systemd!();
    let f = require_llama!();
    let build = llama_fixture::build_dir(&f).expect("the llama-server build directory");
    let server_link = f.server.parent().unwrap();
    // The build and the link to it at the same paths inside, read-only; the model
    // at a path of its own, read-only.
    let binds = vec![
        format!("--bind-ro={0}:{0}", build.display()),
        format!("--bind-ro={0}:{0}", server_link.display()),
        format!("--bind-ro={}:/srv/models/tiny.gguf", f.model.display()),
    ];
    let models = format!(
        "[models.tiny]\nkind = \"llama-cpp\"\nmodel = \"/srv/models/tiny.gguf\"\nexecutable = {:?}\nport = {}\ncontext_length = 1024\nmax_concurrent = 2\nmemory_max = \"2GiB\"\nstart_timeout = \"60s\"\n",
        f.server.display().to_string(),
        free_port()
    );
    let c = Container::boot_with(&models, &binds).await;
    let unit = "llmvisor-model-tiny.service";

    let body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "hello from systemd"}],
        "max_tokens": 12, "temperature": 0, "ignore_eos": true,
    });
    let resp = c
        .client
        .post(c.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(
        status,
        200,
        "{text}\n{}\n{}",
        c.journal(unit),
        c.journal("llmvisor.service")
    );
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 12, "{answer}");
    assert!(
        !answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // The unit: llama-server's derived command line, sandboxed.
    assert_eq!(c.show(unit, "ActiveState"), "active");
    let exec = c.show(unit, "ExecStart");
    assert!(
        exec.contains("--model /srv/models/tiny.gguf") && exec.contains("--alias tiny"),
        "{exec}"
    );
    assert_eq!(c.show(unit, "DynamicUser"), "yes");
    assert_eq!(c.show(unit, "ProtectSystem"), "strict");
    assert_eq!(c.show(unit, "ProtectHome"), "yes");
    assert_eq!(c.show(unit, "NoNewPrivileges"), "yes");
    assert!(c.show(unit, "IPAddressDeny").contains("0.0.0.0/0"));
    let pid = c.show(unit, "MainPID");
    assert_ne!(pid, "0");
    // It runs as a transient user, not root, and the model is read-only to it.
    let uid = c.sh(&[
        "sh",
        "-c",
        &format!("awk '/^Uid:/ {{print $2}}' /proc/{pid}/status"),
    ]);
    let uid: u32 = uid.trim().parse().unwrap_or_else(|_| panic!("uid: {uid}"));
    assert!(
        (61184..=65519).contains(&uid),
        "uid {uid} is not a dynamic user"
    );
    let ro = c.sh(&[
        "nsenter",
        "-t",
        &pid,
        "-m",
        "--",
        "sh",
        "-c",
        "test -r /srv/models/tiny.gguf && echo readable; touch /srv/models/tiny.gguf 2>&1 || echo not-writable",
    ]);
    assert!(
        ro.contains("readable") && ro.contains("not-writable"),
        "{ro}"
    );

    // Streaming with usage through llmvisor.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let text = c
        .client
        .post(c.url("/v1/chat/completions"))
        .json(&stream_body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"completion_tokens\":12"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // llama-server's own output is in its unit's journal, read by `llmvisor logs`.
    eventually(Duration::from_secs(10), async || {
        let logs = c.sh(&["/usr/local/bin/llmvisor", "logs", "tiny", "-n", "200"]);
        if logs.contains("model loaded") && logs.contains("ready after") {
            return Ok(());
        }
        Err(format!("llmvisor logs tiny:\n{logs}"))
    })
    .await;
    let score = c.exposure(unit);
    eprintln!("systemd-analyze security: {unit} {score}");
    assert!(score <= 1.5, "llama-server unit exposure {score}");
}
