//! The forwarding endpoints (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/rerank`, `/v1/responses`): admit the request (src/api/admit.rs), hand its
//! plan to `router::dispatch` — which tries the targets, retrying only before the
//! first byte — and relay the answer as it comes, rendering the headers and errors.
//! Every request, answered or refused, is accounted once (src/api/account.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::account::{Account, CLIENT_CLOSED, Ending, status_error};
use super::body::{self, Head};
use super::headers::{Info, route_headers};
use super::{ApiError, App, Policy, admit};
use crate::auth::{Client, Quota};
use crate::fleet::State as ModelState;
use crate::proxy::{Outcome, Relay, ReqBody, Tap};
use crate::router::dispatch::{Dispatcher, Hold, Job, Served};
use crate::router::{Plan, Target};
use crate::telemetry::trace::{self, Asked, RequestSpan};

fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat/completions",
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        "/v1/rerank" => "rerank",
        "/v1/responses" => "responses",
        "/v1/messages" => "messages",
        "/v1/messages/count_tokens" => "messages/count_tokens",
        p => crate::config::post_passthrough(p).unwrap_or("other"),
    }
}

/// The rest of an upload's body, and its length when the client gave one.
pub(super) type Rest = (Body, Option<u64>);

/// One request on its way: who sent it, what it asked, where it stands.
pub(super) struct Call {
    pub app: Arc<App>,
    pub policy: Arc<Policy>,
    pub client: Arc<Client>,
    pub parts: Parts,
    pub body: Bytes,
    /// The fields of `body` llmvisor reads (and the byte ranges it rewrites).
    pub head: Head,
    pub stream: bool,
    pub endpoint: &'static str,
    pub started: Instant,
    pub request_id: HeaderValue,
    pub route: String,
    pub quota: Option<Quota>,
    /// Tokens charged to the client's `tpm` at admission (settled with the usage).
    pub charged_tokens: u64,
    /// Some backend got the request (a send that did not fail to connect); until
    /// then a refusal gives the client's rate-limit charge back.
    pub reached: AtomicBool,
    /// Unix milliseconds at arrival (the usage store's time).
    pub ts_ms: i64,
    /// A GET pass-through (`/upstream/<model><path>`): the backend path and query.
    pub upstream_path: Option<String>,
    /// llmvisor adds `stream_options.include_usage` (and removes what it brings).
    pub inject_usage: bool,
    /// A multipart upload streamed through: `body` holds what was read to find
    /// `model`; this, the rest of the client's body (and its length, if known).
    /// Taken by the one target it is sent to.
    pub upload: Option<std::sync::Mutex<Option<Rest>>>,
    /// Its spans (nothing while tracing is off).
    pub trace: RequestSpan,
}

