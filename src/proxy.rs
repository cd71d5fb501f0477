//! The upstream leg: an HTTP/1 client with a connection pool per backend, and the
//! relay body that streams a backend's response to the client chunk by chunk.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};

pub mod pool;
pub mod upload;

pub use upload::ReqBody;
pub mod usage;
pub use pool::{Pool, PooledBody};
pub use usage::{Tap, Tapped, Usage};

/// Request headers passed on to a backend. Everything else (notably the client's
/// `Authorization`) stays here, and so does any of these that the client's
/// `Connection` header names (it belongs to the client's hop).
const FORWARDED: [header::HeaderName; 3] =
    [header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// Headers that belong to one hop (RFC 9110 §7.6.1, plus the old
/// `proxy-connection` and `keep-alive`): never relayed.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names a message's `Connection` header lists (lower case): they
/// belong to that hop too.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Copy a backend response's end-to-end headers: not the hop-by-hop set, and not
/// the headers its `Connection` header names.
pub fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named = connection_named(from);
    for (name, value) in from {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(&n) && !named.iter().any(|c| c == n) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Why a backend could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection could be made (the backend is not listening).
    #[error("cannot connect to the backend: {0}")]
    Connect(String),
    /// The backend did not send response headers in time.
    #[error("the backend sent no response within {0:?}")]
    Timeout(Duration),
    /// The connection failed after it was made (the backend died, reset, garbage).
    #[error("the backend connection failed: {0}")]
    Failed(String),
}

/// How the relay of a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend finished the body and the client got all of it.
    Complete,
    /// The backend's connection broke mid-body.
    UpstreamFailed,
    /// The backend went silent for longer than the idle timeout.
    UpstreamTimeout,
    /// The client went away first; the backend request was dropped.
    ClientGone,
}

/// A backend's response body: from a local backend through llmvisor's own pool,
/// or from an external provider through hyper-util's client.
pub enum UpBody {
    /// A local model's connection, driven by the body's poller.
    Pooled(PooledBody),
    /// An external provider (HTTPS through hyper-rustls).
    Legacy(Incoming),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Pooled(b) => Pin::new(b).poll_frame(cx),
            UpBody::Legacy(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Pooled(b) => b.is_end_stream(),
            UpBody::Legacy(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Pooled(b) => b.size_hint(),
            UpBody::Legacy(b) => b.size_hint(),
        }
    }
}

