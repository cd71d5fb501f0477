//! OpenTelemetry traces of requests (`[telemetry] otlp_endpoint`; off by default).
//!
//! One span per request (kind SERVER, named `<operation> <model asked for>`), with
//! children for the phases a request goes through at a local model: `cold start`
//! (waiting for the model to start), `queue wait` (for a slot), `upstream` (kind
//! CLIENT, the call to the backend or provider, one per attempt) and, under it,
//! `first token` (from sending to the first byte of the response body).
//! Attributes follow OpenTelemetry's GenAI semantic conventions
//! (`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.response.model`,
//! `gen_ai.provider.name`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
//! `server.address`, `server.port`, `error.type`) plus llmvisor's own
//! (`llmvisor.client`, `llmvisor.route`, `llmvisor.target`, `llmvisor.request_id`).
//! Prompt text is put on a span only with `[telemetry] capture_content = true`.
//!
//! A client's W3C `traceparent` makes the request span its child (a `sampled=0`
//! parent is honoured: nothing is recorded); the backend gets a `traceparent`
//! naming the `upstream` span. With tracing off a client's `traceparent` goes to
//! local backends as it came. External providers never get one.
//!
//! Cost: with tracing off a request carries a [`RequestSpan`] that is `None` — no
//! allocation, no clock read, one branch per hook. With it on, finished spans go
//! into a bounded queue (`[telemetry] queue`) that a task drains into OTLP/HTTP
//! protobuf exports; a full queue drops the span and counts it
//! (`llmvisor_trace_spans_dropped_total`): the request path never waits for the
//! collector.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::config::TelemetryConfig;

/// Spans per OTLP export at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const LINGER: Duration = Duration::from_millis(500);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer of a running llmvisor with tracing on.
pub struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    flush: mpsc::Sender<Msg>,
    capture_content: bool,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

/// What the queue carries to the export task. Spans are nearly all of it: boxing
/// them to shrink the rare `Flush` would cost an allocation per span.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Span(SpanData),
    /// Export what is queued, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The span processor: hands finished spans to the export task without waiting.
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<Msg>,
    dropped: Counter,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(Msg::Span(span)).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl Tracing {
    /// Start the exporter (inside the runtime) when `[telemetry] otlp_endpoint` is
    /// set; `None` when it is not, or when the exporter cannot be built (logged).
    pub fn start(
        cfg: &TelemetryConfig,
        metrics: &crate::telemetry::metrics::Metrics,
    ) -> Option<Arc<Self>> {
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        let url = cfg.traces_url()?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let mut exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("traces are off: cannot build the OTLP exporter for {url}: {e}");
                return None;
            }
        };
        exporter.set_resource(&resource);
        let (tx, rx) = mpsc::channel(cfg.queue.max(1) as usize);
        let (exported, dropped, failed) = metrics.trace_spans.clone();
        tokio::spawn(export_loop(rx, exporter, exported, failed, url.clone()));
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(Queue {
                tx: tx.clone(),
                dropped,
            })
            .build();
        let tracer = provider.tracer("llmvisor");
        tracing::info!("traces go to {url} (OTLP/HTTP protobuf)");
        Some(Arc::new(Self {
            tracer,
            provider,
            flush: tx,
            capture_content: cfg.capture_content,
        }))
    }

    /// Export what is queued (at shutdown), waiting at most `within`.
    pub async fn flush(&self, within: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = tokio::time::timeout(within, self.flush.send(Msg::Flush(tx))).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout(within, rx).await;
        }
        let _ = self.provider.shutdown_with_timeout(within);
    }
}

/// Drain the queue into exports of up to [`BATCH`] spans, each sent at most
/// [`LINGER`] after its first span arrived.
async fn export_loop(
    mut rx: mpsc::Receiver<Msg>,
    exporter: opentelemetry_otlp::SpanExporter,
    exported: Counter,
    failed: Counter,
    url: String,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut warned: Option<Instant> = None;
    loop {
        let mut flushed = None;
        match rx.recv().await {
            None => return,
            Some(Msg::Span(s)) => batch.push(s),
            Some(Msg::Flush(done)) => flushed = Some(done),
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while flushed.is_none() && batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Span(s))) => batch.push(s),
                Ok(Some(Msg::Flush(done))) => flushed = Some(done),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match exporter
                .export(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .await
            {
                Ok(()) => {
                    exported.inc_by(n);
                }
                Err(e) => {
                    failed.inc_by(n);
                    // Once a minute at most: a collector that is down must not
                    // flood the journal.
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warned = Some(Instant::now());
                        tracing::warn!("cannot export {n} span(s) to {url}: {e}");
                    }
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// `gen_ai.operation.name` of an endpoint.
fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "chat/completions" | "messages" => "chat",
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        "rerank" => "rerank",
        _ => "request",
    }
}

/// A W3C `traceparent` header's value for a span.
fn traceparent(cx: &Context) -> Option<HeaderValue> {
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    HeaderValue::from_str(&format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
    .ok()
}

/// The parent named by a client's `traceparent`, if valid.
fn parent_of(traceparent: Option<&HeaderValue>) -> Context {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    struct Header<'a>(Option<&'a str>);
    impl Extractor for Header<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.filter(|_| key == "traceparent")
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    let value = traceparent.and_then(|v| v.to_str().ok());
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Header(value))
}

