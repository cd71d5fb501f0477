//! A [`UnitManager`] for the fleet's unit tests: no processes, no sockets, time
//! from tokio's clock (so tests run with a paused clock, in microseconds).
//!
//! Each model's behaviour is scripted per unit ([`Script`]): how long a start
//! takes, whether it fails, when the backend answers its health check, what it
//! answers to sleep and wake. Tests make a unit crash with [`FakeUnits::crash`] and
//! read what happened with [`FakeUnits::starts`], [`FakeUnits::running`] and the
//! log of calls.
//!
//! The port of a unit is the last argument of its command that parses as a port
//! (configure `command = ["fake", "{port}"]`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{ExitInfo, Invocation, UnitError, UnitEvent, UnitInfo, UnitManager, UnitSpec};

/// How a fake unit behaves.
#[derive(Clone, Debug)]
pub struct Script {
    /// Time `start` takes before it returns.
    pub launch: Duration,
    /// `start` fails with this message.
    pub start_error: Option<String>,
    /// Time from the start until the health check answers 200 (`None`: never).
    pub load: Option<Duration>,
    /// Status `POST /sleep` answers.
    pub sleep: u16,
    /// Status `POST /wake_up` answers.
    pub wake: u16,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            launch: Duration::ZERO,
            start_error: None,
            load: Some(Duration::from_millis(100)),
            sleep: 200,
            wake: 200,
        }
    }
}

struct Run {
    invocation: Invocation,
    spec_hash: String,
    port: Option<u16>,
    started: Instant,
    load: Option<Duration>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, Run>,
    scripts: HashMap<String, Script>,
    starts: HashMap<String, u32>,
    counter: u64,
    log: Vec<String>,
}

/// The fake manager.
pub struct FakeUnits {
    inner: Mutex<Inner>,
    events: broadcast::Sender<UnitEvent>,
    adopts: bool,
}

impl FakeUnits {
    /// A manager whose units survive a reload (like systemd's) when `adopts`.
    pub fn new(adopts: bool) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(64).0,
            adopts,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Script the unit of model `model` (from its next start on).
    pub fn script(&self, model: &str, script: Script) {
        self.inner().scripts.insert(super::unit_name(model), script);
    }

    /// Starts of model `model` so far.
    pub fn starts(&self, model: &str) -> u32 {
        self.inner()
            .starts
            .get(&super::unit_name(model))
            .copied()
            .unwrap_or(0)
    }

    /// Whether model `model`'s unit runs.
    pub fn running(&self, model: &str) -> bool {
        self.inner().runs.contains_key(&super::unit_name(model))
    }

    /// Every call so far, as `start <model>` / `stop <model>` / `adopt <model>`.
    pub fn log(&self) -> Vec<String> {
        self.inner().log.clone()
    }

    /// A unit left running by an earlier llmvisor, started from `spec_hash`.
    pub fn leave_running(&self, model: &str, spec_hash: &str, port: u16) {
        let mut i = self.inner();
        i.counter += 1;
        let run = Run {
            invocation: Invocation(format!("earlier-{}", i.counter)),
            spec_hash: spec_hash.into(),
            port: Some(port),
            started: Instant::now(),
            load: Some(Duration::ZERO),
        };
        i.runs.insert(super::unit_name(model), run);
    }

    /// Model `model`'s process ends by itself with `code`, having written `output`.
    pub fn crash(&self, model: &str, code: i32, output: &[&str]) {
        let unit = super::unit_name(model);
        let Some(run) = self.inner().runs.remove(&unit) else {
            panic!("{model} does not run");
        };
        let _ = self.events.send(UnitEvent::Exited {
            unit,
            invocation: run.invocation,
            exit: ExitInfo {
                code: Some(code),
                signal: None,
                result: None,
                result_by: Default::default(),
            },
            requested: false,
            last_output: output.iter().map(|l| l.to_string()).collect(),
        });
    }

