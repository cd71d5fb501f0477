//! The response headers llmvisor adds: `x-llmvisor-*` (which route, target and
//! model answered, how long the request queued and waited for a cold start) and
//! OpenAI's `x-ratelimit-*` from the client's quota. Rendered for relayed
//! responses (src/api/openai.rs), cold-start streams (src/api/keepalive.rs) and
//! errors (src/api/error.rs).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::openai::Call;
use crate::auth::{Quota, reset_text};

/// `x-ratelimit-*` headers as OpenAI sends them.
pub fn quota_headers(q: &Quota, h: &mut HeaderMap) {
    for (kind, v) in [("requests", q.requests), ("tokens", q.tokens)] {
        if let Some((limit, remaining, reset)) = v {
            let mut put = |name: String, value: String| {
                if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(&value))
                {
                    h.insert(n, v);
                }
            };
            put(format!("x-ratelimit-limit-{kind}"), limit.to_string());
            put(
                format!("x-ratelimit-remaining-{kind}"),
                remaining.to_string(),
            );
            put(format!("x-ratelimit-reset-{kind}"), reset_text(reset));
        }
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"))
}

/// What the `x-llmvisor-*` headers say about the target that answered.
pub(super) struct Info<'a> {
    pub label: &'a str,
    pub instance: Option<&'a str>,
    pub queued: Option<Duration>,
    pub cold_start: Option<Duration>,
}

/// `x-llmvisor-*` and rate-limit headers.
pub(super) fn route_headers(call: &Call, served: Option<&Info<'_>>, h: &mut HeaderMap) {
    h.insert(
        HeaderName::from_static("x-llmvisor-route"),
        header_value(&call.route),
    );
    if let Some(s) = served {
        h.insert(
            HeaderName::from_static("x-llmvisor-target"),
            header_value(s.label),
        );
        if let Some(i) = s.instance {
            h.insert(HeaderName::from_static("x-llmvisor-model"), header_value(i));
        }
        if let Some(q) = s.queued {
            h.insert(
                HeaderName::from_static("x-llmvisor-queue-ms"),
                HeaderValue::from(q.as_millis() as u64),
            );
        }
        if let Some(c) = s.cold_start {
            h.insert(
                HeaderName::from_static("x-llmvisor-cold-start-ms"),
                HeaderValue::from(c.as_millis() as u64),
            );
        }
    }
    if let Some(q) = &call.quota {
        quota_headers(q, h);
    }
}