/// The client's `traceparent`, kept for the request span only while tracing is on.
pub fn client_parent(tracing: Option<&Arc<Tracing>>, headers: &HeaderMap) -> Option<HeaderValue> {
    tracing.and_then(|_| headers.get("traceparent").cloned())
}

/// `Instant` → wall-clock time (spans carry wall-clock times).
fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    SystemTime::now() - now.saturating_duration_since(at)
}

/// Who asked for what: the request span's first attributes.
pub struct Asked<'a> {
    /// The API endpoint (`chat/completions`, …).
    pub endpoint: &'static str,
    /// The public model name asked for.
    pub route: &'a str,
    /// The client's name.
    pub client: &'a str,
    /// `x-request-id`.
    pub request_id: &'a HeaderValue,
    /// A streaming request.
    pub stream: bool,
    /// The request body (for `capture_content`).
    pub body: &'a [u8],
}

/// Where an attempt goes: the `upstream` span's attributes.
pub struct Upstream<'a> {
    /// The target's label (instance, or `provider/model`).
    pub label: &'a str,
    /// The model name the target is called by (`gen_ai.request.model`).
    pub model: &'a str,
    /// `gen_ai.provider.name`: the backend kind (`vllm`, `llama-cpp`, …) or the
    /// provider's name.
    pub provider: &'a str,
    /// `server.address`.
    pub address: &'a str,
    /// `server.port`.
    pub port: u16,
}

/// How a request ended: the request span's last attributes.
pub struct Finished<'a> {
    /// The target that answered (`-` for none).
    pub target: &'a str,
    /// The status the client got.
    pub status: u16,
    /// The error code, if it failed.
    pub error: Option<&'a str>,
    /// Prompt and completion tokens from the response's usage.
    pub usage: Option<(u64, u64)>,
    /// When the first byte of the response body arrived.
    pub first_byte: Option<Instant>,
}

/// One request's spans; `None` inside when tracing is off (or the client's parent
/// is not sampled).
#[derive(Default)]
pub struct RequestSpan(Option<Box<Active>>);

struct Active {
    tracer: SdkTracer,
    /// `gen_ai.operation.name`.
    op: &'static str,
    /// The context holding the request span.
    cx: Context,
    /// The attempt in progress: its `upstream` span's context and when it was sent.
    upstream: Mutex<Option<(Context, SystemTime)>>,
}

