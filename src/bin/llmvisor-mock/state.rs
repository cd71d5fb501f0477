//! Shared server state and the admission steps every model request goes
//! through (counting, crash/OOM injection, startup gate, failure injection).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::stats::{InFlightGuard, Stats};

/// The CUDA-style message `--oom-after` writes, so supervisors can test
/// their out-of-memory classification.
pub const OOM_LINE: &str = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. \
GPU 0 has a total capacity of 23.69 GiB of which 1.02 GiB is free.";

/// A model request's headers and body: the headers moved out of the request,
/// where axum's `HeaderMap` extractor would copy them. With that copy and the
/// one `/mock/stats` kept, a header a proxy adds (`traceparent`) cost the mock
/// 1,987 instructions per request; moved, 1,022, hyper's parsing and the map's
/// insert (callgrind). The mock stands in for an engine whose requests cost far
/// more than a header; its own copies should not weigh on what it measures.
pub struct Call {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Call {
    type Rejection = BytesRejection;

    async fn from_request(mut req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = std::mem::take(req.headers_mut());
        // `Bytes`' extractor reads the body within axum's body limit (set in the
        // request's extensions); it does not read the headers.
        let body = Bytes::from_request(req, state).await?;
        Ok(Self { headers, body })
    }
}

/// Behaviour settings, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The only model name accepted.
    pub served_name: String,
    /// Time between generated tokens.
    pub token_delay: Duration,
    /// Completion length cap.
    pub max_tokens: u64,
    /// Fraction of model requests answered with HTTP 500.
    pub fail_rate: f64,
    /// Exit with status 1 when this many model requests have arrived.
    pub crash_after: Option<u64>,
    /// Like `crash_after`, printing a CUDA OOM line first.
    pub oom_after: Option<u64>,
    /// Embedding vector length.
    pub embedding_dim: usize,
    /// Reported as `max_model_len`.
    pub context_length: u64,
    /// Time `POST /wake_up` takes.
    pub wake_delay: Duration,
    /// Streams go silent (the connection stays open) after this many tokens.
    pub stall_after: Option<u64>,
}

/// Everything the handlers share. Leaked to `&'static` at start-up so that
/// handlers copy a pointer instead of bumping an `Arc` refcount (a shared
/// cache line) on every request.
#[derive(Debug)]
pub struct AppState {
    /// Behaviour settings.
    pub cfg: Config,
    /// Counters for `/mock/stats`.
    pub stats: Stats,
    /// False until `--startup-delay` has passed.
    ready: AtomicBool,
    /// vLLM sleep mode: weights "offloaded", model requests refused.
    sleeping: AtomicBool,
    /// Process start, Unix seconds (`created` in `/v1/models`).
    pub started_unix: u64,
}

/// Which API's error shape to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `{"error":{"message","type","param","code"}}`.
    OpenAi,
    /// `{"error":"message"}`.
    Ollama,
}

/// A model request that passed admission.
#[derive(Debug)]
pub struct Admitted {
    /// 0-based index among all model requests (ids, fail-rate).
    pub index: u64,
    /// Settles the in-flight accounting; must travel with the response.
    pub guard: InFlightGuard,
}

impl Admitted {
    /// Answers with an error: the request counts as completed, since the
    /// client does get a full response.
    pub fn reject(self, response: Response) -> Response {
        self.guard.complete();
        response
    }
}

impl AppState {
    /// New state; ready at once unless `ready` is false.
    pub fn new(cfg: Config, ready: bool) -> Self {
        Self {
            cfg,
            stats: Stats::default(),
            ready: AtomicBool::new(ready),
            sleeping: AtomicBool::new(false),
            started_unix: unix_now(),
        }
    }

    /// Whether the startup delay is over.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Ends the startup delay.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether `model` names the served model. A missing model is fine
    /// (vLLM falls back to its only model); Ollama clients may add the
    /// implicit `:latest` tag.
    pub fn model_matches(&self, model: Option<&str>, flavor: Flavor) -> bool {
        let served = self.cfg.served_name.as_str();
        match model {
            None => true,
            Some(m) if m == served => true,
            Some(m) => {
                flavor == Flavor::Ollama
                    && m.strip_suffix(":latest").is_some_and(|base| base == served)
            }
        }
    }

