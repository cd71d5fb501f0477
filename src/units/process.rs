//! The `process` unit manager: each model a child process in its own session (and
//! so its own process group).
//!
//! For development and machines without systemd. Models do not outlive llmvisor, and
//! a restarted llmvisor never serves from one left by an earlier run:
//!
//! - the child calls `setsid()` before `exec`, and every stop, and the end of the
//!   child, signals the whole group (`killpg`): a `sh -c` wrapper's children go with
//!   it;
//! - the child gets `PR_SET_PDEATHSIG(SIGKILL)`: a killed llmvisor takes its direct
//!   children with it at once;
//! - a grandchild can survive the death of its llmvisor (the death signal reaches
//!   the direct child only). Each llmvisor records the session of every model it
//!   runs (its id and its leader's start time) in `supervisor-<pid>-<start time>`
//!   under its runtime directory (`$RUNTIME_DIRECTORY`, `/run/llmvisor` for root,
//!   `$XDG_RUNTIME_DIR/llmvisor`), and every process of a model inherits
//!   `LLMVISOR_SUPERVISOR=<pid>:<start time>` and `LLMVISOR_INVOCATION=<id>` in its
//!   environment. A new process manager, at its creation and before each start,
//!   kills the recorded sessions of every llmvisor that no longer runs (a session
//!   whose id now belongs to a different process is left alone) and every process
//!   whose environment marks it as a model of such an llmvisor (where its
//!   environment can be read); the processes of a run that left its session are
//!   killed by their mark when the run ends;
//! - the health check counts only when the listening socket belongs to one of the
//!   model's processes (see [`super::sockets`]), so even a process that cleared its
//!   environment is never taken for the model.
//!
//! The output of each child is logged and the last lines of each unit are kept for
//! `GET /admin/models/<name>/logs` ([`UnitManager::recent_output`]).

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{broadcast, watch};

use super::{ExitInfo, Invocation, UnitError, UnitEvent, UnitInfo, UnitManager, UnitSpec};

/// Lines of output kept per child for error messages (a panic's message comes
/// before its backtrace of dozens of lines).
const KEEP_LINES: usize = 200;

/// Lines of output kept per unit for the logs route.
const LOG_LINES: usize = 2000;

/// The environment variable that marks a model's processes with their llmvisor.
pub const SUPERVISOR_ENV: &str = "LLMVISOR_SUPERVISOR";
/// The environment variable that marks a model's processes with their run.
pub const INVOCATION_ENV: &str = "LLMVISOR_INVOCATION";

/// Recent output of one unit, across its runs, and each new line as it comes (for
/// the operator's page; bounded, a slow page lags and never holds up the pump).
struct LogRing {
    lines: Mutex<VecDeque<String>>,
    live: broadcast::Sender<Arc<str>>,
}

/// Lines a slow follower of a unit's output may fall behind before it lags.
const LIVE_LINES: usize = 256;

impl Default for LogRing {
    fn default() -> Self {
        Self {
            lines: Mutex::default(),
            live: broadcast::channel(LIVE_LINES).0,
        }
    }
}

struct Child {
    pgid: Pid,
    /// Start time of the session leader (clock ticks since boot).
    leader_start: u64,
    invocation: Invocation,
    spec_hash: String,
    stop_requested: Arc<AtomicBool>,
    exited: watch::Receiver<bool>,
}

/// Runs models as child processes.
pub struct ProcessManager {
    children: Arc<Mutex<HashMap<String, Child>>>,
    events: broadcast::Sender<UnitEvent>,
    counter: AtomicU64,
    /// `<pid>:<start time>` of this llmvisor, the mark its models carry.
    me: String,
    logs: Mutex<HashMap<String, Arc<LogRing>>>,
    /// Where this llmvisor records its children's sessions.
    record: Option<std::path::PathBuf>,
}

impl Drop for ProcessManager {
    fn drop(&mut self) {
        if let Some(r) = &self.record {
            let _ = std::fs::remove_file(r);
        }
    }
}

