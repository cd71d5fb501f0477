//! Read-only endpoints: `/health`, `/v1/models`, `/metrics`. None of them starts a
//! model: monitoring must not wake GPUs.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;
use crate::fleet::{Instance, State as ModelState};

fn model_status(i: &Instance) -> Value {
    let s = i.status();
    json!({
        "state": s.state.as_str(),
        "since": humantime::format_rfc3339_seconds(s.since_wall).to_string(),
        "state_seconds": (s.since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "last_error": s.last_error,
        "exit": s.exit.as_ref().map(|e| json!({"code": e.code, "signal": e.signal, "description": e.to_string()})),
        "restarts_paused": s.locked_out,
        "kind": i.spec.kind.as_str(),
        "unit": i.unit.unit,
        "port": i.spec.port,
        "in_flight": i.in_flight(),
        "queued": i.queued(),
        "idle_seconds": i.idle_for().map(|d| d.as_secs()),
        "gpus": i.spec.limits.gpus,
        "max_concurrent": i.spec.max_concurrent,
        "max_queue": i.spec.max_queue,
        "aliases": i.spec.aliases,
    })
}

/// `GET /health`: overall and per model. 200 while serving (even with failed models,
/// shown as `degraded`); 503 while shutting down.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let mut models = serde_json::Map::new();
    let mut failed = false;
    for i in app.fleet.instances() {
        failed |= i.state() == ModelState::Failed;
        models.insert(i.name().to_string(), model_status(&i));
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
    });
    (status, Json(body)).into_response()
}

/// `GET /v1/models`: OpenAI's list shape, one entry per public name, with state.
pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let created = app
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let data: Vec<Value> = app
        .router()
        .public_names()
        .iter()
        .filter_map(|p| {
            let i = app.fleet.get(&p.instance)?;
            let s = i.status();
            let mut entry = json!({
                "id": p.name,
                "object": "model",
                "created": created,
                "owned_by": "llmvisor",
                "state": s.state.as_str(),
                "state_seconds": s.since.elapsed().as_secs(),
            });
            if p.alias {
                entry["alias_of"] = json!(p.instance);
            }
            if let Some(ctx) = i.spec.context_length {
                entry["max_model_len"] = json!(ctx);
            }
            Some(entry)
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.fleet.update_gauges();
    let mut resp = app.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
