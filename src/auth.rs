//! Who is calling: client keys (only their SHA-256 is kept, compared in constant
//! time), the models each client may use, its rate limits and priority, and the
//! admin key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::routing::{ANONYMOUS, hash_key};
use crate::config::{AuthMode, Priority, Settings};

/// A caller, as far as routing, limits, logs and metrics are concerned.
pub struct Client {
    /// Its name (`anonymous` without keys).
    pub name: String,
    key_hash: Option<[u8; 32]>,
    models: Vec<String>,
    /// Queue priority.
    pub priority: Priority,
    /// Requests-per-minute and tokens-per-minute buckets.
    pub limits: Limits,
}

impl Client {
    /// Whether the client may ask for `public_name`.
    pub fn may_use(&self, public_name: &str) -> bool {
        self.models.iter().any(|g| glob(g, public_name))
    }
}

/// Why a request was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No key was sent.
    Missing,
    /// A key was sent that is no client's.
    Invalid,
}

/// The clients and the admin key in force.
pub struct Auth {
    mode: AuthMode,
    clients: Vec<Arc<Client>>,
    anonymous: Arc<Client>,
    admin: Option<[u8; 32]>,
}

impl Auth {
    /// Build from checked settings whose secrets are loaded. Rate-limit state of a
    /// client whose limits did not change carries over from `previous`.
    pub fn new(settings: &Settings, previous: Option<&Auth>) -> Self {
        let old: HashMap<&str, &Arc<Client>> = previous
            .map(|p| p.clients.iter().map(|c| (c.name.as_str(), c)).collect())
            .unwrap_or_default();
        let clients = settings
            .clients
            .iter()
            .filter(|c| c.key_hash.is_some())
            .map(|c| {
                let limits = match old.get(c.name.as_str()) {
                    Some(o) if o.limits.rpm == c.rpm && o.limits.tpm == c.tpm => o.limits.clone(),
                    _ => Limits::new(c.rpm, c.tpm),
                };
                Arc::new(Client {
                    name: c.name.clone(),
                    key_hash: c.key_hash,
                    models: c.models.clone(),
                    priority: c.priority,
                    limits,
                })
            })
            .collect();
        Self {
            mode: settings.server.auth,
            clients,
            anonymous: Arc::new(Client {
                name: ANONYMOUS.into(),
                key_hash: None,
                models: vec!["*".into()],
                priority: Priority::Interactive,
                limits: Limits::new(0, 0),
            }),
            admin: settings.admin.as_ref().and_then(|a| a.key_hash),
        }
    }

    /// The client a request comes from, by its `Authorization: Bearer` (or
    /// `x-api-key`) header. Every client's hash is compared, in constant time, so
    /// timing says nothing about which keys exist.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Arc<Client>, Denied> {
        if self.mode == AuthMode::None {
            return Ok(self.anonymous.clone());
        }
        let key = presented_key(headers).ok_or(Denied::Missing)?;
        let hash = hash_key(key);
        let mut found = None;
        for c in &self.clients {
            if let Some(h) = &c.key_hash
                && bool::from(h.ct_eq(&hash))
            {
                found = Some(c.clone());
            }
        }
        found.ok_or(Denied::Invalid)
    }

    /// Whether an admin request may proceed: with an `[admin]` key, it must carry
    /// that key (from anywhere); without one, only loopback connections may.
    pub fn admin_allowed(&self, headers: &HeaderMap, loopback: bool) -> Result<(), Denied> {
        match &self.admin {
            None if loopback => Ok(()),
            None => Err(Denied::Invalid),
            Some(want) => {
                let key = presented_key(headers).ok_or(Denied::Missing)?;
                if bool::from(want.ct_eq(&hash_key(key))) {
                    Ok(())
                } else {
                    Err(Denied::Invalid)
                }
            }
        }
    }

    /// Whether an admin key is configured.
    pub fn has_admin_key(&self) -> bool {
        self.admin.is_some()
    }

    /// Whether keys are required.
    pub fn required(&self) -> bool {
        self.mode == AuthMode::Required
    }
}

/// The key in `Authorization: Bearer <key>` or `x-api-key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Some(rest.trim());
        }
        return None;
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// `*` (any run of characters) and `?` (one character) wildcards.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A client's rate limits: token buckets that refill continuously, as OpenAI's do.
#[derive(Clone)]
pub struct Limits {
    /// Requests per minute (0: none).
    pub rpm: u32,
    /// Tokens per minute (0: none).
    pub tpm: u32,
    state: Arc<Mutex<Buckets>>,
}

struct Buckets {
    requests: f64,
    tokens: f64,
    at: Instant,
}

