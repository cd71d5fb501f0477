//! Prometheus metrics (`GET /metrics`). Counters and histograms are updated where
//! things happen; gauges of the fleet (in flight, queue depth, state) are read from
//! the fleet at scrape time so the request path pays nothing for them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The public name asked for (route, model or alias; `-` when unknown).
    pub route: String,
    /// The target that served it: instance or `provider/model` (`-` when none).
    pub target: String,
    /// The client (`anonymous` without keys, `-` before the key was checked).
    pub client: String,
    /// API endpoint, e.g. `chat/completions`.
    pub endpoint: &'static str,
    /// HTTP status sent to the client.
    pub status: u16,
}

/// Labels of the token counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Public name.
    pub route: String,
    /// Target.
    pub target: String,
    /// Client.
    pub client: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

/// Labels of the request duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The public name asked for.
    pub route: String,
    /// The target that served it.
    pub target: String,
}

/// A per-target label (models and providers).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// Instance name or provider name.
    pub target: String,
}

/// A per-model label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model instance.
    pub model: String,
}

/// Model state labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Model instance.
    pub model: String,
    /// One of the lifecycle states.
    pub state: &'static str,
}

/// Labels of a reason (why a connection closed, why a body was refused).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// e.g. `idle`, `stalled`, `timeout`, `over_budget`.
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0, 300.0,
    ])
}

fn cold_start_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// Every metric llmvisor exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by model, endpoint and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request to the end of the response.
    pub request_duration: HistogramFamily<RouteLabels>,
    /// Time from request to the first byte of the response body.
    pub ttft: HistogramFamily<RouteLabels>,
    /// Tokens by kind (`prompt`, `completion`), from the responses' usage.
    pub tokens: Family<TokenLabels, Counter>,
    /// Usage-store records dropped (channel full or write failed) (set at scrape).
    pub store_dropped: Counter,
    /// Usage-store records written (set at scrape).
    pub store_written: Counter,
    /// Spans of traces: (exported, dropped because the exporter's queue was full,
    /// lost in exports that failed).
    pub trace_spans: (Counter, Counter, Counter),
    /// Circuit breaker state per target: 0 closed, 1 open, 2 half-open (set at scrape).
    pub breaker_state: Family<TargetLabels, Gauge>,
    /// Provider health: 1 up, 0 down (set at scrape).
    pub provider_up: Family<TargetLabels, Gauge>,
    /// Requests in flight at each provider (set at scrape).
    pub provider_in_flight: Family<TargetLabels, Gauge>,
    /// Requests in flight at the backend (set at scrape).
    pub in_flight: Family<ModelLabels, Gauge>,
    /// Requests waiting for a slot or a start (set at scrape).
    pub queue_depth: Family<ModelLabels, Gauge>,
    /// 1 for the current state of each model (set at scrape).
    pub model_state: Family<StateLabels, Gauge>,
    /// Time from start to healthy.
    pub cold_start: HistogramFamily<ModelLabels>,
    /// Unexpected exits and failed starts.
    pub failures: Family<ModelLabels, Counter>,
    /// Starts of a model.
    pub starts: Family<ModelLabels, Counter>,
    /// GPUs, out-of-memory restarts, evictions, sleep and wake, profiles.
    pub gpu: GpuMetrics,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Client connections refused for a connection limit.
    pub connections_refused: Counter,
    /// Client connections closed by llmvisor, by reason (`idle`, `stalled`).
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Request bodies refused, by reason (`timeout`, `over_budget`).
    pub bodies_refused: Family<ReasonLabels, Counter>,
    /// Request body bytes being received now.
    pub body_bytes_buffered: Gauge,
    /// The series of each label set of finished requests, resolved once.
    finished: RwLock<SeriesCache>,
}

/// The labels of a finished request, borrowed (no allocation on the request path).
#[derive(Hash)]
pub struct Finished<'a> {
    /// Public name.
    pub route: &'a str,
    /// Target (`-` for none).
    pub target: &'a str,
    /// Client.
    pub client: &'a str,
    /// Endpoint.
    pub endpoint: &'static str,
    /// HTTP status.
    pub status: u16,
}

impl Finished<'_> {
    fn is(&self, l: &RequestLabels) -> bool {
        l.status == self.status
            && l.endpoint == self.endpoint
            && l.route == self.route
            && l.target == self.target
            && l.client == self.client
    }
}

/// Series of finished requests by the hash of their labels.
type SeriesCache = HashMap<u64, Vec<(RequestLabels, Arc<Series>)>>;

