//! The forwarding endpoints (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/rerank`): identify the client, read the body, plan the
//! targets, then try them in order — a retry only ever happens before the first byte
//! of a response reaches the client — and relay the answer as it comes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::body::{self, Head};
use super::{ApiError, App, Policy};
use crate::auth::{Client, Denied, OverLimit, Quota, reset_text};
use crate::fleet::{FleetError, Lease, State as ModelState};
use crate::proxy::{Outcome, ProxyError, Relay};
use crate::proxy::{Tap, Tapped};
use crate::router::breaker::Breaker;
use crate::router::estimate::Estimator;
use crate::router::provider::ProviderLease;
use crate::router::{Candidate, Plan, PlanError, Target};
use crate::store::RequestRecord;
use crate::telemetry::metrics::RequestLabels;

/// The status recorded for a request whose client went away (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat/completions",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        "/v1/rerank" => "rerank",
        _ => "other",
    }
}

/// A request id: the client's `x-request-id` when it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
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
    let id = format!(
        "req-{:012x}{:04x}{:06x}",
        t >> 8,
        std::process::id() & 0xffff,
        n & 0xff_ffff
    );
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("req"))
}

/// One request on its way: who sent it, what it asked, where it stands.
struct Call {
    app: Arc<App>,
    policy: Arc<Policy>,
    client: Arc<Client>,
    parts: Parts,
    body: Bytes,
    /// The fields of `body` llmvisor reads (and the byte ranges it rewrites).
    head: Head,
    stream: bool,
    endpoint: &'static str,
    started: Instant,
    request_id: HeaderValue,
    route: String,
    quota: Option<Quota>,
    /// Tokens charged to the client's `tpm` at admission (settled with the usage).
    charged_tokens: u64,
    /// Some backend got the request (a send that did not fail to connect); until
    /// then a refusal gives the client's rate-limit charge back.
    reached: AtomicBool,
    /// Unix milliseconds at arrival (the usage store's time).
    ts_ms: i64,
    /// llmvisor adds `stream_options.include_usage` (and removes what it brings).
    inject_usage: bool,
}

/// How one request ended, for metrics, the store and the log line.
#[derive(Default)]
struct Ending {
    tapped: Tapped,
    queued: Option<Duration>,
    cold_start: Option<Duration>,
    error: Option<String>,
    /// USD per million (prompt, completion) tokens of the provider that served.
    prices: Option<(f64, f64)>,
}

impl Call {
    fn labels(&self, target: &str, status: u16) -> RequestLabels {
        RequestLabels {
            route: self.route.clone(),
            target: target.to_string(),
            client: self.client.name.clone(),
            endpoint: self.endpoint,
            status,
        }
    }

    fn observe(&self, target: &str, status: u16) {
        let error = match status {
            CLIENT_CLOSED => Some("client_closed".to_string()),
            s if s >= 400 => Some(format!("upstream_{s}")),
            _ => None,
        };
        self.done(
            target,
            status,
            Ending {
                error,
                ..Ending::default()
            },
        );
    }

    /// A request that ends with llmvisor's own error. If no backend ever got it
    /// (queue full, queue timeout, a model that failed to start, no target left,
    /// no connection), its rate-limit charge goes back to the client.
    fn fail(&self, target: &str, e: &ApiError) {
        if self.quota.is_some() && !self.reached.load(Ordering::Relaxed) {
            self.client.limits.refund(self.charged_tokens);
        }
        let r = e.render();
        self.done(
            target,
            r.status.as_u16(),
            Ending {
                error: Some(r.code.to_string()),
                ..Ending::default()
            },
        );
    }

