//! Rule matching, the context guard, ordering and fallback on seed 003's layout.

use super::*;
use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use crate::units::process::ProcessManager;

const LAYOUT: &str = r#"
[server]
auth = "none"

[clients.webui]
key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[clients.n8n]
key_sha256 = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"

[models.llama-long]
kind = "command"
command = ["x"]
context_length = 32768

[models.llama-fast]
kind = "command"
command = ["x"]
context_length = 8192
aliases = ["gpt-4o-mini"]

[models.bge-m3]
kind = "command"
command = ["x"]

[providers.cloud]
base_url = "https://api.example.com/v1"
context_length = 128000

[routes.llama]
targets = ["llama-long", "llama-fast"]
default = ["llama-fast"]
fallback = ["llama-long", "cloud/gpt-4o-mini"]

[[routes.llama.rules]]
clients = ["webui"]
targets = ["llama-long"]

[[routes.llama.rules]]
min_prompt_tokens = 4000
targets = ["llama-long"]

[[routes.llama.rules]]
endpoints = ["embeddings"]
targets = ["llama-fast"]

[routes.pair]
targets = ["llama-long", "llama-fast"]
strategy = "round-robin"
"#;

fn setup(toml: &str) -> (Router, Arc<Fleet>) {
    let s = Config::parse(toml).unwrap().validate().unwrap();
    let fleet = Fleet::new(
        &s,
        Arc::new(ProcessManager::new()),
        Arc::new(Metrics::new()),
    );
    let r = Router::new(&s, &Tokenizers::default(), None, None);
    (r, fleet)
}

fn chat(words: usize, max_tokens: Option<u64>) -> Vec<u8> {
    // "word " is 5 ASCII characters: 1.25 tokens each by the heuristic.
    let text = "word ".repeat(words);
    let mut v =
        serde_json::json!({"model": "llama", "messages": [{"role": "user", "content": text}]});
    if let Some(m) = max_tokens {
        v["max_tokens"] = m.into();
    }
    serde_json::to_vec(&v).unwrap()
}

fn labels(p: &Plan) -> Vec<String> {
    p.candidates.iter().map(|c| c.label.clone()).collect()
}

fn plan(
    r: &Router,
    f: &Fleet,
    name: &str,
    client: &str,
    endpoint: &str,
    body: &[u8],
) -> Result<Plan, PlanError> {
    let est = Estimator::new(body);
    r.plan(
        name,
        f,
        &Request {
            client,
            endpoint,
            estimate: &est,
            profiles: &Vec::new,
        },
    )
}

