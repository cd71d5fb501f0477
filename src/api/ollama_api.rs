//! Ollama's API on every model, whatever its kind: `/api/version`, `/api/tags`,
//! `/api/ps`, `/api/show`, and `/api/chat`, `/api/generate`, `/api/embed`,
//! `/api/embeddings` translated by [`super::ollama`] and sent through the same path
//! as `/v1/chat/completions` (keys, routing, limits, queueing, cold starts, usage
//! accounting, the request log). Streams are NDJSON; errors are Ollama's
//! `{"error": "..."}` with the status of the underlying error.
//!
//! `keep_alive: 0` stops the model once the answer is out (a request with no
//! messages or prompt just stops it, as Ollama's "unload" does). Any other
//! `keep_alive` becomes the model's idle TTL from then on, counted from its last
//! request as Ollama counts it (a negative one: never idle out); a request without
//! `keep_alive` puts the configured `idle_ttl` back, as Ollama goes back to its
//! default. Only a request that was served sets it.

// Helpers short-circuit with a ready-made `Response` as their `Err`, moved once on
// a cold path (as src/api/messages.rs does with its tuple).
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::ollama::{self, Api, StreamTranslator, Timing};
use super::{App, admit, openai};
use crate::auth::Denied;
use crate::fleet::{Instance, State as ModelState, StopReason};
use crate::router::NameKind;

/// The Ollama API version whose shapes llmvisor speaks (clients show it; some
/// check for a minimum).
pub const VERSION: &str = "0.13.3";

/// Largest answer read back to translate (a non-streamed one).
const MAX_ANSWER: usize = 64 << 20;

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `GET /api/version`.
pub async fn version() -> Response {
    axum::Json(json!({"version": VERSION})).into_response()
}

/// The client of a request's key; an Ollama-shaped 401 without one.
fn client(app: &App, headers: &HeaderMap) -> Result<Arc<crate::auth::Client>, Response> {
    app.policy().auth.identify(headers).map_err(|d| {
        error(
            StatusCode::UNAUTHORIZED,
            match d {
                Denied::Missing => {
                    "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
                }
                Denied::Invalid => "Incorrect API key provided.",
            },
        )
    })
}

/// What `details` says of a model: its file format from the kind.
fn details(kind: Option<crate::config::Kind>) -> Value {
    let format = match kind {
        Some(crate::config::Kind::LlamaCpp | crate::config::Kind::Ollama) => "gguf",
        Some(crate::config::Kind::Vllm) => "safetensors",
        _ => "",
    };
    json!({"parent_model": "", "format": format, "family": "", "families": null,
           "parameter_size": "", "quantization_level": ""})
}

/// A stable digest for a name (Ollama lists a sha256 per model).
fn digest(name: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(name.as_bytes()))
}

/// GPU memory a placed model holds: its `vram` on each GPU it runs on.
fn vram_bytes(i: &Instance) -> u64 {
    let gpus = i
        .placed_gpus()
        .unwrap_or_else(|| i.spec.limits.gpus.clone())
        .len() as u64;
    i.spec.gpu.vram.unwrap_or(0) * gpus
}

/// One entry of `/api/tags` or `/api/ps`.
fn entry(app: &App, name: &str, inst: Option<&Instance>) -> Value {
    let size = inst.map_or(0, vram_bytes);
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(app.started),
        "size": size,
        "digest": digest(name),
        "details": details(inst.map(|i| i.spec.kind)),
    })
}

