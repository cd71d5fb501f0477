//! The forwarding endpoints (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/rerank`): read the body, find the model, wait for a slot,
//! relay the backend's answer as it comes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{ApiError, App};
use crate::fleet::{FleetError, Instance, Lease, State as ModelState};
use crate::proxy::{Outcome, Relay};

/// The status recorded for a request whose client went away (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// Response headers that belong to one hop and are not relayed.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The fields of a request body llmvisor looks at; everything else passes untouched.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
}

/// A request ready to be sent: its model found, its body rewritten.
struct Prepared {
    instance: Arc<Instance>,
    body: Bytes,
    stream: bool,
}

fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat/completions",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        "/v1/rerank" => "rerank",
        _ => "other",
    }
}

/// Handler of every forwarding endpoint.
pub async fn forward(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let endpoint = endpoint_of(parts.uri.path());
    let prepared = match prepare(&app, &parts.headers, body).await {
        Ok(p) => p,
        Err((model, e)) => return fail(&app, &model, endpoint, started, e),
    };
    let inst = prepared.instance.clone();
    let mut unanswered = Unanswered {
        app: &app,
        model: inst.name(),
        endpoint,
        started,
        armed: true,
    };
    let resp = dispatch(app.clone(), parts, prepared, started, endpoint).await;
    unanswered.armed = false;
    resp
}

/// Counts a request whose client went away before a response began (while it
/// waited for a start, a slot or the backend's headers): the handler's future is
/// dropped, and so is this guard, still armed.
struct Unanswered<'a> {
    app: &'a App,
    model: &'a str,
    endpoint: &'static str,
    started: Instant,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            let secs = self.started.elapsed().as_secs_f64();
            self.app
                .metrics
                .observe_request(self.model, self.endpoint, CLIENT_CLOSED, secs);
            tracing::debug!(
                model = self.model,
                "client went away before the response began"
            );
        }
    }
}

/// Wait for a slot (keeping a streaming client informed during a cold start), then
/// send to the backend.
async fn dispatch(
    app: Arc<App>,
    parts: Parts,
    prepared: Prepared,
    started: Instant,
    endpoint: &'static str,
) -> Response {
    let inst = prepared.instance.clone();
    let acquire = {
        let (inst, app) = (inst.clone(), app.clone());
        async move {
            match inst.acquire().await {
                // A reload replaced the model while this request waited: once more,
                // with the instance now configured under that name.
                Err(FleetError::Replaced { .. }) if !app.fleet.shutting_down() => {
                    match app.fleet.get(inst.name()) {
                        Some(next) if !next.is_retired() => next.acquire().await,
                        _ => Err(FleetError::Replaced {
                            model: inst.name().to_string(),
                        }),
                    }
                }
                r => r,
            }
        }
    };
    let keepalive = &app.settings.server;
    let lease =
        if prepared.stream && keepalive.stream_keepalive && inst.state() != ModelState::Ready {
            // Answer normally if the model is ready soon; otherwise commit to a 200 SSE
            // stream and keep the client informed while the model loads.
            let mut acquire = Box::pin(acquire);
            tokio::select! {
                biased;
                r = &mut acquire => r,
                _ = tokio::time::sleep(keepalive.stream_keepalive_interval.0) => {
                    return keepalive_stream(app, parts, prepared, acquire, started, endpoint);
                }
            }
        } else {
            acquire.await
        };
    let lease = match lease {
        Ok(l) => l,
        Err(e) => return fail(&app, inst.name(), endpoint, started, e.into()),
    };
    match send(&app, &parts, &prepared, lease, started, endpoint).await {
        Ok(resp) => resp,
        Err(e) => fail(&app, inst.name(), endpoint, started, e),
    }
}

fn fail(app: &App, model: &str, endpoint: &'static str, started: Instant, e: ApiError) -> Response {
    let model = if model.is_empty() { "-" } else { model };
    app.metrics.observe_request(
        model,
        endpoint,
        e.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    e.into_response()
}

fn bad(message: impl Into<String>, code: &'static str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        code,
    }
}

/// Read and check the body, resolve the model, rewrite `model` to the served name.
/// On error, also returns the model name for metrics (empty when unknown).
async fn prepare(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Prepared, (String, ApiError)> {
    let limit = app.settings.server.max_body.0;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err((String::new(), ApiError::PayloadTooLarge(limit)));
    }
    let bytes = match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err((String::new(), ApiError::PayloadTooLarge(limit)));
        }
        Err(_) => {
            return Err((
                String::new(),
                bad("The request body could not be read.", "invalid_body"),
            ));
        }
    };
    parse_and_rewrite(app, bytes)
}

fn parse_and_rewrite(app: &App, bytes: Bytes) -> Result<Prepared, (String, ApiError)> {
    let anon = |e| (String::new(), e);
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(anon(bad(
            "The request body must be a JSON object.",
            "invalid_json",
        )));
    }
    let head: Head<'_> = serde_json::from_slice(&bytes).map_err(|e| {
        anon(bad(
            format!("The request body is not valid JSON: {e}."),
            "invalid_json",
        ))
    })?;
    let Some(raw) = head.model else {
        return Err(anon(bad(
            "You must provide a model parameter.",
            "missing_model",
        )));
    };
    let requested: String = serde_json::from_str(raw.get())
        .map_err(|_| anon(bad("`model` must be a string.", "invalid_model")))?;
    if requested.is_empty() {
        return Err(anon(bad(
            "You must provide a model parameter.",
            "missing_model",
        )));
    }
    let Some(instance) = app
        .router()
        .resolve(&requested)
        .and_then(|name| app.fleet.get(name))
    else {
        return Err((String::new(), ApiError::ModelNotFound(requested)));
    };
    let served = &instance.spec.served_name;
    let body = if *served == requested {
        bytes.clone()
    } else {
        // Splice the new name over the old value, leaving every other byte as sent.
        let start = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
        let end = start + raw.get().len();
        let quoted = serde_json::to_string(served).unwrap_or_default();
        let mut out = BytesMut::with_capacity(bytes.len() + quoted.len());
        out.extend_from_slice(&bytes[..start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&bytes[end..]);
        out.freeze()
    };
    Ok(Prepared {
        instance,
        body,
        stream: head.stream.unwrap_or(false),
    })
}

