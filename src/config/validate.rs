//! Semantic checks of a parsed [`Config`]: every problem, each with its key path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::problems::{Ctx, Problem, Problems, valid_instance_name};
use super::{Backend, Config, Kind, ModelConfig, ModelSpec, Settings};

/// Placeholders a `command` argv may contain.
const PLACEHOLDERS: [&str; 3] = ["port", "served_name", "name"];

/// Upper bounds that keep the gate's arithmetic and memory sane.
const MAX_CONCURRENT: u32 = 65_536;
const MAX_QUEUE: u32 = 1_000_000;

/// The `{identifier}` placeholders of one argv element. Other braces (JSON values
/// such as vLLM's `--speculative-config '{"method": "ngram"}'`) are plain text.
fn placeholders(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if close > 0
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                out.push(&after[..close]);
                rest = &after[close + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

impl Config {
    /// Check everything and resolve defaults, or return every problem found. Each
    /// section has its own check; they share one [`Ctx`] (the configuration, the
    /// problems so far, and what earlier sections resolved), in this order:
    /// server, public names, ports, GPUs, profiles, models, store, resilience,
    /// auth, then routing (`routing.rs`: providers, routes, clients, admin).
    pub fn validate(&self) -> Result<Settings, Vec<Problem>> {
        let mut cx = Ctx::new(self);
        check_server(&mut cx);
        check_public_names(&mut cx);
        let taken = check_ports(&mut cx);
        let gpu = super::gpu::check_gpu(&self.gpu, &mut cx.problems);
        let profiles = super::gpu::check_profiles(&self.profiles, &self.models, &mut cx.problems);
        check_models(&mut cx, taken, gpu.simulate.len());
        let trace_headers = check_telemetry(&mut cx);
        check_store(&mut cx);
        check_resilience(&mut cx);
        check_auth(&mut cx);
        let resolved = super::routing::check(&mut cx);

        if cx.problems.0.is_empty() {
            Ok(Settings {
                server: self.server.clone(),
                units: self.units.clone(),
                listen: cx.listen,
                models: cx.models,
                routes: resolved.routes,
                clients: resolved.clients,
                providers: resolved.providers,
                admin: resolved.admin,
                gpu,
                profiles,
                store: self.store.clone(),
                telemetry: self.telemetry.clone(),
                trace_export: super::TraceExport {
                    headers: trace_headers,
                    roots: None,
                },
            })
        } else {
            Err(cx.problems.0)
        }
    }
}

/// `[server]`: listeners, timeouts, connection limits, CORS, body budgets, ports.
fn check_server(cx: &mut Ctx<'_>) {
    let s = &cx.config.server;
    let mut listen = Vec::new();
    if s.listen.is_empty() {
        cx.problems.add(
            "server.listen",
            "at least one address is needed, e.g. \"127.0.0.1:8080\"",
        );
    }
    for (i, addr) in s.listen.iter().enumerate() {
        match addr.parse::<SocketAddr>() {
                Ok(a) if listen.contains(&a) => {
                    cx.problems.add(format!("server.listen[{i}]"), format!("{addr} is listed twice"))
                }
                Ok(a) => listen.push(a),
                Err(_) => cx.problems.add(
                    format!("server.listen[{i}]"),
                    format!("`{addr}` is not an address with a port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""),
                ),
            }
    }
    if s.max_body.0 == 0 {
        cx.problems.add("server.max_body", "must be more than 0");
    }
    for (key, d) in [
        ("upstream_connect_timeout", s.upstream_connect_timeout),
        ("upstream_header_timeout", s.upstream_header_timeout),
        ("upstream_idle_timeout", s.upstream_idle_timeout),
        ("upstream_pool_idle_timeout", s.upstream_pool_idle_timeout),
        ("stream_keepalive_interval", s.stream_keepalive_interval),
        ("health_poll_interval", s.health_poll_interval),
        ("keepalive_timeout", s.keepalive_timeout),
        ("header_read_timeout", s.header_read_timeout),
        ("body_timeout", s.body_timeout),
        ("body_idle_timeout", s.body_idle_timeout),
        ("write_timeout", s.write_timeout),
    ] {
        if d.is_zero() {
            cx.problems
                .add(format!("server.{key}"), "must be more than 0");
        }
    }
    if s.max_connections == 0 {
        cx.problems
            .add("server.max_connections", "must be more than 0");
    }
    if s.max_connections_per_ip == 0 {
        cx.problems
            .add("server.max_connections_per_ip", "must be more than 0");
    } else if s.max_connections_per_ip > s.max_connections {
        cx.problems.add(
            "server.max_connections_per_ip",
            format!(
                "{} is more than server.max_connections ({})",
                s.max_connections_per_ip, s.max_connections
            ),
        );
    }
    for (i, o) in s.cors_origins.iter().enumerate() {
        let path = format!("server.cors_origins[{i}]");
        if o == "*" {
            if s.auth == crate::config::AuthMode::None {
                cx.problems.add(path, "\"*\" (any origin) needs API keys (auth = \"required\"): with auth = \"none\" any web page could use the models; list the origins instead");
            }
        } else if !valid_origin(o) {
            cx.problems.add(path, format!("`{o}` is not an origin: write scheme://host[:port] without a path, e.g. \"https://chat.example.ts.net\" or \"http://localhost:3000\""));
        }
    }
    if s.http2_max_streams == 0 {
        cx.problems
            .add("server.http2_max_streams", "must be more than 0");
    }
    if s.max_buffered_bodies.0 < s.max_body.0 {
        cx.problems.add(
                "server.max_buffered_bodies",
                format!(
                    "{} bytes is less than server.max_body ({} bytes): no request of the largest size could be received",
                    s.max_buffered_bodies.0, s.max_body.0
                ),
            );
    }
    let [first, last] = s.port_range;
    if first == 0 || first > last {
        cx.problems.add(
                "server.port_range",
                format!("[{first}, {last}] is not a range of ports: write [first, last] with 0 < first <= last"),
            );
    }

    cx.listen = listen;
}

/// Public names (instance names and aliases) must be unique.
fn check_public_names(cx: &mut Ctx<'_>) {
    let c = cx.config;
    let public = &mut cx.public;
    for name in c.models.keys() {
        public.insert(name, format!("models.{name}"));
    }
    for (name, m) in &c.models {
        for (i, alias) in m.aliases.iter().enumerate() {
            let path = format!("models.{name}.aliases[{i}]");
            if alias.trim().is_empty() {
                cx.problems.add(path, "an alias cannot be empty");
                continue;
            }
            if let Some(owner) = public.get(alias.as_str()) {
                cx.problems
                    .add(path, format!("`{alias}` is already the name of {owner}"));
            } else {
                public.insert(alias, format!("an alias of models.{name}"));
            }
        }
    }

    if c.models.is_empty() {
        cx.problems.add(
            "models",
            "no models are configured; add a [models.<name>] table",
        );
    }
}

/// Explicit model ports: each once, none that llmvisor listens on. Returns the
/// ports taken, so automatic ones avoid them.
fn check_ports(cx: &mut Ctx<'_>) -> BTreeMap<u16, String> {
    let c = cx.config;
    // Explicit ports first, so automatic ones avoid them.
    let listen_ports: BTreeSet<(u16, bool)> = cx
        .listen
        .iter()
        .map(|a| (a.port(), a.ip().is_loopback() || a.ip().is_unspecified()))
        .collect();
    let mut taken: BTreeMap<u16, String> = BTreeMap::new();
    for (name, m) in &c.models {
        let Some(port) = m.port else { continue };
        let path = format!("models.{name}.port");
        if port == 0 {
            cx.problems
                .add(path, "0 is not a port a backend can be reached on");
        } else if let Some(other) = taken.get(&port) {
            cx.problems
                .add(path, format!("{port} is also the port of {other}"));
        } else if listen_ports.contains(&(port, true)) {
            cx.problems.add(
                path,
                format!("{port} is the port llmvisor itself listens on"),
            );
        } else {
            taken.insert(port, format!("models.{name}"));
        }
    }
    taken
}

/// Every `[models.<name>]`, with an automatic port from `server.port_range` where
/// none is set.
fn check_models(cx: &mut Ctx<'_>, mut taken: BTreeMap<u16, String>, simulated: usize) {
    let c = cx.config;
    let [first, last] = c.server.port_range;
    let listen_ports: Vec<u16> = cx.listen.iter().map(SocketAddr::port).collect();
    let mut next_port = first;
    let mut models = Vec::new();
    for (name, m) in &c.models {
        let port = match m.port {
            Some(port) => port,
            None if first == 0 || first > last => 0,
            None => {
                let free = (next_port..=last)
                    .find(|c| !taken.contains_key(c) && !listen_ports.contains(c));
                match free {
                    Some(c) => {
                        next_port = c.saturating_add(1);
                        taken.insert(c, format!("models.{name}"));
                        c
                    }
                    None => {
                        cx.problems.add(
                                format!("models.{name}.port"),
                                format!("server.port_range [{first}, {last}] has no free port left; widen it or set a port"),
                            );
                        0
                    }
                }
            }
        };
        if let Some(spec) = check_model(name, m, port, simulated, &mut cx.problems) {
            models.push(spec);
        }
    }

    cx.models = models;
}

/// `[telemetry]`: where traces go, and the checked `headers`.
fn check_telemetry(cx: &mut Ctx<'_>) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let t = &cx.config.telemetry;
    if let Some(url) = t.traces_url() {
        match url.parse::<http::Uri>() {
            // Not echoed: the part before `@` is a secret.
            Ok(u) if u.authority().is_some_and(|a| a.as_str().contains('@')) => cx.problems.add(
                "telemetry.otlp_endpoint",
                "holds credentials (user:password@); they would be logged and never sent: put them in headers_file (Authorization: Basic …)",
            ),
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => cx.problems.add(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL such as \"http://127.0.0.1:4318\"",
            ),
        }
    }
    if t.queue == 0 {
        cx.problems.add("telemetry.queue", "must be at least 1");
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        cx.problems.add(
            "telemetry.sample_ratio",
            "must be between 0.0 (no request without a client's traceparent is traced) and 1.0 (every one)",
        );
    }
    for (key, at) in [(&t.headers_file, "headers_file"), (&t.ca_file, "ca_file")] {
        if key.as_deref().is_some_and(|f| f.trim().is_empty()) {
            cx.problems
                .add(format!("telemetry.{at}"), "cannot be empty; leave it out");
        }
    }
    let mut headers: Vec<(http::HeaderName, http::HeaderValue)> = Vec::new();
    for (name, value) in &t.headers {
        match export_header(name, value) {
            // TOML keys differ by case where header names do not.
            Ok((n, _)) if headers.iter().any(|(k, _)| *k == n) => cx.problems.add(
                format!("telemetry.headers.{name}"),
                format!("`{name}` is given twice (header names ignore case)"),
            ),
            Ok(h) => headers.push(h),
            Err(e) => cx.problems.add(format!("telemetry.headers.{name}"), e),
        }
    }
    headers
}

/// One header of the trace exporter's (`[telemetry] headers` or a line of
/// `headers_file`): a valid name and value, and not one llmvisor sets itself or
/// one that belongs to a single connection. The error never quotes the value.
pub(super) fn export_header(
    name: &str,
    value: &str,
) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let n = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    const OURS: [&str; 4] = ["content-type", "content-length", "content-encoding", "host"];
    const HOP: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ];
    if OURS.contains(&n.as_str()) {
        return Err(format!("`{name}` is set by llmvisor"));
    }
    if HOP.contains(&n.as_str()) {
        return Err(format!(
            "`{name}` is a per-connection header; it cannot be set"
        ));
    }
    let v = http::HeaderValue::from_str(value.trim()).map_err(|_| {
        format!("the value of `{name}` is not a valid header value (visible ASCII and spaces only)")
    })?;
    if v.is_empty() {
        return Err(format!("the value of `{name}` is empty"));
    }
    Ok((n, v))
}

/// `[store]`.
fn check_store(cx: &mut Ctx<'_>) {
    let c = cx.config;
    if c.store.queue == 0 {
        cx.problems.add("store.queue", "must be at least 1");
    }
    if c.store.batch == 0 {
        cx.problems.add("store.batch", "must be at least 1");
    }
    if c.store.path.as_deref().is_some_and(|x| x.trim().is_empty()) {
        cx.problems.add(
            "store.path",
            "cannot be empty; leave it out for the state directory",
        );
    }
}

/// Retries and the circuit breaker (`[server]`).
fn check_resilience(cx: &mut Ctx<'_>) {
    let s = &cx.config.server;
    if s.max_attempts == 0 {
        cx.problems
            .add("server.max_attempts", "must be at least 1 (1: no retries)");
    }
    if !(0.0..=10.0).contains(&s.retry_budget) || s.retry_budget.is_nan() {
        cx.problems.add(
            "server.retry_budget",
            "must be a fraction between 0 and 10, e.g. 0.2",
        );
    }
    if s.breaker_failures == 0 {
        cx.problems
            .add("server.breaker_failures", "must be at least 1");
    }
    if s.breaker_cooldown.is_zero() {
        cx.problems
            .add("server.breaker_cooldown", "must be more than 0");
    }
}

/// `server.auth` against the listeners and the clients.
fn check_auth(cx: &mut Ctx<'_>) {
    let s = &cx.config.server;
    match s.auth {
        super::AuthMode::None => {
            if let Some(a) = cx.listen.iter().find(|a| !a.ip().is_loopback())
                && !s.auth_none_on_network
            {
                cx.problems.add(
                        "server.auth",
                        format!("\"none\" lets anyone who reaches {a} use every model; configure [clients] keys, listen on loopback only, or set server.auth_none_on_network = true"),
                    );
            }
        }
        super::AuthMode::Required => {
            if cx.config.clients.is_empty() {
                cx.problems.add(
                        "server.auth",
                        "is \"required\" (the default) but no [clients.<name>] has a key, so every request would be refused; add a client, or set auth = \"none\" on a loopback listener",
                    );
            }
        }
    }
}

/// Check one model; return its spec when it has no problems of its own.
fn check_model(
    name: &str,
    m: &ModelConfig,
    port: u16,
    simulated: usize,
    p: &mut Problems,
) -> Option<ModelSpec> {
    let before = p.0.len();
    let at = |key: &str| format!("models.{name}.{key}");
    if let Err(e) = valid_instance_name(name) {
        p.add(format!("models.{name}"), e);
    }

    let kind = m.kind;
    check_kind_keys(name, m, p);
    let model = m.model.clone().unwrap_or_default();
    if kind != Kind::Command && model.trim().is_empty() {
        p.add(
            at("model"),
            format!("kind = \"{}\" needs `model` (what to serve)", kind.as_str()),
        );
    }
    if let Some(exe) = &m.executable
        && exe.trim().is_empty()
    {
        p.add(at("executable"), "cannot be empty");
    }

    let backend = backend(name, m, &model, p);
    check_runtime(name, m, p);
    let (cpu_quota_percent, allowed_cpus) = check_limits(name, m, p);
    let (pinned, gpu) = super::gpu::check_model_gpu(name, m, simulated, p);
    let anthropic_native = match m.anthropic.as_deref() {
        None => kind.messages_native_by_default(),
        Some("native") => true,
        Some("translate") => false,
        Some(other) => {
            p.add(
                at("anthropic"),
                format!("`{other}` is neither \"native\" nor \"translate\""),
            );
            false
        }
    };

    if p.0.len() > before {
        return None;
    }
    let served_name = m.served_name.clone().unwrap_or_else(|| match kind {
        Kind::Ollama => model.clone(),
        _ => name.to_string(),
    });
    Some(ModelSpec {
        name: name.to_string(),
        kind,
        backend,
        executable: m.executable.clone(),
        port,
        served_name,
        aliases: m.aliases.clone(),
        max_concurrent: m.max_concurrent,
        max_queue: m.max_queue,
        queue_timeout: m.queue_timeout.0,
        start_timeout: m.start_timeout.0,
        idle_ttl: (!m.idle_ttl.is_zero()).then_some(m.idle_ttl.0),
        stop_timeout: m.stop_timeout.0,
        context_length: m.context_length,
        tokenizer: m.tokenizer.clone(),
        env: m.env.clone(),
        health_path: m
            .health_path
            .clone()
            .unwrap_or_else(|| kind.default_health_path().to_string()),
        extra_args: m.extra_args.clone(),
        capabilities: capabilities(name, m, kind, p),
        anthropic_native,
        restart_backoff: m.restart_backoff.0,
        max_restarts: m.max_restarts,
        restart_window: m.restart_window.0,
        gpu,
        limits: super::Limits {
            gpus: pinned,
            gpu_uuids: Vec::new(),
            gpu_minors: Vec::new(),
            memory_max: m.memory_max.map(|s| s.0),
            memory_high: m.memory_high.map(|s| s.0),
            cpu_quota_percent,
            allowed_cpus,
            tasks_max: m.tasks_max,
            io_weight: m.io_weight,
            allow_network: m.allow_network,
            dynamic_user: m.dynamic_user,
        },
    })
}

/// Keys that belong to other kinds.
fn check_kind_keys(name: &str, m: &ModelConfig, p: &mut Problems) {
    let at = |key: &str| format!("models.{name}.{key}");
    let kind = m.kind;
    let only = |p: &mut Problems, key: &str, set: bool, kinds: &[Kind]| {
        if set && !kinds.contains(&kind) {
            let names: Vec<_> = kinds
                .iter()
                .map(|k| format!("\"{}\"", k.as_str()))
                .collect();
            p.add(
                at(key),
                format!(
                    "only applies to kind = {}, not \"{}\"",
                    names.join(" or "),
                    kind.as_str()
                ),
            );
        }
    };
    only(p, "command", m.command.is_some(), &[Kind::Command]);
    only(
        p,
        "model",
        m.model.is_some(),
        &[Kind::Vllm, Kind::Ollama, Kind::LlamaCpp],
    );
    only(
        p,
        "executable",
        m.executable.is_some(),
        &[Kind::Vllm, Kind::Ollama, Kind::LlamaCpp],
    );
    only(
        p,
        "extra_args",
        !m.extra_args.is_empty(),
        &[Kind::Vllm, Kind::Ollama, Kind::LlamaCpp],
    );
    only(
        p,
        "tensor_parallel_size",
        m.tensor_parallel_size.is_some(),
        &[Kind::Vllm],
    );
    only(
        p,
        "gpu_memory_utilization",
        m.gpu_memory_utilization.is_some(),
        &[Kind::Vllm],
    );
    only(p, "embeddings", m.embeddings.is_some(), &[Kind::LlamaCpp]);
    if kind == Kind::Ollama && !m.extra_args.is_empty() {
        // Ollama's own `serve` command (cmd/cmd.go, checked for 0.32.0) takes no
        // arguments and has no flags: anything here would fail every start.
        p.add(
            at("extra_args"),
            "`ollama serve` takes no arguments or flags; configure Ollama through its OLLAMA_* variables in `env`",
        );
    }
}

/// What runs: the engine and its model, or the `command` argv (placeholders checked).
fn backend(name: &str, m: &ModelConfig, model: &str, p: &mut Problems) -> Backend {
    let at = |key: &str| format!("models.{name}.{key}");
    match m.kind {
        Kind::Vllm => Backend::Vllm {
            model: model.to_string(),
            tensor_parallel_size: m.tensor_parallel_size.or(m.tensor_parallel),
            gpu_memory_utilization: m.gpu_memory_utilization,
        },
        Kind::Ollama => Backend::Ollama {
            model: model.to_string(),
        },
        Kind::LlamaCpp => Backend::LlamaCpp {
            model: model.to_string(),
            embeddings: m.embeddings.unwrap_or(false),
        },
        Kind::Command => {
            let argv = m.command.clone().unwrap_or_default();
            if argv.is_empty() {
                p.add(
                    at("command"),
                    "kind = \"command\" needs a non-empty argv, e.g. [\"my-server\", \"--port\", \"{port}\"]",
                );
            } else if argv[0].trim().is_empty() {
                p.add(
                    format!("models.{name}.command[0]"),
                    "the program cannot be empty",
                );
            }
            for (i, arg) in argv.iter().enumerate() {
                for ph in placeholders(arg) {
                    if !PLACEHOLDERS.contains(&ph) {
                        p.add(
                            format!("models.{name}.command[{i}]"),
                            format!("unknown placeholder `{{{ph}}}`; known: {{port}}, {{served_name}}, {{name}}"),
                        );
                    }
                }
            }
            Backend::Command { argv }
        }
    }
}

/// Engine settings, concurrency, queueing, timeouts, restarts and health.
fn check_runtime(name: &str, m: &ModelConfig, p: &mut Problems) {
    let at = |key: &str| format!("models.{name}.{key}");
    if m.tensor_parallel_size == Some(0) {
        p.add(at("tensor_parallel_size"), "must be at least 1");
    }
    if let Some(f) = m.gpu_memory_utilization
        && !(f > 0.0 && f <= 1.0)
    {
        p.add(
            at("gpu_memory_utilization"),
            format!("{f} is not a fraction in (0, 1]"),
        );
    }
    if m.max_concurrent == 0 {
        p.add(at("max_concurrent"), "must be at least 1");
    } else if m.max_concurrent > MAX_CONCURRENT {
        p.add(
            at("max_concurrent"),
            format!(
                "{} is more than the most llmvisor allows ({MAX_CONCURRENT})",
                m.max_concurrent
            ),
        );
    }
    if m.max_queue > MAX_QUEUE {
        p.add(
            at("max_queue"),
            format!(
                "{} is more than the most llmvisor allows ({MAX_QUEUE})",
                m.max_queue
            ),
        );
    }
    for (key, d) in [
        ("queue_timeout", m.queue_timeout),
        ("start_timeout", m.start_timeout),
        ("stop_timeout", m.stop_timeout),
    ] {
        if d.is_zero() {
            p.add(at(key), "must be more than 0");
        }
    }
    if m.max_restarts == 0 {
        p.add(at("max_restarts"), "must be at least 1");
    }
    if m.restart_window.is_zero() {
        p.add(at("restart_window"), "must be more than 0");
    }
    if m.tokenizer.as_deref().is_some_and(|t| t.trim().is_empty()) {
        p.add(at("tokenizer"), "cannot be empty");
    }
    if m.context_length == Some(0) {
        p.add(at("context_length"), "must be more than 0");
    }
    if let Some(hp) = &m.health_path
        && !hp.starts_with('/')
    {
        p.add(at("health_path"), format!("`{hp}` must start with `/`"));
    }
    if let Some(sn) = &m.served_name
        && sn.trim().is_empty()
    {
        p.add(at("served_name"), "cannot be empty");
    }
    for key in m.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            p.add(
                format!("models.{name}.env"),
                format!("`{key}` is not a variable name"),
            );
        }
    }
}