    /// The one place a finished request is accounted: metrics, the usage store, the
    /// request log line.
    fn done(&self, target: &str, status: u16, end: Ending) {
        let total = self.started.elapsed();
        let labels = self.labels(target, status);
        let m = &self.app.metrics;
        m.observe_request(&labels, total.as_secs_f64());
        let ttft = end
            .tapped
            .first_byte
            .map(|t| t.into_std().saturating_duration_since(self.started));
        if let Some(t) = ttft {
            m.observe_ttft(&self.route, target, t.as_secs_f64());
        }
        let usage = end.tapped.usage;
        if let Some(u) = usage {
            m.count_tokens(&labels, u.prompt_tokens, u.completion_tokens);
            self.client
                .limits
                .settle(self.charged_tokens, u.prompt_tokens + u.completion_tokens);
        }
        let cost = match (end.prices, usage) {
            (Some((pi, po)), Some(u)) => {
                Some((u.prompt_tokens as f64 * pi + u.completion_tokens as f64 * po) / 1e6)
            }
            _ => None,
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        tracing::info!(
            request_id = self.request_id.to_str().unwrap_or("-"),
            client = %self.client.name,
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
            client: self.client.name.clone(),
            route: self.route.clone(),
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

    /// Note a send to a backend: anything but a failed connect reached it.
    fn sent<T>(&self, r: &Result<T, ProxyError>) {
        if !matches!(r, Err(ProxyError::Connect(_))) {
            self.reached.store(true, Ordering::Relaxed);
        }
    }

    /// The body for a target that calls the model `name` (see [`body::rewrite`]).
    fn body_for(&self, name: &str) -> Bytes {
        body::rewrite(&self.body, &self.head, name, self.inject_usage)
    }
}

/// What keeps a target's slot while a response is relayed.
enum Hold {
    Model(#[allow(dead_code)] Lease),
    Provider(#[allow(dead_code)] ProviderLease),
}

/// A target answered with headers.
struct Served {
    resp: hyper::Response<Incoming>,
    label: String,
    instance: Option<String>,
    hold: Hold,
    cold_start: Option<Duration>,
    queued: Option<Duration>,
    prices: Option<(f64, f64)>,
}

/// Why one attempt did not produce a response to relay.
struct Failure {
    error: ApiError,
    /// Counts against the target's breaker.
    breaker: bool,
    /// Another target may be tried.
    retry: bool,
}

/// Handler of every forwarding endpoint.
pub async fn forward(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let endpoint = endpoint_of(parts.uri.path());
    let id = request_id(&parts.headers);
    let policy = app.policy();
    let mut resp = match admit(
        app.clone(),
        policy,
        parts,
        body,
        endpoint,
        started,
        id.clone(),
    )
    .await
    {
        Ok((call, plan)) => run(Arc::new(call), plan).await,
        Err((client, route, e)) => {
            let r = e.render();
            app.metrics.observe_request(
                &RequestLabels {
                    route: route.clone(),
                    target: "-".into(),
                    client: client.clone(),
                    endpoint,
                    status: r.status.as_u16(),
                },
                started.elapsed().as_secs_f64(),
            );
            tracing::info!(
                request_id = id.to_str().unwrap_or("-"),
                client = %client,
                route = %route,
                endpoint,
                status = r.status.as_u16(),
                error = r.code,
                latency_ms = started.elapsed().as_millis() as u64,
                "request"
            );
            app.store.request(RequestRecord {
                ts_ms: crate::store::now_ms() - started.elapsed().as_millis() as i64,
                request_id: id.to_str().unwrap_or("-").to_string(),
                client,
                route,
                target: "-".into(),
                endpoint: endpoint.to_string(),
                status: r.status.as_u16(),
                total_ms: started.elapsed().as_millis() as u64,
                error: Some(r.code.to_string()),
                ..RequestRecord::default()
            });
            e.into_response()
        }
    };
    resp.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), id);
    resp
}

type Rejected = (String, String, ApiError);

/// Everything before the first target: key, body, model, permission, plan, limits.
async fn admit(
    app: Arc<App>,
    policy: Arc<Policy>,
    parts: Parts,
    body: Body,
    endpoint: &'static str,
    started: Instant,
    request_id: HeaderValue,
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
    let bytes = read_body(&app, &parts.headers, body)
        .await
        .map_err(|e| who("-", e))?;
    let head = body::parse_head(&bytes).map_err(|e| who("-", e))?;
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
        ts_ms: crate::store::now_ms() - started.elapsed().as_millis() as i64,
        // Only where the client's own options say nothing about the usage chunk
        // (none, `null`, an object without `include_usage`): turning it on is then
        // invisible once the chunk is removed again; overriding the client is not.
        inject_usage: app_store_enabled
            && stream
            && head.stream_options.injectable()
            && matches!(endpoint, "chat/completions" | "completions"),
        head,
    };
    Ok((call, plan))
}

fn bad(message: impl Into<String>, code: &'static str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        code,
    }
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

/// Try the plan; a streaming request that would wait for a cold start gets its 200
/// and `: loading` comments at once.
async fn run(call: Arc<Call>, plan: Plan) -> Response {
    let cold = matches!(
        plan.candidates.first().map(|c| &c.target),
        Some(Target::Model(i)) if i.state() != ModelState::Ready
    );
    let server = &call.app.settings.server;
    let mut unanswered = Unanswered {
        call: &call,
        armed: true,
    };
    let attempt = attempt_all(call.clone(), plan);
    let result = if call.stream && server.stream_keepalive && cold {
        let mut attempt = Box::pin(attempt);
        tokio::select! {
            biased;
            r = &mut attempt => r,
            _ = tokio::time::sleep(server.stream_keepalive_interval.0) => {
                unanswered.armed = false;
                return keepalive_stream(call.clone(), attempt);
            }
        }
    } else {
        attempt.await
    };
    unanswered.armed = false;
    match result {
        Ok(served) => respond(&call, served),
        Err((label, e)) => {
            call.fail(&label, &e);
            let mut resp = e.into_response();
            route_headers(&call, None, resp.headers_mut());
            resp
        }
    }
}

/// Counts a request whose client went away before a response began (while it
/// waited for a start, a slot or the backend's headers): the handler's future is
/// dropped, and so is this guard, still armed.
struct Unanswered<'a> {
    call: &'a Call,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.call.observe("-", CLIENT_CLOSED);
            tracing::debug!(route = %self.call.route, "client went away before the response began");
        }
    }
}

