//! Trying a plan: one attempt per candidate in order, a retry only before the first
//! byte of a response, fallback to the next target, the breakers and the retry
//! budget. No HTTP edge here: the API hands over what to send and gets back the
//! response to relay (or why there is none).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use super::breaker::{Breaker, RetryBudget};
use super::provider::ProviderLease;
use super::{Candidate, Target};
use crate::config::Priority;
use crate::fleet::{Fleet, FleetError, Instance, Lease};
use crate::proxy::{ProxyError, Upstream};
use crate::telemetry::trace::{self, RequestSpan};

/// Why a request could not be served by any target.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Every target was skipped (breakers open, hosts down).
    #[error("no target of `{route}` can take requests now: {}", skipped.join(", "))]
    NoTarget {
        /// The public name.
        route: String,
        /// Each target and why it was skipped.
        skipped: Vec<String>,
    },
    /// The model could not take the request.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The backend failed (or answered a retryable status with another target left).
    #[error("the backend of model `{model}` failed: {source}")]
    Proxy {
        /// Instance or `provider/model`.
        model: String,
        /// What happened.
        source: ProxyError,
    },
}

/// Why one attempt did not produce a response to relay.
#[derive(Debug)]
pub struct Failure<E> {
    /// What went wrong.
    pub error: E,
    /// Counts against the target's breaker.
    pub breaker: bool,
    /// Another target may be tried.
    pub retry: bool,
}

/// What the orchestration needs to know of a candidate.
pub trait Candidacy {
    /// For logs, headers and metrics.
    fn label(&self) -> &str;
    /// The target's breaker.
    fn breaker(&self) -> &Breaker;
    /// `Some(reason)` when the target is known to be down (a provider's health check).
    fn down(&self) -> Option<&'static str>;
}

impl Candidacy for Candidate {
    fn label(&self) -> &str {
        &self.label
    }
    fn breaker(&self) -> &Breaker {
        &self.breaker
    }
    fn down(&self) -> Option<&'static str> {
        match &self.target {
            Target::Provider { provider, .. } if !provider.healthy() => Some("host down"),
            _ => None,
        }
    }
}

/// Try each candidate in order until one answers, within `max_attempts` and the
/// retry budget. `attempt(candidate, more)` is told whether another target could
/// still take the request (if not, its own error response is the answer). Returns
/// the label of the target whose error ends the request with the error (`-` when
/// every target was skipped).
pub async fn attempt_all<'a, C, S, E, F, Fut>(
    candidates: &'a [C],
    max_attempts: usize,
    budget: &RetryBudget,
    route: &str,
    mut attempt: F,
) -> Result<S, (String, E)>
where
    C: Candidacy,
    E: std::fmt::Display + From<DispatchError>,
    F: FnMut(&'a C, bool) -> Fut,
    Fut: Future<Output = Result<S, Failure<E>>>,
{
    budget.request();
    let mut attempts = 0usize;
    let mut first_error: Option<(String, E)> = None;
    let mut skipped = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if attempts >= max_attempts {
            break;
        }
        if let Some(why) = c.down() {
            skipped.push(format!("{} ({why})", c.label()));
            continue;
        }
        if !c.breaker().allow() {
            skipped.push(format!("{} (circuit open)", c.label()));
            continue;
        }
        if attempts > 0 && !budget.try_retry() {
            tracing::warn!(%route, "retry budget exhausted; not trying {}", c.label());
            break;
        }
        attempts += 1;
        // Whether another target could take the request if this one fails before its
        // first byte; if not, this one's own error response goes to the client.
        let more = attempts < max_attempts
            && candidates[i + 1..]
                .iter()
                .any(|l| l.breaker().would_allow() && l.down().is_none());
        match attempt(c, more).await {
            Ok(served) => return Ok(served),
            Err(f) => {
                if f.breaker {
                    c.breaker().failure();
                }
                if f.retry && more {
                    tracing::info!(%route, target = %c.label(), "{}; trying the next target", f.error);
                }
                if !f.retry {
                    return Err((c.label().to_string(), f.error));
                }
                if first_error.is_none() {
                    first_error = Some((c.label().to_string(), f.error));
                }
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        (
            "-".into(),
            DispatchError::NoTarget {
                route: route.to_string(),
                skipped,
            }
            .into(),
        )
    }))
}

/// Statuses from a target that mean "try another one" when one is left.
pub fn retryable_status(s: StatusCode, provider: bool) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504) || (provider && s == StatusCode::TOO_MANY_REQUESTS)
}

