//! Real inference: llama.cpp's `llama-server` as a `kind = "llama-cpp"` model under
//! llmvisor (the `process` unit manager), serving the tiny random-weight GGUF that
//! `scripts/llama-fixture.sh` builds. Everything the mock stands in for elsewhere is
//! checked here against the real server: the derived command line, the health check
//! and the loading state, chat, streaming with usage, embeddings, the concurrency
//! queue, idle stop, a killed server, a missing model file.
//!
//! Needs the fixture (`scripts/llama-fixture.sh`, about 8 minutes once). Without it
//! each test says SKIPPED loudly; under `CI=true` it fails instead.

mod common;
#[macro_use]
mod llama_fixture;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use llama_fixture::Fixture;
use serde_json::{Value, json};

/// A `[models.<name>]` table running the real server on the tiny model.
fn llama_model(f: &Fixture, name: &str, extra: &str) -> String {
    llama_model_file(f, name, &f.model.display().to_string(), extra)
}

fn llama_model_file(f: &Fixture, name: &str, model: &str, extra: &str) -> String {
    format!(
        "[models.{name}]\nkind = \"llama-cpp\"\nmodel = {model:?}\nexecutable = {:?}\nport = {}\nstart_timeout = \"60s\"\n{extra}\n",
        f.server.display().to_string(),
        free_port()
    )
}

/// The pid of the llama-server listening on `port` (from /proc).
fn backend_pid(port: u16) -> Option<u32> {
    let want = port.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_server = args.first().is_some_and(|a| a.ends_with("llama-server"));
        if is_server && args.windows(2).any(|w| w[0] == "--port" && w[1] == want) && alive(pid) {
            return Some(pid);
        }
    }
    None
}

/// The sum of a counter over every series whose labels contain all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A deterministic chat body (greedy, fixed seed, exactly `n` tokens).
fn chat_body(model: &str, n: u32, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello tiny model, say something"}],
        "max_tokens": n,
        "temperature": 0,
        "seed": 7,
        "ignore_eos": true,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

/// POST straight to the backend on `port`, bypassing llmvisor.
async fn direct(lv: &Llmvisor, port: u16, path: &str, body: &Value) -> reqwest::Response {
    lv.client
        .post(format!("http://127.0.0.1:{port}{path}"))
        .json(body)
        .send()
        .await
        .expect("direct request")
}

/// Parse an SSE body into its JSON `data:` payloads (without `[DONE]`).
fn sse_events(text: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if data.trim() == "[DONE]" {
                done = true;
            } else if let Ok(v) = serde_json::from_str::<Value>(data) {
                events.push(v);
            }
        }
    }
    (events, done)
}

