//! The proxy leg: bodies reach the backend unchanged (but for `model`), streams are
//! relayed as they come, a client that goes away cancels the backend request.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test]
async fn unknown_fields_reach_the_backend_and_model_is_rewritten() {
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "qwen",
            &[],
            "served_name = \"Qwen/Qwen2.5-7B-Instruct\"\naliases = [\"gpt-4o\"]",
        ),
    )
    .await;
    // Odd spacing, key order, numbers and unicode must survive byte for byte.
    let sent = r#"{ "top_k": 7,"model" : "gpt-4o", "messages":[{"role":"user","content":"héllo"}],
        "repetition_penalty": 1.10, "tools": [{"type":"function","function":{"name":"f","parameters":{}}}],
        "response_format": {"type": "json_object"}, "guided_choice": ["a","b"], "seed": 12345678901234567890 }"#;
    let resp = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-secret")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "Qwen/Qwen2.5-7B-Instruct");

    let stats = lv.mock_stats("qwen").await;
    let got = &stats["last_request"];
    assert_eq!(got["model"], "Qwen/Qwen2.5-7B-Instruct");
    assert_eq!(got["top_k"], 7);
    assert_eq!(got["repetition_penalty"], 1.10);
    assert_eq!(got["tools"][0]["function"]["name"], "f");
    assert_eq!(got["response_format"]["type"], "json_object");
    assert_eq!(got["guided_choice"], json!(["a", "b"]));
    assert_eq!(got["messages"][0]["content"], "héllo");
    // The client's credentials never reach the backend.
    assert!(
        stats["last_headers"].get("authorization").is_none(),
        "{stats}"
    );
}

