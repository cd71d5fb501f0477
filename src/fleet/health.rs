//! Health checks of starting backends: `GET http://127.0.0.1:<port><path>` → 200.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Time one probe may take; a loading backend that accepts but does not answer is
/// simply not ready yet.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes backends' health endpoints.
#[derive(Clone)]
pub struct HealthProbe {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HealthProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthProbe {
    /// A probe with its own small connection pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(PROBE_TIMEOUT));
        // The pool expires idle connections only with a timer.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { client }
    }

    /// Whether the backend on `port` answers 200 on `path`.
    pub async fn check(&self, port: u16, path: &str) -> bool {
        let Ok(uri) = format!("http://127.0.0.1:{port}{path}").parse::<http::Uri>() else {
            return false;
        };
        match tokio::time::timeout(PROBE_TIMEOUT, self.client.get(uri)).await {
            Ok(Ok(resp)) => resp.status() == http::StatusCode::OK,
            _ => false,
        }
    }
}

impl HealthProbe {
    /// `POST http://127.0.0.1:<port><path>` with an empty body: the status, or why
    /// there was none within `timeout`.
    pub async fn post(&self, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
        let uri = format!("http://127.0.0.1:{port}{path}")
            .parse::<http::Uri>()
            .map_err(|e| e.to_string())?;
        let req = http::Request::post(uri)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp.status().as_u16()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// What the fleet asks of a backend's port: health, sleep and wake, and who holds
/// it. [`HealthProbe`] asks over HTTP and `/proc`; the fleet's unit tests answer
/// from their fake unit manager.
#[async_trait::async_trait]
pub trait Probe: Send + Sync + 'static {
    /// Whether the backend on `port` answers 200 on `path`.
    async fn check(&self, port: u16, path: &str) -> bool;

    /// `POST` `path` on `port`: the status, or why there was none within `timeout`.
    async fn post(&self, port: u16, path: &str, timeout: Duration) -> Result<u16, String>;

    /// Why a new model cannot listen on `port` (someone holds it), if so.
    async fn port_taken(&self, port: u16) -> Option<String>;

    /// Whose the socket listening on `port` is, given the unit's processes.
    async fn owner(&self, port: u16, pids: Vec<u32>) -> crate::units::sockets::Owner;
}

#[async_trait::async_trait]
impl Probe for HealthProbe {
    async fn check(&self, port: u16, path: &str) -> bool {
        HealthProbe::check(self, port, path).await
    }

    async fn post(&self, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
        HealthProbe::post(self, port, path, timeout).await
    }

    async fn port_taken(&self, port: u16) -> Option<String> {
        use crate::units::sockets;
        tokio::task::spawn_blocking(move || {
            sockets::port_taken(port).map(|e| {
                let who =
                    sockets::describe_holder(port).unwrap_or_else(|| "another process".into());
                format!(
                    "port {port} is already in use by {who} ({e}); not starting the model on it"
                )
            })
        })
        .await
        .ok()
        .flatten()
    }

    async fn owner(&self, port: u16, pids: Vec<u32>) -> crate::units::sockets::Owner {
        use crate::units::sockets;
        tokio::task::spawn_blocking(move || sockets::owner(port, &pids))
            .await
            .unwrap_or(sockets::Owner::Unknown)
    }
}