/// The figures of OpenAI's `x-ratelimit-*` headers after a request was counted.
#[derive(Clone, Debug, PartialEq)]
pub struct Quota {
    /// `(limit, remaining, time until full)` for requests, if limited.
    pub requests: Option<(u32, u32, Duration)>,
    /// The same for tokens.
    pub tokens: Option<(u32, u32, Duration)>,
}

/// Why a request is over its client's limits.
#[derive(Clone, Debug, PartialEq)]
pub enum OverLimit {
    /// Requests per minute used up; retry after this long.
    Requests(Duration, Quota),
    /// Tokens per minute used up; retry after this long.
    Tokens(Duration, Quota),
    /// The request alone needs more tokens than the per-minute limit.
    TooLarge {
        /// Tokens the request would count.
        needed: u64,
        /// The limit.
        tpm: u32,
    },
}

impl Limits {
    /// Full buckets.
    pub fn new(rpm: u32, tpm: u32) -> Self {
        Self {
            rpm,
            tpm,
            state: Arc::new(Mutex::new(Buckets {
                requests: f64::from(rpm),
                tokens: f64::from(tpm),
                at: Instant::now(),
            })),
        }
    }

    /// Whether any limit applies.
    pub fn limited(&self) -> bool {
        self.rpm > 0 || self.tpm > 0
    }

    /// Count one request of `tokens` tokens, or say how long until it would fit.
    pub fn take(&self, tokens: u64) -> Result<Quota, OverLimit> {
        self.take_at(tokens, Instant::now())
    }

    fn take_at(&self, tokens: u64, now: Instant) -> Result<Quota, OverLimit> {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        let (rpm, tpm) = (f64::from(self.rpm), f64::from(self.tpm));
        b.requests = (b.requests + secs * rpm / 60.0).min(rpm);
        b.tokens = (b.tokens + secs * tpm / 60.0).min(tpm);
        let wait = |have: f64, need: f64, per_min: f64| {
            Duration::from_secs_f64(((need - have).max(0.0) * 60.0 / per_min).max(0.0))
        };
        let full = |have: f64, cap: f64| wait(have, cap, cap);
        let quota = |b: &Buckets| Quota {
            requests: (self.rpm > 0).then(|| {
                (
                    self.rpm,
                    b.requests.floor().max(0.0) as u32,
                    full(b.requests, rpm),
                )
            }),
            tokens: (self.tpm > 0).then(|| {
                (
                    self.tpm,
                    b.tokens.floor().max(0.0) as u32,
                    full(b.tokens, tpm),
                )
            }),
        };
        if self.tpm > 0 && tokens > u64::from(self.tpm) {
            return Err(OverLimit::TooLarge {
                needed: tokens,
                tpm: self.tpm,
            });
        }
        if self.rpm > 0 && b.requests < 1.0 {
            return Err(OverLimit::Requests(wait(b.requests, 1.0, rpm), quota(&b)));
        }
        let t = tokens as f64;
        if self.tpm > 0 && b.tokens < t {
            return Err(OverLimit::Tokens(wait(b.tokens, t, tpm), quota(&b)));
        }
        if self.rpm > 0 {
            b.requests -= 1.0;
        }
        if self.tpm > 0 {
            b.tokens -= t;
        }
        Ok(quota(&b))
    }
}

impl Limits {
    /// Settle a request's token charge against its real usage: a refund when it used
    /// fewer tokens than were counted at admission, a further charge (the bucket may
    /// go below zero, delaying the next request) when it used more.
    pub fn settle(&self, charged: u64, used: u64) {
        if self.tpm == 0 || charged == used {
            return;
        }
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        b.tokens = (b.tokens + charged as f64 - used as f64).min(f64::from(self.tpm));
    }

