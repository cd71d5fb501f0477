//! The `process` unit manager: each model a child process in its own process group.
//!
//! For development and machines without systemd. Children do not outlive llmvisor:
//! they are stopped on shutdown, and `PR_SET_PDEATHSIG` kills them should llmvisor
//! itself be killed without a chance to clean up.

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

/// Lines of output kept per child for error messages.
const KEEP_LINES: usize = 40;

struct Child {
    pgid: Pid,
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
}

impl Default for ProcessManager {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessManager {
    /// A manager with no children.
    pub fn new() -> Self {
        Self {
            children: Arc::new(Mutex::new(HashMap::new())),
            events: broadcast::channel(256).0,
            counter: AtomicU64::new(0),
        }
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
                    t.push_back(line);
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
        let mut cmd = Command::new(&program);
        cmd.args(&unit.argv[1..])
            .envs(&unit.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        pdeathsig(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| UnitError::Spawn {
            program: program.clone(),
            reason: e.to_string(),
        })?;
        let pid = child
            .id()
            .ok_or_else(|| UnitError::Manager("child exited at once".into()))?;
        let pgid = Pid::from_raw(pid as i32);
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let invocation = Invocation(format!("{n}-{pid}"));
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(unit.model.clone(), "stdout", out, tail.clone()));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(unit.model.clone(), "stderr", err, tail.clone()));
        }
        let stop_requested = Arc::new(AtomicBool::new(false));
        let (exited_tx, exited_rx) = watch::channel(false);
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                unit.unit.clone(),
                Child {
                    pgid,
                    invocation: invocation.clone(),
                    spec_hash: unit.spec_hash.clone(),
                    stop_requested: stop_requested.clone(),
                    exited: exited_rx,
                },
            );
        tracing::info!(model = %unit.model, pid, unit = %unit.unit, "started: {}", unit.argv.join(" "));

        let events = self.events.clone();
        let unit_name = unit.unit.clone();
        let model = unit.model.clone();
        let inv = invocation.clone();
        let children = self.children.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Leftovers of the group (workers of the backend) go with their leader.
            Self::signal_group(pgid, Signal::SIGKILL);
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
                    }
                }
                Err(e) => {
                    tracing::error!(model = %model, "cannot wait for the process: {e}");
                    ExitInfo {
                        code: None,
                        signal: None,
                        result: None,
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

/// Ask the kernel to SIGTERM the child when llmvisor dies, so a killed supervisor
/// leaves no model running behind it.
#[allow(unsafe_code)]
fn pdeathsig(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
}
