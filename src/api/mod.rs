//! The HTTP API: OpenAI-compatible endpoints (and the Anthropic and Ollama
//! dialects, translated), health, metrics, admin routes and the operator's page
//! (`/ui`).

mod account;
mod admin;
mod admit;
pub mod anthropic;
pub mod body;
pub mod error;
mod events;
pub mod headers;
mod keepalive;
mod messages;
pub mod ollama;
mod ollama_api;
pub mod openai;
pub mod server;
mod status;
mod ui;

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use error::ApiError;

use crate::auth::Auth;
use crate::config::{Kind, Settings};
use crate::fleet::Fleet;
use crate::proxy::Upstream;
use crate::router::{self, Tokenizers};
use crate::telemetry::metrics::Metrics;

/// The routing table and the clients, replaced together on reload.
pub struct Policy {
    /// Public names → targets.
    pub router: router::Router,
    /// Keys, clients, limits.
    pub auth: Auth,
}

/// What every handler shares.
pub struct App {
    /// The configuration in force at start (`[server]` applies until a restart).
    pub settings: Settings,
    /// Every model instance.
    pub fleet: Arc<Fleet>,
    /// Routing and clients; replaced on reload.
    policy: RwLock<Arc<Policy>>,
    /// The backend client.
    pub upstream: Upstream,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The usage store (request log, model events).
    pub store: crate::store::Store,
    /// When llmvisor started.
    pub started: SystemTime,
    /// Client connections: limits and counters (`[server]`, src/api/server.rs).
    pub edge: Arc<server::Edge>,
    /// Request traces (`[telemetry]`), when on.
    pub tracing: Option<Arc<crate::telemetry::trace::Tracing>>,
}

impl App {
    /// Put the pieces together (inside the runtime: provider health checks start).
    pub fn new(
        settings: Settings,
        tokenizers: &Tokenizers,
        fleet: Arc<Fleet>,
        metrics: Arc<Metrics>,
        store: crate::store::Store,
    ) -> Arc<Self> {
        let s = &settings.server;
        let upstream = Upstream::new(
            s.upstream_connect_timeout.0,
            s.upstream_header_timeout.0,
            s.upstream_idle_timeout.0,
            s.upstream_pool_idle_timeout.0,
        );
        let policy = Policy {
            router: router::Router::new(&settings, tokenizers, Some(&upstream), None),
            auth: Auth::new(&settings, None),
        };
        let edge = server::Edge::new(server::Limits::from_config(&settings.server));
        let tracing = crate::telemetry::trace::Tracing::start(
            &settings.telemetry,
            &settings.trace_export,
            &metrics,
        );
        Arc::new(Self {
            tracing,
            edge,
            policy: RwLock::new(Arc::new(policy)),
            settings,
            fleet,
            upstream,
            metrics,
            store,
            started: SystemTime::now(),
        })
    }
}

impl App {
    /// The routing table and clients in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Apply a new, validated configuration: models through the fleet (only what
    /// changed), then the name table. `[server]` and `[units]` need a restart.
    pub async fn reload(
        &self,
        new: &Settings,
        tokenizers: &Tokenizers,
    ) -> crate::fleet::ReloadSummary {
        // Keys and breaker/retry settings apply now (with the new policy); the rest of
        // [server] (listeners, timeouts) needs a restart.
        let restart_only = |s: &crate::config::ServerConfig| {
            let mut s = s.clone();
            s.auth = crate::config::AuthMode::Required;
            s.auth_none_on_network = false;
            s.breaker_failures = 0;
            s.breaker_cooldown = crate::config::HumanDuration::secs(0);
            s.retry_budget = 0.0;
            s
        };
        if restart_only(&new.server) != restart_only(&self.settings.server)
            || new.listen != self.settings.listen
        {
            tracing::warn!("[server] changed; those settings apply after a restart");
        }
        if new.store != self.settings.store {
            tracing::warn!("[store] changed; that applies after a restart");
        }
        if new.units != self.settings.units {
            tracing::warn!("[units] changed; that applies after a restart");
        }
        let summary = self
            .fleet
            .reload(new, self.settings.server.shutdown_grace.0)
            .await;
        let old = self.policy();
        let policy = Policy {
            router: router::Router::new(new, tokenizers, Some(&self.upstream), Some(&old.router)),
            auth: Auth::new(new, Some(&old.auth)),
        };
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        summary
    }
}