impl Default for ProcessManager {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessManager {
    /// A manager with no children. Processes left by an llmvisor that is no longer
    /// running are killed first.
    pub fn new() -> Self {
        let me = std::process::id();
        let start = start_time(me).unwrap_or(0);
        let record = runtime_dir().and_then(|d| match std::fs::create_dir_all(&d) {
            Ok(()) => Some(d.join(format!("supervisor-{me}-{start}"))),
            Err(e) => {
                tracing::warn!(
                    "cannot create {}: {e}; models left by a killed llmvisor are found by their environment only",
                    d.display()
                );
                None
            }
        });
        let manager = Self {
            children: Arc::new(Mutex::new(HashMap::new())),
            events: broadcast::channel(256).0,
            counter: AtomicU64::new(0),
            me: format!("{me}:{start}"),
            logs: Mutex::new(HashMap::new()),
            record,
        };
        kill_orphans();
        manager
    }

    /// Write the sessions of the running children (`<sid> <leader start time>`).
    fn persist(record: Option<&std::path::Path>, children: &HashMap<String, Child>) {
        let Some(path) = record else { return };
        let text: String = children
            .values()
            .filter(|c| !*c.exited.borrow())
            .map(|c| format!("{} {}\n", c.pgid, c.leader_start))
            .collect();
        if let Err(e) = std::fs::write(path, text) {
            tracing::warn!(
                "cannot record the model sessions in {}: {e}",
                path.display()
            );
        }
    }

    fn log_ring(&self, unit: &str) -> Arc<LogRing> {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(unit.to_string())
            .or_default()
            .clone()
    }

    fn signal_group(pgid: Pid, sig: Signal) {
        match killpg(pgid, sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(
                pgid = pgid.as_raw(),
                "cannot send {sig} to process group: {e}"
            ),
        }
    }
}

/// Copy a child's output into our log, line by line, keeping the last lines.
fn pump(
    model: String,
    stream: &'static str,
    out: impl AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
    log: (Arc<LogRing>, String),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    tracing::info!(target: "llmvisor::model", model = %model, stream, "{line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == KEEP_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                    drop(t);
                    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    let text = format!("{when} {}: {line}", log.1);
                    if log.0.live.receiver_count() > 0 {
                        let _ = log.0.live.send(Arc::from(text.as_str()));
                    }
                    let mut ring = log.0.lines.lock().unwrap_or_else(|e| e.into_inner());
                    if ring.len() >= LOG_LINES {
                        ring.pop_front();
                    }
                    ring.push_back(text);
                }
                Ok(None) => break,
                // Not UTF-8 or a read error: the output is only logged, so skip on.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                Err(_) => break,
            }
        }
    })
}

