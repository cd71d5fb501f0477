//! `/admin/*`: operator actions. Until API keys exist they answer only to clients on
//! the loopback interface.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, App};
use crate::fleet::{Instance, StopReason};

fn find(app: &App, peer: SocketAddr, name: &str) -> Result<Arc<Instance>, ApiError> {
    if !peer.ip().is_loopback() {
        return Err(ApiError::Forbidden(
            "Admin routes answer only on the loopback interface.",
        ));
    }
    app.router()
        .resolve(name)
        .and_then(|i| app.fleet.get(i))
        .ok_or_else(|| ApiError::ModelNotFound(name.to_string()))
}

/// `POST /admin/models/{name}/start`: start now (also clears a crash lock-out).
/// Answers at once with 202; `/health` shows progress.
pub async fn start(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> Response {
    let inst = match find(&app, peer, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    if app.fleet.shutting_down() {
        return ApiError::Fleet(crate::fleet::FleetError::ShuttingDown).into_response();
    }
    let begun = inst.begin_start(true);
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
/// shows it.
pub async fn logs(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogsQuery>,
) -> Response {
    let inst = match find(&app, peer, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let lines = q.lines.unwrap_or(100).min(10_000);
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
    Path(name): Path<String>,
) -> Response {
    let inst = match find(&app, peer, &name) {
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
