//! One model instance: its state machine, on-demand start, health wait, idle stop,
//! concurrency gate and queue, crash accounting.
//!
//! Every state change goes through [`Instance::apply`], which moves the state only
//! along the table of [`super::state`]:
//!
//! ```text
//!   Stopped ─Start─▶ Starting ─Launched─▶ Loading ─Healthy─▶ Ready ─Sleep─▶ Sleeping
//!      ▲  ◀─Refused──┘   ▲                   ▲                 │ ▲ ◀─Keep──┘ │ ▲
//!      │      (no room)  │   Stopped ─Adopt──┘                 │ └──Woken── Waking ◀─Wake
//!      │                 └───────────────WakeCold─────────────────────────────┘
//!      │
//!      └─Gone── Stopping ◀─Kill── Draining ◀─Stop/IdleStop/Evict/SleepFailed─ (running states)
//!                                    └─Keep─▶ Ready (a request came in the same instant)
//!   any running state, Draining ─Fail─▶ Failed ─Start─▶ Starting
//! ```
//!
//! Beyond the state, each step checks that it still belongs to the run it was
//! started for: a start by its generation, a running unit by its invocation.
//! Waits are on notifications (the status channel, the drain), never on polling.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::gate::{Gate, Permit};
use super::state::{AT_REST, STOPPING};
use super::{Ctx, FleetError, State, StopReason, Transition};
use crate::config::ModelSpec;
use crate::config::Priority;
use crate::units::{ExitInfo, Invocation, UnitSpec};

mod gpu;
pub use gpu::{Placed, Tuning};

/// Longest wait between two restarts of a crashing model.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What `/health` and `/v1/models` show of an instance.
#[derive(Clone, Debug)]
pub struct Status {
    /// Lifecycle state.
    pub state: State,
    /// When it entered this state.
    pub since: Instant,
    /// The same, as wall-clock time.
    pub since_wall: SystemTime,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// How the last run ended, if it ended by itself.
    pub exit: Option<ExitInfo>,
    /// The current run of the unit.
    pub invocation: Option<Invocation>,
    /// Too many failures in the window: only an operator starts it again.
    pub locked_out: bool,
    /// Why the current (or last) stop was asked for.
    pub stop_reason: Option<StopReason>,
    /// Counts starts; every step of a start checks it is still the current one.
    generation: u64,
    /// When the current start gives up (its backoff plus `start_timeout`).
    start_deadline: Option<Instant>,
    /// An exit reported before the start that caused it recorded its invocation.
    pending_exit: Option<(Invocation, ExitInfo, String)>,
    /// The last start (or wake) found no GPU room: what held the memory.
    refused: Option<String>,
}

/// Which run a failure belongs to; a failure of a superseded run is ignored.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// A start, by generation (before or while its process runs).
    Start(u64),
    /// A running unit, by invocation.
    Run(&'a Invocation),
}

impl Status {
    fn new(state: State) -> Self {
        Self {
            state,
            since: Instant::now(),
            since_wall: SystemTime::now(),
            last_error: None,
            exit: None,
            invocation: None,
            locked_out: false,
            stop_reason: None,
            generation: 0,
            start_deadline: None,
            pending_exit: None,
            refused: None,
        }
    }

    fn set(&mut self, state: State) {
        self.state = state;
        self.since = Instant::now();
        self.since_wall = SystemTime::now();
    }
}

/// A model instance and everything that governs it.
pub struct Instance {
    /// The checked spec.
    pub spec: ModelSpec,
    /// What the unit manager starts.
    pub unit: UnitSpec,
    status: watch::Sender<Status>,
    gate: Arc<Gate>,
    /// Requests admitted: in flight plus waiting for a start or a slot.
    admitted: AtomicUsize,
    in_flight: AtomicUsize,
    /// Milliseconds since `ctx.epoch` when the instance last became idle.
    idle_since_ms: AtomicU64,
    idle: Notify,
    /// A client's idle TTL (Ollama's `keep_alive`) in place of `spec.idle_ttl`:
    /// [`TTL_CONFIGURED`] none, [`TTL_FOREVER`] never idle out, else milliseconds.
    ttl_override: AtomicU64,
    /// Wakes the idle loop when `ttl_override` changes.
    ttl_changed: Notify,
    /// Woken when the last request in flight finishes (a stop's drain waits on it).
    drained: Notify,
    /// Replaced by a reload: no more starts or idle stops from this object.
    retired: AtomicBool,
    /// Replacing a running model: start once the old process is gone.
    pub(super) pending_start: AtomicBool,
    failures: Mutex<VecDeque<Instant>>,
    /// Where the current (or sleeping) run is placed.
    placed: Mutex<Option<Placed>>,
    /// Settings lowered by out-of-memory failures.
    tuning: Mutex<Tuning>,
    /// One sleep or wake at a time.
    sleep_lock: tokio::sync::Mutex<()>,
    ctx: Arc<Ctx>,
    /// Every state entered, the first one included (tests read it).
    #[cfg(test)]
    trail: Mutex<Vec<State>>,
}