#[async_trait]
impl UnitManager for ProcessManager {
    fn name(&self) -> &'static str {
        "process"
    }

    /// A reload restarts a changed model's process rather than hand it to a new
    /// object: the process manager's children are tied to the object that runs them.
    fn can_adopt(&self) -> bool {
        false
    }

    async fn start(&self, unit: &UnitSpec) -> Result<Invocation, UnitError> {
        let program = unit.argv.first().cloned().unwrap_or_default();
        // An entry whose process has exited is only waiting to be removed.
        if self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&unit.unit)
            .is_some_and(|c| !*c.exited.borrow())
        {
            return Err(UnitError::Manager(format!(
                "{} is already running",
                unit.unit
            )));
        }
        // What an earlier llmvisor left behind must not hold the port or the GPU.
        tokio::task::spawn_blocking(kill_orphans).await.ok();
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mark = format!("{}-{n}", self.me);
        let mut cmd = Command::new(&program);
        cmd.args(&unit.argv[1..])
            .envs(&unit.env)
            .env(SUPERVISOR_ENV, &self.me)
            .env(INVOCATION_ENV, &mark)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        own_session(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| UnitError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        })?;
        let pid = child
            .id()
            .ok_or_else(|| UnitError::Manager("child exited at once".into()))?;
        let pgid = Pid::from_raw(pid as i32);
        let invocation = Invocation(format!("{n}-{pid}"));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let ring = self.log_ring(&unit.unit);
        let who = format!(
            "{}[{pid}]",
            std::path::Path::new(&program)
                .file_name()
                .map_or(program.clone(), |f| f.to_string_lossy().into_owned())
        );
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(
                unit.model.clone(),
                "stdout",
                out,
                tail.clone(),
                (ring.clone(), who.clone()),
            ));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(
                unit.model.clone(),
                "stderr",
                err,
                tail.clone(),
                (ring, who),
            ));
        }
        let stop_requested = Arc::new(AtomicBool::new(false));
        let (exited_tx, exited_rx) = watch::channel(false);
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.insert(
            unit.unit.clone(),
            Child {
                pgid,
                leader_start: start_time(pid).unwrap_or(0),
                invocation: invocation.clone(),
                spec_hash: unit.spec_hash.clone(),
                stop_requested: stop_requested.clone(),
                exited: exited_rx,
            },
        );
        Self::persist(self.record.as_deref(), &children);
        drop(children);
        tracing::info!(model = %unit.model, pid, unit = %unit.unit, "started: {}", unit.argv.join(" "));

        let events = self.events.clone();
        let unit_name = unit.unit.clone();
        let model = unit.model.clone();
        let inv = invocation.clone();
        let children = self.children.clone();
        let record = self.record.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Leftovers of the group (workers of the backend) go with their leader,
            // and so do processes of this run that left the group.
            Self::signal_group(pgid, Signal::SIGKILL);
            let run = mark.clone();
            let _ = tokio::task::spawn_blocking(move || {
                kill_marked(|_, inv| inv == Some(run.as_str()))
            })
            .await;
            // Let the output pumps drain what the process wrote last, but do not
            // wait on descendants that keep the pipes open.
            for p in pumps {
                let _ = tokio::time::timeout(Duration::from_millis(300), p).await;
            }
            let exit = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitInfo {
                        code: s.code(),
                        signal: s.signal(),
                        result: None,
                        result_by: Default::default(),
                    }
                }
                Err(e) => {
                    tracing::error!(model = %model, "cannot wait for the process: {e}");
                    ExitInfo {
                        code: None,
                        signal: None,
                        result: None,
                        result_by: Default::default(),
                    }
                }
            };
            let requested = stop_requested.load(Ordering::SeqCst);
            if requested {
                tracing::info!(model = %model, "stopped ({exit})");
            } else {
                tracing::warn!(model = %model, "process {exit}");
            }
            let last_output = tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            let _ = exited_tx.send(true);
            {
                let mut map = children.lock().unwrap_or_else(|e| e.into_inner());
                if map.get(&unit_name).is_some_and(|c| c.invocation == inv) {
                    map.remove(&unit_name);
                }
                Self::persist(record.as_deref(), &map);
            }
            let _ = events.send(UnitEvent::Exited {
                unit: unit_name,
                invocation: inv,
                exit,
                requested,
                last_output,
            });
        });
        Ok(invocation)
    }

    async fn stop(&self, unit: &str, timeout: Duration) -> Result<(), UnitError> {
        let found = {
            let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            children
                .get(unit)
                .map(|c| (c.pgid, c.stop_requested.clone(), c.exited.clone()))
        };
        let Some((pgid, requested, mut exited)) = found else {
            return Ok(());
        };
        requested.store(true, Ordering::SeqCst);
        if !*exited.borrow() {
            Self::signal_group(pgid, Signal::SIGTERM);
            if tokio::time::timeout(timeout, exited.wait_for(|e| *e))
                .await
                .is_err()
            {
                tracing::warn!(unit, "did not stop within {timeout:?}; sending SIGKILL");
                Self::signal_group(pgid, Signal::SIGKILL);
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| *e)).await;
            }
        }
        if !*exited.borrow() {
            // Still there after SIGKILL (stuck in the kernel): keep the entry so no
            // second copy is started on its port.
            return Err(UnitError::Manager(format!(
                "{unit} did not exit after SIGKILL"
            )));
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<UnitEvent> {
        self.events.subscribe()
    }

    async fn adopt(&self, unit: &str) -> Result<Invocation, UnitError> {
        // Children never outlive llmvisor, so there is nothing to take over.
        Err(UnitError::Manager(format!(
            "the process manager cannot adopt {unit}"
        )))
    }

    async fn pids(&self, unit: &str) -> Option<Vec<u32>> {
        let pgid = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(unit)?
            .pgid
            .as_raw() as u32;
        tokio::task::spawn_blocking(move || session_members(pgid))
            .await
            .ok()
    }

    fn recent_output(&self, unit: &str, lines: usize) -> Option<Vec<String>> {
        let ring = self.log_ring(unit);
        let ring = ring.lines.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            ring.iter()
                .skip(ring.len().saturating_sub(lines))
                .cloned()
                .collect(),
        )
    }

    async fn main_pid(&self, unit: &str) -> Option<u32> {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let c = children.get(unit)?;
        (!*c.exited.borrow()).then_some(c.pgid.as_raw() as u32)
    }

    fn follow_output(&self, unit: &str) -> Option<broadcast::Receiver<Arc<str>>> {
        Some(self.log_ring(unit).live.subscribe())
    }

    async fn list(&self) -> Result<Vec<UnitInfo>, UnitError> {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        Ok(children
            .iter()
            .map(|(unit, c)| UnitInfo {
                unit: unit.clone(),
                invocation: c.invocation.clone(),
                spec_hash: Some(c.spec_hash.clone()),
                active: !*c.exited.borrow(),
            })
            .collect())
    }
}

