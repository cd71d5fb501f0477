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
