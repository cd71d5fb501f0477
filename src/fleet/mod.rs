//! The fleet: one state machine per model instance, the unit events that drive it,
//! and the operations on all of them (status, shutdown).

mod gate;
mod health;
mod instance;
mod placer;
pub mod schedule;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

pub use health::{HealthProbe, Probe};
pub use instance::{Instance, Lease, Placed, Status, Tuning};
pub use schedule::{Clock, Schedule};
pub use state::{State, Transition};

use crate::config::Settings;
use crate::telemetry::metrics::{Metrics, ModelLabels};
use crate::units::{UnitEvent, UnitManager, render};

/// Why a model is stopped (logged, and later stored as an event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Nothing in flight for `idle_ttl`.
    Idle,
    /// An operator asked.
    Admin,
    /// llmvisor is shutting down.
    Shutdown,
    /// A reload changed or removed the model.
    Reload,
    /// Stopped to make room on its GPU for another model.
    Evicted,
    /// The profiles in force no longer allow it.
    Profile,
}

impl StopReason {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Idle => "idle",
            StopReason::Admin => "admin",
            StopReason::Shutdown => "shutdown",
            StopReason::Reload => "reload",
            StopReason::Evicted => "evicted",
            StopReason::Profile => "profile",
        }
    }
}

/// Why a request could not get a slot at its model.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// `max_concurrent + max_queue` requests are already admitted.
    #[error("model `{model}` is at capacity: {limit} requests in flight or queued")]
    QueueFull {
        /// Instance.
        model: String,
        /// max_concurrent + max_queue.
        limit: usize,
    },
    /// Waited `queue_timeout` for a slot.
    #[error("model `{model}` is busy: no slot became free within {}", humantime::format_duration(*waited))]
    QueueTimeout {
        /// Instance.
        model: String,
        /// How long.
        waited: Duration,
    },
    /// Waited `start_timeout` for the model to become ready.
    #[error("model `{model}` did not become ready within {}", humantime::format_duration(*waited))]
    StartTimeout {
        /// Instance.
        model: String,
        /// How long.
        waited: Duration,
    },
    /// The start this request waited for failed.
    #[error("model `{model}` failed to start: {reason}")]
    StartFailed {
        /// Instance.
        model: String,
        /// What went wrong.
        reason: String,
    },
    /// Too many failures in the window; an operator must start it.
    #[error(
        "model `{model}` failed {failures} times within {}; it stays stopped until an operator starts it (POST /admin/models/{model}/start). Last error: {last_error}",
        humantime::format_duration(*window)
    )]
    CrashLoop {
        /// Instance.
        model: String,
        /// max_restarts.
        failures: u32,
        /// restart_window.
        window: Duration,
        /// The last failure.
        last_error: String,
    },
    /// llmvisor is shutting down.
    #[error("llmvisor is shutting down")]
    ShuttingDown,
    /// A reload replaced the model while the request waited; look it up again.
    #[error("model `{model}` was reconfigured while the request waited")]
    Replaced {
        /// Instance.
        model: String,
    },
    /// The profiles in force do not allow the model now.
    #[error(
        "model `{model}` is not available now: it runs in profile(s) {}, and the active profile(s) are {}{}",
        if allowed_in.is_empty() { "none".to_string() } else { allowed_in.join(", ") },
        if active.is_empty() { "none".to_string() } else { active.join(", ") },
        match retry_after { Some(d) => format!("; it is allowed again in {}", humantime::format_duration(Duration::from_secs(d.as_secs()))), None => String::new() }
    )]
    NotScheduled {
        /// Instance.
        model: String,
        /// Profiles that list it.
        allowed_in: Vec<String>,
        /// Profiles active now.
        active: Vec<String>,
        /// Until it is allowed (None: not within two days).
        retry_after: Option<Duration>,
    },
    /// No GPU had room within `start_timeout`.
    #[error("model `{model}` cannot start: no GPU has room: {message}")]
    NoGpuRoom {
        /// Instance.
        model: String,
        /// What it needs and what holds the memory.
        message: String,
    },
}

