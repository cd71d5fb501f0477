//! The HTTP edge's connections: llmvisor's own accept loop over hyper, with a time
//! limit and a bound on every resource a client can hold.
//!
//! `axum::serve` has no timers and no limits: idle sockets were never closed (about
//! 1,000 of them exhausted a 1024-fd limit), request bodies were buffered without a
//! deadline (one h2c connection with 100 stalled streams took 1.9 GB), and a client
//! that stopped reading kept its model slot forever. Here:
//!
//! | what | limit (`[server]` key, default) | past it |
//! | --- | --- | --- |
//! | connections | `max_connections` (4096) | the longest-idle connection is closed to make room; a short 503 only when every one has a request in flight |
//! | connections from one address | `max_connections_per_ip` (1024) | a short 503 and close |
//! | a connection with no request in flight | `keepalive_timeout` (75 s) of silence | closed |
//! | HTTP/1 request headers | `header_read_timeout` (30 s) | closed (hyper's timer) |
//! | a request body | `body_timeout` (300 s) in all, `body_idle_timeout` (30 s) between bytes | 408 `request_timeout` |
//! | request bodies buffered, all requests together | `max_buffered_bodies` (256 MiB); one connection: twice `max_body` | 503 `server_busy` |
//! | HTTP/2 streams per connection | `http2_max_streams` (32) | refused by HTTP/2 flow control |
//! | a response the client does not read | `write_timeout` (60 s) without progress | connection cut, request logged `client_stalled`, slot freed |
//!
//! The write and keep-alive timers live in [`TimedIo`], below hyper, so they hold
//! for every protocol and every response, the relayed streams included: a write
//! that makes no progress for `write_timeout` fails, hyper drops the connection and
//! with it the response body, and the relay's drop frees the model slot. The
//! keep-alive timer runs only while no request of the connection is in flight (a
//! long generation sends nothing for minutes and is not idle).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::config::ServerConfig;

/// The limits of [`ServerConfig`] the edge applies.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most open client connections.
    pub max_connections: usize,
    /// Most open connections from one address.
    pub max_connections_per_ip: usize,
    /// Silence allowed on a connection with no request in flight.
    pub keepalive_timeout: Duration,
    /// Time for an HTTP/1 request's headers.
    pub header_read_timeout: Duration,
    /// Time for a whole request body.
    pub body_timeout: Duration,
    /// Silence allowed inside a request body.
    pub body_idle_timeout: Duration,
    /// Time a response write may make no progress.
    pub write_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// Request body bytes buffered by all requests together.
    pub max_buffered_bodies: u64,
    /// Request body bytes buffered by one connection's requests together.
    pub max_buffered_per_connection: u64,
}

impl Limits {
    /// The limits `[server]` sets.
    pub fn from_config(s: &ServerConfig) -> Self {
        Self {
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
            keepalive_timeout: s.keepalive_timeout.0,
            header_read_timeout: s.header_read_timeout.0,
            body_timeout: s.body_timeout.0,
            body_idle_timeout: s.body_idle_timeout.0,
            write_timeout: s.write_timeout.0,
            http2_max_streams: s.http2_max_streams,
            max_buffered_bodies: s.max_buffered_bodies.0,
            max_buffered_per_connection: s.max_body.0.saturating_mul(2),
        }
    }

    /// File descriptors these limits can use: a connection each, one upstream
    /// connection per connection in the worst case, and room for the rest.
    pub fn fds_needed(&self) -> u64 {
        (self.max_connections as u64) * 2 + 256
    }
}

/// What the edge counts, for `/metrics` and the log.
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections refused for a connection limit.
    pub refused: AtomicU64,
    /// Connections closed for silence (keep-alive or before the first request).
    pub idle_closed: AtomicU64,
    /// Connections cut because the client stopped reading a response.
    pub stalled: AtomicU64,
    /// Idle connections closed to make room for a new one at `max_connections`.
    pub evicted: AtomicU64,
    /// Request bodies refused: too slow.
    pub body_timeouts: AtomicU64,
    /// Request bodies refused: over the buffered-bytes budget.
    pub body_over_budget: AtomicU64,
    /// Request body bytes buffered now, all requests together.
    pub buffered: AtomicU64,
}

