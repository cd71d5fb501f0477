//! The command line: `serve`, `check-config`, `render-unit`, `status`, `logs`,
//! `usage`, `events`, `store-backup`, `gpus`, `profile`.

mod gpus;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::{self, App};
use crate::config::{Config, ConfigError, ManagerChoice, SecretsMode, Settings};
use crate::fleet::Fleet;
use crate::router::Tokenizers;
use crate::store::query::By;
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
    /// Who used what: requests, tokens, errors, latency and time to first token
    /// (p50/p95), cost — from the usage store, read-only (works while serving).
    Usage {
        /// Configuration file, to find the database (`[store] path`).
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The database itself (instead of --config).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// How far back, e.g. 1h, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Group by client, route, target or day (UTC); default: one total.
        #[arg(long, value_parser = ["client", "route", "target", "day"])]
        by: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Model events (start requested, ready with load time, stopped with reason,
    /// failed, OOM) from the usage store, oldest first.
    Events {
        /// Configuration file, to find the database.
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The database itself (instead of --config).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// Only this model instance.
        #[arg(long)]
        model: Option<String>,
        /// How far back.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy the usage store (or another SQLite database) to DEST with SQLite's
    /// online backup, while llmvisor keeps writing to it: one consistent,
    /// integrity-checked, self-contained file (never the live file and its -wal).
    StoreBackup {
        /// Configuration file, to find the database (`[store] path`).
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The database itself (instead of --config): the usage store, or any
        /// SQLite database, such as Open WebUI's webui.db.
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// The file to write (replaced once the new copy is complete).
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
    /// A table of the GPUs: memory, utilisation, temperature, power, processes and
    /// the models placed on each (from the running llmvisor; without one, from NVML
    /// or the configuration's simulated GPUs).
    Gpus {
        /// Configuration file (TOML), for the API address and `[gpu]`.
        #[arg(long, short, env = "LLMVISOR_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Profiles: which are active, activate one by hand, resume the schedule.
    Profile {
        /// Configuration file (TOML), for the API address.
        #[arg(
            long,
            short,
            global = true,
            env = "LLMVISOR_CONFIG",
            value_name = "FILE"
        )]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: ProfileAction,
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
    /// Run by a model unit's `ExecStopPost=`: print the kernel's OOM-kill count of
    /// the unit's memory cgroup for llmvisor's exit report.
    #[command(name = "exit-report", hide = true)]
    ExitReport,
}

/// `llmvisor profile …`.
#[derive(Subcommand, Debug)]
enum ProfileAction {
    /// Profiles, windows, which are active, the next switch.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make only this profile active (the others' models drain and stop).
    Activate {
        /// The profile.
        name: String,
        /// How long, e.g. 2h; without it, until `llmvisor profile resume`.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// End a manual activation: the windows decide again.
    Resume,
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
        Command::ExitReport => crate::units::oom_report::run(),
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
        Command::Usage {
            config,
            db,
            since,
            by,
            json,
        } => {
            let conn = open_store(config.as_deref(), db.as_deref())?;
            let by = match by.as_deref() {
                Some("client") => By::Client,
                Some("route") => By::Route,
                Some("target") => By::Target,
                Some("day") => By::Day,
                _ => By::Total,
            };
            let since_ms = crate::store::now_ms() - since.as_millis() as i64;
            let rows = crate::store::query::usage(&conn, since_ms, by)
                .map_err(|e| format!("cannot read the usage store: {e}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            } else {
                print!("{}", usage_table(&rows, since));
            }
        }
        Command::Events {
            config,
            db,
            model,
            since,
            json,
        } => {
            let conn = open_store(config.as_deref(), db.as_deref())?;
            let since_ms = crate::store::now_ms() - since.as_millis() as i64;
            let rows = crate::store::query::events(&conn, since_ms, model.as_deref())
                .map_err(|e| format!("cannot read the usage store: {e}"))?;
            for e in rows {
                let when = humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(e.ts_ms.max(0) as u64),
                );
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"time": when.to_string(), "model": e.model, "event": e.event,
                            "reason": e.reason, "detail": e.detail, "load_ms": e.load_ms})
                    );
                } else {
                    let mut line = format!("{when}  {:<24} {:<16}", e.model, e.event);
                    if let Some(r) = &e.reason {
                        line.push_str(&format!(" reason={r}"));
                    }
                    if let Some(l) = e.load_ms {
                        line.push_str(&format!(" load={:.1}s", l as f64 / 1000.0));
                    }
                    if let Some(d) = &e.detail {
                        line.push_str(&format!(" {d}"));
                    }
                    println!("{}", line.trim_end());
                }
            }
        }
        Command::StoreBackup { config, db, dest } => {
            let src = store_file(config.as_deref(), db.as_deref())?;
            let r = crate::store::backup::backup(&src, &dest)
                .map_err(|e| format!("backup of {} failed: {e}", src.display()))?;
            println!(
                "{} -> {}: {} pages, {} bytes, schema version {}, integrity ok",
                src.display(),
                dest.display(),
                r.pages,
                r.bytes,
                r.user_version
            );
        }
        Command::Gpus { config, json } => {
            let report = match &config {
                Some(c) => {
                    let s = load(c)?;
                    let rt = runtime(false)?;
                    match rt.block_on(gpus::admin(&s, http::Method::GET, "/admin/gpus", None)) {
                        Ok((_, v)) => v,
                        Err(e) if e.starts_with("cannot reach") => {
                            eprintln!("llmvisor: {e}; reading the GPUs directly");
                            gpus::local_report(&s.gpu)
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => gpus::local_report(&Default::default()),
            };
            if json {
                println!("{report:#}");
            } else {
                print!("{}", gpus::gpu_table(&report));
            }
        }
        Command::Profile { config, action } => {
            let config = config.ok_or("--config FILE (or LLMVISOR_CONFIG) is needed")?;
            let s = load(&config)?;
            let rt = runtime(false)?;
            let (method, path, body) = match &action {
                ProfileAction::Status { .. } => {
                    (http::Method::GET, "/admin/profiles".to_string(), None)
                }
                ProfileAction::Activate { name, duration } => (
                    http::Method::POST,
                    format!("/admin/profiles/{name}/activate"),
                    Some(match duration {
                        Some(d) => {
                            serde_json::json!({"for": humantime::format_duration(*d).to_string()})
                        }
                        None => serde_json::json!({}),
                    }),
                ),
                ProfileAction::Resume => (
                    http::Method::POST,
                    "/admin/profiles/resume".to_string(),
                    None,
                ),
            };
            let (_, v) = rt.block_on(gpus::admin(&s, method, &path, body))?;
            if matches!(action, ProfileAction::Status { json: true }) {
                println!("{v:#}");
            } else {
                print!("{}", gpus::profile_text(&v));
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
            let (settings, tokenizers, notes) = load_full(&config, SecretsMode::Serve)
                .map_err(|e| format!("{e}\nnothing was started."))?;
            for n in notes {
                tracing::warn!("{n}");
            }
            // Bind first (a port in use fails before any model could start), then
            // drop every capability before the runtime starts its threads:
            // capabilities are per thread, and threads inherit the creator's.
            // No transparent huge pages: a 2 MiB page for every few KiB touched in
            // the allocator's arenas tripled the resident memory at idle (also where
            // the system's THP mode is `always`, which the `no_thp` build of mimalloc
            // alone does not cover).
            #[cfg(target_os = "linux")]
            let _ = nix::sys::prctl::set_thp_disable(true);
            let threads = per_core_threads();
            let listeners = bind_listeners(&settings.listen, threads)?;
            telemetry::drop_capabilities();
            runtime(threads == 1)?
                .block_on(serve(settings, tokenizers, &config, listeners))
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
        Ok((new, tokenizers, notes)) => {
            for n in notes {
                tracing::warn!("{n}");
            }
            if new.telemetry != app.settings.telemetry
                || new.trace_export != app.settings.trace_export
            {
                tracing::warn!(
                    "[telemetry] changed (or its headers_file or ca_file): it takes effect at the next restart"
                );
            }
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

/// The usage database's file, from `--db` or the configuration; it must exist.
fn store_file(
    config: Option<&std::path::Path>,
    db: Option<&std::path::Path>,
) -> Result<PathBuf, String> {
    let path = match (db, config) {
        (Some(db), _) => db.to_path_buf(),
        (None, Some(c)) => {
            let (s, _, _) = load_full(c, SecretsMode::Skip)?;
            store_path(&s, c)
        }
        (None, None) => crate::store::default_path(),
    };
    if !path.exists() {
        return Err(format!(
            "no usage store at {} (llmvisor creates it when it serves with [store] enabled; give --config or --db)",
            path.display()
        ));
    }
    Ok(path)
}

/// Open the usage database read-only, from `--db` or the configuration.
fn open_store(
    config: Option<&std::path::Path>,
    db: Option<&std::path::Path>,
) -> Result<rusqlite::Connection, String> {
    let path = store_file(config, db)?;
    crate::store::open_ro(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))
}

fn usage_table(rows: &[crate::store::query::UsageRow], since: Duration) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let mut out = format!(
        "usage over the last {}\n{:<28} {:>8} {:>7} {:>9} {:>12} {:>12} {:>8} {:>8} {:>9} {:>9} {:>10}\n",
        humantime::format_duration(since),
        "",
        "requests",
        "errors",
        "cancelled",
        "prompt_tok",
        "complet_tok",
        "p50_ms",
        "p95_ms",
        "ttft_p50",
        "ttft_p95",
        "cost_usd"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<28} {:>8} {:>7} {:>9} {:>12} {:>12} {:>8} {:>8} {:>9} {:>9} {:>10.4}\n",
            r.key,
            r.requests,
            r.errors,
            r.cancelled,
            r.prompt_tokens,
            r.completion_tokens,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.ttft_p50_ms),
            ms(r.ttft_p95_ms),
            r.cost_usd
        ));
    }
    out
}

/// The usage database: `[store] path` (relative to the configuration file's
/// directory), else the state directory.
fn store_path(settings: &Settings, config: &std::path::Path) -> PathBuf {
    match &settings.store.path {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                config.parent().unwrap_or(std::path::Path::new(".")).join(p)
            }
        }
        None => crate::store::default_path(),
    }
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

