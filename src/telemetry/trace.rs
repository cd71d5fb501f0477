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
//! allocation, no clock read, one branch per hook. With it on, a request's spans
//! are one record (a [`Rec`]: ids, times, the few strings the attributes need),
//! filled in place as the request goes. When it ends, the thread that ends it
//! encodes the record straight into OTLP/HTTP protobuf (src/telemetry/otlp.rs)
//! in a buffer of that thread's own ([`Slot`]), while the record is still in
//! that core's cache, and keeps it for the next request it starts (a thread
//! with more than it keeps gives a batch to a pool, for threads that have
//! none); a task takes the threads' buffers and sends them as exports. A
//! record holds the keys of its spans' attribute blocks (the names they are
//! made of, [`key`]); a record of a shape the thread encoded before (the same
//! keys, status, and lengths of request id and token counts: nearly every
//! request of a busy route) is encoded from that shape's [`Template`], its
//! bytes copied and the fields that differ per request written in; another is
//! encoded field by field, its blocks (encoded once per thread) found by their
//! keys. A record names its tracer by
//! number: a request writes no reference count that every thread writes too
//! (the tracer's was, twice per request; on this project's 2-core VM that
//! measured neutral, the design is for hosts with many cores). A full buffer
//! (its share of `[telemetry] queue` spans) drops the record and counts its
//! spans (`llmvisor_trace_spans_dropped_total`): the request path never waits
//! for the collector, takes no lock another thread's requests take (but the
//! pool's, once per 32 records a thread gives or takes), and wakes the
//! export task only when its buffer was empty or a batch is full. (Before, the
//! records crossed to the export task's core through one queue under one lock;
//! the per-thread buffers read 1–2 % less CPU per traced request in an A/B of
//! the two builds with the legs' places swapped; docs/benchmarks.md.)
//! This replaced the OpenTelemetry SDK, whose span objects cost 28 % of req/s at
//! c=64 (bench/trace.sh, docs/benchmarks.md).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc, oneshot};

use smallvec::SmallVec;

use super::otlp::{self, Head, Key, Kind, Value};
use crate::config::{TelemetryConfig, TraceExport};

/// Spans per OTLP export at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const LINGER: Duration = Duration::from_millis(500);
/// The capacity an export's buffer is made with: room for a whole batch (512
/// spans without prompts take a few hundred bytes each: about 100–150 KiB), so
/// that a batch is never copied into a bigger buffer as it grows (only one with
/// prompts from `capture_content` can outgrow it). Untouched, the rest costs no
/// memory.
const KEEP: usize = 256 * 1024;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer of a running llmvisor with tracing on.
pub struct Tracing {
    shared: Arc<Shared>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    capture_content: bool,
    /// A root trace is sampled when the low 63 bits of its id's last 8 bytes
    /// are below this (`sample_ratio` x 2^63; 2^63 and above: every one).
    sample_below: u64,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

/// Encoded spans waiting for the export task: a [`Slot`] per thread that ends
/// requests, each holding what that thread encoded.
struct Shared {
    /// Its number among the tracers ([`TRACERS`]): what a request's spans name
    /// it by.
    id: NonZeroU64,
    /// Its [`Tracing`] is gone: the threads' references to it go at their next
    /// new slot.
    closed: AtomicBool,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Spans one slot holds at most: `[telemetry] queue` divided among the
    /// runtime's worker threads.
    limit: usize,
    capture_content: bool,
    /// The room an export needs before its spans ([`otlp::envelope_room`]).
    room: usize,
    /// The export task: spans arrived in an empty slot (it then waits up to
    /// [`LINGER`] for more)…
    arrived: Notify,
    /// …or a chunk is full (it exports at once).
    filled: Notify,
    dropped: Counter,
}

/// One thread's encoded spans. Only that thread writes to it; the export task
/// takes what is there. The lock is the thread's own but for that moment.
#[derive(Default)]
struct Slot(Mutex<Chunks>);

#[derive(Default)]
struct Chunks {
    /// Chunks of a full batch, waiting.
    full: Vec<Chunk>,
    /// The chunk being filled (an empty `buf` until the first span).
    open: Chunk,
}

impl Chunks {
    /// Spans in `full` and `open` (a full chunk or two at most, but when the
    /// collector is slow).
    fn spans(&self) -> usize {
        self.open.spans + self.full.iter().map(|c| c.spans).sum::<usize>()
    }
}

/// Spans encoded into an export's buffer, after the room for the message
/// around them ([`otlp::seal`]): sent as it is, not copied.
#[derive(Default)]
struct Chunk {
    buf: Vec<u8>,
    spans: usize,
    /// The clock that turned its monotonic times into wall-clock ones, read
    /// when the chunk was begun.
    clock: Option<Clock>,
}

/// A thread's slots (one per [`Shared`] it ended requests for: one in a running
/// llmvisor) and its encoding caches.
#[derive(Default)]
struct Local {
    /// Each with its tracer, held here: a request names its tracer by number, so
    /// that no count of references shared by every thread is written per
    /// request.
    slots: Vec<(Arc<Shared>, Arc<Slot>)>,
    /// The blocks of the record this thread is encoding field by field.
    blocks: Vec<u8>,
    templates: Templates,
    /// Records this thread ended, kept for the next requests it starts: a
    /// record is then not allocated by one thread and freed by another (a
    /// request often ends on another worker than the one that began it). The
    /// boxes are what is kept: a request's `Active` holds its record as one.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Rec>>,
}

/// Records a thread keeps for reuse at most.
const SPARE: usize = 64;

/// Batches of records that threads had more of than [`SPARE`], for threads
/// that have none: requests that begin on one worker and end on another leave
/// their records with the other, and the one that begins more of them would
/// otherwise allocate a record (and its keys' room) for each, which the other
/// frees. One lock per batch of [`SPARE`]` / 2` records.
#[allow(clippy::vec_box)]
static POOL: Mutex<Vec<Vec<Box<Rec>>>> = Mutex::new(Vec::new());

/// Batches the pool keeps at most (a bound on the records kept: 16 × 32).
const POOL_BATCHES: usize = 16;

/// An empty record for a request this thread starts: a spare one if it has
/// one (or a batch of them from the pool), with the room its keys and waits
/// had, else a new one.
fn new_rec() -> Box<Rec> {
    LOCAL
        .try_with(|l| {
            let spare = &mut l.borrow_mut().spare;
            if spare.is_empty()
                && let Some(batch) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop()
            {
                *spare = batch;
            }
            spare.pop()
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Box::new(Rec::empty()))
}

/// Keep an ended record for this thread's next request, emptied here, where it
/// was just encoded (its prompt, which may be large, is dropped).
fn spare(mut rec: Box<Rec>) {
    rec.clear();
    // A thread's last requests may be dropped while its locals are going.
    let _ = LOCAL.try_with(|l| {
        let spare = &mut l.borrow_mut().spare;
        if spare.len() >= SPARE {
            let batch = spare.split_off(SPARE / 2);
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_BATCHES {
                pool.push(batch);
            }
        }
        spare.push(rec);
    });
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::default();
}

/// The tracers, by number ([`Shared::id`]): where a thread finds one the first
/// time it ends a request for it.
static TRACERS: Mutex<Vec<(NonZeroU64, std::sync::Weak<Shared>)>> = Mutex::new(Vec::new());

/// This thread's slot of tracer `tracer` (among the thread's `slots`) and the
/// tracer, made and registered the first time; `None` if the tracer is gone.
fn slot_of(
    slots: &mut Vec<(Arc<Shared>, Arc<Slot>)>,
    tracer: NonZeroU64,
) -> Option<&(Arc<Shared>, Arc<Slot>)> {
    let at = match slots.iter().position(|(s, _)| s.id == tracer) {
        Some(i) => i,
        None => {
            let shared = TRACERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(id, _)| *id == tracer)
                .and_then(|(_, w)| w.upgrade())?;
            // Tracers that are gone (tests make many) go first.
            slots.retain(|(s, _)| !s.closed.load(Ordering::Relaxed));
            let slot = Arc::new(Slot::default());
            shared
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(slot.clone());
            slots.push((shared, slot));
            slots.len() - 1
        }
    };
    Some(&slots[at])
}

impl Shared {
    /// A tracer's queue, registered among [`TRACERS`].
    fn new(
        capacity: usize,
        workers: usize,
        capture_content: bool,
        room: usize,
        dropped: Counter,
    ) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let shared = Arc::new(Self {
            id: NonZeroU64::new(NEXT.fetch_add(1, Ordering::Relaxed)).expect("2^64 tracers"),
            closed: AtomicBool::new(false),
            slots: Mutex::default(),
            limit: capacity.max(1).div_ceil(workers.max(1)),
            capture_content,
            room,
            arrived: Notify::new(),
            filled: Notify::new(),
            dropped,
        });
        let mut tracers = TRACERS.lock().unwrap_or_else(|e| e.into_inner());
        tracers.retain(|(_, w)| {
            w.upgrade()
                .is_some_and(|s| !s.closed.load(Ordering::Relaxed))
        });
        tracers.push((shared.id, Arc::downgrade(&shared)));
        shared
    }

    /// Encode a finished record's spans into this thread's slot of tracer
    /// `tracer` (while the record is in this core's cache; the caller then keeps
    /// it for reuse, [`spare`]), or drop them when the slot is full; nothing when
    /// the tracer is gone.
    fn push(tracer: NonZeroU64, rec: &Rec) {
        let n = rec.spans();
        LOCAL.with_borrow_mut(
            |Local {
                 slots,
                 blocks,
                 templates,
                 ..
             }| {
                let Some((this, slot)) = slot_of(slots, tracer) else {
                    return;
                };
                let mut c = slot.0.lock().unwrap_or_else(|e| e.into_inner());
                let was = c.spans();
                if was + n > this.limit {
                    drop(c);
                    this.dropped.inc_by(n as u64);
                    return;
                }
                // A chunk is full when the record does not fit (records are not
                // split): it waits, and the export task is told.
                let rotated = c.open.spans > 0 && c.open.spans + n > BATCH;
                if rotated {
                    let full = std::mem::take(&mut c.open);
                    c.full.push(full);
                }
                let open = &mut c.open;
                let open_was = open.spans;
                if open.buf.is_empty() {
                    open.buf.reserve(KEEP);
                    open.buf.resize(this.room, 0);
                }
                let clock = *open.clock.get_or_insert_with(Clock::now);
                rec.encode(
                    &mut open.buf,
                    this.capture_content,
                    clock,
                    blocks,
                    templates,
                );
                open.spans += n;
                let filled = rotated || (open_was < BATCH && open.spans >= BATCH);
                drop(c);
                if was == 0 {
                    this.arrived.notify_one();
                }
                if filled {
                    this.filled.notify_one();
                }
            },
        );
    }