/// Try each candidate in order until one answers. Returns the label of the last
/// target tried with the error.
async fn attempt_all(call: Arc<Call>, plan: Plan) -> Result<Served, (String, ApiError)> {
    let max = call.app.settings.server.max_attempts as usize;
    let budget = call.policy.router.budget();
    budget.request();
    let mut attempts = 0usize;
    let mut first_error: Option<(String, ApiError)> = None;
    let mut skipped = Vec::new();
    for (i, c) in plan.candidates.iter().enumerate() {
        if attempts >= max {
            break;
        }
        if let Target::Provider { provider, .. } = &c.target
            && !provider.healthy()
        {
            skipped.push(format!("{} (host down)", c.label));
            continue;
        }
        if !c.breaker.allow() {
            skipped.push(format!("{} (circuit open)", c.label));
            continue;
        }
        if attempts > 0 && !budget.try_retry() {
            tracing::warn!(route = %call.route, "retry budget exhausted; not trying {}", c.label);
            break;
        }
        attempts += 1;
        // Whether another target could take the request if this one fails before its
        // first byte; if not, this one's own error response goes to the client.
        let more = attempts < max
            && plan.candidates[i + 1..].iter().any(|l| {
                l.breaker.would_allow()
                    && match &l.target {
                        Target::Provider { provider, .. } => provider.healthy(),
                        Target::Model(_) => true,
                    }
            });
        match attempt(&call, c, more).await {
            Ok(served) => return Ok(served),
            Err(f) => {
                if f.breaker {
                    c.breaker.failure();
                }
                if f.retry && more {
                    tracing::info!(
                        route = %call.route,
                        target = %c.label,
                        "{}; trying the next target",
                        f.error
                    );
                }
                if !f.retry {
                    return Err((c.label.clone(), f.error));
                }
                if first_error.is_none() {
                    first_error = Some((c.label.clone(), f.error));
                }
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        (
            "-".into(),
            ApiError::NoTarget {
                route: call.route.clone(),
                skipped,
            },
        )
    }))
}

