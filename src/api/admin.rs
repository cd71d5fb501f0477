//! `/admin/*`: operator actions, and the JSON views of the fleet they show (GPUs,
//! profiles): the fleet holds the state, this module renders it. With an `[admin]`
//! key they need that key; without one they answer only to clients on the loopback
//! interface.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, App};
use crate::auth::{Auth, Denied};
use crate::fleet::{Fleet, Instance, StopReason};
use crate::gpu::Source;
use crate::gpu::placement::Activity;
use crate::store::RequestRecord;

/// Whether a request comes from this host itself: a loopback connection that no
/// proxy forwarded. `tailscale serve` connects from loopback and says whom it
/// forwards in `X-Forwarded-For` (checked in tailscale's ipn/ipnlocal/serve.go,
/// `addProxyForwardedHeaders`); so do nginx and Caddy set up as proxies. Sending
/// such a header can only take rights away, never give them.
pub fn local(peer: SocketAddr, headers: &HeaderMap) -> bool {
    peer.ip().is_loopback()
        && !["x-forwarded-for", "forwarded", "tailscale-user-login"]
            .iter()
            .any(|h| headers.contains_key(*h))
}

/// With an `[admin]` key: that key, from anywhere. Without: this host only
/// ([`local`]).
pub fn allowed(auth: &Auth, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    match auth.admin_allowed(headers, local(peer, headers)) {
        Ok(()) => Ok(()),
        Err(_) if !auth.has_admin_key() => Err(ApiError::Forbidden(
            "Admin routes answer only on the loopback interface, not through a proxy (configure an [admin] key to use them from elsewhere).",
        )),
        Err(Denied::Missing) => Err(ApiError::Unauthorized {
            message: "Admin routes need the admin key as `Authorization: Bearer <key>`.",
            code: "missing_api_key",
        }),
        Err(Denied::Invalid) => Err(ApiError::Unauthorized {
            message: "Incorrect admin key provided.",
            code: "invalid_api_key",
        }),
    }
}

/// Before any admin handler (and before its body is read): the admin key, or
/// loopback without one.
pub async fn gate(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = allowed(&app.policy().auth, peer, req.headers()) {
        return e.into_response();
    }
    next.run(req).await
}

fn find(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    name: &str,
) -> Result<Arc<Instance>, ApiError> {
    let policy = app.policy();
    allowed(&policy.auth, peer, headers)?;
    policy
        .router
        .resolve(name)
        .and_then(|i| app.fleet.get(i))
        .ok_or_else(|| ApiError::ModelNotFound(name.to_string()))
}

/// `POST /admin/models/{name}/start`: start now (also clears a crash lock-out).
/// Answers at once with 202; `/health` shows progress.
pub async fn start(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let inst = match find(&app, peer, &headers, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    if app.fleet.shutting_down() {
        return ApiError::from(crate::fleet::FleetError::ShuttingDown).into_response();
    }
    let begun = inst.begin_start(true);
    // An operator's start also gives the model a fresh circuit breaker.
    if let Some(b) = app.policy().router.model_breaker(inst.name()) {
        b.success();
    }
    tracing::info!(model = %inst.name(), begun, "start requested by an operator");
    let status = if begun {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({"model": inst.name(), "state": inst.state().as_str()})),
    )
        .into_response()
}

/// Query of the logs route.
#[derive(serde::Deserialize)]
pub struct LogsQuery {
    /// How many of the last lines (default 100, at most 10000).
    lines: Option<usize>,
}

