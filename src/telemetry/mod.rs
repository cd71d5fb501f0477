//! Logs, service-manager notifications and metrics.

pub mod metrics;

use std::time::Duration;

use sd_notify::NotifyState;
use tracing_subscriber::EnvFilter;

/// Log to stderr (the journal captures it under systemd). `RUST_LOG` overrides
/// `level`; `RUST_LOG=llmvisor=debug` adds a line per request.
pub fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},hyper=warn,h2=warn")));
    // Under systemd the journal adds its own timestamps.
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if under_systemd {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// Tell systemd we are ready (a no-op without systemd), and start watchdog pings at
/// half the interval systemd asked for.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
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
pub async fn report_status(fleet: std::sync::Arc<crate::fleet::Fleet>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let line = fleet.status_line();
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
