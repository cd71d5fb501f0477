//! The GPU side of an instance: placement before a start (evicting idle models,
//! waiting for room), vLLM sleep and wake, and out-of-memory step-down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Instance, Scope};
use crate::config::{Backend, IdleAction, Kind};
use crate::fleet::placer::Board;
use crate::fleet::{State, StopReason, Transition};
use crate::gpu::oom;
use crate::gpu::placement::{self, Activity, Decision, Holder, Need};
use crate::units::UnitSpec;

/// Where a run of the model was placed.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// Device indices.
    pub gpus: Vec<u32>,
    /// Their UUIDs (NVML only).
    pub uuids: Vec<String>,
    /// Their device minor numbers (NVML only).
    pub minors: Vec<u32>,
}

/// Settings lowered by out-of-memory failures (until a reload restores them).
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Effective `max_concurrent`.
    pub max_concurrent: u32,
    /// Effective vLLM `--gpu-memory-utilization` (`None`: as configured).
    pub gpu_memory_utilization: Option<f64>,
    /// Out-of-memory failures seen.
    pub ooms: u32,
    /// Why the values are lowered.
    pub reason: Option<String>,
    /// When the last one happened.
    pub at: Option<SystemTime>,
}

/// vLLM's own default for `--gpu-memory-utilization`.
const VLLM_DEFAULT_FRACTION: f64 = oom::VLLM_DEFAULT_GPU_MEMORY_UTILIZATION;

/// How a placement attempt ended without a placement.
pub(super) enum NotPlaced {
    /// The start or wake it was for is no longer current.
    Superseded,
    /// No room within the time allowed: what holds the memory.
    NoRoom(String),
}

impl Instance {
    /// Effective settings after out-of-memory step-downs.
    pub fn tuning(&self) -> Tuning {
        self.tuning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configured vLLM GPU memory fraction, if this is a vLLM model.
    pub fn configured_fraction(&self) -> Option<f64> {
        match &self.spec.backend {
            Backend::Vllm {
                gpu_memory_utilization,
                ..
            } => *gpu_memory_utilization,
            _ => None,
        }
    }

    /// Whether out-of-memory failures lowered its settings.
    pub fn is_tuned(&self) -> bool {
        self.tuning().ooms > 0
    }

    /// The GPUs the current (or sleeping) run was placed on.
    pub fn placed_gpus(&self) -> Option<Vec<u32>> {
        self.placed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.gpus.clone())
    }

    pub(super) fn set_placed(&self, p: Option<Placed>) {
        let freed = p.is_none();
        *self.placed.lock().unwrap_or_else(|e| e.into_inner()) = p;
        if freed {
            self.ctx.board.changed.notify_waiters();
        }
    }

    /// What this instance holds on the GPUs, for placement.
    pub(crate) fn holder(&self) -> Option<Holder> {
        let gpus = self.placed_gpus()?;
        let activity = match self.state() {
            State::Starting | State::Loading | State::Waking => Activity::Starting,
            State::Ready if self.admitted.load(Ordering::SeqCst) == 0 => Activity::Idle,
            State::Ready | State::Draining | State::Stopping => Activity::Busy {
                in_flight: self.in_flight(),
            },
            State::Sleeping => Activity::Sleeping,
            State::Stopped | State::Failed => return None,
        };
        Some(Holder {
            model: self.spec.name.clone(),
            gpus,
            vram: self.spec.gpu.vram,
            activity,
            priority: self.spec.gpu.priority,
            idle_since: self.idle_since_ms.load(Ordering::SeqCst),
        })
    }

    /// The unit to start: the configured one, placed on `placed` and with any
    /// out-of-memory step-down applied. Its spec hash stays the configuration's, so
    /// a placed unit is still recognised (and adopted) as this model's.
    pub(super) fn unit_for(&self, placed: Option<&Placed>) -> UnitSpec {
        let t = self.tuning();
        let mut spec = self.spec.clone();
        spec.max_concurrent = t.max_concurrent;
        if let (
            Backend::Vllm {
                gpu_memory_utilization,
                ..
            },
            Some(f),
        ) = (&mut spec.backend, t.gpu_memory_utilization)
        {
            *gpu_memory_utilization = Some(f);
        }
        if let Some(p) = placed {
            spec.limits.gpus = p.gpus.clone();
            spec.limits.gpu_uuids = p.uuids.clone();
            spec.limits.gpu_minors = p.minors.clone();
        }
        if spec == self.spec {
            return self.unit.clone();
        }
        let mut u = crate::units::render(&spec);
        u.spec_hash = self.unit.spec_hash.clone();
        u.env
            .insert("LLMVISOR_SPEC_HASH".into(), u.spec_hash.clone());
        u.properties = crate::units::properties::properties(&spec, &u);
        u
    }

