//! The endpoints beyond chat: OpenAI's Responses API (`POST /v1/responses`) and
//! each kind's own paths passed through (`POST /tokenize` … picked by `model`,
//! `GET /upstream/<model>/props` …), with keys, limits and usage accounting as for
//! chat.
//!
//! Against the mock (its `/v1/responses` has the shapes the real llama-server
//! returned: named SSE events ending with `response.completed`, usage as
//! `input_tokens`/`output_tokens`) and against the real llama-server of
//! `scripts/llama-fixture.sh` (SKIPPED loudly without it; under CI=true a failure).

mod common;
#[macro_use]
mod llama_fixture;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Rows of the usage store: (endpoint, status, prompt_tokens, completion_tokens),
/// once `n` are there.
async fn usage_rows(lv: &Llmvisor, n: usize) -> Vec<(String, i64, Option<i64>, Option<i64>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = rusqlite::Connection::open(lv.usage_db())
            .and_then(|c| {
                let mut st = c.prepare(
                    "SELECT endpoint, status, prompt_tokens, completion_tokens FROM requests ORDER BY id",
                )?;
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_default();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} rows, not {n}:\n{}",
            rows.len(),
            lv.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `data:` payloads of an SSE body, with their `event:` names.
fn events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or("")
            .to_string();
        if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
            && let Ok(v) = serde_json::from_str(data)
        {
            out.push((name, v));
        }
    }
    out
}

