//! Turning a lazily generated sequence of frames into a paced HTTP body.
//!
//! The protocol modules produce plain iterators of [`Frame`]s (pure and
//! unit-testable); [`paced_body`] adds the per-token delay and the
//! in-flight accounting and hands hyper one `Bytes` per event, so every
//! token goes out as its own write instead of being buffered.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header;
use serde::Serialize;

use crate::stats::InFlightGuard;

/// One encoded event (SSE event or NDJSON line).
#[derive(Clone, Debug)]
pub struct Frame {
    /// Wire bytes of the event, terminator included.
    pub data: Bytes,
    /// A generated token: the token delay is slept before sending it.
    pub token: bool,
    /// The final frame: once it is handed to hyper the response counts as
    /// completed.
    pub last: bool,
}

impl Frame {
    /// A frame that is neither a token nor the last one.
    pub fn plain(data: Bytes) -> Self {
        Self {
            data,
            token: false,
            last: false,
        }
    }

    /// A token frame.
    pub fn token(data: Bytes) -> Self {
        Self {
            data,
            token: true,
            last: false,
        }
    }

    /// The terminating frame.
    pub fn last(data: Bytes) -> Self {
        Self {
            data,
            token: false,
            last: true,
        }
    }
}

/// Serialises `value` into `prefix` + JSON + `suffix`.
fn framed<T: Serialize>(prefix: &[u8], value: &T, suffix: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(prefix);
    // Writing plain structs of strings and numbers into a Vec cannot fail;
    // should it ever, an empty object keeps the stream well-formed.
    if serde_json::to_writer(&mut buf, value).is_err() {
        buf.truncate(prefix.len());
        buf.extend_from_slice(b"{}");
    }
    buf.extend_from_slice(suffix);
    Bytes::from(buf)
}

/// A server-sent event `data: {json}\n\n`.
pub fn sse<T: Serialize>(value: &T) -> Bytes {
    framed(b"data: ", value, b"\n\n")
}

/// The OpenAI end-of-stream marker.
pub fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// One NDJSON line `{json}\n`.
pub fn ndjson<T: Serialize>(value: &T) -> Bytes {
    framed(b"", value, b"\n")
}

/// A streaming body that yields `frames` one by one, sleeping `delay` before
/// each token frame, and settles `guard` (completed when the last frame goes
/// out, cancelled if hyper drops the body earlier). With `stall_after`, it
/// goes silent for good before the token after that many.
pub fn paced_body<I>(
    frames: I,
    delay: Duration,
    stall_after: Option<u64>,
    guard: InFlightGuard,
) -> Body
where
    I: Iterator<Item = Frame> + Send + 'static,
{
    let stream = futures_util::stream::unfold(
        (frames, Some(guard), 0u64),
        move |(mut frames, mut guard, mut tokens)| async move {
            let Some(frame) = frames.next() else {
                // A source without a `last` frame still ends cleanly.
                if let Some(g) = guard.take() {
                    g.complete();
                }
                return None;
            };
            if frame.token {
                if stall_after.is_some_and(|n| tokens >= n) {
                    std::future::pending::<()>().await;
                }
                tokens += 1;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            if frame.last
                && let Some(g) = guard.take()
            {
                g.complete();
            }
            Some((Ok::<_, Infallible>(frame.data), (frames, guard, tokens)))
        },
    );
    Body::from_stream(stream)
}

/// A `200` streaming response with `content_type`.
pub fn streaming_response(content_type: &'static str, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Proxies must not buffer a token stream.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Sleeps `n` token delays at once (non-streaming responses).
pub async fn sleep_tokens(delay: Duration, n: u64) {
    if delay.is_zero() || n == 0 {
        return;
    }
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    tokio::time::sleep(delay.checked_mul(n).unwrap_or(Duration::MAX)).await;
}