/// Record a response's status in the target's breaker; a retryable status with a
/// target left is a failure of this attempt (its body is dropped unread).
pub fn judge(
    breaker: &Breaker,
    status: StatusCode,
    provider: bool,
    more: bool,
    label: &str,
) -> Result<(), Failure<DispatchError>> {
    if status.is_server_error() {
        breaker.failure();
    } else if status != StatusCode::TOO_MANY_REQUESTS {
        breaker.success();
    }
    if more && retryable_status(status, provider) {
        return Err(Failure {
            error: DispatchError::Proxy {
                model: label.to_string(),
                source: ProxyError::Failed(format!("answered {status}")),
            },
            // Already counted above.
            breaker: false,
            retry: true,
        });
    }
    Ok(())
}

/// How a model's refusal counts: against its breaker when it could not start, and
/// worth another target unless llmvisor is shutting down.
pub fn fleet_failure(e: FleetError) -> Failure<DispatchError> {
    Failure {
        breaker: matches!(
            e,
            FleetError::StartFailed { .. }
                | FleetError::StartTimeout { .. }
                | FleetError::CrashLoop { .. }
        ),
        retry: !matches!(e, FleetError::ShuttingDown),
        error: e.into(),
    }
}

/// An attempt that failed after it was sent: its `upstream` span ends with the error.
fn traced_failure(trace: &RequestSpan, f: Failure<DispatchError>) -> Failure<DispatchError> {
    if trace.is_on() {
        trace.upstream_failed(&f.error.to_string());
    }
    f
}

/// What keeps a target's slot while a response is relayed.
pub enum Hold {
    /// A slot at a local model.
    Model(#[allow(dead_code)] Lease),
    /// A request counted at a provider.
    Provider(#[allow(dead_code)] ProviderLease),
}

/// A target answered with headers.
pub struct Served {
    /// The response, body unread.
    pub resp: hyper::Response<crate::proxy::UpBody>,
    /// The target's label.
    pub label: String,
    /// The local instance that answered.
    pub instance: Option<String>,
    /// The slot, held until the relay ends.
    pub hold: Hold,
    /// Time spent waiting for the model to start.
    pub cold_start: Option<Duration>,
    /// Time spent waiting for a slot.
    pub queued: Option<Duration>,
    /// USD per million (prompt, completion) tokens of the provider that served.
    pub prices: Option<(f64, f64)>,
}

/// One request as dispatch sends it.
pub struct Job<'a> {
    /// The public name asked for.
    pub route: &'a str,
    /// `POST`, or `GET` for a pass-through path.
    pub method: &'a http::Method,
    /// Path and query to send.
    pub path: &'a str,
    /// The client's request headers (the forwarded ones are picked by the proxy).
    pub headers: &'a HeaderMap,
    /// `x-request-id`.
    pub request_id: &'a HeaderValue,
    /// The client's priority in a model's queue.
    pub priority: Priority,
    /// The body for a target that calls the model by this name.
    pub body_for: &'a (dyn Fn(&str) -> crate::proxy::ReqBody + Send + Sync),
    /// Set once a backend got the request (a send that did not fail to connect).
    pub reached: &'a AtomicBool,
    /// The request's spans (nothing while tracing is off).
    pub trace: &'a RequestSpan,
}

/// Where requests are sent.
pub struct Dispatcher<'a> {
    /// The backend client.
    pub upstream: &'a Upstream,
    /// The models.
    pub fleet: &'a Fleet,
    /// At most this many targets per request.
    pub max_attempts: usize,
    /// Retries allowed on top of first attempts.
    pub budget: &'a RetryBudget,
}