/// cgroup limits: `cpu_quota` (as a percentage) and `allowed_cpus` (as a CPU list)
/// resolved, the others checked.
fn check_limits(
    name: &str,
    m: &ModelConfig,
    p: &mut Problems,
) -> (Option<u32>, Option<super::values::CpuList>) {
    let at = |key: &str| format!("models.{name}.{key}");
    let cpu_quota_percent = m.cpu_quota.as_ref().and_then(|q| {
        let n = q
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<u32>().ok());
        if n.is_none_or(|n| n == 0) {
            p.add(
                at("cpu_quota"),
                format!("`{q}` is not a percentage of one CPU, e.g. \"400%\""),
            );
        }
        n
    });
    let allowed_cpus = m.allowed_cpus.as_ref().and_then(|cpus| {
        let list = super::values::CpuList::parse(cpus);
        if list.is_none() {
            p.add(
                at("allowed_cpus"),
                format!("`{cpus}` is not a CPU list, e.g. \"0-7,16\""),
            );
        }
        list
    });
    if m.io_weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
        p.add(at("io_weight"), "must be between 1 and 10000");
    }
    if m.tasks_max == Some(0) {
        p.add(at("tasks_max"), "must be at least 1");
    }
    for (key, size) in [("memory_max", m.memory_max), ("memory_high", m.memory_high)] {
        if size.is_some_and(|s| s.0 == 0) {
            p.add(at(key), "must be more than 0");
        }
    }
    if let (Some(high), Some(max)) = (m.memory_high, m.memory_max)
        && high > max
    {
        p.add(
            at("memory_high"),
            format!("{high} is above memory_max ({max})"),
        );
    }
    (cpu_quota_percent, allowed_cpus)
}