/// The metric handles of one label set (they share their values with the families).
struct Series {
    requests: Counter,
    duration: Histogram,
    ttft: OnceLock<Histogram>,
    tokens: OnceLock<(Counter, Counter)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("llmvisor");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        let breaker_state = Family::<TargetLabels, Gauge>::default();
        let ttft: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        let tokens = Family::<TokenLabels, Counter>::default();
        let store_dropped = Counter::default();
        let store_written = Counter::default();
        registry.register(
            "time_to_first_token_seconds",
            "Time from receiving a request to the first byte of its response body",
            ttft.clone(),
        );
        registry.register(
            "tokens",
            "Tokens reported in responses' usage, by kind (prompt, completion)",
            tokens.clone(),
        );
        registry.register(
            "store_dropped_records",
            "Usage-store records dropped because the writer could not keep up or failed",
            store_dropped.clone(),
        );
        registry.register(
            "store_written_records",
            "Usage-store records written",
            store_written.clone(),
        );
        let trace_spans = (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "trace_spans_exported",
            "Spans of request traces sent to the OTLP collector",
            trace_spans.0.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans of request traces dropped because the exporter's queue was full",
            trace_spans.1.clone(),
        );
        registry.register(
            "trace_spans_failed",
            "Spans of request traces lost in exports the collector did not accept",
            trace_spans.2.clone(),
        );
        let provider_up = Family::<TargetLabels, Gauge>::default();
        let provider_in_flight = Family::<TargetLabels, Gauge>::default();
        let in_flight = Family::<ModelLabels, Gauge>::default();
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        let model_state = Family::<StateLabels, Gauge>::default();
        let cold_start: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(cold_start_histogram);
        let failures = Family::<ModelLabels, Counter>::default();
        let starts = Family::<ModelLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, target, client, endpoint and HTTP status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the end of its response",
            request_duration.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being served by a model's backend",
            in_flight.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a model to start or for a free slot",
            queue_depth.clone(),
        );
        registry.register(
            "model_state",
            "1 for the state each model is in, 0 for the others",
            model_state.clone(),
        );
        registry.register(
            "cold_start_duration_seconds",
            "Time from starting a model to its health check passing",
            cold_start.clone(),
        );
        registry.register(
            "model_failures",
            "Model processes that exited unexpectedly or failed to start",
            failures.clone(),
        );
        registry.register("model_starts", "Starts of model backends", starts.clone());
        let gpu = GpuMetrics::register(&mut registry);
        registry.register(
            "breaker_state",
            "Circuit breaker of each target: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "provider_up",
            "1 while a provider passes its health checks, 0 while it is down",
            provider_up.clone(),
        );
        registry.register(
            "provider_requests_in_flight",
            "Requests in flight at each external provider",
            provider_in_flight.clone(),
        );
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        let bodies_refused = Family::<ReasonLabels, Counter>::default();
        let body_bytes_buffered = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections refused for server.max_connections or max_connections_per_ip",
            connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections closed by llmvisor: idle (keepalive_timeout) or stalled (write_timeout)",
            connections_closed.clone(),
        );
        registry.register(
            "request_bodies_refused",
            "Request bodies refused: timeout (body_timeout, body_idle_timeout) or over_budget (max_buffered_bodies)",
            bodies_refused.clone(),
        );
        registry.register(
            "request_body_bytes_buffered",
            "Request body bytes being received now, all requests together",
            body_bytes_buffered.clone(),
        );
        Self {
            connections_open,
            connections_refused,
            connections_closed,
            bodies_refused,
            body_bytes_buffered,
            finished: RwLock::new(HashMap::new()),
            registry,
            requests,
            request_duration,
            breaker_state,
            ttft,
            tokens,
            store_dropped,
            store_written,
            trace_spans,
            provider_up,
            provider_in_flight,
            in_flight,
            queue_depth,
            model_state,
            cold_start,
            failures,
            starts,
            gpu,
        }
    }

    /// Count one finished request: its duration, time to first byte and tokens. The
    /// series are looked up by a hash of the borrowed labels and kept, so a label set
    /// seen before costs no allocation.
    pub fn observe_finished(
        &self,
        f: &Finished<'_>,
        seconds: f64,
        ttft: Option<f64>,
        tokens: Option<(u64, u64)>,
    ) {
        let series = self.series(f);
        series.requests.inc();
        series.duration.observe(seconds);
        if let Some(t) = ttft {
            series
                .ttft
                .get_or_init(|| {
                    self.ttft
                        .get_or_create(&RouteLabels {
                            route: f.route.to_string(),
                            target: f.target.to_string(),
                        })
                        .clone()
                })
                .observe(t);
        }
        if let Some((prompt, completion)) = tokens {
            let (p, c) = series.tokens.get_or_init(|| {
                let one = |kind| {
                    self.tokens
                        .get_or_create(&TokenLabels {
                            route: f.route.to_string(),
                            target: f.target.to_string(),
                            client: f.client.to_string(),
                            kind,
                        })
                        .clone()
                };
                (one("prompt"), one("completion"))
            });
            p.inc_by(prompt);
            c.inc_by(completion);
        }
    }

    fn series(&self, f: &Finished<'_>) -> Arc<Series> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(f);
        if let Some(v) = self
            .finished
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h)
            && let Some((_, s)) = v.iter().find(|(l, _)| f.is(l))
        {
            return s.clone();
        }
        let labels = RequestLabels {
            route: f.route.to_string(),
            target: f.target.to_string(),
            client: f.client.to_string(),
            endpoint: f.endpoint,
            status: f.status,
        };
        let series = Arc::new(Series {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self
                .request_duration
                .get_or_create(&RouteLabels {
                    route: labels.route.clone(),
                    target: labels.target.clone(),
                })
                .clone(),
            ttft: OnceLock::new(),
            tokens: OnceLock::new(),
        });
        let mut map = self.finished.write().unwrap_or_else(|e| e.into_inner());
        let v = map.entry(h).or_default();
        if let Some((_, s)) = v.iter().find(|(l, _)| f.is(l)) {
            return s.clone();
        }
        v.push((labels, series.clone()));
        series
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Labels of a GPU.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    /// Device index.
    pub gpu: String,
    /// UUID (`SIMULATED-<index>` for simulated GPUs).
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// `true` for GPUs declared in `[gpu] simulate`.
    pub simulated: &'static str,
}

