//! Running model servers: the [`UnitManager`] trait, the rendering of a model spec
//! into what a manager starts ([`UnitSpec`]), and the managers themselves.
//!
//! A manager decides *how* a model runs (a transient systemd unit, a child process);
//! the fleet decides *when*. The trait is shaped after systemd: units have names that
//! outlive the supervisor, every start is an invocation with its own id, exits are
//! reported as events, and running units can be listed and adopted.

#[cfg(test)]
pub mod fake;
pub mod journal;
pub mod oom_report;
pub mod process;
pub mod properties;
pub mod render;
pub mod sockets;
pub mod systemd;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use render::{UnitSpec, render, unit_name};

/// Identifies one start of a unit (systemd's `InvocationID`; a counter and pid for
/// child processes), so an exit of an earlier run is never mistaken for the current one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Invocation(pub String);

impl fmt::Display for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a unit's main process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code when it exited.
    pub code: Option<i32>,
    /// Signal number when it was killed.
    pub signal: Option<i32>,
    /// systemd's `Result` when it says more than the code or signal does
    /// (`oom-kill`, `timeout`, `watchdog`, `core-dump`, …).
    pub result: Option<String>,
    /// Who said `result`.
    pub result_by: ResultBy,
}

/// The source of an [`ExitInfo::result`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResultBy {
    /// systemd's own `Result` of the unit.
    #[default]
    Systemd,
    /// The kernel's OOM-kill count of the unit's memory cgroup, read by its
    /// `ExecStopPost=` ([`oom_report`]): `oom-kill` where systemd cannot see one
    /// (cgroup v1).
    MemoryCgroup,
}

impl ResultBy {
    /// `systemd` or `memory-cgroup`, for logs and `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultBy::Systemd => "systemd",
            ResultBy::MemoryCgroup => "memory-cgroup",
        }
    }
}

impl ExitInfo {
    /// Whether this counts as a clean exit.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with status {c}")?,
            (None, Some(s)) => {
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|sig| sig.as_str())
                    .unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")?
            }
            (None, None) => f.write_str("ended for an unknown reason")?,
        }
        if let Some(r) = &self.result {
            match self.result_by {
                ResultBy::Systemd => write!(f, " (systemd: {r})")?,
                ResultBy::MemoryCgroup => write!(f, " ({r}: counted by the unit's memory cgroup)")?,
            }
        }
        Ok(())
    }
}

/// Something that happened to a unit, reported by the manager.
#[derive(Clone, Debug)]
pub enum UnitEvent {
    /// The unit's main process ended.
    Exited {
        /// Unit name.
        unit: String,
        /// Which start of the unit ended.
        invocation: Invocation,
        /// How it ended.
        exit: ExitInfo,
        /// Whether llmvisor asked for the stop.
        requested: bool,
        /// The last lines the process wrote (for error messages and OOM detection).
        last_output: Vec<String>,
    },
}

/// A unit the manager knows of (for adoption after a supervisor restart).
#[derive(Clone, Debug)]
pub struct UnitInfo {
    /// Unit name.
    pub unit: String,
    /// Current invocation.
    pub invocation: Invocation,
    /// The spec hash the unit was started with, if it carries one.
    pub spec_hash: Option<String>,
    /// Whether it is running.
    pub active: bool,
}

/// Why a manager could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// The program could not be started at all.
    #[error("cannot start {program}: {reason}")]
    Spawn {
        /// argv[0].
        program: String,
        /// The OS error.
        reason: String,
    },
    /// The manager itself failed (D-Bus, signals…).
    #[error("{0}")]
    Manager(String),
}

/// Starts, stops and watches model units. Implementations: [`process::ProcessManager`]
/// (child processes); the systemd manager follows the same contract.
#[async_trait]
pub trait UnitManager: Send + Sync + 'static {
    /// Short name for logs (`process`, `systemd`, `systemd-user`).
    fn name(&self) -> &'static str;

    /// Whether a unit keeps running while llmvisor replaces the object that follows
    /// it (a reload that changes only settings keeps the running unit, `adopt`
    /// after a restart). Child processes go with their supervisor: no.
    fn can_adopt(&self) -> bool {
        true
    }

    /// Start a unit; returns once its main process runs (not once it is healthy).
    async fn start(&self, unit: &UnitSpec) -> Result<Invocation, UnitError>;

    /// Stop a unit: SIGTERM, then SIGKILL after `timeout`. Returns once it is gone.
    /// Stopping a unit that does not run is not an error.
    async fn stop(&self, unit: &str, timeout: Duration) -> Result<(), UnitError>;

    /// Events of every unit this manager started or adopted. Subscribe before
    /// starting anything.
    fn subscribe(&self) -> broadcast::Receiver<UnitEvent>;

    /// Units of ours that exist now (running or not yet collected).
    async fn list(&self) -> Result<Vec<UnitInfo>, UnitError>;

    /// Follow a unit found by `list` (started before this llmvisor): its exit is
    /// reported like that of a unit this manager started. Returns its invocation.
    async fn adopt(&self, unit: &str) -> Result<Invocation, UnitError>;

    /// The processes of a running unit (the child's session under the process
    /// manager, the unit's cgroup under systemd), to prove that the socket answering
    /// its health check is its own. `None`: the manager cannot tell.
    async fn pids(&self, _unit: &str) -> Option<Vec<u32>> {
        None
    }

    /// The main process of a running unit (systemd's `MainPID`; the session
    /// leader under the process manager), for the operator's page.
    async fn main_pid(&self, _unit: &str) -> Option<u32> {
        None
    }

    /// The last `lines` lines of output the manager itself kept of a unit (oldest
    /// first), for managers whose units do not log to the journal. `None`: read the
    /// journal.
    fn recent_output(&self, _unit: &str, _lines: usize) -> Option<Vec<String>> {
        None
    }

    /// Each new line of output the manager itself keeps of a unit (the lines
    /// [`recent_output`](Self::recent_output) would add), as it comes; bounded, a
    /// slow receiver lags. `None`: follow the journal.
    fn follow_output(&self, _unit: &str) -> Option<broadcast::Receiver<Arc<str>>> {
        None
    }
}