/// `GET /admin/models/{name}/logs?lines=N`: the model's journal, as `llmvisor logs`
/// shows it; under the process manager, the output it captured of the model.
pub async fn logs(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogsQuery>,
) -> Response {
    let inst = match find(&app, peer, &headers, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let lines = q.lines.unwrap_or(100).min(10_000);
    // The process manager keeps its children's output itself.
    if let Some(kept) = app.fleet.recent_output(&inst, lines) {
        return Json(json!({"model": inst.name(), "unit": inst.unit.unit, "lines": kept}))
            .into_response();
    }
    let (unit, model) = (inst.unit.unit.clone(), inst.name().to_string());
    let read = tokio::task::spawn_blocking(move || {
        crate::units::journal::tail(
            &crate::units::journal::Query {
                unit: &unit,
                model: Some(&model),
                invocation: None,
            },
            lines,
        )
    })
    .await;
    match read {
        Ok(Ok(lines)) => {
            Json(json!({"model": inst.name(), "unit": inst.unit.unit, "lines": lines}))
                .into_response()
        }
        Ok(Err(why)) => {
            tracing::warn!(model = %inst.name(), "logs: {why}");
            ApiError::Unavailable("The journal cannot be read on this host.").into_response()
        }
        Err(_) => ApiError::Unavailable("Reading the journal failed.").into_response(),
    }
}

/// `POST /admin/models/{name}/stop`: drain in-flight requests (up to
/// `server.shutdown_grace`), then stop. Answers at once with 202. A later request
/// for the model starts it again on demand.
pub async fn stop(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let inst = match find(&app, peer, &headers, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let grace = app.settings.server.shutdown_grace.0;
    let i = inst.clone();
    tokio::spawn(async move { i.stop(StopReason::Admin, grace).await });
    tracing::info!(model = %inst.name(), "stop requested by an operator");
    (
        StatusCode::ACCEPTED,
        Json(json!({"model": inst.name(), "state": "stopping"})),
    )
        .into_response()
}

/// `GET /admin/gpus`: every GPU (NVML or simulated), its memory, utilisation,
/// temperature, power and processes, and the models placed on it.
pub async fn gpus(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = allowed(&app.policy().auth, peer, &headers) {
        return e.into_response();
    }
    let fleet = app.fleet.clone();
    // NVML calls block briefly; keep them off the async workers.
    match tokio::task::spawn_blocking(move || gpu_view(&fleet)).await {
        Ok(v) => Json(v).into_response(),
        Err(_) => ApiError::Unavailable("Reading the GPUs failed.").into_response(),
    }
}

/// `GET /admin/profiles`: profiles, which are active, the override, the next
/// switch, and which models are allowed now.
pub async fn profiles(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = allowed(&app.policy().auth, peer, &headers) {
        return e.into_response();
    }
    Json(profile_view(&app.fleet)).into_response()
}

/// Body of the activate route.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// How long, e.g. `"2h"`; without it, until `POST /admin/profiles/resume`.
    #[serde(rename = "for")]
    duration: Option<String>,
}

fn bad(message: String) -> Response {
    ApiError::BadRequest {
        message,
        code: "invalid_request",
    }
    .into_response()
}

/// `POST /admin/profiles/{name}/activate` with `{"for": "2h"}` (optional): only
/// this profile is active for that long; the models it does not allow are drained
/// and stopped, its `preload` models started.
pub async fn activate_profile(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = allowed(&app.policy().auth, peer, &headers) {
        return e.into_response();
    }
    let body: ActivateBody = if body.is_empty() {
        ActivateBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad(format!("The body is not {{\"for\": \"2h\"}}: {e}")),
        }
    };
    let duration = match body.duration.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return bad(format!("`for`: {e} (write e.g. \"2h\" or \"30m\")")),
    };
    match app.fleet.activate_profile(&name, duration) {
        Ok(()) => Json(profile_view(&app.fleet)).into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"message": e, "type": "invalid_request_error", "param": null, "code": "profile_not_found"}})),
        )
            .into_response(),
    }
}

/// `POST /admin/profiles/resume`: end a manual activation; windows decide again.
pub async fn resume_profiles(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = allowed(&app.policy().auth, peer, &headers) {
        return e.into_response();
    }
    app.fleet.resume_schedule();
    Json(profile_view(&app.fleet)).into_response()
}

/// Body of the test clock route.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockBody {
    /// Local time, e.g. `"2025-06-01T02:00:00"`.
    now: String,
}