    /// Wait until there is something to export: spans arrived, then a chunk
    /// filled or [`LINGER`] passed (no lingering when a batch is already there:
    /// slots that filled during the last export are not left full, dropping,
    /// while the exporter sleeps; and other threads' first spans do not end
    /// it); or a flush was asked for (`Some(Some(done))`). `None` once the
    /// [`Tracing`] is gone.
    async fn ready(
        &self,
        flushes: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Option<Option<oneshot::Sender<()>>> {
        let mut flushed = tokio::select! {
            f = flushes.recv() => Some(f?),
            () = self.arrived.notified() => None,
            () = self.filled.notified() => None,
        };
        if flushed.is_none() && self.spans() < BATCH {
            tokio::select! {
                f = flushes.recv() => flushed = f,
                () = self.filled.notified() => {}
                () = tokio::time::sleep(LINGER) => {}
            }
        }
        Some(flushed)
    }

    /// Spans waiting, in all slots.
    fn spans(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()).spans())
            .sum()
    }

    /// Every slot's chunks into `out`; the slots of threads that are gone are
    /// forgotten once emptied.
    fn take(&self, out: &mut Vec<Chunk>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|s| {
            let mut c = s.0.lock().unwrap_or_else(|e| e.into_inner());
            out.append(&mut c.full);
            if c.open.spans > 0 {
                out.push(std::mem::take(&mut c.open));
            }
            drop(c);
            Arc::strong_count(s) > 1
        });
    }
}

impl Tracing {
    /// Start the exporter (inside the runtime) when `[telemetry] otlp_endpoint` is
    /// set; `None` when it is not, or when its URL cannot be used (logged).
    pub fn start(
        cfg: &TelemetryConfig,
        export: &TraceExport,
        metrics: &crate::telemetry::metrics::Metrics,
    ) -> Option<Arc<Self>> {
        let url = cfg.traces_url()?;
        epoch();
        let uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("traces are off: {url} is not a URL: {e}");
                return None;
            }
        };
        let connector = match connector(export) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("traces are off: {e}");
                return None;
            }
        };
        let (exported, dropped, failed) = metrics.trace_spans.clone();
        let version = env!("CARGO_PKG_VERSION");
        let resource = otlp::resource(&cfg.service_name, version);
        let scope = otlp::scope("llmvisor", version);
        let workers =
            tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
        let shared = Shared::new(
            cfg.queue as usize,
            workers,
            cfg.capture_content,
            otlp::envelope_room(&resource, &scope),
            dropped,
        );
        let (flush, flushes) = mpsc::channel(4);
        let exporter = Exporter {
            shared: shared.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            headers: export.headers.iter().cloned().collect(),
            uri,
            resource,
            scope,
            exported,
            failed,
            warned: None,
        };
        tokio::spawn(exporter.run(flushes, url.clone()));
        tracing::info!("traces go to {url} (OTLP/HTTP protobuf)");
        Some(Arc::new(Self {
            shared,
            flush,
            capture_content: cfg.capture_content,
            sample_below: sample_below(cfg.sample_ratio),
        }))
    }

    /// Export what is queued (at shutdown), waiting at most `within`.
    pub async fn flush(&self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        let sent = tokio::time::timeout(within, self.flush.send(tx)).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout(within, rx).await;
        }
    }
}

/// `http://` and `https://` collectors; https verified against `ca_file`'s roots
/// when set, else Mozilla's (compiled in, as for providers).
fn connector(export: &TraceExport) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let tls = match &export.roots {
        Some(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for der in roots {
                // Each was added to a store once already, by the configuration check.
                let _ = store.add(rustls::pki_types::CertificateDer::from(der.clone()));
            }
            // ring, as hyper-rustls's own configuration (not whichever provider
            // the crate features would pick).
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("no TLS configuration for ca_file's roots: {e}"))?
                .with_root_certificates(store)
                .with_no_client_auth();
            Some(config)
        }
        None => None,
    };
    Ok(crate::proxy::https_connector(http, tls))
}

/// The export task's state.
struct Exporter {
    shared: Arc<Shared>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `[telemetry] headers` and `headers_file`'s, sent with every export.
    headers: HeaderMap,
    uri: http::Uri,
    /// The encoded `Resource` and `InstrumentationScope` of every export.
    resource: Vec<u8>,
    scope: Vec<u8>,
    exported: Counter,
    failed: Counter,
    warned: Option<Instant>,
}

impl Exporter {
    /// Wait for spans, let a batch fill for up to [`LINGER`], export; until the
    /// [`Tracing`] is gone.
    async fn run(mut self, mut flushes: mpsc::Receiver<oneshot::Sender<()>>, url: String) {
        let mut chunks = Vec::new();
        while let Some(flushed) = self.shared.ready(&mut flushes).await {
            self.shared.take(&mut chunks);
            self.export(&mut chunks, &url).await;
            if let Some(done) = flushed {
                let _ = done.send(());
            }
        }
    }

    /// Export `chunks` (emptied) in requests of at most [`BATCH`] spans
    /// ([`batches`]).
    async fn export(&mut self, chunks: &mut Vec<Chunk>, url: &str) {
        for c in batches(chunks, self.shared.room) {
            self.send_chunk(c, url).await;
        }
    }

    /// The message around a chunk's spans goes into the room left before them,
    /// and its buffer becomes the body: spans are not copied.
    async fn send_chunk(&mut self, mut c: Chunk, url: &str) {
        let start = otlp::seal(&mut c.buf, self.shared.room, &self.resource, &self.scope);
        self.send(Bytes::from(c.buf).slice(start..), c.spans, url)
            .await;
    }

    async fn send(&mut self, body: Bytes, n: usize, url: &str) {
        let mut req = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .expect("a POST to a parsed URI");
        req.headers_mut().extend(self.headers.clone());
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| crate::proxy::error_chain(&e))?;
            let status = resp.status();
            // Read the answer through, so the connection is kept for the next.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the collector answered {status}"))
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {EXPORT_TIMEOUT:?}")));
        match sent {
            Ok(()) => {
                self.exported.inc_by(n as u64);
            }
            Err(e) => {
                self.failed.inc_by(n as u64);
                // Once a minute at most: a collector that is down must not flood
                // the journal.
                if self
                    .warned
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    self.warned = Some(Instant::now());
                    tracing::warn!("cannot export {n} span(s) to {url}: {e}");
                }
            }
        }
    }
}

/// The exports of `chunks` (emptied): a chunk of at least half a batch as it
/// is, smaller ones (from threads that ended few requests) copied together up
/// to a batch. `room`: where a chunk's spans begin.
fn batches(chunks: &mut Vec<Chunk>, room: usize) -> Vec<Chunk> {
    let mut out = Vec::with_capacity(chunks.len());
    let mut small: Option<Chunk> = None;
    for c in chunks.drain(..) {
        if c.spans >= BATCH / 2 {
            out.push(c);
            continue;
        }
        match &mut small {
            Some(s) if s.spans + c.spans <= BATCH => {
                s.buf.extend_from_slice(&c.buf[room..]);
                s.spans += c.spans;
            }
            _ => out.extend(small.replace(c)),
        }
    }
    out.extend(small);
    out
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

/// A random, non-zero 64-bit id: splitmix64 over a per-thread state seeded from
/// the standard library's per-thread random keys (ids need to be unique, not
/// secret).
fn random_id() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(SystemTime::now())
        });
    }
    loop {
        let x = STATE.with(|s| {
            let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(x);
            x
        });
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z != 0 {
            return z;
        }
    }
}

fn span_id() -> [u8; 8] {
    random_id().to_be_bytes()
}

