//! Admission: everything between a request's arrival and its first target — the
//! key, the body, the model asked for, the client's permission, the plan and the
//! client's rate limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header, request::Parts};
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::openai::Call;
use super::{ApiError, App, Policy, body};
use crate::auth::{Denied, OverLimit};
use crate::router::estimate::Estimator;
use crate::router::{Plan, PlanError, Target};

/// A request id: the client's `x-request-id` when it is sane, else a new one.
pub(super) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id")
        && !v.is_empty()
        && v.len() <= 128
        && v.to_str().is_ok()
    {
        return v.clone();
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // The process id once: `std::process::id()` is a getpid(2) system call each
    // time (glibc does not cache it), one per request (seen with `strace -c`).
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let id = format!(
        "req-{:012x}{:04x}{:06x}",
        t >> 8,
        pid & 0xffff,
        n & 0xff_ffff
    );
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("req"))
}

/// A refused request: the client's name, the route and why.
pub(super) type Rejected = (String, String, ApiError);

/// Everything before the first target: key, body, model, permission, plan, limits.
/// `upstream` is a GET pass-through: (the model named in the URL, the backend
/// path); no body is read then.
#[allow(clippy::too_many_arguments)]
pub(super) async fn admit(
    app: Arc<App>,
    policy: Arc<Policy>,
    parts: Parts,
    body: Body,
    endpoint: &'static str,
    started: Instant,
    request_id: HeaderValue,
    upstream: Option<(String, String)>,
) -> Result<(Call, Plan), Rejected> {
    let anon = |e| ("-".to_string(), "-".to_string(), e);
    let client = policy.auth.identify(&parts.headers).map_err(|d| {
        anon(match d {
            Denied::Missing => ApiError::Unauthorized {
                message: "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
                code: "missing_api_key",
            },
            Denied::Invalid => ApiError::Unauthorized {
                message: "Incorrect API key provided.",
                code: "invalid_api_key",
            },
        })
    })?;
    let who = |route: &str, e| (client.name.clone(), route.to_string(), e);
    let mut upload = None;
    let (bytes, head, upstream_path) = match upstream {
        Some((model, path)) => (
            Bytes::new(),
            body::Head {
                model,
                model_span: (0, 0),
                stream: false,
                stream_options: body::StreamOptions::Absent,
                form: false,
            },
            Some(path),
        ),
        None => {
            let boundary = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(body::form_boundary)
                .map(str::to_string);
            let (bytes, head) = match boundary {
                Some(b) => {
                    let (bytes, head, rest) = read_form_head(&app, &parts, body, &b)
                        .await
                        .map_err(|e| who("-", e))?;
                    upload = rest.map(|r| std::sync::Mutex::new(Some(r)));
                    (bytes, head)
                }
                None => {
                    let bytes = read_body(&app, &parts.headers, body)
                        .await
                        .map_err(|e| who("-", e))?;
                    let head = body::parse_head(&bytes).map_err(|e| who("-", e))?;
                    (bytes, head)
                }
            };
            (bytes, head, None)
        }
    };
    let requested = head.model.clone();
    let stream = head.stream;
    if !policy.router.knows(&requested) {
        return Err(who("-", ApiError::ModelNotFound(requested)));
    }
    if !client.may_use(&requested) {
        return Err(who(
            &requested,
            ApiError::ModelNotAllowed(requested.clone()),
        ));
    }
    let estimate = Estimator::new(&bytes);
    let plan = policy
        .router
        .plan(
            &requested,
            &app.fleet,
            &crate::router::Request {
                client: &client.name,
                endpoint,
                estimate: &estimate,
                profiles: &|| app.fleet.active_profiles(),
            },
        )
        .map_err(|e| {
            who(
                &requested,
                match e {
                    PlanError::NotFound => ApiError::ModelNotFound(requested.clone()),
                    PlanError::NotServed => {
                        ApiError::EndpointNotServed(requested.clone(), parts.uri.path().to_string())
                    }
                    PlanError::ContextTooLong {
                        prompt,
                        max_tokens,
                        limit,
                    } => ApiError::ContextLengthExceeded {
                        prompt,
                        max_tokens,
                        limit,
                    },
                },
            )
        })?;
    let mut charged_tokens = 0;
    let quota = if client.limits.limited() {
        let tok = match plan.candidates.first().map(|c| &c.target) {
            Some(Target::Model(i)) => policy.router.model_tokenizer(i.name()),
            _ => None,
        };
        let tokens = estimate.prompt_tokens(tok) + estimate.max_tokens();
        charged_tokens = tokens;
        match client.limits.take(tokens) {
            Ok(q) => Some(q),
            Err(OverLimit::Requests(wait, quota)) => {
                return Err(who(
                    &requested,
                    ApiError::RateLimited {
                        client: client.name.clone(),
                        kind: "requests",
                        limit: client.limits.rpm,
                        retry_after: wait,
                        quota,
                    },
                ));
            }
            Err(OverLimit::Tokens(wait, quota)) => {
                return Err(who(
                    &requested,
                    ApiError::RateLimited {
                        client: client.name.clone(),
                        kind: "tokens",
                        limit: client.limits.tpm,
                        retry_after: wait,
                        quota,
                    },
                ));
            }
            Err(OverLimit::TooLarge { needed, tpm }) => {
                return Err(who(
                    &requested,
                    ApiError::TooManyTokens {
                        client: client.name.clone(),
                        needed,
                        tpm,
                    },
                ));
            }
        }
    } else {
        None
    };
    drop(estimate);
    let app_store_enabled = app.store.enabled();
    let call = Call {
        app,
        policy,
        client,
        parts,
        body: bytes,
        stream,
        endpoint,
        started,
        request_id,
        route: requested,
        quota,
        charged_tokens,
        reached: AtomicBool::new(false),
        trace: Default::default(),
        ts_ms: crate::store::now_ms() - started.elapsed().as_millis() as i64,
        upstream_path,
        // Only where the client's own options say nothing about the usage chunk
        // (none, `null`, an object without `include_usage`): turning it on is then
        // invisible once the chunk is removed again; overriding the client is not.
        inject_usage: app_store_enabled
            && stream
            && head.stream_options.injectable()
            && matches!(endpoint, "chat/completions" | "completions"),
        head,
        upload,
    };
    Ok((call, plan))
}