impl Call {
    fn account(&self) -> Account<'_> {
        Account {
            app: &self.app,
            request_id: &self.request_id,
            client: &self.client.name,
            route: &self.route,
            endpoint: self.endpoint,
            started: self.started,
            ts_ms: self.ts_ms,
            stream: self.stream,
        }
    }

    /// A request that ended with `status` and nothing else to say.
    pub(super) fn observe(&self, target: &str, status: u16) {
        self.done(target, status, Ending::error(status_error(status)));
    }

    /// A request that ends with llmvisor's own error. If no backend ever got it
    /// (queue full, queue timeout, a model that failed to start, no target left,
    /// no connection), its rate-limit charge goes back to the client.
    pub(super) fn fail(&self, target: &str, e: &ApiError) {
        if self.quota.is_some() && !self.reached.load(Ordering::Relaxed) {
            self.client.limits.refund(self.charged_tokens);
        }
        let code = e.render().code;
        self.done(
            target,
            e.render().status.as_u16(),
            Ending::error(Some(code.to_string())),
        );
    }

    /// A finished request: the client's tokens settled, then the account.
    fn done(&self, target: &str, status: u16, end: Ending) {
        if let Some(u) = end.tapped.usage {
            self.client
                .limits
                .settle(self.charged_tokens, u.prompt_tokens + u.completion_tokens);
        }
        self.trace.finish(&trace::Finished {
            target,
            status,
            error: end.error.as_deref(),
            usage: end
                .tapped
                .usage
                .map(|u| (u.prompt_tokens, u.completion_tokens)),
            first_byte: end.tapped.first_byte.map(|t| t.into_std()),
        });
        self.account().record(target, status, end);
    }

    /// Try the plan's targets (see `router::dispatch`).
    async fn dispatch(&self, plan: &Plan) -> Result<Served, (String, ApiError)> {
        let body_for = |name: &str| -> ReqBody {
            if self.upstream_path.is_some() {
                return Bytes::new().into();
            }
            let head = body::rewrite(&self.body, &self.head, name, self.inject_usage);
            match &self.upload {
                None => head.into(),
                Some(rest) => {
                    // max_attempts is 1 for an upload: taken once.
                    let (rest, len) = rest
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                        .unwrap_or_else(|| (Body::empty(), Some(0)));
                    ReqBody::upload(head, rest, len)
                }
            }
        };
        let job = Job {
            route: &self.route,
            method: &self.parts.method,
            path: self
                .upstream_path
                .as_deref()
                .unwrap_or_else(|| self.parts.uri.path_and_query().map_or("/", |p| p.as_str())),
            headers: &self.parts.headers,
            request_id: &self.request_id,
            priority: self.client.priority,
            body_for: &body_for,
            reached: &self.reached,
            trace: &self.trace,
        };
        let dispatcher = Dispatcher {
            upstream: &self.app.upstream,
            fleet: &self.app.fleet,
            // An upload streamed through cannot be sent twice.
            max_attempts: if self.upload.is_some() {
                1
            } else {
                self.app.settings.server.max_attempts as usize
            },
            budget: self.policy.router.budget(),
        };
        dispatcher
            .run(&job, &plan.candidates)
            .await
            .map_err(|(label, e)| (label, e.into()))
    }
}

/// Handler of every forwarding endpoint (and of POST pass-through paths).
pub async fn forward(State(app): State<Arc<App>>, req: Request) -> Response {
    let endpoint = endpoint_of(req.uri().path());
    forward_as(app, req, endpoint, None).await
}

/// `GET /upstream/<model><path>`: a GET path of the model's server (its kind's
/// [`crate::config::Kind::get_paths`]), with keys, limits and accounting as for
/// any request. The model name may hold `/`: the longest known name that the URL
/// starts with wins.
pub async fn upstream(State(app): State<Arc<App>>, req: Request) -> Response {
    let rest = req
        .uri()
        .path()
        .strip_prefix("/upstream/")
        .unwrap_or_default()
        .to_string();
    let policy = app.policy();
    let split = rest
        .rmatch_indices('/')
        .map(|(i, _)| i)
        .find(|i| policy.router.knows(&rest[..*i]));
    let Some(i) = split else {
        let id = admit::request_id(req.headers());
        let mut resp = ApiError::UnknownUrl(format!("GET {}", req.uri().path())).into_response();
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
        return resp;
    };
    let (model, path) = (rest[..i].to_string(), &rest[i..]);
    let Some(endpoint) = crate::config::get_passthrough(path) else {
        let id = admit::request_id(req.headers());
        let mut resp = ApiError::EndpointNotServed(model, format!("GET {path}")).into_response();
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
        return resp;
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    forward_as(app, req, endpoint, Some((model, path_and_query))).await
}

async fn forward_as(
    app: Arc<App>,
    req: Request,
    endpoint: &'static str,
    upstream: Option<(String, String)>,
) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let id = admit::request_id(&parts.headers);
    let parent = trace::client_parent(app.tracing.as_ref(), &parts.headers);
    let policy = app.policy();
    let admitted = admit::admit(
        app.clone(),
        policy,
        parts,
        body,
        endpoint,
        started,
        id.clone(),
        upstream,
    )
    .await;
    let mut resp = match admitted {
        Ok((mut call, plan)) => {
            call.trace = RequestSpan::start(
                app.tracing.as_ref(),
                parent.as_ref(),
                started,
                &Asked {
                    endpoint,
                    route: &call.route,
                    client: &call.client.name,
                    request_id: &id,
                    stream: call.stream,
                    body: &call.body,
                },
            );
            run(Arc::new(call), plan).await
        }
        Err((client, route, e)) => {
            let r = e.render();
            RequestSpan::refused(
                app.tracing.as_ref(),
                parent.as_ref(),
                started,
                &Asked {
                    endpoint,
                    route: &route,
                    client: &client,
                    request_id: &id,
                    stream: false,
                    body: &[],
                },
                r.status.as_u16(),
                r.code,
            );
            let account = Account {
                app: &app,
                request_id: &id,
                client: &client,
                route: &route,
                endpoint,
                started,
                ts_ms: crate::store::now_ms() - started.elapsed().as_millis() as i64,
                stream: false,
            };
            account.record("-", r.status.as_u16(), Ending::error(Some(r.code.into())));
            e.into_response()
        }
    };
    resp.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), id);
    resp
}