/// A slot at a ready backend. While it lives the request counts as in flight; dropping
/// it (the response finished or the client went away) frees the slot.
pub struct Lease {
    instance: Arc<Instance>,
    _permit: Permit,
    _admission: Admission,
    /// How long the request waited for the model to start, if it had to.
    pub cold_start: Option<Duration>,
    /// How long it waited for a free slot.
    pub queued: Duration,
    /// When it got it (the end of `queued`, read by the same clock reading).
    pub acquired: Instant,
    /// Whether it had to wait for one (no slot was free when it asked).
    pub waited_for_slot: bool,
}

impl Lease {
    /// The instance this lease is for.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.leave_flight();
    }
}

/// A request counted against the queue limit until dropped.
struct Admission(Arc<Instance>);

impl Drop for Admission {
    fn drop(&mut self) {
        let i = &self.0;
        if i.admitted.fetch_sub(1, Ordering::SeqCst) == 1 {
            i.idle_since_ms.store(i.ctx.now_ms(), Ordering::SeqCst);
            i.idle.notify_one();
            // An idle model may be evicted for a start that waits for room.
            i.ctx.board.changed.notify_waiters();
        }
    }
}

impl Instance {
    pub(super) fn new(spec: ModelSpec, unit: UnitSpec, ctx: Arc<Ctx>, initial: State) -> Arc<Self> {
        let gate = Gate::new(spec.max_concurrent as usize);
        let tuning = Tuning {
            max_concurrent: spec.max_concurrent,
            gpu_memory_utilization: None,
            ooms: 0,
            reason: None,
            at: None,
        };
        let inst = Arc::new(Self {
            spec,
            unit,
            status: watch::channel(Status::new(initial)).0,
            gate,
            admitted: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            idle: Notify::new(),
            ttl_override: AtomicU64::new(TTL_CONFIGURED),
            ttl_changed: Notify::new(),
            drained: Notify::new(),
            retired: AtomicBool::new(false),
            pending_start: AtomicBool::new(false),
            failures: Mutex::new(VecDeque::new()),
            placed: Mutex::new(None),
            tuning: Mutex::new(tuning),
            sleep_lock: tokio::sync::Mutex::new(()),
            ctx,
            #[cfg(test)]
            trail: Mutex::new(vec![initial]),
        });
        inst.ctx.board.register(&inst);
        // Also without an `idle_ttl`: a client's `keep_alive` may set one.
        tokio::spawn(inst.clone().idle_loop());
        inst
    }

