//! Connections to local backends, driven inside the request's own task.
//!
//! hyper-util's pooled client spawns a task per connection and talks to it over
//! channels: every request woke three tasks (the client's connection, the handler,
//! that connection task), often on different threads. Here a request checks out an
//! idle HTTP/1 connection (`hyper::client::conn::http1`), and the task that sends
//! the request also polls the connection — while it waits for the response head,
//! and then from the response body ([`PooledBody`]), which hands the connection
//! back to the pool when the body ends. A connection nobody polls is idle: a
//! reaper closes it after the pool's idle timeout.
//!
//! A pool belongs to one tokio runtime (its sockets are registered with that
//! runtime's I/O driver). The multi-thread runtime shares one; in thread-per-core
//! mode each runtime's thread installs its own with [`Pool::install_local`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::upload::ReqBody;

type Sender = http1::SendRequest<ReqBody>;
type Conn = http1::Connection<TokioIo<TcpStream>, ReqBody>;

/// One HTTP/1 connection: the handle to send on, and the connection state machine
/// that the holder polls.
pub struct Pooled {
    sender: Sender,
    conn: Conn,
    port: u16,
    pool: Arc<Pool>,
}

/// Boxed once per connection: it moves in and out of the pool by pointer.
struct Idle {
    p: Box<Pooled>,
    since: Instant,
}

/// Idle connections per backend port.
pub struct Pool {
    idle: Mutex<HashMap<u16, Vec<Idle>>>,
    idle_timeout: Duration,
    max_idle_per_port: usize,
    reaper: Mutex<bool>,
}

thread_local! {
    static LOCAL: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

/// Why no response head came back.
pub enum SendError {
    /// The TCP connection could not be made.
    Connect(std::io::Error),
    /// No response head within the timeout.
    Timeout,
    /// The connection failed; `stale` when a reused connection turned out closed
    /// before any response (the backend closed it while it idled).
    Failed { error: hyper::Error, stale: bool },
}

impl Pool {
    /// A pool that closes a connection idle for `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
            max_idle_per_port: 256,
            reaper: Mutex::new(false),
        })
    }

    /// Make a pool of its own the one this thread's requests use (one runtime per
    /// thread).
    pub fn install_local(idle_timeout: Duration) {
        LOCAL.with(|l| *l.borrow_mut() = Some(Self::new(idle_timeout)));
    }

    /// This thread's pool, if it has one.
    pub fn local() -> Option<Arc<Self>> {
        LOCAL.with(|l| l.borrow().clone())
    }

    /// Idle connections to `port` now.
    pub fn idle_count(&self, port: u16) -> usize {
        self.lock().get(&port).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to `port` that is ready for a request, most recently used
    /// first; closed ones are dropped on the way.
    fn checkout(&self, port: u16, cx: &mut Context<'_>) -> Option<Box<Pooled>> {
        loop {
            let mut p = self.lock().get_mut(&port)?.pop()?.p;
            if p.sender.is_closed() {
                continue;
            }
            // Let the connection take in what arrived while it idled (a close).
            if Pin::new(&mut p.conn).poll(cx).is_ready() {
                continue;
            }
            if let Poll::Ready(Ok(())) = p.sender.poll_ready(cx) {
                return Some(p);
            }
        }
    }

    fn put(self: &Arc<Self>, p: Box<Pooled>) {
        if p.sender.is_closed() {
            return;
        }
        {
            let mut map = self.lock();
            let v = map.entry(p.port).or_default();
            if v.len() >= self.max_idle_per_port {
                return;
            }
            v.push(Idle {
                p,
                since: Instant::now(),
            });
        }
        self.start_reaper();
    }

    /// Close connections idle past the timeout, every quarter of it.
    fn start_reaper(self: &Arc<Self>) {
        let mut started = self.reaper.lock().unwrap_or_else(|e| e.into_inner());
        if *started || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        *started = true;
        let weak: Weak<Self> = Arc::downgrade(self);
        let tick =
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(15));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(pool) = weak.upgrade() else { return };
                let expired: Vec<Idle> = {
                    let mut map = pool.lock();
                    let mut out = Vec::new();
                    for v in map.values_mut() {
                        let (keep, old): (Vec<_>, Vec<_>) = std::mem::take(v)
                            .into_iter()
                            .partition(|i| i.since.elapsed() < pool.idle_timeout);
                        *v = keep;
                        out.extend(old);
                    }
                    map.retain(|_, v| !v.is_empty());
                    out
                };
                // Closed outside the lock.
                drop(expired);
            }
        });
    }

    /// Send `req` to 127.0.0.1:`port` on an idle connection or a new one and wait
    /// (at most `timeout`) for the response head, polling the connection meanwhile.
    pub async fn send(
        self: &Arc<Self>,
        port: u16,
        req: Request<ReqBody>,
        fresh: bool,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<http::Response<PooledBody>, SendError> {
        let reused = if fresh {
            None
        } else {
            std::future::poll_fn(|cx| Poll::Ready(self.checkout(port, cx))).await
        };
        let stale = reused.is_some();
        let mut pooled = match reused {
            Some(p) => p,
            None => self.connect(port, connect_timeout).await?,
        };
        let fut = pooled.sender.send_request(req);
        let mut fut = std::pin::pin!(fut);
        let mut conn_done = false;
        let head = std::future::poll_fn(|cx| {
            if !conn_done && Pin::new(&mut pooled.conn).poll(cx).is_ready() {
                conn_done = true;
            }
            fut.as_mut().poll(cx)
        });
        match tokio::time::timeout(timeout, head).await {
            Err(_) => Err(SendError::Timeout),
            Ok(Err(error)) => Err(SendError::Failed {
                stale: stale && (error.is_incomplete_message() || error.is_canceled()),
                error,
            }),
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                let conn = (!conn_done).then_some(pooled);
                Ok(http::Response::from_parts(parts, PooledBody { body, conn }))
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
        port: u16,
        timeout: Duration,
    ) -> Result<Box<Pooled>, SendError> {
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port))).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )));
            }
        };
        // Nagle plus delayed ACK would stall SSE by ~40 ms.
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|error| SendError::Failed {
                error,
                stale: false,
            })?;
        Ok(Box::new(Pooled {
            sender,
            conn,
            port,
            pool: self.clone(),
        }))
    }
}