    /// Find GPU(s) with room, stopping idle models for it, waiting (until
    /// `deadline`) while busy ones hold the memory. `still` says whether the start
    /// or wake this is for is still current. `pinned_to` overrides the configured
    /// GPUs (a wake goes back where it slept).
    pub(super) async fn place(
        self: &Arc<Self>,
        still: impl Fn(&Self) -> bool,
        pinned_to: Option<Vec<u32>>,
        deadline: Instant,
    ) -> Result<Option<Placed>, NotPlaced> {
        if self.spec.gpu.count == 0 {
            return Ok(None);
        }
        let board = &self.ctx.board;
        let pinned =
            pinned_to.or_else(|| (!self.spec.gpu.any).then(|| self.spec.limits.gpus.clone()));
        if !board.inventory.available() {
            return match pinned {
                Some(gpus) => {
                    let p = Placed {
                        gpus,
                        uuids: Vec::new(),
                        minors: Vec::new(),
                    };
                    self.set_placed(Some(p.clone()));
                    Ok(Some(p))
                }
                None => Err(NotPlaced::NoRoom(
                    "gpus = \"any\" needs a GPU inventory and this host has none (no NVIDIA driver; [gpu] simulate declares GPUs for tests)".into(),
                )),
            };
        }
        let need = Need {
            model: self.spec.name.clone(),
            count: self.spec.gpu.count,
            vram: self.spec.gpu.vram,
            pinned,
        };
        let mut last = String::new();
        // Bounded: every round either stops a model or waits up to 500 ms.
        for _ in 0..100_000 {
            if !still(self) {
                return Err(NotPlaced::Superseded);
            }
            let changed = board.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut progress = false;
            {
                let _decide = board.lock.lock().await;
                if !still(self) {
                    return Err(NotPlaced::Superseded);
                }
                let snap = board.inventory.snapshot();
                let views = Board::views(&snap);
                let holders = board.holders(Some(self));
                let hs: Vec<Holder> = holders.iter().map(|(_, h)| h.clone()).collect();
                match placement::place(&need, &views, &hs) {
                    Decision::Place { gpus, evict } if evict.is_empty() => {
                        let by_index = |i: &u32| snap.gpus.iter().find(|g| g.index == *i);
                        let real = !board.inventory.is_simulated();
                        let uuids: Vec<String> = if real {
                            gpus.iter()
                                .filter_map(|i| by_index(i).map(|g| g.uuid.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        let minors: Vec<u32> = if real {
                            gpus.iter()
                                .filter_map(|i| by_index(i).and_then(|g| g.minor))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        let p = Placed {
                            gpus,
                            uuids,
                            minors,
                        };
                        tracing::info!(model = %self.spec.name, gpus = ?p.gpus, "placed");
                        self.set_placed(Some(p.clone()));
                        return Ok(Some(p));
                    }
                    Decision::Place { evict, .. } => {
                        for name in &evict {
                            if let Some((inst, _)) = holders.iter().find(|(i, _)| i.name() == name)
                                && inst.evict(&self.spec.name).await
                            {
                                progress = true;
                            }
                        }
                        last = format!("waiting for {} to stop to make room", evict.join(", "));
                    }
                    Decision::NoRoom(msg) => last = msg,
                }
            }
            if progress {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(500));
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Err(NotPlaced::NoRoom(last))
    }

    /// Stop this model to make room for `for_model`, if it is idle (or asleep).
    /// Returns whether it stopped.
    pub(super) async fn evict(self: &Arc<Self>, for_model: &str) -> bool {
        let Some(from) = self.leave_idle(Transition::Evict, Some(StopReason::Evicted)) else {
            return false;
        };
        tracing::info!(
            model = %self.spec.name,
            was = from.as_str(),
            "stopping to make room on the GPU for {for_model}"
        );
        self.ctx
            .metrics
            .gpu
            .evictions
            .get_or_create(&self.ctx.model_label(&self.spec.name))
            .inc();
        self.finish_stop().await;
        true
    }

    /// A start found no room within its time: back to Stopped, the reason kept for
    /// the requests that waited.
    pub(super) fn refuse(&self, generation: u64, msg: String) {
        let done = self
            .apply(
                Transition::Refused,
                |s| s.generation == generation,
                |s| {
                    s.last_error = Some(format!("no GPU room: {msg}"));
                    s.refused = Some(msg.clone());
                    s.start_deadline = None;
                },
            )
            .is_ok();
        if done {
            tracing::warn!(model = %self.spec.name, "cannot start, no GPU room: {msg}");
        }
    }

    /// The unit failed with a CUDA out-of-memory line: lower `max_concurrent` one
    /// step (halved, down to `min_concurrent`) and vLLM's memory fraction by 5
    /// points (down to `min_gpu_memory_utilization`) for the next start.
    pub(super) fn on_oom(&self, line: &str) {
        let configured_fraction = self.configured_fraction();
        let (before, after) = {
            let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
            let before = t.clone();
            t.ooms += 1;
            t.max_concurrent =
                oom::step_concurrency(t.max_concurrent, self.spec.gpu.min_concurrent);
            if self.spec.kind == Kind::Vllm {
                let cur = t
                    .gpu_memory_utilization
                    .or(configured_fraction)
                    .unwrap_or(VLLM_DEFAULT_FRACTION);
                t.gpu_memory_utilization = Some(oom::step_fraction(
                    cur,
                    self.spec.gpu.min_gpu_memory_utilization,
                ));
            }
            let mut shown: String = line.chars().take(240).collect();
            if shown.len() < line.len() {
                shown.push('…');
            }
            t.reason = Some(format!(
                "CUDA out of memory ({} time{}): {shown}",
                t.ooms,
                if t.ooms == 1 { "" } else { "s" }
            ));
            t.at = Some(SystemTime::now());
            (before, t.clone())
        };
        self.gate.resize(
            before.max_concurrent as usize,
            after.max_concurrent as usize,
        );
        self.ctx
            .metrics
            .gpu
            .ooms
            .get_or_create(&self.ctx.model_label(&self.spec.name))
            .inc();
        let fraction = match (
            before.gpu_memory_utilization.or(configured_fraction),
            after.gpu_memory_utilization,
        ) {
            (b, Some(a)) if self.spec.kind == Kind::Vllm => format!(
                ", gpu_memory_utilization {:.2} → {a:.2}",
                b.unwrap_or(VLLM_DEFAULT_FRACTION)
            ),
            _ => String::new(),
        };
        tracing::warn!(
            model = %self.spec.name,
            "CUDA out of memory: the next start uses max_concurrent {} → {}{fraction}",
            before.max_concurrent,
            after.max_concurrent
        );
    }

    /// Idle with `idle_action = "sleep"`: `POST /sleep?level=1`, state Sleeping (its
    /// GPU memory counts as free). A backend that cannot sleep is stopped instead.
    pub(super) async fn idle_sleep(self: &Arc<Self>) {
        let _one = self.sleep_lock.lock().await;
        if self.leave_idle(Transition::Sleep, None).is_none() {
            return;
        }
        let t0 = Instant::now();
        let r = self
            .ctx
            .health
            .post(self.spec.port, "/sleep?level=1", Duration::from_secs(120))
            .await;
        match r {
            Ok(200) => {
                tracing::info!(
                    model = %self.spec.name,
                    "idle for {}; asleep after {:.2} s (weights in host memory, GPU memory freed)",
                    humantime::format_duration(self.idle_ttl().unwrap_or_default()),
                    t0.elapsed().as_secs_f64()
                );
                self.ctx
                    .metrics
                    .gpu
                    .sleeps
                    .get_or_create(&self.ctx.model_label(&self.spec.name))
                    .inc();
                self.ctx.board.changed.notify_waiters();
            }
            other => {
                let why = match other {
                    Ok(code) => format!("POST /sleep answered {code}"),
                    Err(e) => format!("POST /sleep failed: {e}"),
                };
                tracing::warn!(model = %self.spec.name, "cannot sleep ({why}); stopping instead");
                let stop = self
                    .apply(
                        Transition::SleepFailed,
                        |_| true,
                        |s| s.stop_reason = Some(StopReason::Idle),
                    )
                    .is_ok();
                if stop {
                    self.finish_stop().await;
                }
            }
        }
    }

    /// A request for a sleeping model: Sleeping → Waking, and the wake task.
    pub(super) fn begin_wake(self: &Arc<Self>) -> bool {
        let start_timeout = self.spec.start_timeout;
        let mut generation = None;
        let _ = self.apply(
            Transition::Wake,
            |_| !self.is_retired(),
            |s| {
                s.generation += 1;
                s.refused = None;
                s.start_deadline = Some(Instant::now() + start_timeout);
                generation = Some(s.generation);
            },
        );
        if let Some(g) = generation {
            tokio::spawn(self.clone().run_wake(g));
        }
        generation.is_some()
    }

    async fn run_wake(self: Arc<Self>, generation: u64) {
        let _one = self.sleep_lock.lock().await;
        let t0 = Instant::now();
        let current = |s: &Self| s.is_current(generation, State::Waking);
        let deadline = t0
            + self
                .spec
                .start_timeout
                .saturating_sub(Duration::from_millis(250));
        let pinned = self.placed_gpus();
        match self.place(current, pinned, deadline).await {
            Ok(_) => {}
            Err(NotPlaced::Superseded) => return,
            Err(NotPlaced::NoRoom(msg)) => {
                // It stays asleep; the requests that waited get the reason.
                let _ = self.apply(
                    Transition::WakeRefused,
                    |s| s.generation == generation,
                    |s| {
                        s.refused = Some(msg.clone());
                        s.start_deadline = None;
                    },
                );
                tracing::warn!(model = %self.spec.name, "cannot wake, no GPU room: {msg}");
                return;
            }
        }
        let r = self
            .ctx
            .health
            .post(self.spec.port, "/wake_up", self.spec.start_timeout)
            .await;
        if r == Ok(200) {
            let ready = self
                .apply(
                    Transition::Woken,
                    |s| s.generation == generation,
                    |s| s.start_deadline = None,
                )
                .is_ok();
            if ready {
                let took = t0.elapsed();
                let label = self.ctx.model_label(&self.spec.name);
                self.ctx.metrics.gpu.wakes.get_or_create(&label).inc();
                self.ctx
                    .metrics
                    .gpu
                    .wake_duration
                    .get_or_create(&label)
                    .observe(took.as_secs_f64());
                tracing::info!(model = %self.spec.name, "awake after {:.3} s", took.as_secs_f64());
                self.idle_since_ms
                    .store(self.ctx.now_ms(), Ordering::SeqCst);
                self.idle.notify_one();
            }
            return;
        }
        let why = match r {
            Ok(code) => format!("POST /wake_up answered {code}"),
            Err(e) => format!("POST /wake_up failed: {e}"),
        };
        tracing::warn!(model = %self.spec.name, "cannot wake ({why}); restarting it cold");
        let _ = self
            .ctx
            .manager
            .stop(&self.unit.unit, self.spec.stop_timeout)
            .await;
        let start_timeout = self.spec.start_timeout;
        let mut next = None;
        let _ = self.apply(
            Transition::WakeCold,
            |s| s.generation == generation,
            |s| {
                s.invocation = None;
                s.pending_exit = None;
                s.generation += 1;
                s.start_deadline = Some(Instant::now() + start_timeout);
                next = Some(s.generation);
            },
        );
        self.set_placed(None);
        if let Some(g) = next {
            tokio::spawn(self.clone().run_start(g, Duration::ZERO));
        }
    }

    /// Whether the idle action is to sleep.
    pub(super) fn sleeps_when_idle(&self) -> bool {
        self.spec.gpu.idle_action == IdleAction::Sleep
    }

    /// Record a failure and free the placement.
    pub(super) fn fail_and_free(&self, scope: Scope<'_>, reason: String) {
        if self.fail(scope, reason, None) {
            self.set_placed(None);
        }
    }
}