/// Every byte's two lowercase hex digits.
const HEX2: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// `traceparent`: a constant, so that its name is checked when compiling, not
/// parsed and checked per request.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A W3C `traceparent` (version 00, sampled) naming a span.
///
/// Its 55 bytes are not checked byte by byte as `HeaderValue::from_bytes`
/// would (hex digits and `-` are all a header value may hold), and they are
/// the value's own shared bytes ([`Bytes::from_owner`]): the copy the request
/// to the backend takes ([`crate::proxy`]) counts a reference instead of
/// moving the bytes into a second allocation, as a `Vec`'s bytes would be on
/// their first clone.
fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8]) -> HeaderValue {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for (i, b) in trace_id.iter().enumerate() {
        v[3 + 2 * i..5 + 2 * i].copy_from_slice(&HEX2[usize::from(*b)]);
    }
    for (i, b) in span_id.iter().enumerate() {
        v[36 + 2 * i..38 + 2 * i].copy_from_slice(&HEX2[usize::from(*b)]);
    }
    debug_assert!(v.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-'));
    #[allow(unsafe_code)]
    // SAFETY: `v` is lowercase hex digits and `-` (the template's and `HEX2`'s
    // bytes only): visible ASCII, valid UTF-8 and a valid header value. (A
    // debug build checks it again inside.)
    unsafe {
        HeaderValue::from_maybe_shared_unchecked(Bytes::from_owner(v))
    }
}

/// A client's span: its trace, its span id, and whether it is sampled.
#[derive(Debug, PartialEq, Eq)]
struct Parent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

/// A W3C `traceparent` (Trace Context level 1, §3.2): `version-traceid-parentid-flags`
/// in lowercase hex; version `ff`, an all-zero trace or parent id, or a version 00
/// value with anything after the flags are invalid. A later version is read for its
/// first four fields.
fn parent_of(value: Option<&HeaderValue>) -> Option<Parent> {
    fn hex(s: &[u8], out: &mut [u8]) -> Option<()> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *o = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Some(())
    }
    let v = value?.as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8];
    hex(&v[..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut p = Parent {
        trace_id: [0; 16],
        span_id: [0; 8],
        sampled: false,
    };
    hex(&v[3..35], &mut p.trace_id)?;
    hex(&v[36..52], &mut p.span_id)?;
    let mut flags = [0u8];
    hex(&v[53..55], &mut flags)?;
    p.sampled = flags[0] & 1 == 1;
    (p.trace_id != [0; 16] && p.span_id != [0; 8]).then_some(p)
}

/// The client's `traceparent`, kept for the request span only while tracing is on.
pub fn client_parent(tracing: Option<&Arc<Tracing>>, headers: &HeaderMap) -> Option<HeaderValue> {
    tracing.and_then(|_| headers.get(&TRACEPARENT).cloned())
}

/// The origin of the monotonic times a record holds: an hour before the first
/// use (so that an `Instant` taken a little before it is still after it; sooner
/// after boot, boot), set by [`Tracing::start`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// A record's time: nanoseconds since [`epoch`], at least 1 (0 means "not yet").
/// The request path reads only the monotonic clock; the exporter turns these
/// into wall-clock times ([`Clock`]), once per export for all of them.
fn mono(at: Instant) -> u64 {
    (at.saturating_duration_since(epoch()).as_nanos() as u64).max(1)
}

/// The wall clock now, in Unix nanoseconds.
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Wall-clock and monotonic time read together, at an export.
#[derive(Clone, Copy)]
struct Clock {
    unix_ns: u64,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Self {
        let mono_ns = mono(Instant::now());
        Self {
            unix_ns: unix_ns(),
            mono_ns,
        }
    }

    /// Unix nanoseconds of a record's time (a later one than the clock's too).
    fn wall(self, mono: u64) -> u64 {
        (self.unix_ns + mono).saturating_sub(self.mono_ns)
    }
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
/// The record is boxed, so that a span that is off stays three words in the
/// request; the thread that ends a request keeps the box for the next request it
/// starts ([`new_rec`]).
#[derive(Default)]
pub struct RequestSpan(Option<Active>);

struct Active {
    /// Its tracer's number ([`Shared::id`]; never 0, so that a span that is off
    /// stays three words).
    tracer: NonZeroU64,
    /// `None` once finished (encoded into this thread's slot).
    rec: Mutex<Option<Box<Rec>>>,
}

/// A request's spans as recorded: what the OTLP encoder needs, nothing more.
/// What is the same for every request of a client to a route, or every attempt
/// at a target (names, kinds, most attributes), is a [`block`] encoded once.
struct Rec {
    trace_id: [u8; 16],
    /// The request span's id, and its parent's (the client's span; zeros: none).
    id: [u8; 8],
    parent: [u8; 8],
    /// `gen_ai.operation.name`.
    op: &'static str,
    /// Monotonic nanoseconds ([`mono`]; wall-clock at export); `end` is 0 until
    /// the request ends.
    start: u64,
    end: u64,
    /// The key of the request span's block: its name, kind and attributes
    /// from what was asked (in `keys`).
    head: Piece,
    /// The keys of its spans' blocks ([`key`]), one after the other: what
    /// each span's attributes are made of (names, a port), a few dozen bytes,
    /// in the record (a reused record keeps this room). The blocks are found
    /// when the record is encoded, and only when no template matches it.
    keys: Vec<u8>,
    /// `x-request-id`'s bytes: llmvisor's own ids (28 bytes) are kept in the
    /// record, not shared with the request's header (a reference count, and an
    /// allocation the first time a header's bytes are shared).
    request_id: SmallVec<[u8; 32]>,
    /// The prompt (`capture_content` only).
    content: Option<String>,
    /// How it ended.
    status: Option<u16>,
    target: Answered,
    error: Option<String>,
    usage: Option<(u64, u64)>,
    /// `cold start` and `queue wait` spans.
    waits: Vec<Wait>,
    /// `upstream` spans, one per attempt; the last may still be open. Nearly
    /// every request makes one attempt: it is kept in the record, not allocated.
    attempts: SmallVec<[Attempt; 1]>,
}

/// The target a request's span names (`llmvisor.target`).
enum Answered {
    /// None (`-`).
    None,
    /// The last attempt's: its label, the end of that attempt's block (no copy
    /// of it per request).
    LastAttempt,
    /// Another.
    Other(String),
}

struct Wait {
    id: [u8; 8],
    start: u64,
    end: u64,
    /// Its block's key: its name, kind and model (in the record's `keys`).
    head: Piece,
}

struct Attempt {
    id: [u8; 8],
    start: u64,
    /// 0 while the attempt is in progress.
    end: u64,
    /// Its block's key: its name, kind and the target's attributes, the
    /// target's label last (in the record's `keys`).
    head: Piece,
    /// The length of the target's label: the last bytes of `head` but its
    /// 0xff.
    label_len: usize,
    /// Why it failed (`error.type`).
    error: Option<String>,
    /// The attempt that answered: the status and usage it relayed, and its
    /// `first token` span (id, end).
    answered: Option<(u16, Option<(u64, u64)>)>,
    first_token: Option<([u8; 8], u64)>,
}

/// A key's place in a record's `keys`, or a block's in a buffer of blocks.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Piece {
    at: u32,
    len: u32,
}

impl Piece {
    fn of(self, buf: &[u8]) -> &[u8] {
        &buf[self.at as usize..(self.at + self.len) as usize]
    }
}

/// The room a new record's `keys` is made with: a request's and an attempt's
/// keys (under a hundred bytes with the names of a usual configuration).
const KEY_ROOM: usize = 128;

/// The attribute keys.
mod key {
    use super::Key;
    pub const OPERATION: Key = Key::new("gen_ai.operation.name");
    pub const REQUEST_MODEL: Key = Key::new("gen_ai.request.model");
    pub const RESPONSE_MODEL: Key = Key::new("gen_ai.response.model");
    pub const PROVIDER: Key = Key::new("gen_ai.provider.name");
    pub const INPUT_TOKENS: Key = Key::new("gen_ai.usage.input_tokens");
    pub const OUTPUT_TOKENS: Key = Key::new("gen_ai.usage.output_tokens");
    pub const INPUT_MESSAGES: Key = Key::new("gen_ai.input.messages");
    pub const ADDRESS: Key = Key::new("server.address");
    pub const PORT: Key = Key::new("server.port");
    pub const METHOD: Key = Key::new("http.request.method");
    pub const STATUS: Key = Key::new("http.response.status_code");
    pub const ERROR: Key = Key::new("error.type");
    pub const ROUTE: Key = Key::new("llmvisor.route");
    pub const CLIENT: Key = Key::new("llmvisor.client");
    pub const STREAM: Key = Key::new("llmvisor.stream");
    pub const REQUEST_ID: Key = Key::new("llmvisor.request_id");
    pub const TARGET: Key = Key::new("llmvisor.target");
    pub const MODEL: Key = Key::new("llmvisor.model");
}

/// The `first token` span's name and kind (INTERNAL), encoded.
const FIRST_TOKEN: &[u8] = b"\x2a\x0bfirst token\x30\x01";

/// Distinct blocks a thread keeps at most (a bound for configurations reloaded
/// many times; past it the cache starts over).
const BLOCKS: usize = 4096;

/// Encoded blocks by their keys.
type Blocks = HashMap<Box<[u8]>, Box<[u8]>, foldhash::fast::RandomState>;

/// A thread's blocks, by key ([`key`]): the attributes they stand for are
/// encoded once per thread, not once per request.
#[derive(Default)]
struct Cache {
    map: Blocks,
    /// Blocks encoded (misses), for tests.
    made: usize,
}

thread_local! {
    /// A thread's blocks (no lock).
    static CACHE: RefCell<Cache> = RefCell::default();
}

/// A block's key, at the end of `out`: `parts`, each followed by 0xff (a byte
/// no UTF-8 string holds). The first part names the kind (`r`, `u` or `w`), a
/// fixed-size one follows for `r` (the stream flag) and `u` (the port), then
/// strings. This is what the request path writes for a span's attributes: the
/// block is found (or encoded) by the thread that encodes the record, and not
/// at all when the record matches a template (whose records have the same
/// keys).
fn key(parts: &[&[u8]], out: &mut Vec<u8>) -> Piece {
    let at = out.len();
    for p in parts {
        out.extend_from_slice(p);
        out.push(0xff);
    }
    Piece {
        at: at as u32,
        len: (out.len() - at) as u32,
    }
}

/// The block of `key` ([`key`]) at the end of `out`, encoded the first time
/// this thread sees the key.
fn block(key: &[u8], out: &mut Vec<u8>) -> Piece {
    let at = out.len();
    CACHE.with_borrow_mut(|Cache { map, made }| match map.get(key) {
        Some(b) => out.extend_from_slice(b),
        None => {
            if map.len() >= BLOCKS {
                map.clear();
            }
            make_block(key, out);
            *made += 1;
            map.insert(key.into(), out[at..].into());
        }
    });
    Piece {
        at: at as u32,
        len: (out.len() - at) as u32,
    }
}

/// A key's strings: its parts after the kind and the `fixed`-size part.
fn strings(key: &[u8], fixed: usize) -> impl Iterator<Item = &str> {
    let skip = if fixed > 0 { 2 + fixed + 1 } else { 2 };
    key.get(skip..)
        .unwrap_or_default()
        .split(|b| *b == 0xff)
        // Each was a `&str` (the request path's key functions).
        .map(|s| std::str::from_utf8(s).unwrap_or("-"))
}

/// Encode the block `key` stands for at the end of `b`.
fn make_block(key: &[u8], b: &mut Vec<u8>) {
    match key.first() {
        // The request span's name (`<operation> <route>`), kind and what was
        // asked.
        Some(b'r') => {
            let stream = key.get(2) == Some(&1);
            let mut s = strings(key, 1);
            let (op, route, client) = (
                s.next().unwrap_or_default(),
                s.next().unwrap_or_default(),
                s.next().unwrap_or_default(),
            );
            otlp::name_and_kind(b, &[op, " ", route], Kind::Server);
            otlp::attribute(b, &key::OPERATION, Value::Str(op));
            otlp::attribute(b, &key::REQUEST_MODEL, Value::Str(route));
            otlp::attribute(b, &key::ROUTE, Value::Str(route));
            otlp::attribute(b, &key::CLIENT, Value::Str(client));
            otlp::attribute(b, &key::STREAM, Value::Bool(stream));
            otlp::attribute(b, &key::METHOD, Value::Str("POST"));
        }
        // An `upstream` span's name (GenAI client spans are named `<operation>
        // <model>`), kind (CLIENT) and target.
        Some(b'u') => {
            let port = match key.get(2..4) {
                Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                _ => 0,
            };
            let mut s = strings(key, 2);
            let mut next = || s.next().unwrap_or_default();
            let (op, model, provider, address, label) = (next(), next(), next(), next(), next());
            otlp::name_and_kind(b, &[op, " ", model], Kind::Client);
            otlp::attribute(b, &key::OPERATION, Value::Str(op));
            otlp::attribute(b, &key::REQUEST_MODEL, Value::Str(model));
            otlp::attribute(b, &key::PROVIDER, Value::Str(provider));
            otlp::attribute(b, &key::ADDRESS, Value::Str(address));
            otlp::attribute(b, &key::PORT, Value::Int(i64::from(port)));
            otlp::attribute(b, &key::TARGET, Value::Str(label));
        }
        // A wait's name (`cold start`, `queue wait`), kind (INTERNAL) and
        // model.
        _ => {
            let mut s = strings(key, 0);
            let (name, model) = (s.next().unwrap_or_default(), s.next().unwrap_or_default());
            otlp::name_and_kind(b, &[name], Kind::Internal);
            otlp::attribute(b, &key::MODEL, Value::Str(model));
        }
    }
}

/// The key of the request span's block ([`key`]).
fn request_key(
    op: &'static str,
    route: &str,
    client: &str,
    stream: bool,
    out: &mut Vec<u8>,
) -> Piece {
    key(
        &[
            b"r",
            &[u8::from(stream)],
            op.as_bytes(),
            route.as_bytes(),
            client.as_bytes(),
        ],
        out,
    )
}

/// The key of an `upstream` span's block, the target's label last
/// ([`Rec::label`]).
fn upstream_key(op: &'static str, to: &Upstream<'_>, out: &mut Vec<u8>) -> Piece {
    key(
        &[
            b"u",
            &to.port.to_be_bytes(),
            op.as_bytes(),
            to.model.as_bytes(),
            to.provider.as_bytes(),
            to.address.as_bytes(),
            to.label.as_bytes(),
        ],
        out,
    )
}

/// The key of a wait's block.
fn wait_key(name: &'static str, model: &str, out: &mut Vec<u8>) -> Piece {
    key(&[b"w", name.as_bytes(), model.as_bytes()], out)
}

/// The token counts' attributes (`gen_ai.usage.input_tokens`, `output_tokens`);
/// where their varints are (for a template's marks).
fn usage(s: &mut otlp::Span<'_>, (input, output): (u64, u64)) -> (usize, usize) {
    s.attr(&key::INPUT_TOKENS, Value::Int(input as i64));
    let i = s.written() - otlp::varint_len(input);
    s.attr(&key::OUTPUT_TOKENS, Value::Int(output as i64));
    (i, s.written() - otlp::varint_len(output))
}

impl Rec {
    /// A new record, with room for a request's keys.
    fn empty() -> Self {
        Self {
            trace_id: [0; 16],
            id: [0; 8],
            parent: [0; 8],
            op: "",
            start: 0,
            end: 0,
            head: Piece::default(),
            keys: Vec::with_capacity(KEY_ROOM),
            request_id: SmallVec::new(),
            content: None,
            status: None,
            target: Answered::None,
            error: None,
            usage: None,
            waits: Vec::new(),
            attempts: SmallVec::new(),
        }
    }

    /// Everything of the request it held gone, the room of its buffers kept
    /// (the ids, `op` and `start` are a new request's first writes).
    fn clear(&mut self) {
        self.end = 0;
        self.head = Piece::default();
        self.keys.clear();
        self.request_id.clear();
        self.content = None;
        self.status = None;
        self.target = Answered::None;
        self.error = None;
        self.usage = None;
        self.waits.clear();
        self.attempts.clear();
    }

    fn spans(&self) -> usize {
        1 + self.waits.len()
            + self.attempts.len()
            + self
                .attempts
                .iter()
                .filter(|a| a.first_token.is_some())
                .count()
    }

    /// The open attempt, if any.
    fn open(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut().filter(|a| a.end == 0)
    }

    /// An attempt's target's label (the end of its key, [`upstream_key`]).
    fn label(&self, a: &Attempt) -> &[u8] {
        let key = a.head.of(&self.keys);
        &key[key.len() - 1 - a.label_len..key.len() - 1]
    }

    /// The target the request span names: `-` for none (a string's bytes).
    fn target(&self) -> &[u8] {
        match &self.target {
            Answered::None => b"-",
            Answered::LastAttempt => self.attempts.last().map_or(b"-", |a| self.label(a)),
            Answered::Other(t) => t.as_bytes(),
        }
    }

    /// Write its spans into `out` (each as `ScopeSpans.spans`): a copy of the
    /// template of its shape with its own ids, times, request id and token
    /// counts written in ([`Template`]), or encoded field by field (then kept
    /// as its shape's template).
    fn encode(
        &self,
        out: &mut Vec<u8>,
        capture_content: bool,
        clock: Clock,
        blocks: &mut Vec<u8>,
        templates: &mut Templates,
    ) {
        let Some(shape) = self.shape(capture_content) else {
            self.encode_fields(out, capture_content, clock, blocks, None);
            return;
        };
        if let Some(t) = templates
            .kept
            .iter()
            .find(|t| t.shape == shape && t.keys == self.keys)
        {
            t.apply(self, out, clock);
            templates.used += 1;
            return;
        }
        let at = out.len();
        let mut marks = Marks::default();
        self.encode_fields(out, capture_content, clock, blocks, Some(&mut marks));
        let t = Template {
            shape,
            keys: self.keys.clone(),
            bytes: out[at..].to_vec(),
            marks,
        };
        if templates.kept.len() < TEMPLATES {
            templates.kept.push(t);
        } else {
            templates.kept[templates.next] = t;
            templates.next = (templates.next + 1) % TEMPLATES;
        }
    }

    /// What decides its encoding but its ids, times, request id's bytes and
    /// token counts; `None` for a record no template is kept for (an error, a
    /// wait, a retry, a captured prompt, a target other than its attempt's, a
    /// request id that is not ASCII: all encoded field by field).
    fn shape(&self, capture_content: bool) -> Option<Shape> {
        if self.error.is_some()
            || !self.waits.is_empty()
            || self.attempts.len() > 1
            || (capture_content && self.content.is_some())
            || !self.request_id.is_ascii()
        {
            return None;
        }
        let attempt = match self.attempts.first() {
            None => None,
            Some(a) => {
                let (status, usage) = a.answered?;
                if a.error.is_some() || usage != self.usage {
                    return None;
                }
                Some((a.head, a.label_len, status, a.first_token.is_some()))
            }
        };
        Some(Shape {
            parent: self.parent != [0; 8],
            status: self.status?,
            named: match self.target {
                Answered::None => false,
                Answered::LastAttempt => true,
                Answered::Other(_) => return None,
            },
            request_id: self.request_id.len(),
            usage: self
                .usage
                .map(|(i, o)| (otlp::varint_len(i) as u8, otlp::varint_len(o) as u8)),
            head: self.head,
            attempt,
        })
    }

    /// [`Rec::encode`] field by field; with `marks`, where the fields that
    /// differ per request went (from where the record begins in `out`).
    fn encode_fields(
        &self,
        out: &mut Vec<u8>,
        capture_content: bool,
        clock: Clock,
        blocks: &mut Vec<u8>,
        mut marks: Option<&mut Marks>,
    ) {
        let base = out.len();
        // The spans' blocks, found by their keys (`blocks` is a scratch buffer).
        blocks.clear();
        // A mark: where something is from where the record begins…
        let from_base = |o: usize| (o - base) as u32;
        // …for something written inside a span, moved with the span's fields
        // when it ended (`was`: where they began while it was written; `now`:
        // where they are).
        let at = |o: usize, was: usize, now: usize| from_base(o + now - was);
        let mut s = otlp::Span::begin(
            out,
            &Head {
                trace_id: &self.trace_id,
                span_id: self.id,
                parent: self.parent,
                start: clock.wall(self.start),
                end: clock.wall(self.end),
            },
        );
        let was = s.fields_at();
        let id = &self.request_id[..];
        let head = block(self.head.of(&self.keys), blocks);
        s.raw(head.of(blocks)).attr(
            &key::REQUEST_ID,
            // UTF-8 is what a protobuf string needs: an id is checked for ASCII
            // (a word at a time), else as UTF-8.
            if id.is_ascii() {
                Value::Utf8(id)
            } else {
                Value::Str(std::str::from_utf8(id).unwrap_or("-"))
            },
        );
        let id_at = s.written() - id.len();
        if capture_content && let Some(c) = &self.content {
            s.attr(&key::INPUT_MESSAGES, Value::Str(c));
        }
        let mut counts = None;
        if let Some(status) = self.status {
            // The target (`-`: none, and no response model).
            let name = std::str::from_utf8(self.target()).unwrap_or("-");
            s.attr(&key::STATUS, Value::Int(i64::from(status)))
                .attr(&key::TARGET, Value::Str(name));
            if name != "-" {
                s.attr(&key::RESPONSE_MODEL, Value::Str(name));
            }
            counts = self.usage.map(|u| usage(&mut s, u));
            if let Some(e) = &self.error {
                s.attr(&key::ERROR, Value::Str(e));
                // A server span is in error for 5xx only (HTTP semantic conventions).
                if status >= 500 {
                    s.error(e);
                }
            }
        }
        let now = s.end();
        if let Some(m) = marks.as_deref_mut() {
            m.request = from_base(now);
            m.request_id = at(id_at, was, now);
            m.usage[0] = counts.map(|(i, o)| (at(i, was, now), at(o, was, now)));
        }
        for w in &self.waits {
            let head = block(w.head.of(&self.keys), blocks);
            otlp::Span::begin(
                out,
                &Head {
                    trace_id: &self.trace_id,
                    span_id: w.id,
                    parent: self.id,
                    start: clock.wall(w.start),
                    end: clock.wall(w.end),
                },
            )
            .raw(head.of(blocks))
            .end();
        }
        for a in &self.attempts {
            let head = block(a.head.of(&self.keys), blocks);
            let mut s = otlp::Span::begin(
                out,
                &Head {
                    trace_id: &self.trace_id,
                    span_id: a.id,
                    parent: self.id,
                    start: clock.wall(a.start),
                    end: clock.wall(a.end.max(a.start)),
                },
            );
            let was = s.fields_at();
            s.raw(head.of(blocks));
            let mut counts = None;
            if let Some((status, u)) = a.answered {
                s.attr(&key::STATUS, Value::Int(i64::from(status)));
                counts = u.map(|u| usage(&mut s, u));
            }
            if let Some(e) = &a.error {
                s.attr(&key::ERROR, Value::Str(e)).error(e);
            }
            let now = s.end();
            if let Some(m) = marks.as_deref_mut() {
                m.upstream = Some(from_base(now));
                m.usage[1] = counts.map(|(i, o)| (at(i, was, now), at(o, was, now)));
            }
            if let Some((id, end)) = a.first_token {
                let now = otlp::Span::begin_short(
                    out,
                    &Head {
                        trace_id: &self.trace_id,
                        span_id: id,
                        parent: a.id,
                        start: clock.wall(a.start),
                        end: clock.wall(end),
                    },
                )
                .raw(FIRST_TOKEN)
                .end();
                if let Some(m) = marks.as_deref_mut() {
                    m.first = Some(from_base(now));
                }
            }
        }
    }
}

/// Templates a thread keeps at most (one per route, client, target and way
/// of ending it serves in turn; past them the oldest goes).
const TEMPLATES: usize = 8;

/// A thread's templates.
#[derive(Default)]
struct Templates {
    kept: Vec<Template>,
    /// The one replaced next when all are kept.
    next: usize,
    /// Records encoded from a template, for tests.
    used: usize,
}

/// What decides a record's encoding but the fields written per request
/// ([`Marks`]): records of one shape with the same `keys` are encoded the
/// same but for those.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Shape {
    /// The request span has a parent (the client's).
    parent: bool,
    /// The status the client got.
    status: u16,
    /// The request span names its attempt's target (else none).
    named: bool,
    /// The request id's length.
    request_id: usize,
    /// The lengths of the token counts' varints.
    usage: Option<(u8, u8)>,
    /// The request span's block.
    head: Piece,
    /// The one attempt: its block, its label's length, the status it relayed
    /// and whether it has a `first token` span.
    attempt: Option<(Piece, usize, u16, bool)>,
}

