//! Resilience: a circuit breaker per target and one retry budget for the process.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a breaker lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Every request.
    Closed,
    /// None until the cooldown ends.
    Open,
    /// One trial request; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// For `/health` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_since: Option<Instant> },
}

/// Skips a target after `threshold` consecutive failures, for `cooldown`; then lets
/// one trial through.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this breaker was made with these settings (a reload keeps it then).
    pub fn has_settings(&self, threshold: u32, cooldown: Duration) -> bool {
        self.threshold == threshold.max(1) && self.cooldown == cooldown
    }

    /// Whether a request may go to the target now (taking the trial slot when
    /// half-open).
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut g = self.lock();
        match *g {
            Inner::Closed { .. } => true,
            Inner::Open { until } if now < until => false,
            Inner::Open { .. } => {
                *g = Inner::HalfOpen {
                    trial_since: Some(now),
                };
                true
            }
            // A trial whose request vanished (its client left) frees the slot after
            // another cooldown.
            Inner::HalfOpen {
                trial_since: Some(t),
            } if now.duration_since(t) < self.cooldown => false,
            Inner::HalfOpen { .. } => {
                *g = Inner::HalfOpen {
                    trial_since: Some(now),
                };
                true
            }
        }
    }

    /// Whether `allow` would say yes, without taking a trial slot.
    pub fn would_allow(&self) -> bool {
        let now = Instant::now();
        match *self.lock() {
            Inner::Closed { .. } => true,
            Inner::Open { until } => now >= until,
            Inner::HalfOpen { trial_since } => {
                trial_since.is_none_or(|t| now.duration_since(t) >= self.cooldown)
            }
        }
    }

    /// The target answered.
    pub fn success(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }

    /// The target failed.
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    fn failure_at(&self, now: Instant) {
        let mut g = self.lock();
        *g = match *g {
            Inner::Closed { failures } if failures + 1 < self.threshold => Inner::Closed {
                failures: failures + 1,
            },
            Inner::Open { until } => Inner::Open { until },
            _ => Inner::Open {
                until: now + self.cooldown,
            },
        };
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() < until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted while closed.
    pub fn failures(&self) -> u32 {
        match *self.lock() {
            Inner::Closed { failures } => failures,
            _ => self.threshold,
        }
    }
}

/// Retries allowed on top of first attempts: `ratio` of the requests of the last 10
/// seconds plus 10 per second, so that retries cannot multiply load in an outage.
pub struct RetryBudget {
    ratio: f64,
    inner: Mutex<Window>,
}

const SLOTS: usize = 10;
const MIN_PER_SEC: f64 = 10.0;

struct Window {
    /// (second, requests, retries) per slot.
    slots: [(u64, u64, u64); SLOTS],
    epoch: Instant,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request.
    pub fn new(ratio: f64) -> Self {
        Self {
            ratio,
            inner: Mutex::new(Window {
                slots: [(u64::MAX, 0, 0); SLOTS],
                epoch: Instant::now(),
            }),
        }
    }

    fn with_slot<T>(&self, now: Instant, f: impl FnOnce(&mut Window, usize) -> T) -> T {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let sec = now.saturating_duration_since(w.epoch).as_secs();
        let i = (sec % SLOTS as u64) as usize;
        if w.slots[i].0 != sec {
            w.slots[i] = (sec, 0, 0);
        }
        f(&mut w, i)
    }

    /// The fraction it was made with.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Count a first attempt.
    pub fn request(&self) {
        self.with_slot(Instant::now(), |w, i| w.slots[i].1 += 1);
    }

    /// Take a retry from the budget, if there is one left.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        self.with_slot(now, |w, i| {
            let sec = w.slots[i].0;
            let (mut requests, mut retries) = (0u64, 0u64);
            for &(s, rq, rt) in &w.slots {
                if s != u64::MAX && s + SLOTS as u64 > sec {
                    requests += rq;
                    retries += rt;
                }
            }
            let allowed = MIN_PER_SEC * SLOTS as f64 + self.ratio * requests as f64;
            if (retries as f64) < allowed {
                w.slots[i].2 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_and_closes_after_a_good_trial() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t = Instant::now();
        b.failure_at(t);
        b.failure_at(t);
        assert!(b.allow_at(t));
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure_at(t);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow_at(t + Duration::from_secs(9)));
        // Cooldown over: exactly one trial.
        assert!(b.allow_at(t + Duration::from_secs(10)));
        assert!(!b.allow_at(t + Duration::from_secs(11)));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow_at(t + Duration::from_secs(11)));
    }

    #[test]
    fn a_failed_trial_reopens_and_success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(5));
        let t = Instant::now();
        b.failure_at(t);
        b.success();
        b.failure_at(t);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure_at(t);
        assert!(b.allow_at(t + Duration::from_secs(5)));
        b.failure_at(t + Duration::from_secs(5));
        assert!(!b.allow_at(t + Duration::from_secs(9)));
        assert!(b.allow_at(t + Duration::from_secs(10)));
    }

    #[test]
    fn a_lost_trial_frees_the_slot_after_a_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t = Instant::now();
        b.failure_at(t);
        assert!(b.allow_at(t + Duration::from_secs(5)));
        assert!(!b.allow_at(t + Duration::from_secs(6)));
        assert!(b.allow_at(t + Duration::from_secs(10)));
    }

    #[test]
    fn the_budget_caps_retries() {
        let budget = RetryBudget::new(0.2);
        let t = Instant::now();
        for _ in 0..1000 {
            budget.with_slot(t, |w, i| w.slots[i].1 += 1);
        }
        // 10/s × 10 s + 20% of 1000 = 300 retries, then none.
        let allowed = (0..1000).filter(|_| budget.try_retry_at(t)).count();
        assert_eq!(allowed, 300);
        // Ten seconds later the window has moved on.
        assert!(budget.try_retry_at(t + Duration::from_secs(11)));
    }
}