/// `POST /admin/test/clock` with `{"now": "2025-06-01T02:00:00"}`: move llmvisor's
/// clock. TEST ONLY: refused unless llmvisor runs with `LLMVISOR_TEST_CLOCK`.
pub async fn test_clock(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = allowed(&app.policy().auth, peer, &headers) {
        return e.into_response();
    }
    let body: ClockBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad(format!(
                "The body is not {{\"now\": \"2025-06-01T02:00:00\"}}: {e}"
            ));
        }
    };
    match app.fleet.set_test_clock(&body.now) {
        Ok(now) => Json(json!({"now": now})).into_response(),
        Err(e) => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": {"message": e, "type": "permission_error", "param": null, "code": "forbidden"}})),
        )
            .into_response(),
    }
}

/// `GET /admin/gpus`'s body: every GPU (NVML or simulated, said which) and the
/// models placed on it with their `vram`. Blocks briefly on NVML.
pub(super) fn gpu_view(fleet: &Fleet) -> Value {
    let (snap, holders) = fleet.gpu_board();
    let gpus: Vec<Value> = snap
        .gpus
        .iter()
        .map(|g| {
            let mut v = serde_json::to_value(g).unwrap_or(Value::Null);
            let models: Vec<Value> = holders
                .iter()
                .filter(|(_, h)| h.gpus.contains(&g.index))
                .map(|(i, h)| {
                    json!({
                        "model": i.name(),
                        "state": i.state().as_str(),
                        "vram": h.vram,
                        "sleeping": h.activity == Activity::Sleeping,
                        "in_flight": i.in_flight(),
                        "gpus": h.gpus,
                    })
                })
                .collect();
            v["models"] = json!(models);
            v
        })
        .collect();
    let (message, simulated) = match &snap.source {
        Source::None { reason } => (Some(reason.clone()), false),
        Source::Simulated => (
            Some(
                "simulated GPUs ([gpu] simulate): memory is what the models declare (vram)"
                    .to_string(),
            ),
            true,
        ),
        Source::Nvml { .. } => (snap.error.clone(), false),
    };
    json!({
        "source": snap.source.as_str(),
        "driver_version": match &snap.source { Source::Nvml { driver_version } => Some(driver_version.clone()), _ => None },
        "simulated": simulated,
        "message": message,
        "gpus": gpus,
    })
}

fn window_text(w: &crate::config::Window) -> String {
    let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    format!("{}-{}", hm(w.start), hm(w.end))
}

/// `GET /admin/profiles`' body (and `llmvisor profile status`'s): the profiles,
/// which are active, the override, the next switch, which models are allowed now.
pub(super) fn profile_view(fleet: &Fleet) -> Value {
    let schedule = fleet.schedule();
    let now = fleet.now();
    let active = schedule.active_at(now);
    let over = schedule.override_at(now);
    let models: serde_json::Map<String, Value> = fleet
        .instances()
        .iter()
        .map(|i| {
            let r = schedule.refusal(i.name(), now);
            (
                i.name().to_string(),
                json!({
                    "allowed": r.is_none(),
                    "state": i.state().as_str(),
                    "allowed_in_seconds": r.and_then(|(w, _)| w).map(|d| d.as_secs()),
                }),
            )
        })
        .collect();
    json!({
        "now": now.to_rfc3339(),
        "test_clock": fleet.test_clock(),
        "active": active,
        "override": over.map(|o| json!({"profile": o.profile, "until": o.until.map(|u| u.to_rfc3339())})),
        "next_switch": schedule.next_switch(now).map(|t| t.to_rfc3339()),
        "profiles": schedule.profiles().iter().map(|p| json!({
            "name": p.name,
            "windows": p.windows.iter().map(window_text).collect::<Vec<_>>(),
            "models": p.models,
            "preload": p.preload,
            "exclusive": p.exclusive,
            "drain_timeout_seconds": p.drain_timeout.as_secs(),
            "active": active.contains(&p.name),
        })).collect::<Vec<_>>(),
        "models": models,
    })
}

/// A request record as the operator's page and `/admin/requests` show it.
pub(super) fn request_json(r: &RequestRecord) -> Value {
    json!({
        "ts_ms": r.ts_ms,
        "request_id": r.request_id,
        "client": r.client,
        "route": r.route,
        "target": r.target,
        "endpoint": r.endpoint,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "queue_ms": r.queue_ms,
        "cold_start_ms": r.cold_start_ms,
        "ttft_ms": r.ttft_ms,
        "total_ms": r.total_ms,
        "error": r.error,
        "cost_usd": r.cost_usd,
        "stream": r.stream,
    })
}