impl EdgeStats {
    /// Copy the counters into the metrics registry (on each scrape).
    pub fn export(&self, m: &crate::telemetry::metrics::Metrics) {
        use crate::telemetry::metrics::ReasonLabels;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sync = |c: &prometheus_client::metrics::counter::Counter, v: u64| {
            c.inc_by(v.saturating_sub(c.get()));
        };
        m.connections_open
            .set(self.open.load(Ordering::Relaxed) as i64);
        sync(&m.connections_refused, load(&self.refused));
        for (reason, v) in [
            ("idle", &self.idle_closed),
            ("stalled", &self.stalled),
            ("evicted", &self.evicted),
        ] {
            sync(
                &m.connections_closed.get_or_create(&ReasonLabels { reason }),
                load(v),
            );
        }
        for (reason, v) in [
            ("timeout", &self.body_timeouts),
            ("over_budget", &self.body_over_budget),
        ] {
            sync(
                &m.bodies_refused.get_or_create(&ReasonLabels { reason }),
                load(v),
            );
        }
        m.body_bytes_buffered
            .set(i64::try_from(load(&self.buffered)).unwrap_or(i64::MAX));
    }
}

/// The connection-level state the edge shares between its accept loops.
pub struct Edge {
    limits: Limits,
    /// Counters.
    pub stats: Arc<EdgeStats>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Open connections, for closing idle ones when the limit is reached.
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    /// When the edge started: the clock of `ConnState::idle_since_ms`.
    epoch: Instant,
}

impl Edge {
    /// An edge with these limits.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            stats: Arc::new(EdgeStats::default()),
            per_ip: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A place for one more connection from `ip`, or None past a limit. At
    /// `max_connections`, the connection idle the longest (no request in flight)
    /// is closed to make room, as nginx reuses its keep-alive connections: idle
    /// sockets, however many, cannot lock new clients out. Only when every
    /// connection has a request in flight is the new one refused. The per-address
    /// limit refuses without closing anything.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<(ConnPermit, Arc<ConnState>)> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.get(&ip).copied().unwrap_or(0);
        if n >= self.limits.max_connections_per_ip {
            return None;
        }
        let open = self.stats.open.load(Ordering::Relaxed);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if open >= self.limits.max_connections {
            let victim = conns
                .iter()
                .filter(|(_, c)| {
                    c.in_flight.load(Ordering::Relaxed) == 0 && !c.evicted.load(Ordering::Relaxed)
                })
                // Oldest idle first; among equals, the oldest connection.
                .min_by_key(|(id, c)| (c.idle_since_ms.load(Ordering::Relaxed), **id))
                .map(|(id, _)| *id);
            // Taken off the table now; its task closes the socket at once.
            let victim = victim.and_then(|id| conns.remove(&id))?;
            victim.evicted.store(true, Ordering::Relaxed);
            victim.close.notify_one();
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        *per_ip.entry(ip).or_insert(0) += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            idle_since_ms: AtomicU64::new(self.now_ms()),
            ..ConnState::default()
        });
        conns.insert(id, state.clone());
        Some((
            ConnPermit {
                edge: self.clone(),
                ip,
                id,
            },
            state,
        ))
    }
}