/// Try the plan; a streaming request that would wait for a cold start gets its 200
/// and `: loading` comments at once.
async fn run(call: Arc<Call>, plan: Plan) -> Response {
    let cold = matches!(
        plan.candidates.first().map(|c| &c.target),
        Some(Target::Model(i)) if i.state() != ModelState::Ready
    );
    let server = &call.app.settings.server;
    let mut unanswered = Unanswered {
        call: &call,
        armed: true,
    };
    let result = if call.stream && server.stream_keepalive && cold {
        let c = call.clone();
        let mut attempt = Box::pin(async move { c.dispatch(&plan).await });
        tokio::select! {
            biased;
            r = &mut attempt => r,
            _ = tokio::time::sleep(server.stream_keepalive_interval.0) => {
                unanswered.armed = false;
                return super::keepalive::keepalive_stream(call.clone(), attempt);
            }
        }
    } else {
        call.dispatch(&plan).await
    };
    unanswered.armed = false;
    match result {
        Ok(served) => respond(&call, served),
        Err((label, e)) => {
            call.fail(&label, &e);
            let mut resp = e.into_response();
            route_headers(&call, None, resp.headers_mut());
            resp
        }
    }
}

/// Counts a request whose client went away before a response began (while it
/// waited for a start, a slot or the backend's headers): the handler's future is
/// dropped, and so is this guard, still armed.
struct Unanswered<'a> {
    call: &'a Call,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.call.observe("-", CLIENT_CLOSED);
            tracing::debug!(route = %self.call.route, "client went away before the response began");
        }
    }
}

/// Relay a served response.
fn respond(call: &Arc<Call>, served: Served) -> Response {
    let Served {
        resp,
        label,
        instance,
        hold,
        cold_start,
        queued,
        prices,
    } = served;
    let (head, body) = resp.into_parts();
    let status = head.status;
    let sse = is_sse(&head.headers);
    let mut headers = HeaderMap::new();
    crate::proxy::copy_end_to_end(&head.headers, &mut headers);
    let info = Info {
        label: &label,
        instance: instance.as_deref(),
        queued,
        cold_start,
    };
    route_headers(call, Some(&info), &mut headers);
    let end = Ending {
        queued,
        cold_start,
        prices,
        ..Ending::default()
    };
    let on_end = finisher(call.clone(), label.clone(), status, hold, end);
    let tap = Tap::new(sse, call.inject_usage);
    let relay = Relay::new(
        body,
        call.app.upstream.idle_timeout(),
        sse,
        label,
        tap,
        on_end,
    );
    let mut out = Response::new(Body::new(relay));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// What runs when a relayed response ends: the slot is freed, metrics and log written.
pub(super) fn finisher(
    call: Arc<Call>,
    target: String,
    status: StatusCode,
    hold: Hold,
    mut end: Ending,
) -> crate::proxy::OnEnd {
    Box::new(move |outcome, tapped| {
        drop(hold);
        let (code, error) = match outcome {
            Outcome::Complete if status.as_u16() >= 400 => (
                status.as_u16(),
                Some(format!("upstream_{}", status.as_u16())),
            ),
            Outcome::Complete => (status.as_u16(), None),
            // Cut by the edge because the client stopped reading (write_timeout).
            Outcome::ClientGone if super::server::client_stalled() => {
                (CLIENT_CLOSED, Some("client_stalled".into()))
            }
            Outcome::ClientGone => (CLIENT_CLOSED, Some("client_closed".into())),
            Outcome::UpstreamFailed => (502, Some("backend_error".into())),
            Outcome::UpstreamTimeout => (504, Some("backend_timeout".into())),
        };
        end.tapped = tapped;
        end.error = error;
        call.done(&target, code, end);
    })
}

fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}
