//! The real-systemd harness shared by the system test files: a Debian root
//! (`tests/system/prepare-root.sh`) booted with `systemd-nspawn --boot --register=no
//! --keep-unit`, sharing the host network, llmvisor inside under the shipped
//! `docs/llmvisor.service` with `manager = "systemd"`. Tests talk to llmvisor over
//! loopback and to systemd through `nsenter`. See tests/system/README.md.
//!
//! Two set-ups:
//! - [`Container::boot`]: as `systemd-nspawn` makes it. On a host with the legacy
//!   (v1) cgroup controllers, nspawn mounts them read-only: units get their limits
//!   (`systemctl show`) but the kernel enforces none of them.
//! - [`Container::boot_enforcing`]: the limits are enforced. On a v1 host the
//!   container runs the legacy hierarchy (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0`) in a
//!   cgroup subtree of its own in every controller (`llmvisor-test-<port>`, removed
//!   when the container ends), the controllers are remounted read-write in its mount
//!   namespace and its systemd is re-executed to take them over. On a cgroup-v2
//!   host nspawn delegates the controllers itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{MOCK, free_port};

/// The container root (`$LLMVISOR_TEST_ROOT`, else `/var/cache/llmvisor-test/root`).
pub fn test_root() -> PathBuf {
    std::env::var_os("LLMVISOR_TEST_ROOT").map_or_else(
        || PathBuf::from("/var/cache/llmvisor-test/root"),
        PathBuf::from,
    )
}

/// Why the system tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    for tool in ["systemd-nspawn", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install systemd-container util-linux)"
            ));
        }
    }
    let root = test_root();
    let Ok(made) = std::fs::read_to_string(root.join(".llmvisor-root-ok")) else {
        return Some(format!(
            "no container root at {} (run tests/system/prepare-root.sh)",
            root.display()
        ));
    };
    // The version of the root the script makes now (what it installs).
    let want = include_str!("../system/prepare-root.sh")
        .lines()
        .find_map(|l| l.strip_prefix("version="))
        .expect("prepare-root.sh names its version");
    if made.trim() != want {
        return Some(format!(
            "the container root at {} is version {:?}, and tests/system/prepare-root.sh now makes {want}: run it again",
            root.display(),
            made.trim()
        ));
    }
    None
}

/// Why limits cannot be enforced in a container here, if they cannot: neither
/// writable v1 memory, pids, devices and cpu controllers nor a cgroup-v2 host
/// with those controllers.
pub fn missing_limits() -> Option<String> {
    if let Some(why) = missing() {
        return Some(why);
    }
    let v1 = v1_hierarchies();
    if !v1.is_empty() {
        for c in ["memory", "pids", "devices", "cpu"] {
            match v1.iter().find(|h| h.controllers.iter().any(|x| x == c)) {
                None => return Some(format!("the {c} cgroup controller is not mounted")),
                Some(h) if !h.writable => {
                    return Some(format!("{} is mounted read-only", h.mount.display()));
                }
                Some(_) => {}
            }
        }
        return None;
    }
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    for c in ["memory", "pids", "cpu"] {
        if !controllers.split_whitespace().any(|x| x == c) {
            return Some(format!(
                "no v1 cgroup controllers and no {c} controller in /sys/fs/cgroup"
            ));
        }
    }
    None
}

/// Skip loudly, or fail under `CI=true`: `require_systemd!()` for any system test,
/// `require_systemd!(limits)` for one that needs enforced limits.
#[macro_export]
macro_rules! require_systemd {
    () => {
        $crate::require_systemd!(@why $crate::common::system::missing())
    };
    (limits) => {
        $crate::require_systemd!(@why $crate::common::system::missing_limits())
    };
    (@why $why:expr) => {
        if let Some(why) = $why {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("system tests cannot run: {why}");
            }
            eprintln!("\n**** SKIPPED (real systemd): {why} ****\n");
            return;
        }
    };
}

/// A legacy (v1) cgroup hierarchy mounted on this host.
#[derive(Debug)]
struct Hierarchy {
    mount: PathBuf,
    controllers: Vec<String>,
    writable: bool,
}