/// Send to the backend and turn its answer into our response.
async fn send(
    app: &Arc<App>,
    parts: &Parts,
    prepared: &Prepared,
    lease: Lease,
    started: Instant,
    endpoint: &'static str,
) -> Result<Response, ApiError> {
    let inst = lease.instance().clone();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let resp = app
        .upstream
        .post(
            inst.spec.port,
            path,
            &parts.headers,
            parts.headers.get("x-request-id"),
            prepared.body.clone(),
        )
        .await
        .map_err(|source| ApiError::Proxy {
            model: inst.name().to_string(),
            source,
        })?;
    let (head, body) = resp.into_parts();
    let status = head.status;
    let sse = is_sse(&head.headers);
    let on_end = finisher(
        app.clone(),
        inst.name().to_string(),
        endpoint,
        status,
        started,
        lease,
    );
    let relay = Relay::new(
        body,
        app.upstream.idle_timeout(),
        sse,
        inst.name().to_string(),
        on_end,
    );
    let mut out = Response::new(Body::new(relay));
    *out.status_mut() = status;
    copy_headers(&head.headers, out.headers_mut());
    out.headers_mut().insert(
        HeaderName::from_static("x-llmvisor-model"),
        HeaderValue::from_str(inst.name()).unwrap_or(HeaderValue::from_static("-")),
    );
    Ok(out)
}

/// What runs when a relayed response ends: the slot is freed, metrics and log written.
fn finisher(
    app: Arc<App>,
    model: String,
    endpoint: &'static str,
    status: StatusCode,
    started: Instant,
    lease: Lease,
) -> crate::proxy::OnEnd {
    Box::new(move |outcome| {
        drop(lease);
        let code = match outcome {
            Outcome::Complete => status.as_u16(),
            Outcome::ClientGone => CLIENT_CLOSED,
            Outcome::UpstreamFailed => StatusCode::BAD_GATEWAY.as_u16(),
            Outcome::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT.as_u16(),
        };
        let secs = started.elapsed().as_secs_f64();
        app.metrics.observe_request(&model, endpoint, code, secs);
        tracing::debug!(
            model = %model,
            endpoint,
            status = code,
            latency_ms = (secs * 1000.0) as u64,
            "request done"
        );
    })
}

fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// A streaming request that outlasted the first keep-alive interval while its model
/// starts: answer 200 with an SSE stream now, send `: loading` comments until the
/// model is ready, then relay the backend's stream (or an error event).
fn keepalive_stream(
    app: Arc<App>,
    parts: Parts,
    prepared: Prepared,
    acquire: std::pin::Pin<Box<dyn Future<Output = Result<Lease, FleetError>> + Send>>,
    started: Instant,
    endpoint: &'static str,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let model = prepared.instance.name().to_string();
    tokio::spawn(async move {
        let interval = app.settings.server.stream_keepalive_interval.0;
        let mut acquire = acquire;
        let comment = |model: &str| {
            Bytes::from(format!(
                ": loading {model} ({} s)\n\n",
                started.elapsed().as_secs()
            ))
        };
        let mut next = tokio::time::Instant::now();
        let lease = loop {
            tokio::select! {
                r = &mut acquire => break r,
                _ = tokio::time::sleep_until(next) => {
                    if tx.send(comment(&model)).await.is_err() {
                        app.metrics.observe_request(&model, endpoint, CLIENT_CLOSED, started.elapsed().as_secs_f64());
                        return;
                    }
                    next += interval;
                }
                _ = tx.closed() => {
                    app.metrics.observe_request(&model, endpoint, CLIENT_CLOSED, started.elapsed().as_secs_f64());
                    return;
                }
            }
        };
        let lease = match lease {
            Ok(l) => l,
            Err(e) => return stream_error(&app, &tx, &model, endpoint, started, e.into()).await,
        };
        let resp = tokio::select! {
            r = send(&app, &parts, &prepared, lease, started, endpoint) => match r {
                Ok(r) => r,
                Err(e) => return stream_error(&app, &tx, &model, endpoint, started, e).await,
            },
            _ = tx.closed() => {
                app.metrics.observe_request(&model, endpoint, CLIENT_CLOSED, started.elapsed().as_secs_f64());
                return;
            }
        };
        if !resp.status().is_success() {
            // The backend refused; pass its error on as an event (bounded read).
            let status = resp.status();
            let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
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
            let _ = tx.send(event).await;
            return;
        }
        let mut body = resp.into_body();
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(Ok(f)) => {
                        if let Ok(data) = f.into_data() && tx.send(data).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(_)) | None => return,
                },
                _ = tx.closed() => return,
            }
        }
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
    resp.into_response()
}

async fn stream_error(
    app: &App,
    tx: &mpsc::Sender<Bytes>,
    model: &str,
    endpoint: &'static str,
    started: Instant,
    e: ApiError,
) {
    app.metrics.observe_request(
        model,
        endpoint,
        e.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    tracing::warn!(model, "stream ended with an error: {e}");
    let _ = tx.send(e.sse_event()).await;
}
