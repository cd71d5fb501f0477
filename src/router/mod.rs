//! Choosing where a request goes. A public name is a route (rules over several
//! targets, with fallback), a model instance, or an alias of one. For a route the
//! router estimates the prompt, walks the rules in order, keeps the targets whose
//! context window holds the request, orders them by the strategy (least outstanding
//! first by default, unavailable ones last) and appends the fallback chain. The API
//! then tries that list in order, retrying only before the first byte.

pub mod breaker;
pub mod dispatch;
pub mod estimate;
pub mod provider;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokenizers::Tokenizer;

use crate::config::routing::resolve_key_path;
use crate::config::{Problem, RouteSpec, RuleSpec, Settings, Strategy, TargetRef};
use crate::fleet::{Fleet, Instance, State};
use crate::proxy::Upstream;
use breaker::{Breaker, RetryBudget};
use estimate::Estimator;
use provider::Provider;

/// What a public name stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A route.
    Route,
    /// A model instance's own name.
    Model,
    /// An alias of a model instance.
    Alias,
}

/// One name clients can ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicName {
    /// The name.
    pub name: String,
    /// Route, model or alias.
    pub kind: NameKind,
    /// The instance it reaches (models and aliases).
    pub instance: Option<String>,
    /// Its targets (routes).
    pub targets: Vec<String>,
}

/// Tokenizers named in the configuration, loaded once per file.
#[derive(Clone, Default)]
pub struct Tokenizers {
    by_path: HashMap<String, Arc<Tokenizer>>,
}

impl std::fmt::Debug for Tokenizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_path.keys()).finish()
    }
}