impl RequestSpan {
    /// Start the request span (backdated to `started`) as a child of the client's
    /// `traceparent`, if any.
    pub fn start(
        tracing: Option<&Arc<Tracing>>,
        traceparent: Option<&HeaderValue>,
        started: Instant,
        asked: &Asked<'_>,
    ) -> Self {
        let Some(t) = tracing else {
            return Self(None);
        };
        let parent = parent_of(traceparent);
        let op = operation(asked.endpoint);
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", op),
            KeyValue::new("gen_ai.request.model", asked.route.to_string()),
            KeyValue::new("llmvisor.route", asked.route.to_string()),
            KeyValue::new("llmvisor.client", asked.client.to_string()),
            KeyValue::new("llmvisor.stream", asked.stream),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new(
                "llmvisor.request_id",
                asked.request_id.to_str().unwrap_or("-").to_string(),
            ),
        ];
        if t.capture_content
            && let Some(content) = content_of(asked.body)
        {
            attrs.push(KeyValue::new("gen_ai.input.messages", content));
        }
        let span = t
            .tracer
            .span_builder(format!("{op} {}", asked.route))
            .with_kind(SpanKind::Server)
            .with_start_time(wall(started))
            .with_attributes(attrs)
            .start_with_context(&t.tracer, &parent);
        if !span.span_context().is_sampled() {
            return Self(None);
        }
        Self(Some(Box::new(Active {
            tracer: t.tracer.clone(),
            op,
            cx: parent.with_span(span),
            upstream: Mutex::new(None),
        })))
    }

    /// A span for a request refused before it was planned (bad key, bad body, a
    /// rate limit…): started and ended at once, with its status.
    pub fn refused(
        tracing: Option<&Arc<Tracing>>,
        traceparent: Option<&HeaderValue>,
        started: Instant,
        asked: &Asked<'_>,
        status: u16,
        error: &str,
    ) {
        let span = Self::start(tracing, traceparent, started, asked);
        span.finish(&Finished {
            target: "-",
            status,
            error: Some(error),
            usage: None,
            first_byte: None,
        });
    }

    /// Whether spans are recorded for this request.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The time now, when spans are recorded (an attempt's start).
    pub fn now(&self) -> Option<SystemTime> {
        self.0.as_ref().map(|_| SystemTime::now())
    }

    fn child(a: &Active, parent: &Context, name: &'static str, start: SystemTime) -> Context {
        let span = a
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .start_with_context(&a.tracer, parent);
        parent.with_span(span)
    }

    /// The waits of an attempt at a local model that began at `began`: `cold start`
    /// (if it had to start) then `queue wait` (ending now).
    pub fn waited(
        &self,
        began: Option<SystemTime>,
        model: &str,
        cold_start: Option<Duration>,
        queued: Duration,
    ) {
        let (Some(a), Some(began)) = (&self.0, began) else {
            return;
        };
        let now = SystemTime::now();
        if let Some(cold) = cold_start {
            let cx = Self::child(a, &a.cx, "cold start", began);
            cx.span()
                .set_attribute(KeyValue::new("llmvisor.model", model.to_string()));
            cx.span().end_with_timestamp(began + cold);
        }
        let cx = Self::child(a, &a.cx, "queue wait", now - queued);
        cx.span()
            .set_attribute(KeyValue::new("llmvisor.model", model.to_string()));
        cx.span().end_with_timestamp(now);
    }

    /// An attempt is sent: its `upstream` span starts (ending the one of an
    /// earlier attempt that is still open). Returns the `traceparent` for the
    /// backend.
    pub fn upstream(&self, to: &Upstream<'_>) -> Option<HeaderValue> {
        let a = self.0.as_ref()?;
        let now = SystemTime::now();
        // GenAI client spans are named `<operation> <model>`.
        let span = a
            .tracer
            .span_builder(format!("{} {}", a.op, to.model))
            .with_kind(SpanKind::Client)
            .with_start_time(now)
            .with_attributes([
                KeyValue::new("gen_ai.operation.name", a.op),
                KeyValue::new("gen_ai.request.model", to.model.to_string()),
                KeyValue::new("gen_ai.provider.name", to.provider.to_string()),
                KeyValue::new("server.address", to.address.to_string()),
                KeyValue::new("server.port", i64::from(to.port)),
                KeyValue::new("llmvisor.target", to.label.to_string()),
            ])
            .start_with_context(&a.tracer, &a.cx);
        let cx = a.cx.with_span(span);
        let header = traceparent(&cx);
        let old = a
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((cx, now));
        if let Some((old, _)) = old {
            old.span().end();
        }
        header
    }

    /// The attempt in progress failed before a response was relayed (it may be
    /// retried elsewhere).
    pub fn upstream_failed(&self, error: &str) {
        let Some(a) = &self.0 else { return };
        let taken = a.upstream.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((cx, _)) = taken {
            let span = cx.span();
            span.set_attribute(KeyValue::new("error.type", error.to_string()));
            span.set_status(Status::error(error.to_string()));
            span.end();
        }
    }

    /// The request ended: the `upstream` span (with its `first token` child) and
    /// the request span end with what the response said.
    pub fn finish(&self, f: &Finished<'_>) {
        let Some(a) = &self.0 else { return };
        let usage = |span: &opentelemetry::trace::SpanRef<'_>| {
            if let Some((input, output)) = f.usage {
                span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", input as i64));
                span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", output as i64));
            }
        };
        let taken = a.upstream.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((cx, sent)) = taken {
            if let Some(first) = f.first_byte {
                let token = Self::child(a, &cx, "first token", sent);
                token.span().end_with_timestamp(wall(first));
            }
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(f.status),
            ));
            usage(&span);
            if let Some(e) = f.error {
                span.set_attribute(KeyValue::new("error.type", e.to_string()));
                span.set_status(Status::error(e.to_string()));
            }
            span.end();
        }
        let span = a.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(f.status),
        ));
        span.set_attribute(KeyValue::new("llmvisor.target", f.target.to_string()));
        if f.target != "-" {
            span.set_attribute(KeyValue::new("gen_ai.response.model", f.target.to_string()));
        }
        usage(&span);
        if let Some(e) = f.error {
            span.set_attribute(KeyValue::new("error.type", e.to_string()));
            // A server span is in error for 5xx only (HTTP semantic conventions).
            if f.status >= 500 {
                span.set_status(Status::error(e.to_string()));
            }
        }
        span.end();
    }
}

