//! Test harness: the real `llmvisor` binary, the real `llmvisor-mock`, ports from
//! the kernel, a temporary directory per test.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod system;

/// The mock backend binary.
pub const MOCK: &str = env!("CARGO_BIN_EXE_llmvisor-mock");
/// The supervisor binary.
pub const LLMVISOR: &str = env!("CARGO_BIN_EXE_llmvisor");

/// Ports the harness hands out: below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768-60999 by default), so no outgoing connection and
/// no `bind(port 0)` anywhere on the host takes one of them; and outside
/// llmvisor's default `server.port_range` ([`llmvisor::config::DEFAULT_PORT_RANGE`],
/// skipped).
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A port no other test holds, for the rest of this test process.
///
/// Each port handed out is locked (`flock`) in a file under the temporary directory
/// by the process it was handed to, until that process ends: no other test, in this
/// process or another (nextest runs each test in its own; other worktrees share
/// `/tmp`), gets it while the test runs, and nobody binds it in between, so
/// llmvisor's listener and every model's port are distinct. A port something
/// outside the harness listens on is skipped.
pub fn free_port() -> u16 {
    use nix::fcntl::{Flock, FlockArg};
    use std::sync::Mutex;
    static HELD: Mutex<Vec<Flock<std::fs::File>>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("llmvisor-test-ports");
    std::fs::create_dir_all(&dir).expect("port lock directory");
    let len = u32::from(PORTS.end - PORTS.start);
    // Start somewhere else in every process: fewer locks tried before a free one.
    let seed = std::process::id().wrapping_mul(2654435761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..len {
        let port = PORTS.start + ((seed.wrapping_add(i)) % len) as u16;
        // llmvisor's default `server.port_range`: where a configuration without
        // ports (an example, the quick start) puts its models, unlocked.
        let [first, last] = llmvisor::config::DEFAULT_PORT_RANGE;
        if (first..=last).contains(&port) {
            continue;
        }
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // A lock is per open file: a second open in this process fails too.
        let Ok(file) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        held.push(file);
        return port;
    }
    panic!("no free port in {PORTS:?}");
}

/// Check until `check` says yes (`Ok`), first every 5 ms, backing off to every
/// 100 ms, for at most `within`; panics with the last answer (`Err`) otherwise.
/// What tests wait on instead of sleeping: an observable state (a model's state, a
/// queue depth, a log line), never time.
pub async fn eventually<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("not within {within:?}: {why}")
            }
            Err(_) => tokio::time::sleep(pause).await,
        }
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// [`eventually`] for code outside a runtime (a check that runs a command).
pub fn eventually_blocking<T>(within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                panic!("not within {within:?}: {why}")
            }
            Err(_) => std::thread::sleep(pause),
        }
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A `[models.<name>]` table running the mock with extra flags.
pub fn mock_model(name: &str, mock_args: &[&str], extra_toml: &str) -> String {
    let mut argv = vec![
        MOCK.to_string(),
        "--port".into(),
        "{port}".into(),
        "--served-name".into(),
        "{served_name}".into(),
    ];
    argv.extend(mock_args.iter().map(|s| s.to_string()));
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[models.{name}]\nkind = \"command\"\ncommand = [{}]\nport = {}\n{extra_toml}\n",
        argv.join(", "),
        free_port()
    )
}

