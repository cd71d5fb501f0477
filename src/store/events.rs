//! Model events from the fleet's state changes: start requested, ready (with its
//! load time), stopped (with the reason), failed (with the exit status), OOM.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::Instant;

use super::{EventRecord, Store, now_ms};
use crate::fleet::{Change, Fleet, State};

/// Record the events of every instance of the fleet, this configuration's and every
/// reload's, from now on. The fleet tells the store of each state change as it makes
/// it, so none is coalesced or missed: by the time `Fleet::shutdown` returns, the
/// `stopped` events are in the writer's queue, and `Store::close` writes them.
pub fn record(fleet: &Fleet, store: &Store) {
    if !store.enabled() {
        return;
    }
    let store = store.clone();
    // When each model's current start began (for the `ready` event's load time).
    let started: Mutex<HashMap<String, Instant>> = Mutex::default();
    fleet.observe(Box::new(move |c: &Change| {
        let mut started = started.lock().unwrap_or_else(|e| e.into_inner());
        for e in event(c, &mut started) {
            store.event(e);
        }
    }));
}

/// The events one state change makes (none, one, or `oom` and `failed`).
pub(crate) fn event(c: &Change, started: &mut HashMap<String, Instant>) -> Vec<EventRecord> {
    let cur = c.status;
    let ev = |event: &str, reason: Option<String>, detail: Option<String>, load_ms: Option<u64>| {
        EventRecord {
            ts_ms: now_ms(),
            model: c.model.to_string(),
            event: event.into(),
            reason,
            detail,
            load_ms,
        }
    };
    match cur.state {
        State::Starting if c.from != State::Loading => {
            started.insert(c.model.to_string(), cur.since);
            vec![ev("start_requested", None, None, None)]
        }
        State::Ready => {
            let load = started
                .remove(c.model)
                .map(|t| cur.since.saturating_duration_since(t).as_millis() as u64);
            vec![ev("ready", None, None, load)]
        }
        State::Stopped if matches!(c.from, State::Draining | State::Stopping) => {
            let reason = cur.stop_reason.map(|r| r.as_str().to_string());
            vec![ev("stopped", reason, None, None)]
        }
        State::Failed => {
            started.remove(c.model);
            let exit = cur.exit.as_ref().map(ToString::to_string);
            let detail = match (&exit, &cur.last_error) {
                (Some(x), Some(e)) => Some(format!("{x}: {e}")),
                (Some(x), None) => Some(x.clone()),
                (None, e) => e.clone(),
            };
            let reason = if matches!(c.from, State::Starting | State::Loading) {
                "start_failed"
            } else {
                "crash"
            };
            let mut out = Vec::with_capacity(2);
            if detail.as_deref().is_some_and(crate::gpu::oom::is_oom) {
                out.push(ev("oom", Some(reason.into()), detail.clone(), None));
            }
            out.push(ev("failed", Some(reason.into()), detail, None));
            out
        }
        _ => Vec::new(),
    }
}
