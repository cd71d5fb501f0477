//! The fleet's state machine, driven through its public operations against the fake
//! unit manager ([`crate::units::fake`]) with tokio's paused clock: every transition
//! of [`super::state::TABLE`], idle TTL, crash backoff and lock-out, concurrent start
//! de-duplication, eviction, sleep and wake, profile switch with drain, reload diff,
//! adoption. No process, no socket, no real time: the whole set runs in
//! milliseconds. What needs processes stays in `tests/*.rs`.
//!
//! With the clock paused, tokio jumps to the next timer whenever every task
//! waits, so `sleep(d)` means "let d pass, and everything due in it happen".

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use super::*;
use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use crate::units::fake::{FakeUnits, Script};
use crate::units::sockets::Owner;

static SEEN: Mutex<Option<HashSet<Transition>>> = Mutex::new(None);

/// Called by `Instance::apply` for every transition made.
pub(super) fn saw(t: Transition) {
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(t);
}

/// Health and sleep answered by the fake manager's units.
struct FakeProbe(Arc<FakeUnits>);

#[async_trait::async_trait]
impl Probe for FakeProbe {
    async fn check(&self, port: u16, _path: &str) -> bool {
        self.0.healthy(port)
    }
    async fn post(&self, port: u16, path: &str, _timeout: Duration) -> Result<u16, String> {
        self.0.post(port, path)
    }
    async fn port_taken(&self, _port: u16) -> Option<String> {
        None
    }
    async fn owner(&self, _port: u16, _pids: Vec<u32>) -> Owner {
        Owner::Unknown
    }
}

/// A model on `port` with the given extra settings.
fn model(name: &str, port: u16, extra: &str) -> String {
    let mut text = format!(
        "[models.{name}]\nkind = \"command\"\ncommand = [\"fake\", \"{{port}}\"]\nport = {port}\n{extra}\n"
    );
    for (key, value) in [("start_timeout", "10s"), ("restart_backoff", "1s")] {
        if !extra.contains(key) {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
    }
    text
}

fn settings(toml: &str) -> Settings {
    let text = format!("[server]\nauth = \"none\"\n{toml}");
    Config::parse(&text)
        .unwrap()
        .validate()
        .unwrap_or_else(|e| panic!("{e:?}"))
}

struct Setup {
    fleet: Arc<Fleet>,
    units: Arc<FakeUnits>,
}

impl Setup {
    fn new(toml: &str) -> Self {
        Self::with(toml, true, Clock::real())
    }

    fn with(toml: &str, adopts: bool, clock: Clock) -> Self {
        let s = settings(toml);
        let inventory = crate::gpu::Inventory::open(&s.gpu);
        Self::with_inventory(&s, adopts, clock, inventory)
    }

    fn with_inventory(
        s: &crate::config::Settings,
        adopts: bool,
        clock: Clock,
        inventory: crate::gpu::Inventory,
    ) -> Self {
        let units = Arc::new(FakeUnits::new(adopts));
        let fleet = Fleet::with_parts(
            s,
            units.clone(),
            Arc::new(Metrics::new()),
            Arc::new(FakeProbe(units.clone())),
            clock,
            inventory,
        );
        Self { fleet, units }
    }

    fn get(&self, name: &str) -> Arc<Instance> {
        self.fleet.get(name).unwrap()
    }
}

/// Wait (in virtual time) until `inst` is in `state`.
async fn reach(inst: &Instance, state: State, within: Duration) {
    let mut rx = inst.subscribe_status();
    if timeout(within, rx.wait_for(|s| s.state == state))
        .await
        .is_err()
    {
        panic!(
            "{} not {} within {within:?}: {:?}",
            inst.name(),
            state.as_str(),
            inst.trail()
        );
    }
}

use State::*;

const SEC: Duration = Duration::from_secs(1);

async fn start_is_shared_by_concurrent_requests() {
    let t = Setup::new(&model("a", 20001, ""));
    let a = t.get("a");
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.acquire().await.map(|l| l.cold_start) })
        })
        .collect();
    for task in tasks {
        let cold = task.await.unwrap().unwrap();
        assert!(cold.is_some());
    }
    // One start for twenty requests; ready once the fake's 100 ms load is over.
    assert_eq!(t.units.starts("a"), 1);
    assert_eq!(t0.elapsed(), Duration::from_millis(100));
    assert_eq!(a.trail(), [Stopped, Starting, Loading, Ready]);
    // A warm request does not start anything.
    let l = a.acquire().await.unwrap();
    assert!(l.cold_start.is_none());
    assert_eq!(t.units.starts("a"), 1);
}