#[tokio::test]
async fn cold_start_on_demand_shows_loading_until_health_answers_200_then_chats() {
    let f = require_llama!();
    // A 512 Ki-token context makes llama-server allocate and clear a 256 MB KV cache
    // before it is ready: about half a second in which it answers /health with 503
    // (it opens its port before it loads). Its slots are capped to the model's
    // training context (4096) afterwards.
    let lv = Llmvisor::start(
        "",
        &llama_model(
            &f,
            "tiny",
            "context_length = 524288\nmax_concurrent = 1\nextra_args = [\"--flash-attn\", \"on\"]\n",
        ),
    )
    .await;
    assert_eq!(lv.state("tiny").await, "stopped");
    let port = lv.model("tiny").await["port"].as_u64().unwrap() as u16;

    let client = lv.client.clone();
    let url = lv.url("/v1/chat/completions");
    let body = chat_body("tiny", 8, false);
    let req = tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() });

    // While llmvisor says `loading`, ask the server's /health ourselves.
    let mut states = Vec::new();
    let mut while_loading = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = lv.state("tiny").await;
        if states.last() != Some(&s) {
            states.push(s.clone());
        }
        if s == "loading"
            && let Ok(r) = lv
                .client
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
        {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            // llmvisor may have seen the 200 in between; only count answers given
            // while it still said `loading`.
            if lv.state("tiny").await == "loading" {
                while_loading.push((status, text));
            }
        }
        if s == "ready" || s == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "states {states:?}\n{}", lv.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        states.last().unwrap(),
        "ready",
        "states {states:?}\n{}",
        lv.log()
    );
    assert!(states.contains(&"loading".to_string()), "states {states:?}");
    assert!(
        while_loading
            .iter()
            .any(|(status, text)| *status == 503 && text.contains("Loading model")),
        "the server never said 503 Loading model while llmvisor showed loading: {while_loading:?}"
    );
    // Ready in llmvisor means ready in the server.
    let r = lv
        .client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("\"ok\""));

    let resp = req.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-llmvisor-model"], "tiny");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 8, "{body}");
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty(), "{body}");
    // The server knows the model by its alias (--alias <served_name>).
    assert_eq!(body["model"], "tiny", "{body}");

    // The derived command line, as the process manager logged it.
    let log = lv.log();
    let started = log
        .lines()
        .find(|l| l.contains("started: ") && l.contains("llama-server"))
        .unwrap_or_else(|| panic!("no start line:\n{log}"));
    for arg in [
        format!("--model {}", f.model.display()),
        "--host 127.0.0.1".into(),
        format!("--port {port}"),
        "--ctx-size 524288".into(),
        "--parallel 1".into(),
        "--alias tiny".into(),
    ] {
        assert!(started.contains(&arg), "{arg} missing: {started}");
    }
    assert!(log.contains("ready after"), "{log}");
    // The server's own output is in llmvisor's log, tagged with the model.
    assert!(log.contains("model loaded"), "{log}");
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"tiny\"}")
            .await,
        1.0
    );

    // Warm now: a second request does not start anything.
    let resp = lv
        .post("/v1/chat/completions", &chat_body("tiny", 4, false))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"tiny\"}")
            .await,
        1.0
    );
    let models = lv.get_json("/v1/models").await;
    let entry = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "tiny")
        .unwrap();
    assert_eq!(entry["state"], "ready");
    assert_eq!(entry["max_model_len"], 524288);
}