/// Thread-per-core serving (`LLMVISOR_THREAD_PER_CORE=1`, an experiment measured
/// in docs/benchmarks.md): one current-thread runtime per core, each with its own
/// SO_REUSEPORT listeners and upstream pool. 1 (the default): one multi-thread
/// runtime.
fn per_core_threads() -> usize {
    if std::env::var("LLMVISOR_THREAD_PER_CORE").is_ok_and(|v| v == "1") {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
}

/// The API's listening sockets, bound before the runtime exists (see `Serve`):
/// SO_REUSEADDR, a backlog of 1024, non-blocking; `copies` sets of them with
/// SO_REUSEPORT when more than one (one per serving thread).
fn bind_listeners(
    addrs: &[SocketAddr],
    copies: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, String> {
    (0..copies).map(|_| bind_set(addrs, copies > 1)).collect()
}

fn bind_set(addrs: &[SocketAddr], reuse_port: bool) -> Result<Vec<std::net::TcpListener>, String> {
    use socket2::{Domain, Socket, Type};
    addrs
        .iter()
        .map(|addr| {
            let bind = || -> std::io::Result<std::net::TcpListener> {
                let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                if reuse_port {
                    s.set_reuse_port(true)?;
                }
                if addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.bind(&(*addr).into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                Ok(s.into())
            };
            bind().map_err(|e| format!("cannot listen on {addr}: {e}\nnothing was started."))
        })
        .collect()
}

/// Serve until SIGTERM or SIGINT on listeners bound by [`bind_listeners`], then
/// shut down gracefully: stop accepting, let in-flight requests finish (up to
/// `server.shutdown_grace`), stop every model.
pub async fn serve(
    settings: Settings,
    tokenizers: Tokenizers,
    config: &std::path::Path,
    mut listeners: Vec<Vec<std::net::TcpListener>>,
) -> anyhow::Result<()> {
    let others = listeners.split_off(1.min(listeners.len()));
    let listeners = listeners
        .into_iter()
        .flatten()
        .map(TcpListener::from_std)
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot use the listening sockets")?;
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
    let store = crate::store::Store::open(&settings.store, &store_path(&settings, config));
    crate::store::events::record(&fleet, &store);
    let app = App::new(settings, &tokenizers, fleet.clone(), metrics, store);
    let routes = api::routes(app.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = JoinSet::new();
    let mut bound = Vec::new();
    let edge = app.edge.clone();
    api::server::check_nofile(edge.limits());
    for listener in listeners {
        let local = listener.local_addr()?;
        bound.push(local.to_string());
        servers.spawn(api::server::serve(
            listener,
            routes.clone(),
            edge.clone(),
            stop_rx.clone(),
        ));
    }
    // Thread-per-core: the other sets of listeners, each on a thread of its own
    // with a current-thread runtime and an upstream pool of its own.
    for (i, set) in others.into_iter().enumerate() {
        let (routes, edge, stop) = (routes.clone(), edge.clone(), stop_rx.clone());
        let pool_idle = app.settings.server.upstream_pool_idle_timeout.0;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("llmvisor-serve-{}", i + 1))
            .spawn(move || {
                let r = runtime(false)
                    .map_err(std::io::Error::other)
                    .and_then(|rt| {
                        crate::proxy::Pool::install_local(pool_idle);
                        rt.block_on(async move {
                            let mut all = JoinSet::new();
                            for l in set {
                                let l = TcpListener::from_std(l)?;
                                all.spawn(api::server::serve(
                                    l,
                                    routes.clone(),
                                    edge.clone(),
                                    stop.clone(),
                                ));
                            }
                            while let Some(r) = all.join_next().await {
                                r.map_err(std::io::Error::other)??;
                            }
                            Ok(())
                        })
                    });
                let _ = done_tx.send(r);
            })
            .context("cannot start a serving thread")?;
        servers.spawn(async move { done_rx.await.unwrap_or(Ok(())) });
    }
    let status = format!(
        "listening on {}; {} model(s), {} unit manager",
        bound.join(", "),
        fleet.instances().len(),
        manager.name()
    );
    tracing::info!("{status}");
    telemetry::notify_ready(&status);
    let status = fleet.clone();
    tokio::spawn(telemetry::report_status(move || status.status_line()));

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
    // Every request row and the models' `stopped` events reach the database.
    app.store.close(grace.max(Duration::from_secs(2))).await;
    // And the last requests' spans reach the collector (if it answers).
    if let Some(t) = &app.tracing {
        t.flush(Duration::from_secs(2)).await;
    }
    tracing::info!("stopped");
    if listener_failed {
        anyhow::bail!("a listener failed; see the log above");
    }
    Ok(())
}
