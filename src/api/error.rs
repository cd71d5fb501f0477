//! API errors and their one mapping to HTTP: OpenAI's `{"error": {...}}` shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::fleet::FleetError;
use crate::proxy::ProxyError;
use crate::router::dispatch::DispatchError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not what the endpoint takes.
    #[error("{message}")]
    BadRequest {
        /// For the client.
        message: String,
        /// OpenAI-style code.
        code: &'static str,
    },
    /// No model or alias of that name.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// The model's server does not have the endpoint (a pass-through path its kind
    /// lacks): (model, path).
    #[error("the model `{0}` does not serve {1}")]
    EndpointNotServed(String, String),
    /// The body is over `server.max_body`.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// The body did not arrive in time (`server.body_timeout`, `body_idle_timeout`).
    #[error("the request body was not received in time ({0})")]
    RequestTimeout(&'static str),
    /// Too many request bytes are being received (`server.max_buffered_bodies`).
    #[error("too many request bytes are being received right now")]
    BodiesOverBudget,
    /// No such path.
    #[error("unknown URL {0}")]
    UnknownUrl(String),
    /// The path exists, the method does not.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// Not allowed from where it came.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A facility of the host is missing (the journal, say).
    #[error("{0}")]
    Unavailable(&'static str),
    /// No key, or a key that is no client's.
    #[error("{message}")]
    Unauthorized {
        /// For the client.
        message: &'static str,
        /// `missing_api_key` or `invalid_api_key`.
        code: &'static str,
    },
    /// The client's key may not use this model.
    #[error("the client may not use the model `{0}`")]
    ModelNotAllowed(String),
    /// No target's context window holds the request.
    #[error("the request needs {} tokens, more than the limit of {limit}", prompt + max_tokens)]
    ContextLengthExceeded {
        /// Estimated prompt tokens.
        prompt: u64,
        /// `max_tokens` asked for.
        max_tokens: u64,
        /// The largest context window available.
        limit: u32,
    },
    /// The client is over its rate limit.
    #[error("rate limit of client `{client}` reached ({kind})")]
    RateLimited {
        /// The client.
        client: String,
        /// `requests` or `tokens`.
        kind: &'static str,
        /// The limit per minute.
        limit: u32,
        /// When a retry would fit.
        retry_after: std::time::Duration,
        /// `x-ratelimit-*` figures.
        quota: crate::auth::Quota,
    },
    /// One request asks for more tokens than the client's per-minute limit.
    #[error(
        "request of {needed} tokens is over client `{client}`'s limit of {tpm} tokens per minute"
    )]
    TooManyTokens {
        /// The client.
        client: String,
        /// Tokens counted.
        needed: u64,
        /// The limit.
        tpm: u32,
    },
    /// No target could serve it: every one skipped, the model's refusal, or the
    /// backend's failure (router::dispatch's own error, rendered here).
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        Self::Dispatch(DispatchError::Fleet(e))
    }
}

/// What an error becomes on the wire.
pub struct Rendered {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI `type`.
    pub kind: &'static str,
    /// OpenAI `code`.
    pub code: &'static str,
    /// Message for the client; never paths or backend output for 5xx.
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// OpenAI `param`.
    pub param: Option<&'static str>,
}