#[tokio::test]
async fn body_is_byte_identical_when_the_name_needs_no_rewrite() {
    let lv = Llmvisor::start("", &mock_model("m", &[], "")).await;
    let sent = r#"{"model":"m","messages":[{"role":"user","content":"a"}],"x_unknown":{"deep":[1,2.50,null]}}"#;
    let resp = lv
        .client
        .post(lv.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","prompt":"one two three","weird_field":1.50}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let resp = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = lv.mock_stats("m").await["last_request"].clone();
    assert_eq!(
        got,
        serde_json::from_str::<serde_json::Value>(sent).unwrap()
    );
}

#[tokio::test]
async fn streamed_chunks_reach_the_client_before_the_stream_ends() {
    let lv = Llmvisor::start(
        "",
        &mock_model("s", &["--token-delay", "150ms", "--max-tokens", "8"], ""),
    )
    .await;
    // Warm up so the timing below is the stream alone.
    assert_eq!(lv.chat("s").await.status(), 200);
    let t0 = Instant::now();
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "s", "stream": true, "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": "count"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let chunks = read_stream(resp, t0).await;
    let total = t0.elapsed();
    assert!(total >= Duration::from_millis(8 * 150), "{total:?}");
    let first_token = chunks
        .iter()
        .find(|(_, c)| c.contains("\"content\":\"") && !c.contains("\"content\":\"\""))
        .expect("a token chunk")
        .0;
    assert!(
        first_token < total / 2,
        "first token at {first_token:?} of {total:?}: the stream was buffered"
    );
    // Chunks arrive spread out, not in one burst at the end.
    assert!(chunks.len() >= 6, "only {} reads", chunks.len());
    let text: String = chunks.into_iter().map(|(_, c)| c).collect();
    assert!(text.contains("\"usage\":{\"prompt_tokens\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn client_disconnect_cancels_the_backend_request() {
    let lv = Llmvisor::start(
        "",
        &mock_model("s", &["--token-delay", "100ms", "--max-tokens", "100"], ""),
    )
    .await;
    assert_eq!(lv.chat("s").await.status(), 200);
    let resp = lv
        .post(
            "/v1/chat/completions",
            &json!({"model": "s", "stream": true, "messages": [{"role": "user", "content": "go"}]}),
        )
        .await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert_eq!(lv.mock_stats("s").await["in_flight"], 1);
    drop(stream);
    eventually(Duration::from_secs(3), async || {
        let stats = lv.mock_stats("s").await;
        (stats["cancelled"] == 1 && stats["in_flight"] == 0)
            .then_some(())
            .ok_or(format!("backend still streaming: {stats}"))
    })
    .await;
    // The slot is free again and the request is counted as closed by the client.
    assert_eq!(lv.model("s").await["in_flight"], 0);
    eventually(Duration::from_secs(2), async || {
        let n = lv
            .metric("llmvisor_requests_total{route=\"s\",target=\"s\",client=\"anonymous\",endpoint=\"chat/completions\",status=\"499\"}")
            .await;
        (n == 1.0).then_some(()).ok_or(format!("499 counted {n} times"))
    })
    .await;
}

#[tokio::test]
async fn embeddings_and_completions_are_forwarded() {
    let lv = Llmvisor::start("", &mock_model("e", &["--embedding-dim", "4"], "")).await;
    let resp = lv
        .post(
            "/v1/embeddings",
            &json!({"model": "e", "input": ["a b", "c"]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(body["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_frees_its_place() {
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
    let busy = lv.spawn_chat("q");
    lv.wait_count("q", "in_flight", 1).await;
    // This one queues, then gives up.
    let gave_up = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .timeout(Duration::from_millis(200))
        .json(&json!({"model": "q", "messages": [{"role": "user", "content": "y"}]}))
        .send()
        .await;
    assert!(gave_up.is_err());
    // The abandoned request gives its place back.
    lv.wait_count("q", "queued", 0).await;
    assert_eq!(
        lv.metric(
            "llmvisor_requests_total{route=\"q\",target=\"-\",client=\"anonymous\",endpoint=\"chat/completions\",status=\"499\"}"
        )
        .await,
        1.0
    );
    // Its place is free: another request queues instead of getting 429.
    assert_eq!(lv.chat("q").await.status(), 200);
    assert_eq!(busy.await.unwrap(), 200);
}

#[tokio::test]
async fn a_stream_options_of_the_client_is_replaced_or_merged_never_doubled() {
    let lv = Llmvisor::start(
        "",
        &mock_model("m", &["--max-tokens", "3"], "served_name = \"served\""),
    )
    .await;
    // `null` used to get a second `stream_options` key: the backend answered 400
    // "duplicate field". An object without include_usage gets the member added.
    for options in ["null", "{}", r#"{"continuous_usage_stats":false}"#] {
        let sent = format!(
            r#"{{"model":"m","stream":true,"stream_options":{options},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let resp = lv
            .client
            .post(lv.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(sent)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{options}");
        let text = resp.text().await.unwrap();
        assert!(
            text.trim_end().ends_with("data: [DONE]"),
            "{options}: {text}"
        );
        // The usage chunk llmvisor asked for is not the client's.
        assert!(!text.contains("usage"), "{options}: {text}");
        let stats = lv.mock_stats("m").await;
        let raw = stats["last_body"].as_str().unwrap();
        assert_eq!(raw.matches("\"stream_options\"").count(), 1, "{raw}");
        assert_eq!(raw.matches("\"model\"").count(), 1, "{raw}");
        assert_eq!(stats["last_request"]["model"], "served");
        assert_eq!(
            stats["last_request"]["stream_options"]["include_usage"], true,
            "{raw}"
        );
    }
    // The client's own `include_usage` is left as it is.
    let sent = r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await.unwrap();
    let stats = lv.mock_stats("m").await;
    assert_eq!(
        stats["last_body"].as_str().unwrap(),
        sent.replace("\"m\"", "\"served\"")
    );
}

#[tokio::test]
async fn headers_named_in_connection_stay_on_their_hop() {
    let lv = Llmvisor::start("", &mock_model("m", &["--hop-header", "x-secret"], "")).await;
    // The backend's response: `Connection: x-secret` and `x-secret: 1`.
    for stream in [false, true] {
        let resp = lv
            .client
            .post(lv.url("/v1/chat/completions"))
            // The client's request: its user-agent belongs to its own hop.
            .header("connection", "keep-alive, User-Agent")
            .header("user-agent", "hop-test/1")
            .header("accept", "*/*")
            .json(&json!({"model": "m", "stream": stream, "max_tokens": 2,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert!(h.get("x-secret").is_none(), "{h:?}");
        assert!(
            h.get_all("connection")
                .iter()
                .all(|v| !v.to_str().unwrap().contains("x-secret")),
            "{h:?}"
        );
        assert!(h.get("content-type").is_some());
        let _ = resp.bytes().await.unwrap();
        let stats = lv.mock_stats("m").await;
        let sent = &stats["last_headers"];
        assert!(sent.get("user-agent").is_none(), "{sent}");
        assert_eq!(sent["accept"], "*/*", "{sent}");
    }
    // The mock does send them (to llmvisor, directly).
    let port = lv.model("m").await["port"].as_u64().unwrap();
    let direct = lv
        .client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.headers()["x-secret"], "1");
    assert_eq!(direct.headers()["connection"], "x-secret");
}

/// Established TCP connections to `port` on this machine (the client side).
fn connections_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && f[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

#[tokio::test]
async fn idle_pooled_connections_to_a_backend_are_closed() {
    let lv = Llmvisor::start(
        "upstream_pool_idle_timeout = \"1s\"",
        &mock_model("m", &["--token-delay", "50ms", "--max-tokens", "4"], ""),
    )
    .await;
    assert_eq!(lv.chat("m").await.status(), 200);
    let port = lv.model("m").await["port"].as_u64().unwrap() as u16;
    // Four at once: four connections, then kept alive in the pool.
    let all: Vec<_> = (0..4).map(|_| lv.spawn_chat("m")).collect();
    for r in all {
        assert_eq!(r.await.unwrap(), 200);
    }
    let pooled = connections_to(port);
    assert!(pooled >= 4, "{pooled} connections to the backend");
    // Past the idle timeout they are closed (the health probe may hold one).
    eventually(Duration::from_secs(5), async || {
        let now = connections_to(port);
        (now <= 1)
            .then_some(())
            .ok_or(format!("{now} connections to the backend are still open"))
    })
    .await;
}