/// A backend's response body that drives its connection, and gives the
/// connection back to the pool once the body has ended.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Box<Pooled>>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(p) = self.conn.take() {
            let pool = p.pool.clone();
            pool.put(p);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // The connection first: it reads the socket and feeds the body.
        if let Some(p) = &mut this.conn
            && Pin::new(&mut p.conn).poll(cx).is_ready()
        {
            // Closed (or failed): the body sees its end or its error.
            this.conn = None;
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Upstream;
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every request with keep-alive headers; with `close`,
    /// it closes each connection after its first response (llama-server's way).
    async fn backend(close: bool) -> (u16, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let mut got = Vec::new();
                        // Headers and the 2-byte body.
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"hi") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=5, max=100\r\n\r\nok";
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn upstream() -> Upstream {
        let s = Duration::from_secs(5);
        Upstream::new(s, s, s, Duration::from_secs(60))
    }

    async fn post(u: &Upstream, port: u16) -> Bytes {
        let resp = u
            .post(
                port,
                "/v1/x",
                &HeaderMap::new(),
                None,
                None,
                Bytes::from_static(b"hi"),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn connections_are_reused_after_a_body_ends() {
        let (port, accepted) = backend(false).await;
        let u = upstream();
        for _ in 0..3 {
            assert_eq!(post(&u, port).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(u.pool().idle_count(port), 1);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_replaced_without_an_error() {
        let (port, accepted) = backend(true).await;
        let u = upstream();
        for _ in 0..3 {
            assert_eq!(post(&u, port).await, "ok");
            // Let the close arrive (or not: either way the request must succeed).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_racing_the_close_is_sent_again() {
        let (port, _) = backend(true).await;
        let u = upstream();
        // No pause: the next request may go out on the connection being closed.
        for _ in 0..20 {
            assert_eq!(post(&u, port).await, "ok");
        }
    }
}
