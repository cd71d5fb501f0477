//! Every bad-input and overload case answers in OpenAI's error shape with the right
//! status: 400, 404, 405, 413, 429, 503, 504.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "wrong status");
    let body: Value = resp.json().await.expect("a JSON error body");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].as_str().is_some(), "{body}");
    body
}

#[tokio::test]
async fn bad_requests() {
    let lv = Llmvisor::start("max_body = \"1KiB\"", &mock_model("m", &[], "")).await;
    let raw = |body: &'static str| {
        lv.client
            .post(lv.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(raw("{not json").await.unwrap(), 400, "invalid_json").await;
    // Invalid UTF-8 inside a string of a field llmvisor does not read itself.
    let resp = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            &b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\xff\xfeb\"}]}"[..],
        )
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid_json").await;
    // Refused at the edge: the model was not even started for it.
    assert_eq!(lv.state("m").await, "stopped");
    expect_error(raw("[1, 2]").await.unwrap(), 400, "invalid_json").await;
    expect_error(raw("").await.unwrap(), 400, "invalid_json").await;
    expect_error(
        raw(r#"{"messages": []}"#).await.unwrap(),
        400,
        "missing_model",
    )
    .await;
    expect_error(
        raw(r#"{"model": null}"#).await.unwrap(),
        400,
        "missing_model",
    )
    .await;
    expect_error(raw(r#"{"model": 42}"#).await.unwrap(), 400, "invalid_model").await;
    expect_error(
        raw(r#"{"model": "m", "stream": "yes"}"#).await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    let body = expect_error(
        raw(r#"{"model": "gpt-5"}"#).await.unwrap(),
        404,
        "model_not_found",
    )
    .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("gpt-5"));

    let big = format!(
        r#"{{"model": "m", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(4096)
    );
    let resp = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "request_too_large").await;
    // Without a Content-Length (chunked upload) the limit holds as well.
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(512)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "request_too_large").await;

    expect_error(
        lv.client.get(lv.url("/v1/nothing")).send().await.unwrap(),
        404,
        "unknown_url",
    )
    .await;
    expect_error(
        lv.client
            .get(lv.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    // None of this started the model.
    assert_eq!(lv.state("m").await, "stopped");
    // And a good request still works afterwards.
    assert_eq!(lv.chat("m").await.status(), 200);
}

#[tokio::test]
async fn an_odd_typed_field_does_not_switch_off_the_context_guard() {
    let lv = Llmvisor::start("", &mock_model("m", &[], "context_length = 64")).await;
    let long = "word ".repeat(400);
    // `"query": 1` (or any field of an unexpected type) used to zero the estimate.
    for odd in [
        r#""query": 1"#,
        r#""max_tokens": "8""#,
        r#""documents": {"a": 1}"#,
    ] {
        let body = format!(
            r#"{{"model": "m", {odd}, "messages": [{{"role": "user", "content": "{long}"}}, 7]}}"#
        );
        let resp = lv
            .client
            .post(lv.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "context_length_exceeded").await;
    }
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "q",
            &["--token-delay", "100ms", "--max-tokens", "10"],
            "max_concurrent = 1\nmax_queue = 1",
        ),
    )
    .await;
    assert_eq!(lv.chat("q").await.status(), 200);
    let mut slow = Vec::new();
    slow.push(lv.spawn_chat("q"));
    lv.wait_count("q", "in_flight", 1).await;
    slow.push(lv.spawn_chat("q"));
    lv.wait_count("q", "queued", 1).await;
    let m = lv.model("q").await;
    assert_eq!(
        (m["in_flight"].as_u64(), m["queued"].as_u64()),
        (Some(1), Some(1)),
        "{m}"
    );
    let resp = lv.chat("q").await;
    assert_eq!(resp.headers()["retry-after"], "1");
    expect_error(resp, 429, "queue_full").await;
    for s in slow {
        assert_eq!(s.await.unwrap(), 200, "queued requests are served in turn");
    }
}

#[tokio::test]
async fn queue_timeout_is_503_with_retry_after() {
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "q",
            &["--token-delay", "100ms", "--max-tokens", "15"],
            "max_concurrent = 1\nmax_queue = 4\nqueue_timeout = \"400ms\"",
        ),
    )
    .await;
    assert_eq!(lv.chat("q").await.status(), 200);
    let slow = lv.spawn_chat("q");
    lv.wait_count("q", "in_flight", 1).await;
    let t0 = Instant::now();
    let resp = lv.chat("q").await;
    let waited = t0.elapsed();
    assert!(resp.headers().contains_key("retry-after"));
    expect_error(resp, 503, "queue_timeout").await;
    assert!(waited >= Duration::from_millis(380), "{waited:?}");
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn start_timeout_is_503() {
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "never",
            &["--startup-delay", "60s"],
            "start_timeout = \"700ms\"",
        ),
    )
    .await;
    let t0 = Instant::now();
    let resp = lv.chat("never").await;
    assert!(resp.headers().contains_key("retry-after"));
    expect_error(resp, 503, "model_start_timeout").await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The model is marked failed with the reason, and its process stopped.
    lv.wait_state("never", "failed", Duration::from_secs(5))
        .await;
    let m = lv.model("never").await;
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("not healthy within"),
        "{m}"
    );
}

#[tokio::test]
async fn backend_timeout_is_504() {
    let lv = Llmvisor::start(
        "upstream_header_timeout = \"300ms\"",
        &mock_model(
            "slow",
            &["--token-delay", "200ms", "--max-tokens", "10"],
            "",
        ),
    )
    .await;
    let resp = lv.chat("slow").await;
    expect_error(resp, 504, "backend_timeout").await;
}

#[tokio::test]
async fn backend_error_status_is_relayed() {
    let lv = Llmvisor::start("", &mock_model("f", &["--fail-rate", "1"], "")).await;
    let resp = lv.chat("f").await;
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].is_object(), "{body}");
}

#[tokio::test]
async fn program_that_cannot_start_is_failed_with_the_reason() {
    let models = format!(
        "[models.ghost]\nkind = \"command\"\ncommand = [\"/nonexistent/server\", \"{{port}}\"]\nport = {}\n",
        free_port()
    );
    let lv = Llmvisor::start("", &models).await;
    let resp = lv.chat("ghost").await;
    let body = expect_error(resp, 503, "model_start_failed").await;
    // The client's message leaks no paths; /health has the details for operators.
    assert!(!body.to_string().contains("/nonexistent"), "{body}");
    let m = lv.model("ghost").await;
    assert_eq!(m["state"], "failed");
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/server"),
        "{m}"
    );
    assert_eq!(lv.get_json("/health").await["status"], "degraded");
}