#[tokio::test]
async fn rules_pick_by_client_length_and_endpoint() {
    let (r, f) = setup(LAYOUT);
    let short = chat(1600, None); // ~2K tokens
    let long = chat(4800, None); // ~6K tokens
    // webui → GPU 0's long-context instance, whatever the length.
    let p = plan(&r, &f, "llama", "webui", "chat/completions", &short).unwrap();
    assert_eq!(labels(&p), ["llama-long", "cloud/gpt-4o-mini"]);
    assert!(p.is_route && !p.candidates[0].fallback && p.candidates[1].fallback);
    // n8n, short → the default, GPU 1, with the fallback chain after it.
    let p = plan(&r, &f, "llama", "n8n", "chat/completions", &short).unwrap();
    assert_eq!(
        labels(&p),
        ["llama-fast", "llama-long", "cloud/gpt-4o-mini"]
    );
    // n8n, 6K tokens → the min_prompt_tokens rule.
    let p = plan(&r, &f, "llama", "n8n", "chat/completions", &long).unwrap();
    assert_eq!(labels(&p)[0], "llama-long");
    // Endpoint rule.
    let p = plan(&r, &f, "llama", "n8n", "embeddings", br#"{"input":"hi"}"#).unwrap();
    assert_eq!(labels(&p)[0], "llama-fast");
}

#[tokio::test]
async fn the_context_guard_skips_what_does_not_fit() {
    let (r, f) = setup(LAYOUT);
    // 3000 words ≈ 3757 tokens + 5000 max_tokens > 8192: the default (llama-fast)
    // does not fit, and no rule matched, so only the fallbacks that fit remain.
    let body = chat(3000, Some(5000));
    let p = plan(&r, &f, "llama", "n8n", "chat/completions", &body).unwrap();
    assert_eq!(labels(&p), ["llama-long", "cloud/gpt-4o-mini"]);
    // Too long for everything.
    let body = chat(120_000, None);
    match plan(&r, &f, "llama", "n8n", "chat/completions", &body) {
        Err(PlanError::ContextTooLong { limit, prompt, .. }) => {
            assert_eq!(limit, 128000);
            assert!(prompt > 128000);
        }
        other => panic!("{:?}", other.map(|p| labels(&p))),
    }
    // A model asked for directly has the same guard.
    let body = chat(7000, None);
    match plan(&r, &f, "gpt-4o-mini", "n8n", "chat/completions", &body) {
        Err(PlanError::ContextTooLong { limit, .. }) => assert_eq!(limit, 8192),
        other => panic!("{:?}", other.map(|p| labels(&p))),
    }
    let p = plan(
        &r,
        &f,
        "gpt-4o-mini",
        "n8n",
        "chat/completions",
        &chat(10, None),
    )
    .unwrap();
    assert_eq!(labels(&p), ["llama-fast"]);
    assert!(!p.is_route);
    assert!(matches!(
        plan(&r, &f, "nope", "n8n", "chat/completions", b"{}"),
        Err(PlanError::NotFound)
    ));
}

#[tokio::test]
async fn strategies_order_the_pool_and_open_breakers_go_last() {
    let (r, f) = setup(LAYOUT);
    let body = chat(10, None);
    let first = |r: &Router| {
        labels(&plan(r, &f, "pair", "x", "chat/completions", &body).unwrap())[0].clone()
    };
    // Round robin alternates.
    let seq: Vec<String> = (0..4).map(|_| first(&r)).collect();
    assert_eq!(
        seq,
        ["llama-long", "llama-fast", "llama-long", "llama-fast"]
    );
    // An open breaker sends its target to the end.
    let b = r.model_breaker("llama-long").unwrap();
    for _ in 0..5 {
        b.failure();
    }
    let seq: Vec<String> = (0..3).map(|_| first(&r)).collect();
    assert_eq!(seq, ["llama-fast", "llama-fast", "llama-fast"]);
}

#[tokio::test]
async fn breakers_survive_a_rebuild() {
    let s = Config::parse(LAYOUT).unwrap().validate().unwrap();
    let (r, _f) = setup(LAYOUT);
    r.model_breaker("llama-fast").unwrap().failure();
    let r2 = Router::new(&s, &Tokenizers::default(), None, Some(&r));
    assert_eq!(r2.model_breaker("llama-fast").unwrap().failures(), 1);
    assert_eq!(r2.resolve("gpt-4o-mini"), Some("llama-fast"));
    assert_eq!(r2.resolve("llama"), None);
    assert!(r2.knows("llama"));
    let kinds: Vec<_> = r2
        .public_names()
        .iter()
        .map(|p| (p.name.as_str(), p.kind.clone()))
        .collect();
    assert_eq!(kinds[0], ("llama", NameKind::Route));
    assert!(kinds.contains(&("gpt-4o-mini", NameKind::Alias)));
}

#[test]
fn route_checks_name_every_problem() {
    let bad = r#"
[server]
auth = "none"
[models.a]
kind = "command"
command = ["x"]
aliases = ["al"]
[routes.a]
targets = ["a"]
[routes.r]
targets = ["a", "ghost", "nowhere/x", "al"]
default = ["b"]
fallback = ["ghost2"]
[[routes.r.rules]]
min_prompt_tokens = 10
max_prompt_tokens = 5
clients = ["nobody"]
endpoints = ["chat"]
targets = ["zzz"]
"#;
    let problems: Vec<String> = Config::parse(bad)
        .unwrap()
        .validate()
        .unwrap_err()
        .into_iter()
        .map(|p| p.to_string())
        .collect();
    let want = [
        "routes.a: `a` is already the name of models.a",
        "routes.r.targets[1]: `ghost` is neither a model instance nor provider/model",
        "routes.r.targets[2]: `nowhere/x`: there is no [providers.nowhere]",
        "routes.r.targets[3]: `al` is neither a model instance nor provider/model (it is an alias of models.a; name the instance itself)",
        "routes.r.rules[0].targets[0]: `zzz` is not one of routes.r.targets",
        "routes.r.rules[0]: min_prompt_tokens (10) is more than max_prompt_tokens (5); no request can match",
        "routes.r.rules[0].clients[0]: there is no [clients.nobody]",
        "routes.r.rules[0].endpoints[0]: `chat` is not an endpoint",
        "routes.r.default[0]: `b` is not one of routes.r.targets",
        "routes.r.fallback[0]: `ghost2` is neither a model instance nor provider/model",
    ];
    for w in want {
        assert!(
            problems.iter().any(|p| p.starts_with(w)),
            "missing {w:?} in {problems:#?}"
        );
    }
}

#[tokio::test]
async fn rules_can_test_the_active_profile() {
    let toml = r#"
[server]
auth = "none"
[models.small]
kind = "command"
command = ["x"]
[models.big]
kind = "command"
command = ["x"]
[profiles.night]
windows = ["22:00-06:00"]
models = ["big"]
[routes.chat]
targets = ["small", "big"]
default = ["small"]
[[routes.chat.rules]]
profiles = ["night"]
targets = ["big"]
"#;
    let (r, f) = setup(toml);
    let body = chat(10, None);
    let est = Estimator::new(&body);
    let at = |active: Vec<String>| {
        let p = r
            .plan(
                "chat",
                &f,
                &Request {
                    client: "x",
                    endpoint: "chat/completions",
                    estimate: &est,
                    profiles: &move || active.clone(),
                },
            )
            .unwrap();
        labels(&p)[0].clone()
    };
    assert_eq!(at(vec![]), "small");
    assert_eq!(at(vec!["night".into()]), "big");
    let bad = toml.replace("profiles = [\"night\"]", "profiles = [\"nite\"]");
    let problems = Config::parse(&bad).unwrap().validate().unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.to_string()
                == "routes.chat.rules[0].profiles[0]: there is no [profiles.nite]")
    );
}