#[tokio::test]
async fn stream_with_include_usage_relays_every_token_and_counts_what_the_server_counts() {
    let f = require_llama!();
    let lv = Llmvisor::start("", &llama_model(&f, "tiny", "context_length = 1024\n")).await;
    let port = lv.model("tiny").await["port"].as_u64().unwrap() as u16;

    let resp = lv
        .post("/v1/chat/completions", &chat_body("tiny", 24, true))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let t0 = Instant::now();
    let chunks = read_stream(resp, t0).await;
    let text: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    let (events, done) = sse_events(&text);
    assert!(done, "no [DONE]:\n{text}");
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty(), "{text}");
    let usage = events
        .iter()
        .rev()
        .find(|e| e["usage"].is_object())
        .map(|e| e["usage"].clone())
        .unwrap_or_else(|| panic!("no usage chunk:\n{text}"));
    assert_eq!(usage["completion_tokens"], 24, "{usage}");
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);

    // Straight to the server, the same greedy request: the same text and usage.
    let resp = direct(
        &lv,
        port,
        "/v1/chat/completions",
        &chat_body("tiny", 24, true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let direct_text = resp.text().await.unwrap();
    let (direct_events, _) = sse_events(&direct_text);
    let direct_content: String = direct_events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    let direct_usage = direct_events
        .iter()
        .rev()
        .find(|e| e["usage"].is_object())
        .map(|e| e["usage"].clone())
        .unwrap();
    assert_eq!(direct_usage["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(
        direct_usage["completion_tokens"],
        usage["completion_tokens"]
    );
    assert_eq!(direct_content, content, "greedy decoding is deterministic");

    // llmvisor's own accounting took the server's numbers from the final chunk.
    let metrics = lv.metrics_text().await;
    let counted = |kind: &str| {
        metric_sum(
            &metrics,
            "llmvisor_tokens_total",
            &["target=\"tiny\"", &format!("kind=\"{kind}\"")],
        )
    };
    assert_eq!(counted("completion"), 24.0, "{metrics}");
    assert_eq!(counted("prompt"), prompt as f64, "{metrics}");

    // And a non-streaming request is counted from its `usage` the same way.
    let body: Value = lv
        .post("/v1/chat/completions", &chat_body("tiny", 5, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let metrics = lv.metrics_text().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "llmvisor_tokens_total",
            &["target=\"tiny\"", "kind=\"completion\""]
        ),
        29.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn embeddings_come_from_a_second_instance_next_to_a_chat_one() {
    let f = require_llama!();
    let models = format!(
        "{}{}",
        llama_model(&f, "tiny", "context_length = 512\n"),
        llama_model(
            &f,
            "tiny-embed",
            "context_length = 512\nembeddings = true\nextra_args = [\"--pooling\", \"mean\"]\n"
        )
    );
    let lv = Llmvisor::start("", &models).await;
    let resp = lv
        .post(
            "/v1/embeddings",
            &json!({"model": "tiny-embed", "input": ["hello world", "the tiny model"]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let data = body["data"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(data.len(), 2, "{body}");
    let a = data[0]["embedding"].as_array().unwrap();
    let b = data[1]["embedding"].as_array().unwrap();
    assert_eq!(a.len(), 64, "the model's width");
    assert_eq!(b.len(), 64);
    assert_ne!(a, b);
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
    // Only the embedding instance started; the chat one starts on its own request.
    assert_eq!(lv.state("tiny-embed").await, "ready");
    assert_eq!(lv.state("tiny").await, "stopped");
    assert_eq!(lv.chat("tiny").await.status(), 200);
    assert_eq!(lv.state("tiny").await, "ready");
    let log = lv.log();
    assert!(
        log.lines().any(|l| l.contains("started: ")
            && l.contains("--alias tiny-embed --embeddings --pooling mean")),
        "{log}"
    );
}

#[tokio::test]
async fn the_queue_holds_requests_beyond_max_concurrent_and_refuses_beyond_max_queue() {
    let f = require_llama!();
    let lv = Llmvisor::start(
        "",
        &llama_model(
            &f,
            "one",
            "context_length = 4096\nmax_concurrent = 1\nmax_queue = 1\nqueue_timeout = \"60s\"\n",
        ),
    )
    .await;
    // Warm it up, so the timings below are generation only.
    assert_eq!(lv.chat("one").await.status(), 200);

    let spawn = |n: u32| {
        let client = lv.client.clone();
        let url = lv.url("/v1/chat/completions");
        let body = chat_body("one", n, false);
        tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), Instant::now())
        })
    };
    let first = spawn(1500);
    // Until the first one holds the only slot.
    eventually(Duration::from_secs(10), async || {
        if lv.model("one").await["in_flight"] != 1 {
            Err(format!("{}", lv.model("one").await))
        } else {
            Ok(())
        }
    })
    .await;
    let second = spawn(4);
    eventually(Duration::from_secs(10), async || {
        if lv.model("one").await["queued"] != 1 {
            Err(format!("{}", lv.model("one").await))
        } else {
            Ok(())
        }
    })
    .await;
    // Slot taken, queue full: the third is refused at once.
    let third = lv
        .post("/v1/chat/completions", &chat_body("one", 4, false))
        .await;
    assert_eq!(third.status(), 429);
    let m = lv.model("one").await;
    assert_eq!(m["in_flight"], 1, "{m}");
    assert_eq!(m["queued"], 1, "{m}");

    let (s1, t1) = first.await.unwrap();
    let (s2, t2) = second.await.unwrap();
    assert_eq!((s1, s2), (200, 200));
    assert!(
        t2 >= t1,
        "the queued request finished before the one it waited for"
    );
}

#[tokio::test]
async fn an_idle_server_is_stopped_and_the_next_request_starts_it_again() {
    let f = require_llama!();
    let lv = Llmvisor::start("", &llama_model(&f, "tiny", "idle_ttl = \"1s\"\n")).await;
    let port = lv.model("tiny").await["port"].as_u64().unwrap() as u16;
    assert_eq!(lv.chat("tiny").await.status(), 200);
    let pid = backend_pid(port).expect("a llama-server on the model's port");
    lv.wait_state("tiny", "stopped", Duration::from_secs(15))
        .await;
    eventually(Duration::from_secs(10), async || {
        if alive(pid) {
            Err(format!("llama-server {pid} still runs"))
        } else {
            Ok(())
        }
    })
    .await;
    assert!(lv.log().contains("idle"), "{}", lv.log());
    assert_eq!(lv.chat("tiny").await.status(), 200);
    assert_ne!(backend_pid(port), Some(pid));
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"tiny\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_killed_server_fails_in_flight_requests_with_502_and_restarts_on_the_next() {
    let f = require_llama!();
    let lv = Llmvisor::start(
        "",
        &llama_model(
            &f,
            "tiny",
            "context_length = 16384\nmax_concurrent = 2\nrestart_backoff = \"100ms\"\n",
        ),
    )
    .await;
    let port = lv.model("tiny").await["port"].as_u64().unwrap() as u16;
    assert_eq!(lv.chat("tiny").await.status(), 200);
    let pid = backend_pid(port).expect("a llama-server on the model's port");

    // Two long generations in flight: one plain, one streaming.
    let client = lv.client.clone();
    let url = lv.url("/v1/chat/completions");
    let body = chat_body("tiny", 7000, false);
    let plain = tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() });
    let stream = lv
        .post("/v1/chat/completions", &chat_body("tiny", 7000, true))
        .await;
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    // The first tokens arrived: generation is under way.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first chunk")
        .expect("a chunk")
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    eventually(Duration::from_secs(10), async || {
        if lv.model("tiny").await["in_flight"] != 2 {
            Err(format!("{}", lv.model("tiny").await))
        } else {
            Ok(())
        }
    })
    .await;

    signal(pid, nix::sys::signal::Signal::SIGKILL);

    let resp = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("the in-flight request ended")
        .unwrap();
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "backend_error", "{err}");
    // The stream ends with an error event instead of hanging.
    let mut rest = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(chunk)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        body.next(),
    )
    .await
    {
        match chunk {
            Ok(b) => rest.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => break,
        }
    }
    assert!(Instant::now() < deadline, "the stream did not end");
    assert!(
        rest.contains("\"error\""),
        "no error event at the end:\n{}",
        &rest[rest.len().saturating_sub(500)..]
    );

    lv.wait_state("tiny", "failed", Duration::from_secs(10))
        .await;
    let m = lv.model("tiny").await;
    assert_eq!(m["exit"]["signal"], 9, "{m}");

    // The next request restarts it: a new server process answers.
    let resp = lv
        .post("/v1/chat/completions", &chat_body("tiny", 4, false))
        .await;
    assert_eq!(resp.status(), 200);
    let new_pid = backend_pid(port).expect("a new llama-server");
    assert_ne!(new_pid, pid);
    assert_eq!(lv.state("tiny").await, "ready");
    assert_eq!(
        lv.metric("llmvisor_model_starts_total{model=\"tiny\"}")
            .await,
        2.0
    );
    assert_eq!(
        lv.metric("llmvisor_model_failures_total{model=\"tiny\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_missing_model_file_fails_the_start_with_the_servers_own_error() {
    let f = require_llama!();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model.gguf");
    let lv = Llmvisor::start(
        "",
        &llama_model_file(&f, "ghost", &missing.display().to_string(), ""),
    )
    .await;
    let resp = lv.chat("ghost").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    let m = lv.model("ghost").await;
    assert_eq!(m["state"], "failed", "{m}");
    assert_eq!(m["exit"]["code"], 1, "{m}");
    let last_error = m["last_error"].as_str().unwrap();
    assert!(last_error.contains("exited with status 1"), "{m}");
    // llama-server's own last words (`E srv  llama_server: exiting due to model
    // loading error`) are in /health.
    assert!(last_error.contains("model loading error"), "{m}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("ghost"),
        "{body}"
    );
    // The log has every line the server wrote, the cause included.
    let log = lv.log();
    let cause = log
        .lines()
        .find(|l| l.contains("failed to open GGUF file") && l.contains("model=ghost"))
        .unwrap_or_else(|| panic!("no cause in the log:\n{log}"));
    assert!(
        cause.contains(&*missing.display().to_string())
            && cause.contains("No such file or directory"),
        "{cause}"
    );
}

#[tokio::test]
async fn the_tiny_llama_example_serves_a_real_generation_and_embeddings() {
    let f = require_llama!();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/tiny-llama.toml"
    ))
    .unwrap();
    let port = free_port();
    let config = example
        .replace(
            "/var/cache/llmvisor-test/llama/llama-server",
            &f.server.display().to_string(),
        )
        .replace(
            "/var/cache/llmvisor-test/llama/tiny.gguf",
            &f.model.display().to_string(),
        )
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        // Ports of the harness's own: the example's automatic ones (28100 and
        // 28101, `server.port_range`) were held against no other test, inside the
        // range the harness hands out. One full run here (357 other tests) saw a
        // 503 in 0.7 s, which a model port already taken would give; alone the
        // test passed 4 times in 4.
        .replace(
            "[models.tiny]\n",
            &format!("[models.tiny]\nport = {}\n", free_port()),
        )
        .replace(
            "[models.tiny-embed]\n",
            &format!("[models.tiny-embed]\nport = {}\n", free_port()),
        );
    assert_eq!(config.matches("\nport = ").count(), 2, "{config}");
    let lv = Llmvisor::start_raw(port, &config).await;
    // The alias reaches the real server; the answer is generated text.
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o-mini", "max_tokens": 16,
                    "messages": [{"role": "user", "content": "Hello!"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert_eq!(body["choices"][0]["message"]["role"], "assistant", "{body}");
    let resp = lv
        .post(
            "/v1/embeddings",
            &json!({"model": "tiny-embed", "input": "Hello!"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 64);
}

/// The context guard counts one slot's share of a llama.cpp model's window, as
/// llama-server splits it: `context_length = 512` with `max_concurrent = 2` is
/// `--ctx-size 512 --parallel 2`, 256 tokens a request. A request estimated at 315
/// tokens fits the window but not a slot: it goes to the route's next target,
/// where before it went to the server and came back a 400
/// (`exceed_context_size_error`). A short one still goes to llama.cpp.
#[tokio::test]
async fn a_request_longer_than_a_llama_slot_goes_to_the_next_target() {
    let f = require_llama!();
    let models = format!(
        "{}{}",
        llama_model(&f, "small", "context_length = 512\nmax_concurrent = 2\n"),
        mock_model("wide", &[], "context_length = 8192\n"),
    );
    let lv = Llmvisor::start(
        "\n[routes.chat]\ntargets = [\"small\", \"wide\"]\n",
        &models,
    )
    .await;
    // The target that answered a chat of `words` words, which must be a 200.
    let answered_by = async |words: usize| {
        let body = json!({"model": "chat", "max_tokens": 8,
               "messages": [{"role": "user", "content": vec!["word"; words].join(" ")}]});
        let resp = lv.post("/v1/chat/completions", &body).await;
        let target = resp.headers().get("x-llmvisor-target").cloned();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        target.unwrap().to_str().unwrap().to_string()
    };
    // 240 words of 5 characters: 315 tokens by llmvisor's estimate (one per 4
    // characters, the chat overhead and max_tokens), between a slot (256) and the
    // window (512). (The tiny model's own tokenizer makes several of each word.)
    assert_eq!(answered_by(240).await, "wide");
    // 20 words: llama.cpp's slot holds it (the tiny model's tokenizer splits a
    // word into several tokens, so it is kept short).
    assert_eq!(answered_by(20).await, "small");
}