/// A connection's place in the limits; given back on drop.
struct ConnPermit {
    edge: Arc<Edge>,
    ip: IpAddr,
    id: u64,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.edge
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        let mut per_ip = self.edge.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.edge.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's shared state: requests in flight (the keep-alive timer runs
/// only at zero), request body bytes buffered, and whether it was cut for not
/// reading.
#[derive(Debug, Default)]
struct ConnState {
    in_flight: AtomicUsize,
    buffered: AtomicU64,
    stalled: AtomicBool,
    /// Since when no request is in flight (ms on the edge's clock).
    idle_since_ms: AtomicU64,
    /// Chosen to make room at `max_connections`.
    evicted: AtomicBool,
    /// Wakes the connection's task to close it.
    close: tokio::sync::Notify,
}

tokio::task_local! {
    /// The connection a task serves: lets a response body that is dropped because
    /// its connection was cut tell why (see [`client_stalled`]).
    static CONN: Arc<ConnState>;
}

/// Whether the connection the current task serves was cut because its client
/// stopped reading (`write_timeout`). Read by the relay's end-of-request
/// accounting, which runs inside the connection's task.
pub fn client_stalled() -> bool {
    CONN.try_with(|c| c.stalled.load(Ordering::Relaxed))
        .unwrap_or(false)
}

/// Serve `router` on `listener` until `stop` turns true, then stop accepting and
/// return once every connection has finished its requests (the caller bounds that
/// wait with `shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    edge: Arc<Edge>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let limits = edge.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        // Flow control bounds what a client can push before llmvisor reads it.
        .initial_stream_window_size(256 << 10)
        .initial_connection_window_size(1 << 20)
        .max_header_list_size(64 << 10)
        .keep_alive_interval(Some(limits.keepalive_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors (or memory): say so once a second and
                    // keep accepting; the connection limits should keep this away.
                    if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::error!("accept error: {e} (open connections: {})", edge.stats.open.load(Ordering::Relaxed));
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let Some((permit, state)) = edge.admit(peer.ip()) else {
            edge.stats.refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse(tcp));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let io = TimedIo::new(tcp, state.clone(), &limits, edge.stats.clone());
        let svc = ConnService {
            router: router.clone(),
            peer,
            state: state.clone(),
            edge: edge.clone(),
        };
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(io),
                hyper::service::service_fn(move |req| svc.clone().call(req)),
            )
            .into_owned();
        let conn = graceful.watch(conn);
        let evict = state.clone();
        tokio::spawn(CONN.scope(state, async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                },
                // Closed to make room (idle: no request in flight to lose).
                () = evict.close.notified() => {}
            }
            drop(permit);
        }));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Past a connection limit: a short 503 and close, without reading the request.
async fn refuse(mut tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = r#"{"error":{"message":"Too many connections; try again shortly.","type":"server_error","param":null,"code":"too_many_connections"}}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(resp.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// The per-connection service: the peer's address for the handlers, the request
/// body behind its time limits and budget, the request counted in flight until its
/// response body ends.
#[derive(Clone)]
struct ConnService {
    router: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
    edge: Arc<Edge>,
}

impl ConnService {
    async fn call(
        self,
        req: hyper::Request<Incoming>,
    ) -> Result<axum::response::Response, std::convert::Infallible> {
        let in_flight = InFlight::new(self.state.clone(), self.edge.clone());
        let limits = &self.edge.limits;
        if let Some(problem) = malformed(&req) {
            use axum::response::IntoResponse;
            let mut resp = super::ApiError::BadRequest {
                message: problem.to_string(),
                code: "invalid_request",
            }
            .into_response();
            // Framing in doubt: do not read another request from this connection.
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return Ok(resp);
        }
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        // A request without a body (GET, an empty POST) needs no timers or budget.
        let body = if body.is_end_stream() {
            Body::new(body)
        } else {
            let now = tokio::time::Instant::now();
            let streamed = Streamed::default();
            parts.extensions.insert(streamed.clone());
            Body::new(TimedBody {
                streamed,
                inner: body,
                deadline: now + limits.body_timeout,
                last_data: now,
                idle_after: limits.body_idle_timeout,
                timers: None,
                budget: Budget {
                    conn: self.state.clone(),
                    stats: self.edge.stats.clone(),
                    held: 0,
                    max_total: limits.max_buffered_bodies,
                    max_conn: limits.max_buffered_per_connection,
                },
                done: false,
            })
        };
        let req = hyper::Request::from_parts(parts, body);
        let resp = self.router.oneshot(req).await?;
        let (parts, body) = resp.into_parts();
        Ok(axum::response::Response::from_parts(
            parts,
            Body::new(CountedBody {
                inner: body,
                _in_flight: in_flight,
            }),
        ))
    }
}

/// Requests HTTP/1.1 says a server must refuse (RFC 9112): without `Host`, and
/// with both `Content-Length` and `Transfer-Encoding` (a request-smuggling shape).
fn malformed<B>(req: &hyper::Request<B>) -> Option<&'static str> {
    let h = req.headers();
    if req.version() == http::Version::HTTP_11 && !h.contains_key(http::header::HOST) {
        return Some("An HTTP/1.1 request needs a Host header.");
    }
    if h.contains_key(http::header::CONTENT_LENGTH)
        && h.contains_key(http::header::TRANSFER_ENCODING)
    {
        return Some("A request may not carry both Content-Length and Transfer-Encoding.");
    }
    None
}