/// What every instance shares.
pub(crate) struct Ctx {
    manager: Arc<dyn UnitManager>,
    metrics: Arc<Metrics>,
    health: Arc<dyn Probe>,
    poll_interval: Duration,
    epoch: Instant,
    shutting_down: AtomicBool,
    /// GPUs and who holds them.
    board: placer::Board,
    /// The profiles in force (replaced on reload, the override kept).
    schedule: RwLock<Arc<Schedule>>,
    /// Local time (injectable for tests).
    clock: Clock,
    /// The name of each instance whose state changed (`*`: the set of instances
    /// changed), for the operator's page (`/admin/events`). Bounded: a receiver that
    /// falls behind lags; nothing here ever waits for one.
    changes: broadcast::Sender<Arc<str>>,
    /// Told of every state change as it is made (the usage store's event log).
    observer: OnceLock<Observer>,
}

/// One state change, told to the observer inside the change itself: in order, none
/// coalesced (a `watch` receiver may see Ready then Stopped and miss the Stopping
/// between them, or miss a change made just before shutdown).
pub struct Change<'a> {
    /// The model.
    pub model: &'a str,
    /// The state left.
    pub from: State,
    /// The status entered.
    pub status: &'a Status,
}

/// What [`Fleet::observe`] takes. It runs while the status is being changed: it
/// must not block, nor touch the instance.
pub type Observer = Box<dyn Fn(&Change) + Send + Sync>;

impl Ctx {
    fn schedule(&self) -> Arc<Schedule> {
        self.schedule
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn model_label(&self, model: &str) -> ModelLabels {
        ModelLabels {
            model: model.to_string(),
        }
    }
}

/// State changes kept for a slow `/admin/events` reader before it lags.
const CHANGES: usize = 256;

/// Every model instance of the configuration.
pub struct Fleet {
    /// The instances of the configuration in force; replaced whole on reload.
    live: RwLock<Arc<Live>>,
    ctx: Arc<Ctx>,
}

/// One configuration's instances.
struct Live {
    instances: Vec<Arc<Instance>>,
    by_name: HashMap<String, Arc<Instance>>,
}

impl Live {
    fn new(instances: Vec<Arc<Instance>>) -> Self {
        let by_name = instances
            .iter()
            .map(|i| (i.name().to_string(), i.clone()))
            .collect();
        Self { instances, by_name }
    }

    fn by_unit(&self, unit: &str) -> Option<&Arc<Instance>> {
        self.instances.iter().find(|i| i.unit.unit == unit)
    }
}

/// What a reload changed, by model name.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    /// New models.
    pub added: Vec<String>,
    /// Models whose process changed: stopped (after draining) and, if they were
    /// running, started again.
    pub restarted: Vec<String>,
    /// Models with new settings whose running unit was kept.
    pub updated: Vec<String>,
    /// Models no longer configured: drained and stopped.
    pub removed: Vec<String>,
    /// Models left exactly as they were.
    pub unchanged: Vec<String>,
}

impl Fleet {
    /// Build the fleet and start following the manager's events. Nothing is started.
    pub fn new(
        settings: &Settings,
        manager: Arc<dyn UnitManager>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Self::with_parts(
            settings,
            manager,
            metrics,
            Arc::new(HealthProbe::new()),
            Clock::from_env(),
            crate::gpu::Inventory::open(&settings.gpu),
        )
    }

    /// [`Fleet::new`] with the backends probed by `probe`, the profiles following
    /// `clock` and the GPUs read from `inventory` (tests give fakes of all three).
    pub fn with_parts(
        settings: &Settings,
        manager: Arc<dyn UnitManager>,
        metrics: Arc<Metrics>,
        probe: Arc<dyn Probe>,
        clock: Clock,
        inventory: crate::gpu::Inventory,
    ) -> Arc<Self> {
        let ctx = Arc::new(Ctx {
            manager: manager.clone(),
            metrics,
            health: probe,
            poll_interval: settings.server.health_poll_interval.0,
            epoch: Instant::now(),
            shutting_down: AtomicBool::new(false),
            board: placer::Board::new(inventory),
            schedule: RwLock::new(Arc::new(Schedule::new(settings.profiles.clone(), None))),
            clock,
            changes: broadcast::channel(CHANGES).0,
            observer: OnceLock::new(),
        });
        let instances: Vec<Arc<Instance>> = settings
            .models
            .iter()
            .map(|m| Instance::new(m.clone(), render(m), ctx.clone(), State::Stopped))
            .collect();
        let fleet = Arc::new(Self {
            live: RwLock::new(Arc::new(Live::new(instances))),
            ctx,
        });
        tokio::spawn(Self::follow_events(
            Arc::downgrade(&fleet),
            manager.subscribe(),
        ));
        tokio::spawn(Self::follow_schedule(Arc::downgrade(&fleet)));
        fleet
    }