/// Where the fields that differ per request are in a [`Template`]'s bytes
/// (from where the record begins): where each span's fields begin (its ids and
/// times are where [`otlp::Span::begin`] puts them, [`otlp::at`]), the request
/// id, and the token counts' varints in the request span and the attempt's.
#[derive(Default, Debug)]
struct Marks {
    request: u32,
    upstream: Option<u32>,
    first: Option<u32>,
    request_id: u32,
    usage: [Option<(u32, u32)>; 2],
}

/// A record's spans as encoded, and where the fields that differ per request
/// are in them: a record of the same shape and keys is its bytes with its own
/// fields written in (one copy and some 20 writes of a few bytes, where
/// encoding field by field is some 40 pieces, each with its capacity check).
struct Template {
    shape: Shape,
    keys: Vec<u8>,
    bytes: Vec<u8>,
    marks: Marks,
}

impl Template {
    /// `rec` (of this template's shape and keys) encoded at the end of `out`.
    fn apply(&self, rec: &Rec, out: &mut Vec<u8>, clock: Clock) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        let b = &mut out[at..];
        // As `otlp::Span::begin` writes them: an end is never before its start.
        let start = clock.wall(rec.start);
        let end = clock.wall(rec.end).max(start);
        let (up_id, up_start, up_end, first) = match rec.attempts.first() {
            Some(a) => {
                let up_start = clock.wall(a.start);
                let up_end = clock.wall(a.end.max(a.start)).max(up_start);
                let first = a
                    .first_token
                    .map_or(([0; 8], 0), |(id, t)| (id, clock.wall(t).max(up_start)));
                (a.id, up_start, up_end, first)
            }
            None => ([0; 8], 0, 0, ([0; 8], 0)),
        };
        let (input, output) = rec.usage.unwrap_or_default();
        let m = &self.marks;
        // Writes of a size known when compiling: a move each, not a call.
        fn put<const N: usize>(b: &mut [u8], o: usize, v: [u8; N]) {
            b[o..o + N].copy_from_slice(&v);
        }
        // A span's ids and times, its fields beginning at `f`.
        let span = |b: &mut [u8], f: u32, id, parent: Option<[u8; 8]>, start: u64, end: u64| {
            let f = f as usize;
            put(b, f + otlp::at::TRACE, rec.trace_id);
            put(b, f + otlp::at::SPAN, id);
            let more = match parent {
                Some(p) => {
                    put(b, f + otlp::at::PARENT, p);
                    otlp::at::PARENTED
                }
                None => 0,
            };
            put(b, f + otlp::at::START + more, start.to_le_bytes());
            put(b, f + otlp::at::END + more, end.to_le_bytes());
        };
        let counts = |b: &mut [u8], at: Option<(u32, u32)>| {
            if let Some((i, o)) = at {
                otlp::put_varint(&mut b[i as usize..], input);
                otlp::put_varint(&mut b[o as usize..], output);
            }
        };
        span(
            b,
            m.request,
            rec.id,
            self.shape.parent.then_some(rec.parent),
            start,
            end,
        );
        let id = m.request_id as usize;
        b[id..id + rec.request_id.len()].copy_from_slice(&rec.request_id);
        counts(b, m.usage[0]);
        if let Some(f) = m.upstream {
            span(b, f, up_id, Some(rec.id), up_start, up_end);
            counts(b, m.usage[1]);
        }
        if let Some(f) = m.first {
            span(b, f, first.0, Some(up_id), up_start, first.1);
        }
    }
}