/// An example configuration from `examples/` made runnable here: the mock's real
/// path, free ports for the models, the listener on `listen`, and `replace` applied.
pub fn example(name: &str, listen: u16, replace: &[(&str, &str)]) -> String {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut line = if line.starts_with("port = ") {
            format!("port = {}", free_port())
        } else if line.starts_with("listen = ") {
            format!("listen = [\"127.0.0.1:{listen}\"]")
        } else {
            line.replace("\"llmvisor-mock\"", &format!("{MOCK:?}"))
        };
        for (from, to) in replace {
            line = line.replace(from, to);
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A running llmvisor.
pub struct Llmvisor {
    pub child: Option<Child>,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// The config file's `[units]` and `[server]` part.
    pub header: String,
}

impl Llmvisor {
    /// Start with `[server]` extras and model tables; wait until it answers.
    pub async fn start(server_extra: &str, models: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Tests that are not about keys run without them (loopback only).
        let auth = if server_extra.contains("auth") || server_extra.contains("[clients") {
            ""
        } else {
            "auth = \"none\"\n"
        };
        let header = format!(
            "[units]\nmanager = \"process\"\n\n[server]\nlisten = [\"127.0.0.1:{port}\"]\nshutdown_grace = \"5s\"\n{auth}{server_extra}\n\n"
        );
        let config = format!("{header}{models}");
        Self::launch(dir, port, header, config, &[]).await
    }

    /// Start with a whole configuration file's text that listens on `port`.
    pub async fn start_raw(port: u16, config: &str) -> Self {
        Self::start_raw_env(port, config, &[]).await
    }

    /// [`Llmvisor::start_raw`] with extra environment variables.
    pub async fn start_raw_env(port: u16, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::launch(dir, port, String::new(), config.to_string(), env).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        port: u16,
        header: String,
        config: String,
        env: &[(&str, &str)],
    ) -> Self {
        let path = dir.path().join("llmvisor.toml");
        std::fs::write(&path, &config).unwrap();
        let log = std::fs::File::create(dir.path().join("llmvisor.log")).unwrap();
        let child = Command::new(LLMVISOR)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            // The usage store's default place, per test.
            .env("STATE_DIRECTORY", dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn llmvisor");
        let me = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            dir,
            header,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        eventually(Duration::from_secs(15), async || {
            match me.client.get(me.url("/health")).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                _ => Err(format!("llmvisor did not come up:\n{}", me.log())),
            }
        })
        .await;
        me
    }

    /// The usage database (default place under the test's state directory).
    pub fn usage_db(&self) -> PathBuf {
        self.dir.path().join("usage.sqlite")
    }

    /// Write new model tables into the config file and send SIGHUP.
    pub fn reconfigure(&self, models: &str) {
        std::fs::write(
            self.dir.path().join("llmvisor.toml"),
            format!("{}{models}", self.header),
        )
        .unwrap();
        signal(
            self.child.as_ref().expect("running").id(),
            nix::sys::signal::Signal::SIGHUP,
        );
    }

    /// Wait until the log contains `text`.
    pub async fn wait_log(&self, text: &str, within: Duration) {
        eventually(within, async || {
            let log = self.log();
            if log.contains(text) {
                Ok(())
            } else {
                Err(format!("no {text:?} in the log:\n{log}"))
            }
        })
        .await
    }

    /// Full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What llmvisor logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Path of the log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("llmvisor.log")
    }

    /// POST JSON to a path.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// A small chat request (two tokens, so slow mocks answer fast).
    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post(
            "/v1/chat/completions",
            &serde_json::json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await
    }

    /// GET a path as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// The `/health` entry of a model.
    pub async fn model(&self, name: &str) -> Value {
        self.get_json("/health").await["models"][name].clone()
    }

    /// The state of a model.
    pub async fn state(&self, name: &str) -> String {
        self.model(name).await["state"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    /// Wait until a model is in `state`, or panic with the log.
    pub async fn wait_state(&self, name: &str, state: &str, within: Duration) {
        eventually(within, async || {
            let s = self.state(name).await;
            if s == state {
                Ok(())
            } else {
                Err(format!(
                    "model {name} is {s}, expected {state}; log:\n{}",
                    self.log()
                ))
            }
        })
        .await
    }

    /// Wait until the model's `/admin` view has `field` (`in_flight`, `queued`, …)
    /// equal to `n`: how a test orders its requests (this one holds the slot, that
    /// one queues) without sleeping.
    pub async fn wait_count(&self, name: &str, field: &str, n: u64) {
        eventually(Duration::from_secs(10), async || {
            let m = self.model(name).await;
            if m[field].as_u64() == Some(n) {
                Ok(())
            } else {
                Err(format!("model {name}: {field} is not {n}: {m}"))
            }
        })
        .await
    }

    /// The mock's statistics, straight from the backend port.
    pub async fn mock_stats(&self, name: &str) -> Value {
        let port = self.model(name).await["port"].as_u64().unwrap();
        self.client
            .get(format!("http://127.0.0.1:{port}/mock/stats"))
            .send()
            .await
            .expect("mock stats")
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A chat request of the mock's full length, in the background; yields its status.
    pub fn spawn_chat(&self, model: &str) -> tokio::task::JoinHandle<reqwest::StatusCode> {
        let client = self.client.clone();
        let url = self.url("/v1/chat/completions");
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().status() })
    }

    /// The value of one metric series, or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics_text().await, series)
    }

    /// Send SIGTERM and wait for the exit; returns the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "llmvisor did not exit within {within:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Llmvisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of one series in Prometheus text (exact line prefix match), or 0.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Send a signal to a pid.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Read SSE `data:` payloads and comment lines from a streaming response, with the
/// time each chunk arrived since `t0`.
pub async fn read_stream(resp: reqwest::Response, t0: Instant) -> Vec<(Duration, String)> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(b) => out.push((t0.elapsed(), String::from_utf8_lossy(&b).into_owned())),
            Err(_) => break,
        }
    }
    out
}