impl Dispatcher<'_> {
    /// Try the candidates of a plan in order.
    pub async fn run(
        &self,
        job: &Job<'_>,
        candidates: &[Candidate],
    ) -> Result<Served, (String, DispatchError)> {
        attempt_all(
            candidates,
            self.max_attempts,
            self.budget,
            job.route,
            |c, more| self.attempt(job, c, more),
        )
        .await
    }

    /// One target: take a slot (starting the model if needed), send, and judge the
    /// response headers.
    pub async fn attempt(
        &self,
        job: &Job<'_>,
        c: &Candidate,
        more: bool,
    ) -> Result<Served, Failure<DispatchError>> {
        let sent = |r: &Result<_, ProxyError>| {
            if !matches!(r, Err(ProxyError::Connect(_))) {
                job.reached.store(true, Ordering::Relaxed);
            }
        };
        let proxy_failure = |model: &str, source| Failure {
            error: DispatchError::Proxy {
                model: model.to_string(),
                source,
            },
            breaker: true,
            retry: true,
        };
        match &c.target {
            Target::Model(inst) => {
                let lease = self
                    .acquire(inst, job.priority)
                    .await
                    .map_err(fleet_failure)?;
                let inst = lease.instance().clone();
                job.trace.waited(
                    lease.acquired.into_std(),
                    inst.name(),
                    lease.cold_start,
                    lease.waited_for_slot.then_some(lease.queued),
                );
                // Ours when tracing, else the client's as it came.
                let parent = job
                    .trace
                    .upstream(&trace::Upstream {
                        label: &c.label,
                        model: &inst.spec.served_name,
                        provider: inst.spec.kind.as_str(),
                        address: "127.0.0.1",
                        port: inst.spec.port,
                    })
                    .or_else(|| trace::passthrough(job.headers));
                let resp = self
                    .upstream
                    .send(
                        job.method.clone(),
                        inst.spec.port,
                        job.path,
                        job.headers,
                        Some(job.request_id),
                        parent.as_ref(),
                        (job.body_for)(&inst.spec.served_name),
                    )
                    .await;
                sent(&resp);
                let resp = resp
                    .map_err(|e| proxy_failure(inst.name(), e))
                    .map_err(|f| traced_failure(job.trace, f))?;
                judge(&c.breaker, resp.status(), false, more, &c.label)
                    .map_err(|f| traced_failure(job.trace, f))?;
                Ok(Served {
                    resp,
                    label: c.label.clone(),
                    instance: Some(inst.name().to_string()),
                    cold_start: lease.cold_start,
                    queued: Some(lease.queued),
                    prices: None,
                    hold: Hold::Model(lease),
                })
            }
            Target::Provider { provider, model } => {
                let Some(lease) = provider.try_begin() else {
                    return Err(Failure {
                        error: DispatchError::Fleet(FleetError::QueueFull {
                            model: c.label.clone(),
                            limit: provider.spec.max_concurrent as usize,
                        }),
                        breaker: false,
                        retry: true,
                    });
                };
                let url = provider.url(job.path);
                if job.trace.is_on() {
                    let (address, port) = trace::host_of(&url);
                    // No `traceparent` leaves for a third party.
                    job.trace.upstream(&trace::Upstream {
                        label: &c.label,
                        model: provider.upstream_model(model),
                        provider: &provider.spec.name,
                        address,
                        port,
                    });
                }
                let resp = self
                    .upstream
                    .post_url(
                        &url,
                        job.headers,
                        Some(job.request_id),
                        provider.spec.api_key.as_ref().map(|k| k.0.as_str()),
                        (job.body_for)(provider.upstream_model(model)),
                        provider.spec.timeout,
                    )
                    .await;
                sent(&resp);
                let resp = resp
                    .map_err(|e| proxy_failure(&c.label, e))
                    .map_err(|f| traced_failure(job.trace, f))?;
                judge(&c.breaker, resp.status(), true, more, &c.label)
                    .map_err(|f| traced_failure(job.trace, f))?;
                Ok(Served {
                    resp,
                    label: c.label.clone(),
                    instance: None,
                    cold_start: None,
                    queued: None,
                    prices: provider.spec.prices,
                    hold: Hold::Provider(lease),
                })
            }
        }
    }

    /// A slot at a model; once more if a reload replaced the model meanwhile.
    async fn acquire(&self, inst: &Arc<Instance>, priority: Priority) -> Result<Lease, FleetError> {
        match inst.acquire_as(priority).await {
            Err(FleetError::Replaced { .. }) if !self.fleet.shutting_down() => {
                match self.fleet.get(inst.name()) {
                    Some(next) if !next.is_retired() => next.acquire_as(priority).await,
                    _ => Err(FleetError::Replaced {
                        model: inst.name().to_string(),
                    }),
                }
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct Fake {
        label: &'static str,
        breaker: Breaker,
        down: bool,
    }

    impl Candidacy for Fake {
        fn label(&self) -> &str {
            self.label
        }
        fn breaker(&self) -> &Breaker {
            &self.breaker
        }
        fn down(&self) -> Option<&'static str> {
            self.down.then_some("host down")
        }
    }

    fn fake(label: &'static str) -> Fake {
        Fake {
            label,
            breaker: Breaker::new(2, Duration::from_secs(60)),
            down: false,
        }
    }

    #[derive(Debug)]
    struct E(String);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl From<DispatchError> for E {
        fn from(e: DispatchError) -> Self {
            E(e.to_string())
        }
    }

    fn fail(retry: bool, breaker: bool) -> Failure<E> {
        Failure {
            error: E("failed".into()),
            breaker,
            retry,
        }
    }

    type Outcome = Result<&'static str, (String, E)>;

    /// Run `attempt_all` with each target answering as `answer` says; returns the
    /// result and the (label, more) pairs tried.
    fn run(
        cands: &[Fake],
        max: usize,
        answer: impl Fn(&str) -> Result<&'static str, Failure<E>>,
    ) -> (Outcome, Vec<(String, bool)>) {
        let tried = RefCell::new(Vec::new());
        let budget = RetryBudget::new(0.2);
        let fut = attempt_all(cands, max, &budget, "r", |c: &Fake, more| {
            tried.borrow_mut().push((c.label.to_string(), more));
            let r = answer(c.label);
            async move { r }
        });
        let r = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(fut);
        (r, tried.into_inner())
    }

    #[test]
    fn the_first_target_that_answers_serves() {
        let c = [fake("a"), fake("b")];
        let (r, tried) = run(&c, 3, |l| Ok(if l == "a" { "A" } else { "B" }));
        assert_eq!(r.unwrap(), "A");
        assert_eq!(tried, vec![("a".into(), true)]);
    }

    #[test]
    fn a_retryable_failure_falls_back_and_counts_in_the_breaker() {
        let c = [fake("a"), fake("b")];
        let (r, tried) = run(&c, 3, |l| {
            if l == "a" {
                Err(fail(true, true))
            } else {
                Ok("B")
            }
        });
        assert_eq!(r.unwrap(), "B");
        assert_eq!(tried, vec![("a".into(), true), ("b".into(), false)]);
        assert_eq!(c[0].breaker.failures(), 1);
    }

    #[test]
    fn a_final_failure_stops_at_once() {
        let c = [fake("a"), fake("b")];
        let (r, tried) = run(&c, 3, |_| Err(fail(false, false)));
        assert_eq!(r.unwrap_err().0, "a");
        assert_eq!(tried.len(), 1);
    }

    #[test]
    fn the_first_error_is_the_answer_when_all_fail() {
        let c = [fake("a"), fake("b")];
        let (r, _) = run(&c, 3, |_| Err(fail(true, false)));
        assert_eq!(r.unwrap_err().0, "a");
    }

    #[test]
    fn max_attempts_bounds_the_tries_and_the_last_is_told_no_more() {
        let c = [fake("a"), fake("b"), fake("c")];
        let (_, tried) = run(&c, 2, |_| Err(fail(true, false)));
        assert_eq!(tried, vec![("a".into(), true), ("b".into(), false)]);
    }

    #[test]
    fn down_and_open_targets_are_skipped_and_named() {
        let mut down = fake("a");
        down.down = true;
        let open = fake("b");
        open.breaker.failure();
        open.breaker.failure();
        let (r, tried) = run(&[down, open], 3, |_| Ok("x"));
        assert!(tried.is_empty());
        let (label, e) = r.unwrap_err();
        assert_eq!(label, "-");
        assert!(
            e.0.contains("a (host down)") && e.0.contains("b (circuit open)"),
            "{e}"
        );
    }

    #[test]
    fn retryable_statuses() {
        for s in [500, 502, 503, 504] {
            assert!(retryable_status(StatusCode::from_u16(s).unwrap(), false));
        }
        assert!(!retryable_status(StatusCode::BAD_REQUEST, true));
        assert!(!retryable_status(StatusCode::TOO_MANY_REQUESTS, false));
        assert!(retryable_status(StatusCode::TOO_MANY_REQUESTS, true));
    }

    #[test]
    fn judge_counts_the_breaker_and_retries_only_with_a_target_left() {
        let b = Breaker::new(5, Duration::from_secs(60));
        assert!(judge(&b, StatusCode::SERVICE_UNAVAILABLE, false, true, "a").is_err());
        assert_eq!(b.failures(), 1);
        assert!(judge(&b, StatusCode::SERVICE_UNAVAILABLE, false, false, "a").is_ok());
        assert_eq!(b.failures(), 2);
        assert!(judge(&b, StatusCode::OK, false, true, "a").is_ok());
        assert_eq!(b.failures(), 0);
        let f = judge(&b, StatusCode::TOO_MANY_REQUESTS, true, true, "a").unwrap_err();
        assert!(f.retry && !f.breaker);
    }

    #[test]
    fn fleet_refusals() {
        let f = fleet_failure(FleetError::ShuttingDown);
        assert!(!f.retry && !f.breaker);
        let f = fleet_failure(FleetError::QueueFull {
            model: "m".into(),
            limit: 1,
        });
        assert!(f.retry && !f.breaker);
    }
}