/// The store's latest requests, newest first (empty when the store is off).
pub(super) async fn recent_requests(
    app: &App,
    limit: usize,
    client: Option<String>,
    model: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    let Some(path) = app.store.path().map(std::path::Path::to_path_buf) else {
        return Ok(Vec::new());
    };
    let read = tokio::task::spawn_blocking(move || {
        let conn = crate::store::open_ro(&path)?;
        crate::store::query::recent_requests(&conn, limit, client.as_deref(), model.as_deref())
    })
    .await;
    match read {
        Ok(Ok(rows)) => Ok(rows.iter().map(request_json).collect()),
        Ok(Err(e)) => {
            tracing::warn!("reading the usage store: {e}");
            Err(ApiError::Unavailable("The usage store cannot be read."))
        }
        Err(_) => Err(ApiError::Unavailable("Reading the usage store failed.")),
    }
}

/// Query of the requests route.
#[derive(serde::Deserialize)]
pub struct RequestsQuery {
    /// How many (default 100, at most 1000).
    limit: Option<usize>,
    /// Only this client's.
    client: Option<String>,
    /// Only those asking for or served by this model.
    model: Option<String>,
}

/// `GET /admin/requests?limit=100&client=&model=`: the latest requests from the
/// usage store, newest first.
pub async fn requests(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<RequestsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let some = |s: Option<String>| s.filter(|s| !s.is_empty());
    match recent_requests(&app, limit, some(q.client), some(q.model)).await {
        Ok(rows) => Json(json!({"store": app.store.enabled(), "requests": rows})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Query of the usage route.
#[derive(serde::Deserialize)]
pub struct UsageQuery {
    /// How far back, e.g. `24h` (default) or `7d`; at most 90 days.
    window: Option<String>,
}

/// `GET /admin/usage?window=24h`: requests and tokens per client and per serving
/// model in buckets (an hour up to two days, six hours up to two weeks, else a
/// day), for the page's charts; and the window's totals.
pub async fn usage(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<UsageQuery>,
) -> Response {
    let window = match humantime::parse_duration(q.window.as_deref().unwrap_or("24h")) {
        Ok(d) if !d.is_zero() && d <= std::time::Duration::from_secs(90 * 86_400) => d,
        Ok(_) => return bad("`window` must be more than 0 and at most 90d".into()),
        Err(e) => return bad(format!("`window`: {e} (write e.g. \"24h\" or \"7d\")")),
    };
    let hour = 3_600_000_i64;
    let bucket_ms = match window.as_secs() {
        s if s <= 2 * 86_400 => hour,
        s if s <= 14 * 86_400 => 6 * hour,
        _ => 24 * hour,
    };
    // Whole buckets: the first one starts at a bucket boundary.
    let since_ms = (crate::store::now_ms() - window.as_millis() as i64) / bucket_ms * bucket_ms;
    let Some(path) = app.store.path().map(std::path::Path::to_path_buf) else {
        return Json(json!({"store": false, "since_ms": since_ms, "bucket_ms": bucket_ms, "by_client": [], "by_model": [], "total": null})).into_response();
    };
    use crate::store::query::{By, series, usage};
    let read = tokio::task::spawn_blocking(move || {
        let conn = crate::store::open_ro(&path)?;
        Ok::<_, rusqlite::Error>((
            series(&conn, since_ms, bucket_ms, By::Client)?,
            series(&conn, since_ms, bucket_ms, By::Target)?,
            usage(&conn, since_ms, By::Total)?,
        ))
    })
    .await;
    match read {
        Ok(Ok((by_client, by_model, total))) => Json(json!({
            "store": true,
            "since_ms": since_ms,
            "bucket_ms": bucket_ms,
            "by_client": by_client,
            "by_model": by_model,
            "total": total.first(),
        }))
        .into_response(),
        Ok(Err(e)) => {
            tracing::warn!("reading the usage store: {e}");
            ApiError::Unavailable("The usage store cannot be read.").into_response()
        }
        Err(_) => ApiError::Unavailable("Reading the usage store failed.").into_response(),
    }
}