/// Controllers a v1 hierarchy can carry (`name=systemd` is nspawn's business).
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The v1 hierarchies with controllers, from `/proc/self/mounts`.
fn v1_hierarchies() -> Vec<Hierarchy> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[2] != "cgroup" {
                return None;
            }
            let opts: Vec<&str> = f[3].split(',').collect();
            let controllers: Vec<String> = opts
                .iter()
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(|o| o.to_string())
                .collect();
            (!controllers.is_empty()).then(|| Hierarchy {
                mount: PathBuf::from(f[1]),
                controllers,
                writable: opts.contains(&"rw"),
            })
        })
        .collect()
}

/// Where this process is in a v1 hierarchy (from `/proc/self/cgroup`).
fn own_cgroup(h: &Hierarchy) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, list, path) = (f.next()?, f.next()?, f.next()?);
            list.split(',')
                .any(|c| h.controllers.iter().any(|x| x == c))
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| "/".into())
}

/// A cgroup of its own in every v1 controller for one container; removed (with
/// whatever its systemd left in it) on drop.
struct Subtree {
    dirs: Vec<PathBuf>,
}

impl Subtree {
    fn create(name: &str) -> Self {
        let mut dirs = Vec::new();
        for h in v1_hierarchies().into_iter().filter(|h| h.writable) {
            let parent = h.mount.join(own_cgroup(&h).trim_start_matches('/'));
            let dir = parent.join(name);
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            if h.controllers.iter().any(|c| c == "cpuset") {
                // A new cpuset cgroup has no CPUs and no memory nodes until told.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(parent.join(f)).unwrap();
                    std::fs::write(dir.join(f), v.trim()).unwrap();
                }
            }
            dirs.push(dir);
        }
        Self { dirs }
    }

    /// The `cgroup.procs` files to move the container's first process into.
    fn procs(&self) -> String {
        let files: Vec<String> = self
            .dirs
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        files.join(" ")
    }
}