/// The client for every backend: local models through [`Pool`] (one per runtime),
/// external providers through hyper-util's pooled client with rustls.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Taken>,
    pool: Arc<Pool>,
    connect_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    /// A client with TCP_NODELAY (Nagle plus delayed ACK would stall SSE by ~40 ms)
    /// and a pool of keep-alive connections, each closed after `pool_idle` unused.
    /// The pool needs a timer for that: without one hyper-util never expires an
    /// idle connection (they piled up by the dozen).
    pub fn new(
        connect_timeout: Duration,
        header_timeout: Duration,
        idle_timeout: Duration,
        pool_idle: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let connector = https_connector(connector, None);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool_idle)
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            client,
            pool: Pool::new(pool_idle),
            connect_timeout,
            header_timeout,
            idle_timeout,
        }
    }

    /// The pool this thread's requests use: its own in thread-per-core mode, else
    /// the shared one.
    pub fn pool(&self) -> Arc<Pool> {
        Pool::local().unwrap_or_else(|| self.pool.clone())
    }

    /// The longest silence allowed inside a response body.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// POST `body` to `path` on the backend at 127.0.0.1:`port`; returns once the
    /// response headers are in. A pooled keep-alive connection the backend had
    /// closed (llama-server closes after every stream while advertising keep-alive)
    /// fails at once, before any response: the request goes once more, on a new
    /// connection. A backend that died fails that time too (connection refused).
    pub async fn post(
        &self,
        port: u16,
        path_and_query: &str,
        headers: &HeaderMap,
        request_id: Option<&HeaderValue>,
        traceparent: Option<&HeaderValue>,
        body: impl Into<ReqBody>,
    ) -> Result<Response<UpBody>, ProxyError> {
        self.send(
            Method::POST,
            port,
            path_and_query,
            headers,
            request_id,
            traceparent,
            body,
        )
        .await
    }

    /// [`Upstream::post`] with another method (`GET` for pass-through paths). An
    /// upload streamed through ([`ReqBody::Upload`]) goes on a fresh connection,
    /// once: it cannot be sent again.
    // Eight plain parts of one request, all borrowed from the caller's; a struct
    // for them would only be built and taken apart again on every request.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        method: Method,
        port: u16,
        path_and_query: &str,
        headers: &HeaderMap,
        request_id: Option<&HeaderValue>,
        traceparent: Option<&HeaderValue>,
        body: impl Into<ReqBody>,
    ) -> Result<Response<UpBody>, ProxyError> {
        use pool::SendError;
        let body = body.into();
        let again = body.bytes();
        let host = local_host(port);
        let build = |body: ReqBody| {
            build_request(
                method.clone(),
                path_and_query,
                headers,
                request_id,
                [
                    Some((header::HOST, &host)),
                    traceparent.map(|tp| (crate::telemetry::trace::TRACEPARENT, tp)),
                ],
                body,
            )
        };
        let pool = self.pool();
        let (ct, ht) = (self.connect_timeout, self.header_timeout);
        let fresh = again.is_none();
        let mut result = pool.send(port, build(body)?, fresh, ct, ht).await;
        if let (Err(SendError::Failed { stale: true, error }), Some(b)) = (&result, again) {
            tracing::debug!("reused connection was closed by the backend ({error}); sending again");
            result = pool.send(port, build(b.into())?, true, ct, ht).await;
        }
        match result {
            Ok(resp) => Ok(resp.map(UpBody::Pooled)),
            Err(SendError::Timeout) => Err(ProxyError::Timeout(ht)),
            Err(SendError::Connect(e)) => Err(ProxyError::Connect(format!(
                "tcp connect error: {}",
                error_chain(&e)
            ))),
            Err(SendError::Failed { error, .. }) => Err(ProxyError::Failed(error_chain(&error))),
        }
    }

    /// POST `body` to any URL (an external provider), with the provider's key as
    /// `Authorization: Bearer` if given, and `timeout` for the response headers
    /// (a connection must take the request within the connect timeout first:
    /// [`Upstream::send_pooled`]).
    pub async fn post_url(
        &self,
        uri: &str,
        headers: &HeaderMap,
        request_id: Option<&HeaderValue>,
        bearer: Option<&str>,
        body: impl Into<ReqBody>,
        timeout: Duration,
    ) -> Result<Response<UpBody>, ProxyError> {
        let auth = match bearer {
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    ProxyError::Failed("the provider key is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let body = body.into();
        let again = body.bytes();
        let build = |body: ReqBody| {
            build_request(
                Method::POST,
                uri,
                headers,
                request_id,
                [auth.as_ref().map(|a| (header::AUTHORIZATION, a)), None],
                body,
            )
        };
        // A pooled keep-alive connection the backend had closed (llama-server closes
        // after every stream while advertising keep-alive) fails at once, before any
        // response: send once more, on another connection. A backend that died fails
        // the second time too (connection refused). The request is built again only
        // then.
        let first = self.send_pooled(build(body)?, timeout).await;
        let result = match (first, again) {
            (Ok(Err(e)), Some(b)) if stale_connection(&e) => {
                tracing::debug!("reused connection was closed by the backend ({e}); sending again");
                self.send_pooled(build(b.into())?, timeout).await
            }
            (r, _) => r,
        };
        match result {
            Err(e) => Err(e),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(ProxyError::Failed(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp.map(UpBody::Legacy)),
        }
    }
}

/// `Host: 127.0.0.1:<port>` for a local backend, made once per thread and port
/// in a row (a clone shares its bytes) rather than formatted for every request.
fn local_host(port: u16) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u16, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((p, v)) if *p == port => v.clone(),
        _ => {
            let v = HeaderValue::from_maybe_shared(Bytes::from(format!("127.0.0.1:{port}")))
                .expect("an address and a port are a valid header value");
            *last = Some((port, v.clone()));
            v
        }
    })
}

