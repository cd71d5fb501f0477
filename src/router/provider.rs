//! External providers at run time: requests in flight, the active health check of
//! peer hosts, the circuit breaker.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::task::JoinHandle;

use super::breaker::Breaker;
use crate::config::ProviderSpec;
use crate::proxy::Upstream;

/// One provider.
pub struct Provider {
    /// As configured (with its key loaded).
    pub spec: ProviderSpec,
    /// Skips the provider after repeated failures.
    pub breaker: Arc<Breaker>,
    outstanding: AtomicUsize,
    up: AtomicBool,
    streak: Mutex<(u32, u32)>,
    last_check_error: Mutex<Option<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A request in flight at a provider; dropping it ends the count.
pub struct ProviderLease {
    provider: Arc<Provider>,
}

impl ProviderLease {
    /// The provider.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }
}

impl Drop for ProviderLease {
    fn drop(&mut self) {
        self.provider.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Provider {
    /// A provider, up until a health check says otherwise.
    pub fn new(spec: ProviderSpec, breaker: Arc<Breaker>) -> Arc<Self> {
        Arc::new(Self {
            spec,
            breaker,
            outstanding: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            streak: Mutex::new((0, 0)),
            last_check_error: Mutex::new(None),
            task: Mutex::new(None),
        })
    }

    /// The URL of an API path such as `/v1/chat/completions?x`: the part after
    /// `/v1` goes after `base_url` (which carries its own version prefix).
    pub fn url(&self, path_and_query: &str) -> String {
        let rest = path_and_query.strip_prefix("/v1").unwrap_or(path_and_query);
        format!("{}{rest}", self.spec.base_url)
    }

    /// `scheme://host[:port]` of the base URL.
    pub fn origin(&self) -> &str {
        let base = &self.spec.base_url;
        let after = base.find("://").map_or(0, |i| i + 3);
        match base[after..].find('/') {
            Some(i) => &base[..after + i],
            None => base,
        }
    }

    /// The name the provider knows `model` by.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.spec.models.get(model).map_or(model, String::as_str)
    }

    /// Requests in flight here.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The health check's verdict (always up without a check).
    pub fn healthy(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The last failed health check's reason, while down.
    pub fn last_check_error(&self) -> Option<String> {
        self.last_check_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Count a request in, unless `max_concurrent` are already in flight.
    pub fn try_begin(self: &Arc<Self>) -> Option<ProviderLease> {
        let n = self.outstanding.fetch_add(1, Ordering::SeqCst);
        let lease = ProviderLease {
            provider: self.clone(),
        };
        if self.spec.max_concurrent > 0 && n >= self.spec.max_concurrent as usize {
            return None;
        }
        Some(lease)
    }

    /// Start the active health check, if one is configured.
    pub fn start_health(self: &Arc<Self>, upstream: Upstream) {
        let Some(h) = self.spec.health.clone() else {
            return;
        };
        let weak: Weak<Provider> = Arc::downgrade(self);
        let url = format!("{}{}", self.origin(), h.path);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(h.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(p) = weak.upgrade() else { return };
                let result = upstream.check(&url, h.timeout).await;
                p.record_check(result, h.unhealthy_after, h.healthy_after);
            }
        });
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    fn record_check(&self, result: Result<(), String>, unhealthy_after: u32, healthy_after: u32) {
        let mut s = self.streak.lock().unwrap_or_else(|e| e.into_inner());
        let name = &self.spec.name;
        match result {
            Ok(()) => {
                *s = (0, s.1.saturating_add(1));
                if !self.healthy() && s.1 >= healthy_after {
                    self.up.store(true, Ordering::SeqCst);
                    *self
                        .last_check_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = None;
                    tracing::info!(provider = %name, "provider {name} is up again ({} passed health checks)", s.1);
                }
            }
            Err(e) => {
                *s = (s.0.saturating_add(1), 0);
                *self
                    .last_check_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                if self.healthy() && s.0 >= unhealthy_after {
                    self.up.store(false, Ordering::SeqCst);
                    tracing::warn!(provider = %name, "provider {name} is down after {} failed health checks: {e}", s.0);
                }
            }
        }
    }

    /// Carry the health verdict over from the provider this one replaces.
    pub fn inherit(&self, old: &Provider) {
        self.up.store(old.healthy(), Ordering::SeqCst);
        *self.streak.lock().unwrap_or_else(|e| e.into_inner()) =
            *old.streak.lock().unwrap_or_else(|e| e.into_inner());
        *self
            .last_check_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = old.last_check_error();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routing::HealthCheckSpec;
    use std::time::Duration;

    fn provider(base: &str, max: u32) -> Arc<Provider> {
        Provider::new(
            ProviderSpec {
                name: "p".into(),
                base_url: base.into(),
                key_file: None,
                api_key: None,
                timeout: Duration::from_secs(1),
                models: [("gpt".to_string(), "gpt-4o-2024".to_string())].into(),
                context_length: None,
                max_concurrent: max,
                health: Some(HealthCheckSpec {
                    path: "/health".into(),
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(1),
                    unhealthy_after: 2,
                    healthy_after: 2,
                }),
                prices: None,
            },
            Arc::new(Breaker::new(3, Duration::from_secs(1))),
        )
    }

    #[test]
    fn urls_and_names() {
        let p = provider("https://api.openai.com/v1", 0);
        assert_eq!(
            p.url("/v1/chat/completions"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(p.origin(), "https://api.openai.com");
        assert_eq!(p.upstream_model("gpt"), "gpt-4o-2024");
        assert_eq!(p.upstream_model("other"), "other");
        let p = provider("http://10.0.0.2:11434/v1", 0);
        assert_eq!(p.origin(), "http://10.0.0.2:11434");
        let p = provider("http://peer:8080", 0);
        assert_eq!(p.origin(), "http://peer:8080");
        assert_eq!(p.url("/v1/embeddings"), "http://peer:8080/embeddings");
    }

    #[test]
    fn concurrency_cap_and_health_streaks() {
        let p = provider("http://x", 1);
        let a = p.try_begin();
        assert!(a.is_some());
        assert!(p.try_begin().is_none());
        assert_eq!(p.outstanding(), 1);
        drop(a);
        assert_eq!(p.outstanding(), 0);

        p.record_check(Err("refused".into()), 2, 2);
        assert!(p.healthy());
        p.record_check(Err("refused".into()), 2, 2);
        assert!(!p.healthy());
        assert_eq!(p.last_check_error().as_deref(), Some("refused"));
        p.record_check(Ok(()), 2, 2);
        assert!(!p.healthy());
        p.record_check(Ok(()), 2, 2);
        assert!(p.healthy());
    }
}