    /// Give a request's whole charge back (the request and its `tokens`): it was
    /// refused before any backend got it (OpenAI counts only what it processed).
    pub fn refund(&self, tokens: u64) {
        if !self.limited() {
            return;
        }
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.rpm > 0 {
            b.requests = (b.requests + 1.0).min(f64::from(self.rpm));
        }
        if self.tpm > 0 {
            b.tokens = (b.tokens + tokens as f64).min(f64::from(self.tpm));
        }
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`.
/// Rounded up (to the millisecond, or the second past a minute), so that
/// `Retry-After` (whole seconds, rounded up) is this figure rounded up.
pub fn reset_text(d: Duration) -> String {
    let ms = d.as_micros().div_ceil(1000);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let s = ms.div_ceil(1000);
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_micros().div_ceil(1_000_000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("llama*", "llama-long"));
        assert!(!glob("llama*", "qwen"));
        assert!(glob("qwen?-coder", "qwen2-coder"));
        assert!(glob("*coder*", "qwen2.5-coder-7b"));
        assert!(!glob("gpt-4o", "gpt-4o-mini"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    fn auth(toml: &str) -> Auth {
        let s = Config::parse(toml).unwrap().validate().unwrap();
        Auth::new(&s, None)
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        h
    }

    const TWO: &str = r#"
        [models.m]
        kind = "command"
        command = ["x"]
        [clients.webui]
        key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        [clients.n8n]
        key_sha256 = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
        models = ["m", "qwen*"]
        priority = "batch"
        [admin]
        key_sha256 = "fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13"
    "#;

    #[test]
    fn keys_identify_clients() {
        let a = auth(TWO);
        assert_eq!(a.identify(&bearer("test")).unwrap().name, "webui");
        let n8n = a.identify(&bearer("test2")).unwrap();
        assert_eq!(n8n.name, "n8n");
        assert_eq!(n8n.priority, Priority::Batch);
        assert!(n8n.may_use("qwen-coder") && !n8n.may_use("llama"));
        assert_eq!(a.identify(&bearer("nope")).err(), Some(Denied::Invalid));
        assert_eq!(a.identify(&HeaderMap::new()).err(), Some(Denied::Missing));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "test".parse().unwrap());
        assert_eq!(a.identify(&h).unwrap().name, "webui");
        assert!(a.admin_allowed(&bearer("test3"), false).is_ok());
        assert!(a.admin_allowed(&bearer("test"), true).is_err());
    }

    #[test]
    fn without_an_admin_key_admin_is_loopback_only() {
        let a =
            auth("[server]\nauth = \"none\"\n[models.m]\nkind = \"command\"\ncommand = [\"x\"]\n");
        assert!(a.admin_allowed(&HeaderMap::new(), true).is_ok());
        assert!(a.admin_allowed(&HeaderMap::new(), false).is_err());
        assert_eq!(a.identify(&HeaderMap::new()).unwrap().name, "anonymous");
    }

    #[test]
    fn buckets_refill_and_say_when() {
        let l = Limits::new(60, 1000);
        let t0 = Instant::now();
        let q = l.take_at(100, t0).unwrap();
        assert_eq!(q.requests.unwrap().1, 59);
        assert_eq!(q.tokens.unwrap().1, 900);
        // Too large for the limit at all.
        assert!(matches!(
            l.take_at(1001, t0),
            Err(OverLimit::TooLarge { .. })
        ));
        // Tokens run out: 900 left, 950 asked: 50 tokens at 1000/min = 3 s.
        match l.take_at(950, t0) {
            Err(OverLimit::Tokens(wait, _)) => assert_eq!(wait.as_secs(), 3),
            other => panic!("{other:?}"),
        }
        // Requests run out after 59 more.
        for _ in 0..59 {
            l.take_at(1, t0).unwrap();
        }
        match l.take_at(1, t0) {
            Err(OverLimit::Requests(wait, q)) => {
                assert_eq!(wait, Duration::from_secs(1));
                assert_eq!(q.requests.unwrap().1, 0);
            }
            other => panic!("{other:?}"),
        }
        // One second later one request fits again.
        assert!(l.take_at(1, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn usage_settles_the_token_charge() {
        let l = Limits::new(0, 1000);
        let t0 = Instant::now();
        l.take_at(600, t0).unwrap();
        // It used 100: 500 back.
        l.settle(600, 100);
        assert_eq!(l.take_at(0, t0).unwrap().tokens.unwrap().1, 900);
        // It used 1500 of 100 charged: the bucket is in debt.
        l.settle(100, 1500);
        assert!(matches!(l.take_at(1, t0), Err(OverLimit::Tokens(..))));
    }

    #[test]
    fn a_refund_gives_the_request_and_its_tokens_back() {
        let l = Limits::new(1, 100);
        let t0 = Instant::now();
        l.take_at(60, t0).unwrap();
        assert!(matches!(l.take_at(1, t0), Err(OverLimit::Requests(..))));
        l.refund(60);
        let q = l.take_at(0, t0).unwrap();
        assert_eq!(q.tokens.unwrap().1, 100);
        // Never above the limits.
        l.refund(500);
        l.refund(500);
        let q = l.take_at(0, t0).unwrap();
        assert_eq!((q.requests.unwrap().1, q.tokens.unwrap().1), (0, 100));
    }

    #[test]
    fn reset_texts() {
        assert_eq!(reset_text(Duration::from_millis(20)), "20ms");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(2)), "2s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
        // Rounded up, and Retry-After is the same figure rounded up.
        assert_eq!(reset_text(Duration::from_micros(29_000_400)), "29.001s");
        assert_eq!(retry_after_secs(Duration::from_micros(29_000_400)), 30);
        assert_eq!(reset_text(Duration::from_millis(60_200)), "1m1s");
        assert_eq!(retry_after_secs(Duration::from_millis(60_200)), 61);
        assert_eq!(retry_after_secs(Duration::from_millis(3)), 1);
    }
}
