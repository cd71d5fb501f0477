//! `GET /admin/events`: the operator page's one live feed, as server-sent events
//! (behind the `/admin` rule like every admin route).
//!
//! On connect the page gets the whole picture, then what changes:
//!
//! | event      | data                                        | when |
//! | ---------- | ------------------------------------------- | ---- |
//! | `hello`    | version, unit manager, store on/off         | connect |
//! | `models`   | every model's view, configuration order     | connect, a reload, after lagging |
//! | `model`    | one model's view                            | its state changed (at once); in flight, queue or step-down changed (seen within 2 s) |
//! | `gpus`     | `/admin/gpus`' body                         | connect; changed, looked at every 2 s after a state change, else every 6 s |
//! | `profiles` | `/admin/profiles`' body                     | connect; changed (looked at every 6 s) |
//! | `requests` | the store's latest 100 requests, newest first | connect |
//! | `request`  | one finished request                        | as it is recorded |
//! | `log`      | `{model, lines}`                            | with `?logs=<model>`: its last 200 lines, then each new one |
//! | `lagged`   | `{what, missed}`                            | this page fell behind and missed that many (a fresh `models` follows) |
//!
//! and a comment line after 15 s without an event, so proxies keep the stream.
//!
//! A page costs a fixed amount, whatever it does: the fleet's state changes,
//! the recorded requests and a unit's output lines are bounded broadcast rings
//! shared by every page (256 entries each), in which a page holds only its
//! position; its frames go through a channel of 16 to its connection. A page that
//! does not read makes only its own feed wait at that channel; its positions fall
//! behind and lag, and the fleet, the request path and other pages never wait
//! for it (tokio's broadcast never blocks a sender). The edge's `write_timeout`
//! closes a connection that reads nothing. Under systemd a followed log is read
//! by one blocking thread per page, ending within a second of the page leaving.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::{ApiError, App};
use crate::fleet::{Instance, State as ModelState};

/// Frames queued for one page's connection.
const FRAMES: usize = 16;
/// How often counters (in flight, queue, step-down) are compared.
const TICK: Duration = Duration::from_secs(2);
/// Every how many ticks GPUs and profiles are compared without a state change.
const SLOW_TICKS: u32 = 3;
/// Silence after which a comment line is sent.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Lines of a model's log sent on connect.
const LOG_TAIL: usize = 200;
/// Requests sent on connect.
const RECENT: usize = 100;
/// Journal lines a slow page may fall behind (under systemd).
const JOURNAL_LINES: usize = 256;

/// Query of the events route.
#[derive(serde::Deserialize)]
pub struct EventsQuery {
    /// Follow this model's log too.
    logs: Option<String>,
}

