//! Odd backends and what they must not do to llmvisor (issue 16): a process squatting
//! on a model's port, orphans of a `sh -c` wrapper after llmvisor is killed, the last
//! usage rows and `stopped` events at shutdown, the process manager's captured logs,
//! a panic's message as the last error.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Llmvisor, MOCK, alive, eventually, free_port, signal};
use serde_json::{Value, json};

/// The mock, started by the test (not by llmvisor) on `port`. As root, without
/// capabilities (setpriv, util-linux), like any other service: llmvisor holds none
/// itself, and the kernel hides a process with capabilities from one without.
fn squatter(port: u16) -> Child {
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set=-all", "--inh-caps=-all", MOCK]);
        c
    } else {
        Command::new(MOCK)
    };
    cmd.args(["--port", &port.to_string(), "--served-name", "m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the squatter")
}

async fn wait_up(port: u16) {
    eventually(Duration::from_secs(10), async || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map(drop)
            .map_err(|e| format!("the squatter did not come up: {e}"))
    })
    .await;
}

async fn chats_seen(client: &reqwest::Client, port: u16) -> u64 {
    let stats: Value = client
        .get(format!("http://127.0.0.1:{port}/mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["requests"]["chat"].as_u64().unwrap_or(0)
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[tokio::test]
async fn a_model_whose_port_is_taken_is_not_started_and_the_holder_is_named() {
    let port = free_port();
    let sq = squatter(port);
    wait_up(port).await;
    let model = format!(
        "[models.m]\nkind = \"command\"\ncommand = [{MOCK:?}, \"--port\", \"{{port}}\"]\nport = {port}\nmax_restarts = 100\n"
    );
    let lv = Llmvisor::start("", &model).await;
    let r = lv.chat("m").await;
    assert_eq!(r.status(), 503, "{}", lv.log());
    let err = lv.model("m").await["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains(&format!(
            "port {port} is already in use by pid {} (llmvisor-mock)",
            sq.id()
        )),
        "last_error: {err}"
    );
    assert!(lv.log().contains("already in use by pid"), "{}", lv.log());
    assert_eq!(
        chats_seen(&lv.client, port).await,
        0,
        "the squatter got a prompt"
    );
    kill(sq);
}

#[tokio::test]
async fn a_health_check_answered_by_another_process_does_not_make_the_model_ready() {
    let port = free_port();
    // The model never listens; a squatter takes the port once the start has begun.
    let model = format!(
        "[models.m]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"exec sleep 60\"]\nport = {port}\nstart_timeout = \"4s\"\nmax_restarts = 100\n"
    );
    let lv = Llmvisor::start("", &model).await;
    let req = lv.spawn_chat("m");
    lv.wait_state("m", "loading", Duration::from_secs(10)).await;
    let sq = squatter(port);
    wait_up(port).await;
    let status = req.await.unwrap();
    assert!(status.is_server_error(), "{status}\n{}", lv.log());
    lv.wait_state("m", "failed", Duration::from_secs(10)).await;
    let err = lv.model("m").await["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains(&format!("but from pid {} (llmvisor-mock)", sq.id())),
        "last_error: {err}"
    );
    assert!(!lv.log().contains("ready after"), "{}", lv.log());
    assert_eq!(
        chats_seen(&lv.client, port).await,
        0,
        "the squatter got a prompt"
    );
    kill(sq);
}

/// Processes whose command line has `needle`, with their parent.
fn find_procs(needle: &str) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && alive(pid) {
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0);
            out.push((pid, ppid));
        }
    }
    out
}