/// Statuses from a target that mean "try another one" when one is left.
fn retryable_status(s: StatusCode, provider: bool) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504) || (provider && s == StatusCode::TOO_MANY_REQUESTS)
}

/// One target: take a slot (starting the model if needed), send, and judge the
/// response headers.
async fn attempt(call: &Call, c: &Candidate, more: bool) -> Result<Served, Failure> {
    let headers = &call.parts.headers;
    let path = call.parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match &c.target {
        Target::Model(inst) => {
            let lease = acquire(call, inst).await.map_err(|e| Failure {
                breaker: matches!(
                    e,
                    FleetError::StartFailed { .. }
                        | FleetError::StartTimeout { .. }
                        | FleetError::CrashLoop { .. }
                ),
                retry: !matches!(e, FleetError::ShuttingDown),
                error: e.into(),
            })?;
            let inst = lease.instance().clone();
            let resp = call
                .app
                .upstream
                .post(
                    inst.spec.port,
                    path,
                    headers,
                    Some(&call.request_id),
                    call.body_for(&inst.spec.served_name),
                )
                .await;
            call.sent(&resp);
            let resp = resp.map_err(|source| Failure {
                error: ApiError::Proxy {
                    model: inst.name().to_string(),
                    source,
                },
                breaker: true,
                retry: true,
            })?;
            judge(&c.breaker, &resp, false, more, &c.label)?;
            Ok(Served {
                resp,
                label: c.label.clone(),
                instance: Some(inst.name().to_string()),
                cold_start: lease.cold_start,
                queued: Some(lease.queued),
                prices: None,
                hold: Hold::Model(lease),
            })
        }
        Target::Provider { provider, model } => {
            let Some(lease) = provider.try_begin() else {
                return Err(Failure {
                    error: ApiError::Fleet(FleetError::QueueFull {
                        model: c.label.clone(),
                        limit: provider.spec.max_concurrent as usize,
                    }),
                    breaker: false,
                    retry: true,
                });
            };
            let resp = call
                .app
                .upstream
                .post_url(
                    &provider.url(path),
                    headers,
                    Some(&call.request_id),
                    provider.spec.api_key.as_ref().map(|k| k.0.as_str()),
                    call.body_for(provider.upstream_model(model)),
                    provider.spec.timeout,
                )
                .await;
            call.sent(&resp);
            let resp = resp.map_err(|source| Failure {
                error: ApiError::Proxy {
                    model: c.label.clone(),
                    source,
                },
                breaker: true,
                retry: true,
            })?;
            judge(&c.breaker, &resp, true, more, &c.label)?;
            Ok(Served {
                resp,
                label: c.label.clone(),
                instance: None,
                cold_start: None,
                queued: None,
                prices: provider.spec.prices,
                hold: Hold::Provider(lease),
            })
        }
    }
}

/// Record the outcome in the breaker; a retryable status with a target left is a
/// failure of this attempt (its body is dropped unread).
fn judge(
    breaker: &Breaker,
    resp: &hyper::Response<Incoming>,
    provider: bool,
    more: bool,
    label: &str,
) -> Result<(), Failure> {
    let status = resp.status();
    if status.is_server_error() {
        breaker.failure();
    } else if status != StatusCode::TOO_MANY_REQUESTS {
        breaker.success();
    }
    if more && retryable_status(status, provider) {
        return Err(Failure {
            error: ApiError::Proxy {
                model: label.to_string(),
                source: ProxyError::Failed(format!("answered {status}")),
            },
            // Already counted above.
            breaker: false,
            retry: true,
        });
    }
    Ok(())
}