    /// Route unit events to their instance.
    async fn follow_events(
        fleet: std::sync::Weak<Self>,
        mut events: broadcast::Receiver<UnitEvent>,
    ) {
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::error!("missed {n} unit events");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Some(fleet) = fleet.upgrade() else { return };
            match event {
                UnitEvent::Exited {
                    unit,
                    invocation,
                    exit,
                    requested,
                    last_output,
                } => {
                    if requested {
                        continue;
                    }
                    if let Some(i) = fleet.live().by_unit(&unit) {
                        i.on_exit(&invocation, &exit, &last_output);
                    }
                }
            }
        }
    }

    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An instance by its name.
    pub fn get(&self, name: &str) -> Option<Arc<Instance>> {
        self.live().by_name.get(name).cloned()
    }

    /// Every instance, in configuration order.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.live().instances.clone()
    }

    /// The unit manager in use.
    pub fn manager_name(&self) -> &'static str {
        self.ctx.manager.name()
    }

    /// The output the unit manager itself kept of an instance's unit (the process
    /// manager's), or `None` where the journal has it.
    pub fn recent_output(&self, inst: &Instance, lines: usize) -> Option<Vec<String>> {
        self.ctx.manager.recent_output(&inst.unit.unit, lines)
    }

    /// Each new line of output the unit manager keeps of an instance's unit, as it
    /// comes (bounded: a slow receiver lags), or `None` where the journal has it.
    pub fn follow_output(&self, inst: &Instance) -> Option<broadcast::Receiver<Arc<str>>> {
        self.ctx.manager.follow_output(&inst.unit.unit)
    }

    /// The main process of an instance's running unit, where the manager knows it.
    pub async fn main_pid(&self, inst: &Instance) -> Option<u32> {
        self.ctx.manager.main_pid(&inst.unit.unit).await
    }

    /// The name of every instance whose state changes from now on (`*` when a
    /// reload changed the set of instances). A receiver that falls behind gets
    /// `Lagged` and should read everything again.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<str>> {
        self.ctx.changes.subscribe()
    }

    /// Tell `f` of every state change of every instance from now on, this
    /// configuration's and every reload's (set once; a second call is ignored).
    pub fn observe(&self, f: Observer) {
        let _ = self.ctx.observer.set(f);
    }

    /// After a restart of llmvisor: adopt running units whose spec hash matches
    /// (no cold start), restart changed ones, stop ones no model claims.
    pub async fn adopt_running(&self) -> Result<(), crate::units::UnitError> {
        let live = self.live();
        for u in self.ctx.manager.list().await? {
            // One unit that cannot be handled must not leave the others untouched.
            let Some(inst) = live.by_unit(&u.unit) else {
                tracing::info!(unit = %u.unit, "stopping a unit no model in the configuration claims");
                if let Err(e) = self
                    .ctx
                    .manager
                    .stop(&u.unit, Duration::from_secs(30))
                    .await
                {
                    tracing::error!(unit = %u.unit, "cannot stop: {e}");
                }
                continue;
            };
            if !u.active {
                continue;
            }
            if u.spec_hash.as_deref() == Some(inst.unit.spec_hash.as_str()) {
                match self.ctx.manager.adopt(&u.unit).await {
                    Ok(invocation) => {
                        inst.adopt(invocation);
                    }
                    Err(e) => tracing::error!(unit = %u.unit, "cannot adopt: {e}"),
                }
            } else {
                tracing::info!(
                    model = %inst.name(),
                    "the running unit was started from another spec; restarting it"
                );
                match self.ctx.manager.stop(&u.unit, inst.spec.stop_timeout).await {
                    Ok(()) => {
                        inst.begin_start(false);
                    }
                    Err(e) => tracing::error!(unit = %u.unit, "cannot stop: {e}"),
                }
            }
        }
        Ok(())
    }

    /// Apply a new configuration, touching only what changed. Unchanged models keep
    /// running untouched; a model whose settings changed but whose process did not
    /// keeps its running unit where the manager can adopt it (systemd); a model
    /// whose process changed is drained, stopped and, if it was running, started
    /// again; removed models are drained and stopped; new ones start on demand.
    /// A client's idle TTL (Ollama's `keep_alive`) stays with a model whose
    /// `idle_ttl` the new file leaves as it was.
    pub async fn reload(&self, settings: &Settings, drain: Duration) -> ReloadSummary {
        let old = self.live();
        let mut summary = ReloadSummary::default();
        let mut instances = Vec::new();
        let can_adopt = self.ctx.manager.can_adopt();
        for spec in &settings.models {
            let unit = render(spec);
            let name = spec.name.clone();
            let Some(prev) = old.by_name.get(&spec.name) else {
                instances.push(Instance::new(
                    spec.clone(),
                    unit,
                    self.ctx.clone(),
                    State::Stopped,
                ));
                summary.added.push(name);
                continue;
            };
            // A model whose settings out-of-memory failures lowered goes back to the
            // configured ones: restarted like a changed one.
            if prev.spec == *spec && !prev.is_tuned() {
                instances.push(prev.clone());
                summary.unchanged.push(name);
                continue;
            }
            let state = prev.state();
            // A replacement made by an earlier reload may still wait to start.
            let pending = prev.pending_start.load(Ordering::SeqCst);
            let running =
                pending || matches!(state, State::Ready | State::Loading | State::Starting);
            let same_process = prev.unit.spec_hash == unit.spec_hash && !prev.is_tuned();
            // Only a unit that exists can be kept (a Starting one may not yet).
            if same_process
                && can_adopt
                && !pending
                && matches!(state, State::Ready | State::Loading)
            {
                let next = Instance::new(spec.clone(), unit, self.ctx.clone(), State::Stopped);
                next.carry_idle_ttl(prev);
                prev.retire();
                match self.ctx.manager.adopt(&next.unit.unit).await {
                    Ok(invocation) => {
                        next.adopt(invocation);
                    }
                    Err(e) => tracing::warn!(model = %name, "cannot keep the running unit: {e}"),
                }
                instances.push(next);
                summary.updated.push(name);
            } else {
                // The new instance waits (Stopping) until the old process is gone,
                // so the two never race for the unit name or the port.
                let next = Instance::new(spec.clone(), unit, self.ctx.clone(), State::Stopping);
                next.carry_idle_ttl(prev);
                next.pending_start.store(running, Ordering::SeqCst);
                prev.retire();
                prev.pending_start.store(false, Ordering::SeqCst);
                let (prev, waiting) = (prev.clone(), next.clone());
                tokio::spawn(async move {
                    prev.stop(StopReason::Reload, drain).await;
                    waiting.replace_done();
                });
                instances.push(next);
                summary.restarted.push(name);
            }
        }
        for prev in &old.instances {
            if !settings.models.iter().any(|m| m.name == prev.spec.name) {
                prev.retire();
                prev.pending_start.store(false, Ordering::SeqCst);
                let prev = prev.clone();
                summary.removed.push(prev.spec.name.clone());
                tokio::spawn(async move { prev.stop(StopReason::Reload, drain).await });
            }
        }
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Live::new(instances));
        let _ = self.ctx.changes.send(Arc::from("*"));
        let old_schedule = self.ctx.schedule();
        if old_schedule.profiles() != settings.profiles.as_slice() {
            let over = old_schedule.override_at(self.ctx.clock.now());
            let next = Arc::new(Schedule::new(settings.profiles.clone(), over));
            *self.ctx.schedule.write().unwrap_or_else(|e| e.into_inner()) = next;
            old_schedule.changed.notify_waiters();
        }
        summary
    }

    /// Refuse new work from now on.
    pub fn begin_shutdown(&self) {
        self.ctx.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.ctx.shutting_down()
    }

    /// Stop every model, giving in-flight requests up to `drain` to finish.
    pub async fn shutdown(&self, drain: Duration) {
        self.begin_shutdown();
        let live = self.live();
        let stops = live
            .instances
            .iter()
            .map(|i| {
                let i = i.clone();
                tokio::spawn(async move { i.stop(StopReason::Shutdown, drain).await })
            })
            .collect::<Vec<_>>();
        for s in stops {
            let _ = s.await;
        }
        // Anything the manager still runs (a start that raced the shutdown).
        if let Ok(units) = self.ctx.manager.list().await {
            for u in units {
                let timeout = live
                    .by_unit(&u.unit)
                    .map_or(Duration::from_secs(10), |i| i.spec.stop_timeout);
                let _ = self.ctx.manager.stop(&u.unit, timeout).await;
            }
        }
    }

    /// One line for `systemctl status`: "2 ready, 1 loading, 0 failed, 3 stopped".
    pub fn status_line(&self) -> String {
        let live = self.live();
        let count = |want: &[State]| {
            live.instances
                .iter()
                .filter(|i| want.contains(&i.state()))
                .count()
        };
        let mut line = format!(
            "{} ready, {} loading, {} failed, {} stopped",
            count(&[State::Ready, State::Draining]),
            count(&[State::Starting, State::Loading, State::Waking]),
            count(&[State::Failed]),
            count(&[State::Stopped, State::Stopping])
        );
        let asleep = count(&[State::Sleeping]);
        if asleep > 0 {
            line.push_str(&format!(", {asleep} sleeping"));
        }
        line
    }

    /// Update the scrape-time gauges.
    pub fn update_gauges(&self) {
        let m = &self.ctx.metrics;
        self.update_gpu_gauges();
        for i in &self.live().instances {
            let label = self.ctx.model_label(i.name());
            m.in_flight.get_or_create(&label).set(i.in_flight() as i64);
            m.queue_depth.get_or_create(&label).set(i.queued() as i64);
            let current = i.state();
            for s in State::ALL {
                m.model_state
                    .get_or_create(&crate::telemetry::metrics::StateLabels {
                        model: i.name().to_string(),
                        state: s.as_str(),
                    })
                    .set((s == current) as i64);
            }
        }
    }
}