/// [`Tracing::sample_below`] for a ratio: 1.0 (or more) samples every id.
fn sample_below(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio > 0.0 {
        (ratio * (1u64 << 63) as f64) as u64
    } else {
        0
    }
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
        let (trace_id, parent) = match parent_of(traceparent) {
            Some(p) if !p.sampled => return Self(None),
            Some(p) => (p.trace_id, p.span_id),
            None => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&random_id().to_be_bytes());
                let low = random_id();
                if low & (u64::MAX >> 1) >= t.sample_below {
                    return Self(None);
                }
                id[8..].copy_from_slice(&low.to_be_bytes());
                (id, [0; 8])
            }
        };
        let content = if t.capture_content {
            content_of(asked.body)
        } else {
            None
        };
        let op = operation(asked.endpoint);
        let mut rec = new_rec();
        rec.trace_id = trace_id;
        rec.id = span_id();
        rec.parent = parent;
        rec.op = op;
        rec.start = mono(started);
        rec.request_id
            .extend_from_slice(asked.request_id.as_bytes());
        rec.content = content;
        rec.head = request_key(op, asked.route, asked.client, asked.stream, &mut rec.keys);
        Self(Some(Active {
            tracer: t.shared.id,
            rec: Mutex::new(Some(rec)),
        }))
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

    /// The record, while the request is on and not finished.
    fn with<R>(&self, f: impl FnOnce(&mut Rec) -> R) -> Option<R> {
        let a = self.0.as_ref()?;
        let mut rec = a.rec.lock().unwrap_or_else(|e| e.into_inner());
        rec.as_deref_mut().map(f)
    }

    /// The waits of an attempt at a local model that got its slot at `acquired`
    /// (the times its lease read, [`crate::fleet::Lease`]): `queue wait` ending
    /// then (if it had to wait for a slot: a request that found one free has no
    /// queue-wait span, as one that found the model up has no cold-start span),
    /// and `cold start` ending where that wait began (if the model had to
    /// start). No clock is read here: a request that waited for neither costs
    /// nothing.
    pub fn waited(
        &self,
        acquired: Instant,
        model: &str,
        cold_start: Option<Duration>,
        queued: Option<Duration>,
    ) {
        if cold_start.is_none() && queued.is_none() {
            return;
        }
        self.with(|r| {
            let queue_began = acquired
                .checked_sub(queued.unwrap_or_default())
                .unwrap_or(acquired);
            if let Some(cold) = cold_start {
                r.waits.push(Wait {
                    id: span_id(),
                    start: mono(queue_began.checked_sub(cold).unwrap_or(queue_began)),
                    end: mono(queue_began),
                    head: wait_key("cold start", model, &mut r.keys),
                });
            }
            if queued.is_some() {
                r.waits.push(Wait {
                    id: span_id(),
                    start: mono(queue_began),
                    end: mono(acquired),
                    head: wait_key("queue wait", model, &mut r.keys),
                });
            }
        });
    }

    /// An attempt is sent: its `upstream` span starts (ending the one of an
    /// earlier attempt that is still open). Returns the `traceparent` for the
    /// backend.
    pub fn upstream(&self, to: &Upstream<'_>) -> Option<HeaderValue> {
        self.with(|r| {
            let now = mono(Instant::now());
            if let Some(open) = r.open() {
                open.end = now;
            }
            let id = span_id();
            let head = upstream_key(r.op, to, &mut r.keys);
            r.attempts.push(Attempt {
                id,
                start: now,
                end: 0,
                head,
                label_len: to.label.len(),
                error: None,
                answered: None,
                first_token: None,
            });
            traceparent(&r.trace_id, &id)
        })
    }

    /// The attempt in progress failed before a response was relayed (it may be
    /// retried elsewhere).
    pub fn upstream_failed(&self, error: &str) {
        self.with(|r| {
            if let Some(open) = r.open() {
                open.end = mono(Instant::now());
                open.error = Some(error.to_owned());
            }
        });
    }

    /// The request ended: the `upstream` span (with its `first token` child) and
    /// the request span end with what the response said, and go to the exporter.
    pub fn finish(&self, f: &Finished<'_>) {
        let Some(a) = &self.0 else { return };
        let Some(mut rec) = a.rec.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let now = mono(Instant::now());
        if let Some(open) = rec.open() {
            open.end = now;
            open.answered = Some((f.status, f.usage));
            open.error = f.error.map(str::to_owned);
            if let Some(first) = f.first_byte {
                open.first_token = Some((span_id(), mono(first)));
            }
        }
        rec.end = now;
        rec.status = Some(f.status);
        rec.target = match rec.attempts.last() {
            Some(a) if rec.label(a) == f.target.as_bytes() => Answered::LastAttempt,
            _ if f.target == "-" => Answered::None,
            _ => Answered::Other(f.target.to_owned()),
        };
        rec.error = f.error.map(str::to_owned);
        rec.usage = f.usage;
        Shared::push(a.tracer, &rec);
        spare(rec);
    }
}