/// A slot at a model; once more if a reload replaced the model meanwhile.
async fn acquire(call: &Call, inst: &Arc<crate::fleet::Instance>) -> Result<Lease, FleetError> {
    let priority = call.client.priority;
    match inst.acquire_as(priority).await {
        Err(FleetError::Replaced { .. }) if !call.app.fleet.shutting_down() => {
            match call.app.fleet.get(inst.name()) {
                Some(next) if !next.is_retired() => next.acquire_as(priority).await,
                _ => Err(FleetError::Replaced {
                    model: inst.name().to_string(),
                }),
            }
        }
        r => r,
    }
}

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
struct Info<'a> {
    label: &'a str,
    instance: Option<&'a str>,
    queued: Option<Duration>,
    cold_start: Option<Duration>,
}

/// `x-llmvisor-*` and rate-limit headers.
fn route_headers(call: &Call, served: Option<&Info<'_>>, h: &mut HeaderMap) {
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

/// Relay a served response.
fn respond(call: &Arc<Call>, served: Served) -> Response {
    let Served {
        resp,
        label,
        instance,
        hold,
        cold_start,
        queued,
        prices,
    } = served;
    let (head, body) = resp.into_parts();
    let status = head.status;
    let sse = is_sse(&head.headers);
    let mut headers = HeaderMap::new();
    crate::proxy::copy_end_to_end(&head.headers, &mut headers);
    let info = Info {
        label: &label,
        instance: instance.as_deref(),
        queued,
        cold_start,
    };
    route_headers(call, Some(&info), &mut headers);
    let end = Ending {
        queued,
        cold_start,
        prices,
        ..Ending::default()
    };
    let on_end = finisher(call.clone(), label.clone(), status, hold, end);
    let tap = Tap::new(sse, call.inject_usage);
    let relay = Relay::new(
        body,
        call.app.upstream.idle_timeout(),
        sse,
        label,
        tap,
        on_end,
    );
    let mut out = Response::new(Body::new(relay));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// What runs when a relayed response ends: the slot is freed, metrics and log written.
fn finisher(
    call: Arc<Call>,
    target: String,
    status: StatusCode,
    hold: Hold,
    mut end: Ending,
) -> crate::proxy::OnEnd {
    Box::new(move |outcome, tapped| {
        drop(hold);
        let (code, error) = match outcome {
            Outcome::Complete if status.as_u16() >= 400 => (
                status.as_u16(),
                Some(format!("upstream_{}", status.as_u16())),
            ),
            Outcome::Complete => (status.as_u16(), None),
            // Cut by the edge because the client stopped reading (write_timeout).
            Outcome::ClientGone if super::server::client_stalled() => {
                (CLIENT_CLOSED, Some("client_stalled".into()))
            }
            Outcome::ClientGone => (CLIENT_CLOSED, Some("client_closed".into())),
            Outcome::UpstreamFailed => (502, Some("backend_error".into())),
            Outcome::UpstreamTimeout => (504, Some("backend_timeout".into())),
        };
        end.tapped = tapped;
        end.error = error;
        call.done(&target, code, end);
    })
}

fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

type Attempt = std::pin::Pin<Box<dyn Future<Output = Result<Served, (String, ApiError)>> + Send>>;

/// A streaming request that outlasted the first keep-alive interval while its model
/// starts: answer 200 with an SSE stream now, send `: loading` comments until a
/// target answers (the comments carry no content, so trying a fallback is still
/// invisible to the client), then relay that target's stream or an error event.
fn keepalive_stream<F>(call: Arc<Call>, attempt: std::pin::Pin<Box<F>>) -> Response
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
