//! The one place a finished request is accounted, answered or refused: the metrics,
//! the usage store and the request log line.

use std::time::{Duration, Instant};

use axum::http::HeaderValue;

use super::App;
use crate::proxy::Tapped;
use crate::store::RequestRecord;

/// The status recorded for a request whose client went away (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// How one request ended.
#[derive(Default)]
pub struct Ending {
    /// What the response tap found (usage, first byte).
    pub tapped: Tapped,
    /// Time waiting for a slot.
    pub queued: Option<Duration>,
    /// Time waiting for the model to start.
    pub cold_start: Option<Duration>,
    /// The error code, if it failed.
    pub error: Option<String>,
    /// USD per million (prompt, completion) tokens of the provider that served.
    pub prices: Option<(f64, f64)>,
}

impl Ending {
    /// An ending with only an error code (or none).
    pub fn error(error: Option<String>) -> Self {
        Self {
            error,
            ..Self::default()
        }
    }
}

/// The error code of a status relayed from a target (`client_closed` for 499).
pub fn status_error(status: u16) -> Option<String> {
    match status {
        CLIENT_CLOSED => Some("client_closed".to_string()),
        s if s >= 400 => Some(format!("upstream_{s}")),
        _ => None,
    }
}

/// Who asked for what, when: the fields every request's account has.
pub struct Account<'a> {
    /// Metrics and the store.
    pub app: &'a App,
    /// `x-request-id`.
    pub request_id: &'a HeaderValue,
    /// The client's name (`-` before the key was checked).
    pub client: &'a str,
    /// The public name asked for (`-` before the body was read).
    pub route: &'a str,
    /// API endpoint.
    pub endpoint: &'static str,
    /// Arrival.
    pub started: Instant,
    /// Unix milliseconds at arrival.
    pub ts_ms: i64,
    /// A streaming request.
    pub stream: bool,
}

impl Account<'_> {
    /// Account one finished request with `status`, served by `target` (`-` for none).
    pub fn record(&self, target: &str, status: u16, end: Ending) {
        let total = self.started.elapsed();
        let ttft = end
            .tapped
            .first_byte
            .map(|t| t.into_std().saturating_duration_since(self.started));
        let usage = end.tapped.usage;
        self.app.metrics.observe_finished(
            &crate::telemetry::metrics::Finished {
                route: self.route,
                target,
                client: self.client,
                endpoint: self.endpoint,
                status,
            },
            total.as_secs_f64(),
            ttft.map(|t| t.as_secs_f64()),
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        );
        let cost = match (end.prices, usage) {
            (Some((pi, po)), Some(u)) => {
                Some((u.prompt_tokens as f64 * pi + u.completion_tokens as f64 * po) / 1e6)
            }
            _ => None,
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        tracing::info!(
            request_id = self.request_id.to_str().unwrap_or("-"),
            client = %self.client,
            route = %self.route,
            model = %target,
            endpoint = self.endpoint,
            status,
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            queue_ms = ms(end.queued),
            cold_start_ms = ms(end.cold_start),
            ttft_ms = ms(ttft),
            latency_ms = total.as_millis() as u64,
            error = end.error.as_deref(),
            "request"
        );
        // Building the record costs a few allocations: only when it is kept.
        if !self.app.store.enabled() {
            return;
        }
        self.app.store.request(RequestRecord {
            ts_ms: self.ts_ms,
            request_id: self.request_id.to_str().unwrap_or("-").to_string(),
            client: self.client.to_string(),
            route: self.route.to_string(),
            target: target.to_string(),
            endpoint: self.endpoint.to_string(),
            status,
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            queue_ms: ms(end.queued),
            cold_start_ms: ms(end.cold_start),
            ttft_ms: ms(ttft),
            total_ms: total.as_millis() as u64,
            error: end.error,
            cost_usd: cost,
            stream: self.stream,
        });
    }
}
