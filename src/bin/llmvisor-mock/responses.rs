//! `POST /v1/responses`: OpenAI's Responses API in the shapes llama-server
//! returns (checked against the cached llama-server build: a `response` object
//! with one `message` output item of `output_text` parts and `usage.input_tokens`
//! / `output_tokens`; a stream of named SSE events `response.created` …
//! `response.output_text.delta` … `response.completed`, the last one carrying the
//! whole response with its usage, and no `[DONE]`).
//!
//! Token counting as for chat: `instructions` counts as a system message, a string
//! `input` as one user message; `max_output_tokens` is the request's limit.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::generate::{self, Prompt};
use crate::state::{self, AppState, Call, Flavor};
use crate::stream::{self, Frame};

/// `input`: a string, or a list of message items (other item types are ignored).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    /// One user message.
    Text(String),
    /// Items; only those with a `role` count.
    Items(Vec<Value>),
}

/// The fields the mock reads; the rest (tools, temperature, …) is ignored.
#[derive(Debug, Deserialize)]
struct ResponsesRequest {
    model: Option<String>,
    input: Input,
    instructions: Option<String>,
    stream: Option<bool>,
    max_output_tokens: Option<u64>,
}

fn prompt(req: &ResponsesRequest) -> Prompt {
    let mut p = Prompt::default();
    if let Some(i) = &req.instructions {
        p.message("system");
        p.text(i);
    }
    match &req.input {
        Input::Text(s) => {
            p.message("user");
            p.text(s);
        }
        Input::Items(items) => {
            for item in items {
                let Some(role) = item.get("role").and_then(Value::as_str) else {
                    continue;
                };
                p.message(role);
                match item.get("content") {
                    Some(Value::String(s)) => p.text(s),
                    Some(Value::Array(parts)) => {
                        for part in parts {
                            if let Some(t) = part.get("text").and_then(Value::as_str) {
                                p.text(t);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    p
}

/// One named SSE event, as llama-server and vLLM send them.
fn event(value: &Value) -> Bytes {
    let kind = value["type"].as_str().unwrap_or("unknown");
    Bytes::from(format!("event: {kind}\ndata: {value}\n\n"))
}

/// `POST /v1/responses`.
pub async fn responses(
    State(st): State<&'static AppState>,
    Call { headers, body }: Call,
) -> Response {
    let adm = match st.admit(Flavor::OpenAi, headers, &body) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let req: ResponsesRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return adm.reject(state::bad_request(
                Flavor::OpenAi,
                &format!("Invalid request body: {e}"),
            ));
        }
    };
    if !st.model_matches(req.model.as_deref(), Flavor::OpenAi) {
        return adm.reject(state::model_not_found(
            Flavor::OpenAi,
            req.model.as_deref().unwrap_or_default(),
        ));
    }
    let p = prompt(&req);
    let (n, _finish) = generate::completion_len(req.max_output_tokens, st.cfg.max_tokens);
    let id = format!("resp_mock{}", adm.index);
    let msg_id = format!("msg_mock{}", adm.index);
    let created = state::unix_now();
    let model = st.cfg.served_name.as_str();
    let seed = p.seed();
    let usage = json!({
        "input_tokens": p.tokens(),
        "output_tokens": n,
        "total_tokens": p.tokens() + n,
        "input_tokens_details": {"cached_tokens": 0},
    });
    let text = generate::text(seed, n);
    let done = json!({
        "id": id, "object": "response", "created_at": created, "completed_at": created,
        "status": "completed", "model": model,
        "output": [{
            "type": "message", "status": "completed", "id": msg_id, "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
        }],
        "usage": usage,
    });
    if req.stream != Some(true) {
        stream::sleep_tokens(st.cfg.token_delay, n).await;
        adm.guard.complete();
        return Json(done).into_response();
    }
    let head = json!({"id": id, "object": "response", "status": "in_progress"});
    let mut frames = vec![
        Frame::plain(event(
            &json!({"type": "response.created", "response": head}),
        )),
        Frame::plain(event(
            &json!({"type": "response.in_progress", "response": head}),
        )),
        Frame::plain(event(
            &json!({"type": "response.output_item.added", "item": {
                "content": [], "id": msg_id, "role": "assistant", "status": "in_progress", "type": "message",
            }}),
        )),
        Frame::plain(event(
            &json!({"type": "response.content_part.added", "item_id": msg_id,
            "part": {"type": "output_text", "text": ""}}),
        )),
    ];
    for k in 0..n {
        let piece = generate::token(seed, k, k + 1 == n);
        frames.push(Frame::token(event(&json!({
            "type": "response.output_text.delta", "item_id": msg_id, "delta": piece,
        }))));
    }
    let part = &done["output"][0]["content"][0];
    frames.push(Frame::plain(event(&json!({
        "type": "response.output_text.done", "item_id": msg_id, "text": text,
    }))));
    frames.push(Frame::plain(event(&json!({
        "type": "response.content_part.done", "item_id": msg_id, "part": part,
    }))));
    frames.push(Frame::plain(event(&json!({
        "type": "response.output_item.done", "item": done["output"][0],
    }))));
    frames.push(Frame::last(event(
        &json!({"type": "response.completed", "response": done}),
    )));
    let body = stream::paced_body(
        frames.into_iter(),
        st.cfg.token_delay,
        st.cfg.stall_after,
        adm.guard,
    );
    stream::streaming_response("text/event-stream", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_counts_instructions_and_items() {
        let req: ResponsesRequest = serde_json::from_value(json!({
            "model": "m", "instructions": "be brief",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "one two"}]},
                      {"type": "function_call_output", "call_id": "c", "output": "x"}],
        }))
        .unwrap();
        // system (1) + 2 words, user (1) + 2 words.
        assert_eq!(prompt(&req).tokens(), 6);
        let req: ResponsesRequest = serde_json::from_value(json!({"input": "a b c"})).unwrap();
        assert_eq!(prompt(&req).tokens(), 4);
    }
}