    /// The idle TTL in force: a client's override, else the configured one (None:
    /// the model never idles out).
    pub fn idle_ttl(&self) -> Option<Duration> {
        match self.ttl_override.load(Ordering::SeqCst) {
            TTL_CONFIGURED => self.spec.idle_ttl,
            TTL_FOREVER => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Set the idle TTL from now on (Ollama's `keep_alive`): `Some(Some(d))` idle
    /// out after `d` without requests, `Some(None)` never, `None` back to the
    /// configured `idle_ttl`. Counted from the last request, as before.
    pub fn set_idle_ttl(&self, ttl: Option<Option<Duration>>) {
        let v = match ttl {
            None => TTL_CONFIGURED,
            Some(None) => TTL_FOREVER,
            Some(Some(d)) => (d.as_millis() as u64).min(TTL_FOREVER - 1),
        };
        if self.ttl_override.swap(v, Ordering::SeqCst) != v {
            self.ttl_changed.notify_one();
        }
    }

    /// Take over `prev`'s idle TTL override (a reload's successor of the same
    /// model), unless the configured `idle_ttl` changed: then the file wins.
    pub(super) fn carry_idle_ttl(&self, prev: &Instance) {
        if prev.spec.idle_ttl == self.spec.idle_ttl {
            let v = prev.ttl_override.load(Ordering::SeqCst);
            if self.ttl_override.swap(v, Ordering::SeqCst) != v {
                self.ttl_changed.notify_one();
            }
        }
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Every change of the status from now on (the usage store's event log).
    pub fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// A copy of the current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.status.borrow().state
    }

    /// Requests at the backend now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How long a ready model has had nothing admitted, if it is idle now.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.state() != State::Ready || self.admitted.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(Ordering::SeqCst);
        Some(Duration::from_millis(
            self.ctx.now_ms().saturating_sub(since),
        ))
    }

    /// One request fewer in flight; the last one wakes a drain.
    fn leave_flight(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drained.notify_waiters();
        }
    }

    /// Move the state by `t` when the table allows it from the current state and
    /// `guard` holds; `update` then sets the other fields, in the same change (one
    /// notification). Returns the state left, or the current state when nothing
    /// changed. The only place a state is set.
    pub(super) fn apply(
        &self,
        t: Transition,
        guard: impl FnOnce(&Status) -> bool,
        update: impl FnOnce(&mut Status),
    ) -> Result<State, State> {
        let mut out = Err(State::Stopped);
        self.status.send_if_modified(|s| {
            out = Err(s.state);
            let Some(to) = t.next(s.state) else {
                return false;
            };
            if !guard(s) {
                return false;
            }
            let from = s.state;
            out = Ok(from);
            #[cfg(test)]
            {
                self.trail
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(to);
                super::tests::saw(t);
            }
            s.set(to);
            update(s);
            if let Some(observe) = self.ctx.observer.get() {
                observe(&super::Change {
                    model: self.name(),
                    from,
                    status: s,
                });
            }
            true
        });
        // Only while a page follows: no allocation on the request path otherwise.
        if out.is_ok() && self.ctx.changes.receiver_count() > 0 {
            let _ = self.ctx.changes.send(Arc::from(self.name()));
        }
        out
    }

    /// Every state entered so far, the first one included.
    #[cfg(test)]
    pub(super) fn trail(&self) -> Vec<State> {
        self.trail.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The idle protocol shared by idle stop, sleep and eviction: leave by `t`
    /// (from Ready, or a state the table allows), then a fence, then look at what is
    /// admitted. A request admitted in the same instant (it fences too, then looks
    /// at the state) keeps a Ready model: `Keep` takes it back. Returns the state
    /// left when the step stands.
    pub(super) fn leave_idle(&self, t: Transition, reason: Option<StopReason>) -> Option<State> {
        let from = self
            .apply(
                t,
                |_| true,
                |s| {
                    if reason.is_some() {
                        s.stop_reason = reason;
                    }
                },
            )
            .ok()?;
        // Pairs with the fence in `acquire_as`.
        fence(Ordering::SeqCst);
        if from == State::Ready && self.admitted.load(Ordering::SeqCst) > 0 {
            let into = t.to();
            let _ = self.apply(Transition::Keep, |s| s.state == into, |_| {});
            return None;
        }
        Some(from)
    }

    /// Requests waiting for a free slot, as `[interactive, batch]`.
    pub fn waiting_by_priority(&self) -> [usize; 2] {
        self.gate.waiting()
    }

    /// Requests waiting for a start or a slot.
    pub fn queued(&self) -> usize {
        self.admitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.in_flight.load(Ordering::Relaxed))
    }

    /// Wait for a slot at a ready backend, starting the model if needed.
    ///
    /// Errors: queue full (at once), start failed or timed out, queue timed out,
    /// model failing too often, shutting down.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, FleetError> {
        self.acquire_as(Priority::Interactive).await
    }

    /// [`Instance::acquire`] for a request of the given priority: interactive
    /// requests take free slots before batch ones.
    pub async fn acquire_as(self: &Arc<Self>, priority: Priority) -> Result<Lease, FleetError> {
        if self.ctx.shutting_down() {
            return Err(FleetError::ShuttingDown);
        }
        self.check_schedule()?;
        let limit = self.tuning().max_concurrent as usize + self.spec.max_queue as usize;
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= limit {
            drop(Admission(self.clone()));
            return Err(FleetError::QueueFull {
                model: self.spec.name.clone(),
                limit,
            });
        }
        let admission = Admission(self.clone());
        // Pairs with the fence in `idle_stop`: either this request sees the model
        // draining, or the idle stop sees this request and backs off.
        fence(Ordering::SeqCst);
        // A request that queued while the model crashed or began to stop goes round
        // again: it waits for the next start instead of reaching a dying backend.
        let mut cold_start = None;
        for _ in 0..3 {
            if self.state() != State::Ready {
                let t = Instant::now();
                self.ensure_ready().await?;
                *cold_start.get_or_insert(Duration::ZERO) += t.elapsed();
            }
            let t = Instant::now();
            let (permit, waited_for_slot) = match self.gate.try_acquire(priority) {
                Some(p) => (p, false),
                None => (
                    tokio::time::timeout(self.spec.queue_timeout, self.gate.acquire(priority))
                        .await
                        .map_err(|_| FleetError::QueueTimeout {
                            model: self.spec.name.clone(),
                            waited: self.spec.queue_timeout,
                        })?,
                    true,
                ),
            };
            let acquired = Instant::now();
            let queued = acquired.saturating_duration_since(t);
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            if self.state() == State::Ready {
                return Ok(Lease {
                    instance: self.clone(),
                    _permit: permit,
                    _admission: admission,
                    cold_start,
                    queued,
                    acquired,
                    waited_for_slot,
                });
            }
            self.leave_flight();
        }
        let status = self.status();
        Err(FleetError::StartFailed {
            model: self.spec.name.clone(),
            reason: status
                .last_error
                .unwrap_or_else(|| format!("the model is {}", status.state.as_str())),
        })
    }

    /// Refuse when the profiles in force do not allow this model now.
    fn check_schedule(&self) -> Result<(), FleetError> {
        let schedule = self.ctx.schedule();
        if schedule.is_empty() {
            return Ok(());
        }
        let now = self.ctx.clock.now();
        match schedule.refusal(&self.spec.name, now) {
            None => Ok(()),
            Some((retry_after, allowed_in)) => Err(FleetError::NotScheduled {
                model: self.spec.name.clone(),
                allowed_in,
                active: schedule.active_at(now),
                retry_after,
            }),
        }
    }

    /// Wait until the model is ready, starting it when it is stopped (or failed and
    /// allowed to restart). Exactly one start happens however many callers wait.
    async fn ensure_ready(self: &Arc<Self>) -> Result<(), FleetError> {
        let own_deadline = tokio::time::Instant::now() + self.spec.start_timeout;
        let mut rx = self.status.subscribe();
        let mut saw_start = false;
        loop {
            let (state, locked_out, last_error, start_deadline, refused) = {
                let s = rx.borrow_and_update();
                (
                    s.state,
                    s.locked_out,
                    s.last_error.clone(),
                    s.start_deadline,
                    s.refused.clone(),
                )
            };
            match state {
                State::Ready => return Ok(()),
                State::Starting | State::Loading | State::Waking => saw_start = true,
                State::Stopped | State::Sleeping if saw_start && refused.is_some() => {
                    return Err(FleetError::NoGpuRoom {
                        model: self.spec.name.clone(),
                        message: refused.unwrap_or_default(),
                    });
                }
                State::Sleeping => {
                    self.check_schedule()?;
                    self.begin_wake();
                    saw_start = true;
                    continue;
                }
                State::Stopped | State::Failed if saw_start => {
                    return Err(FleetError::StartFailed {
                        model: self.spec.name.clone(),
                        reason: last_error
                            .unwrap_or_else(|| "the model was stopped while starting".into()),
                    });
                }
                State::Stopped | State::Failed if locked_out => {
                    return Err(self.crash_loop_error(last_error));
                }
                State::Stopped | State::Failed => {
                    if self.ctx.shutting_down() {
                        return Err(FleetError::ShuttingDown);
                    }
                    if self.is_retired() {
                        return Err(FleetError::Replaced {
                            model: self.spec.name.clone(),
                        });
                    }
                    self.check_schedule()?;
                    self.begin_start(false);
                    saw_start = true;
                    continue;
                }
                State::Draining | State::Stopping => {}
            }
            // A start that first waits out a restart backoff still gets its whole
            // start_timeout for loading; requests waiting on it wait that long too.
            let deadline = match start_deadline {
                Some(d) if saw_start => own_deadline.max(d),
                _ => own_deadline,
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(FleetError::ShuttingDown),
                Err(_) => {
                    return Err(FleetError::StartTimeout {
                        model: self.spec.name.clone(),
                        waited: self.spec.start_timeout,
                    });
                }
            }
        }
    }

    fn crash_loop_error(&self, last_error: Option<String>) -> FleetError {
        FleetError::CrashLoop {
            model: self.spec.name.clone(),
            failures: self.spec.max_restarts,
            window: self.spec.restart_window,
            last_error: last_error.unwrap_or_default(),
        }
    }

    /// Move Stopped/Failed → Starting and spawn the start task. `operator` (an
    /// explicit start by an operator) clears the failure history and a lock-out;
    /// otherwise a locked-out model is not started. Returns whether a start began.
    pub fn begin_start(self: &Arc<Self>, operator: bool) -> bool {
        if operator {
            self.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        let backoff = if operator {
            Duration::ZERO
        } else {
            self.backoff()
        };
        let start_timeout = self.spec.start_timeout;
        let mut generation = None;
        let _ = self.apply(
            Transition::Start,
            |s| (!s.locked_out || operator) && !self.retired.load(Ordering::SeqCst),
            |s| {
                s.locked_out = false;
                s.invocation = None;
                s.pending_exit = None;
                s.refused = None;
                s.generation += 1;
                s.start_deadline = Some(Instant::now() + backoff + start_timeout);
                generation = Some(s.generation);
            },
        );
        if let Some(g) = generation {
            tokio::spawn(self.clone().run_start(g, backoff));
        }
        generation.is_some()
    }

    /// Wait before a restart: `restart_backoff` doubled per failure in the window.
    fn backoff(&self) -> Duration {
        let n = self.recent_failures();
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (n - 1).min(16);
        self.spec
            .restart_backoff
            .saturating_mul(factor)
            .min(MAX_BACKOFF)
    }

    fn recent_failures(&self) -> u32 {
        self.count_failures(false)
    }

    /// Failures within `restart_window`, after recording one more if `add`.
    fn count_failures(&self, add: bool) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if add {
            f.push_back(Instant::now());
        }
        let window = self.spec.restart_window;
        while f.front().is_some_and(|t| t.elapsed() > window) {
            f.pop_front();
        }
        f.len() as u32
    }

    /// Whether start `generation` is still the current one and in `state`.
    fn is_current(&self, generation: u64, state: State) -> bool {
        let s = self.status.borrow();
        s.generation == generation && s.state == state
    }

    async fn run_start(self: Arc<Self>, generation: u64, backoff: Duration) {
        let name = self.spec.name.clone();
        if !backoff.is_zero() {
            tracing::info!(model = %name, "restarting in {backoff:?} (backoff after a failure)");
            tokio::time::sleep(backoff).await;
            if !self.is_current(generation, State::Starting) {
                return;
            }
        }
        // Room on the GPUs first: evict idle models, or wait (up to start_timeout,
        // just under what the waiting requests allow) while busy ones hold it.
        let deadline = self
            .status
            .borrow()
            .start_deadline
            .unwrap_or_else(|| Instant::now() + self.spec.start_timeout);
        let deadline = deadline
            .checked_sub(Duration::from_millis(250))
            .unwrap_or(deadline);
        let placed = match self
            .place(
                |s| s.is_current(generation, State::Starting),
                None,
                deadline,
            )
            .await
        {
            Ok(p) => p,
            Err(gpu::NotPlaced::Superseded) => return,
            Err(gpu::NotPlaced::NoRoom(msg)) => {
                self.refuse(generation, msg);
                return;
            }
        };
        if placed.is_some() {
            // Loading gets its whole start_timeout after the wait for room.
            let start_timeout = self.spec.start_timeout;
            self.status.send_if_modified(|s| {
                let ours = s.generation == generation && s.state == State::Starting;
                if ours {
                    s.start_deadline = Some(Instant::now() + start_timeout);
                }
                ours
            });
        }
        let unit = self.unit_for(placed.as_ref());
        let t0 = Instant::now();
        self.ctx
            .metrics
            .starts
            .get_or_create(&self.ctx.model_label(&name))
            .inc();
        tracing::info!(model = %name, unit = %unit.unit, manager = self.ctx.manager.name(), gpus = ?unit.env.get("CUDA_VISIBLE_DEVICES"), "starting");
        // Whatever listens on the port would pass the health check and get the
        // prompts: refuse to start on a port someone else holds.
        if let Some(msg) = self.ctx.health.port_taken(self.spec.port).await {
            self.fail_and_free(Scope::Start(generation), msg);
            return;
        }
        let invocation = match self.ctx.manager.start(&unit).await {
            Ok(inv) => inv,
            Err(e) => {
                self.fail_and_free(Scope::Start(generation), e.to_string());
                return;
            }
        };
        let mut early_exit = None;
        let moved = self.apply(
            Transition::Launched,
            |s| s.generation == generation,
            |s| {
                if let Some((inv, exit, reason)) = s.pending_exit.take()
                    && inv == invocation
                {
                    early_exit = Some((exit, reason));
                }
                s.invocation = Some(invocation.clone());
            },
        );
        if moved.is_err() {
            // A stop came meanwhile: whatever else happened, what this task started
            // must not keep running.
            let _ = self
                .ctx
                .manager
                .stop(&self.unit.unit, self.spec.stop_timeout)
                .await;
            return;
        }
        if let Some((exit, reason)) = early_exit {
            self.fail(Scope::Run(&invocation), reason, Some(exit));
            return;
        }
        self.wait_healthy(generation, t0).await;
    }

    /// Mark this object as replaced by a reload: its idle timer ends. Requests in
    /// flight finish on it; the caller decides what happens to its unit.
    pub(super) fn retire(&self) {
        self.status.send_modify(|s| {
            self.retired.store(true, Ordering::SeqCst);
            // Any start or health wait under way belongs to the old configuration:
            // a new generation makes each of its next steps a no-op.
            s.generation += 1;
        });
        self.idle.notify_one();
    }

    /// Whether a reload replaced this object.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// The instance this one replaces has stopped: from Stopping to Stopped, and
    /// started again when the old one was running.
    pub(super) fn replace_done(self: &Arc<Self>) {
        let _ = self.apply(Transition::Gone, |_| true, |s| s.invocation = None);
        // A later reload may have replaced this one meanwhile; begin_start refuses
        // then, and that reload carried the intent over.
        if self.pending_start.swap(false, Ordering::SeqCst) {
            self.begin_start(false);
        }
    }

    /// Take over a unit that is already running (started by an earlier llmvisor):
    /// no start, it counts as ready once its health check passes.
    pub(super) fn adopt(self: &Arc<Self>, invocation: Invocation) -> bool {
        let start_timeout = self.spec.start_timeout;
        let mut generation = None;
        let _ = self.apply(
            Transition::Adopt,
            |_| true,
            |s| {
                s.generation += 1;
                s.invocation = Some(invocation.clone());
                s.start_deadline = Some(Instant::now() + start_timeout);
                generation = Some(s.generation);
            },
        );
        if let Some(g) = generation {
            tracing::info!(model = %self.spec.name, %invocation, "adopted the running unit");
            tokio::spawn(self.clone().wait_healthy(g, Instant::now()));
        }
        generation.is_some()
    }

    /// Poll the health endpoint of a loading run until it answers 200 (Ready) or
    /// `start_timeout` from `t0` passes (stopped, then Failed).
    async fn wait_healthy(self: Arc<Self>, generation: u64, t0: Instant) {
        let name = self.spec.name.clone();
        let deadline = t0 + self.spec.start_timeout;
        let mut rx = self.status.subscribe();
        // Who answered the health check instead of the model, once seen.
        let mut foreign: Option<String> = None;
        loop {
            if !self.is_current(generation, State::Loading) {
                return;
            }
            if self
                .ctx
                .health
                .check(self.spec.port, &self.spec.health_path)
                .await
                && self.answered_by_us(&mut foreign).await
            {
                let ready = self
                    .apply(
                        Transition::Healthy,
                        |s| s.generation == generation,
                        |s| s.start_deadline = None,
                    )
                    .is_ok();
                if ready {
                    let took = t0.elapsed();
                    self.ctx
                        .metrics
                        .cold_start
                        .get_or_create(&self.ctx.model_label(&name))
                        .observe(took.as_secs_f64());
                    tracing::info!(model = %name, "ready after {:.2} s", took.as_secs_f64());
                    self.idle_since_ms
                        .store(self.ctx.now_ms(), Ordering::SeqCst);
                    self.idle.notify_one();
                }
                return;
            }
            if Instant::now() >= deadline {
                let msg = match &foreign {
                    Some(who) => format!(
                        "not healthy within start_timeout ({}): port {} answers, but from {who}, not from the model's own processes",
                        humantime::format_duration(self.spec.start_timeout),
                        self.spec.port
                    ),
                    None => format!(
                        "not healthy within start_timeout ({}): GET {} on port {} never answered 200",
                        humantime::format_duration(self.spec.start_timeout),
                        self.spec.health_path,
                        self.spec.port
                    ),
                };
                // Stop first: a restart must not race the old process for its port.
                let _ = self
                    .ctx
                    .manager
                    .stop(&self.unit.unit, self.spec.stop_timeout)
                    .await;
                self.fail(Scope::Start(generation), msg, None);
                return;
            }
            // Poll again after the interval, or at once if the state changes (exit).
            let _ = tokio::time::timeout(self.ctx.poll_interval, rx.changed()).await;
        }
    }

    /// Whether the socket listening on the model's port belongs to the unit's own
    /// processes (see [`crate::units::sockets::owner`]). A manager that cannot list
    /// the unit's processes, or a socket `/proc` does not show, is taken on trust.
    /// Someone else's socket is logged once and noted in `foreign`.
    async fn answered_by_us(&self, foreign: &mut Option<String>) -> bool {
        let Some(pids) = self.ctx.manager.pids(&self.unit.unit).await else {
            return true;
        };
        let port = self.spec.port;
        match self.ctx.health.owner(port, pids).await {
            crate::units::sockets::Owner::Ours | crate::units::sockets::Owner::Unknown => true,
            crate::units::sockets::Owner::Foreign(who) => {
                if foreign.as_deref() != Some(who.as_str()) {
                    tracing::warn!(
                        model = %self.spec.name,
                        "port {port} answers the health check, but its socket is held by {who}, not by the model's processes; not ready"
                    );
                }
                *foreign = Some(who);
                false
            }
        }
    }

    /// Record a failure of the current run: state Failed, error kept, failure
    /// counted, lock-out decided. A failure of a superseded run changes nothing.
    fn fail(&self, scope: Scope<'_>, reason: String, exit: Option<ExitInfo>) -> bool {
        let mut counted = None;
        let _ = self.apply(
            Transition::Fail,
            |s| match scope {
                Scope::Start(g) => s.generation == g,
                Scope::Run(inv) => s.invocation.as_ref() == Some(inv),
            },
            |s| {
                let n = self.count_failures(true);
                let locked = n >= self.spec.max_restarts;
                s.last_error = Some(reason.clone());
                s.exit = exit.clone();
                s.locked_out = locked;
                s.start_deadline = None;
                counted = Some((n, locked));
            },
        );
        let Some((n, locked)) = counted else {
            return false;
        };
        self.set_placed(None);
        self.ctx
            .metrics
            .failures
            .get_or_create(&self.ctx.model_label(&self.spec.name))
            .inc();
        if locked {
            tracing::error!(
                model = %self.spec.name,
                "failed {n} times within {}; staying failed until an operator starts it: {reason}",
                humantime::format_duration(self.spec.restart_window)
            );
        } else {
            tracing::error!(model = %self.spec.name, "failed: {reason}");
        }
        true
    }

    /// The unit's process ended without being asked to.
    pub(super) fn on_exit(
        self: &Arc<Self>,
        invocation: &Invocation,
        exit: &ExitInfo,
        last_output: &[String],
    ) {
        let oom = crate::gpu::oom::oom_line(last_output).map(str::to_string);
        let mut reason = format!("backend {exit}");
        if let Some(why) = exit_reason(last_output) {
            reason.push_str(": ");
            reason.push_str(&why);
        }
        // The start that launched it may not have recorded the invocation yet: keep
        // the exit for it to find. (An exit of an older run never matches.)
        let mut kept = false;
        self.status.send_if_modified(|s| {
            if s.state == State::Starting && s.invocation.is_none() {
                s.pending_exit = Some((invocation.clone(), exit.clone(), reason.clone()));
                kept = true;
            }
            false
        });
        if !kept {
            self.fail(Scope::Run(invocation), reason, Some(exit.clone()));
        }
        // The next start (on demand, after the usual backoff, like any restart
        // after a crash) uses the lower settings.
        if let Some(line) = oom {
            self.on_oom(&line);
        }
    }

    /// Stop the model: no new requests reach it, in-flight ones get up to `drain` to
    /// finish, then the unit is stopped.
    pub async fn stop(self: &Arc<Self>, reason: StopReason, drain: Duration) {
        match self.apply(Transition::Stop, |_| true, |s| s.stop_reason = Some(reason)) {
            Ok(_) => {}
            Err(now) if STOPPING.contains(&now) => {
                // Another stop is under way; wait for it.
                let mut rx = self.status.subscribe();
                let _ = rx.wait_for(|s| !STOPPING.contains(&s.state)).await;
                return;
            }
            // Nothing runs; a failed model stays failed (and a lock-out stays) until
            // an operator starts it.
            Err(now) => {
                debug_assert!(AT_REST.contains(&now));
                return;
            }
        }
        tracing::info!(model = %self.spec.name, reason = reason.as_str(), "stopping");
        let until = Instant::now() + drain;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.in_flight() == 0 || tokio::time::timeout_at(until, drained).await.is_err() {
                break;
            }
        }
        self.finish_stop().await;
    }