/// A request (POST, or GET without a body) of `body` to `uri` with the forwarded
/// headers of the client's request.
fn build_request(
    method: Method,
    uri: &str,
    headers: &HeaderMap,
    request_id: Option<&HeaderValue>,
    extra: [Option<(header::HeaderName, &HeaderValue)>; 2],
    body: ReqBody,
) -> Result<Request<ReqBody>, ProxyError> {
    let uri: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| ProxyError::Failed(e.to_string()))?;
    // Sized once for every header it may get (the forwarded ones, the request
    // id, two more, and the `content-length` hyper adds): one allocation, never
    // grown and rehashed on the way.
    let mut map = HeaderMap::with_capacity(FORWARDED.len() + 4);
    let named = connection_named(headers);
    for name in FORWARDED {
        if named.iter().any(|c| c == name.as_str()) {
            continue;
        }
        if let Some(v) = headers.get(&name) {
            map.append(name, v.clone());
        }
    }
    if let Some(id) = request_id {
        // A constant: its name checked when compiling, not per request.
        const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
        map.insert(REQUEST_ID, id.clone());
    }
    for (name, v) in extra.into_iter().flatten() {
        map.insert(name, v.clone());
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = map;
    Ok(req)
}

impl Upstream {
    /// GET `url` and expect a 2xx within `timeout` (a provider's health check).
    pub async fn check(&self, url: &str, timeout: Duration) -> Result<(), String> {
        let req = Request::get(url)
            .body(ReqBody::full(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match self.send_pooled(req, timeout).await {
            Err(ProxyError::Timeout(_)) => Err(format!("no answer within {timeout:?}")),
            Err(e) => Err(e.to_string()),
            Ok(Err(e)) => Err(error_chain(&e)),
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
        }
    }

    /// Send `req` through the providers' pooled client. A connection must take
    /// the request within `connect_timeout` (pool checkout, DNS, TCP connect,
    /// TLS handshake: a provider that accepts and never answers its handshake
    /// would otherwise hold the request for its whole `timeout`), and the
    /// response head must come within `timeout` of the start.
    ///
    /// The first limit also ends a request stranded in hyper's request channel:
    /// a pooled connection whose task sees the provider's end while the request
    /// is being handed to it drops the channel's receiver, and the request put
    /// into it just after waits for a sender it holds itself (hyper 1.12 with
    /// tokio 1.54; hyperium/hyper#4122). Seen once in
    /// `routing::homelab_hosts_fail_over_without_losing_requests` (a request
    /// held 5 minutes with no socket open), reproduced outside llmvisor with
    /// these client settings and a provider killed mid-burst.
    ///
    /// `Err` when no connection took it in time (nothing was sent:
    /// [`ProxyError::Connect`]) or no response head came ([`ProxyError::Timeout`]).
    async fn send_pooled(
        &self,
        req: Request<ReqBody>,
        timeout: Duration,
    ) -> Result<Result<Response<Incoming>, hyper_util::client::legacy::Error>, ProxyError> {
        let taken = Arc::new(tokio::sync::Notify::new());
        let req = req.map(|body| Taken {
            body,
            taken: taken.clone(),
        });
        let deadline = Instant::now() + timeout;
        let first = self.connect_timeout.min(timeout);
        let sent = self.client.request(req);
        tokio::pin!(sent);
        tokio::select! {
            biased;
            r = &mut sent => return Ok(r),
            () = taken.notified() => {}
            () = tokio::time::sleep(first) => {
                return Err(if first < timeout {
                    ProxyError::Connect(format!("no connection took the request within {first:?}"))
                } else {
                    ProxyError::Timeout(timeout)
                });
            }
        }
        tokio::time::timeout_at(deadline, sent)
            .await
            .map_err(|_| ProxyError::Timeout(timeout))
    }
}

/// A request body for the providers' pooled client that says when a connection
/// has taken its request: hyper's connection task asks the body whether it is
/// empty (`is_end_stream`) as soon as it takes the request, before writing
/// anything (hyper 1.12 `proto/h1/dispatch.rs`, `poll_write`), and polls it for
/// data only after that.
pub struct Taken {
    body: ReqBody,
    taken: Arc<tokio::sync::Notify>,
}

impl Body for Taken {
    type Data = Bytes;
    type Error = <ReqBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        this.taken.notify_one();
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.taken.notify_one();
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether a request failed because its pooled connection was already closed: no
/// response at all, the connection ended (not a refused or timed-out connect).
fn stale_connection(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        cur = c.source();
    }
    false
}

/// `http://` and `https://` over `http` (HTTP/1), https verified against
/// Mozilla's roots (compiled in), or by `tls` when given (the trace exporter's
/// `ca_file`). For providers and the trace exporter alike.
pub(crate) fn https_connector(
    mut http: HttpConnector,
    tls: Option<rustls::ClientConfig>,
) -> HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    let b = hyper_rustls::HttpsConnectorBuilder::new();
    let b = match tls {
        Some(config) => b.with_tls_config(config),
        None => b.with_webpki_roots(),
    };
    b.https_or_http().enable_http1().wrap_connector(http)
}

/// An error and its sources in one line, for logs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Called once when a relay ends, however it ends, with what the tap found.
pub type OnEnd = Box<dyn FnOnce(Outcome, Tapped) + Send + Sync>;

/// Streams a backend's body to the client as it comes. Holds whatever must live as
/// long as the response (the model's slot) inside `on_end`. Mid-stream failures of an
/// SSE stream become a final `data: {"error": …}` event so clients see why it ended;
/// other bodies are cut (the client sees an incomplete response, never a silent one).
pub struct Relay {
    inner: UpBody,
    idle: Duration,
    /// Fires at the idle deadline as it was when last armed; data moves `last`
    /// only, and the timer is re-armed from `last` when it fires early. Re-arming
    /// on every frame cost a timer-wheel update (a lock) per relayed SSE event.
    sleep: Pin<Box<Sleep>>,
    /// When the backend last sent data (or the relay began).
    last: Instant,
    sse: bool,
    model: String,
    done: bool,
    on_end: Option<OnEnd>,
    tap: Tap,
}

impl Relay {
    /// Wrap a backend body; `tap` watches it (and may filter an SSE stream).
    pub fn new(
        inner: UpBody,
        idle: Duration,
        sse: bool,
        model: String,
        tap: Tap,
        on_end: OnEnd,
    ) -> Self {
        Self {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            last: Instant::now(),
            sse,
            model,
            done: false,
            on_end: Some(on_end),
            tap,
        }
    }