#[tokio::test]
async fn orphans_of_a_killed_llmvisor_are_killed_and_never_served_from() {
    let port = free_port();
    // Not `exec`: sh waits for the mock, which is the wrapper's child.
    let model = format!(
        "[models.m]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"{MOCK} --port {port} --served-name m; echo mock ended\"]\nport = {port}\n"
    );
    let mut lv = Llmvisor::start("", &model).await;
    assert_eq!(lv.chat("m").await.status(), 200, "{}", lv.log());
    let old_mock = lv.mock_stats("m").await["pid"].as_u64().unwrap() as u32;
    let wrapper = find_procs(&format!("--port {port} --served-name m; echo"))
        .into_iter()
        .find(|(pid, _)| *pid != old_mock)
        .map(|(pid, _)| pid)
        .expect("the sh wrapper");
    let config = std::fs::read_to_string(lv.dir.path().join("llmvisor.toml")).unwrap();
    let listen: u16 = lv.base.rsplit(':').next().unwrap().parse().unwrap();

    let mut child = lv.child.take().unwrap();
    signal(child.id(), nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    // The direct child dies with llmvisor (PR_SET_PDEATHSIG).
    eventually(Duration::from_secs(5), async || {
        (!alive(wrapper))
            .then_some(())
            .ok_or("the wrapper outlived llmvisor".to_string())
    })
    .await;

    // A new llmvisor kills what the old one left before it serves anything.
    let lv2 = Llmvisor::start_raw(listen, &config).await;
    assert!(
        !alive(old_mock),
        "the orphan survived the restart:\n{}",
        lv2.log()
    );
    assert!(
        lv2.log().contains("left behind by an llmvisor"),
        "{}",
        lv2.log()
    );
    assert_eq!(lv2.chat("m").await.status(), 200, "{}", lv2.log());
    let new_mock = lv2.mock_stats("m").await["pid"].as_u64().unwrap() as u32;
    assert_ne!(new_mock, old_mock);
    assert!(alive(new_mock));

    // A stop takes the wrapper's children with it.
    let r = lv2
        .client
        .post(lv2.url("/admin/models/m/stop"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    lv2.wait_state("m", "stopped", Duration::from_secs(10))
        .await;
    eventually(Duration::from_secs(5), async || {
        (!alive(new_mock))
            .then_some(())
            .ok_or("the mock outlived its stop".to_string())
    })
    .await;
    drop(lv);
}

#[tokio::test]
async fn shutdown_writes_every_request_row_and_the_stopped_events() {
    let models = format!(
        "{}{}",
        common::mock_model("a", &["--max-tokens", "2"], ""),
        common::mock_model("b", &["--max-tokens", "2"], "")
    );
    let mut lv = Llmvisor::start("", &models).await;
    // A burst right before the signal: its last rows are in the writer's queue.
    let mut tasks = Vec::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    for i in 0..300 {
        let slot = slots.clone().acquire_owned().await.unwrap();
        let client = lv.client.clone();
        let url = lv.url("/v1/chat/completions");
        let model = if i % 2 == 0 { "a" } else { "b" };
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            client
                .post(url)
                .json(&json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut answered = 0;
    for t in tasks {
        if t.await.unwrap() != 0 {
            answered += 1;
        }
    }
    assert_eq!(answered, 300);
    let status = lv.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", lv.log());
    let db = rusqlite::Connection::open(lv.usage_db()).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, answered, "{}", lv.log());
    let mut stopped: Vec<String> = db
        .prepare("SELECT model FROM events WHERE event = 'stopped' AND reason = 'shutdown' ORDER BY model")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    stopped.dedup();
    assert_eq!(stopped, ["a", "b"], "{}", lv.log());
}

#[tokio::test]
async fn the_logs_route_returns_what_a_process_manager_model_printed() {
    let port = free_port();
    let model = format!(
        "[models.m]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo hello-from-the-model; echo to-stderr >&2; exec {MOCK} --port {port} --served-name m\"]\nport = {port}\n"
    );
    let lv = Llmvisor::start("", &model).await;
    assert_eq!(lv.chat("m").await.status(), 200, "{}", lv.log());
    let v = lv.get_json("/admin/models/m/logs?lines=50").await;
    let lines: Vec<String> = v["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("hello-from-the-model")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("to-stderr")), "{lines:?}");
    let one = lv.get_json("/admin/models/m/logs?lines=1").await;
    assert_eq!(one["lines"].as_array().unwrap().len(), 1, "{one}");
}

#[tokio::test]
async fn a_panicking_backend_reports_its_panic_message() {
    let mut script = String::from(
        "echo loading >&2; echo \"thread 'main' panicked at src/engine.rs:42:9:\" >&2; echo 'KV cache does not fit in 16 GiB' >&2; echo 'stack backtrace:' >&2; ",
    );
    for i in 0..30 {
        script.push_str(&format!(
            "echo '  {i}: frame_{i}' >&2; echo '      at ./src/x.rs:1:1' >&2; "
        ));
    }
    script.push_str("echo '  29: _start' >&2; exit 101");
    let model = format!(
        "[models.m]\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {script:?}]\nport = {}\n",
        free_port()
    );
    let lv = Llmvisor::start("", &model).await;
    let r = lv.chat("m").await;
    assert!(r.status().is_server_error(), "{}", lv.log());
    let err = lv.model("m").await["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("panicked at src/engine.rs:42:9: KV cache does not fit in 16 GiB"),
        "last_error: {err}"
    );
    assert!(!err.contains("_start"), "last_error: {err}");
}

/// Capability sets of a process, from `/proc/<pid>/status`, for every thread.
fn thread_caps(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        for line in status.lines() {
            for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
                if let Some(v) = line.strip_prefix(set) {
                    out.push((format!("{} {set}", name.trim()), v.trim().to_string()));
                }
            }
        }
    }
    out
}

/// Started as root, llmvisor holds no capability on any of its threads, and a
/// model it starts under the process manager has none either. (Was: only the
/// thread that ran `serve` dropped them; tokio's workers, and every model they
/// spawned, kept all of root's.) Checked against the kernel's own account,
/// /proc/<pid>/task/*/status.
#[tokio::test]
async fn no_thread_and_no_model_holds_a_capability() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("*** SKIPPED: capabilities are only held when started as root ***");
        return;
    }
    let lv = Llmvisor::start("", &common::mock_model("m", &[], "")).await;
    assert_eq!(lv.chat("m").await.status(), 200);
    let pid = lv.child.as_ref().unwrap().id();
    let caps = thread_caps(pid);
    assert!(caps.len() >= 10, "{caps:?}");
    let held: Vec<_> = caps
        .iter()
        .filter(|(_, v)| !v.trim_start_matches('0').is_empty())
        .collect();
    assert!(
        held.is_empty(),
        "llmvisor threads hold capabilities: {held:?}"
    );
    // The model: llmvisor's child process.
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let text = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap();
        children.extend(text.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    assert_eq!(children.len(), 1, "{children:?}");
    let held: Vec<_> = thread_caps(children[0])
        .into_iter()
        .filter(|(_, v)| !v.trim_start_matches('0').is_empty())
        .collect();
    assert!(held.is_empty(), "the model holds capabilities: {held:?}");
}
