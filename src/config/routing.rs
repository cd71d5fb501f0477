//! The routing part of the configuration: `[routes]`, `[clients]`, `[providers]` and
//! `[admin]`, their checks, and the resolved forms the router and `auth` use.
//!
//! Secrets are never kept in the checked settings as text: a client's key becomes its
//! SHA-256, and a key file is only *named* here. `Settings::load_secrets` reads the
//! files (at start and on every reload).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::problems::{Ctx, Problems};
use super::{HumanDuration, Problem};

/// Whether requests must carry a client key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Every request on `/v1/*` carries `Authorization: Bearer <key>` of a client.
    #[default]
    Required,
    /// No keys: every request is the client `anonymous`, allowed every model. Only on
    /// loopback listeners unless `server.auth_none_on_network = true`.
    None,
}

/// How a queue orders waiting requests of a client.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Served before every waiting `batch` request.
    #[default]
    Interactive,
    /// Served when no interactive request waits.
    Batch,
}

impl Priority {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// `[clients.<name>]`: one caller of the API and its key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// A file holding the key (one line). A relative name is looked up in
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`) when it is set, else next
    /// to the configuration file.
    pub key_file: Option<String>,
    /// The key's SHA-256 in hex (`printf %s "$KEY" | sha256sum`), so the key itself
    /// need not be on the host at all.
    pub key_sha256: Option<String>,
    /// Public model names (routes, models, aliases) this client may use; `*` and `?`
    /// are wildcards. Default: every name.
    #[serde(default = "every_model")]
    pub models: Vec<String>,
    /// Requests per minute at most; 0 or absent: no limit.
    #[serde(default)]
    pub rpm: u32,
    /// Tokens per minute at most (estimated prompt tokens plus `max_tokens`); 0 or
    /// absent: no limit.
    #[serde(default)]
    pub tpm: u32,
    /// `interactive` (default) or `batch`: interactive requests go first in every
    /// queue.
    #[serde(default)]
    pub priority: Priority,
}

fn every_model() -> Vec<String> {
    vec!["*".into()]
}

/// `[admin]`: the key that guards `/admin/*`. Without it, `/admin/*` answers only
/// on loopback connections.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// As `clients.<name>.key_file`.
    pub key_file: Option<String>,
    /// As `clients.<name>.key_sha256`.
    pub key_sha256: Option<String>,
}

/// `[providers.<name>]`: an OpenAI-compatible endpoint elsewhere: a cloud API or a
/// peer host (another llmvisor, an Ollama server) on the tailnet.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL up to and including the API version, e.g.
    /// `https://api.openai.com/v1` or `http://kratos:11434/v1`.
    pub base_url: String,
    /// A file with the provider's API key, sent as `Authorization: Bearer`. Resolved
    /// like `clients.<name>.key_file`. The client's own key is never forwarded.
    pub key_file: Option<String>,
    /// Longest wait for the provider's response headers.
    #[serde(default = "provider_timeout")]
    pub timeout: HumanDuration,
    /// Model names as llmvisor knows them → names the provider knows them by.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Context window of the provider's models in tokens, for the context guard;
    /// absent: never excluded for length.
    pub context_length: Option<u32>,
    /// Requests in flight at this provider at most; further ones go to the next
    /// target (or wait nowhere: the route's fallback). 0: no limit.
    #[serde(default)]
    pub max_concurrent: u32,
    /// Active health check: a path on the provider's host (`/health` for llmvisor,
    /// `/api/version` for Ollama) polled every `health_interval`; absent: only the
    /// circuit breaker judges the provider.
    pub health_path: Option<String>,
    /// How often the health path is polled.
    #[serde(default = "health_interval")]
    pub health_interval: HumanDuration,
    /// How long one health check may take.
    #[serde(default = "health_timeout")]
    pub health_timeout: HumanDuration,
    /// Consecutive failed checks after which the provider is down.
    #[serde(default = "three")]
    pub unhealthy_after: u32,
    /// Consecutive passed checks after which a down provider is up again.
    #[serde(default = "two")]
    pub healthy_after: u32,
    /// Price in USD per million input (prompt) tokens, for the usage store's cost.
    pub price_input: Option<f64>,
    /// Price in USD per million output (completion) tokens.
    pub price_output: Option<f64>,
}

fn provider_timeout() -> HumanDuration {
    HumanDuration::secs(120)
}
fn health_interval() -> HumanDuration {
    HumanDuration::secs(5)
}
fn health_timeout() -> HumanDuration {
    HumanDuration::secs(2)
}
fn three() -> u32 {
    3
}
fn two() -> u32 {
    2
}

/// How a rule or route picks among several equal targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The target with the fewest requests in flight and waiting.
    #[default]
    LeastOutstanding,
    /// Each target in turn.
    RoundRobin,
    /// A ready target over one that would need a cold start; least-outstanding
    /// among those.
    PreferReady,
}

/// `[routes.<public-name>]`: a public model name served by one or more targets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Every target the route sends to: model instance names, or `provider/model`.
    pub targets: Vec<String>,
    /// Tried in order; the first that matches and has a target with room for the
    /// request's context picks the targets.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The targets used when no rule picks; default: all of `targets`.
    pub default: Option<Vec<String>>,
    /// Tried in order when the chosen targets cannot serve (failed, queue full,
    /// breaker open, an upstream error before the first byte).
    #[serde(default)]
    pub fallback: Vec<String>,
    /// How to pick among several equal targets.
    #[serde(default)]
    pub strategy: Strategy,
    /// A Hugging Face `tokenizer.json` for the prompt estimate the rules test;
    /// default: the first target's tokenizer, else the heuristic.
    pub tokenizer: Option<String>,
}

/// One `[[routes.<name>.rules]]` entry: conditions (all must hold) and targets.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Matches when the estimated prompt has at least this many tokens.
    pub min_prompt_tokens: Option<u32>,
    /// Matches when the estimated prompt has at most this many tokens.
    pub max_prompt_tokens: Option<u32>,
    /// Matches requests of these clients (names from `[clients]`, or `anonymous`).
    pub clients: Option<Vec<String>>,
    /// Matches these endpoints: `chat/completions`, `completions`, `embeddings`,
    /// `rerank`, `responses`.
    pub endpoints: Option<Vec<String>>,
    /// Matches while one of these profiles (`[profiles.<name>]`) is active.
    pub profiles: Option<Vec<String>>,
    /// The targets this rule picks (each one of the route's `targets`).
    pub targets: Vec<String>,
    /// Overrides the route's strategy for this rule.
    pub strategy: Option<Strategy>,
}

/// The endpoints a rule can name.
pub const ENDPOINTS: [&str; 5] = [
    "chat/completions",
    "completions",
    "embeddings",
    "rerank",
    "responses",
];

/// The client name of requests when `auth = "none"`.
pub const ANONYMOUS: &str = "anonymous";

/// Where a key comes from, before the files are read.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The SHA-256 of the key, given in the configuration.
    Sha256([u8; 32]),
    /// A file to read (as written; resolved by `load_secrets`).
    File(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Sha256(_) => f.write_str("Sha256(..)"),
            KeySource::File(p) => write!(f, "File({p:?})"),
        }
    }
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A checked client.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSpec {
    /// Its name (the *source* in rules, logs and metrics).
    pub name: String,
    /// Where its key comes from.
    pub key: KeySource,
    /// SHA-256 of the key once known (`key_sha256`, or after `load_secrets`).
    pub key_hash: Option<[u8; 32]>,
    /// Allowed public names (globs).
    pub models: Vec<String>,
    /// Requests per minute (0: none).
    pub rpm: u32,
    /// Tokens per minute (0: none).
    pub tpm: u32,
    /// Queue priority.
    pub priority: Priority,
}

/// The checked `[admin]` key.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminSpec {
    /// Where the key comes from.
    pub key: KeySource,
    /// SHA-256 of the key once known.
    pub key_hash: Option<[u8; 32]>,
}

/// A checked provider.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderSpec {
    /// Its name (the part before `/` in targets).
    pub name: String,
    /// `http` or `https` URL without a trailing `/`.
    pub base_url: String,
    /// Key file as written.
    pub key_file: Option<String>,
    /// The key, once read by `load_secrets`.
    pub api_key: Option<Secret>,
    /// Header timeout.
    pub timeout: Duration,
    /// Name mapping.
    pub models: BTreeMap<String, String>,
    /// Context window, if known.
    pub context_length: Option<u32>,
    /// In-flight limit (0: none).
    pub max_concurrent: u32,
    /// Active health check, if any.
    pub health: Option<HealthCheckSpec>,
    /// USD per million prompt and completion tokens, if priced.
    pub prices: Option<(f64, f64)>,
}

/// An active health check of a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckSpec {
    /// Path on the provider's host.
    pub path: String,
    /// Poll interval.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Failures in a row that mark it down.
    pub unhealthy_after: u32,
    /// Successes in a row that mark it up.
    pub healthy_after: u32,
}

/// A route target, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetRef {
    /// A model instance by name.
    Model(String),
    /// A provider and the model name asked of it (after mapping).
    Provider {
        /// Provider name.
        provider: String,
        /// The name as written after `provider/` (what llmvisor calls it).
        model: String,
    },
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetRef::Model(m) => f.write_str(m),
            TargetRef::Provider { provider, model } => write!(f, "{provider}/{model}"),
        }
    }
}

/// A checked rule.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSpec {
    /// See [`RuleConfig::min_prompt_tokens`].
    pub min_prompt_tokens: Option<u32>,
    /// See [`RuleConfig::max_prompt_tokens`].
    pub max_prompt_tokens: Option<u32>,
    /// See [`RuleConfig::clients`].
    pub clients: Option<Vec<String>>,
    /// See [`RuleConfig::endpoints`].
    pub endpoints: Option<Vec<String>>,
    /// See [`RuleConfig::profiles`].
    pub profiles: Option<Vec<String>>,
    /// Targets picked.
    pub targets: Vec<TargetRef>,
    /// Strategy among them.
    pub strategy: Strategy,
}

/// A checked route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec {
    /// The public name.
    pub name: String,
    /// All targets.
    pub targets: Vec<TargetRef>,
    /// Rules in order.
    pub rules: Vec<RuleSpec>,
    /// Targets when no rule picks.
    pub default: Vec<TargetRef>,
    /// Fallback chain.
    pub fallback: Vec<TargetRef>,
    /// Strategy of `default`.
    pub strategy: Strategy,
    /// Tokenizer for rule estimates.
    pub tokenizer: Option<String>,
}

/// Parse a hex SHA-256.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a key as presented.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn key_source(
    p: &mut Problems,
    at: &str,
    key_file: &Option<String>,
    key_sha256: &Option<String>,
) -> Option<KeySource> {
    match (key_file, key_sha256) {
        (Some(_), Some(_)) => {
            p.add(at, "set either key_file or key_sha256, not both");
            None
        }
        (None, None) => {
            p.add(
                at,
                "needs a key: key_file = \"<file with the key>\" or key_sha256 = \"<hex>\"",
            );
            None
        }
        (Some(f), None) if f.trim().is_empty() => {
            p.add(format!("{at}.key_file"), "cannot be empty");
            None
        }
        (Some(f), None) => Some(KeySource::File(f.clone())),
        (None, Some(h)) => match parse_sha256(h) {
            Some(hash) => Some(KeySource::Sha256(hash)),
            None => {
                p.add(
                    format!("{at}.key_sha256"),
                    "must be 64 hex digits (printf %s \"$KEY\" | sha256sum)",
                );
                None
            }
        },
    }
}

/// Everything routing-related the validator resolved.
pub(super) struct Resolved {
    pub routes: Vec<RouteSpec>,
    pub clients: Vec<ClientSpec>,
    pub providers: Vec<ProviderSpec>,
    pub admin: Option<AdminSpec>,
}

/// Check `[providers]`, `[routes]`, `[clients]` and `[admin]` against the models
/// the model section resolved.
pub(super) fn check(cx: &mut Ctx<'_>) -> Resolved {
    Resolved {
        providers: check_providers(cx),
        routes: check_routes(cx),
        clients: check_clients(cx),
        admin: check_admin(cx),
    }
}

/// `[providers.<name>]`: external OpenAI-compatible APIs.
fn check_providers(cx: &mut Ctx<'_>) -> Vec<ProviderSpec> {
    let providers = &cx.config.providers;
    let model_names: HashSet<&str> = cx.models.iter().map(|m| m.name.as_str()).collect();
    let p = &mut cx.problems;
    let mut out_providers = Vec::new();
    for (name, c) in providers {
        let at = |k: &str| format!("providers.{name}.{k}");
        if let Err(e) = super::problems::valid_instance_name(name) {
            p.add(format!("providers.{name}"), e);
        }
        if model_names.contains(name.as_str()) {
            p.add(
                format!("providers.{name}"),
                format!(
                    "`{name}` is also a model instance name; a target `{name}/…` would be ambiguous"
                ),
            );
        }
        let base = c.base_url.trim().trim_end_matches('/').to_string();
        let ok_url = match base.split_once("://") {
            Some(("http" | "https", rest)) => !rest.is_empty() && !rest.contains(['?', '#', ' ']),
            _ => false,
        };
        if !ok_url {
            p.add(
                at("base_url"),
                format!(
                    "`{}` is not an http:// or https:// URL, e.g. \"https://api.openai.com/v1\"",
                    c.base_url
                ),
            );
        }
        if c.timeout.is_zero() {
            p.add(at("timeout"), "must be more than 0");
        }
        if let Some(f) = &c.key_file
            && f.trim().is_empty()
        {
            p.add(at("key_file"), "cannot be empty");
        }
        let health = match &c.health_path {
            None => None,
            Some(path) => {
                if !path.starts_with('/') {
                    p.add(at("health_path"), "must start with `/`, e.g. \"/health\"");
                }
                if c.health_interval.is_zero() {
                    p.add(at("health_interval"), "must be more than 0");
                }
                if c.health_timeout.is_zero() {
                    p.add(at("health_timeout"), "must be more than 0");
                }
                if c.unhealthy_after == 0 {
                    p.add(at("unhealthy_after"), "must be at least 1");
                }
                if c.healthy_after == 0 {
                    p.add(at("healthy_after"), "must be at least 1");
                }
                Some(HealthCheckSpec {
                    path: path.clone(),
                    interval: c.health_interval.0,
                    timeout: c.health_timeout.0,
                    unhealthy_after: c.unhealthy_after,
                    healthy_after: c.healthy_after,
                })
            }
        };
        if c.context_length == Some(0) {
            p.add(at("context_length"), "must be more than 0");
        }
        for (k, v) in [
            ("price_input", c.price_input),
            ("price_output", c.price_output),
        ] {
            if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
                p.add(
                    at(k),
                    "must be a price of 0 or more (USD per million tokens)",
                );
            }
        }
        let prices = match (c.price_input, c.price_output) {
            (None, None) => None,
            (i, o) => Some((i.unwrap_or(0.0), o.unwrap_or(0.0))),
        };
        out_providers.push(ProviderSpec {
            prices,
            name: name.clone(),
            base_url: base,
            key_file: c.key_file.clone(),
            api_key: None,
            timeout: c.timeout.0,
            models: c.models.clone(),
            context_length: c.context_length,
            max_concurrent: c.max_concurrent,
            health,
        });
    }

    out_providers
}

/// A route's target: a model instance, or `provider/model`.
fn target(cx: &mut Ctx<'_>, at: String, t: &str) -> Option<TargetRef> {
    let providers = &cx.config.providers;
    if cx.models.iter().any(|m| m.name == t) {
        return Some(TargetRef::Model(t.to_string()));
    }
    let p = &mut cx.problems;
    let public = &cx.public;
    if let Some((prov, model)) = t.split_once('/') {
        if providers.contains_key(prov) && !model.is_empty() {
            return Some(TargetRef::Provider {
                provider: prov.to_string(),
                model: model.to_string(),
            });
        }
        if !providers.contains_key(prov) {
            p.add(at, format!("`{t}`: there is no [providers.{prov}]"));
            return None;
        }
    }
    let hint = match public.get(t) {
        Some(owner) => format!(" (it is {owner}; name the instance itself)"),
        None => String::new(),
    };
    p.add(
        at,
        format!("`{t}` is neither a model instance nor provider/model{hint}"),
    );
    None
}

/// `[routes.<name>]`: targets, rules, default, fallback.
fn check_routes(cx: &mut Ctx<'_>) -> Vec<RouteSpec> {
    let config = cx.config;
    let (routes, clients) = (&config.routes, &config.clients);
    let profile_names: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
    let mut out_routes = Vec::new();
    for (name, r) in routes {
        let at = |k: &str| format!("routes.{name}.{k}");
        if name.trim().is_empty() {
            cx.problems.add("routes", "a route name cannot be empty");
        }
        if let Some(owner) = cx.public.get(name.as_str()) {
            cx.problems.add(
                format!("routes.{name}"),
                format!("`{name}` is already the name of {owner}"),
            );
        }
        if r.targets.is_empty() {
            cx.problems
                .add(at("targets"), "a route needs at least one target");
        }
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        for (i, t) in r.targets.iter().enumerate() {
            if !seen.insert(t.as_str()) {
                cx.problems.add(
                    format!("routes.{name}.targets[{i}]"),
                    format!("`{t}` is listed twice"),
                );
                continue;
            }
            if let Some(t) = target(cx, format!("routes.{name}.targets[{i}]"), t) {
                targets.push(t);
            }
        }
        let member = |p: &mut Problems, at: String, list: &[String]| -> Vec<TargetRef> {
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                if !r.targets.contains(t) {
                    p.add(
                        format!("{at}[{i}]"),
                        format!("`{t}` is not one of routes.{name}.targets"),
                    );
                } else if let Some(t) = targets.iter().find(|x| x.to_string() == *t) {
                    out.push(t.clone());
                }
            }
            out
        };
        let mut rules = Vec::new();
        for (i, rule) in r.rules.iter().enumerate() {
            let rat = format!("routes.{name}.rules[{i}]");
            if rule.targets.is_empty() {
                cx.problems
                    .add(format!("{rat}.targets"), "a rule needs at least one target");
            }
            let rtargets = member(&mut cx.problems, format!("{rat}.targets"), &rule.targets);
            if let (Some(lo), Some(hi)) = (rule.min_prompt_tokens, rule.max_prompt_tokens)
                && lo > hi
            {
                cx.problems.add(
                    rat.clone(),
                    format!("min_prompt_tokens ({lo}) is more than max_prompt_tokens ({hi}); no request can match"),
                );
            }
            if let Some(cs) = &rule.clients {
                for (j, c) in cs.iter().enumerate() {
                    if c != ANONYMOUS && !clients.contains_key(c) {
                        cx.problems.add(
                            format!("{rat}.clients[{j}]"),
                            format!("there is no [clients.{c}]"),
                        );
                    }
                }
            }
            if let Some(es) = &rule.endpoints {
                for (j, e) in es.iter().enumerate() {
                    if !ENDPOINTS.contains(&e.as_str()) {
                        cx.problems.add(
                            format!("{rat}.endpoints[{j}]"),
                            format!(
                                "`{e}` is not an endpoint; use one of {}",
                                ENDPOINTS.join(", ")
                            ),
                        );
                    }
                }
            }
            if let Some(ps) = &rule.profiles {
                for (j, name) in ps.iter().enumerate() {
                    if !profile_names.contains(&name.as_str()) {
                        cx.problems.add(
                            format!("{rat}.profiles[{j}]"),
                            format!("there is no [profiles.{name}]"),
                        );
                    }
                }
            }
            rules.push(RuleSpec {
                min_prompt_tokens: rule.min_prompt_tokens,
                max_prompt_tokens: rule.max_prompt_tokens,
                clients: rule.clients.clone(),
                endpoints: rule.endpoints.clone(),
                profiles: rule.profiles.clone(),
                targets: rtargets,
                strategy: rule.strategy.unwrap_or(r.strategy),
            });
        }
        let default = match &r.default {
            Some(d) => {
                if d.is_empty() {
                    cx.problems.add(
                        at("default"),
                        "cannot be empty; leave it out to use every target",
                    );
                }
                member(&mut cx.problems, at("default"), d)
            }
            None => targets.clone(),
        };
        let mut fallback = Vec::new();
        for (i, t) in r.fallback.iter().enumerate() {
            if let Some(t) = target(cx, format!("routes.{name}.fallback[{i}]"), t) {
                fallback.push(t);
            }
        }
        if let Some(t) = &r.tokenizer
            && t.trim().is_empty()
        {
            cx.problems.add(at("tokenizer"), "cannot be empty");
        }
        out_routes.push(RouteSpec {
            name: name.clone(),
            targets,
            rules,
            default,
            fallback,
            strategy: r.strategy,
            tokenizer: r.tokenizer.clone(),
        });
    }

    out_routes
}

/// `[clients.<name>]`: keys, model grants, limits.
fn check_clients(cx: &mut Ctx<'_>) -> Vec<ClientSpec> {
    let clients = &cx.config.clients;
    let p = &mut cx.problems;
    let mut out_clients = Vec::new();
    for (name, c) in clients {
        let at = format!("clients.{name}");
        if name == ANONYMOUS {
            p.add(
                at.clone(),
                "`anonymous` is the name of requests without a key; choose another",
            );
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            p.add(
                at.clone(),
                "a client name may use letters, digits, `.`, `_`, `-`",
            );
        }
        let key = key_source(p, &at, &c.key_file, &c.key_sha256);
        for (i, g) in c.models.iter().enumerate() {
            if g.trim().is_empty() {
                p.add(format!("{at}.models[{i}]"), "cannot be empty");
            }
        }
        if let Some(key) = key {
            out_clients.push(ClientSpec {
                name: name.clone(),
                key_hash: match &key {
                    KeySource::Sha256(h) => Some(*h),
                    KeySource::File(_) => None,
                },
                key,
                models: c.models.clone(),
                rpm: c.rpm,
                tpm: c.tpm,
                priority: c.priority,
            });
        }
    }
    let mut by_hash: HashMap<[u8; 32], &str> = HashMap::new();
    for c in &out_clients {
        if let Some(h) = c.key_hash
            && let Some(other) = by_hash.insert(h, &c.name)
        {
            p.add(
                format!("clients.{}.key_sha256", c.name),
                format!("is the same key as clients.{other}; each client needs its own key"),
            );
        }
    }

    out_clients
}

/// `[admin]`: the key of /admin.
fn check_admin(cx: &mut Ctx<'_>) -> Option<AdminSpec> {
    let p = &mut cx.problems;
    cx.config.admin.as_ref().and_then(|a| {
        key_source(p, "admin", &a.key_file, &a.key_sha256).map(|key| AdminSpec {
            key_hash: match &key {
                KeySource::Sha256(h) => Some(*h),
                KeySource::File(_) => None,
            },
            key,
        })
    })
}

/// Where a key file named in the configuration is: absolute as written; relative in
/// `$CREDENTIALS_DIRECTORY` when set, else next to the configuration file.
pub fn resolve_key_path(name: &str, config_dir: &Path, credentials: Option<&Path>) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match credentials {
        Some(dir) => dir.join(p),
        None => config_dir.join(p),
    }
}

/// Read one key file: the first line, trimmed.
fn read_key(path: &Path) -> Result<String, String> {
    let text = read_text(path)?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(key)
}

/// Read a whole file (`[telemetry] headers_file`).
fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// `headers_file`'s `Name: value` lines (blank lines and `#` comments skipped),
/// checked as `[telemetry] headers` are and marked sensitive; or every problem,
/// by line, none quoting a value.
fn header_lines(
    text: &str,
    already: &[(http::HeaderName, http::HeaderValue)],
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, Vec<String>> {
    let mut out: Vec<(http::HeaderName, http::HeaderValue)> = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let Some((name, value)) = line.split_once(':') else {
            problems.push(format!("line {n}: not a `Name: value` header"));
            continue;
        };
        // Not quoted: a line such as `Authorization=Bearer sk-…:…` puts a secret
        // before the first colon.
        if http::HeaderName::from_bytes(name.trim().as_bytes()).is_err() {
            problems.push(format!(
                "line {n}: what comes before the first `:` is not a header name"
            ));
            continue;
        }
        match super::validate::export_header(name.trim(), value) {
            Ok((name, mut value)) => {
                if already.iter().chain(&out).any(|(k, _)| *k == name) {
                    problems.push(format!(
                        "line {n}: `{name}` is given twice (here or in telemetry.headers)"
                    ));
                    continue;
                }
                value.set_sensitive(true);
                out.push((name, value));
            }
            Err(e) => problems.push(format!("line {n}: {e}")),
        }
    }
    if out.is_empty() && problems.is_empty() {
        problems.push("holds no header (`Name: value` lines)".into());
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `[telemetry] ca_file`: the certificates of a PEM file, each one a root rustls
/// accepts.
fn read_roots(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = read_text(path)?;
    let mut roots = Vec::new();
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
        store
            .add(cert.clone())
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
        roots.push(cert.to_vec());
    }
    if roots.is_empty() {
        return Err(format!(
            "{} holds no certificate (PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(roots)
}

/// How `load_secrets` treats a relative key file that is missing while
/// `$CREDENTIALS_DIRECTORY` is unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretsMode {
    /// Serving: every key must be readable.
    Serve,
    /// `check-config`: such a file is a systemd credential that exists only when the
    /// service runs (the NixOS module validates at build time), so it is noted, not
    /// an error.
    Check,
    /// Commands that only read the layout (`status`, `render-unit`, `logs`): no file
    /// is read.
    Skip,
}

impl super::Settings {
    /// Read every key file (client keys are hashed at once and the text dropped;
    /// provider keys are kept for sending). Returns problems and notes.
    pub fn load_secrets(
        &mut self,
        config_dir: &Path,
        credentials: Option<&Path>,
        mode: SecretsMode,
    ) -> (Vec<Problem>, Vec<String>) {
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        if mode == SecretsMode::Skip {
            return (problems, notes);
        }
        let mut read = |at: String,
                        name: &str,
                        parse: fn(&Path) -> Result<String, String>|
         -> Option<String> {
            let path = resolve_key_path(name, config_dir, credentials);
            match parse(&path) {
                Ok(k) => {
                    use std::os::unix::fs::PermissionsExt;
                    if let Ok(meta) = std::fs::metadata(&path)
                        && meta.permissions().mode() & 0o004 != 0
                    {
                        notes.push(format!(
                            "{at}: {} is readable by every user on this host; chmod o-r it (or pass it with systemd's LoadCredential=)",
                            path.display()
                        ));
                    }
                    Some(k)
                }
                Err(_)
                    if mode == SecretsMode::Check
                        && credentials.is_none()
                        && !Path::new(name).is_absolute()
                        && !path.exists() =>
                {
                    notes.push(format!(
                        "{at}: `{name}` not checked: a credential read from $CREDENTIALS_DIRECTORY when the service runs"
                    ));
                    None
                }
                Err(e) => {
                    problems.push(Problem {
                        path: at,
                        message: e,
                    });
                    None
                }
            }
        };
        for c in &mut self.clients {
            if let KeySource::File(f) = &c.key {
                c.key_hash =
                    read(format!("clients.{}.key_file", c.name), f, read_key).map(|k| hash_key(&k));
            }
        }
        if let Some(a) = &mut self.admin
            && let KeySource::File(f) = &a.key
        {
            a.key_hash = read("admin.key_file".into(), f, read_key).map(|k| hash_key(&k));
        }
        for pr in &mut self.providers {
            if let Some(f) = &pr.key_file {
                pr.api_key =
                    read(format!("providers.{}.key_file", pr.name), f, read_key).map(Secret);
            }
        }
        // Said after the files are read (`read` holds `notes` until then).
        let mut plain_notes = Vec::new();
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            let plain = endpoint
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http"))
                .and_then(|u| u.host().map(str::to_owned));
            if let Some(host) = &plain {
                let local = host == "localhost"
                    || host
                        .trim_matches(|c| c == '[' || c == ']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if self.telemetry.headers_file.is_some() && !local {
                    plain_notes.push(format!(
                        "telemetry.headers_file: its headers go to {host} over plain http://, readable on the way unless the path is encrypted (a tailnet); use https://"
                    ));
                }
                if self.telemetry.ca_file.is_some() {
                    plain_notes
                        .push("telemetry.ca_file: not used: otlp_endpoint is http://".into());
                }
            }
            if let Some(f) = &self.telemetry.headers_file
                && let Some(text) = read("telemetry.headers_file".into(), f, read_text)
            {
                let export = &mut self.trace_export;
                match header_lines(&text, &export.headers) {
                    Ok(lines) => export.headers.extend(lines),
                    Err(e) => problems.extend(e.into_iter().map(|message| Problem {
                        path: "telemetry.headers_file".into(),
                        message,
                    })),
                }
            }
            if let Some(f) = &self.telemetry.ca_file {
                match read_roots(&config_dir.join(f)) {
                    Ok(roots) => self.trace_export.roots = Some(roots),
                    Err(message) => problems.push(Problem {
                        path: "telemetry.ca_file".into(),
                        message,
                    }),
                }
            }
        }
        notes.extend(plain_notes);
        let mut seen: HashMap<[u8; 32], String> = HashMap::new();
        for c in &self.clients {
            if let Some(h) = c.key_hash
                && let Some(other) = seen.insert(h, c.name.clone())
            {
                problems.push(Problem {
                    path: format!("clients.{}", c.name),
                    message: format!(
                        "has the same key as clients.{other}; each client needs its own key"
                    ),
                });
            }
        }
        if let Some(a) = &self.admin
            && let Some(h) = a.key_hash
            && let Some(c) = seen.get(&h)
        {
            problems.push(Problem {
                path: "admin".into(),
                message: format!(
                    "the admin key is also the key of clients.{c}; use a separate key"
                ),
            });
        }
        (problems, notes)
    }
}