    fn end(&mut self, outcome: Outcome) {
        self.done = true;
        if let Some(f) = self.on_end.take() {
            f(outcome, self.tap.found());
        }
    }

    /// The body ended: hand out what the tap still holds, then finish.
    fn complete(&mut self) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let (rest, _) = self.tap.finish();
        self.end(Outcome::Complete);
        if rest.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(Frame::data(rest))))
        }
    }

    fn fail(
        &mut self,
        outcome: Outcome,
        detail: String,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        tracing::warn!(model = %self.model, "response relay ended early: {detail}");
        self.end(outcome);
        if self.sse {
            let (message, code) = match outcome {
                Outcome::UpstreamTimeout => (
                    "the model's backend stopped sending tokens",
                    "backend_timeout",
                ),
                _ => (
                    "the model's backend failed in the middle of the response",
                    "backend_error",
                ),
            };
            Poll::Ready(Some(Ok(Frame::data(sse_error(
                message,
                "server_error",
                code,
            )))))
        } else {
            Poll::Ready(Some(Err(std::io::Error::other(detail))))
        }
    }
}

/// One SSE event carrying an OpenAI-shaped error.
pub fn sse_error(message: &str, kind: &str, code: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "code": code}});
    Bytes::from(format!("data: {body}\n\n"))
}