/// The prompt of a request body as JSON text: its `messages`, else `prompt`, else
/// `input` (only with `capture_content`).
fn content_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["messages", "prompt", "input"]
        .iter()
        .find_map(|k| v.get(*k))
        .map(|m| m.to_string())
}

/// `server.address` and `server.port` of a provider's URL.
pub fn host_of(url: &str) -> (&str, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let https = url.starts_with("https://");
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || port.parse::<u16>().is_ok() => {
            match port.parse() {
                Ok(p) => (host, p),
                Err(_) => (authority, if https { 443 } else { 80 }),
            }
        }
        _ => (authority, if https { 443 } else { 80 }),
    }
}

/// The `traceparent` a local backend gets when tracing is off: the client's own.
pub fn passthrough(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get("traceparent").cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_costs_nothing_and_says_nothing() {
        let id = HeaderValue::from_static("r1");
        let s = RequestSpan::start(
            None,
            None,
            Instant::now(),
            &Asked {
                endpoint: "chat/completions",
                route: "m",
                client: "c",
                request_id: &id,
                stream: false,
                body: b"{}",
            },
        );
        assert!(!s.is_on());
        assert_eq!(s.now(), None);
        assert_eq!(
            s.upstream(&Upstream {
                label: "m",
                model: "m",
                provider: "vllm",
                address: "127.0.0.1",
                port: 1,
            }),
            None
        );
        assert_eq!(
            std::mem::size_of::<RequestSpan>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn a_clients_traceparent_is_read() {
        let h = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let cx = parent_of(Some(&h));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            traceparent(&cx).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let bad = HeaderValue::from_static("garbage");
        assert!(!parent_of(Some(&bad)).span().span_context().is_valid());
        assert!(!parent_of(None).span().span_context().is_valid());
    }

    #[test]
    fn the_endpoint_is_checked_and_gets_its_path() {
        let problems = |ep: &str| {
            let toml = format!("[telemetry]\notlp_endpoint = \"{ep}\"\n");
            match crate::config::Config::parse_open(&toml).unwrap().validate() {
                Ok(_) => Vec::new(),
                Err(p) => p
                    .into_iter()
                    .filter(|p| p.path.starts_with("telemetry"))
                    .map(|p| p.message)
                    .collect(),
            }
        };
        assert!(problems("http://127.0.0.1:4318").is_empty());
        assert!(problems("https://tempo:4318")[0].contains("https is not supported"));
        assert!(!problems("tempo:4318").is_empty());
        let cfg = |ep: &str| crate::config::TelemetryConfig {
            otlp_endpoint: Some(ep.into()),
            ..Default::default()
        };
        assert_eq!(
            cfg("http://c:4318/").traces_url().unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            cfg("http://c:4318/v1/traces").traces_url().unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(crate::config::TelemetryConfig::default().traces_url(), None);
    }

    #[test]
    fn provider_hosts() {
        assert_eq!(
            host_of("https://api.openai.com/v1/chat/completions"),
            ("api.openai.com", 443)
        );
        assert_eq!(host_of("http://10.0.0.2:8000/v1/x"), ("10.0.0.2", 8000));
        assert_eq!(host_of("http://[::1]:9000/v1"), ("[::1]", 9000));
        assert_eq!(host_of("http://peer/v1"), ("peer", 80));
    }

    #[test]
    fn prompt_content_is_found_in_each_api_shape() {
        assert_eq!(
            content_of(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap(),
            r#"[{"content":"hi","role":"user"}]"#
        );
        assert_eq!(content_of(br#"{"prompt":"once"}"#).unwrap(), r#""once""#);
        assert_eq!(content_of(br#"{"input":["a"]}"#).unwrap(), r#"["a"]"#);
        assert_eq!(content_of(b"{}"), None);
    }
}