    pub(super) async fn finish_stop(&self) {
        let stopping = self.apply(Transition::Kill, |_| true, |_| {}).is_ok();
        if let Err(e) = self
            .ctx
            .manager
            .stop(&self.unit.unit, self.spec.stop_timeout)
            .await
        {
            tracing::error!(model = %self.spec.name, "cannot stop: {e}");
        }
        // A crash during the drain left it Failed: it stays so (with any lock-out).
        if stopping {
            let _ = self.apply(Transition::Gone, |_| true, |s| s.invocation = None);
        }
        if matches!(self.state(), State::Stopped | State::Failed) {
            self.set_placed(None);
        }
    }

    /// Stop when nothing has been admitted for the idle TTL ([`Instance::idle_ttl`],
    /// read anew at every wake): one long-lived task per model, woken when the
    /// model becomes idle or the TTL changes, sleeping exactly until the deadline.
    async fn idle_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.idle.notified() => {}
                () = self.ttl_changed.notified() => {}
            }
            loop {
                if self.retired.load(Ordering::SeqCst) {
                    return;
                }
                if self.admitted.load(Ordering::SeqCst) > 0 || self.state() != State::Ready {
                    break;
                }
                let Some(ttl) = self.idle_ttl() else {
                    break;
                };
                let due_ms = self.idle_since_ms.load(Ordering::SeqCst) + ttl.as_millis() as u64;
                let now_ms = self.ctx.now_ms();
                if now_ms < due_ms {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(due_ms - now_ms)) => {}
                        () = self.ttl_changed.notified() => {}
                    }
                    continue;
                }
                if self.sleeps_when_idle() {
                    self.idle_sleep().await;
                } else {
                    self.idle_stop().await;
                }
                break;
            }
        }
    }

    async fn idle_stop(self: &Arc<Self>) {
        if self
            .leave_idle(Transition::IdleStop, Some(StopReason::Idle))
            .is_none()
        {
            return;
        }
        tracing::info!(
            model = %self.spec.name,
            "idle for {}; stopping",
            humantime::format_duration(self.idle_ttl().unwrap_or_default())
        );
        self.finish_stop().await;
    }
}