impl Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let end = this.inner.is_end_stream();
                    if !end {
                        this.last = Instant::now();
                    }
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let out = this.tap.data(data);
                            if end {
                                let (rest, _) = this.tap.finish();
                                let all = if rest.is_empty() {
                                    out
                                } else {
                                    let mut all = bytes::BytesMut::from(&out[..]);
                                    all.extend_from_slice(&rest);
                                    all.freeze()
                                };
                                this.end(Outcome::Complete);
                                return Poll::Ready(Some(Ok(Frame::data(all))));
                            }
                            if out.is_empty() {
                                // An SSE event still incomplete: wait for the rest.
                                continue;
                            }
                            Frame::data(out)
                        }
                        Err(other) => other,
                    };
                    if end {
                        this.end(Outcome::Complete);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.fail(Outcome::UpstreamFailed, error_chain(&e));
                }
                Poll::Ready(None) => return this.complete(),
                Poll::Pending => loop {
                    match this.sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            let deadline = this.last + this.idle;
                            if deadline > Instant::now() {
                                // Data came since the timer was armed: wait from then.
                                this.sleep.as_mut().reset(deadline);
                                continue;
                            }
                            let idle = this.idle;
                            return this
                                .fail(Outcome::UpstreamTimeout, format!("no data for {idle:?}"));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse || self.done {
            // An error event may be added at the end.
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            self.end(Outcome::ClientGone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(connect: Duration) -> Upstream {
        let long = Duration::from_secs(60);
        Upstream::new(connect, long, long, long)
    }

    /// A chat request to `url` with the provider's `timeout`: its error.
    async fn post_err(up: &Upstream, url: &str, timeout: Duration) -> ProxyError {
        let r = up
            .post_url(
                url,
                &HeaderMap::new(),
                None,
                None,
                ReqBody::full(Bytes::from_static(b"{}")),
                timeout,
            )
            .await;
        match r {
            Err(e) => e,
            Ok(resp) => panic!("answered {}", resp.status()),
        }
    }

    /// A provider whose port takes the TCP connection (the kernel's backlog:
    /// nothing accepts it) and never answers the TLS handshake: no connection
    /// ever takes the request, which fails after `connect_timeout`, not after the
    /// provider's whole `timeout`; a health check too. Checked against the
    /// client as it was (hyper-util 0.1.21's legacy client over hyper-rustls):
    /// it waited the whole `timeout`.
    #[tokio::test]
    async fn a_request_no_connection_takes_fails_within_the_connect_timeout() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let up = upstream(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let url = format!("https://127.0.0.1:{port}/v1/chat/completions");
        match post_err(&up, &url, Duration::from_secs(20)).await {
            ProxyError::Connect(m) => assert!(m.contains("no connection took"), "{m}"),
            e => panic!("{e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        let e = up
            .check(
                &format!("https://127.0.0.1:{port}/health"),
                Duration::from_secs(20),
            )
            .await
            .unwrap_err();
        assert!(e.contains("no connection took"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    /// A provider that takes the request and never answers: the request was
    /// taken (the first limit is passed), so it ends at the provider's
    /// `timeout`, as a timeout (something was sent), not as a connect error.
    #[tokio::test]
    async fn a_taken_request_waits_for_the_providers_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::thread::spawn(move || {
            use std::io::Read;
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            // Hold it open, silent, past the request's timeout.
            std::thread::sleep(Duration::from_secs(3));
        });
        let up = upstream(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        match post_err(&up, &url, Duration::from_millis(1500)).await {
            ProxyError::Timeout(t) => assert_eq!(t, Duration::from_millis(1500)),
            e => panic!("{e}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(1400));
        held.join().unwrap();
    }
}