/// A request in flight on its connection, until its response body is finished or
/// dropped.
struct InFlight(Arc<ConnState>, Arc<Edge>);

impl InFlight {
    fn new(state: Arc<ConnState>, edge: Arc<Edge>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state, edge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0
            .idle_since_ms
            .store(self.1.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted in flight.
struct CountedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body could not be read; `api::error` maps it to the answer.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body took longer than `body_timeout`, or paused longer than
    /// `body_idle_timeout`.
    #[error("the request body was not received in time ({0})")]
    Timeout(&'static str),
    /// Buffering it would pass `max_buffered_bodies` (or the connection's share).
    #[error("too many request bytes are being received right now")]
    OverBudget,
    /// The connection failed.
    #[error("the request body could not be read: {0}")]
    Read(#[from] hyper::Error),
}

/// Set by a handler that streams the request body on instead of holding it (an
/// upload): the body's bytes stop counting in the budgets of buffered bytes.
#[derive(Clone, Default)]
pub struct Streamed(Arc<std::sync::atomic::AtomicBool>);

impl Streamed {
    /// The body flows through from now on.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Request body bytes this request holds in the budgets; given back on drop (when
/// the handler has dropped the body: the bytes it collected go with the request).
struct Budget {
    conn: Arc<ConnState>,
    stats: Arc<EdgeStats>,
    held: u64,
    max_total: u64,
    max_conn: u64,
}

impl Budget {
    fn take(&mut self, n: u64) -> bool {
        let total = self.stats.buffered.fetch_add(n, Ordering::Relaxed) + n;
        let conn = self.conn.buffered.fetch_add(n, Ordering::Relaxed) + n;
        self.held += n;
        total <= self.max_total && conn <= self.max_conn
    }

    fn release(&mut self) {
        self.stats.buffered.fetch_sub(self.held, Ordering::Relaxed);
        self.conn.buffered.fetch_sub(self.held, Ordering::Relaxed);
        self.held = 0;
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request body with a deadline, an idle timer and a byte budget.
type Timer = Pin<Box<Sleep>>;

/// Its timers exist only once the body has to be waited for: a body that comes
/// with its headers (most of them) never touches the timer wheel.
struct TimedBody {
    inner: Incoming,
    /// `body_timeout` after the request arrived.
    deadline: tokio::time::Instant,
    /// When the last bytes came.
    last_data: tokio::time::Instant,
    idle_after: Duration,
    /// (the deadline, the idle timer), armed at the first wait.
    timers: Option<(Timer, Timer)>,
    budget: Budget,
    /// The handler streams the body on: its bytes are not held.
    streamed: Streamed,
    done: bool,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.streamed.0.load(Ordering::Relaxed) {
                    if this.budget.held > 0 {
                        this.budget.release();
                    }
                } else if let Some(data) = frame.data_ref()
                    && !this.budget.take(data.len() as u64)
                {
                    this.done = true;
                    this.budget
                        .stats
                        .body_over_budget
                        .fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BodyError::OverBudget)));
                }
                this.last_data = tokio::time::Instant::now();
                if let Some((_, idle)) = &mut this.timers {
                    idle.as_mut().reset(this.last_data + this.idle_after);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let (total, idle) = this.timers.get_or_insert_with(|| {
                    (
                        Box::pin(tokio::time::sleep_until(this.deadline)),
                        Box::pin(tokio::time::sleep_until(this.last_data + this.idle_after)),
                    )
                });
                let why = if total.as_mut().poll(cx).is_ready() {
                    "body_timeout"
                } else if idle.as_mut().poll(cx).is_ready() {
                    "body_idle_timeout"
                } else {
                    return Poll::Pending;
                };
                this.done = true;
                this.budget
                    .stats
                    .body_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyError::Timeout(why))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket with two timers hyper lacks: silence while no request is in
/// flight (`keepalive_timeout`) and a write that makes no progress
/// (`write_timeout`). Either fails the I/O, and hyper closes the connection.
struct TimedIo {
    io: TcpStream,
    state: Arc<ConnState>,
    stats: Arc<EdgeStats>,
    idle_after: Duration,
    write_after: Duration,
    read_timer: Pin<Box<Sleep>>,
    read_armed: bool,
    write_timer: Pin<Box<Sleep>>,
    write_armed: bool,
}

impl TimedIo {
    fn new(io: TcpStream, state: Arc<ConnState>, limits: &Limits, stats: Arc<EdgeStats>) -> Self {
        // A new connection must send its first request within the shorter of the
        // keep-alive and header timeouts (hyper's header timer starts only once it
        // knows the protocol).
        let first = limits.keepalive_timeout.min(limits.header_read_timeout);
        Self {
            io,
            state,
            stats,
            idle_after: limits.keepalive_timeout,
            write_after: limits.write_timeout,
            read_timer: Box::pin(tokio::time::sleep(first)),
            read_armed: true,
            write_timer: Box::pin(tokio::time::sleep(limits.write_timeout)),
            write_armed: false,
        }
    }

    /// A write that returned Pending: has it been stuck for `write_timeout`?
    fn write_stuck(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.write_armed {
            let at = tokio::time::Instant::now() + self.write_after;
            self.write_timer.as_mut().reset(at);
            self.write_armed = true;
        }
        ready!(self.write_timer.as_mut().poll(cx));
        self.state.stalled.store(true, Ordering::Relaxed);
        self.stats.stalled.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {:?} (server.write_timeout)",
                self.write_after
            ),
        ))
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.state.in_flight.load(Ordering::Relaxed) > 0 {
                    // A request is being answered: silence is normal.
                    this.read_armed = false;
                    return Poll::Pending;
                }
                if !this.read_armed {
                    let at = tokio::time::Instant::now() + this.idle_after;
                    this.read_timer.as_mut().reset(at);
                    this.read_armed = true;
                }
                ready!(this.read_timer.as_mut().poll(cx));
                this.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle connection (server.keepalive_timeout)",
                )))
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.write_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.write_stuck(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.write_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.write_stuck(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raise the soft limit on open files to what the limits need (up to the hard
/// limit), and say so when it stays below. Returns (soft, needed).
pub fn check_nofile(limits: &Limits) -> (u64, u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = limits.fds_needed();
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (0, needed);
    };
    let mut soft_now = soft;
    if soft < needed {
        let want = needed.min(hard);
        if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
            soft_now = want;
        }
    }
    if soft_now < needed {
        tracing::warn!(
            "the limit on open files is {soft_now} (hard {hard}); server.max_connections = {} needs about {needed}: raise LimitNOFILE= (the shipped unit sets 65536) or lower max_connections",
            limits.max_connections
        );
    }
    (soft_now, needed)
}
