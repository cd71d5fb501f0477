//! Logs, service-manager notifications and metrics.

pub mod metrics;
pub mod otlp;
pub mod trace;

use std::time::Duration;

use sd_notify::NotifyState;
use tracing_subscriber::EnvFilter;

/// Whether stderr is the journal: `JOURNAL_STREAM` names its device and inode.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

/// Log to the journal with structured fields (`MODEL=`, `UNIT=`, `STATUS=`,
/// `LATENCY_MS=`, …) when stderr is the journal, to stderr otherwise. `RUST_LOG`
/// overrides `level`; `RUST_LOG=llmvisor=debug` adds a line per request.
pub fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},hyper=warn,h2=warn,zbus=warn")));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        // Field names as they are, upper-cased by the layer: MODEL=, not F_MODEL=.
        let journald = journald
            .with_field_prefix(None)
            .with_syslog_identifier("llmvisor".into());
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Tell systemd we are ready (a no-op without systemd), and start watchdog pings at
/// half the interval systemd asked for.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
    start_watchdog();
}

/// READY=1 again after a reload.
pub fn notify_reloaded() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

fn start_watchdog() {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let every = Duration::from_micros(usec / 2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            }
        });
    }
}

/// Drop every Linux capability, including from the bounding set, so neither
/// llmvisor nor anything it starts can regain one. Called once the listeners are
/// bound (binding a port below 1024 is the only thing a capability is needed for);
/// systemd authorizes llmvisor's D-Bus calls by its user id, not by capabilities.
pub fn drop_capabilities() {
    use caps::CapSet;
    let held = caps::read(None, CapSet::Permitted).unwrap_or_default();
    for cap in caps::all() {
        let _ = caps::drop(None, CapSet::Bounding, cap);
    }
    let none_left = [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective]
        .into_iter()
        .all(|set| caps::read(None, set).is_ok_and(|c| c.is_empty()));
    if held.is_empty() && none_left {
        // Started without any (CapabilityBoundingSet= in llmvisor.service).
        tracing::info!("holds no capabilities");
        return;
    }
    let mut failed = Vec::new();
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        if let Err(e) = caps::clear(None, set) {
            failed.push(format!("{set:?}: {e}"));
        }
    }
    if failed.is_empty() {
        tracing::info!("dropped all {} capabilities", held.len());
    } else {
        tracing::warn!("could not drop every capability: {}", failed.join("; "));
    }
}

/// Tell systemd a reload is under way (READY=1 ends it).
pub fn notify_reloading() {
    // systemd 253 and newer fail a reload whose RELOADING=1 has no MONOTONIC_USEC.
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(false, &states);
}

/// Keep systemd's `STATUS=` line current ("2 ready, 1 loading, 0 failed"), for
/// `systemctl status llmvisor`. Only under systemd; a cheap refresh every 2 s.
/// `line` says what the fleet is doing (the fleet's `status_line`), so telemetry
/// does not depend on the fleet.
pub async fn report_status(line: impl Fn() -> String) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let line = line();
        if line != last {
            let _ = sd_notify::notify(false, &[NotifyState::Status(&line)]);
            last = line;
        }
    }
}

/// Tell systemd we are stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}