/// `ttl_override`: no override, the configured `idle_ttl` holds.
const TTL_CONFIGURED: u64 = u64::MAX;
/// `ttl_override`: never idle out (a negative `keep_alive`).
const TTL_FOREVER: u64 = u64::MAX - 1;

/// The message of the last Rust panic or Python traceback in a backend's output.
///
/// Rust (1.73 and later) prints `thread '…' panicked at file:line:col:` and the
/// message on the next line(s); earlier versions `thread '…' panicked at 'msg',
/// file:line:col`. A Python traceback ends with the exception line, the first line
/// after `Traceback (most recent call last):` that is not indented (frames are).
fn panic_message(lines: &[String]) -> Option<String> {
    let rust = lines.iter().rposition(|l| l.contains("' panicked at "));
    let python = lines.iter().rposition(|l| {
        l.trim_start()
            .starts_with("Traceback (most recent call last)")
    });
    match (rust, python) {
        (Some(r), p) if p.is_none_or(|p| r > p) => {
            let head = lines[r].trim();
            if !head.ends_with(':') {
                return Some(head.to_string());
            }
            let msg = lines[r + 1..]
                .iter()
                .map(|l| l.trim())
                .take_while(|l| {
                    !l.is_empty() && !l.starts_with("note: ") && !l.starts_with("stack backtrace:")
                })
                .take(3)
                .collect::<Vec<_>>()
                .join(" ");
            Some(if msg.is_empty() {
                head.to_string()
            } else {
                format!("{head} {msg}")
            })
        }
        (_, Some(p)) => lines[p + 1..]
            .iter()
            .find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
            .map(|l| l.trim().to_string()),
        _ => None,
    }
}