/// The axum router of the whole API.
pub fn routes(app: Arc<App>) -> Router {
    // Admin routes check the key (or loopback) before anything reads a body, and
    // take small bodies only.
    let admin = Router::new()
        .route("/admin/models/{name}/start", post(admin::start))
        .route("/admin/models/{name}/stop", post(admin::stop))
        .route("/admin/models/{name}/logs", get(admin::logs))
        .route("/admin/gpus", get(admin::gpus))
        .route("/admin/profiles", get(admin::profiles))
        .route(
            "/admin/profiles/{name}/activate",
            post(admin::activate_profile),
        )
        .route("/admin/profiles/resume", post(admin::resume_profiles))
        .route("/admin/test/clock", post(admin::test_clock))
        .route("/admin/events", get(events::events))
        .route("/admin/requests", get(admin::requests))
        .route("/admin/usage", get(admin::usage))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            admin::gate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10));
    let mut router = Router::new();
    // Each kind's pass-through POST paths (config::Kind::post_paths), once each.
    let mut paths: Vec<&str> = [Kind::Vllm, Kind::LlamaCpp, Kind::Ollama, Kind::Command]
        .iter()
        .flat_map(|k| k.post_paths().iter().copied())
        .collect();
    paths.sort_unstable();
    paths.dedup();
    for p in paths {
        router = router.route(p, post(openai::forward));
    }
    let router = router
        .route("/upstream/{*rest}", get(openai::upstream))
        .route("/v1/chat/completions", post(openai::forward))
        .route("/v1/completions", post(openai::forward))
        .route("/v1/embeddings", post(openai::forward))
        .route("/v1/rerank", post(openai::forward))
        .route("/v1/responses", post(openai::forward))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/api/version", get(ollama_api::version))
        .route("/api/tags", get(ollama_api::tags))
        .route("/api/ps", get(ollama_api::ps))
        .route("/api/show", post(ollama_api::show))
        .route("/api/chat", post(ollama_api::chat))
        .route("/api/generate", post(ollama_api::generate))
        .route("/api/embed", post(ollama_api::embed))
        .route("/api/embeddings", post(ollama_api::embeddings_legacy))
        .route("/v1/models", get(status::models))
        .route("/v1/models/{*id}", get(status::model))
        .route("/health", get(status::health))
        .route("/metrics", get(status::metrics))
        .route("/ui", get(ui::page))
        .route("/ui/", get(ui::page))
        .route("/ui/{file}", get(ui::asset))
        .merge(admin)
        .fallback(unknown_url)
        .method_not_allowed_fallback(method_not_allowed);
    let router = match cors(&app.settings.server.cors_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    };
    router.with_state(app)
}

/// Response headers a browser page may read (`Access-Control-Expose-Headers`).
const EXPOSED: &[&str] = &[
    "x-request-id",
    "x-llmvisor-model",
    "x-llmvisor-route",
    "x-llmvisor-target",
    "x-llmvisor-queue-ms",
    "x-llmvisor-cold-start-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "retry-after",
];

/// The CORS layer of `[server] cors_origins` (None when empty: no CORS headers at
/// all, and browsers refuse cross-origin calls). Preflights (`OPTIONS` with
/// `Access-Control-Request-Method`) are answered by the layer for every path.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("anthropic-version"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("openai-organization"),
                HeaderName::from_static("openai-project"),
            ])
            .expose_headers(
                EXPOSED
                    .iter()
                    .map(|h| HeaderName::from_static(h))
                    .collect::<Vec<_>>(),
            )
            .max_age(std::time::Duration::from_secs(600)),
    )
}

async fn unknown_url(method: Method, uri: Uri) -> Response {
    ApiError::UnknownUrl(format!("{method} {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method) -> Response {
    ApiError::MethodNotAllowed(method.to_string()).into_response()
}

/// A response whose body is what a task sends down `rx`, with `head`'s status and
/// headers and `content_type` (the translated streams of the Anthropic and Ollama
/// dialects).
pub(crate) fn channel_response(
    mut head: axum::http::response::Parts,
    content_type: &'static str,
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> Response {
    head.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(content_type),
    );
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::from_parts(head, axum::body::Body::from_stream(stream))
}