    /// The unit listening on `port`, if one runs.
    fn on_port(&self, port: u16) -> Option<String> {
        self.inner()
            .runs
            .iter()
            .find(|(_, r)| r.port == Some(port))
            .map(|(u, _)| u.clone())
    }

    /// Whether the backend on `port` answers its health check now.
    pub fn healthy(&self, port: u16) -> bool {
        let i = self.inner();
        i.runs.values().any(|r| {
            r.port == Some(port) && r.load.is_some_and(|l| Instant::now() >= r.started + l)
        })
    }

    /// What the backend on `port` answers to `POST path`.
    pub fn post(&self, port: u16, path: &str) -> Result<u16, String> {
        let Some(unit) = self.on_port(port) else {
            return Err("connection refused".into());
        };
        let mut i = self.inner();
        let script = i.scripts.get(&unit).cloned().unwrap_or_default();
        let name = unit
            .trim_start_matches("llmvisor-model-")
            .trim_end_matches(".service")
            .to_string();
        i.log.push(format!("post {name} {path}"));
        Ok(if path.starts_with("/sleep") {
            script.sleep
        } else {
            script.wake
        })
    }
}

#[async_trait]
impl UnitManager for FakeUnits {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn can_adopt(&self) -> bool {
        self.adopts
    }

    async fn start(&self, unit: &UnitSpec) -> Result<Invocation, UnitError> {
        let script = {
            let mut i = self.inner();
            i.log.push(format!("start {}", unit.model));
            *i.starts.entry(unit.unit.clone()).or_default() += 1;
            i.scripts.get(&unit.unit).cloned().unwrap_or_default()
        };
        if !script.launch.is_zero() {
            tokio::time::sleep(script.launch).await;
        }
        if let Some(e) = script.start_error {
            return Err(UnitError::Spawn {
                program: unit.argv.first().cloned().unwrap_or_default(),
                reason: e,
            });
        }
        let mut i = self.inner();
        if i.runs.contains_key(&unit.unit) {
            return Err(UnitError::Manager(format!("{} already runs", unit.unit)));
        }
        i.counter += 1;
        let invocation = Invocation(format!("fake-{}", i.counter));
        let run = Run {
            invocation: invocation.clone(),
            spec_hash: unit.spec_hash.clone(),
            port: unit.argv.iter().rev().find_map(|a| a.parse().ok()),
            started: Instant::now(),
            load: script.load,
        };
        i.runs.insert(unit.unit.clone(), run);
        Ok(invocation)
    }

    async fn stop(&self, unit: &str, _timeout: Duration) -> Result<(), UnitError> {
        let run = {
            let mut i = self.inner();
            let name = unit
                .trim_start_matches("llmvisor-model-")
                .trim_end_matches(".service")
                .to_string();
            i.log.push(format!("stop {name}"));
            i.runs.remove(unit)
        };
        if let Some(run) = run {
            let _ = self.events.send(UnitEvent::Exited {
                unit: unit.to_string(),
                invocation: run.invocation,
                exit: ExitInfo {
                    code: None,
                    signal: Some(15),
                    result: None,
                    result_by: Default::default(),
                },
                requested: true,
                last_output: Vec::new(),
            });
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<UnitEvent> {
        self.events.subscribe()
    }

    async fn list(&self) -> Result<Vec<UnitInfo>, UnitError> {
        Ok(self
            .inner()
            .runs
            .iter()
            .map(|(u, r)| UnitInfo {
                unit: u.clone(),
                invocation: r.invocation.clone(),
                spec_hash: Some(r.spec_hash.clone()),
                active: true,
            })
            .collect())
    }

    async fn adopt(&self, unit: &str) -> Result<Invocation, UnitError> {
        let mut i = self.inner();
        i.log.push(format!(
            "adopt {}",
            unit.trim_start_matches("llmvisor-model-")
                .trim_end_matches(".service")
        ));
        i.runs
            .get(unit)
            .map(|r| r.invocation.clone())
            .ok_or_else(|| UnitError::Manager(format!("{unit} does not run")))
    }
}