async fn idle_ttl_stops_an_unused_model() {
    let t = Setup::new(&model("a", 20001, "idle_ttl = \"5m\""));
    let a = t.get("a");
    drop(a.acquire().await.unwrap());
    sleep(Duration::from_secs(299)).await;
    assert_eq!(a.state(), Ready);
    // A request resets the timer.
    drop(a.acquire().await.unwrap());
    sleep(Duration::from_secs(299)).await;
    assert_eq!(a.state(), Ready);
    // A request in flight keeps it however long it takes.
    let l = a.acquire().await.unwrap();
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(a.state(), Ready);
    drop(l);
    sleep(Duration::from_secs(301)).await;
    assert_eq!(a.state(), Stopped);
    assert_eq!(a.status().stop_reason, Some(StopReason::Idle));
    assert!(!t.units.running("a"));
    assert_eq!(
        a.trail(),
        [
            Stopped, Starting, Loading, Ready, Draining, Stopping, Stopped
        ]
    );
}

/// Ollama's `keep_alive` as an override of the idle TTL, read by the idle loop at
/// every wake: a shorter one while the model idles on the longer one takes effect
/// at once; negative (forever) keeps it; cleared, the configured TTL is back; a
/// model without an `idle_ttl` gets one.
async fn an_idle_ttl_override_replaces_the_configured_one() {
    let t = Setup::new(&format!(
        "{}{}",
        model("a", 20001, "idle_ttl = \"5m\""),
        model("b", 20002, "idle_ttl = \"0s\"")
    ));
    let a = t.get("a");
    drop(a.acquire().await.unwrap());
    assert_eq!(a.idle_ttl(), Some(Duration::from_secs(300)));
    sleep(Duration::from_secs(60)).await;
    // 30 s after the last request: already past, the model stops now.
    a.set_idle_ttl(Some(Some(Duration::from_secs(30))));
    sleep(Duration::from_millis(1)).await;
    assert_eq!(a.state(), Stopped);
    assert_eq!(a.status().stop_reason, Some(StopReason::Idle));

    // Forever: an hour idle (12 times the configured TTL) and still ready. (Not
    // a day: the health poll's ticks would make the virtual day cost seconds.)
    a.set_idle_ttl(Some(None));
    drop(a.acquire().await.unwrap());
    assert_eq!(a.idle_ttl(), None);
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(a.state(), Ready);
    // Back to the configured 5 minutes, counted from the last request (long past).
    a.set_idle_ttl(None);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(a.state(), Stopped);

    // A longer one: 10 minutes instead of 5.
    a.set_idle_ttl(Some(Some(Duration::from_secs(600))));
    drop(a.acquire().await.unwrap());
    sleep(Duration::from_secs(599)).await;
    assert_eq!(a.state(), Ready);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(a.state(), Stopped);

    // `idle_ttl = "0s"`: never idles out, unless a client says so.
    let b = t.get("b");
    drop(b.acquire().await.unwrap());
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(b.state(), Ready);
    b.set_idle_ttl(Some(Some(Duration::from_secs(120))));
    drop(b.acquire().await.unwrap());
    sleep(Duration::from_secs(119)).await;
    assert_eq!(b.state(), Ready);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(b.state(), Stopped);
}

async fn an_idle_step_rolls_back_for_a_request_admitted_in_the_same_instant() {
    let t = Setup::new(&model("a", 20001, ""));
    let a = t.get("a");
    let l = a.acquire().await.unwrap();
    // The request is admitted: idle stop, sleep and eviction all back off.
    for step in [Transition::IdleStop, Transition::Sleep, Transition::Evict] {
        assert_eq!(a.leave_idle(step, Some(StopReason::Idle)), None);
        assert_eq!(a.state(), Ready);
    }
    drop(l);
    assert_eq!(
        a.trail(),
        [
            Stopped, Starting, Loading, Ready, Draining, Ready, Sleeping, Ready, Draining, Ready
        ]
    );
    // Nothing admitted: the step stands.
    assert_eq!(a.leave_idle(Transition::IdleStop, None), Some(Ready));
    assert_eq!(a.state(), Draining);
}