/// What `/v1/models` says a model is for.
pub const CAPABILITIES: [&str; 5] = ["chat", "completion", "embedding", "rerank", "transcription"];

/// A model's capabilities: declared (each checked), or derived from its kind.
fn capabilities(name: &str, m: &ModelConfig, kind: Kind, p: &mut Problems) -> Vec<String> {
    if let Some(declared) = &m.capabilities {
        if declared.is_empty() {
            p.add(
                format!("models.{name}.capabilities"),
                "list at least one of chat, completion, embedding, rerank, transcription",
            );
        }
        for (i, c) in declared.iter().enumerate() {
            if !CAPABILITIES.contains(&c.as_str()) {
                p.add(
                    format!("models.{name}.capabilities[{i}]"),
                    format!(
                        "`{c}` is not one of chat, completion, embedding, rerank, transcription"
                    ),
                );
            }
        }
        return declared.clone();
    }
    let arg_after = |flag: &str| {
        m.extra_args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{flag}="))
                .map(str::to_string)
                .or_else(|| {
                    (a == flag)
                        .then(|| m.extra_args.get(i + 1).cloned())
                        .flatten()
                })
        })
    };
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match kind {
        Kind::LlamaCpp if m.embeddings == Some(true) => v(&["embedding"]),
        Kind::LlamaCpp
            if m.extra_args
                .iter()
                .any(|a| a == "--reranking" || a == "--rerank") =>
        {
            v(&["rerank"])
        }
        Kind::Vllm => {
            let task = arg_after("--task").or_else(|| arg_after("--convert"));
            match task.as_deref() {
                Some("embed" | "embedding") => v(&["embedding"]),
                Some("score" | "classify" | "reward" | "rerank") => v(&["rerank"]),
                Some("transcription") => v(&["transcription"]),
                _ if arg_after("--runner").as_deref() == Some("pooling") => v(&["embedding"]),
                _ => v(&["chat", "completion"]),
            }
        }
        _ => v(&["chat", "completion"]),
    }
}

