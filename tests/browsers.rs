//! What browsers and model pickers need (issue 17): CORS from `[server]
//! cors_origins`, `GET /v1/models/{id}` (openai's `models.retrieve`), and what each
//! model is for in `/v1/models`. The preflight and response headers are checked
//! against the Fetch standard's CORS protocol, which is what a browser enforces,
//! and in a real browser: headless Chromium (Debian's `chromium`, see
//! `common::browser`) fetching from pages on two other loopback origins.

mod common;

use std::time::Duration;

use common::browser::{browser_or_skip, drive};
use common::{Llmvisor, eventually, example, free_port, mock_model};
use serde_json::Value;

async fn preflight(lv: &Llmvisor, origin: &str) -> reqwest::Response {
    lv.client
        .request(reqwest::Method::OPTIONS, lv.url("/v1/chat/completions"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

fn h(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn cors_preflight_and_responses_for_listed_origins_only() {
    let lv = Llmvisor::start(
        "cors_origins = [\"http://127.0.0.1:3000\"]",
        &mock_model("chat", &[], ""),
    )
    .await;
    let r = preflight(&lv, "http://127.0.0.1:3000").await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        h(&r, "access-control-allow-origin"),
        "http://127.0.0.1:3000"
    );
    assert!(h(&r, "access-control-allow-methods").contains("POST"));
    let allowed = h(&r, "access-control-allow-headers").to_lowercase();
    for name in ["authorization", "content-type", "x-api-key"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(h(&r, "access-control-max-age"), "600");
    assert!(h(&r, "vary").to_lowercase().contains("origin"));

    // The real request: allowed origin, and the headers a page may read.
    let r = lv
        .client
        .post(lv.url("/v1/chat/completions"))
        .header("origin", "http://127.0.0.1:3000")
        .json(&serde_json::json!({"model": "chat", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h(&r, "access-control-allow-origin"),
        "http://127.0.0.1:3000"
    );
    let exposed = h(&r, "access-control-expose-headers").to_lowercase();
    for name in [
        "x-request-id",
        "x-llmvisor-target",
        "x-ratelimit-remaining-requests",
        "retry-after",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }

    // Another origin gets no grant: the browser refuses the response.
    let r = preflight(&lv, "http://evil.example").await;
    assert_eq!(h(&r, "access-control-allow-origin"), "");
    let r = lv
        .client
        .get(lv.url("/v1/models"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(h(&r, "access-control-allow-origin"), "");
}

#[tokio::test]
async fn no_cors_headers_by_default() {
    let lv = Llmvisor::start("", &mock_model("chat", &[], "")).await;
    let r = preflight(&lv, "http://127.0.0.1:3000").await;
    assert_eq!(h(&r, "access-control-allow-origin"), "");
    let r = lv
        .client
        .get(lv.url("/v1/models"))
        .header("origin", "http://127.0.0.1:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "access-control-allow-origin"), "");
}

#[tokio::test]
async fn check_config_refuses_any_origin_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nauth = \"none\"\ncors_origins = \"*\"\n{}",
            mock_model("chat", &[], "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::LLMVISOR)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("server.cors_origins[0]: \"*\" (any origin) needs API keys"),
        "{text}"
    );
}

/// `models.retrieve` and capabilities, on the quick start (a chat model, a slow
/// one and an embedding model with an alias).
#[tokio::test]
async fn models_retrieve_and_capabilities() {
    let port = free_port();
    let lv = Llmvisor::start_raw(port, &example("quickstart.toml", port, &[])).await;
    let list = lv.get_json("/v1/models").await;
    let caps = |id: &str| -> Value {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {list}"))["capabilities"]
            .clone()
    };
    assert_eq!(caps("embed"), serde_json::json!(["embedding"]));
    assert_eq!(
        caps("text-embedding-3-small"),
        serde_json::json!(["embedding"])
    );
    assert_eq!(
        caps("gpt-4o-mini"),
        serde_json::json!(["chat", "completion"])
    );

    let one = lv.get_json("/v1/models/text-embedding-3-small").await;
    assert_eq!(one["id"], "text-embedding-3-small");
    assert_eq!(one["object"], "model");
    assert_eq!(one["alias_of"], "embed");
    let r = lv
        .client
        .get(lv.url("/v1/models/no-such-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");
}

/// The browser check: a page on an origin listed in `cors_origins` does a
/// `fetch` that needs a preflight (POST, JSON, `Authorization`) and reads the
/// exposed `x-llmvisor-target` / `x-request-id`; a page on an origin not listed
/// is refused by Chromium itself ("blocked by CORS policy", a `TypeError` in the
/// page) and its POST never leaves the browser: llmvisor records one request.
#[tokio::test]
async fn chromium_fetches_from_a_listed_origin_and_refuses_another() {
    let Some(python) = browser_or_skip("chromium_fetches_from_a_listed_origin_and_refuses_another")
    else {
        return;
    };
    let (ok_port, refused_port) = (free_port(), free_port());
    let lv = Llmvisor::start(
        &format!("cors_origins = [\"http://127.0.0.1:{ok_port}\"]"),
        &mock_model("chat", &[], ""),
    )
    .await;
    let out = drive(
        python,
        &lv,
        "cors",
        &[
            ("CORS_OK_PORT", ok_port.to_string()),
            ("CORS_REFUSED_PORT", refused_port.to_string()),
        ],
    )
    .await;
    assert!(out.contains("CORS policy"), "{out}");
    let requests = eventually(Duration::from_secs(5), async || {
        let v = lv.get_json("/admin/requests?limit=10").await;
        match v["requests"].as_array() {
            Some(a) if !a.is_empty() => Ok(a.clone()),
            _ => Err(format!("no request in the store yet: {v}")),
        }
    })
    .await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["status"], 200);
}