impl Tokenizers {
    /// Load every `tokenizer` of models and routes; a relative path is taken from
    /// the configuration file's directory. Every file that fails is a problem.
    pub fn load(settings: &Settings, config_dir: &Path) -> Result<Self, Vec<Problem>> {
        let mut named: Vec<(String, &str)> = Vec::new();
        for m in &settings.models {
            if let Some(t) = &m.tokenizer {
                named.push((format!("models.{}.tokenizer", m.name), t));
            }
        }
        for r in &settings.routes {
            if let Some(t) = &r.tokenizer {
                named.push((format!("routes.{}.tokenizer", r.name), t));
            }
        }
        let mut out = Self::default();
        let mut problems = Vec::new();
        for (at, name) in named {
            if out.by_path.contains_key(name) {
                continue;
            }
            let path = resolve_key_path(name, config_dir, None);
            match Tokenizer::from_file(&path) {
                Ok(t) => {
                    out.by_path.insert(name.to_string(), Arc::new(t));
                }
                Err(e) => problems.push(Problem {
                    path: at,
                    message: format!("cannot load {} as a tokenizer.json: {e}", path.display()),
                }),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    fn get(&self, name: Option<&String>) -> Option<Arc<Tokenizer>> {
        name.and_then(|n| self.by_path.get(n)).cloned()
    }
}

enum Entry {
    Route(usize),
    Model(String),
}

struct Route {
    spec: RouteSpec,
    tokenizer: Option<Arc<Tokenizer>>,
    /// Round-robin counters: one per rule, then one for `default`.
    turns: Vec<AtomicUsize>,
}

/// Where one attempt goes.
#[derive(Clone)]
pub enum Target {
    /// A local model instance.
    Model(Arc<Instance>),
    /// An external provider and the model name as llmvisor knows it.
    Provider {
        /// The provider.
        provider: Arc<Provider>,
        /// Model name before the provider's mapping.
        model: String,
    },
}

/// One entry of a plan.
#[derive(Clone)]
pub struct Candidate {
    /// Where.
    pub target: Target,
    /// `instance` or `provider/model`, for headers, logs and metrics.
    pub label: String,
    /// The target's breaker.
    pub breaker: Arc<Breaker>,
    /// Whether it comes from the fallback chain.
    pub fallback: bool,
}

/// The ordered targets one request may try.
pub struct Plan {
    /// The public name asked for (the route, or the model or alias).
    pub route: String,
    /// Whether that name is a route.
    pub is_route: bool,
    /// Targets in the order to try them.
    pub candidates: Vec<Candidate>,
}

/// Why no plan could be made.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// No route, model or alias of that name.
    NotFound,
    /// No target's server has the endpoint (a pass-through path its kind lacks).
    NotServed,
    /// No target's context window holds the request.
    ContextTooLong {
        /// Estimated prompt tokens.
        prompt: u64,
        /// `max_tokens` asked for.
        max_tokens: u64,
        /// The largest window among the targets.
        limit: u32,
    },
}

/// What the router needs to know about a request.
pub struct Request<'a, 'b> {
    /// The client's name.
    pub client: &'a str,
    /// `chat/completions`, `completions`, `embeddings`, `rerank`, `responses`, or a
    /// pass-through path without its `/` (only targets whose kind serves it are
    /// planned).
    pub endpoint: &'a str,
    /// Prompt estimates.
    pub estimate: &'a Estimator<'b>,
    /// The profiles active now (asked for only when a rule tests them).
    pub profiles: &'a dyn Fn() -> Vec<String>,
}

/// The routing table in force; rebuilt on reload.
pub struct Router {
    names: HashMap<String, Entry>,
    listing: Vec<PublicName>,
    routes: Vec<Route>,
    providers: HashMap<String, Arc<Provider>>,
    model_breakers: HashMap<String, Arc<Breaker>>,
    model_tokenizers: HashMap<String, Arc<Tokenizer>>,
    budget: Arc<RetryBudget>,
}

impl Router {
    /// Build the table from validated settings (secrets loaded) and their
    /// tokenizers. Breakers and provider health carry over from `previous` for
    /// targets that stay; health checks of providers start here.
    pub fn new(
        settings: &Settings,
        tokenizers: &Tokenizers,
        upstream: Option<&Upstream>,
        previous: Option<&Router>,
    ) -> Self {
        let s = &settings.server;
        let new_breaker = || Arc::new(Breaker::new(s.breaker_failures, s.breaker_cooldown.0));
        let keep = |b: &Arc<Breaker>| b.has_settings(s.breaker_failures, s.breaker_cooldown.0);
        let mut listing = Vec::new();
        let mut names = HashMap::new();
        for r in &settings.routes {
            listing.push(PublicName {
                name: r.name.clone(),
                kind: NameKind::Route,
                instance: None,
                targets: r.targets.iter().map(ToString::to_string).collect(),
            });
        }
        for m in &settings.models {
            listing.push(PublicName {
                name: m.name.clone(),
                kind: NameKind::Model,
                instance: Some(m.name.clone()),
                targets: Vec::new(),
            });
            for a in &m.aliases {
                listing.push(PublicName {
                    name: a.clone(),
                    kind: NameKind::Alias,
                    instance: Some(m.name.clone()),
                    targets: Vec::new(),
                });
            }
        }
        for (i, r) in settings.routes.iter().enumerate() {
            names.insert(r.name.clone(), Entry::Route(i));
        }
        for p in &listing {
            if let Some(i) = &p.instance {
                names.insert(p.name.clone(), Entry::Model(i.clone()));
            }
        }

        let mut model_tokenizers = HashMap::new();
        let mut model_breakers = HashMap::new();
        for m in &settings.models {
            if let Some(t) = tokenizers.get(m.tokenizer.as_ref()) {
                model_tokenizers.insert(m.name.clone(), t);
            }
            let b = previous
                .and_then(|p| p.model_breakers.get(&m.name).cloned())
                .filter(keep)
                .unwrap_or_else(new_breaker);
            model_breakers.insert(m.name.clone(), b);
        }
        let mut providers = HashMap::new();
        for spec in &settings.providers {
            let old = previous.and_then(|p| p.providers.get(&spec.name));
            let breaker = old
                .map(|o| o.breaker.clone())
                .filter(keep)
                .unwrap_or_else(new_breaker);
            let p = Provider::new(spec.clone(), breaker);
            if let Some(o) = old
                && o.spec == *spec
            {
                p.inherit(o);
            }
            if let Some(u) = upstream {
                p.start_health(u.clone());
            }
            providers.insert(spec.name.clone(), p);
        }
        let routes = settings
            .routes
            .iter()
            .map(|r| {
                let tokenizer = tokenizers.get(r.tokenizer.as_ref()).or_else(|| {
                    r.targets.iter().find_map(|t| match t {
                        TargetRef::Model(m) => model_tokenizers.get(m).cloned(),
                        TargetRef::Provider { .. } => None,
                    })
                });
                Route {
                    spec: r.clone(),
                    tokenizer,
                    turns: (0..=r.rules.len()).map(|_| AtomicUsize::new(0)).collect(),
                }
            })
            .collect();
        let budget = previous
            .map(|p| p.budget.clone())
            .filter(|b| b.ratio() == s.retry_budget)
            .unwrap_or_else(|| Arc::new(RetryBudget::new(s.retry_budget)));
        Self {
            names,
            listing,
            routes,
            providers,
            model_breakers,
            model_tokenizers,
            budget,
        }
    }

    /// Every public name: routes, then instances each followed by its aliases.
    pub fn public_names(&self) -> &[PublicName] {
        &self.listing
    }

    /// The instance a model name or alias reaches (not routes).
    pub fn resolve(&self, name: &str) -> Option<&str> {
        match self.names.get(name)? {
            Entry::Model(i) => Some(i),
            Entry::Route(_) => None,
        }
    }

    /// Whether the name exists at all.
    pub fn knows(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Providers, by name.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    /// The breaker of a model instance.
    pub fn model_breaker(&self, name: &str) -> Option<&Arc<Breaker>> {
        self.model_breakers.get(name)
    }

    /// The tokenizer of a model instance, if configured.
    pub fn model_tokenizer(&self, name: &str) -> Option<&Arc<Tokenizer>> {
        self.model_tokenizers.get(name)
    }

    fn candidate(&self, t: &TargetRef, fleet: &Fleet, fallback: bool) -> Option<Candidate> {
        match t {
            TargetRef::Model(m) => Some(Candidate {
                target: Target::Model(fleet.get(m)?),
                label: m.clone(),
                breaker: self.model_breakers.get(m)?.clone(),
                fallback,
            }),
            TargetRef::Provider { provider, model } => {
                let p = self.providers.get(provider)?;
                Some(Candidate {
                    target: Target::Provider {
                        provider: p.clone(),
                        model: model.clone(),
                    },
                    label: t.to_string(),
                    breaker: p.breaker.clone(),
                    fallback,
                })
            }
        }
    }

    /// The context window and tokenizer of a candidate.
    fn window(&self, c: &Candidate) -> (Option<u32>, Option<&Arc<Tokenizer>>) {
        match &c.target {
            Target::Model(i) => (
                i.spec.request_context(),
                self.model_tokenizers.get(i.name()),
            ),
            Target::Provider { provider, .. } => (provider.spec.context_length, None),
        }
    }

    fn fits(&self, c: &Candidate, est: &Estimator<'_>, widest: &mut u32) -> bool {
        match self.window(c) {
            (None, _) => true,
            (Some(limit), tok) => {
                *widest = (*widest).max(limit);
                est.prompt_tokens(tok) + est.max_tokens() <= u64::from(limit)
            }
        }
    }

    /// The targets for a request, in the order to try them: only those that serve
    /// its endpoint (`NotServed` when that leaves none).
    pub fn plan(
        &self,
        requested: &str,
        fleet: &Fleet,
        req: &Request<'_, '_>,
    ) -> Result<Plan, PlanError> {
        let mut plan = self.plan_any(requested, fleet, req)?;
        plan.candidates.retain(|c| serves(&c.target, req.endpoint));
        if plan.candidates.is_empty() {
            return Err(PlanError::NotServed);
        }
        Ok(plan)
    }

    fn plan_any(
        &self,
        requested: &str,
        fleet: &Fleet,
        req: &Request<'_, '_>,
    ) -> Result<Plan, PlanError> {
        let mut widest = 0u32;
        let too_long = |widest: u32, tok: Option<&Arc<Tokenizer>>| PlanError::ContextTooLong {
            prompt: req.estimate.prompt_tokens(tok),
            max_tokens: req.estimate.max_tokens(),
            limit: widest,
        };
        match self.names.get(requested).ok_or(PlanError::NotFound)? {
            Entry::Model(name) => {
                let c = self
                    .candidate(&TargetRef::Model(name.clone()), fleet, false)
                    .ok_or(PlanError::NotFound)?;
                if !self.fits(&c, req.estimate, &mut widest) {
                    return Err(too_long(widest, self.model_tokenizers.get(name)));
                }
                Ok(Plan {
                    route: requested.to_string(),
                    is_route: false,
                    candidates: vec![c],
                })
            }
            Entry::Route(i) => {
                let route = &self.routes[*i];
                let mut picked = None;
                for (n, rule) in route.spec.rules.iter().enumerate() {
                    if !self.matches(rule, route, req) {
                        continue;
                    }
                    let pool = self.pool(&rule.targets, fleet, req, &mut widest);
                    if !pool.is_empty() {
                        picked = Some((pool, rule.strategy, n));
                        break;
                    }
                }
                let (pool, strategy, turn) = match picked {
                    Some(p) => p,
                    None => {
                        let pool = self.pool(&route.spec.default, fleet, req, &mut widest);
                        (pool, route.spec.strategy, route.spec.rules.len())
                    }
                };
                let mut candidates = order(pool, strategy, &route.turns[turn]);
                for t in &route.spec.fallback {
                    if candidates.iter().any(|c| c.label == t.to_string()) {
                        continue;
                    }
                    if let Some(c) = self.candidate(t, fleet, true)
                        && self.fits(&c, req.estimate, &mut widest)
                    {
                        candidates.push(c);
                    }
                }
                if candidates.is_empty() {
                    return Err(too_long(widest, route.tokenizer.as_ref()));
                }
                Ok(Plan {
                    route: requested.to_string(),
                    is_route: true,
                    candidates,
                })
            }
        }
    }

    fn matches(&self, rule: &RuleSpec, route: &Route, req: &Request<'_, '_>) -> bool {
        if let Some(cs) = &rule.clients
            && !cs.iter().any(|c| c == req.client)
        {
            return false;
        }
        if let Some(es) = &rule.endpoints
            && !es.iter().any(|e| e == req.endpoint)
        {
            return false;
        }
        if let Some(ps) = &rule.profiles {
            let active = (req.profiles)();
            if !ps.iter().any(|p| active.contains(p)) {
                return false;
            }
        }
        if rule.min_prompt_tokens.is_some() || rule.max_prompt_tokens.is_some() {
            let n = req.estimate.prompt_tokens(route.tokenizer.as_ref());
            if rule.min_prompt_tokens.is_some_and(|lo| n < u64::from(lo))
                || rule.max_prompt_tokens.is_some_and(|hi| n > u64::from(hi))
            {
                return false;
            }
        }
        true
    }

    fn pool(
        &self,
        targets: &[TargetRef],
        fleet: &Fleet,
        req: &Request<'_, '_>,
        widest: &mut u32,
    ) -> Vec<Candidate> {
        targets
            .iter()
            .filter_map(|t| self.candidate(t, fleet, false))
            .filter(|c| self.fits(c, req.estimate, widest))
            .collect()
    }
}

/// Whether a target's server has `endpoint`: a local model's kind says (for
/// `messages`, Anthropic's API forwarded as is, its `anthropic` setting); an
/// external provider serves OpenAI's endpoints only.
pub fn serves(target: &Target, endpoint: &str) -> bool {
    match target {
        Target::Model(i) if endpoint == "messages" => i.spec.anthropic_native,
        // Of the native servers, only llama-server counts tokens (vLLM 0.12.0 has no
        // such route, Ollama none at all): the rest get llmvisor's estimate.
        Target::Model(i) if endpoint == "messages/count_tokens" => {
            i.spec.anthropic_native && i.spec.kind == crate::config::Kind::LlamaCpp
        }
        Target::Model(i) => i.spec.kind.serves(endpoint),
        Target::Provider { .. } => crate::config::OPENAI_ENDPOINTS.contains(&endpoint),
    }
}

/// What ordering looks at.
struct Facts {
    available: bool,
    ready: bool,
    outstanding: usize,
}

fn facts(c: &Candidate) -> Facts {
    match &c.target {
        Target::Model(i) => {
            let s = i.status();
            Facts {
                available: c.breaker.would_allow() && !s.locked_out,
                ready: s.state == State::Ready,
                outstanding: i.in_flight() + i.queued(),
            }
        }
        Target::Provider { provider, .. } => Facts {
            available: c.breaker.would_allow() && provider.healthy(),
            ready: provider.healthy(),
            outstanding: provider.outstanding(),
        },
    }
}

/// Order a pool by the strategy; unavailable targets (breaker open, host down,
/// locked out) go last, ties keep the configured order.
fn order(pool: Vec<Candidate>, strategy: Strategy, turn: &AtomicUsize) -> Vec<Candidate> {
    let n = pool.len();
    if n <= 1 {
        return pool;
    }
    let mut scored: Vec<(Facts, Candidate)> = pool.into_iter().map(|c| (facts(&c), c)).collect();
    match strategy {
        Strategy::LeastOutstanding => {
            scored.sort_by_key(|(f, _)| (!f.available, f.outstanding));
        }
        Strategy::PreferReady => {
            scored.sort_by_key(|(f, _)| (!f.available, !f.ready, f.outstanding));
        }
        Strategy::RoundRobin => {
            let start = turn.fetch_add(1, Ordering::Relaxed) % n;
            scored.rotate_left(start);
            scored.sort_by_key(|(f, _)| !f.available);
        }
    }
    scored.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests;