/// `/v1/responses` to the mock, plain and streamed: relayed as the backend sent
/// it, counted under `responses` with the usage of the body and of the
/// `response.completed` event.
#[tokio::test]
async fn responses_are_forwarded_and_their_usage_accounted() {
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "m",
            &["--max-tokens", "5"],
            "served_name = \"served-m\"\naliases = [\"gpt-4.1-mini\"]",
        ),
    )
    .await;
    let r = lv
        .post(
            "/v1/responses",
            &json!({"model": "gpt-4.1-mini", "input": "one two three", "instructions": "be brief"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmvisor-model"], "m");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["model"], "served-m");
    // system (1) + 2 words, user (1) + 3 words.
    assert_eq!(body["usage"]["input_tokens"], 7);
    assert_eq!(body["usage"]["output_tokens"], 5);
    // The backend got the served name.
    assert_eq!(
        lv.mock_stats("m").await["last_request"]["model"],
        "served-m",
        "{}",
        lv.mock_stats("m").await
    );

    let r = lv
        .post(
            "/v1/responses",
            &json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a b"}]}],
                    "max_output_tokens": 3, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text().await.unwrap();
    let ev = events(&text);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"), "{text}");
    assert_eq!(names.last(), Some(&"response.completed"), "{text}");
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "response.output_text.delta")
            .count(),
        3
    );
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(done["usage"]["input_tokens"], 3);
    assert_eq!(done["usage"]["output_tokens"], 3);
    assert!(
        !text.contains("[DONE]"),
        "nothing added to the stream: {text}"
    );

    let rows = usage_rows(&lv, 2).await;
    assert_eq!(
        rows,
        vec![
            ("responses".into(), 200, Some(7), Some(5)),
            ("responses".into(), 200, Some(3), Some(3)),
        ]
    );
    let metrics = lv.metrics_text().await;
    assert!(
        metrics.contains("endpoint=\"responses\""),
        "no responses series in /metrics"
    );
}

/// `/v1/messages` to a model marked `anthropic = "native"` (the mock's
/// `/v1/messages`: llama-server's answer, Anthropic's stream): the body reaches the backend's
/// `/v1/messages` untranslated but for `model`, the answer and the stream come
/// back as the backend sent them, counted under `messages` with the usage of the
/// body and of `message_start`/`message_delta`. A `translate` model of the same
/// mock gets chat completions; `count_tokens` is answered by llmvisor for both.
#[tokio::test]
async fn messages_are_forwarded_natively_and_their_usage_accounted() {
    let lv = Llmvisor::start(
        "",
        &format!(
            "{}{}",
            mock_model(
                "m",
                &["--max-tokens", "5"],
                "served_name = \"served-m\"\naliases = [\"claude-local\"]\nanthropic = \"native\"",
            ),
            mock_model("t", &[], "anthropic = \"translate\"")
        ),
    )
    .await;
    let ask = json!({"model": "claude-local", "max_tokens": 3, "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}]});
    let r = lv.post("/v1/messages", &ask).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llmvisor-model"], "m");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(body["model"], "served-m", "the backend's answer, as is");
    assert_eq!(body["stop_reason"], "max_tokens");
    // system (1) + 2 words, user (1) + 3 words.
    assert_eq!(
        body["usage"],
        json!({"cache_read_input_tokens": 0, "input_tokens": 7, "output_tokens": 3})
    );
    let last = lv.mock_stats("m").await["last_request"].clone();
    let mut sent = ask.clone();
    sent["model"] = json!("served-m");
    assert_eq!(last, sent, "untranslated but for the model");

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    streamed["max_tokens"] = json!(10);
    let r = lv.post("/v1/messages", &streamed).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let ev = events(&text);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count(),
        5
    );

    // The same request to a translating model: chat completions at the backend.
    let mut translated = ask.clone();
    translated["model"] = json!("t");
    let r = lv.post("/v1/messages", &translated).await;
    assert_eq!(r.status(), 200);
    let last = lv.mock_stats("t").await["last_request"].clone();
    assert_eq!(
        last["messages"][0],
        json!({"role": "system", "content": "be brief"}),
        "{last}"
    );

    let count = lv
        .post(
            "/v1/messages/count_tokens",
            &json!({"model": "claude-local", "messages": [{"role": "user", "content": "a b c"}]}),
        )
        .await;
    assert_eq!(count.status(), 200);
    assert!(count.json::<Value>().await.unwrap()["input_tokens"].as_u64() > Some(0));

    let rows = usage_rows(&lv, 3).await;
    assert_eq!(
        rows,
        vec![
            ("messages".into(), 200, Some(7), Some(3)),
            ("messages".into(), 200, Some(7), Some(5)),
            ("chat/completions".into(), 200, Some(7), Some(3)),
        ]
    );
    // Two requests at the native model, none of them a chat completion.
    assert_eq!(lv.mock_stats("m").await["requests"], 2);
}

/// Paths a kind's server lacks are refused with a 400 that says so (a `command`
/// model declares none but `/v1/models` and `/health`); an unknown model under
/// `/upstream/` is an unknown URL; keys apply before anything else.
#[tokio::test]
async fn pass_through_paths_a_kind_lacks_are_refused_cleanly() {
    let lv = Llmvisor::start(
        "[clients.app]\nkey_sha256 = \"f3abf2a6cc4f00987743db5f544ba345b4899ae31f326d8ee9c4816de153c9e0\"\n",
        &mock_model("m", &[], "aliases = [\"org/m\"]"),
    )
    .await;
    // sha256("sk-test") above.
    let key = "sk-test";
    let tokenize = lv
        .client
        .post(lv.url("/tokenize"))
        .bearer_auth(key)
        .json(&json!({"model": "m", "content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(tokenize.status(), 400);
    let e: Value = tokenize.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unsupported_endpoint", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not serve /tokenize"),
        "{e}"
    );

    let props = lv
        .client
        .get(lv.url("/upstream/m/props"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(props.status(), 400);
    let e: Value = props.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unsupported_endpoint", "{e}");

    // A declared GET path is forwarded, for a name with a `/` too.
    let models = lv
        .client
        .get(lv.url("/upstream/org/m/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(models.headers()["x-llmvisor-model"], "m");
    let v: Value = models.json().await.unwrap();
    assert_eq!(v["data"][0]["id"], "m", "{v}");

    let unknown = lv
        .client
        .get(lv.url("/upstream/nope/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let anonymous = lv
        .client
        .get(lv.url("/upstream/m/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// The real llama-server: `/v1/responses` (plain and streamed) with its usage in
/// the store, `POST /tokenize` and `/detokenize` picked by `model`, and
/// `GET /upstream/<model>/props` and `/slots`, all counted per endpoint.
#[tokio::test]
async fn real_llama_server_responses_and_its_own_paths() {
    let f = require_llama!();
    let lv = Llmvisor::start(
        "",
        &format!(
            "[models.tiny]\nkind = \"llama-cpp\"\nmodel = {:?}\nexecutable = {:?}\nport = {}\nstart_timeout = \"60s\"\n",
            f.model.display().to_string(),
            f.server.display().to_string(),
            free_port()
        ),
    )
    .await;
    let r = lv
        .post(
            "/v1/responses",
            &json!({"model": "tiny", "input": "hello there", "max_output_tokens": 4, "temperature": 0}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", lv.log());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "response", "{body}");
    let (input, output) = (
        body["usage"]["input_tokens"].as_i64().unwrap(),
        body["usage"]["output_tokens"].as_i64().unwrap(),
    );
    assert!(input > 0 && output > 0, "{body}");

    let r = lv
        .post(
            "/v1/responses",
            &json!({"model": "tiny", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 6,
                    "temperature": 0, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let ev = events(&text);
    let (name, last) = ev.last().expect("events");
    assert_eq!(name, "response.completed", "{text}");
    let s_usage = &last["response"]["usage"];

    let tok = lv
        .post(
            "/tokenize",
            &json!({"model": "tiny", "content": "hello world"}),
        )
        .await;
    assert_eq!(tok.status(), 200);
    assert_eq!(tok.headers()["x-llmvisor-model"], "tiny");
    let tokens: Value = tok.json().await.unwrap();
    assert!(!tokens["tokens"].as_array().unwrap().is_empty(), "{tokens}");
    let detok = lv
        .post(
            "/detokenize",
            &json!({"model": "tiny", "tokens": tokens["tokens"]}),
        )
        .await;
    assert_eq!(detok.status(), 200);
    assert!(
        detok.json::<Value>().await.unwrap()["content"].is_string(),
        "detokenize"
    );

    let props: Value = lv.get_json("/upstream/tiny/props").await;
    assert!(props["default_generation_settings"].is_object(), "{props}");
    let slots = lv
        .client
        .get(lv.url("/upstream/tiny/slots"))
        .send()
        .await
        .unwrap();
    assert_eq!(slots.status(), 200);
    assert!(slots.json::<Value>().await.unwrap().is_array());

    let rows = usage_rows(&lv, 6).await;
    let endpoints: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        endpoints,
        [
            "responses",
            "responses",
            "tokenize",
            "detokenize",
            "props",
            "slots"
        ]
    );
    assert_eq!((rows[0].2, rows[0].3), (Some(input), Some(output)));
    assert_eq!(
        (rows[1].2, rows[1].3),
        (
            s_usage["input_tokens"].as_i64(),
            s_usage["output_tokens"].as_i64()
        ),
        "{text}"
    );
    assert!(rows.iter().all(|r| r.1 == 200), "{rows:?}");
}

/// VmHWM / VmRSS of a process, KiB.
fn mem_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// FNV-1a 64, as the mock's upload endpoint computes it.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

/// A `kind = "vllm"` model (the kind that declares the audio paths) run by the
/// mock, which takes vLLM's argv; `max_body` small, to show it does not bound an
/// upload.
async fn audio_llmvisor() -> Llmvisor {
    Llmvisor::start(
        "max_body = \"1MiB\"\nmax_buffered_bodies = \"8MiB\"",
        &format!(
            "[models.whisper]\nkind = \"vllm\"\nmodel = \"openai/whisper-large-v3\"\nexecutable = {MOCK:?}\nport = {}\naliases = [\"whisper-1\"]\n",
            free_port()
        ),
    )
    .await
}

const B: &str = "llmvisor-test-boundary";

fn field(name: &str, value: &str) -> String {
    format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

fn file_head() -> String {
    format!(
        "--{B}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
}

/// A 50 MB upload to `/v1/audio/transcriptions`, 50 times `max_body`, in 64 KiB
/// chunks with its Content-Length (as httpx sends it): it reaches the backend
/// whole and unchanged (the mock's length and FNV-1a hash of what it got), while
/// llmvisor's peak RSS grows by far less than the body (a buffered body would
/// add all of it). Checked against the mock only (it reads multipart the way
/// vLLM's server does: fields, then the file); the real vLLM needs a GPU.
#[tokio::test]
async fn a_large_upload_is_streamed_through_not_buffered() {
    const SIZE: usize = 50 << 20;
    const CHUNK: usize = 64 << 10;
    let lv = audio_llmvisor().await;
    let pid = lv.child.as_ref().unwrap().id();
    // Start the model and warm the path with a small upload first.
    let small = format!(
        "{}{}{}RIFF\r\n--{B}--\r\n",
        field("model", "whisper"),
        field("response_format", "json"),
        file_head()
    );
    let r = lv
        .client
        .post(lv.url("/v1/audio/transcriptions"))
        .header("content-type", format!("multipart/form-data; boundary={B}"))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", lv.log());
    let before = mem_kib(pid, "VmHWM:");

    // The client says `whisper-1` (an alias): the backend gets `whisper`, two
    // bytes fewer, and a Content-Length that says so.
    let head = format!("{}{}", field("model", "whisper-1"), file_head());
    let sent_head = format!("{}{}", field("model", "whisper"), file_head());
    let tail = format!("\r\n--{B}--\r\n");
    let file_len = SIZE - head.len() - tail.len();
    let chunk = move |i: usize| -> Vec<u8> {
        let n = CHUNK.min(file_len - i * CHUNK);
        (0..n)
            .map(|j| (((i * CHUNK + j) * 2_654_435_761) >> 13) as u8)
            .collect()
    };
    let chunks = file_len.div_ceil(CHUNK);
    let mut want = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut want, sent_head.as_bytes());
    for i in 0..chunks {
        fnv(&mut want, &chunk(i));
    }
    fnv(&mut want, tail.as_bytes());
    let parts = futures_util::stream::iter(
        std::iter::once(head.into_bytes())
            .chain((0..chunks).map(chunk))
            .chain(std::iter::once(tail.into_bytes()))
            .map(Ok::<_, std::io::Error>),
    );
    let r = lv
        .client
        .post(lv.url("/v1/audio/transcriptions"))
        .header("content-type", format!("multipart/form-data; boundary={B}"))
        .header("content-length", SIZE)
        .body(reqwest::Body::wrap_stream(parts))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", lv.log());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["mock"]["bytes"], SIZE as u64 - 2, "{v}");
    assert_eq!(v["mock"]["fnv1a64"], format!("{want:016x}"), "{v}");
    assert_eq!(v["mock"]["model"], "whisper");
    let after = mem_kib(pid, "VmHWM:");
    let grew = after.saturating_sub(before);
    eprintln!(
        "llmvisor peak RSS {before} KiB before the {} MiB upload, {after} KiB after (+{grew} KiB)",
        SIZE >> 20
    );
    assert!(
        grew < (SIZE as u64 >> 10) / 4,
        "peak RSS grew by {grew} KiB for a {} KiB upload",
        SIZE >> 10
    );

    // Counted like any request, under its endpoint.
    let rows = usage_rows(&lv, 2).await;
    assert!(
        rows.iter()
            .filter(|r| r.0 == "v1/audio/transcriptions" && r.1 == 200)
            .count()
            == 2,
        "{rows:?}"
    );
}

/// `model` after the file part: read (buffered) as far as `max_body` to find it,
/// then sent on; past `max_body` without it, a 400 that says to send it first.
/// A form without `model` is a 400 too; no backend sees either.
#[tokio::test]
async fn a_model_field_after_the_file_is_found_within_max_body() {
    let lv = audio_llmvisor().await;
    let send = async |body: String| {
        let r = lv
            .client
            .post(lv.url("/v1/audio/translations"))
            .header("content-type", format!("multipart/form-data; boundary={B}"))
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let late = |file: usize| {
        format!(
            "{}{}\r\n{}--{B}--\r\n",
            file_head(),
            "x".repeat(file),
            field("model", "whisper")
        )
    };
    let (status, v) = send(late(200 << 10)).await;
    assert_eq!(status, 200, "{v}\n{}", lv.log());
    assert_eq!(v["mock"]["bytes"], late(200 << 10).len() as u64);
    let (status, v) = send(late(3 << 19)).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "missing_model");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send it before the file"),
        "{v}"
    );
    let (status, v) = send(format!("{}x\r\n--{B}--\r\n", file_head())).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("missing_model")),
        "{v}"
    );
}

/// `/v1/messages` forwarded to the real llama-server (`anthropic = "native"`; the
/// default for llama-cpp is to translate): its answer as is, counted under
/// `messages` with the usage of the body and of the stream's `message_delta`;
/// `count_tokens` answered by llama-server itself (it carries llmvisor's routing
/// headers). This llama-server's stream has no `message_start` (so no input
/// tokens: counted as 0) — the reason llama-cpp translates by default; should a
/// build send it, this test says so and the defaults deserve another look.
#[tokio::test]
async fn real_llama_server_messages_are_forwarded_natively() {
    let f = require_llama!();
    let lv = Llmvisor::start(
        "",
        &format!(
            "[models.tiny]\nkind = \"llama-cpp\"\nmodel = {:?}\nexecutable = {:?}\nport = {}\nstart_timeout = \"60s\"\nanthropic = \"native\"\n",
            f.model.display().to_string(),
            f.server.display().to_string(),
            free_port()
        ),
    )
    .await;
    let r = lv
        .post(
            "/v1/messages",
            &json!({"model": "tiny", "max_tokens": 4, "system": "be brief",
                    "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", lv.log());
    assert_eq!(r.headers()["x-llmvisor-model"], "tiny");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(body["role"], "assistant", "{body}");
    assert!(
        body["stop_reason"] == "max_tokens" || body["stop_reason"] == "end_turn",
        "{body}"
    );
    let (input, output) = (
        body["usage"]["input_tokens"].as_i64().unwrap(),
        body["usage"]["output_tokens"].as_i64().unwrap(),
    );
    assert!(input > 0 && (1..=4).contains(&output), "{body}");

    let r = lv
        .post(
            "/v1/messages",
            &json!({"model": "tiny", "max_tokens": 5, "stream": true,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let ev = events(&text);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !names.contains(&"message_start"),
        "llama-server sends message_start now: {text}"
    );
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    let delta = ev
        .iter()
        .find(|(n, _)| n == "message_delta")
        .expect("message_delta");
    let s_output = delta.1["usage"]["output_tokens"].as_i64().unwrap();
    assert!((1..=5).contains(&s_output), "{text}");

    let count = lv
        .post(
            "/v1/messages/count_tokens",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "hello there"}]}),
        )
        .await;
    assert_eq!(count.status(), 200);
    assert_eq!(count.headers()["x-llmvisor-model"], "tiny", "forwarded");
    assert!(count.json::<Value>().await.unwrap()["input_tokens"].as_i64() > Some(0));

    // llama-server's own 400 (OpenAI-shaped) in Anthropic's shape.
    let bad = lv
        .post(
            "/v1/messages",
            &json!({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": 5}]}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["type"], "error", "{bad}");
    assert_eq!(bad["error"]["type"], "invalid_request_error", "{bad}");

    let rows = usage_rows(&lv, 4).await;
    assert_eq!(
        rows[..3],
        [
            ("messages".into(), 200, Some(input), Some(output)),
            ("messages".into(), 200, Some(0), Some(s_output)),
            ("messages/count_tokens".into(), 200, None, None),
        ]
    );
}
