//! llmvisor's Ollama API beyond what the `ollama` client tests cover
//! (tests/real_clients.rs): `keep_alive: 0` stops the model, other values set its
//! idle TTL, the load/unload
//! requests without messages, NDJSON streaming, and errors as `{"error": "..."}`
//! with the status of the underlying error. Against the mock (OpenAI's API; the
//! translation is llmvisor's).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn keep_alive_zero_stops_the_model_and_errors_are_ollama_shaped() {
    let lv = Llmvisor::start("", &mock_model("m", &["--max-tokens", "3"], "")).await;
    // Load request: no messages.
    let r = lv
        .post("/api/chat", &json!({"model": "m", "messages": []}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["done_reason"], "load");
    lv.wait_state("m", "ready", Duration::from_secs(10)).await;

    // A streamed chat is NDJSON, ending with the counts.
    let r = lv
        .post(
            "/api/chat",
            &json!({"model": "m", "messages": [{"role": "user", "content": "a b"}]}),
        )
        .await;
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["eval_count"], 3);
    assert_eq!(last["prompt_eval_count"], 3);

    // keep_alive 0: answered, then the model stops.
    let r = lv
        .post(
            "/api/generate",
            &json!({"model": "m", "prompt": "x", "stream": false, "keep_alive": 0}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["response"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true)
    );
    lv.wait_state("m", "stopped", Duration::from_secs(10)).await;

    // Unload request of a stopped model: nothing to do, still answered.
    let r = lv
        .post("/api/generate", &json!({"model": "m", "keep_alive": "0"}))
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["done_reason"], "unload");

    for (body, status) in [
        (json!({"messages": []}), 400),
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            404,
        ),
        (json!({"model": "m", "messages": "x"}), 400),
    ] {
        let r = lv.post("/api/chat", &body).await;
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].is_string(), "{e}");
    }
    let v: Value = lv.get_json("/api/version").await;
    assert!(v["version"].is_string());
}

/// Seconds from now to the model's `expires_at` in `/api/ps`.
async fn expires_in(lv: &Llmvisor, model: &str) -> f64 {
    let ps = lv.get_json("/api/ps").await;
    let m = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model || m["model"] == model)
        .unwrap_or_else(|| panic!("{model} in {ps}"))
        .clone();
    let t = humantime::parse_rfc3339(m["expires_at"].as_str().unwrap()).unwrap();
    match t.duration_since(std::time::SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// `keep_alive` other than 0 is the model's idle TTL from then on, as Ollama
/// (docs/faq.md: a duration string or seconds, negative = stay loaded) counts it:
/// from the last request. `-1` shows as far in the future in `/api/ps`; a request
/// without `keep_alive` puts the configured `idle_ttl` (1 h) back; `"2s"` stops
/// the model two seconds after its answer.
#[tokio::test]
async fn keep_alive_sets_the_idle_ttl() {
    let lv = Llmvisor::start(
        "",
        &mock_model("m", &["--max-tokens", "2"], "idle_ttl = \"1h\""),
    )
    .await;
    let gen_ = async |keep_alive: Option<Value>| {
        let mut body = json!({"model": "m", "prompt": "x", "stream": false});
        if let Some(k) = keep_alive {
            body["keep_alive"] = k;
        }
        let r = lv.post("/api/generate", &body).await;
        assert_eq!(r.status(), 200);
    };
    gen_(Some(json!(-1))).await;
    let e = expires_in(&lv, "m").await;
    assert!(e > 50.0 * 365.0 * 86400.0, "{e}");
    gen_(None).await;
    let e = expires_in(&lv, "m").await;
    assert!((3500.0..=3600.0).contains(&e), "{e}");
    gen_(Some(json!("10m"))).await;
    let e = expires_in(&lv, "m").await;
    assert!((500.0..=600.0).contains(&e), "{e}");

    gen_(Some(json!("2s"))).await;
    let e = expires_in(&lv, "m").await;
    assert!(e <= 2.0, "{e}");
    lv.wait_state("m", "stopped", Duration::from_secs(10)).await;
    assert!(lv.log().contains("idle for 2s; stopping"), "{}", lv.log());
}