async fn a_crash_fails_the_model_and_the_next_request_restarts_it_after_a_backoff() {
    let t = Setup::new(&model(
        "a",
        20001,
        "max_restarts = 3\nrestart_window = \"10m\"",
    ));
    let a = t.get("a");
    drop(a.acquire().await.unwrap());
    t.units.crash("a", 1, &["loading", "error: boom", "bye"]);
    reach(&a, Failed, SEC).await;
    let s = a.status();
    assert_eq!(s.exit.as_ref().unwrap().code, Some(1));
    assert_eq!(
        s.last_error.as_deref(),
        Some("backend exited with status 1: error: boom … bye")
    );
    assert!(!s.locked_out);
    // Restart after restart_backoff (1 s), then the 100 ms load.
    let t0 = Instant::now();
    drop(a.acquire().await.unwrap());
    assert_eq!(t0.elapsed(), Duration::from_millis(1100));
    // The second failure doubles the backoff.
    t.units.crash("a", 1, &[]);
    reach(&a, Failed, SEC).await;
    let t0 = Instant::now();
    drop(a.acquire().await.unwrap());
    assert_eq!(t0.elapsed(), Duration::from_millis(2100));
    // The third within the window locks it out: requests are refused at once.
    t.units.crash("a", 1, &[]);
    reach(&a, Failed, SEC).await;
    assert!(a.status().locked_out);
    match a.acquire().await {
        Err(FleetError::CrashLoop { failures: 3, .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(t.units.starts("a"), 3);
    // An operator's start clears the history: no backoff.
    assert!(a.begin_start(true));
    reach(&a, Ready, Duration::from_millis(101)).await;
    assert!(!a.status().locked_out);
    // An exit of an earlier run changes nothing (a crash reported late).
    assert_eq!(t.units.starts("a"), 4);
}

async fn a_start_that_fails_or_never_gets_healthy_fails_the_waiting_requests() {
    let t = Setup::new(&format!(
        "{}{}",
        model("bad", 20001, ""),
        model("hung", 20002, "")
    ));
    t.units.script(
        "bad",
        Script {
            start_error: Some("no such file".into()),
            ..Script::default()
        },
    );
    t.units.script(
        "hung",
        Script {
            load: None,
            ..Script::default()
        },
    );
    let bad = t.get("bad");
    match bad.acquire().await {
        Err(FleetError::StartFailed { reason, .. }) => {
            assert!(reason.contains("no such file"), "{reason}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(bad.trail(), [Stopped, Starting, Failed]);
    let hung = t.get("hung");
    let t0 = Instant::now();
    let r = hung.acquire().await;
    assert!(
        matches!(
            r,
            Err(FleetError::StartTimeout { .. } | FleetError::StartFailed { .. })
        ),
        "{:?}",
        r.map(|_| ())
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    reach(&hung, Failed, SEC).await;
    assert!(
        hung.status()
            .last_error
            .unwrap()
            .contains("not healthy within start_timeout")
    );
    // It was stopped before being marked failed.
    assert!(!t.units.running("hung"));
    assert_eq!(hung.trail(), [Stopped, Starting, Loading, Failed]);
}

async fn a_crash_while_starting_is_kept_for_the_start_that_caused_it() {
    let t = Setup::new(&model("a", 20001, ""));
    t.units.script(
        "a",
        Script {
            load: None,
            ..Script::default()
        },
    );
    let a = t.get("a");
    assert!(a.begin_start(false));
    reach(&a, Loading, SEC).await;
    t.units.crash("a", 3, &["CUDA out of memory"]);
    reach(&a, Failed, SEC).await;
    assert_eq!(a.status().exit.unwrap().code, Some(3));
}

async fn a_stop_drains_in_flight_requests_then_stops_the_unit() {
    let t = Setup::new(&model("a", 20001, "idle_ttl = \"0s\""));
    let a = t.get("a");
    let l = a.acquire().await.unwrap();
    let stop = tokio::spawn({
        let a = a.clone();
        async move { a.stop(StopReason::Admin, Duration::from_secs(300)).await }
    });
    sleep(SEC).await;
    assert_eq!(a.state(), Draining);
    // A new request waits for the next start instead of reaching the draining
    // backend.
    let waiter = tokio::spawn({
        let a = a.clone();
        async move { a.acquire().await.map(|l| l.cold_start.is_some()) }
    });
    sleep(SEC).await;
    assert!(t.units.running("a"));
    // The stop ends as soon as the last request finishes: 5 s, not the 300 s drain.
    let t0 = Instant::now();
    sleep(Duration::from_secs(3)).await;
    drop(l);
    stop.await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(a.status().stop_reason, Some(StopReason::Admin));
    // The waiting request started it again.
    assert!(waiter.await.unwrap().unwrap());
    assert_eq!(t.units.starts("a"), 2);
    assert_eq!(
        a.trail()[..8],
        [
            Stopped, Starting, Loading, Ready, Draining, Stopping, Stopped, Starting
        ]
    );
    // A drain has a limit.
    let _stuck = a.acquire().await.unwrap();
    let t0 = Instant::now();
    a.stop(StopReason::Admin, Duration::from_secs(30)).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(30));
    assert_eq!(a.state(), Stopped);
    // Stopping a stopped model does nothing.
    a.stop(StopReason::Admin, SEC).await;
    assert_eq!(t.units.log().iter().filter(|l| *l == "stop a").count(), 2);
}

async fn a_stop_during_a_start_ends_it_and_a_second_stop_waits_for_the_first() {
    let t = Setup::new(&model("a", 20001, ""));
    t.units.script(
        "a",
        Script {
            launch: SEC,
            ..Script::default()
        },
    );
    let a = t.get("a");
    let req = tokio::spawn({
        let a = a.clone();
        async move { a.acquire().await.map(|_| ()) }
    });
    sleep(Duration::from_millis(500)).await;
    assert_eq!(a.state(), Starting);
    let (a1, a2) = (a.clone(), a.clone());
    let first = tokio::spawn(async move { a1.stop(StopReason::Admin, SEC).await });
    let second = tokio::spawn(async move { a2.stop(StopReason::Shutdown, SEC).await });
    first.await.unwrap();
    second.await.unwrap();
    assert!(matches!(
        req.await.unwrap(),
        Err(FleetError::StartFailed { .. })
    ));
    // The start that launched meanwhile stopped its own unit.
    sleep(SEC).await;
    assert!(!t.units.running("a"));
    assert_eq!(a.state(), Stopped);
    assert_eq!(a.trail(), [Stopped, Starting, Draining, Stopping, Stopped]);
    // Failed models stay failed under a stop.
}

async fn a_failed_model_stays_failed_under_a_stop() {
    let t = Setup::new(&model("a", 20001, ""));
    let a = t.get("a");
    drop(a.acquire().await.unwrap());
    t.units.crash("a", 9, &[]);
    reach(&a, Failed, SEC).await;
    a.stop(StopReason::Admin, SEC).await;
    assert_eq!(a.state(), Failed);
    // A crash during a drain leaves it failed.
    drop(a.acquire().await.unwrap());
    let l = a.acquire().await.unwrap();
    let stop = tokio::spawn({
        let a = a.clone();
        async move { a.stop(StopReason::Admin, Duration::from_secs(60)).await }
    });
    sleep(SEC).await;
    t.units.crash("a", 9, &[]);
    drop(l);
    stop.await.unwrap();
    assert_eq!(a.state(), Failed);
}

const ONE_GPU: &str = "[gpu]\nsimulate = [{ name = \"Sim\", memory = \"24GiB\" }]\n";

async fn an_idle_model_is_evicted_for_another_and_a_busy_one_refuses_it() {
    let t = Setup::new(&format!(
        "{ONE_GPU}{}{}",
        model("a", 20001, "gpus = [0]\nvram = \"16GiB\""),
        model("b", 20002, "gpus = [0]\nvram = \"16GiB\""),
    ));
    let (a, b) = (t.get("a"), t.get("b"));
    drop(a.acquire().await.unwrap());
    // a is idle: b's start evicts it.
    let lb = b.acquire().await.unwrap();
    assert_eq!(a.state(), Stopped);
    assert_eq!(a.status().stop_reason, Some(StopReason::Evicted));
    assert_eq!(
        a.trail(),
        [
            Stopped, Starting, Loading, Ready, Draining, Stopping, Stopped
        ]
    );
    // b is busy: a waits for room until its start gives up, then is refused.
    let t0 = Instant::now();
    match a.acquire().await {
        Err(FleetError::NoGpuRoom { message, .. }) => assert!(!message.is_empty()),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(a.state(), Stopped);
    assert_eq!(a.trail()[7..], [Starting, Stopped]);
    // Once b is done with it, a gets the GPU (evicting idle b).
    drop(lb);
    drop(a.acquire().await.unwrap());
    assert_eq!(b.state(), Stopped);
}

async fn an_idle_model_sleeps_and_wakes_and_one_that_cannot_is_stopped_or_restarted() {
    let t = Setup::new(&format!(
        "{ONE_GPU}{}{}{}",
        model(
            "s",
            20001,
            "gpus = [0]\nvram = \"8GiB\"\nidle_action = \"sleep\"\nidle_ttl = \"1m\""
        ),
        model(
            "insomniac",
            20002,
            "gpus = [0]\nvram = \"8GiB\"\nidle_action = \"sleep\"\nidle_ttl = \"1m\""
        ),
        model("big", 20003, "gpus = [0]\nvram = \"20GiB\""),
    ));
    let s = t.get("s");
    drop(s.acquire().await.unwrap());
    sleep(Duration::from_secs(61)).await;
    assert_eq!(s.state(), Sleeping);
    assert!(t.units.running("s"));
    // A request wakes it (no new start).
    let l = s.acquire().await.unwrap();
    assert_eq!(t.units.starts("s"), 1);
    drop(l);
    assert_eq!(
        s.trail(),
        [Stopped, Starting, Loading, Ready, Sleeping, Waking, Ready]
    );
    // A failed wake restarts it cold.
    sleep(Duration::from_secs(61)).await;
    assert_eq!(s.state(), Sleeping);
    t.units.script(
        "s",
        Script {
            wake: 500,
            ..Script::default()
        },
    );
    drop(s.acquire().await.unwrap());
    assert_eq!(t.units.starts("s"), 2);
    assert_eq!(s.trail()[7..], [Sleeping, Waking, Starting, Loading, Ready]);
    // A sleeping model is evicted for a start that needs its GPU.
    sleep(Duration::from_secs(61)).await;
    assert_eq!(s.state(), Sleeping);
    let big = t.get("big");
    let lbig = big.acquire().await.unwrap();
    assert_eq!(s.state(), Stopped);
    assert_eq!(s.status().stop_reason, Some(StopReason::Evicted));
    drop(lbig);
    // A backend that cannot sleep is stopped instead.
    t.units.script(
        "insomniac",
        Script {
            sleep: 501,
            ..Script::default()
        },
    );
    let i = t.get("insomniac");
    drop(i.acquire().await.unwrap());
    assert_eq!(big.state(), Stopped);
    sleep(Duration::from_secs(61)).await;
    assert_eq!(i.state(), Stopped);
    assert_eq!(
        i.trail()[3..],
        [Ready, Sleeping, Draining, Stopping, Stopped]
    );
}

async fn adoption_keeps_a_matching_unit_and_restarts_a_changed_one() {
    let toml = format!("{}{}", model("a", 20001, ""), model("b", 20002, ""));
    let t = Setup::new(&toml);
    let (a, b) = (t.get("a"), t.get("b"));
    t.units.leave_running("a", &a.unit.spec_hash, 20001);
    t.units.leave_running("b", "an-older-spec", 20002);
    t.units.leave_running("gone", "x", 20003);
    t.fleet.adopt_running().await.unwrap();
    reach(&a, Ready, SEC).await;
    reach(&b, Ready, SEC).await;
    assert_eq!(a.trail(), [Stopped, Loading, Ready]);
    assert_eq!(t.units.starts("a"), 0);
    assert_eq!(b.trail(), [Stopped, Starting, Loading, Ready]);
    assert_eq!(t.units.starts("b"), 1);
    assert!(!t.units.running("gone"));
}

async fn reload_applies_only_the_difference() {
    let before = format!(
        "{}{}{}{}",
        model("same", 20001, ""),
        model("settings", 20002, "max_queue = 5"),
        model("process", 20003, ""),
        model("removed", 20004, ""),
    );
    let after = format!(
        "{}{}{}{}",
        model("same", 20001, ""),
        model("settings", 20002, "max_queue = 9"),
        model("process", 20003, "")
            .replace("\"fake\", \"{port}\"", "\"fake\", \"--new\", \"{port}\""),
        model("added", 20005, ""),
    );
    let t = Setup::new(&before);
    for m in ["same", "settings", "process", "removed"] {
        drop(t.get(m).acquire().await.unwrap());
    }
    let in_flight = t.get("process").acquire().await.unwrap();
    let old_process = t.get("process");
    let summary = t
        .fleet
        .reload(&settings(&after), Duration::from_secs(60))
        .await;
    assert_eq!(summary.unchanged, ["same"]);
    assert_eq!(summary.updated, ["settings"]);
    assert_eq!(summary.restarted, ["process"]);
    assert_eq!(summary.added, ["added"]);
    assert_eq!(summary.removed, ["removed"]);
    // The changed process drains its request first; its successor waits.
    sleep(SEC).await;
    let next = t.get("process");
    assert_eq!(old_process.state(), Draining);
    assert_eq!(next.state(), Stopping);
    drop(in_flight);
    reach(&next, Ready, SEC).await;
    assert_eq!(t.units.starts("process"), 2);
    assert_eq!(next.trail(), [Stopping, Stopped, Starting, Loading, Ready]);
    // The settings-only change kept its unit (adopted, not started).
    let settings_now = t.get("settings");
    reach(&settings_now, Ready, SEC).await;
    assert_eq!(t.units.starts("settings"), 1);
    assert_eq!(settings_now.spec.max_queue, 9);
    // Unchanged: the same object, untouched; removed: stopped.
    assert_eq!(t.units.starts("same"), 1);
    assert!(!t.units.running("removed"));
    assert_eq!(t.get("added").state(), Stopped);
    // A replaced object takes no new starts.
    assert!(old_process.is_retired());
    assert!(!old_process.begin_start(true));
}

/// A client's `keep_alive` outlives a reload: on the unchanged model (the same
/// object), on one whose settings changed (adopted) and on one whose process
/// changed (restarted); a model whose `idle_ttl` the file changed gets the file's.
async fn a_keep_alive_override_survives_a_reload_that_keeps_the_idle_ttl() {
    let ttl = "idle_ttl = \"5m\"";
    let before = format!(
        "{}{}{}{}",
        model("same", 20001, ttl),
        model("settings", 20002, &format!("{ttl}\nmax_queue = 5")),
        model("process", 20003, ttl),
        model("ttl", 20004, ttl),
    );
    let after = format!(
        "{}{}{}{}",
        model("same", 20001, ttl),
        model("settings", 20002, &format!("{ttl}\nmax_queue = 9")),
        model("process", 20003, ttl)
            .replace("\"fake\", \"{port}\"", "\"fake\", \"--new\", \"{port}\""),
        model("ttl", 20004, "idle_ttl = \"10m\""),
    );
    let t = Setup::new(&before);
    let keep = Some(Duration::from_secs(30));
    for m in ["same", "settings", "process", "ttl"] {
        let i = t.get(m);
        drop(i.acquire().await.unwrap());
        i.set_idle_ttl(Some(keep));
    }
    t.get("process").set_idle_ttl(Some(None));
    let summary = t
        .fleet
        .reload(&settings(&after), Duration::from_secs(60))
        .await;
    assert_eq!(summary.unchanged, ["same"]);
    assert_eq!(summary.updated, ["settings", "ttl"]);
    assert_eq!(summary.restarted, ["process"]);
    assert_eq!(t.get("same").idle_ttl(), keep);
    assert_eq!(t.get("settings").idle_ttl(), keep);
    assert_eq!(t.get("process").idle_ttl(), None, "forever, carried over");
    assert_eq!(t.get("ttl").idle_ttl(), Some(Duration::from_secs(600)));
    // The carried override is in force: 30 s after its last request the adopted
    // model stops, the one with the file's 10 minutes does not.
    let settings_now = t.get("settings");
    reach(&settings_now, Ready, SEC).await;
    drop(settings_now.acquire().await.unwrap());
    let ttl_now = t.get("ttl");
    reach(&ttl_now, Ready, SEC).await;
    drop(ttl_now.acquire().await.unwrap());
    sleep(Duration::from_secs(31)).await;
    assert_eq!(settings_now.state(), Stopped);
    assert_eq!(settings_now.status().stop_reason, Some(StopReason::Idle));
    assert_eq!(ttl_now.state(), Ready);
}

async fn reload_under_a_manager_that_cannot_adopt_restarts_a_settings_change() {
    let t = Setup::with(&model("m", 20001, "max_queue = 5"), false, Clock::real());
    drop(t.get("m").acquire().await.unwrap());
    let summary = t
        .fleet
        .reload(
            &settings(&model("m", 20001, "max_queue = 6")),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(summary.restarted, ["m"]);
    reach(&t.get("m"), Ready, SEC).await;
    assert_eq!(t.units.starts("m"), 2);
}

async fn a_profile_switch_drains_and_stops_then_preloads() {
    let toml = format!(
        "[profiles.day]\nwindows = [\"06:00-02:00\"]\nmodels = [\"day\"]\n\
         [profiles.night]\nwindows = [\"02:00-06:00\"]\nmodels = [\"night\"]\npreload = true\n\
         drain_timeout = \"5m\"\n{}{}",
        model("day", 20001, ""),
        model("night", 20002, ""),
    );
    let clock = Clock::test_at(schedule::parse_local("2025-06-01T01:00:00").unwrap());
    let t = Setup::with(&toml, true, clock);
    let (day, night) = (t.get("day"), t.get("night"));
    let l = day.acquire().await.unwrap();
    match night.acquire().await {
        Err(FleetError::NotScheduled { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    t.fleet.set_test_clock("2025-06-01T02:00:01").unwrap();
    sleep(SEC).await;
    // The day model drains its request; the night one waits for it.
    assert_eq!(day.state(), Draining);
    assert_eq!(night.state(), Stopped);
    assert!(matches!(
        day.acquire().await,
        Err(FleetError::NotScheduled { .. })
    ));
    sleep(Duration::from_secs(20)).await;
    drop(l);
    reach(&night, Ready, SEC).await;
    assert_eq!(day.state(), Stopped);
    assert_eq!(day.status().stop_reason, Some(StopReason::Profile));
}

async fn shutdown_stops_everything_and_refuses_new_requests() {
    let t = Setup::new(&format!(
        "{}{}",
        model("a", 20001, ""),
        model("b", 20002, "idle_ttl = \"0s\"")
    ));
    // The usage store's event log, as `store::events::record` makes it.
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let started = Mutex::new(std::collections::HashMap::new());
    t.fleet.observe(Box::new(move |c: &Change| {
        let mut started = started.lock().unwrap();
        for e in crate::store::events::event(c, &mut started) {
            log.lock().unwrap().push(format!(
                "{} {} {}",
                e.model,
                e.event,
                e.reason.unwrap_or_default()
            ));
        }
    }));
    drop(t.get("a").acquire().await.unwrap());
    t.fleet.shutdown(SEC).await;
    // Every change is told as it is made: by the time shutdown returns, the
    // `stopped` event is there (a `watch` follower could see Ready then Stopped,
    // miss the Stopping between, and so miss the event).
    assert_eq!(
        *events.lock().unwrap(),
        ["a start_requested ", "a ready ", "a stopped shutdown"]
    );
    assert!(!t.units.running("a"));
    assert_eq!(t.get("a").status().stop_reason, Some(StopReason::Shutdown));
    assert!(matches!(
        t.get("b").acquire().await,
        Err(FleetError::ShuttingDown)
    ));
    assert_eq!(
        t.fleet.status_line(),
        "0 ready, 0 loading, 0 failed, 2 stopped"
    );
}

async fn a_full_queue_refuses_at_once_and_a_slot_wait_has_a_limit() {
    let t = Setup::new(&model(
        "a",
        20001,
        "max_concurrent = 1\nmax_queue = 1\nqueue_timeout = \"3s\"",
    ));
    let a = t.get("a");
    let l = a.acquire().await.unwrap();
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.acquire().await.map(|_| ()) }
    });
    sleep(Duration::from_millis(1)).await;
    assert_eq!(a.queued(), 1);
    assert!(matches!(
        a.acquire().await,
        Err(FleetError::QueueFull { limit: 2, .. })
    ));
    let t0 = Instant::now();
    assert!(matches!(
        waiting.await.unwrap(),
        Err(FleetError::QueueTimeout { .. })
    ));
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(3) - Duration::from_millis(1)
    );
    drop(l);
}

/// A wake that finds no room: a sleeping model's memory is reserved for its wake
/// among llmvisor's own models (a start that needs it stops the sleeper), so only
/// memory taken by a process outside llmvisor can refuse it, which only NVML sees.
/// Here the inventory reads as NVML would (24 GiB, then 20 GiB taken by someone
/// else while the model sleeps): the wake waits for room until its deadline, the
/// model stays asleep with the reason, and wakes once the memory is back.
async fn a_wake_without_room_leaves_the_model_asleep_with_the_reason() {
    let gib = 1u64 << 30;
    let gpu = |free: u64| crate::gpu::GpuInfo {
        index: 0,
        uuid: "GPU-fake-0".into(),
        name: "Fake".into(),
        minor: Some(0),
        memory_total: 24 * gib,
        memory_used: 24 * gib - free,
        memory_free: free,
        utilization_percent: None,
        temperature_celsius: None,
        power_watts: None,
        processes: Vec::new(),
        simulated: false,
    };
    let (inventory, readings) = crate::gpu::Inventory::fake_nvml(vec![gpu(24 * gib)]);
    let s = settings(&model(
        "s",
        20001,
        "gpus = [0]\nvram = \"8GiB\"\nidle_action = \"sleep\"\nidle_ttl = \"1m\"\nstart_timeout = \"10s\"",
    ));
    let t = Setup::with_inventory(&s, true, Clock::real(), inventory);
    let m = t.get("s");
    drop(m.acquire().await.unwrap());
    sleep(Duration::from_secs(61)).await;
    assert_eq!(m.state(), Sleeping);
    // Someone else takes 20 GiB of the 24 while it sleeps.
    *readings.lock().unwrap() = vec![gpu(4 * gib)];
    let t0 = Instant::now();
    let err = m.acquire().await.err().expect("no room to wake into");
    assert!(
        t0.elapsed() <= Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(m.state(), Sleeping);
    assert!(format!("{err}").contains("GiB"), "{err}");
    assert_eq!(m.trail()[4..], [Sleeping, Waking, Sleeping]);
    assert_eq!(t.units.starts("s"), 1);
    // The memory is back: the next request wakes it.
    *readings.lock().unwrap() = vec![gpu(24 * gib)];
    drop(m.acquire().await.unwrap());
    assert_eq!(m.trail()[6..], [Sleeping, Waking, Ready]);
    assert_eq!(t.units.starts("s"), 1);
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                super::tests::$name().await
            }
        )*

        /// Runs every scenario and checks that together they make every transition
        /// of the table.
        #[tokio::test(start_paused = true)]
        async fn every_transition_is_exercised() {
            $( super::tests::$name().await; )*
            let seen = SEEN.lock().unwrap().clone().unwrap_or_default();
            let missing: Vec<_> = Transition::ALL
                .iter()
                .filter(|t| !seen.contains(t))
                .collect();
            assert!(missing.is_empty(), "never exercised: {missing:?}");
        }
    };
}

mod run {
    use super::*;
    scenarios!(
        start_is_shared_by_concurrent_requests,
        idle_ttl_stops_an_unused_model,
        an_idle_ttl_override_replaces_the_configured_one,
        an_idle_step_rolls_back_for_a_request_admitted_in_the_same_instant,
        a_crash_fails_the_model_and_the_next_request_restarts_it_after_a_backoff,
        a_start_that_fails_or_never_gets_healthy_fails_the_waiting_requests,
        a_crash_while_starting_is_kept_for_the_start_that_caused_it,
        a_stop_drains_in_flight_requests_then_stops_the_unit,
        a_stop_during_a_start_ends_it_and_a_second_stop_waits_for_the_first,
        a_failed_model_stays_failed_under_a_stop,
        an_idle_model_is_evicted_for_another_and_a_busy_one_refuses_it,
        an_idle_model_sleeps_and_wakes_and_one_that_cannot_is_stopped_or_restarted,
        a_wake_without_room_leaves_the_model_asleep_with_the_reason,
        adoption_keeps_a_matching_unit_and_restarts_a_changed_one,
        reload_applies_only_the_difference,
        a_keep_alive_override_survives_a_reload_that_keeps_the_idle_ttl,
        reload_under_a_manager_that_cannot_adopt_restarts_a_settings_change,
        a_profile_switch_drains_and_stops_then_preloads,
        shutdown_stops_everything_and_refuses_new_requests,
        a_full_queue_refuses_at_once_and_a_slot_wait_has_a_limit,
    );
}