/// `HH:MM-HH:MM` of a window.
impl Fleet {
    /// Follow the profiles: at every switch, drain and stop the models no longer
    /// allowed, then start the newly active profiles' `preload` models.
    async fn follow_schedule(fleet: std::sync::Weak<Self>) {
        let mut last: Option<Vec<String>> = None;
        loop {
            let Some(f) = fleet.upgrade() else { return };
            if f.shutting_down() {
                return;
            }
            let ctx = f.ctx.clone();
            let schedule = ctx.schedule();
            let moved = ctx.clock.moved.notified();
            let changed = schedule.changed.notified();
            tokio::pin!(moved, changed);
            moved.as_mut().enable();
            changed.as_mut().enable();
            let now = ctx.clock.now();
            let active = schedule.active_at(now);
            if !schedule.is_empty() && last.as_ref() != Some(&active) {
                f.switch(&schedule, last.as_deref(), &active);
                last = Some(active);
            }
            let wait = schedule
                .next_switch(now)
                .map(|t| (t - now).to_std().unwrap_or_default())
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            drop(f);
            tokio::select! {
                _ = tokio::time::sleep(wait + Duration::from_millis(5)) => {}
                _ = &mut moved => {}
                _ = &mut changed => {}
            }
        }
    }

    fn switch(self: &Arc<Self>, schedule: &Schedule, prev: Option<&[String]>, active: &[String]) {
        let was: Vec<String> = prev.map(<[String]>::to_vec).unwrap_or_default();
        tracing::info!(
            "profiles active: {} (before: {})",
            if active.is_empty() {
                "none".into()
            } else {
                active.join(", ")
            },
            if prev.is_none() {
                "llmvisor was starting".into()
            } else if was.is_empty() {
                "none".into()
            } else {
                was.join(", ")
            }
        );
        for p in schedule.profiles() {
            self.ctx
                .metrics
                .gpu
                .profile_active
                .get_or_create(&crate::telemetry::metrics::ProfileLabels {
                    profile: p.name.clone(),
                })
                .set(i64::from(active.contains(&p.name)));
        }
        let now = self.ctx.clock.now();
        let changed: Vec<&crate::config::ProfileSpec> = schedule
            .profiles()
            .iter()
            .filter(|p| active.contains(&p.name) != was.contains(&p.name))
            .collect();
        let drain = changed
            .iter()
            .map(|p| p.drain_timeout)
            .max()
            .unwrap_or(Duration::from_secs(300));
        let stops: Vec<Arc<Instance>> = self
            .instances()
            .into_iter()
            .filter(|i| !matches!(i.state(), State::Stopped | State::Failed))
            .filter(|i| !schedule.allowed_at(i.name(), now))
            .collect();
        let mut preload: Vec<String> = Vec::new();
        for p in schedule.profiles() {
            if active.contains(&p.name) && !was.contains(&p.name) {
                for m in &p.preload {
                    if !preload.contains(m) && schedule.allowed_at(m, now) {
                        preload.push(m.clone());
                    }
                }
            }
        }
        if stops.is_empty() && preload.is_empty() {
            return;
        }
        let fleet = Arc::downgrade(self);
        tokio::spawn(async move {
            let names: Vec<&str> = stops.iter().map(|i| i.name()).collect();
            if !names.is_empty() {
                tracing::info!(
                    "profile switch: draining and stopping {} (in-flight requests get up to {})",
                    names.join(", "),
                    humantime::format_duration(drain)
                );
            }
            let tasks: Vec<_> = stops
                .iter()
                .map(|i| {
                    let i = i.clone();
                    tokio::spawn(async move { i.stop(StopReason::Profile, drain).await })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            let Some(fleet) = fleet.upgrade() else { return };
            for name in preload {
                if let Some(i) = fleet.get(&name) {
                    tracing::info!(model = %name, "profile switch: preloading");
                    i.begin_start(false);
                }
            }
        });
    }

    /// The GPUs now (simulated ones showing what the models declared) and every
    /// instance that holds GPU memory, with what it holds: what `/admin/gpus`
    /// shows. Blocks briefly on NVML.
    pub fn gpu_board(
        &self,
    ) -> (
        crate::gpu::Snapshot,
        Vec<(Arc<Instance>, crate::gpu::placement::Holder)>,
    ) {
        self.ctx.board.snapshot()
    }

    /// Where GPU facts come from (`nvml`, `simulated`, `none`) and, when there are
    /// none, why.
    pub fn gpu_source(&self) -> (&'static str, Option<String>) {
        self.ctx.board.inventory.describe()
    }

    fn update_gpu_gauges(&self) {
        use crate::telemetry::metrics::GpuLabels;
        let (snap, _) = self.ctx.board.snapshot();
        let g = &self.ctx.metrics.gpu;
        for gpu in &snap.gpus {
            let l = GpuLabels {
                gpu: gpu.index.to_string(),
                uuid: gpu.uuid.clone(),
                name: gpu.name.clone(),
                simulated: if gpu.simulated { "true" } else { "false" },
            };
            g.memory_total
                .get_or_create(&l)
                .set(gpu.memory_total as i64);
            g.memory_used.get_or_create(&l).set(gpu.memory_used as i64);
            g.memory_free.get_or_create(&l).set(gpu.memory_free as i64);
            g.processes
                .get_or_create(&l)
                .set(gpu.processes.len() as i64);
            if let Some(u) = gpu.utilization_percent {
                g.utilization.get_or_create(&l).set(i64::from(u));
            }
            if let Some(t) = gpu.temperature_celsius {
                g.temperature.get_or_create(&l).set(i64::from(t));
            }
            if let Some(p) = gpu.power_watts {
                g.power.get_or_create(&l).set(p);
            }
        }
    }

    /// The profiles active now (routing rules can test them).
    pub fn active_profiles(&self) -> Vec<String> {
        self.ctx.schedule().active_at(self.ctx.clock.now())
    }

    /// Local time as the schedule sees it.
    pub fn now(&self) -> chrono::DateTime<chrono::Local> {
        self.ctx.clock.now()
    }

    /// The profiles in force (their windows, the override) for `/admin/profiles`.
    pub fn schedule(&self) -> Arc<Schedule> {
        self.ctx.schedule()
    }

    /// Whether the clock is the test clock (`LLMVISOR_TEST_CLOCK`).
    pub fn test_clock(&self) -> bool {
        self.ctx.clock.is_test()
    }

    /// Activate a profile by hand (for `duration`, or until resumed).
    pub fn activate_profile(&self, name: &str, duration: Option<Duration>) -> Result<(), String> {
        let now = self.ctx.clock.now();
        let until = match duration {
            Some(d) => Some(
                now + chrono::TimeDelta::from_std(d)
                    .map_err(|_| "duration too long".to_string())?,
            ),
            None => None,
        };
        self.ctx.schedule().activate(name, until)?;
        tracing::info!(
            "profile {name} activated by an operator{}",
            duration.map_or(String::new(), |d| format!(
                " for {}",
                humantime::format_duration(d)
            ))
        );
        Ok(())
    }

    /// End a manual activation: back to the windows.
    pub fn resume_schedule(&self) {
        self.ctx.schedule().resume();
        tracing::info!("profiles follow their windows again");
    }

    /// Move the test clock (only with `LLMVISOR_TEST_CLOCK`).
    pub fn set_test_clock(&self, to: &str) -> Result<String, String> {
        if !self.ctx.clock.is_test() {
            return Err(format!(
                "the clock can only be moved when llmvisor runs with {} (tests)",
                schedule::TEST_CLOCK_ENV
            ));
        }
        let t = schedule::parse_local(to)?;
        self.ctx.clock.set(t);
        tracing::info!("test clock set to {t}");
        Ok(t.to_rfc3339())
    }
}