/// `GET /admin/events[?logs=<model>]`: see the module documentation.
pub async fn events(State(app): State<Arc<App>>, Query(q): Query<EventsQuery>) -> Response {
    let logs = match q.logs.filter(|s| !s.is_empty()) {
        None => None,
        Some(name) => match app
            .policy()
            .router
            .resolve(&name)
            .and_then(|i| app.fleet.get(i))
        {
            Some(i) => Some(i),
            None => return ApiError::ModelNotFound(name).into_response(),
        },
    };
    let (tx, rx) = mpsc::channel::<Bytes>(FRAMES);
    let feed = Feed {
        app,
        tx,
        seen: HashMap::new(),
        gpus: String::new(),
        profiles: String::new(),
        last_frame: Instant::now(),
    };
    tokio::spawn(feed.run(logs));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and similar proxies: pass each event on at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn frame(event: &str, data: &Value) -> Bytes {
    // serde_json writes no raw newlines: one `data:` line per event.
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The page went away.
struct Gone;

/// Where a followed log's lines come from.
enum Lines {
    None,
    /// The process manager's own capture.
    Kept(broadcast::Receiver<Arc<str>>),
    /// The journal, read by a blocking thread.
    Journal(mpsc::Receiver<Result<String, String>>),
}

impl Lines {
    async fn next(&mut self) -> Option<Result<Vec<String>, LineError>> {
        match self {
            Lines::None => std::future::pending().await,
            Lines::Kept(rx) => match rx.recv().await {
                Ok(l) => Some(Ok(vec![l.to_string()])),
                Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(LineError::Lagged(n))),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            Lines::Journal(rx) => {
                let first = rx.recv().await?;
                let mut lines = vec![];
                match first {
                    Ok(l) => lines.push(l),
                    Err(e) => return Some(Err(LineError::Failed(e))),
                }
                // What else is waiting goes in the same frame.
                while lines.len() < LOG_TAIL {
                    match rx.try_recv() {
                        Ok(Ok(l)) => lines.push(l),
                        _ => break,
                    }
                }
                Some(Ok(lines))
            }
        }
    }
}

enum LineError {
    Lagged(u64),
    Failed(String),
}

/// One page's feed.
struct Feed {
    app: Arc<App>,
    tx: mpsc::Sender<Bytes>,
    /// Each model's last sent view, less what changes by the second.
    seen: HashMap<String, String>,
    gpus: String,
    profiles: String,
    last_frame: Instant,
}

impl Feed {
    async fn send(&mut self, event: &str, data: &Value) -> Result<(), Gone> {
        self.last_frame = Instant::now();
        self.tx.send(frame(event, data)).await.map_err(|_| Gone)
    }

    async fn run(mut self, logs: Option<Arc<Instance>>) {
        let _ = self.feed(logs).await;
    }

    async fn feed(&mut self, logs: Option<Arc<Instance>>) -> Result<(), Gone> {
        // Subscribe before reading the state: nothing falls between the two.
        let mut changes = self.app.fleet.subscribe_changes();
        let mut requests = self.app.store.subscribe_requests();
        let mut lines = Lines::None;
        let hello = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "unit_manager": self.app.fleet.manager_name(),
            "store": self.app.store.enabled(),
            "admin_key": self.app.policy().auth.has_admin_key(),
        });
        self.send("hello", &hello).await?;
        self.all_models().await?;
        self.gpus(true).await?;
        self.profiles(true).await?;
        let recent = super::admin::recent_requests(&self.app, RECENT, None, None)
            .await
            .unwrap_or_default();
        self.send("requests", &json!(recent)).await?;
        if let Some(i) = &logs {
            lines = self.follow(i).await?;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut ticks, mut gpus_due) = (0u32, false);
        loop {
            tokio::select! {
                () = self.tx.closed() => return Err(Gone),
                c = changes.recv() => match c {
                    Ok(name) if &*name == "*" => self.all_models().await?,
                    Ok(name) => {
                        if let Some(i) = self.app.fleet.get(&name) {
                            self.model(&i).await?;
                        }
                        gpus_due = true;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.send("lagged", &json!({"what": "models", "missed": n})).await?;
                        self.all_models().await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                r = requests.recv() => match r {
                    Ok(rec) => {
                        self.send("request", &super::admin::request_json(&rec)).await?;
                        if let Some(i) = self.app.fleet.get(&rec.target) {
                            self.model_if_changed(&i).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.send("lagged", &json!({"what": "requests", "missed": n})).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                l = lines.next() => match (l, &logs) {
                    (Some(Ok(batch)), Some(i)) => {
                        self.send("log", &json!({"model": i.name(), "lines": batch})).await?;
                    }
                    (Some(Err(LineError::Lagged(n))), Some(i)) => {
                        self.send("lagged", &json!({"what": "log", "model": i.name(), "missed": n})).await?;
                    }
                    (Some(Err(LineError::Failed(why))), Some(i)) => {
                        tracing::warn!(model = %i.name(), "following the log: {why}");
                        let msg = format!("(the log cannot be followed: {why})");
                        self.send("log", &json!({"model": i.name(), "lines": [msg]})).await?;
                        lines = Lines::None;
                    }
                    _ => lines = Lines::None,
                },
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    for i in self.app.fleet.instances() {
                        self.model_if_changed(&i).await?;
                    }
                    let slow = ticks % SLOW_TICKS == 0;
                    if gpus_due || slow {
                        gpus_due = false;
                        self.gpus(false).await?;
                    }
                    if slow {
                        self.profiles(false).await?;
                    }
                    if self.last_frame.elapsed() >= KEEPALIVE {
                        self.last_frame = Instant::now();
                        self.tx.send(Bytes::from_static(b": keep-alive\n\n")).await.map_err(|_| Gone)?;
                    }
                }
            }
        }
    }

    /// The last lines of a model's log, then each new one.
    async fn follow(&mut self, i: &Arc<Instance>) -> Result<Lines, Gone> {
        if let Some(rx) = self.app.fleet.follow_output(i) {
            let kept = self
                .app
                .fleet
                .recent_output(i, LOG_TAIL)
                .unwrap_or_default();
            self.send("log", &json!({"model": i.name(), "lines": kept}))
                .await?;
            return Ok(Lines::Kept(rx));
        }
        let (tx, rx) = mpsc::channel(JOURNAL_LINES);
        let (unit, model) = (i.unit.unit.clone(), i.name().to_string());
        tokio::task::spawn_blocking(move || {
            let q = crate::units::journal::Query {
                unit: &unit,
                model: Some(&model),
                invocation: None,
            };
            let r = crate::units::journal::follow_while(
                &q,
                LOG_TAIL,
                // A page that falls behind misses lines; the thread never waits.
                |l| {
                    !matches!(
                        tx.try_send(Ok(l.to_string())),
                        Err(mpsc::error::TrySendError::Closed(_))
                    )
                },
                || !tx.is_closed(),
            );
            if let Err(e) = r {
                let _ = tx.try_send(Err(e));
            }
        });
        Ok(Lines::Journal(rx))
    }

    /// A model as the page shows it: `/health`'s view, its name, idle TTL, main
    /// process and, when failed, the last line of its log.
    async fn view(&self, i: &Instance) -> Value {
        let mut v = super::status::model_status(i, &self.app.policy().router);
        v["name"] = json!(i.name());
        v["idle_ttl_seconds"] = json!(i.idle_ttl().map(|d| d.as_secs()));
        let state = i.state();
        if !matches!(state, ModelState::Stopped | ModelState::Failed) {
            v["pid"] = json!(self.app.fleet.main_pid(i).await);
        }
        if state == ModelState::Failed {
            v["last_line"] = json!(self.last_line(i).await);
        }
        v
    }

    async fn last_line(&self, i: &Instance) -> Option<String> {
        if let Some(kept) = self.app.fleet.recent_output(i, 1) {
            return kept.into_iter().next_back();
        }
        let unit = i.unit.unit.clone();
        tokio::task::spawn_blocking(move || {
            let q = crate::units::journal::Query {
                unit: &unit,
                model: None,
                invocation: None,
            };
            crate::units::journal::messages(&q, 1).pop()
        })
        .await
        .ok()
        .flatten()
    }

    /// What must change for a model to be sent again (not the seconds counters,
    /// which the page counts itself).
    fn fingerprint(&self, i: &Instance) -> String {
        let mut v = super::status::model_status(i, &self.app.policy().router);
        if let Some(o) = v.as_object_mut() {
            o.remove("state_seconds");
            o.remove("idle_seconds");
        }
        v.to_string()
    }

    async fn model(&mut self, i: &Instance) -> Result<(), Gone> {
        let fp = self.fingerprint(i);
        self.seen.insert(i.name().to_string(), fp);
        let v = self.view(i).await;
        self.send("model", &v).await
    }

    async fn model_if_changed(&mut self, i: &Instance) -> Result<(), Gone> {
        if self.seen.get(i.name()) == Some(&self.fingerprint(i)) {
            return Ok(());
        }
        self.model(i).await
    }

    async fn all_models(&mut self) -> Result<(), Gone> {
        let mut all = Vec::new();
        self.seen.clear();
        for i in self.app.fleet.instances() {
            self.seen.insert(i.name().to_string(), self.fingerprint(&i));
            all.push(self.view(&i).await);
        }
        self.send("models", &json!(all)).await
    }

    async fn gpus(&mut self, always: bool) -> Result<(), Gone> {
        let fleet = self.app.fleet.clone();
        // NVML calls block briefly.
        let Ok(v) = tokio::task::spawn_blocking(move || super::admin::gpu_view(&fleet)).await
        else {
            return Ok(());
        };
        let s = v.to_string();
        if always || s != self.gpus {
            self.gpus = s;
            self.send("gpus", &v).await?;
        }
        Ok(())
    }

    async fn profiles(&mut self, always: bool) -> Result<(), Gone> {
        let v = super::admin::profile_view(&self.app.fleet);
        // `now` moves every second; the rest is what the page shows.
        let mut key = v.clone();
        if let Some(o) = key.as_object_mut() {
            o.remove("now");
        }
        let s = key.to_string();
        if always || s != self.profiles {
            self.profiles = s;
            self.send("profiles", &v).await?;
        }
        Ok(())
    }
}
