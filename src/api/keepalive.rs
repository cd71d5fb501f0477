//! Streams that wait for a cold start: the client gets its 200 and `: loading`
//! comments at once, then the target's stream relayed through `proxy::Relay`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::ApiError;
use super::account::{CLIENT_CLOSED, Ending};
use super::headers::route_headers;
use super::openai::{Call, finisher};
use crate::proxy::{Relay, Tap};
use crate::router::dispatch::Served;

type Attempt = std::pin::Pin<Box<dyn Future<Output = Result<Served, (String, ApiError)>> + Send>>;

/// A streaming request that outlasted the first keep-alive interval while its model
/// starts: answer 200 with an SSE stream now, send `: loading` comments until a
/// target answers (the comments carry no content, so trying a fallback is still
/// invisible to the client), then relay that target's stream or an error event.
pub(super) fn keepalive_stream<F>(call: Arc<Call>, attempt: std::pin::Pin<Box<F>>) -> Response
where
    F: Future<Output = Result<Served, (String, ApiError)>> + Send + 'static,
{
    let attempt: Attempt = attempt;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let c = call.clone();
    tokio::spawn(async move {
        let call = c;
        let interval = call.app.settings.server.stream_keepalive_interval.0;
        let mut attempt = attempt;
        let comment = || {
            Bytes::from(format!(
                ": loading {} ({} s)\n\n",
                call.route,
                call.started.elapsed().as_secs()
            ))
        };
        let mut next = tokio::time::Instant::now();
        let served = loop {
            tokio::select! {
                r = &mut attempt => break r,
                _ = tokio::time::sleep_until(next) => {
                    if tx.send(comment()).await.is_err() {
                        call.observe("-", CLIENT_CLOSED);
                        return;
                    }
                    next += interval;
                }
                _ = tx.closed() => {
                    call.observe("-", CLIENT_CLOSED);
                    return;
                }
            }
        };
        let served = match served {
            Ok(s) => s,
            Err((label, e)) => return stream_error(&call, &tx, &label, e).await,
        };
        let label = served.label.clone();
        let status = served.resp.status();
        if !status.is_success() {
            // The target refused; pass its error on as an event (bounded read).
            let body =
                tokio::time::timeout(Duration::from_secs(10), served.resp.into_body().collect())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
            let event = if body.len() < 64 << 10
                && serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|v| v.get("error").is_some())
            {
                let mut b = BytesMut::from(&b"data: "[..]);
                b.extend_from_slice(&body);
                b.extend_from_slice(b"\n\n");
                b.freeze()
            } else {
                crate::proxy::sse_error(
                    &format!("The backend answered {status}."),
                    "server_error",
                    "backend_error",
                )
            };
            call.observe(&label, status.as_u16());
            let _ = tx.send(event).await;
            return;
        }
        // The same relay as a response that did not wait: the idle timeout, the
        // usage tap, the error event and the accounting are `proxy::Relay`'s.
        let Served {
            resp,
            hold,
            queued,
            cold_start,
            prices,
            ..
        } = served;
        let end = Ending {
            queued,
            cold_start,
            prices,
            ..Ending::default()
        };
        let on_end = finisher(call.clone(), label.clone(), status, hold, end);
        let mut relay = Relay::new(
            resp.into_body(),
            call.app.upstream.idle_timeout(),
            true,
            label,
            Tap::new(true, call.inject_usage),
            on_end,
        );
        loop {
            tokio::select! {
                frame = relay.frame() => match frame {
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data()
                            && !data.is_empty()
                            && tx.send(data).await.is_err()
                        {
                            break;
                        }
                    }
                    // The relay has ended (and accounted) the response.
                    Some(Err(_)) | None => break,
                },
                _ = tx.closed() => break,
            }
        }
        // A relay dropped before its end counts the client as gone.
        drop(relay);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    route_headers(&call, None, h);
    resp.into_response()
}

async fn stream_error(call: &Call, tx: &mpsc::Sender<Bytes>, label: &str, e: ApiError) {
    call.fail(label, &e);
    tracing::warn!(route = %call.route, "stream ended with an error: {e}");
    let _ = tx.send(e.sse_event()).await;
}