/// `GET /api/tags`: every public name the client may use.
pub async fn tags(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let client = match client(&app, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let policy = app.policy();
    let models: Vec<Value> = policy
        .router
        .public_names()
        .iter()
        .filter(|p| client.may_use(&p.name))
        .map(|p| {
            let inst = p.instance.as_deref().and_then(|i| app.fleet.get(i));
            entry(&app, &p.name, inst.as_deref())
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

/// `GET /api/ps`: the models running now, with `expires_at` from the idle TTL and
/// `size_vram` from the GPU placement.
pub async fn ps(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let client = match client(&app, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let policy = app.policy();
    let now = SystemTime::now();
    let models: Vec<Value> = policy
        .router
        .public_names()
        .iter()
        .filter(|p| p.kind != NameKind::Route && client.may_use(&p.name))
        .filter_map(|p| {
            let inst = app.fleet.get(p.instance.as_deref()?)?;
            if inst.state() != ModelState::Ready {
                return None;
            }
            // Never stopped for idleness: far in the future, as Ollama shows
            // `keep_alive: -1`.
            let expires = match inst.idle_ttl() {
                Some(ttl) => now + ttl.saturating_sub(inst.idle_for().unwrap_or_default()),
                None => now + Duration::from_secs(100 * 365 * 86400),
            };
            let mut e = entry(&app, &p.name, Some(&inst));
            e["expires_at"] = json!(rfc3339(expires));
            e["size_vram"] = json!(vram_bytes(&inst));
            if let Some(n) = inst.spec.context_length {
                e["context_length"] = json!(n);
            }
            Some(e)
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

/// `POST /api/show`: what llmvisor knows of a model.
pub async fn show(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let client = match client(&app, &parts.headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bytes = match admit::read_body(&app, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return error(e.render().status, &e.render().message),
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(name) = v["model"].as_str().or_else(|| v["name"].as_str()) else {
        return error(StatusCode::BAD_REQUEST, "model is required");
    };
    let name = name.to_string();
    let policy = app.policy();
    let Some(p) = policy
        .router
        .public_names()
        .iter()
        .find(|p| p.name == name && client.may_use(&p.name))
    else {
        return error(StatusCode::NOT_FOUND, &format!("model '{name}' not found"));
    };
    let inst = p.instance.as_deref().and_then(|i| app.fleet.get(i));
    let caps: Vec<String> = inst
        .as_ref()
        .map_or_else(Vec::new, |i| i.spec.capabilities.clone());
    let mut ollama_caps = Vec::new();
    if caps.iter().any(|c| c == "chat" || c == "completion") {
        ollama_caps.extend(["completion", "tools"]);
    }
    if caps.iter().any(|c| c == "embedding") {
        ollama_caps.push("embedding");
    }
    let mut info = serde_json::Map::new();
    info.insert("general.architecture".into(), json!("llmvisor"));
    if let Some(n) = inst.as_ref().and_then(|i| i.spec.context_length) {
        info.insert("llmvisor.context_length".into(), json!(n));
    }
    axum::Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": details(inst.as_ref().map(|i| i.spec.kind)),
        "model_info": info,
        "capabilities": ollama_caps,
        "modified_at": rfc3339(app.started),
    }))
    .into_response()
}

/// `POST /api/chat`.
pub async fn chat(State(app): State<Arc<App>>, req: Request) -> Response {
    generate_or_chat(app, req, Api::Chat).await
}

/// `POST /api/generate`.
pub async fn generate(State(app): State<Arc<App>>, req: Request) -> Response {
    generate_or_chat(app, req, Api::Generate).await
}

/// The request's JSON, or an Ollama-shaped 400.
async fn read(app: &App, req: Request) -> Result<(axum::http::request::Parts, Value), Response> {
    let (parts, body) = req.into_parts();
    let bytes = admit::read_body(app, &parts.headers, body)
        .await
        .map_err(|e| error(e.render().status, &e.render().message))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))?;
    if v["model"].as_str().is_none_or(str::is_empty) {
        return Err(error(StatusCode::BAD_REQUEST, "model is required"));
    }
    Ok((parts, v))
}

/// Send `body` to `path` through the chat path with the client's headers.
async fn forward(
    app: Arc<App>,
    parts: &axum::http::request::Parts,
    path: &'static str,
    body: &Value,
) -> Response {
    let mut inner = Request::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *inner.method_mut() = Method::POST;
    *inner.uri_mut() = Uri::from_static(path);
    *inner.headers_mut() = parts.headers.clone();
    inner.headers_mut().remove(header::CONTENT_LENGTH);
    inner.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *inner.extensions_mut() = parts.extensions.clone();
    openai::forward(State(app), inner).await
}

/// The instance a public name reaches (models and aliases; not routes).
fn instance_of(app: &App, name: &str) -> Option<Arc<Instance>> {
    app.fleet.get(app.policy().router.resolve(name)?)
}

/// `keep_alive: 0`: stop the model (after what is in flight).
fn stop_now(app: &App, name: &str) {
    if let Some(inst) = instance_of(app, name) {
        let grace = app.settings.server.shutdown_grace.0;
        tracing::info!(model = %inst.name(), "keep_alive 0: stopping");
        tokio::spawn(async move { inst.stop(StopReason::Idle, grace).await });
    }
}

/// A served request's `keep_alive` other than 0 (seconds; negative: forever;
/// None: absent) as the model's idle TTL from now on (see the module doc).
fn keep_alive_ttl(app: &App, name: &str, secs: Option<f64>) {
    let Some(inst) = instance_of(app, name) else {
        return;
    };
    match secs {
        Some(0.0) => {}
        Some(s) if s < 0.0 => inst.set_idle_ttl(Some(None)),
        Some(s) => inst.set_idle_ttl(Some(Some(Duration::from_secs_f64(s.min(1e12))))),
        None => inst.set_idle_ttl(None),
    }
}

/// Milliseconds of an `x-llmvisor-*-ms` header.
fn header_ms(h: &HeaderMap, name: &str) -> u64 {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An error response of the chat path in Ollama's shape, same status and headers.
async fn ollama_error(resp: Response) -> Response {
    let (mut head, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(head, Body::from(ollama::error_body(&v).to_string()))
}

async fn generate_or_chat(app: Arc<App>, req: Request, api: Api) -> Response {
    let started = Instant::now();
    let (parts, v) = match read(&app, req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = v["model"].as_str().unwrap_or_default().to_string();
    let keep_alive = ollama::keep_alive_secs(&v);
    // No messages (chat) or no prompt (generate): Ollama's load / unload request.
    let empty = match api {
        Api::Chat => match &v["messages"] {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            _ => false,
        },
        Api::Generate => v["prompt"].as_str().is_none_or(str::is_empty),
    };
    if empty {
        if let Err(r) = client(&app, &parts.headers) {
            return r;
        }
        let Some(inst) = instance_of(&app, &model) else {
            return error(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
        };
        let reason = if keep_alive == Some(0.0) {
            stop_now(&app, &model);
            "unload"
        } else {
            keep_alive_ttl(&app, &model, keep_alive);
            inst.begin_start(false);
            "load"
        };
        let mut out = json!({"model": model, "created_at": rfc3339(SystemTime::now()),
                             "done": true, "done_reason": reason});
        match api {
            Api::Chat => out["message"] = json!({"role": "assistant", "content": ""}),
            Api::Generate => out["response"] = json!(""),
        }
        return axum::Json(out).into_response();
    }
    let translated = match api {
        Api::Chat => ollama::chat_request(&v, &model).map(|b| ("/v1/chat/completions", b)),
        Api::Generate => ollama::generate_request(&v, &model),
    };
    let (path, body) = match translated {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.0),
    };
    let stream = ollama::streams(&v);
    let sent = Instant::now();
    let resp = forward(app.clone(), &parts, path, &body).await;
    if keep_alive == Some(0.0) {
        stop_now(&app, &model);
    }
    if !resp.status().is_success() {
        return ollama_error(resp).await;
    }
    keep_alive_ttl(&app, &model, keep_alive);
    let (mut head, body) = resp.into_parts();
    let load_ns = (header_ms(&head.headers, "x-llmvisor-cold-start-ms")
        + header_ms(&head.headers, "x-llmvisor-queue-ms"))
        * 1_000_000;
    head.headers.remove(header::CONTENT_LENGTH);
    if !stream {
        let Ok(bytes) = axum::body::to_bytes(body, MAX_ANSWER).await else {
            return error(
                StatusCode::BAD_GATEWAY,
                "the model's answer could not be read",
            );
        };
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let total = started.elapsed().as_nanos() as u64;
        let timing = Timing {
            total_ns: total,
            load_ns,
            prompt_eval_ns: 0,
            eval_ns: sent.elapsed().as_nanos() as u64,
            ..Timing::default()
        };
        let out =
            ollama::response_from_openai(api, &answer, &model, &rfc3339(SystemTime::now()), timing);
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        return Response::from_parts(head, Body::from(out.to_string()));
    }
    // NDJSON, translated event by event in a task of its own; when the client
    // leaves, the channel closes and the task drops the chat stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut t = StreamTranslator::new(api, &model);
        let mut chunks = body.into_data_stream();
        let mut buf = Vec::<u8>::new();
        let mut first: Option<Instant> = None;
        let mut failed = false;
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            let mut out = String::new();
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    let now = rfc3339(SystemTime::now());
                    for o in t.push(data, &now) {
                        first.get_or_insert_with(Instant::now);
                        failed |= o.get("error").is_some();
                        out.push_str(&o.to_string());
                        out.push('\n');
                    }
                }
                // `: loading` comments while a model starts have no NDJSON form.
            }
            if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                return;
            }
        }
        if failed {
            return;
        }
        let end = Instant::now();
        let first = first.unwrap_or(end);
        let timing = Timing {
            total_ns: end.duration_since(started).as_nanos() as u64,
            load_ns,
            prompt_eval_ns: first.duration_since(sent).as_nanos() as u64,
            eval_ns: end.duration_since(first).as_nanos() as u64,
            ..Timing::default()
        };
        if let Some(last) = t.finish(&rfc3339(SystemTime::now()), timing) {
            let _ = tx.send(Ok(Bytes::from(format!("{last}\n")))).await;
        }
    });
    super::channel_response(head, "application/x-ndjson", rx)
}

/// `POST /api/embed`.
pub async fn embed(State(app): State<Arc<App>>, req: Request) -> Response {
    embeddings(app, req, false).await
}

/// `POST /api/embeddings` (the older single-prompt form).
pub async fn embeddings_legacy(State(app): State<Arc<App>>, req: Request) -> Response {
    embeddings(app, req, true).await
}

async fn embeddings(app: Arc<App>, req: Request, legacy: bool) -> Response {
    let started = Instant::now();
    let (parts, v) = match read(&app, req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let model = v["model"].as_str().unwrap_or_default().to_string();
    let body = match ollama::embed_request(&v, &model, legacy) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.0),
    };
    let resp = forward(app.clone(), &parts, "/v1/embeddings", &body).await;
    let keep_alive = ollama::keep_alive_secs(&v);
    if keep_alive == Some(0.0) {
        stop_now(&app, &model);
    }
    if !resp.status().is_success() {
        return ollama_error(resp).await;
    }
    keep_alive_ttl(&app, &model, keep_alive);
    let (mut head, body) = resp.into_parts();
    let load_ns = (header_ms(&head.headers, "x-llmvisor-cold-start-ms")
        + header_ms(&head.headers, "x-llmvisor-queue-ms"))
        * 1_000_000;
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ANSWER).await else {
        return error(
            StatusCode::BAD_GATEWAY,
            "the model's answer could not be read",
        );
    };
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let timing = Timing {
        total_ns: started.elapsed().as_nanos() as u64,
        load_ns,
        ..Timing::default()
    };
    let out = ollama::embed_response(&answer, &model, legacy, timing);
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Response::from_parts(head, Body::from(out.to_string()))
}
