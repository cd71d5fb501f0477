//! The command line: `serve`, `check-config`, `render-unit`, `status`, `logs`.

mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{self, App};
use crate::config::{Config, ConfigError, ManagerChoice, SecretsMode, Settings};
use crate::fleet::Fleet;
use crate::router::Tokenizers;
use crate::telemetry::{self, metrics::Metrics};
use crate::units::UnitManager;
use crate::units::process::ProcessManager;
use crate::units::properties;
use crate::units::systemd::{Bus, SystemdManager};

/// Supervisor and OpenAI-compatible router for self-hosted LLMs.
#[derive(Parser, Debug)]
#[command(name = "llmvisor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API and manage the configured models.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
        #[arg(long, default_value = "info", value_name = "LEVEL")]
        log_level: String,
    },
    /// Check a configuration file: print a summary and exit 0, or every problem
    /// with its key path and exit 1.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// A table of every model: state, unit, main PID, GPUs, memory, in flight,
    /// idle time (asks the running llmvisor and systemd).
    Status {
        /// Configuration file (TOML), for the API address.
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a model's log from the journal: its unit's output and what llmvisor
    /// logged about it.
    Logs {
        /// Configuration file, to resolve aliases (optional).
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The model (instance name, or an alias with --config).
        model: String,
        /// How many of the last lines to show.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines as they arrive.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the systemd unit a model runs as (its properties) and an equivalent
    /// `systemd-run` command line.
    RenderUnit {
        /// Configuration file (TOML).
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// The model (instance name or alias).
        model: String,
    },
}

/// Run the command line; the process exit code is returned.
pub fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("llmvisor: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A tokio runtime for a command.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, String> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Read a configuration with its key files and tokenizers; every problem of the
/// file, its keys and its tokenizers is listed in one error.
pub fn load_full(
    path: &std::path::Path,
    mode: SecretsMode,
) -> Result<(Settings, Tokenizers, Vec<String>), String> {
    let (settings, notes) = Config::load_with(path, mode).map_err(|e| e.to_string())?;
    if mode == SecretsMode::Skip {
        return Ok((settings, Tokenizers::default(), notes));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tokenizers = Tokenizers::load(&settings, dir).map_err(|problems| {
        ConfigError::Invalid {
            path: path.display().to_string(),
            problems,
        }
        .to_string()
    })?;
    Ok((settings, tokenizers, notes))
}

/// One command; an error is the message printed before exiting with status 1.
fn run(command: Command) -> Result<(), String> {
    let load = |path: &std::path::Path| load_full(path, SecretsMode::Skip).map(|(s, _, _)| s);
    match command {
        Command::CheckConfig { config } => {
            let (s, _, notes) = load_full(&config, SecretsMode::Check)?;
            for n in notes {
                println!("note: {n}");
            }
            println!("{}: ok — {}", config.display(), summary(&s));
        }
        Command::Status { config } => {
            let settings = load(&config)?;
            print!("{}", runtime(false)?.block_on(status::render(&settings))?);
        }
        Command::Logs {
            config,
            model,
            lines,
            follow,
        } => {
            let name = match config {
                Some(c) => load(&c)?
                    .models
                    .iter()
                    .find(|m| m.name == model || m.aliases.contains(&model))
                    .map_or(model.clone(), |m| m.name.clone()),
                None => model,
            };
            let unit = crate::units::unit_name(&name);
            let q = crate::units::journal::Query {
                unit: &unit,
                model: Some(&name),
                invocation: None,
            };
            if follow {
                crate::units::journal::follow(&q, lines, |l| {
                    use std::io::Write;
                    writeln!(std::io::stdout(), "{l}").is_ok()
                })?;
            } else {
                for l in crate::units::journal::tail(&q, lines)? {
                    println!("{l}");
                }
            }
        }
        Command::RenderUnit { config, model } => {
            let s = load(&config)?;
            let Some(text) = render_unit(&s, &model) else {
                let names: Vec<_> = s.models.iter().map(|m| m.name.as_str()).collect();
                return Err(format!(
                    "no model `{model}` in {}; models: {}",
                    config.display(),
                    names.join(", ")
                ));
            };
            print!("{text}");
        }
        Command::Serve { config, log_level } => {
            telemetry::init_logging(&log_level);
            let (settings, tokenizers, _) = load_full(&config, SecretsMode::Serve)
                .map_err(|e| format!("{e}\nnothing was started."))?;
            runtime(true)?
                .block_on(serve(settings, tokenizers, &config))
                .map_err(|e| {
                    tracing::error!("{e:#}");
                    format!("{e:#}")
                })?;
        }
    }
    Ok(())
}

/// SIGHUP (`systemctl reload llmvisor`): re-read the file and apply only what
/// changed. A file with problems is rejected, each problem logged, and the
/// configuration in force stays.
async fn reload(app: &App, config: &std::path::Path) {
    telemetry::notify_reloading();
    match load_full(config, SecretsMode::Serve) {
        Err(e) => tracing::error!("reload rejected, the running configuration stays: {e}"),
        Ok((new, tokenizers, _)) => {
            let s = app.reload(&new, &tokenizers).await;
            tracing::info!(
                "reloaded {}: added {:?}, restarted {:?}, updated in place {:?}, removed {:?}, unchanged {}",
                config.display(),
                s.added,
                s.restarted,
                s.updated,
                s.removed,
                s.unchanged.len()
            );
        }
    }
    telemetry::notify_reloaded();
}

/// The unit manager `[units] manager` asks for; `auto` logs what it picked and why.
async fn unit_manager(choice: ManagerChoice) -> anyhow::Result<Arc<dyn UnitManager>> {
    let m: Arc<dyn UnitManager> = match choice {
        ManagerChoice::Process => Arc::new(ProcessManager::new()),
        ManagerChoice::Systemd => Arc::new(
            SystemdManager::connect(Bus::System)
                .await
                .context("[units] manager = \"systemd\"")?,
        ),
        ManagerChoice::SystemdUser => Arc::new(
            SystemdManager::connect(Bus::User)
                .await
                .context("[units] manager = \"systemd-user\"")?,
        ),
        ManagerChoice::Auto => {
            // The system manager starts units for root only (without polkit rules).
            let system = if nix::unistd::geteuid().is_root() {
                SystemdManager::connect(Bus::System).await
            } else {
                Err(crate::units::UnitError::Manager(
                    "not running as root".into(),
                ))
            };
            match system {
                Ok(m) => Arc::new(m),
                Err(why_system) => match SystemdManager::connect(Bus::User).await {
                    Ok(m) => {
                        tracing::info!("unit manager: systemd-user (system manager: {why_system})");
                        Arc::new(m)
                    }
                    Err(why_user) => {
                        tracing::info!(
                            "unit manager: process (system manager: {why_system}; user manager: {why_user})"
                        );
                        Arc::new(ProcessManager::new())
                    }
                },
            }
        }
    };
    tracing::info!("models run under the {} unit manager", m.name());
    Ok(m)
}

/// The unit of `model` (a name or an alias) as `Name=value` lines and a
/// `systemd-run` line.
fn render_unit(s: &Settings, model: &str) -> Option<String> {
    let spec = s
        .models
        .iter()
        .find(|m| m.name == model || m.aliases.iter().any(|a| a == model))?;
    let unit = crate::units::render(spec);
    let mut out = format!("# {} (spec hash {})\n", unit.unit, unit.spec_hash);
    for p in &unit.properties {
        out.push_str(&format!("{}={}\n", p.name, p.value));
    }
    out.push_str("\n# The same unit started by hand:\n");
    out.push_str(&properties::systemd_run(&unit));
    out.push('\n');
    Some(out)
}

fn summary(s: &Settings) -> String {
    let names: Vec<_> = s
        .models
        .iter()
        .map(|m| format!("{} ({}, port {})", m.name, m.kind.as_str(), m.port))
        .collect();
    let listen: Vec<_> = s.listen.iter().map(ToString::to_string).collect();
    let mut out = format!(
        "{} model(s): {}; listening on {}",
        s.models.len(),
        names.join(", "),
        listen.join(", ")
    );
    if !s.routes.is_empty() {
        let routes: Vec<_> = s.routes.iter().map(|r| r.name.as_str()).collect();
        out.push_str(&format!(
            "; {} route(s): {}",
            routes.len(),
            routes.join(", ")
        ));
    }
    if !s.providers.is_empty() {
        let p: Vec<_> = s.providers.iter().map(|p| p.name.as_str()).collect();
        out.push_str(&format!("; {} provider(s): {}", p.len(), p.join(", ")));
    }
    if s.server.auth == crate::config::AuthMode::None {
        out.push_str("; no API keys (auth = \"none\")");
    } else {
        out.push_str(&format!("; {} client(s)", s.clients.len()));
    }
    out
}

/// Serve until SIGTERM or SIGINT, then shut down gracefully: stop accepting, let
/// in-flight requests finish (up to `server.shutdown_grace`), stop every model.
pub async fn serve(
    settings: Settings,
    tokenizers: Tokenizers,
    config: &std::path::Path,
) -> anyhow::Result<()> {
    // Bind first: a port in use fails before any model could start.
    let mut listeners = Vec::new();
    for addr in &settings.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(l);
    }
    telemetry::drop_capabilities();
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let manager = unit_manager(settings.units.manager).await?;
    let stop_on_shutdown = settings.units.stop_on_shutdown || manager.name() == "process";
    let metrics = Arc::new(Metrics::new());
    let fleet = Fleet::new(&settings, manager.clone(), metrics.clone());
    if let Err(e) = fleet.adopt_running().await {
        tracing::error!("cannot take over running units: {e}");
    }
    let grace = settings.server.shutdown_grace.0;
    let app = App::new(settings, &tokenizers, fleet.clone(), metrics);
    let routes = api::routes(app.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = JoinSet::new();
    let mut bound = Vec::new();
    for listener in listeners {
        let local = listener.local_addr()?;
        bound.push(local.to_string());
        let mut stop = stop_rx.clone();
        let svc = routes
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        servers.spawn(async move {
            axum::serve(listener, svc)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    let status = format!(
        "listening on {}; {} model(s), {} unit manager",
        bound.join(", "),
        fleet.instances().len(),
        manager.name()
    );
    tracing::info!("{status}");
    telemetry::notify_ready(&status);
    tokio::spawn(telemetry::report_status(fleet.clone()));

    let mut listener_failed = false;
    let which = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => reload(&app, config).await,
            Some(r) = servers.join_next() => {
                // A listener failed on its own; shut down rather than half-serve.
                tracing::error!("a listener stopped: {r:?}");
                listener_failed = true;
                break "listener failure";
            }
        }
    };
    tracing::info!("{which}: shutting down; in-flight requests get up to {grace:?}");
    telemetry::notify_stopping();
    fleet.begin_shutdown();
    let _ = stop_tx.send(true);
    // A second signal cuts the grace period short.
    tokio::select! {
        r = tokio::time::timeout(grace, async { while servers.join_next().await.is_some() {} }) => {
            if r.is_err() {
                tracing::warn!("requests still in flight after {grace:?}; stopping the models anyway");
            }
        }
        _ = sigterm.recv() => tracing::warn!("second SIGTERM: not waiting for in-flight requests"),
        _ = sigint.recv() => tracing::warn!("second SIGINT: not waiting for in-flight requests"),
    }
    if stop_on_shutdown {
        fleet.shutdown(Duration::ZERO).await;
    } else {
        tracing::info!("leaving the model units running (units.stop_on_shutdown = false)");
    }
    tracing::info!("stopped");
    if listener_failed {
        anyhow::bail!("a listener failed; see the log above");
    }
    Ok(())
}
