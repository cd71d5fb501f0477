//! Model events from the fleet's state changes: start requested, ready (with its
//! load time), stopped (with the reason), failed (with the exit status), OOM.

use std::sync::{Arc, Mutex, Weak};
use tokio::time::Instant;

use super::{EventRecord, Store, now_ms};
use crate::fleet::{Fleet, Instance, State};

/// Instances already followed, each with the `since` of the last status its
/// follower has handled.
#[derive(Default)]
pub struct Watched(Mutex<Vec<(Weak<Instance>, Seen)>>);

/// The `since` of the last status a follower handled.
type Seen = Arc<Mutex<Option<Instant>>>;

impl Watched {
    /// Whether every follower has handled the current status of its instance.
    pub fn caught_up(&self) -> bool {
        let w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.iter().all(|(inst, seen)| {
            inst.upgrade().is_none_or(|i| {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) == Some(i.status().since)
            })
        })
    }
}

/// Follow every instance of the fleet not followed yet (at start and after each
/// reload). A follower ends with its instance.
pub fn watch_fleet(fleet: &Fleet, store: &Store) {
    if !store.enabled() {
        return;
    }
    let mut w = store.watched.0.lock().unwrap_or_else(|e| e.into_inner());
    w.retain(|(i, _)| i.strong_count() > 0);
    for inst in fleet.instances() {
        if w.iter()
            .any(|(x, _)| std::ptr::eq(x.as_ptr(), Arc::as_ptr(&inst)))
        {
            continue;
        }
        let seen = Seen::default();
        w.push((Arc::downgrade(&inst), seen.clone()));
        tokio::spawn(follow(
            inst.name().to_string(),
            inst.subscribe_status(),
            store.clone(),
            seen,
        ));
    }
}

async fn follow(
    model: String,
    mut rx: tokio::sync::watch::Receiver<crate::fleet::Status>,
    store: Store,
    seen: Seen,
) {
    let mut prev = rx.borrow_and_update().clone();
    let mark = |s: &crate::fleet::Status| {
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.since);
    };
    mark(&prev);
    let mut started_at = None;
    while rx.changed().await.is_ok() {
        let cur = rx.borrow_and_update().clone();
        if cur.state == prev.state {
            mark(&cur);
            prev = cur;
            continue;
        }
        let ev = |event: &str,
                  reason: Option<String>,
                  detail: Option<String>,
                  load_ms: Option<u64>| EventRecord {
            ts_ms: now_ms(),
            model: model.clone(),
            event: event.into(),
            reason,
            detail,
            load_ms,
        };
        match cur.state {
            State::Starting if !matches!(prev.state, State::Loading) => {
                started_at = Some(cur.since);
                store.event(ev("start_requested", None, None, None));
            }
            State::Ready => {
                let load = started_at
                    .take()
                    .map(|t| cur.since.saturating_duration_since(t).as_millis() as u64);
                store.event(ev("ready", None, None, load));
            }
            State::Stopped if matches!(prev.state, State::Draining | State::Stopping) => {
                let reason = cur.stop_reason.map(|r| r.as_str().to_string());
                store.event(ev("stopped", reason, None, None));
            }
            State::Failed => {
                let exit = cur.exit.as_ref().map(ToString::to_string);
                let detail = match (&exit, &cur.last_error) {
                    (Some(x), Some(e)) => Some(format!("{x}: {e}")),
                    (Some(x), None) => Some(x.clone()),
                    (None, e) => e.clone(),
                };
                let reason = if matches!(prev.state, State::Starting | State::Loading) {
                    "start_failed"
                } else {
                    "crash"
                };
                if detail.as_deref().is_some_and(crate::gpu::oom::is_oom) {
                    store.event(ev("oom", Some(reason.into()), detail.clone(), None));
                }
                store.event(ev("failed", Some(reason.into()), detail, None));
                started_at = None;
            }
            _ => {}
        }
        mark(&cur);
        prev = cur;
    }
}
