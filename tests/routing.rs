//! Routing through the real binary: seed 003's two-GPU example and its data flows,
//! keys and permissions, providers (the client's key never leaves), fallback only
//! before the first byte, circuit breakers, rate limits, priorities, and seed 004's
//! several hosts with health checks.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Llmvisor, MOCK, eventually, free_port, mock_model};
use serde_json::{Value, json};

/// The two-GPU example with the mock's path, free ports and a fast start-up.
fn two_gpu_config(port: u16) -> String {
    common::example(
        "two-gpu.toml",
        port,
        &[(
            "\"--startup-delay\", \"1s\"",
            "\"--startup-delay\", \"100ms\"",
        )],
    )
}

fn words(n: usize) -> String {
    "word ".repeat(n)
}

async fn call(lv: &Llmvisor, key: &str, path: &str, body: &Value) -> reqwest::Response {
    lv.client
        .post(lv.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn seed_003_data_flows() {
    let port = free_port();
    let lv = Llmvisor::start_raw(port, &two_gpu_config(port)).await;
    let chat = |words_n: usize| json!({"model": "llama", "messages": [{"role": "user", "content": words(words_n)}], "max_tokens": 4});

    // 1. A 2K-token chat from Open WebUI → GPU 0.
    let r = call(&lv, "sk-webui-demo", "/v1/chat/completions", &chat(1600)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-llmvisor-route"), "llama");
    assert_eq!(header(&r, "x-llmvisor-target"), "llama-gpu0");
    assert!(!header(&r, "x-request-id").is_empty());
    assert!(
        header(&r, "x-llmvisor-cold-start-ms")
            .parse::<u64>()
            .unwrap()
            >= 100
    );
    assert!(header(&r, "x-llmvisor-queue-ms").parse::<u64>().is_ok());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["model"], "meta-llama/Llama-3.1-8B-Instruct");

    // 2. An n8n chat → GPU 1 (with its rate-limit headers).
    let r = call(&lv, "sk-n8n-demo", "/v1/chat/completions", &chat(200)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-llmvisor-target"), "llama-gpu1");
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "600");
    assert!(
        header(&r, "x-ratelimit-remaining-requests")
            .parse::<u32>()
            .unwrap()
            < 600
    );

    // 3. A 6K-token chat from n8n → the long-context instance.
    let r = call(&lv, "sk-n8n-demo", "/v1/chat/completions", &chat(4800)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-llmvisor-target"), "llama-gpu0");

    // 4. Embeddings → bge-m3 (by its alias too).
    for name in ["bge-m3", "text-embedding-3-small"] {
        let r = call(
            &lv,
            "sk-n8n-demo",
            "/v1/embeddings",
            &json!({"model": name, "input": "hello"}),
        )
        .await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(header(&r, "x-llmvisor-target"), "bge-m3");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 1024);
    }

    // 5. The reranker route.
    let r = call(
        &lv,
        "sk-n8n-demo",
        "/v1/rerank",
        &json!({"model": "rerank", "query": "gpu memory", "documents": ["cats", "gpu memory is full", "memory"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-llmvisor-target"), "reranker");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["index"], 1);

    // 6. A full instance sends the overflow to its fallback: llama-gpu1 takes 2 in
    // flight and 2 queued; six slow streams from n8n overflow to llama-gpu0.
    let mut streams = Vec::new();
    for _ in 0..6 {
        let body = json!({"model": "llama", "stream": true, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
        let (client, url) = (lv.client.clone(), lv.url("/v1/chat/completions"));
        streams.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth("sk-n8n-demo")
                .json(&body)
                .send()
                .await
                .unwrap();
            let target = r.headers()["x-llmvisor-target"]
                .to_str()
                .unwrap()
                .to_string();
            let status = r.status();
            let text = r.text().await.unwrap();
            (status, target, text)
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut targets = Vec::new();
    for s in streams {
        let (status, target, text) = s.await.unwrap();
        assert_eq!(status, 200);
        assert!(text.contains("[DONE]"), "{text}");
        targets.push(target);
    }
    let on_gpu1 = targets.iter().filter(|t| *t == "llama-gpu1").count();
    let on_gpu0 = targets.iter().filter(|t| *t == "llama-gpu0").count();
    assert_eq!(on_gpu1, 4, "{targets:?}");
    assert_eq!(on_gpu0, 2, "{targets:?}");

    // 7. A bad key → 401; a key not allowed a model → 403.
    let r = call(&lv, "sk-wrong", "/v1/chat/completions", &chat(1)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    let r = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .json(&chat(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = call(
        &lv,
        "sk-n8n-demo",
        "/v1/chat/completions",
        &json!({"model": "deepseek", "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "permission_error");
    assert_eq!(e["error"]["code"], "model_not_allowed");

    // /v1/models shows each client what it may use.
    let list = |key: &'static str| {
        let (c, u) = (lv.client.clone(), lv.url("/v1/models"));
        async move {
            let v: Value = c
                .get(u)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let n8n = list("sk-n8n-demo").await;
    assert!(
        n8n.contains(&"llama".to_string()) && n8n.contains(&"text-embedding-3-small".to_string())
    );
    assert!(!n8n.iter().any(|m| m.contains("deepseek")), "{n8n:?}");
    let webui = list("sk-webui-demo").await;
    assert!(webui.contains(&"deepseek".to_string()) && webui.contains(&"llama-gpu0".to_string()));
    assert_eq!(
        lv.client
            .get(lv.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // A prompt longer than every window → OpenAI's context_length_exceeded.
    let r = call(&lv, "sk-webui-demo", "/v1/chat/completions", &chat(30_000)).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    assert_eq!(e["error"]["param"], "messages");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 32768 tokens")
    );

    // Admin routes need the admin key (even on loopback, once one is configured).
    let r = lv
        .client
        .post(lv.url("/admin/models/reranker/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = lv
        .client
        .post(lv.url("/admin/models/reranker/stop"))
        .bearer_auth("sk-webui-demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = lv
        .client
        .post(lv.url("/admin/models/reranker/stop"))
        .bearer_auth("sk-admin-demo")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // Metrics carry route, target and client.
    let m = lv.metrics_text().await;
    assert!(
        m.contains("llmvisor_requests_total{route=\"llama\",target=\"llama-gpu0\",client=\"webui\",endpoint=\"chat/completions\",status=\"200\"} 1"),
        "{m}"
    );
    // The key never shows in the log.
    assert!(!lv.log().contains("sk-webui-demo") && !lv.log().contains("sk-n8n-demo"));
}

/// A mock backend run by the test itself, standing in for a provider or a host.
struct Host {
    child: Child,
    port: u16,
}

impl Host {
    async fn start(served_name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(MOCK)
            .args(["--port", &port.to_string(), "--served-name", served_name])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        eventually(Duration::from_secs(10), async || {
            match client
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => Ok(()),
                other => Err(format!("mock host did not start: {other:?}")),
            }
        })
        .await;
        Self { child, port }
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("http://127.0.0.1:{}/mock/stats", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

const CLIENT: &str = "[clients.app]\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n";

#[tokio::test]
async fn providers_get_their_own_key_and_mapped_names_never_the_clients() {
    let cloud = Host::start("gpt-4o-mini-2024-07-18", &[]).await;
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("cloud.key");
    std::fs::write(&key_path, "sk-provider-secret\n").unwrap();
    let extra = format!(
        "{CLIENT}\n[providers.cloud]\nbase_url = \"http://127.0.0.1:{}/v1\"\nkey_file = {:?}\nmodels = {{ \"gpt-4o-mini\" = \"gpt-4o-mini-2024-07-18\" }}\n\n[routes.smart]\ntargets = [\"cloud/gpt-4o-mini\"]\n",
        cloud.port,
        key_path.display().to_string()
    );
    let lv = Llmvisor::start(&extra, &mock_model("local", &[], "")).await;
    let r = call(
        &lv,
        "test",
        "/v1/chat/completions",
        &json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-llmvisor-target"), "cloud/gpt-4o-mini");
    let s = cloud.stats().await;
    assert_eq!(
        s["last_headers"]["authorization"],
        "Bearer sk-provider-secret"
    );
    assert_eq!(s["last_request"]["model"], "gpt-4o-mini-2024-07-18");
    let all = s["last_headers"].to_string();
    assert!(
        !all.contains("Bearer test") && !all.contains("\"test\""),
        "{all}"
    );
    assert!(!lv.log().contains("sk-provider-secret"));
}

#[tokio::test]
async fn fallback_before_the_first_byte_and_a_breaker_that_opens() {
    let backup = Host::start("backup", &[]).await;
    let extra = format!(
        "breaker_failures = 2\nbreaker_cooldown = \"1h\"\n{CLIENT}\n[providers.backup]\nbase_url = \"http://127.0.0.1:{}/v1\"\n\n[routes.r]\ntargets = [\"bad\"]\nfallback = [\"backup/backup\"]\n",
        backup.port
    );
    // `bad` answers every request with a 500.
    let lv = Llmvisor::start(
        &extra,
        &mock_model("bad", &["--fail-rate", "1.0"], "idle_ttl = \"0\""),
    )
    .await;
    let body = json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let r = call(&lv, "test", "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-llmvisor-target"), "backup/backup");
    }
    assert_eq!(lv.mock_stats("bad").await["requests"], 2);
    // Two failures in a row opened the breaker: `bad` is skipped now.
    let h = lv.get_json("/health").await;
    assert_eq!(h["models"]["bad"]["breaker"], "open", "{h}");
    let r = call(&lv, "test", "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(lv.mock_stats("bad").await["requests"], 2);
    assert_eq!(backup.stats().await["requests"], 3);
    assert_eq!(
        lv.metric("llmvisor_breaker_state{target=\"bad\"}").await,
        1.0
    );
    // Asked for directly (not through the route), `bad` has no fallback: the open
    // breaker is a 503 that says so.
    let r = call(
        &lv,
        "test",
        "/v1/chat/completions",
        &json!({"model": "bad", "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "no_target_available");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad (circuit open)")
    );
}

#[tokio::test]
async fn no_retry_after_the_first_streamed_byte() {
    let backup = Host::start("backup", &[]).await;
    let extra = format!(
        "{CLIENT}\n[providers.backup]\nbase_url = \"http://127.0.0.1:{}/v1\"\n\n[routes.r]\ntargets = [\"slow\"]\nfallback = [\"backup/backup\"]\n",
        backup.port
    );
    let lv = Llmvisor::start(
        &extra,
        &mock_model(
            "slow",
            &["--token-delay", "100ms", "--max-tokens", "50"],
            "idle_ttl = \"0\"",
        ),
    )
    .await;
    let body =
        json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(&lv, "test", "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-llmvisor-target"), "slow");
    let pid = lv.mock_stats("slow").await["pid"].as_u64();
    let mut r = r;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    // The backend dies mid-stream: the client gets an error event, not a second
    // answer from the fallback.
    let port = lv.model("slow").await["port"].as_u64().unwrap();
    kill_listener(port as u16, pid);
    let mut rest = String::new();
    while let Ok(Some(c)) = r.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(rest.contains("backend_error"), "{rest}");
    assert_eq!(
        backup.stats().await["requests"],
        0,
        "a retry happened after the first byte"
    );
}

/// SIGKILL the process listening on `port` (the mock of a model).
fn kill_listener(port: u16, pid: Option<u64>) {
    let pid = pid.map(|p| p as i32).unwrap_or_else(|| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ss -Hltnp 'sport = :{port}' | sed -n 's/.*pid=\\([0-9]*\\).*/\\1/p' | head -1"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid of the backend")
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Seconds of an `x-ratelimit-reset-*` value (`20ms`, `1.5s`, `6m0s`).
fn reset_secs(v: &str) -> f64 {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap() / 1000.0;
    }
    let v = v.strip_suffix('s').expect("ends with s");
    match v.split_once('m') {
        Some((m, s)) => m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap(),
        None => v.parse().unwrap(),
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_sane_retry_after() {
    let extra = "[clients.app]\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nrpm = 2\n\n[clients.tok]\nkey_sha256 = \"60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752\"\ntpm = 100\n";
    let lv = Llmvisor::start(extra, &mock_model("m", &[], "")).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for left in ["1", "0"] {
        let r = call(&lv, "test", "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), left);
    }
    let r = call(&lv, "test", "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    // One truth: Retry-After is the reset of the exhausted limit, rounded up.
    let reset = reset_secs(&header(&r, "x-ratelimit-reset-requests"));
    assert_eq!(wait, (reset.ceil() as u64).max(1), "reset {reset} s");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e["error"]["type"], "requests");

    // Tokens: 100 per minute, charged at admission as prompt + max_tokens and settled
    // with the usage (the mock writes at most 16 tokens).
    let ask = |max: u32| json!({"model": "m", "max_tokens": max, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(&lv, "test2", "/v1/chat/completions", &ask(90)).await;
    assert_eq!(r.status(), 200);
    let used = r.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    assert!(used < 30, "{used}");
    // ~74 more fits only because the first one used ~20 of the ~94 it was charged.
    let r = call(&lv, "test2", "/v1/chat/completions", &ask(70)).await;
    assert_eq!(
        r.status(),
        200,
        "the first request's unused tokens were not refunded"
    );
    let _ = r.text().await;
    let r = call(&lv, "test2", "/v1/chat/completions", &ask(90)).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let reset = reset_secs(&header(&r, "x-ratelimit-reset-tokens"));
    assert_eq!(wait, (reset.ceil() as u64).max(1), "reset {reset} s");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "tokens");
    // More than the whole limit: 429 without Retry-After (waiting cannot help).
    let huge = json!({"model": "m", "max_tokens": 500, "messages": []});
    let r = call(&lv, "test2", "/v1/chat/completions", &huge).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn a_request_refused_before_any_backend_costs_no_rate_limit() {
    let extra = "[clients.app]\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nrpm = 1\ntpm = 1000\n\n[clients.free]\nkey_sha256 = \"60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752\"\n";
    let lv = Llmvisor::start(
        extra,
        &mock_model(
            "q",
            &["--token-delay", "100ms", "--max-tokens", "10"],
            "max_concurrent = 1\nmax_queue = 1",
        ),
    )
    .await;
    let body =
        json!({"model": "q", "max_tokens": 400, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        call(&lv, "test2", "/v1/chat/completions", &body)
            .await
            .status(),
        200
    );
    // `free` fills the slot and the queue.
    let mut busy = Vec::new();
    for n in 0..2u64 {
        let (c, u, b) = (
            lv.client.clone(),
            lv.url("/v1/chat/completions"),
            body.clone(),
        );
        busy.push(tokio::spawn(async move {
            let r = c
                .post(u)
                .bearer_auth("test2")
                .json(&b)
                .send()
                .await
                .unwrap();
            r.status()
        }));
        // The first holds the slot, the second queues.
        if n == 0 {
            lv.wait_count("q", "in_flight", 1).await;
        } else {
            lv.wait_count("q", "queued", 1).await;
        }
    }
    // `app` is refused for a full queue, again and again: not for its rpm of 1
    // nor its tpm (each try is charged ~400 tokens at admission).
    for _ in 0..3 {
        let r = call(&lv, "test", "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 429);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "queue_full", "{e}");
    }
    for b in busy {
        assert_eq!(b.await.unwrap(), 200);
    }
    // Served: that one counts.
    let r = call(&lv, "test", "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    let r = call(&lv, "test", "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limit_exceeded"
    );
}

#[tokio::test]
async fn interactive_requests_overtake_waiting_batch_ones() {
    let extra = "[clients.ui]\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n[clients.batch]\nkey_sha256 = \"60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752\"\npriority = \"batch\"\n";
    let lv = Llmvisor::start(
        extra,
        &mock_model(
            "m",
            &["--token-delay", "200ms", "--max-tokens", "3"],
            "max_concurrent = 1\nidle_ttl = \"0\"",
        ),
    )
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    // Warm up so every request below queues only for the slot.
    assert_eq!(
        call(&lv, "test", "/v1/chat/completions", &body)
            .await
            .status(),
        200
    );
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, key) in ["test2", "test2", "test2", "test"].into_iter().enumerate() {
        let (c, u, b, o) = (
            lv.client.clone(),
            lv.url("/v1/chat/completions"),
            body.clone(),
            order.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = c.post(u).bearer_auth(key).json(&b).send().await.unwrap();
            assert_eq!(r.status(), 200);
            o.lock().unwrap().push(i);
        }));
        // In this order: the first holds the slot, the others queue behind it.
        if i == 0 {
            lv.wait_count("m", "in_flight", 1).await;
        } else {
            lv.wait_count("m", "queued", i as u64).await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    // The first batch request had the slot; the interactive one (3) came last but
    // goes before the two batch requests still waiting.
    assert_eq!(order, vec![0, 3, 1, 2]);
}

/// Seed 004: three hosts on the tailnet, health-checked; one dies mid-burst.
#[tokio::test]
async fn homelab_hosts_fail_over_without_losing_requests() {
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(
            Host::start(
                "llama3.1:8b",
                &["--token-delay", "5ms", "--max-tokens", "8"],
            )
            .await,
        );
    }
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/homelab.toml"
    ))
    .unwrap();
    let port = free_port();
    let mut config = String::new();
    let mut next = 0;
    for line in text.lines() {
        let line = if line.starts_with("listen = ") {
            format!("listen = [\"127.0.0.1:{port}\"]")
        } else if line.starts_with("base_url = ") {
            next += 1;
            format!(
                "base_url = \"http://127.0.0.1:{}/v1\"",
                hosts[next - 1].port
            )
        } else if line.starts_with("health_interval") {
            "health_interval = \"100ms\"".to_string()
        } else if line.starts_with("port = ") {
            format!("port = {}", free_port())
        } else {
            line.replace("\"llmvisor-mock\"", &format!("{MOCK:?}"))
        };
        config.push_str(&line);
        config.push('\n');
    }
    assert_eq!(next, 3, "three hosts in examples/homelab.toml");
    let lv = Llmvisor::start_raw(port, &config).await;
    let body = json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]});
    let send = |lv: &Llmvisor| {
        let (c, u, b) = (
            lv.client.clone(),
            lv.url("/v1/chat/completions"),
            body.clone(),
        );
        tokio::spawn(async move {
            let r = c
                .post(u)
                .bearer_auth("sk-webui-demo")
                .json(&b)
                .send()
                .await
                .unwrap();
            let target = r
                .headers()
                .get("x-llmvisor-target")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), target)
        })
    };
    // A burst spread over all three.
    let burst: Vec<_> = (0..30).map(|_| send(&lv)).collect();
    let mut seen = std::collections::HashSet::new();
    for t in burst {
        let (status, target) = t.await.unwrap();
        assert_eq!(status, 200);
        seen.insert(target.unwrap());
    }
    assert_eq!(seen.len(), 3, "least-outstanding spreads a burst: {seen:?}");

    // Kill one host in the middle of a second burst.
    let mut burst = Vec::new();
    for i in 0..60 {
        if i == 20 {
            hosts[1].kill();
        }
        burst.push(send(&lv));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut statuses = Vec::new();
    for t in burst {
        statuses.push(t.await.unwrap().0);
    }
    // Requests in flight on the dead host are retried before their first byte.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Once the health check marks it down, it gets nothing.
    eventually(Duration::from_secs(5), async || {
        let h = lv.get_json("/health").await;
        (h["providers"]["nyx"]["healthy"] == false)
            .then_some(())
            .ok_or(format!("not marked down: {h}"))
    })
    .await;
    for _ in 0..10 {
        let (status, target) = send(&lv).await.unwrap();
        assert_eq!(status, 200);
        assert_ne!(target.as_deref(), Some("nyx/llama3.1:8b"));
    }
    assert_eq!(lv.metric("llmvisor_provider_up{target=\"nyx\"}").await, 0.0);
}

/// `llmvisor check-config` on `toml`, with `CREDENTIALS_DIRECTORY` as given.
fn check_config(
    dir: &std::path::Path,
    toml: &str,
    credentials: Option<&std::path::Path>,
) -> (i32, String, String) {
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(common::LLMVISOR);
    cmd.arg("check-config").arg("--config").arg(&path);
    match credentials {
        Some(c) => cmd.env("CREDENTIALS_DIRECTORY", c),
        None => cmd.env_remove("CREDENTIALS_DIRECTORY"),
    };
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn auth_none_is_refused_on_a_network_listener() {
    let dir = tempfile::tempdir().unwrap();
    let model = "[models.m]\nkind = \"command\"\ncommand = [\"x\"]\n";
    let (code, _, err) = check_config(
        dir.path(),
        &format!("[server]\nlisten = \"0.0.0.0:8080\"\nauth = \"none\"\n{model}"),
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("server.auth: \"none\" lets anyone who reaches 0.0.0.0:8080 use every model"),
        "{err}"
    );
    // A key file that cannot be read is a problem with its key path.
    let (code, _, err) = check_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[clients.a]\nkey_file = \"/nonexistent/a.key\"\n{model}"
        ),
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("clients.a.key_file: cannot read /nonexistent/a.key"),
        "{err}"
    );
    // A relative one is a systemd credential: noted by check-config, read at start.
    let relative = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[clients.a]\nkey_file = \"client-a\"\n{model}"
    );
    let (code, out, err) = check_config(dir.path(), &relative, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("not checked"));
    // With the credentials directory set, it is read from there.
    std::fs::write(dir.path().join("client-a"), "sk-a\n").unwrap();
    let (code, _, err) = check_config(dir.path(), &relative, Some(dir.path()));
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn a_reload_rereads_key_files_and_routes() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("app.key");
    std::fs::write(&key, "sk-old\n").unwrap();
    let extra = format!(
        "[clients.app]\nkey_file = {:?}\n",
        key.display().to_string()
    );
    let models = mock_model("m", &[], "");
    let lv = Llmvisor::start(&extra, &models).await;
    let body = json!({"model": "m", "messages": []});
    assert_eq!(
        call(&lv, "sk-old", "/v1/chat/completions", &body)
            .await
            .status(),
        200
    );
    // Rotate the key and add a route; `systemctl reload` is a SIGHUP.
    std::fs::write(&key, "sk-new\n").unwrap();
    lv.reconfigure(&format!(
        "{models}\n[routes.alias-route]\ntargets = [\"m\"]\n"
    ));
    lv.wait_log("reloaded", Duration::from_secs(5)).await;
    assert_eq!(
        call(&lv, "sk-old", "/v1/chat/completions", &body)
            .await
            .status(),
        401
    );
    assert_eq!(
        call(&lv, "sk-new", "/v1/chat/completions", &body)
            .await
            .status(),
        200
    );
    let r = call(
        &lv,
        "sk-new",
        "/v1/chat/completions",
        &json!({"model": "alias-route", "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-llmvisor-target"), "m");
    // A key file that vanished rejects the reload; the running keys stay.
    std::fs::remove_file(&key).unwrap();
    lv.reconfigure(&models);
    lv.wait_log("reload rejected", Duration::from_secs(5)).await;
    assert!(lv.log().contains("clients.app.key_file: cannot read"));
    assert_eq!(
        call(&lv, "sk-new", "/v1/chat/completions", &body)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_models_tokenizer_counts_for_the_context_guard() {
    // A word-level tokenizer: "hello" is one token, so 1000 × "hello " is 1000 tokens,
    // where the heuristic would count 1500.
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(
        &tok,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":1},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let with = format!(
        "context_length = 1100\ntokenizer = {:?}",
        tok.display().to_string()
    );
    let models = format!(
        "{}{}",
        mock_model("exact", &[], &with),
        mock_model("guess", &[], "context_length = 1100")
    );
    let lv = Llmvisor::start("", &models).await;
    let body = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hello ".repeat(1000)}]});
    assert_eq!(
        lv.post("/v1/chat/completions", &body("exact"))
            .await
            .status(),
        200
    );
    let r = lv.post("/v1/chat/completions", &body("guess")).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(1507 in the messages"),
        "{e}"
    );
    // A tokenizer file that does not load is a configuration problem with its path.
    std::fs::write(&tok, "{not a tokenizer").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nauth = \"none\"\n{}",
            mock_model("exact", &[], &with)
        ),
    )
    .unwrap();
    let out = Command::new(common::LLMVISOR)
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("models.exact.tokenizer: cannot load"));
}

#[test]
fn a_world_readable_key_file_is_pointed_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("a.key");
    std::fs::write(&key, "sk-a\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n[clients.a]\nkey_file = {:?}\n[models.m]\nkind = \"command\"\ncommand = [\"x\"]\n",
        key.display().to_string()
    );
    let (code, out, _) = check_config(dir.path(), &toml, None);
    assert_eq!(code, 0);
    assert!(
        out.contains("clients.a.key_file:") && out.contains("is readable by every user"),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, _) = check_config(dir.path(), &toml, None);
    assert_eq!(code, 0);
    assert!(!out.contains("readable by every user"), "{out}");
}

#[tokio::test]
async fn with_no_target_left_the_backends_own_error_reaches_the_client() {
    // The fallback is a host that is down (nothing listens there): once its health
    // check says so, a 500 from the primary is passed on as it is, not replaced by
    // a 502 for a retry that cannot happen.
    let extra = format!(
        "{CLIENT}\n[providers.gone]\nbase_url = \"http://127.0.0.1:{}/v1\"\nhealth_path = \"/health\"\nhealth_interval = \"100ms\"\nunhealthy_after = 1\n\n[routes.r]\ntargets = [\"bad\"]\nfallback = [\"gone/x\"]\n",
        free_port()
    );
    let lv = Llmvisor::start(
        &extra,
        &mock_model("bad", &["--fail-rate", "1.0"], "idle_ttl = \"0\""),
    )
    .await;
    eventually(Duration::from_secs(5), async || {
        let h = lv.get_json("/health").await;
        (h["providers"]["gone"]["healthy"] == false)
            .then_some(())
            .ok_or(format!("the host is not marked down: {h}"))
    })
    .await;
    let r = call(
        &lv,
        "test",
        "/v1/chat/completions",
        &json!({"model": "r", "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 500);
    assert_eq!(header(&r, "x-llmvisor-target"), "bad");
}