impl ApiError {
    /// The single mapping from errors to what the client sees.
    pub fn render(&self) -> Rendered {
        let r = |status, kind, code, message: String, retry_after| Rendered {
            status,
            kind,
            code,
            message,
            retry_after,
            param: None,
        };
        match self {
            ApiError::RequestTimeout(key) => r(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                format!("The request body was not received in time (server.{key})."),
                None,
            ),
            ApiError::BodiesOverBudget => r(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "server_busy",
                "The server is receiving too many request bodies right now; try again shortly."
                    .to_string(),
                Some(1),
            ),
            ApiError::Unauthorized { message, code } => r(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                code,
                (*message).to_string(),
                None,
            ),
            ApiError::ModelNotAllowed(m) => r(
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_allowed",
                format!("Your API key is not allowed to use the model `{m}`."),
                None,
            ),
            ApiError::ContextLengthExceeded {
                prompt,
                max_tokens,
                limit,
            } => Rendered {
                param: Some("messages"),
                ..r(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "context_length_exceeded",
                    format!(
                        "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({prompt} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                        prompt + max_tokens
                    ),
                    None,
                )
            },
            ApiError::RateLimited {
                client,
                kind,
                limit,
                retry_after,
                ..
            } => r(
                StatusCode::TOO_MANY_REQUESTS,
                kind,
                "rate_limit_exceeded",
                format!(
                    "Rate limit reached for client `{client}` on {kind} per min (RPM/TPM): Limit {limit}. Please try again in {}.",
                    crate::auth::reset_text(*retry_after)
                ),
                Some(crate::auth::retry_after_secs(*retry_after)),
            ),
            ApiError::TooManyTokens {
                client,
                needed,
                tpm,
            } => r(
                StatusCode::TOO_MANY_REQUESTS,
                "tokens",
                "rate_limit_exceeded",
                format!(
                    "Request too large for client `{client}`: Limit {tpm} tokens per min, Requested {needed}. Reduce the length of the messages or max_tokens."
                ),
                None,
            ),
            ApiError::Dispatch(DispatchError::NoTarget { route, skipped }) => r(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "no_target_available",
                format!(
                    "No target of `{route}` can take requests now ({}).",
                    skipped.join(", ")
                ),
                Some(5),
            ),
            ApiError::BadRequest { message, code } => r(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                code,
                message.clone(),
                None,
            ),
            ApiError::ModelNotFound(m) => r(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "The model `{m}` does not exist. GET /v1/models lists the models served here."
                ),
                None,
            ),
            ApiError::EndpointNotServed(m, path) => r(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_endpoint",
                format!(
                    "The model `{m}` does not serve {path}: its server does not have it (docs/api.md lists the endpoints of each kind)."
                ),
                None,
            ),
            ApiError::PayloadTooLarge(limit) => r(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                format!("The request body is larger than the limit of {limit} bytes."),
                None,
            ),
            ApiError::UnknownUrl(p) => r(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                format!("Unknown request URL: {p}."),
                None,
            ),
            ApiError::MethodNotAllowed(m) => r(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                format!("Method {m} is not allowed for this URL."),
                None,
            ),
            ApiError::Forbidden(why) => r(
                StatusCode::FORBIDDEN,
                "permission_error",
                "forbidden",
                (*why).to_string(),
                None,
            ),
            ApiError::Unavailable(why) => r(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "unavailable",
                (*why).to_string(),
                None,
            ),
            ApiError::Dispatch(DispatchError::Fleet(e)) => match e {
                FleetError::QueueFull { .. } => r(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    "queue_full",
                    format!("{e}. Retry shortly."),
                    Some(1),
                ),
                FleetError::QueueTimeout { .. } => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "queue_timeout",
                    e.to_string(),
                    Some(5),
                ),
                FleetError::StartTimeout { .. } => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "model_start_timeout",
                    e.to_string(),
                    Some(10),
                ),
                // The reason may hold backend output; it is in /health and the logs.
                FleetError::StartFailed { model, .. } => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "model_start_failed",
                    format!(
                        "Model `{model}` failed to start; an operator finds the reason in GET /health and the logs."
                    ),
                    Some(10),
                ),
                FleetError::CrashLoop {
                    model,
                    failures,
                    window,
                    ..
                } => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "model_failed",
                    format!(
                        "Model `{model}` failed {failures} times within {}; it stays stopped until an operator starts it again.",
                        humantime::format_duration(*window)
                    ),
                    None,
                ),
                FleetError::Replaced { .. } => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "model_reconfigured",
                    format!("{e}; retry."),
                    Some(1),
                ),
                FleetError::NotScheduled { retry_after, .. } => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "model_not_scheduled",
                    format!("{e}."),
                    // Seconds until a profile allows it (at least 1); an hour when
                    // nothing allows it within two days.
                    Some(retry_after.map_or(3600, |d| d.as_secs().max(1))),
                ),
                FleetError::NoGpuRoom { .. } => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "no_gpu_room",
                    format!("{e}."),
                    Some(30),
                ),
                FleetError::ShuttingDown => r(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "shutting_down",
                    "llmvisor is shutting down.".into(),
                    Some(5),
                ),
            },
            ApiError::Dispatch(DispatchError::Proxy { model, source }) => match source {
                ProxyError::Timeout(t) => r(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server_error",
                    "backend_timeout",
                    format!(
                        "Model `{model}` did not answer within {}.",
                        humantime::format_duration(*t)
                    ),
                    None,
                ),
                ProxyError::Connect(_) | ProxyError::Failed(_) => r(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "backend_error",
                    format!("The backend of model `{model}` failed while handling the request."),
                    None,
                ),
            },
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.render().status
    }

    /// The error as one SSE event (for streams that already began).
    pub fn sse_event(&self) -> Bytes {
        let r = self.render();
        crate::proxy::sse_error(&r.message, r.kind, r.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let r = self.render();
        if r.status.is_server_error() {
            tracing::warn!(status = r.status.as_u16(), "{self}");
        } else {
            tracing::debug!(status = r.status.as_u16(), "{self}");
        }
        let body = serde_json::json!({
            "error": {"message": r.message, "type": r.kind, "param": r.param, "code": r.code}
        });
        let mut resp = (r.status, Json(body)).into_response();
        if let ApiError::RateLimited {
            quota,
            kind,
            retry_after,
            ..
        } = &self
        {
            crate::api::headers::quota_headers(quota, resp.headers_mut());
            // One truth for when to come back: the exhausted limit's reset says what
            // Retry-After says (the time until this request fits, not until the
            // bucket is full again, which is what it means on an answered request).
            if let Ok(v) = HeaderValue::from_str(&crate::auth::reset_text(*retry_after)) {
                let name = if *kind == "tokens" {
                    "x-ratelimit-reset-tokens"
                } else {
                    "x-ratelimit-reset-requests"
                };
                resp.headers_mut().insert(name, v);
            }
        }
        if matches!(self, ApiError::Unauthorized { .. }) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = r.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if r.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body stays unread, so this connection cannot be reused.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
