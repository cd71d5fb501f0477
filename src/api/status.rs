//! Read-only endpoints: `/health`, `/v1/models`, `/metrics`. None of them starts a
//! model: monitoring must not wake GPUs.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, App};
use crate::auth::Denied;
use crate::fleet::{Instance, State as ModelState};
use crate::router::{NameKind, Router};

/// A model in `/health` (and, with more, on the operator's page).
pub(super) fn model_status(i: &Instance, router: &Router) -> Value {
    let s = i.status();
    let breaker = router.model_breaker(i.name());
    json!({
        "breaker": breaker.map(|b| b.state().as_str()),
        "consecutive_failures": breaker.map(|b| b.failures()),
        "state": s.state.as_str(),
        "since": humantime::format_rfc3339_seconds(s.since_wall).to_string(),
        "state_seconds": (s.since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "last_error": s.last_error,
        "exit": s.exit.as_ref().map(|e| json!({"code": e.code, "signal": e.signal, "result": e.result, "result_by": e.result.as_ref().map(|_| e.result_by.as_str()), "description": e.to_string()})),
        "restarts_paused": s.locked_out,
        "kind": i.spec.kind.as_str(),
        "unit": i.unit.unit,
        "port": i.spec.port,
        "in_flight": i.in_flight(),
        "queued": i.queued(),
        "waiting_for_slot": {"interactive": i.waiting_by_priority()[0], "batch": i.waiting_by_priority()[1]},
        "idle_seconds": i.idle_for().map(|d| d.as_secs()),
        "gpus": i.placed_gpus().unwrap_or_else(|| i.spec.limits.gpus.clone()),
        "gpu": gpu_status(i),
        "max_concurrent": i.tuning().max_concurrent,
        "max_queue": i.spec.max_queue,
        "aliases": i.spec.aliases,
    })
}

/// GPU placement, idle action and out-of-memory step-down of a model.
fn gpu_status(i: &Instance) -> Value {
    let t = i.tuning();
    let g = &i.spec.gpu;
    json!({
        "placement": if g.any { "any" } else if g.count > 0 { "pinned" } else { "none" },
        "placed_on": i.placed_gpus(),
        "vram": g.vram,
        "tensor_parallel": g.count,
        "idle_action": g.idle_action.as_str(),
        "priority": g.priority,
        "oom": (t.ooms > 0).then(|| json!({
            "count": t.ooms,
            "reason": t.reason,
            "at": t.at.map(|a| humantime::format_rfc3339_seconds(a).to_string()),
            "max_concurrent": t.max_concurrent,
            "configured_max_concurrent": i.spec.max_concurrent,
            "gpu_memory_utilization": t.gpu_memory_utilization,
            "configured_gpu_memory_utilization": i.configured_fraction(),
        })),
    })
}

/// `GET /health`: overall and per model. 200 while serving (even with failed models,
/// shown as `degraded`); 503 while shutting down.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let policy = app.policy();
    let mut models = serde_json::Map::new();
    let mut failed = false;
    for i in app.fleet.instances() {
        failed |= i.state() == ModelState::Failed;
        models.insert(i.name().to_string(), model_status(&i, &policy.router));
    }
    let mut providers = serde_json::Map::new();
    for p in policy.router.providers() {
        failed |= !p.healthy();
        providers.insert(
            p.spec.name.clone(),
            json!({
                "base_url": p.spec.base_url,
                "healthy": p.healthy(),
                "health_check": p.spec.health.as_ref().map(|h| h.path.clone()),
                "last_check_error": p.last_check_error(),
                "breaker": p.breaker.state().as_str(),
                "consecutive_failures": p.breaker.failures(),
                "in_flight": p.outstanding(),
            }),
        );
    }
    let (status, overall) = if app.fleet.shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if failed {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = json!({
        "status": overall,
        "version": env!("CARGO_PKG_VERSION"),
        "unit_manager": app.fleet.manager_name(),
        "uptime_seconds": app.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        "models": models,
        "providers": providers,
        "gpu": {
            "source": app.fleet.gpu_source().0,
            "message": app.fleet.gpu_source().1,
        },
        "profiles": {
            "active": app.fleet.active_profiles(),
        },
    });
    (status, Json(body)).into_response()
}

/// `GET /v1/models`: every public name (routes, models, aliases) the requesting
/// client's key may use, with their state and what each is for (`capabilities`).
pub async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let policy = app.policy();
    let client = match identify(&policy, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let data: Vec<Value> = policy
        .router
        .public_names()
        .iter()
        .filter(|p| client.may_use(&p.name))
        .filter_map(|p| model_entry(&app, &policy, p))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}` (openai's `models.retrieve`): one entry of the list, or
/// 404 `model_not_found` for a name that is not there or not the client's.
pub async fn model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let policy = app.policy();
    let client = match identify(&policy, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    policy
        .router
        .public_names()
        .iter()
        .find(|p| p.name == id && client.may_use(&p.name))
        .and_then(|p| model_entry(&app, &policy, p))
        .map(|e| Json(e).into_response())
        .unwrap_or_else(|| ApiError::ModelNotFound(id).into_response())
}

fn identify(
    policy: &super::Policy,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<crate::auth::Client>, ApiError> {
    policy.auth.identify(headers).map_err(|d| match d {
        Denied::Missing => ApiError::Unauthorized {
            message: "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            code: "missing_api_key",
        },
        Denied::Invalid => ApiError::Unauthorized {
            message: "Incorrect API key provided.",
            code: "invalid_api_key",
        },
    })
}

/// One `/v1/models` entry. A route is for what any of its models is for.
fn model_entry(app: &App, policy: &super::Policy, p: &crate::router::PublicName) -> Option<Value> {
    let created = app
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut entry = json!({
        "id": p.name,
        "object": "model",
        "created": created,
        "owned_by": "llmvisor",
    });
    if p.kind == NameKind::Route {
        let mut caps: Vec<String> = Vec::new();
        for t in &p.targets {
            let inst = policy.router.resolve(t).and_then(|i| app.fleet.get(i));
            let of_target = inst.map_or_else(
                || vec!["chat".to_string(), "completion".to_string()],
                |i| i.spec.capabilities.clone(),
            );
            for c in of_target {
                if !caps.contains(&c) {
                    caps.push(c);
                }
            }
        }
        entry["route"] = json!(true);
        entry["targets"] = json!(p.targets);
        entry["capabilities"] = json!(caps);
        return Some(entry);
    }
    let i = app.fleet.get(p.instance.as_deref()?)?;
    let s = i.status();
    entry["state"] = json!(s.state.as_str());
    entry["state_seconds"] = json!(s.since.elapsed().as_secs());
    entry["capabilities"] = json!(i.spec.capabilities);
    if p.kind == NameKind::Alias {
        entry["alias_of"] = json!(i.name());
    }
    if let Some(ctx) = i.spec.context_length {
        entry["max_model_len"] = json!(ctx);
    }
    Some(entry)
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.fleet.update_gauges();
    let policy = app.policy();
    let m = &app.metrics;
    let st = &app.store.stats;
    for (counter, value) in [
        (
            &m.store_dropped,
            st.dropped.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            &m.store_written,
            st.written.load(std::sync::atomic::Ordering::Relaxed),
        ),
    ] {
        counter.inc_by(value.saturating_sub(counter.get()));
    }
    app.edge.stats.export(m);
    for i in app.fleet.instances() {
        if let Some(b) = policy.router.model_breaker(i.name()) {
            m.breaker_state
                .get_or_create(&crate::telemetry::metrics::TargetLabels {
                    target: i.name().to_string(),
                })
                .set(b.state().as_gauge());
        }
    }
    for p in policy.router.providers() {
        let l = crate::telemetry::metrics::TargetLabels {
            target: p.spec.name.clone(),
        };
        m.breaker_state
            .get_or_create(&l)
            .set(p.breaker.state().as_gauge());
        m.provider_up.get_or_create(&l).set(i64::from(p.healthy()));
        m.provider_in_flight
            .get_or_create(&l)
            .set(p.outstanding() as i64);
    }
    let mut resp = app.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