/// Directories under `dir`, deepest first.
fn dirs_depth_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs_depth_first(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

impl Drop for Subtree {
    fn drop(&mut self) {
        for d in &self.dirs {
            let mut all = Vec::new();
            dirs_depth_first(d, &mut all);
            for dir in all {
                // The last processes of the container may still be on their way out.
                let deadline = Instant::now() + Duration::from_secs(5);
                while std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// A booted container with llmvisor running inside.
pub struct Container {
    nspawn: Child,
    pub pid1: u32,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub header: String,
    pub client: reqwest::Client,
    /// `llmvisor-test-<port>`: the machine's name, and its cgroup subtree's.
    pub machine: String,
    /// Limits enforced ([`Container::boot_enforcing`]).
    pub enforcing: bool,
    subtree: Option<Subtree>,
}

impl Container {
    /// Boot, install the config, start `llmvisor.service`.
    pub async fn boot(models: &str) -> Self {
        Self::start(models, &[], false).await
    }

    /// The same, with more `systemd-nspawn` arguments (`--bind-ro=…`).
    pub async fn boot_with(models: &str, nspawn_args: &[String]) -> Self {
        Self::start(models, nspawn_args, false).await
    }

    /// Boot with the cgroup controllers in the container's hands, so that
    /// `MemoryMax`, `TasksMax`, `DeviceAllow`, `CPUQuota` are enforced by the kernel.
    pub async fn boot_enforcing(models: &str) -> Self {
        Self::start(models, &[], true).await
    }

    async fn start(models: &str, nspawn_args: &[String], enforcing: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let machine = format!("llmvisor-test-{port}");
        let header = format!(
            "[units]\nmanager = \"systemd\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\"\nauth = \"none\"\n\n"
        );
        std::fs::write(
            dir.path().join("llmvisor.toml"),
            format!("{header}{models}"),
        )
        .unwrap();
        let bin_dir = Path::new(MOCK).parent().unwrap();
        // The shipped unit file, with its hardening, as an operator installs it.
        let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/llmvisor.service");
        let v1 = enforcing && !v1_hierarchies().is_empty();
        let subtree = v1.then(|| Subtree::create(&machine));
        // A shell that moves itself into the subtree, then becomes systemd-nspawn:
        // the container's cgroup namespace is rooted there.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                r#"for f in $LLMVISOR_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done; exec "$@""#,
            )
            .arg("sh")
            .arg("systemd-nspawn")
            .env(
                "LLMVISOR_CGROUP_PROCS",
                subtree.as_ref().map(Subtree::procs).unwrap_or_default(),
            );
        if v1 {
            // The legacy hierarchy in the container too, like the host's.
            cmd.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "0");
        }
        let nspawn = cmd
            .arg("-D")
            .arg(test_root())
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--volatile=overlay",
            ])
            .arg("--console=pipe")
            .args(nspawn_args)
            .arg(format!("--machine={machine}"))
            .arg(format!("--bind-ro={}:/usr/local/bin", bin_dir.display()))
            .arg(format!("--bind-ro={}:/etc/llmvisor", dir.path().display()))
            .arg(format!(
                "--bind-ro={unit}:/etc/systemd/system/llmvisor.service"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("nspawn.log")).unwrap())
            .spawn()
            .expect("systemd-nspawn");
        let mut me = Self {
            pid1: 0,
            nspawn,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            header,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            machine,
            enforcing,
            subtree,
        };
        me.pid1 = me.find_init();
        me.wait_running();
        if v1 {
            me.take_over_controllers();
        } else if enforcing {
            let have = me.sh(&["cat", "/sys/fs/cgroup/cgroup.controllers"]);
            for c in ["memory", "pids", "cpu"] {
                assert!(
                    have.split_whitespace().any(|x| x == c),
                    "the container has no {c} controller: {have}"
                );
            }
        }
        let out = me.run(&["systemctl", "start", "llmvisor.service"]);
        assert!(
            out.0,
            "llmvisor.service did not start: {}\n{}",
            out.1,
            me.journal("llmvisor.service")
        );
        me
    }

    /// Until init has its bus socket up (or while nsenter races its start),
    /// systemctl answers with errors: ask again.
    fn wait_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let state = self.sh(&["systemctl", "is-system-running", "--wait"]);
            if state.contains("running") || state.contains("degraded") || Instant::now() > deadline
            {
                break state;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            state.contains("running") || state.contains("degraded"),
            "container did not boot: {state}\nsystemd-nspawn said: {}",
            std::fs::read_to_string(self.dir.path().join("nspawn.log")).unwrap_or_default()
        );
    }

    /// Remount the v1 controllers read-write in the container's mount namespace
    /// and re-execute its systemd, which then creates its units' cgroups in them.
    fn take_over_controllers(&self) {
        let (ok, out) = self.run(&[
            "sh",
            "-ec",
            r#"awk '$3 == "cgroup" && $4 !~ /name=/ {print $2}' /proc/self/mounts |
               while read -r m; do mount -o remount,bind,rw "$m"; done
               systemctl daemon-reexec"#,
        ]);
        assert!(
            ok,
            "cannot hand the cgroup controllers to the container: {out}"
        );
        self.wait_running();
        // systemd realized its units in the hierarchies the limits use: it manages
        // them now. Waited for together: right after the re-exec, `memory` can have
        // `system.slice` while `devices` or `pids` do not yet, and a unit started
        // then failed with 219/CGROUP (1 run in 13). Checked in this container on a
        // host whose v1 `cpu` and `cpuacct` are separate hierarchies: systemd makes
        // `system.slice` in devices, memory and pids within 0.5 s, and never in
        // cpu, cpuacct or blkio until a unit asks for them, so those are not awaited.
        const MANAGED: &str = "for c in devices memory pids; do test -d /sys/fs/cgroup/$c/system.slice || exit 1; done";
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.run(&["sh", "-c", MANAGED]).0 {
            assert!(
                Instant::now() < deadline,
                "systemd did not take over the devices, memory and pids controllers:\n{}",
                self.sh(&[
                    "sh",
                    "-c",
                    "grep cgroup /proc/self/mounts; cat /proc/1/cgroup; ls -d /sys/fs/cgroup/*/system.slice"
                ])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // And its queue of jobs (the re-exec's own) is empty.
        self.wait_running();
    }

    /// Whether the container runs the unified (v2) hierarchy.
    pub fn unified(&self) -> bool {
        self.sh(&["stat", "-fc", "%T", "/sys/fs/cgroup"]).trim() == "cgroup2fs"
    }

    /// A file of a unit's cgroup, in the v1 `controller`'s hierarchy (or the
    /// unified one); its trimmed content.
    pub fn cgroup_file(&self, unit: &str, controller: &str, file: &str) -> String {
        let cg = self.show(unit, "ControlGroup");
        assert!(!cg.is_empty(), "{unit} has no control group");
        let path = if self.unified() {
            format!("/sys/fs/cgroup{cg}/{file}")
        } else {
            format!("/sys/fs/cgroup/{controller}{cg}/{file}")
        };
        let (ok, out) = self.run(&["cat", &path]);
        assert!(ok, "{path}: {out}");
        out.trim().to_string()
    }

    /// The container's PID 1: the `systemd` child of the nspawn process.
    fn find_init(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.nspawn.id()))
                    .unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the container's init did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run a command inside; (success, stdout + stderr).
    pub fn run(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("timeout")
            .arg("90")
            .args(["nsenter", "-t", &self.pid1.to_string(), "-a", "--"])
            .args(argv)
            .output()
            .expect("nsenter");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Run a command inside and return its output, whatever its status.
    pub fn sh(&self, argv: &[&str]) -> String {
        self.run(argv).1
    }

    /// `systemctl show UNIT -p NAME --value`.
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.sh(&["systemctl", "show", unit, "-p", property, "--value"])
            .trim()
            .to_string()
    }

    /// New model tables, then `systemctl reload llmvisor`.
    pub fn reconfigure(&self, models: &str) {
        std::fs::write(
            self.dir.path().join("llmvisor.toml"),
            format!("{}{models}", self.header),
        )
        .unwrap();
        let (ok, out) = self.run(&["systemctl", "reload", "llmvisor.service"]);
        assert!(ok, "reload: {out}");
    }

    /// `systemd-analyze security UNIT`'s overall exposure (0 best, 10 worst).
    pub fn exposure(&self, unit: &str) -> f64 {
        let out = self.sh(&["systemd-analyze", "security", "--no-pager", unit]);
        out.lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")
                    .and_then(|(_, rest)| rest.split_once(": "))
                    .and_then(|(_, v)| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{out}"))
    }

    /// SIGKILL a process of the container (by its pid in there).
    pub fn kill9(&self, pid: &str) {
        let (ok, out) = self.run(&["sh", "-c", &format!("kill -9 {pid}")]);
        assert!(ok, "kill -9 {pid}: {out}");
    }

    /// The last 60 journal lines of a unit.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&["journalctl", "--no-pager", "-n", "60", "-u", unit])
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .json(&json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request")
    }

    /// The `/health` entry of a model.
    pub async fn model(&self, name: &str) -> Value {
        let health: Value = self
            .client
            .get(self.url("/health"))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .unwrap();
        health["models"][name].clone()
    }

    pub async fn wait_state(&self, name: &str, state: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let m = self.model(name).await;
            if m["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "model {name}: {m}, expected {state}\n{}",
                self.journal("llmvisor.service")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A model's `/mock/stats`, straight from its port (the host shares the
    /// container's network).
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

    pub async fn metric(&self, series: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::metric_value(&text, series)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes nspawn shut the container down cleanly.
        super::signal(self.nspawn.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut done = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                done = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !done {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        // Only now: the container's processes are gone.
        self.subtree.take();
    }
}

/// A `[models.<name>]` table running the mock (as installed in the container)
/// with extra flags and keys.
pub fn mock_model(name: &str, mock_args: &[&str], extra: &str) -> String {
    let mut argv = vec![
        "/usr/local/bin/llmvisor-mock",
        "--port",
        "{port}",
        "--served-name",
        "{served_name}",
    ];
    argv.extend_from_slice(mock_args);
    let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[models.{name}]\nkind = \"command\"\ncommand = [{}]\nport = {}\n{extra}\n",
        argv.join(", "),
        free_port()
    )
}
