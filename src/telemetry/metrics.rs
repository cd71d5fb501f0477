//! Prometheus metrics (`GET /metrics`). Counters and histograms are updated where
//! things happen; gauges of the fleet (in flight, queue depth, state) are read from
//! the fleet at scrape time so the request path pays nothing for them.

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
        Self {
            registry,
            requests,
            request_duration,
            breaker_state,
            provider_up,
            provider_in_flight,
            in_flight,
            queue_depth,
            model_state,
            cold_start,
            failures,
            starts,
        }
    }

    /// Count one finished request.
    pub fn observe_request(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                route: labels.route.clone(),
                target: labels.target.clone(),
            })
            .observe(seconds);
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