/// What a dead backend's last lines say: the last line, and before it the first line
/// of the last few that names an error, when that is a different one. Servers often
/// end with a summary ("exiting due to model loading error") after the cause
/// ("failed to open GGUF file '…' (No such file or directory)").
fn exit_reason(last_output: &[String]) -> Option<String> {
    let short = |l: &str| {
        let l = l.trim();
        match l.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        }
    };
    // A panic or a traceback ends with a backtrace or a summary; its message is the
    // reason, not the last line ("29: _start").
    if let Some(m) = panic_message(last_output) {
        return Some(short(&m));
    }
    let lines: Vec<&String> = last_output
        .iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let last = *lines.last()?;
    let from = lines.len().saturating_sub(10);
    let cause = lines[from..].iter().find(|l| {
        let l = l.to_ascii_lowercase();
        [
            "error",
            "failed",
            "no such file",
            "exception",
            "cannot",
            "out of memory",
        ]
        .iter()
        .any(|w| l.contains(w))
    });
    Some(match cause {
        Some(c) if !std::ptr::eq(*c, last) && c.trim() != last.trim() => {
            format!("{} … {}", short(c), short(last))
        }
        _ => short(last),
    })
}

#[cfg(test)]
mod exit_reason_tests {
    use super::exit_reason;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn a_rust_panic_gives_its_message_not_the_last_backtrace_line() {
        let mut out = lines(
            "INFO loading weights\nthread 'main' panicked at src/engine.rs:42:9:\nKV cache does not fit: need 20 GiB, have 16 GiB\nstack backtrace:",
        );
        for i in 0..30 {
            out.push(format!("  {i:>2}: frame_{i}"));
            out.push("             at ./src/x.rs:1:1".into());
        }
        out.push("  29: _start".into());
        out.push("note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.".into());
        assert_eq!(
            exit_reason(&out).unwrap(),
            "thread 'main' panicked at src/engine.rs:42:9: KV cache does not fit: need 20 GiB, have 16 GiB"
        );
        // Before Rust 1.73 the message was on the same line.
        let old = lines(
            "thread 'tokio-runtime-worker' panicked at 'no model file', src/main.rs:3:5\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        );
        assert_eq!(
            exit_reason(&old).unwrap(),
            "thread 'tokio-runtime-worker' panicked at 'no model file', src/main.rs:3:5"
        );
    }

    #[test]
    fn a_python_traceback_gives_its_exception_line() {
        let out = lines(
            "INFO 05-01 starting\nTraceback (most recent call last):\n  File \"/x/server.py\", line 10, in <module>\n    main()\n  File \"/x/server.py\", line 5, in main\n    raise ValueError(\"max_model_len 32768 exceeds the model's 8192\")\nValueError: max_model_len 32768 exceeds the model's 8192\n[rank0]: destroying process group\nexiting",
        );
        assert_eq!(
            exit_reason(&out).unwrap(),
            "ValueError: max_model_len 32768 exceeds the model's 8192"
        );
    }

    #[test]
    fn the_cause_comes_before_the_summary() {
        let out: Vec<String> = [
            "main: loading model",
            "gguf_init_from_file: failed to open GGUF file '/m/x.gguf' (No such file or directory)",
            "llama_model_load: error loading model: llama_model_loader: failed to load model",
            "main: exiting due to model loading error",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            exit_reason(&out).unwrap(),
            "gguf_init_from_file: failed to open GGUF file '/m/x.gguf' (No such file or directory) … main: exiting due to model loading error"
        );
        assert_eq!(exit_reason(&["ok".into(), "".into()]).unwrap(), "ok");
        assert_eq!(exit_reason(&[]), None);
        let one = vec!["RuntimeError: CUDA out of memory".to_string()];
        assert_eq!(
            exit_reason(&one).unwrap(),
            "RuntimeError: CUDA out of memory"
        );
    }
}
