//! Request counters exposed at `GET /mock/stats` for tests.
//!
//! The hot path only touches atomics plus one uncontended-in-practice mutex
//! that swaps in the last request (headers and raw body); JSON parsing of
//! that body is deferred until somebody actually asks for the stats.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value};

/// The last model request seen: its headers and raw body.
type LastRequest = (HeaderMap, Bytes);

/// Counters over completion and embedding requests (not `/health`,
/// `/v1/models`, ...).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received at model endpoints, whatever their outcome.
    requests: AtomicU64,
    /// Requests whose response has not finished or been abandoned yet.
    in_flight: AtomicU64,
    /// Responses produced to the end (any status, streams up to `[DONE]`).
    completed: AtomicU64,
    /// Responses dropped before the end, e.g. the client went away
    /// mid-stream.
    cancelled: AtomicU64,
    /// Set-only on the hot path; read by [`Stats::snapshot`].
    last: Mutex<Option<LastRequest>>,
    /// `POST /sleep` calls.
    sleeps: AtomicU64,
    /// `POST /wake_up` calls.
    wakes: AtomicU64,
}

impl Stats {
    /// Records the arrival of a model request and returns its 0-based index
    /// together with the guard that tracks it until its response is done.
    /// The headers are moved in (the request's own, taken by
    /// [`crate::state::Call`]), not copied: a copy per request about doubled
    /// what each header cost the mock.
    pub fn arrive(&'static self, headers: HeaderMap, body: &Bytes) -> (u64, InFlightGuard) {
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlightGuard {
            stats: self,
            done: false,
        };
        // Made outside the lock and the previous value dropped outside it
        // too, so the critical section is a swap.
        let fresh = Some((headers, body.clone()));
        let old = {
            let mut slot = self.last.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *slot, fresh)
        };
        drop(old);
        (index, guard)
    }

    /// Counts a `POST /sleep`.
    pub fn count_sleep(&self) {
        self.sleeps.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a `POST /wake_up`.
    pub fn count_wake(&self) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
    }

    /// The `/mock/stats` document.
    pub fn snapshot(&self) -> Value {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (last_request, last_headers, last_body) = match last {
            Some((headers, body)) => (
                body_json(&body),
                headers_json(&headers),
                Value::String(String::from_utf8_lossy(&body).into_owned()),
            ),
            None => (Value::Null, Value::Object(Map::new()), Value::Null),
        };
        serde_json::json!({
            "pid": std::process::id(),
            "requests": self.requests.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "completed": self.completed.load(Ordering::Relaxed),
            "cancelled": self.cancelled.load(Ordering::Relaxed),
            "last_request": last_request,
            "last_headers": last_headers,
            "last_body": last_body,
            "sleeps": self.sleeps.load(Ordering::Relaxed),
            "wakes": self.wakes.load(Ordering::Relaxed),
        })
    }
}

/// A body as JSON; a body that is not JSON comes back as a (lossy) string
/// so tests can still see what was sent.
fn body_json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Headers as `{lower-case name: value}`; repeated headers are joined with
/// `", "` as HTTP allows.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        // `HeaderName`s are already lower case.
        out.insert(name.as_str().to_owned(), Value::String(joined));
    }
    Value::Object(out)
}

/// Tracks one model request from arrival until its response is finished.
///
/// It lives in the handler future and, for streams, inside the body stream,
/// so when hyper drops either before the end (client disconnect) `Drop`
/// sees `done == false` and counts the request as cancelled.
#[derive(Debug)]
pub struct InFlightGuard {
    /// Where to account.
    stats: &'static Stats,
    /// Set by [`InFlightGuard::complete`].
    done: bool,
}

impl InFlightGuard {
    /// Marks the response as produced in full; the accounting happens on
    /// drop.
    pub fn complete(mut self) {
        self.done = true;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = if self.done {
            &self.stats.completed
        } else {
            &self.stats.cancelled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_accounts_completed_and_cancelled() {
        let stats: &'static Stats = Box::leak(Box::default());
        let mut headers = HeaderMap::new();
        headers.insert("X-Test", "1".parse().expect("valid header"));
        headers.append("x-test", "2".parse().expect("valid header"));
        let (i0, g0) = stats.arrive(headers.clone(), &Bytes::from_static(b"{\"a\":1}"));
        let (i1, g1) = stats.arrive(headers, &Bytes::from_static(b"not json"));
        assert_eq!((i0, i1), (0, 1));
        assert_eq!(stats.snapshot()["in_flight"], 2);
        g0.complete();
        drop(g1);
        let s = stats.snapshot();
        assert_eq!(s["requests"], 2);
        assert_eq!(s["in_flight"], 0);
        assert_eq!(s["completed"], 1);
        assert_eq!(s["cancelled"], 1);
        assert_eq!(s["last_request"], "not json");
        assert_eq!(s["last_headers"]["x-test"], "1, 2");
    }

    #[test]
    fn empty_stats() {
        let stats = Stats::default();
        let s = stats.snapshot();
        assert_eq!(s["last_request"], Value::Null);
        assert_eq!(s["last_headers"], serde_json::json!({}));
        assert_eq!(s["requests"], 0);
    }
}