/// In the child, before `exec`: a session (and process group) of its own, and
/// SIGKILL when llmvisor dies, so a killed supervisor leaves no direct child behind
/// (its descendants are found by their mark; see the module docs).
#[allow(unsafe_code)]
fn own_session(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls setsid(2) and
    // prctl(2), which are async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Fields of `/proc/<pid>/stat` after the command: (state, ppid, pgrp, session,
/// start time in clock ticks since boot).
fn stat(pid: u32) -> Option<(char, u32, u32, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); start time is field 22.
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
        f.get(3)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.4)
}

/// Whether the llmvisor marked `<pid>:<start time>` still runs.
fn supervisor_alive(mark: &str) -> bool {
    let Some((pid, start)) = mark.split_once(':') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    stat(pid).is_some_and(|(state, _, _, _, st)| st == start && state != 'Z' && state != 'X')
}

/// Live processes in the session `sid` (a model's session: its id is the pid of the
/// child that called `setsid`).
fn session_members(sid: u32) -> Vec<u32> {
    super::sockets::all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|(state, _, _, s, _)| s == sid && state != 'Z'))
        .collect()
}

/// A process's llmvisor marks: (`LLMVISOR_SUPERVISOR`, `LLMVISOR_INVOCATION`).
fn marks(pid: u32) -> Option<(String, Option<String>)> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut sup = None;
    let mut inv = None;
    for var in env.split(|b| *b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("LLMVISOR_SUPERVISOR=") {
            sup = Some(v.to_string());
        } else if let Some(v) = var.strip_prefix("LLMVISOR_INVOCATION=") {
            inv = Some(v.to_string());
        }
    }
    sup.map(|s| (s, inv))
}

/// SIGKILL every process (other than this one) whose marks satisfy `pred`
/// (supervisor mark, invocation mark). Returns the pids killed.
fn kill_marked(mut pred: impl FnMut(&str, Option<&str>) -> bool) -> Vec<u32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for pid in super::sockets::all_pids() {
        if pid == me {
            continue;
        }
        let Some((sup, inv)) = marks(pid) else {
            continue;
        };
        if pred(&sup, inv.as_deref())
            && nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
        {
            killed.push(pid);
        }
    }
    killed
}

/// Where llmvisor records its children's sessions.
fn runtime_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY") {
        let first = d.to_string_lossy().split(':').next()?.to_string();
        if !first.is_empty() {
            return Some(first.into());
        }
    }
    if nix::unistd::geteuid().is_root() {
        return Some("/run/llmvisor".into());
    }
    std::env::var_os("XDG_RUNTIME_DIR").map(|d| std::path::PathBuf::from(d).join("llmvisor"))
}

/// Kill the sessions recorded by llmvisors that no longer run; remove their records.
fn kill_recorded() -> Vec<u32> {
    let Some(dir) = runtime_dir() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut killed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(mark) = name.strip_prefix("supervisor-") else {
            continue;
        };
        let mark = mark.replacen('-', ":", 1);
        if supervisor_alive(&mark) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(sid)), Some(Ok(start))) = (f.next(), f.next()) else {
                continue;
            };
            let sid = sid as u32;
            // The id belongs to a new session now: not ours to kill.
            if stat(sid).is_some_and(|s| s.4 != start) {
                continue;
            }
            for pid in session_members(sid) {
                // Where the environment can be read, it must say whose it is.
                if pid == me || marks(pid).is_some_and(|(sup, _)| sup != mark) {
                    continue;
                }
                if nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                    killed.push(pid);
                }
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
    killed
}

/// Kill the model processes of every llmvisor that no longer runs.
fn kill_orphans() {
    let mut dead: HashMap<String, bool> = HashMap::new();
    let mut killed = kill_recorded();
    killed.extend(kill_marked(|sup, _| {
        !*dead
            .entry(sup.to_string())
            .or_insert_with(|| supervisor_alive(sup))
    }));
    killed.sort_unstable();
    killed.dedup();
    for pid in killed {
        tracing::warn!(
            pid,
            "killed a model process left behind by an llmvisor that is no longer running"
        );
    }
}