impl Drop for Active {
    /// A request dropped before it was finished (its task cancelled) still shows:
    /// its spans end now, without a status.
    fn drop(&mut self) {
        let rec = self.rec.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut rec) = rec {
            let now = mono(Instant::now());
            if let Some(open) = rec.open() {
                open.end = now;
            }
            rec.end = now;
            Shared::push(self.tracer, &rec);
            spare(rec);
        }
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
    headers.get(&TRACEPARENT).cloned()
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
        // Off, it is a `None` of three words inside the request (no allocation).
        assert_eq!(
            std::mem::size_of::<RequestSpan>(),
            3 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn a_clients_traceparent_is_read() {
        let parse = |v: &'static str| parent_of(Some(&HeaderValue::from_static(v)));
        let p = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(p.sampled);
        assert_eq!(
            traceparent(&p.trace_id, &p.span_id),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let q = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!q.sampled);
        // A later version may carry more after the flags.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what").is_some());
        for bad in [
            "garbage",
            // Uppercase hex, version ff, zero ids, 00 with a tail, bad separators.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(parent_of(None), None);
    }

    fn tracing(capacity: u32, capture_content: bool) -> Arc<Tracing> {
        sampled_tracing(capacity, capture_content, u64::MAX)
    }

    fn sampled_tracing(capacity: u32, capture_content: bool, sample_below: u64) -> Arc<Tracing> {
        let (flush, _) = mpsc::channel(1);
        let (resource, scope) = envelope();
        Arc::new(Tracing {
            shared: Shared::new(
                capacity as usize,
                1,
                capture_content,
                otlp::envelope_room(&resource, &scope),
                Counter::default(),
            ),
            flush,
            capture_content,
            sample_below,
        })
    }

    fn envelope() -> (Vec<u8>, Vec<u8>) {
        (otlp::resource("x", "1"), otlp::scope("llmvisor", "1"))
    }

    type OtlpSpan = opentelemetry_proto::tonic::trace::v1::Span;

    /// What this thread's and other threads' slots hold, taken, sealed as the
    /// exporter seals them and read back with the protocol's own types.
    fn taken(t: &Tracing) -> Vec<OtlpSpan> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let (resource, scope) = envelope();
        let mut chunks = Vec::new();
        t.shared.take(&mut chunks);
        let mut spans = Vec::new();
        for mut c in chunks {
            let start = otlp::seal(&mut c.buf, t.shared.room, &resource, &scope);
            let req = ExportTraceServiceRequest::decode(&c.buf[start..]).unwrap();
            let got = req.resource_spans[0].scope_spans[0].spans.clone();
            assert_eq!(got.len(), c.spans);
            spans.extend(got);
        }
        spans
    }

    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;

    fn value(s: &OtlpSpan, k: &str) -> Option<Any> {
        s.attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone()?.value)
    }

    /// A request of one span (no attempt) that ended with 200.
    fn one_span(t: &Arc<Tracing>) {
        let id = HeaderValue::from_static("r");
        RequestSpan::start(Some(t), None, Instant::now(), &asked(&id, b"")).finish(&Finished {
            target: "-",
            status: 200,
            error: None,
            usage: None,
            first_byte: None,
        });
    }

    /// `f` on a thread of its own, joined: its thread-locals are gone when this
    /// returns.
    fn on_a_thread(f: impl FnOnce() + Send) {
        std::thread::scope(|s| s.spawn(f).join().unwrap());
    }