    /// The common prologue of every completion/embedding handler: counts the
    /// request, records it for `/mock/stats`, then applies (in this order)
    /// `--crash-after`/`--oom-after`, the startup gate and `--fail-rate`.
    /// The crash check comes first because a crash is triggered by the
    /// request's arrival, whatever state the server is in.
    pub fn admit(
        &'static self,
        flavor: Flavor,
        headers: HeaderMap,
        body: &Bytes,
    ) -> Result<Admitted, Response> {
        let (index, guard) = self.stats.arrive(headers, body);
        let nth = index + 1;
        if self.cfg.oom_after.is_some_and(|n| nth >= n) {
            die(OOM_LINE);
        }
        if let Some(n) = self.cfg.crash_after
            && nth >= n
        {
            die(&format!("llmvisor-mock: crashing after {n} requests"));
        }
        let admitted = Admitted { index, guard };
        if !self.is_ready() {
            return Err(admitted.reject(loading(flavor)));
        }
        if self.sleeping.load(Ordering::SeqCst) {
            return Err(admitted.reject(error(
                flavor,
                StatusCode::SERVICE_UNAVAILABLE,
                "llmvisor-mock: the model is sleeping (POST /wake_up)",
                "unavailable_error",
                "model_sleeping",
            )));
        }
        if crate::generate::should_fail(index, self.cfg.fail_rate) {
            return Err(admitted.reject(error(
                flavor,
                StatusCode::INTERNAL_SERVER_ERROR,
                "llmvisor-mock: injected failure (--fail-rate)",
                "internal_server_error",
                "internal_error",
            )));
        }
        Ok(admitted)
    }
}

/// Writes `line` to stderr and exits with status 1 at once, leaving the
/// triggering request (and any other) unanswered, like a crashed engine.
fn die(line: &str) -> ! {
    let mut err = std::io::stderr().lock();
    // Nothing useful can be done if stderr is gone; exit regardless.
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
    std::process::exit(1);
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error response in `flavor`'s shape. `kind` and `code` only appear in
/// the OpenAI shape.
pub fn error(
    flavor: Flavor,
    status: StatusCode,
    message: &str,
    kind: &str,
    code: &str,
) -> Response {
    let body = match flavor {
        Flavor::OpenAi => json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        }),
        Flavor::Ollama => json!({ "error": message }),
    };
    (status, Json(body)).into_response()
}

/// `400` for a body that does not parse or validate.
pub fn bad_request(flavor: Flavor, message: &str) -> Response {
    error(
        flavor,
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        "invalid_request",
    )
}

/// `404` for a model other than the served one.
pub fn model_not_found(flavor: Flavor, model: &str) -> Response {
    let message = match flavor {
        Flavor::OpenAi => format!("The model `{model}` does not exist."),
        Flavor::Ollama => format!("model \"{model}\" not found, try pulling it first"),
    };
    error(
        flavor,
        StatusCode::NOT_FOUND,
        &message,
        "invalid_request_error",
        "model_not_found",
    )
}

/// `503` while the startup delay runs (llama-server answers the same while
/// loading weights).
pub fn loading(flavor: Flavor) -> Response {
    error(
        flavor,
        StatusCode::SERVICE_UNAVAILABLE,
        "Loading model",
        "unavailable_error",
        "model_loading",
    )
}

/// `POST /sleep?level=N` (vLLM sleep mode): from now on model requests get 503.
pub async fn sleep(
    axum::extract::State(st): axum::extract::State<&'static AppState>,
) -> StatusCode {
    st.sleeping.store(true, Ordering::SeqCst);
    st.stats.count_sleep();
    StatusCode::OK
}

/// `POST /wake_up`: takes `--wake-delay`, then serves again.
pub async fn wake_up(
    axum::extract::State(st): axum::extract::State<&'static AppState>,
) -> StatusCode {
    tokio::time::sleep(st.cfg.wake_delay).await;
    st.sleeping.store(false, Ordering::SeqCst);
    st.stats.count_wake();
    StatusCode::OK
}

/// `GET /is_sleeping`.
pub async fn is_sleeping(
    axum::extract::State(st): axum::extract::State<&'static AppState>,
) -> Json<serde_json::Value> {
    Json(json!({ "is_sleeping": st.sleeping.load(Ordering::SeqCst) }))
}