/// Label of a profile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    /// Profile name.
    pub profile: String,
}

fn wake_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// GPU metrics: per-GPU gauges (set at scrape), out-of-memory restarts, evictions,
/// sleep and wake, active profiles.
pub struct GpuMetrics {
    /// Memory of each GPU.
    pub memory_total: Family<GpuLabels, Gauge>,
    /// Used memory (simulated GPUs: what the models placed there declared).
    pub memory_used: Family<GpuLabels, Gauge>,
    /// Free memory.
    pub memory_free: Family<GpuLabels, Gauge>,
    /// Utilisation, percent.
    pub utilization: Family<GpuLabels, Gauge>,
    /// Temperature, °C.
    pub temperature: Family<GpuLabels, Gauge>,
    /// Power draw, watts.
    pub power: Family<GpuLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Processes on each GPU.
    pub processes: Family<GpuLabels, Gauge>,
    /// CUDA out-of-memory failures.
    pub ooms: Family<ModelLabels, Counter>,
    /// Stops to make room for another model.
    pub evictions: Family<ModelLabels, Counter>,
    /// Idle models put to sleep.
    pub sleeps: Family<ModelLabels, Counter>,
    /// Sleeping models woken.
    pub wakes: Family<ModelLabels, Counter>,
    /// Time from a request for a sleeping model to its being ready.
    pub wake_duration: HistogramFamily<ModelLabels>,
    /// 1 while a profile is active.
    pub profile_active: Family<ProfileLabels, Gauge>,
}

impl GpuMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            memory_total: Family::default(),
            memory_used: Family::default(),
            memory_free: Family::default(),
            utilization: Family::default(),
            temperature: Family::default(),
            power: Family::default(),
            processes: Family::default(),
            ooms: Family::default(),
            evictions: Family::default(),
            sleeps: Family::default(),
            wakes: Family::default(),
            wake_duration: Family::new_with_constructor(wake_histogram),
            profile_active: Family::default(),
        };
        r.register(
            "gpu_memory_total_bytes",
            "Memory of each GPU",
            m.memory_total.clone(),
        );
        r.register(
            "gpu_memory_used_bytes",
            "Used memory of each GPU (simulated GPUs: what the models placed there declared)",
            m.memory_used.clone(),
        );
        r.register(
            "gpu_memory_free_bytes",
            "Free memory of each GPU",
            m.memory_free.clone(),
        );
        r.register(
            "gpu_utilization_percent",
            "GPU utilisation (NVML)",
            m.utilization.clone(),
        );
        r.register(
            "gpu_temperature_celsius",
            "GPU temperature (NVML)",
            m.temperature.clone(),
        );
        r.register("gpu_power_watts", "GPU power draw (NVML)", m.power.clone());
        r.register(
            "gpu_processes",
            "Processes on each GPU",
            m.processes.clone(),
        );
        r.register(
            "model_oom",
            "CUDA out-of-memory failures of a model (each lowers its max_concurrent for the next start)",
            m.ooms.clone(),
        );
        r.register(
            "model_evictions",
            "Stops of an idle or sleeping model to make room on its GPU",
            m.evictions.clone(),
        );
        r.register(
            "model_sleeps",
            "Idle models put to sleep (vLLM sleep mode)",
            m.sleeps.clone(),
        );
        r.register(
            "model_wakes",
            "Sleeping models woken by a request",
            m.wakes.clone(),
        );
        r.register(
            "wake_duration_seconds",
            "Time to wake a sleeping model",
            m.wake_duration.clone(),
        );
        r.register(
            "profile_active",
            "1 while a profile is active",
            m.profile_active.clone(),
        );
        m
    }
}