    /// A request answered 200 by no target, without usage.
    fn answered() -> Finished<'static> {
        Finished {
            target: "-",
            status: 200,
            error: None,
            usage: None,
            first_byte: None,
        }
    }

    /// Where a request's record is (to tell a reused one).
    fn addr(s: &RequestSpan) -> usize {
        let a = s.0.as_ref().unwrap();
        let r = a.rec.lock().unwrap();
        std::ptr::from_ref::<Rec>(r.as_deref().unwrap()) as usize
    }

    /// A thread that ends more requests than it begins hands its spare records,
    /// a batch at a time, to a thread that begins more than it ends (the pool is
    /// the process's: nextest runs each test in a process of its own).
    #[test]
    fn spare_records_go_to_threads_that_have_none() {
        let t = tracing(100_000, false);
        let id = HeaderValue::from_static("r");
        let begun: Vec<_> = (0..=SPARE)
            .map(|_| RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b"{}")))
            .collect();
        let made: std::collections::HashSet<usize> = begun.iter().map(addr).collect();
        assert_eq!(made.len(), SPARE + 1);
        on_a_thread(|| {
            for s in begun {
                s.finish(&answered());
            }
            LOCAL.with_borrow(|l| assert_eq!(l.spare.len(), SPARE / 2 + 1));
        });
        // That thread is gone with the records it kept, but not with the batch
        // it gave the pool: this thread, which has none, takes it.
        LOCAL.with_borrow(|l| assert!(l.spare.is_empty()));
        let s = RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b"{}"));
        assert!(made.contains(&addr(&s)), "a record from the pool");
        LOCAL.with_borrow(|l| assert_eq!(l.spare.len(), SPARE / 2 - 1));
    }

    /// A request names its tracer by number: a thread that never ended one of
    /// its requests finds it, and a request that outlives its tracer ends without
    /// a panic (its spans go nowhere); a tracer that is gone leaves the list when
    /// the next one comes.
    #[test]
    fn requests_find_their_tracer_by_its_number() {
        let id = HeaderValue::from_static("r");
        let t = tracing(10, false);
        let u = tracing(10, false);
        assert_ne!(t.shared.id, u.shared.id);
        let s = RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b"{}"));
        let ended = answered();
        on_a_thread(|| s.finish(&ended));
        assert_eq!((t.shared.spans(), u.shared.spans()), (1, 0));
        let s = RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b"{}"));
        let gone = t.shared.id;
        drop(t);
        on_a_thread(|| s.finish(&ended));
        drop(s);
        let _v = tracing(10, false);
        assert!(TRACERS.lock().unwrap().iter().all(|(n, _)| *n != gone));
        assert_eq!(u.shared.spans(), 0);
    }

    /// `sample_ratio`: about that share of root traces recorded; none at 0; a
    /// client's sampled `traceparent` recorded whatever the ratio.
    #[test]
    fn roots_are_sampled_by_the_ratio_and_parents_decide_for_their_own() {
        let id = HeaderValue::from_static("r1");
        let parent =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let recorded = |ratio: f64, parent: Option<&HeaderValue>| {
            let t = sampled_tracing(10, false, sample_below(ratio));
            (0..4000)
                .filter(|_| {
                    RequestSpan::start(Some(&t), parent, Instant::now(), &asked(&id, b"{}")).is_on()
                })
                .count()
        };
        assert_eq!(recorded(1.0, None), 4000);
        assert_eq!(recorded(0.0, None), 0);
        let quarter = recorded(0.25, None);
        assert!((800..=1200).contains(&quarter), "{quarter} of 4000");
        assert_eq!(recorded(0.0, Some(&parent)), 4000);
        assert_eq!(sample_below(2.0), u64::MAX);
        assert_eq!(sample_below(0.5), 1 << 62);
    }

    fn asked<'a>(id: &'a HeaderValue, body: &'a [u8]) -> Asked<'a> {
        Asked {
            endpoint: "chat/completions",
            route: "m",
            client: "c",
            request_id: id,
            stream: false,
            body,
        }
    }

    /// A request's record through its phases, encoded, read back with the
    /// protocol's own types: the spans and their parents.
    #[test]
    fn a_request_becomes_one_record_of_its_spans() {
        let t = tracing(100, true);
        let id = HeaderValue::from_static("r1");
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let parent =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let s = RequestSpan::start(Some(&t), Some(&parent), Instant::now(), &asked(&id, body));
        let before = unix_ns();
        s.waited(
            Instant::now(),
            "m",
            Some(Duration::from_millis(5)),
            Some(Duration::from_millis(1)),
        );
        let up = |label| Upstream {
            label,
            model: "m",
            provider: "vllm",
            address: "127.0.0.1",
            port: 8000,
        };
        let first = s.upstream(&up("a")).unwrap();
        s.upstream_failed("connect_error");
        let second = s.upstream(&up("b")).unwrap();
        assert_ne!(first, second);
        assert!(
            second
                .to_str()
                .unwrap()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        s.finish(&Finished {
            target: "b",
            status: 200,
            error: None,
            usage: Some((7, 3)),
            first_byte: Some(Instant::now()),
        });
        // A second finish (or the drop) adds nothing.
        s.finish(&Finished {
            target: "b",
            status: 500,
            error: None,
            usage: None,
            first_byte: None,
        });
        let after = unix_ns();
        drop(s);
        // One record, encoded when it ended: request, cold start, queue wait,
        // two upstreams, one first token.
        let spans = &taken(&t);
        assert_eq!(spans.len(), 6);
        let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "chat m",
                "cold start",
                "queue wait",
                "chat m",
                "chat m",
                "first token"
            ]
        );
        let root = &spans[0];
        assert_eq!(
            root.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        for s in &spans[1..5] {
            assert_eq!(
                s.parent_span_id, root.span_id,
                "{} under the request",
                s.name
            );
            assert_eq!(s.trace_id, root.trace_id);
        }
        assert_eq!(spans[5].parent_span_id, spans[4].span_id);
        let attrs = |s: &OtlpSpan| -> Vec<String> {
            s.attributes.iter().map(|kv| kv.key.clone()).collect()
        };
        assert!(attrs(root).contains(&"gen_ai.input.messages".to_string()));
        // The target named by the last attempt's label, the usage encoded once
        // for both spans: the values are the right ones on each.
        for k in ["llmvisor.target", "gen_ai.response.model"] {
            assert_eq!(value(root, k), Some(Any::StringValue("b".into())), "{k}");
        }
        assert_eq!(
            value(&spans[3], "llmvisor.target"),
            Some(Any::StringValue("a".into()))
        );
        for s in [root, &spans[4]] {
            assert_eq!(
                value(s, "http.response.status_code"),
                Some(Any::IntValue(200))
            );
            assert_eq!(
                value(s, "gen_ai.usage.input_tokens"),
                Some(Any::IntValue(7))
            );
            assert_eq!(
                value(s, "gen_ai.usage.output_tokens"),
                Some(Any::IntValue(3))
            );
        }
        assert!(attrs(&spans[3]).contains(&"error.type".to_string()));
        assert_eq!(spans[3].status.as_ref().unwrap().code, 2);
        assert!(!attrs(&spans[4]).contains(&"error.type".to_string()));
        assert!(attrs(&spans[4]).contains(&"gen_ai.usage.output_tokens".to_string()));
        assert!(spans[3].end_time_unix_nano <= spans[4].start_time_unix_nano);
        // Wall-clock times: the monotonic ones turned by the export's clock. The
        // request began just before `before`; the made-up waits (a 1 ms queue
        // wait ending when `waited` was called, a 5 ms cold start before it) may
        // reach a little before the request or after `after`.
        let start = spans[0].start_time_unix_nano;
        assert!(
            start <= before && before - start < 5_000_000_000,
            "{start} {before}"
        );
        let second = 1_000_000_000;
        assert!(
            spans.iter().all(|s| s.start_time_unix_nano > start - second
                && s.end_time_unix_nano < after + second)
        );
        assert!(
            spans
                .iter()
                .all(|s| s.end_time_unix_nano >= s.start_time_unix_nano)
        );
    }

    /// A thread reuses the records of requests it ended (`new_rec`/`spare`):
    /// the next request's spans carry nothing of the last one's, and a kept
    /// record holds no prompt.
    #[test]
    fn a_reused_record_carries_nothing_of_the_last_request() {
        on_a_thread(|| {
            let t = tracing(100, true);
            let id = HeaderValue::from_static("r1");
            let body = br#"{"messages":[{"role":"user","content":"secret"}]}"#;
            let s = RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, body));
            let first = addr(&s);
            s.waited(Instant::now(), "m", Some(Duration::from_millis(5)), None);
            s.upstream(&Upstream {
                label: "a",
                model: "m",
                provider: "vllm",
                address: "127.0.0.1",
                port: 8000,
            });
            s.finish(&Finished {
                target: "a",
                status: 502,
                error: Some("bad_gateway"),
                usage: Some((7, 3)),
                first_byte: Some(Instant::now()),
            });
            LOCAL.with_borrow(|l| {
                assert_eq!(l.spare.len(), 1);
                assert!(
                    l.spare[0].content.is_none(),
                    "a kept record holds no prompt"
                );
            });
            let id2 = HeaderValue::from_static("r2");
            let s = RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id2, b"{}"));
            assert_eq!(addr(&s), first, "the record was reused");
            {
                let a = s.0.as_ref().unwrap();
                let r = a.rec.lock().unwrap();
                let r = r.as_deref().unwrap();
                assert_eq!(r.head.at, 0);
                assert_eq!(r.keys.len(), r.head.len as usize, "only its own keys");
                assert!(r.waits.is_empty() && r.attempts.is_empty());
            }
            s.finish(&answered());
            let spans = taken(&t);
            // The first request: request, cold start, upstream, first token.
            assert_eq!(spans.len(), 5);
            let second = &spans[4];
            assert_eq!(second.name, "chat m");
            assert!(second.parent_span_id.is_empty());
            assert_ne!(second.trace_id, spans[0].trace_id);
            let keys: Vec<_> = second.attributes.iter().map(|kv| kv.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "gen_ai.operation.name",
                    "gen_ai.request.model",
                    "llmvisor.route",
                    "llmvisor.client",
                    "llmvisor.stream",
                    "http.request.method",
                    "llmvisor.request_id",
                    "http.response.status_code",
                    "llmvisor.target",
                ]
            );
            assert_eq!(
                value(second, "llmvisor.request_id"),
                Some(Any::StringValue("r2".into()))
            );
            assert!(second.status.as_ref().is_none_or(|st| st.code == 0));
        });
    }

    /// A record encoded from its shape's template is byte for byte what it is
    /// encoded field by field, for each shape a template is kept for (a
    /// client's parent or none, usage or none and its numbers' lengths, an
    /// attempt or none, with or without a first token, a request id of any
    /// length, the status, the target named or not), with another record's
    /// ids, times, request id and token counts each time; and one that differs
    /// in a block (another route) or has no shape of its own (an error) is
    /// encoded field by field.
    #[test]
    fn a_template_encodes_what_the_fields_would() {
        let clock = Clock {
            unix_ns: 1_700_000_000_000_000_000,
            mono_ns: 5_000,
        };
        // A record of a shape (`v`'s bits) with values from `n`.
        let record = |v: u32, n: u64, route: &str| {
            let mut r = Rec::empty();
            let bit = |b: u32| v & (1 << b) != 0;
            r.trace_id = [n as u8 + 1; 16];
            r.id = (n * 7 + 1).to_be_bytes();
            if bit(0) {
                r.parent = (n * 11 + 3).to_be_bytes();
            }
            r.op = "chat";
            r.start = 10_000 + n;
            r.end = 90_000 + 3 * n;
            r.head = request_key("chat", route, "client", bit(6), &mut r.keys);
            let len = if bit(5) { 28 } else { 3 };
            r.request_id
                .extend((0..len).map(|i| b'a' + ((i as u64 + n) % 26) as u8));
            r.status = Some(if bit(4) { 404 } else { 200 });
            r.usage = bit(1).then_some(if bit(7) {
                (100 + n, 20 + n)
            } else {
                (5_000 + n, 300 + n)
            });
            if bit(2) {
                let head = upstream_key(
                    "chat",
                    &Upstream {
                        label: "vllm-a",
                        model: "m",
                        provider: "vllm",
                        address: "127.0.0.1",
                        port: 8000,
                    },
                    &mut r.keys,
                );
                r.attempts.push(Attempt {
                    id: (n * 13 + 5).to_be_bytes(),
                    start: 20_000 + n,
                    end: 80_000 + 2 * n,
                    head,
                    label_len: 6,
                    error: None,
                    answered: Some((r.status.unwrap(), r.usage)),
                    first_token: bit(3).then_some(((n * 17 + 9).to_be_bytes(), 30_000 + n)),
                });
                if bit(8) {
                    r.target = Answered::LastAttempt;
                }
            }
            r
        };
        let fields = |r: &Rec| {
            let mut out = b"spans before".to_vec();
            r.encode_fields(&mut out, false, clock, &mut Vec::new(), None);
            out
        };
        let mut shapes = 0;
        for v in 0..512 {
            let mut t = Templates::default();
            let mut e = Vec::new();
            let first = record(v, 1, "m");
            assert!(first.shape(false).is_some(), "{v:#b}");
            let mut out = b"spans before".to_vec();
            first.encode(&mut out, false, clock, &mut e, &mut t);
            assert_eq!(
                out,
                fields(&first),
                "{v:#b}: the first is encoded field by field"
            );
            assert_eq!((t.kept.len(), t.used), (1, 0));
            for n in [2, 3, 7] {
                let r = record(v, n, "m");
                let mut out = b"spans before".to_vec();
                r.encode(&mut out, false, clock, &mut e, &mut t);
                assert_eq!(out, fields(&r), "{v:#b}, record {n}");
            }
            assert_eq!((t.kept.len(), t.used), (1, 3), "{v:#b}");
            // Another route: another block, another template.
            let other = record(v, 4, "other");
            let mut out = Vec::new();
            other.encode(&mut out, false, clock, &mut e, &mut t);
            assert_eq!(out, fields(&other)[12..]);
            assert_eq!((t.kept.len(), t.used), (2, 3));
            // An error: no template.
            let mut failed = record(v, 5, "m");
            failed.error = Some("bad_gateway".into());
            assert!(failed.shape(false).is_none());
            let mut out = Vec::new();
            failed.encode(&mut out, false, clock, &mut e, &mut t);
            assert_eq!(out, fields(&failed)[12..]);
            assert_eq!((t.kept.len(), t.used), (2, 3));
            shapes += 1;
        }
        assert_eq!(shapes, 512);
        // An `upstream` span under 128 bytes (a short name and no attributes in
        // its block): moved back by a byte when it ends, and its marks with it.
        let tiny = |n: u64| {
            let mut r = record(0b100, n, "m");
            // A key whose block is put in this thread's cache beforehand.
            let tiny = key(&[b"u", b"\x00\x01", b"tiny"], &mut r.keys);
            let mut b = Vec::new();
            otlp::name_and_kind(&mut b, &["t"], Kind::Client);
            CACHE.with_borrow_mut(|c| c.map.insert(tiny.of(&r.keys).into(), b.into()));
            r.attempts[0].head = tiny;
            r
        };
        let (mut t, mut e) = (Templates::default(), Vec::new());
        for n in 1..4 {
            let r = tiny(n);
            let want = fields(&r);
            // "spans before", the request span (a two-byte length), the
            // upstream span's tag and its length.
            let request = usize::from(want[13] & 0x7f) | usize::from(want[14]) << 7;
            assert!(want[12 + 3 + request + 1] < 0x80, "a one-byte length");
            let mut out = b"spans before".to_vec();
            r.encode(&mut out, false, clock, &mut e, &mut t);
            assert_eq!(out, want, "record {n}");
        }
        assert_eq!((t.kept.len(), t.used), (1, 2));
        // Past `TEMPLATES` shapes the oldest is replaced.
        let mut t = Templates::default();
        let mut e = Vec::new();
        for i in 0..TEMPLATES + 3 {
            record(0b110, 1, &format!("route-{i}")).encode(
                &mut Vec::new(),
                false,
                clock,
                &mut e,
                &mut t,
            );
        }
        assert_eq!(t.kept.len(), TEMPLATES);
        assert_eq!(t.used, 0);
    }

    /// What is the same for many requests is encoded once per thread: the same
    /// parts give the same block, a change in any part a different one (with what
    /// changed in it), and the cache stays bounded.
    #[test]
    fn blocks_are_encoded_once_and_keyed_by_every_part() {
        // A block's bytes, and how many blocks this thread has encoded so far.
        fn made() -> usize {
            CACHE.with_borrow(|c| c.made)
        }
        fn bytes(f: impl FnOnce(&mut Vec<u8>) -> Piece) -> Vec<u8> {
            // After something else in the buffer: a piece is where it was put.
            let mut keys = b"before".to_vec();
            let k = f(&mut keys);
            assert_eq!(k.at, 6);
            let mut out = b"blocks".to_vec();
            let b = block(k.of(&keys), &mut out);
            assert_eq!(b.at, 6);
            b.of(&out).to_vec()
        }
        let r = bytes(|o| request_key("chat", "m", "c", false, o));
        let n = made();
        // Found again, also after another.
        assert_eq!(r, bytes(|o| request_key("chat", "m", "c", false, o)));
        assert_eq!(made(), n);
        let _ = bytes(|o| request_key("chat", "n", "c", false, o));
        assert_eq!(made(), n + 1);
        assert_eq!(r, bytes(|o| request_key("chat", "m", "c", false, o)));
        assert_eq!(made(), n + 1);
        for other in [
            bytes(|o| request_key("embeddings", "m", "c", false, o)),
            bytes(|o| request_key("chat", "m2", "c", false, o)),
            bytes(|o| request_key("chat", "m", "c2", false, o)),
            bytes(|o| request_key("chat", "m", "c", true, o)),
            // The parts end where they end: "m"+"c" is not "mc"+"".
            bytes(|o| request_key("chat", "mc", "", false, o)),
        ] {
            assert_ne!(r, other);
        }
        let to = Upstream {
            label: "a",
            model: "m",
            provider: "vllm",
            address: "127.0.0.1",
            port: 8000,
        };
        let u = bytes(|o| upstream_key("chat", &to, o));
        let n = made();
        assert_eq!(u, bytes(|o| upstream_key("chat", &to, o)));
        assert_eq!(made(), n);
        for other in [
            Upstream { label: "b", ..to },
            Upstream { model: "n", ..to },
            Upstream {
                provider: "ollama",
                ..to
            },
            Upstream {
                address: "::1",
                ..to
            },
            Upstream { port: 8001, ..to },
            Upstream { port: 0xff00, ..to },
        ] {
            assert_ne!(u, bytes(|o| upstream_key("chat", &other, o)));
        }
        assert_ne!(u, bytes(|o| upstream_key("completions", &to, o)));
        assert_ne!(
            bytes(|o| wait_key("cold start", "m", o)),
            bytes(|o| wait_key("queue wait", "m", o))
        );
        assert_ne!(
            bytes(|o| wait_key("cold start", "m", o)),
            bytes(|o| wait_key("cold start", "n", o))
        );
        // A port with a 0xff byte (the byte that ends a part) is read whole,
        // and the parts after it.
        let b = bytes(|o| {
            upstream_key(
                "chat",
                &Upstream {
                    port: 0xffff,
                    label: "lab",
                    ..to
                },
                o,
            )
        });
        for (k, v) in [
            (&key::PORT, Value::Int(0xffff)),
            (&key::OPERATION, Value::Str("chat")),
            (&key::TARGET, Value::Str("lab")),
        ] {
            let mut want = Vec::new();
            otlp::attribute(&mut want, k, v);
            assert!(b.windows(want.len()).any(|w| w == want), "{v:?}");
        }
        for i in 0..BLOCKS + 10 {
            let _ = bytes(|o| wait_key("cold start", &i.to_string(), o));
        }
        assert!(CACHE.with_borrow(|c| c.map.len()) <= BLOCKS);
    }

    /// A full slot drops whole records and counts their spans; an unsampled
    /// parent records nothing; a request dropped unfinished still shows.
    #[test]
    fn the_queue_is_bounded_and_counts_what_it_drops() {
        let t = tracing(3, false);
        let id = HeaderValue::from_static("r");
        let done = Finished {
            target: "-",
            status: 404,
            error: Some("model_not_found"),
            usage: None,
            first_byte: None,
        };
        for _ in 0..4 {
            RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b"")).finish(&done);
        }
        assert_eq!(t.shared.dropped.get(), 1);
        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let s = RequestSpan::start(Some(&t), Some(&unsampled), Instant::now(), &asked(&id, b""));
        assert!(!s.is_on());
        let spans = taken(&t);
        assert_eq!(spans.len(), 3);
        for s in &spans {
            assert_eq!(
                value(s, "http.response.status_code"),
                Some(Any::IntValue(404))
            );
            assert_eq!(
                value(s, "llmvisor.target"),
                Some(Any::StringValue("-".into()))
            );
            assert_eq!(value(s, "gen_ai.input.messages"), None);
            assert_eq!(value(s, "gen_ai.response.model"), None);
        }
        // Taken, the slot has room again.
        RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b"")).finish(&done);
        assert_eq!(taken(&t).len(), 1);
        assert_eq!(t.shared.dropped.get(), 1);

        // A target other than the last attempt's is the record's own.
        let s = RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b""));
        s.upstream(&Upstream {
            label: "a",
            model: "m",
            provider: "vllm",
            address: "127.0.0.1",
            port: 1,
        });
        s.finish(&Finished {
            target: "elsewhere",
            ..done
        });
        let spans = taken(&t);
        assert_eq!(spans.len(), 2);
        assert_eq!(
            value(&spans[0], "llmvisor.target"),
            Some(Any::StringValue("elsewhere".into()))
        );
        assert_eq!(
            value(&spans[1], "llmvisor.target"),
            Some(Any::StringValue("a".into()))
        );

        drop(RequestSpan::start(
            Some(&t),
            None,
            Instant::now(),
            &asked(&id, b"{}"),
        ));
        let spans = taken(&t);
        assert_eq!(spans.len(), 1);
        assert_eq!(value(&spans[0], "http.response.status_code"), None);
        assert!(spans[0].end_time_unix_nano >= spans[0].start_time_unix_nano);
    }

    /// Each thread encodes into a slot of its own, split into chunks of at
    /// most a batch; the slot of a thread that ended is taken, then forgotten.
    #[test]
    fn threads_fill_slots_of_their_own() {
        let t = tracing(10 * BATCH as u32, false);
        for _ in 0..BATCH + 3 {
            one_span(&t);
        }
        on_a_thread(|| {
            for _ in 0..5 {
                one_span(&t);
            }
        });
        assert_eq!(t.shared.slots.lock().unwrap().len(), 2);
        assert_eq!(t.shared.spans(), BATCH + 8);
        let mut chunks = Vec::new();
        t.shared.take(&mut chunks);
        let mut sizes: Vec<_> = chunks.iter().map(|c| c.spans).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [3, 5, BATCH]);
        // The other thread is gone: its slot went with the take.
        assert_eq!(t.shared.slots.lock().unwrap().len(), 1);
        assert_eq!(t.shared.spans(), 0);
        // A tracer made later on this thread gets a slot of its own.
        let u = tracing(10, false);
        one_span(&u);
        assert_eq!((t.shared.spans(), u.shared.spans()), (0, 1));
    }

    /// Chunks of half a batch or more go as they are; smaller ones are put
    /// together, never past a batch, their spans intact.
    #[test]
    fn small_chunks_are_sent_together() {
        let t = tracing(100 * BATCH as u32, false);
        // Chunks of these sizes, each from a thread of its own.
        let half = BATCH / 2;
        let sizes = [3, half, half - 1, 5, half - 1, 1];
        for n in sizes {
            on_a_thread(|| {
                for _ in 0..n {
                    one_span(&t);
                }
            });
        }
        let mut chunks = Vec::new();
        t.shared.take(&mut chunks);
        assert_eq!(chunks.len(), sizes.len());
        let out = batches(&mut chunks, t.shared.room);
        assert!(chunks.is_empty());
        let mut got: Vec<_> = out.iter().map(|c| c.spans).collect();
        got.sort_unstable();
        // Half a batch alone; 3 + (half - 1) + 5 together; the next (half - 1)
        // would take them past a batch: it begins another, with the 1.
        assert_eq!(got, [half, half, half + 7]);
        let (resource, scope) = envelope();
        let mut ids = std::collections::HashSet::new();
        for mut c in out {
            let start = otlp::seal(&mut c.buf, t.shared.room, &resource, &scope);
            use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
            use prost::Message;
            let req = ExportTraceServiceRequest::decode(&c.buf[start..]).unwrap();
            let spans = &req.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), c.spans);
            ids.extend(spans.iter().map(|s| s.span_id.clone()));
        }
        assert_eq!(ids.len(), sizes.iter().sum::<usize>());
    }

    /// The export task lingers for a batch to fill only while there is less
    /// than a batch: slots that filled during an export (under load, with spans
    /// being dropped) are taken at once. On tokio's paused clock, so "at once"
    /// is exact: no time passes.
    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_exported_without_lingering() {
        let t = tracing(100_000, false);
        let (_flush, mut flushes) = mpsc::channel(1);
        let id = HeaderValue::from_static("r");
        let done = Finished {
            target: "-",
            status: 200,
            error: None,
            usage: None,
            first_byte: None,
        };
        // Records of three spans (request, upstream, first token): a chunk is
        // full at 510 spans, the next record not fitting.
        let one = || {
            let s = RequestSpan::start(Some(&t), None, Instant::now(), &asked(&id, b""));
            s.upstream(&Upstream {
                label: "a",
                model: "m",
                provider: "vllm",
                address: "127.0.0.1",
                port: 1,
            });
            s.finish(&Finished {
                first_byte: Some(Instant::now()),
                ..done
            });
        };
        // A few records: it waits LINGER for more, and another thread's first
        // record while it waits does not end the wait.
        one();
        let began = tokio::time::Instant::now();
        let (ready, ()) = tokio::join!(t.shared.ready(&mut flushes), async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            on_a_thread(one);
        });
        assert!(ready.is_some());
        assert_eq!(began.elapsed(), LINGER);
        let mut chunks = Vec::new();
        t.shared.take(&mut chunks);
        // More than a batch arrived while it was busy: no wait at all (the first
        // record woke it; the one that filled a chunk came before it looked).
        for _ in 0..BATCH {
            one();
        }
        let began = tokio::time::Instant::now();
        assert!(t.shared.ready(&mut flushes).await.is_some());
        assert_eq!(began.elapsed(), Duration::ZERO);
        chunks.clear();
        t.shared.take(&mut chunks);
        let sizes: Vec<_> = chunks.iter().map(|c| c.spans).collect();
        assert_eq!(sizes, [510, 510, 510, 6]);
        // A chunk filled while it lingers ends the wait at once.
        one();
        let began = tokio::time::Instant::now();
        let (ready, ()) = tokio::join!(t.shared.ready(&mut flushes), async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            for _ in 0..BATCH / 3 + 1 {
                one();
            }
        });
        assert!(ready.is_some());
        assert_eq!(began.elapsed(), Duration::from_millis(1));
    }

    #[test]
    fn ids_are_random_and_never_zero() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| random_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
        let other = std::thread::spawn(random_id).join().unwrap();
        assert!(!ids.contains(&other));
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
        assert!(problems("https://tempo:4318").is_empty());
        assert!(problems("grpc://tempo:4317")[0].contains("must be an http:// or https:// URL"));
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