/// `scheme://host[:port]`, as a browser sends it in `Origin`.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() {
        return false;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str) -> Vec<String> {
        let cfg = Config::parse_open(toml).expect("parses");
        match cfg.validate() {
            Ok(_) => vec![],
            Err(ps) => ps.into_iter().map(|p| p.to_string()).collect(),
        }
    }

    /// llama.cpp shares its context among its slots (checked against the real
    /// llama-server: `--ctx-size 512 --parallel 2` gives `n_ctx_slot = 256` and a
    /// 400 `exceed_context_size_error` above it); the other kinds give each request
    /// the whole window: vLLM's `--max-model-len` is per sequence, and Ollama
    /// hands its runner `OLLAMA_CONTEXT_LENGTH` x `OLLAMA_NUM_PARALLEL` (its docs
    /// and server logs, `Parallel:2 … KvSize:8192`; no Ollama runs here).
    #[test]
    fn a_request_gets_a_llama_cpp_slot_s_share_of_the_context() {
        let ctx = |model: &str| {
            Config::parse_open(&format!("[models.m]\nport = 9000\n{model}"))
                .expect("parses")
                .validate()
                .expect("valid")
                .models[0]
                .request_context()
        };
        let llama = "kind = \"llama-cpp\"\nmodel = \"/m.gguf\"\ncontext_length = 8192\n";
        assert_eq!(ctx(&format!("{llama}max_concurrent = 2\n")), Some(4096));
        assert_eq!(ctx(&format!("{llama}max_concurrent = 1\n")), Some(8192));
        assert_eq!(
            ctx(&format!(
                "{llama}max_concurrent = 2\nextra_args = [\"--kv-unified\"]\n"
            )),
            Some(8192)
        );
        assert_eq!(
            ctx("kind = \"llama-cpp\"\nmodel = \"/m.gguf\"\nmax_concurrent = 2\n"),
            None
        );
        assert_eq!(
            ctx("kind = \"vllm\"\nmodel = \"m\"\ncontext_length = 8192\nmax_concurrent = 8\n"),
            Some(8192)
        );
        assert_eq!(
            ctx("kind = \"ollama\"\nmodel = \"m:1b\"\ncontext_length = 8192\nmax_concurrent = 4\n"),
            Some(8192)
        );
    }

    #[test]
    fn minimal_config_resolves_defaults() {
        let cfg = Config::parse_open(
            r#"
            [models.small]
            kind = "command"
            command = ["mock", "--port", "{port}"]
            [models.qwen]
            kind = "vllm"
            model = "Qwen/Qwen2.5-7B-Instruct"
            port = 28100
            [models.tiny]
            kind = "ollama"
            model = "llama3.2:1b"
            "#,
        )
        .unwrap();
        let s = cfg.validate().expect("valid");
        assert_eq!(s.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        let by = |n: &str| s.models.iter().find(|m| m.name == n).unwrap().clone();
        assert_eq!(by("qwen").port, 28100);
        // Automatic ports skip the explicit one.
        assert_eq!(by("small").port, 28101);
        assert_eq!(by("tiny").port, 28102);
        assert_eq!(by("tiny").served_name, "llama3.2:1b");
        assert_eq!(by("tiny").health_path, "/api/version");
        assert_eq!(by("qwen").served_name, "qwen");
        assert_eq!(
            by("small").idle_ttl,
            Some(std::time::Duration::from_secs(1800))
        );
    }

    #[test]
    fn cors_origins_are_checked() {
        assert!(valid_origin("https://chat.example.ts.net"));
        assert!(valid_origin("http://localhost:3000"));
        assert!(valid_origin("http://[::1]:8080"));
        for bad in [
            "chat.example",
            "https://x/path",
            "ftp://x",
            "https://",
            "http://x:0",
            "http://x:99999",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
        let ps = problems(
            r#"
            [server]
            auth = "none"
            cors_origins = ["*", "localhost:3000"]
            [models.a]
            kind = "command"
            command = ["x"]
            "#,
        );
        assert!(
            ps.iter().any(|p| p.starts_with("server.cors_origins[0]: \"*\" (any origin) needs API keys")),
            "{ps:#?}"
        );
        assert!(
            ps.iter().any(|p| p.starts_with("server.cors_origins[1]: `localhost:3000` is not an origin")),
            "{ps:#?}"
        );
    }

    #[test]
    fn connection_limits_are_checked() {
        let ps = problems(
            r#"
            [server]
            max_connections = 10
            max_connections_per_ip = 20
            keepalive_timeout = "0s"
            write_timeout = 0
            http2_max_streams = 0
            max_body = "2MiB"
            max_buffered_bodies = "1MiB"
            [models.a]
            kind = "command"
            command = ["x"]
            "#,
        );
        for want in [
            "server.max_connections_per_ip: 20 is more than server.max_connections (10)",
            "server.keepalive_timeout: must be more than 0",
            "server.write_timeout: must be more than 0",
            "server.http2_max_streams: must be more than 0",
            "server.max_buffered_bodies: 1048576 bytes is less than server.max_body",
        ] {
            assert!(
                ps.iter().any(|p| p.starts_with(want)),
                "no {want:?} in {ps:#?}"
            );
        }
    }

    #[test]
    fn telemetry_is_checked() {
        for (ratio, ok) in [
            ("1.0", true),
            ("0", true),
            ("0.05", true),
            ("1.5", false),
            ("-0.1", false),
            ("nan", false),
        ] {
            let ps = problems(&format!(
                "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = {ratio}\n[models.a]\nkind = \"command\"\ncommand = [\"x\"]\n"
            ));
            let bad = ps
                .iter()
                .any(|p| p.starts_with("telemetry.sample_ratio: must be between 0.0"));
            assert_eq!(bad, !ok, "sample_ratio = {ratio}: {ps:#?}");
        }
    }

    /// `[telemetry] headers`, `headers_file` and `ca_file`: every problem with its
    /// key path (and line), none quoting a header's value; the headers in order,
    /// the file's marked sensitive; the CA's certificates kept. The CA is made by
    /// the `openssl` command line, as a user would make one.
    #[test]
    fn trace_export_headers_and_roots_are_checked() {
        use super::super::SecretsMode;
        let dir = tempfile::tempdir().unwrap();
        let model =
            "[server]\nauth = \"none\"\n[models.a]\nkind = \"command\"\ncommand = [\"x\"]\n";
        let load = |telemetry: &str| {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, format!("{model}[telemetry]\n{telemetry}")).unwrap();
            Config::load_with(&path, SecretsMode::Serve).map(|(s, _)| s)
        };
        let errors = |telemetry: &str| match load(telemetry) {
            Ok(_) => panic!("accepted: {telemetry}"),
            Err(super::super::ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            Err(e) => panic!("{e}"),
        };
        let endpoint = "otlp_endpoint = \"https://tempo.example:4318\"\n";

        let ps = errors(&format!(
            "{endpoint}headers = {{ \"X-Scope-OrgID\" = \"homelab\", \"bad name\" = \"v\", \"Content-Type\" = \"x\", \"Connection\" = \"close\", \"X-Empty\" = \" \", \"X-Bad\" = \"sec\\nret\" }}\n"
        ));
        for want in [
            "telemetry.headers.bad name: `bad name` is not a valid header name",
            "telemetry.headers.Content-Type: `Content-Type` is set by llmvisor",
            "telemetry.headers.Connection: `Connection` is a per-connection header",
            "telemetry.headers.X-Empty: the value of `X-Empty` is empty",
            "telemetry.headers.X-Bad: the value of `X-Bad` is not a valid header value",
        ] {
            assert!(
                ps.iter().any(|p| p.starts_with(want)),
                "no {want:?} in {ps:#?}"
            );
        }
        assert_eq!(ps.len(), 5, "{ps:#?}");
        assert!(
            !ps.iter().any(|p| p.contains("sec")),
            "a value quoted: {ps:#?}"
        );
        let ps = errors(&format!(
            "{endpoint}headers = {{ \"X-A\" = \"1\", \"x-a\" = \"2\", \"Content-Encoding\" = \"gzip\" }}\n"
        ));
        assert_eq!(
            ps,
            [
                "telemetry.headers.Content-Encoding: `Content-Encoding` is set by llmvisor",
                "telemetry.headers.x-a: `x-a` is given twice (header names ignore case)",
            ]
        );
        let ps = errors("otlp_endpoint = \"https://user:s3cret@tempo.example:4318\"\n");
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert!(
            ps[0].starts_with("telemetry.otlp_endpoint: holds credentials"),
            "{ps:#?}"
        );
        assert!(!ps[0].contains("s3cret"), "{ps:#?}");

        std::fs::write(
            dir.path().join("h"),
            "# Grafana Cloud\nAuthorization: Basic c2VjcmV0\n\nno colon secret\nx-scope-orgid: again\nHost: secret.example\nAuthorization=Bearer sk-secret:x\n",
        )
        .unwrap();
        let ps = errors(&format!(
            "{endpoint}headers = {{ \"X-Scope-OrgID\" = \"homelab\" }}\nheaders_file = \"h\"\n"
        ));
        assert_eq!(
            ps,
            [
                "telemetry.headers_file: line 4: not a `Name: value` header",
                "telemetry.headers_file: line 5: `x-scope-orgid` is given twice (here or in telemetry.headers)",
                "telemetry.headers_file: line 6: `Host` is set by llmvisor",
                "telemetry.headers_file: line 7: what comes before the first `:` is not a header name",
            ]
        );
        std::fs::write(dir.path().join("empty"), "# nothing yet\n").unwrap();
        let ps = errors(&format!("{endpoint}headers_file = \"empty\"\n"));
        assert_eq!(
            ps,
            ["telemetry.headers_file: holds no header (`Name: value` lines)"]
        );
        let ps = errors(&format!(
            "{endpoint}headers_file = \"missing\"\nca_file = \"h\"\n"
        ));
        assert!(
            ps[0].starts_with("telemetry.headers_file: cannot read "),
            "{ps:#?}"
        );
        assert!(
            ps[1].starts_with("telemetry.ca_file: ") && ps[1].contains("holds no certificate"),
            "{ps:#?}"
        );
        let ps = errors(&format!("{endpoint}ca_file = \"\"\nheaders_file = \" \"\n"));
        assert_eq!(
            ps,
            [
                "telemetry.headers_file: cannot be empty; leave it out",
                "telemetry.ca_file: cannot be empty; leave it out",
            ]
        );
        let ps = errors("otlp_endpoint = \"grpc://127.0.0.1:4317\"\n");
        assert!(ps[0].starts_with("telemetry.otlp_endpoint: must be an http:// or https:// URL"));

        std::fs::write(dir.path().join("h"), "Authorization: Basic c2VjcmV0\n").unwrap();
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=test CA", "-keyout"])
            .arg(dir.path().join("ca.key"))
            .arg("-out")
            .arg(dir.path().join("ca.pem"))
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{made:?}");
        let s = load(&format!(
            "{endpoint}headers = {{ \"X-Scope-OrgID\" = \"homelab\" }}\nheaders_file = \"h\"\nca_file = \"ca.pem\"\n"
        ))
        .unwrap();
        let h = &s.trace_export.headers;
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].0.as_str(), h[0].1.to_str().unwrap()),
            ("x-scope-orgid", "homelab")
        );
        assert_eq!(
            (h[1].0.as_str(), h[1].1.to_str().unwrap()),
            ("authorization", "Basic c2VjcmV0")
        );
        assert!(h[1].1.is_sensitive() && !h[0].1.is_sensitive());
        assert!(
            !format!("{s:?}").contains("c2VjcmV0"),
            "the secret in Debug"
        );
        assert_eq!(s.trace_export.roots.as_ref().map(Vec::len), Some(1));

        // Plain http: the key crosses the network readable (a note); ca_file unused.
        let path = dir.path().join("c.toml");
        for (host, noted) in [("10.0.0.5", true), ("127.0.0.1", false), ("[::1]", false)] {
            std::fs::write(
                &path,
                format!("{model}[telemetry]\notlp_endpoint = \"http://{host}:4318\"\nheaders_file = \"h\"\nca_file = \"ca.pem\"\n"),
            )
            .unwrap();
            let (_, notes) = Config::load_with(&path, SecretsMode::Serve).unwrap();
            assert_eq!(
                notes
                    .iter()
                    .any(|n| n.starts_with("telemetry.headers_file: its headers go to")),
                noted,
                "{host}: {notes:#?}"
            );
            assert!(
                notes
                    .iter()
                    .any(|n| n == "telemetry.ca_file: not used: otlp_endpoint is http://"),
                "{notes:#?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let ps = problems(
            r#"
            [server]
            listen = ["127.0.0.1:8080", "nonsense"]
            max_body = 0
            [models.a]
            kind = "command"
            command = []
            port = 9000
            max_concurrent = 0
            aliases = ["b"]
            max_queue = 4294967295
            [models.b]
            kind = "vllm"
            port = 9000
            tensor_parallel_size = 2
            gpu_memory_utilization = 1.5
            embeddings = true
            [models."bad/name"]
            kind = "command"
            command = ["x", "{prot}", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 5}', "{unclosed"]
            queue_timeout = 0
            "#,
        );
        let expect = [
            "server.listen[1]: `nonsense` is not an address",
            "server.max_body: must be more than 0",
            "models.a.aliases[0]: `b` is already the name of models.b",
            "models.b.port: 9000 is also the port of models.a",
            "models.a.command: kind = \"command\" needs a non-empty argv",
            "models.a.max_concurrent: must be at least 1",
            "models.a.max_queue: 4294967295 is more than the most llmvisor allows",
            "models.b.model: kind = \"vllm\" needs `model`",
            "models.b.gpu_memory_utilization: 1.5 is not a fraction",
            "models.b.embeddings: only applies to kind = \"llama-cpp\", not \"vllm\"",
            "models.bad/name: `/` is not allowed in a systemd unit name",
            "models.bad/name.command[1]: unknown placeholder `{prot}`",
            "models.bad/name.queue_timeout: must be more than 0",
        ];
        for e in expect {
            assert!(
                ps.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {ps:#?}"
            );
        }
        assert_eq!(ps.len(), expect.len(), "{ps:#?}");
    }

    /// `anthropic`: native by default for vllm and ollama, translate for llama-cpp
    /// and `command`; either forced; anything else refused with its key path.
    #[test]
    fn anthropic_mode_defaults_by_kind_and_can_be_forced() {
        let cfg = Config::parse_open(
            r#"
            [models.c]
            kind = "command"
            command = ["mock", "--port", "{port}"]
            [models.c2]
            kind = "command"
            command = ["mock", "--port", "{port}"]
            anthropic = "native"
            [models.v]
            kind = "vllm"
            model = "Qwen/Qwen2.5-7B-Instruct"
            [models.v2]
            kind = "vllm"
            model = "Qwen/Qwen2.5-7B-Instruct"
            anthropic = "translate"
            [models.o]
            kind = "ollama"
            model = "llama3.2:1b"
            [models.l]
            kind = "llama-cpp"
            model = "/m.gguf"
            [models.l2]
            kind = "llama-cpp"
            model = "/m.gguf"
            anthropic = "native"
            "#,
        )
        .unwrap();
        let s = cfg.validate().expect("valid");
        let native = |n: &str| {
            s.models
                .iter()
                .find(|m| m.name == n)
                .unwrap()
                .anthropic_native
        };
        assert!(!native("c") && native("c2"));
        assert!(native("v") && !native("v2"));
        assert!(native("o") && !native("l") && native("l2"));
        let ps = problems(
            r#"
            [models.v]
            kind = "vllm"
            model = "x"
            anthropic = "yes"
            "#,
        );
        assert_eq!(
            ps,
            ["models.v.anthropic: `yes` is neither \"native\" nor \"translate\""]
        );
    }

    #[test]
    fn unit_limits_are_checked() {
        let ps = problems(
            r#"
            [models.g]
            kind = "vllm"
            model = "m"
            gpus = [0, 1, 1]
            tensor_parallel_size = 2
            cpu_quota = "lots"
            allowed_cpus = "3-1"
            io_weight = 0
            tasks_max = 0
            memory_max = "8GiB"
            memory_high = "9GiB"
            "#,
        );
        let expect = [
            "models.g.cpu_quota: `lots` is not a percentage",
            "models.g.allowed_cpus: `3-1` is not a CPU list",
            "models.g.io_weight: must be between 1 and 10000",
            "models.g.tasks_max: must be at least 1",
            "models.g.memory_high: 9GiB is above memory_max (8GiB)",
            "models.g.gpus[2]: GPU 1 is listed twice",
            "models.g.tensor_parallel_size: 2 does not match the 3 GPU(s)",
        ];
        for e in expect {
            assert!(
                ps.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {ps:#?}"
            );
        }
        assert_eq!(ps.len(), expect.len(), "{ps:#?}");
        assert!(problems(
            "[models.g]\nkind = \"vllm\"\nmodel = \"m\"\ngpus = [0, 1]\ntensor_parallel_size = 2\ncpu_quota = \"400%\"\nallowed_cpus = \"0-7,16\"\n"
        )
        .is_empty());
    }

    #[test]
    fn unknown_keys_are_parse_errors() {
        let e =
            Config::parse("[models.a]\nkind = \"command\"\ncommand = [\"x\"]\nmax_concurent = 3\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("max_concurent"), "{e}");
        let e = Config::parse("[models.a]\nkind = \"tgi\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tgi") && e.contains("vllm"), "{e}");
    }

    #[test]
    fn port_range_exhaustion_and_listener_clash() {
        let ps = problems(
            r#"
            [server]
            listen = "127.0.0.1:9001"
            port_range = [9000, 9001]
            [models.a]
            kind = "command"
            command = ["x"]
            [models.b]
            kind = "command"
            command = ["x"]
            [models.c]
            kind = "command"
            command = ["x"]
            port = 9001
            "#,
        );
        assert!(
            ps.iter()
                .any(|p| p
                    .starts_with("models.b.port: server.port_range [9000, 9001] has no free port")),
            "{ps:#?}"
        );
        assert!(
            ps.iter().any(
                |p| p.starts_with("models.c.port: 9001 is the port llmvisor itself listens on")
            ),
            "{ps:#?}"
        );
    }

    #[test]
    fn instance_names() {
        assert!(valid_instance_name("qwen2.5-7b_instruct").is_ok());
        assert!(valid_instance_name("llama3:8b").is_ok());
        assert!(valid_instance_name("-x").is_err());
        assert!(valid_instance_name("a@b").is_err());
        assert!(valid_instance_name("a b").is_err());
        assert!(valid_instance_name(&"x".repeat(300)).is_err());
    }
}