fn bad(message: impl Into<String>, code: &'static str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        code,
    }
}

/// The first bytes of a `multipart/form-data` body, up to its fields before the
/// first file part (see [`body::scan_form_head`]), at most `max_body` of them;
/// the rest of the body (and its length, when the client gave one) is streamed
/// to the backend, never held whole: `max_body` does not limit an upload. A body
/// that ends within those bytes is read whole (and may be retried elsewhere).
async fn read_form_head(
    app: &App,
    parts: &Parts,
    mut body: Body,
    boundary: &str,
) -> Result<(Bytes, body::Head, Option<super::openai::Rest>), ApiError> {
    let limit = app.settings.server.max_body.0;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let delim = format!("--{boundary}");
    let mut buf = bytes::BytesMut::new();
    loop {
        let Some(frame) = body.frame().await else {
            let bytes = buf.freeze();
            let head = body::parse_form_head(&bytes, boundary)?;
            return Ok((bytes, head, None));
        };
        let frame = frame.map_err(|e| body_error(&e))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // Look again only when the new bytes may end a part or its headers (a
        // file's bytes seldom hold either): scanning is linear in what is held.
        let from = buf.len().saturating_sub(delim.len() + 4);
        buf.extend_from_slice(&data);
        let tail = &buf[from..];
        let may_end = |n: &[u8]| tail.windows(n.len()).any(|w| w == n);
        if !(may_end(delim.as_bytes()) || may_end(b"\r\n\r\n")) {
            if buf.len() as u64 > limit {
                return Err(form_model_too_late(body, limit).await);
            }
            continue;
        }
        if let Some(head) = body::scan_form_head(&buf, boundary, body.is_end_stream())? {
            // Frames may carry the buffer past the bound: the field must end within it.
            if head.model_span.1 as u64 > limit {
                return Err(form_model_too_late(body, limit).await);
            }
            if body.is_end_stream() {
                return Ok((buf.freeze(), head, None));
            }
            let bytes = buf.freeze();
            let rest_len = declared.map(|n| n.saturating_sub(bytes.len() as u64));
            // From here on the edge stops counting the body in its budget of
            // buffered bytes: it flows through.
            if let Some(s) = parts.extensions.get::<super::server::Streamed>() {
                s.set();
            }
            return Ok((bytes, head, Some((body, rest_len))));
        }
        if buf.len() as u64 > limit {
            return Err(form_model_too_late(body, limit).await);
        }
    }
}

/// The refusal of a form whose `model` is not within `limit` bytes. Up to `limit`
/// more bytes are read and dropped first: a client still sending when the
/// answer comes and the connection closes may get a reset instead of it.
async fn form_model_too_late(mut body: Body, limit: u64) -> ApiError {
    let mut drained = 0u64;
    while drained <= limit
        && let Some(Ok(frame)) = body.frame().await
    {
        drained += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    bad(
        format!(
            "The `model` field was not found in the first {limit} bytes of the form \
             (server.max_body): send it before the file."
        ),
        "missing_model",
    )
}

pub(crate) async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = app.settings.server.max_body.0;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Err(e) => Err(body_error(&*e)),
    }
}

/// What a request body that could not be read becomes: the edge's time limits and
/// budget (src/api/server.rs) have answers of their own.
pub(crate) fn body_error(e: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut cur = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<super::server::BodyError>() {
            Some(super::server::BodyError::Timeout(key)) => return ApiError::RequestTimeout(key),
            Some(super::server::BodyError::OverBudget) => return ApiError::BodiesOverBudget,
            _ => cur = err.source(),
        }
    }
    bad("The request body could not be read.", "invalid_body")
}
