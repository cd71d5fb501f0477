//! Anthropic's Messages API in terms of OpenAI's chat completions, for backends that
//! serve only the latter: a pure translation of the request, the response, the
//! stream and the errors, with no I/O (the HTTP edge wires it to `/v1/messages`).
//!
//! | Messages | chat completions |
//! | --- | --- |
//! | `system` (string or text blocks) | a first `system` message |
//! | `text` block | text content (a string when it is the only part) |
//! | `image` block (base64 or url) | an `image_url` part (`data:` URL for base64) |
//! | `tool_use` block (assistant) | `tool_calls[]` (`arguments` as a JSON string) |
//! | `tool_result` block (user) | a `tool` message with `tool_call_id`, before the user's text |
//! | `tools[]` (`input_schema`) | `tools[]` of `type: function` (`parameters`) |
//! | `tool_choice` auto / any / tool / none | `auto` / `required` / the function / `none` |
//! | `stop_sequences`, `max_tokens`, `temperature`, `top_p`, `top_k` | `stop`, `max_tokens`, the same |
//! | `metadata.user_id` | `user` |
//! | `stop_reason` end_turn / max_tokens / stop_sequence / tool_use | `finish_reason` stop / length / stop (+ vLLM's `stop_reason`) / tool_calls |
//! | `usage.input_tokens` / `output_tokens` | `usage.prompt_tokens` / `completion_tokens` |
//!
//! Streams become Anthropic's events: `message_start`, per content block
//! `content_block_start`, `content_block_delta` (`text_delta`, `input_json_delta`),
//! `content_block_stop`, then `message_delta` (stop reason, usage) and
//! `message_stop`. Checked against Anthropic's published API reference (request and
//! event shapes) and the `anthropic` Python SDK's types; `thinking` blocks and
//! documents are not translated (a 400 says so).

use serde_json::{Map, Value, json};

/// Why a Messages request cannot be translated.
#[derive(Debug, PartialEq)]
pub struct Invalid(pub String);

fn invalid(m: impl Into<String>) -> Invalid {
    Invalid(m.into())
}

/// A Messages request → a chat completions request (the `model` is kept as is).
pub fn request_to_chat(req: &Value) -> Result<Value, Invalid> {
    let obj = req
        .as_object()
        .ok_or_else(|| invalid("The request body must be a JSON object."))?;
    let mut out = Map::new();
    if let Some(m) = obj.get("model") {
        out.insert("model".into(), m.clone());
    }
    let max_tokens = obj
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("max_tokens: Field required (a positive integer)."))?;
    out.insert("max_tokens".into(), json!(max_tokens));

    let mut messages = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = text_of_blocks(blocks, "system")?;
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => {
            return Err(invalid(
                "system: must be a string or a list of text blocks.",
            ));
        }
    }
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages: Field required (a list)."))?;
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m
            .get("content")
            .ok_or_else(|| invalid(format!("messages.{i}.content: Field required.")))?;
        match role {
            "user" => user_message(content, i, &mut messages)?,
            "assistant" => messages.push(assistant_message(content, i)?),
            other => {
                return Err(invalid(format!(
                    "messages.{i}.role: `{other}` is not user or assistant."
                )));
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(stop) = obj.get("stop_sequences")
        && !stop.is_null()
    {
        out.insert("stop".into(), stop.clone());
    }
    for key in ["temperature", "top_p", "top_k", "stream"] {
        if let Some(v) = obj.get(key)
            && !v.is_null()
        {
            out.insert(key.into(), v.clone());
        }
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(user) = obj
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.get("name").cloned().unwrap_or(Value::Null),
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                }})
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(tc) = obj.get("tool_choice") {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => {
                return Err(invalid(
                    "tool_choice: type must be auto, any, tool or none.",
                ));
            }
        };
        out.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(Value::Object(out))
}

fn text_of_blocks(blocks: &[Value], at: &str) -> Result<String, Invalid> {
    let mut text = String::new();
    for (i, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            other => {
                return Err(invalid(format!(
                    "{at}.{i}: a `{}` block cannot be translated here; only text.",
                    other.unwrap_or("?")
                )));
            }
        }
    }
    Ok(text)
}

/// The user's turn: tool results first (as `tool` messages), then the rest.
fn user_message(content: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Invalid> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(invalid(format!(
                "messages.{i}.content: must be a string or a list of blocks."
            )));
        }
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts
                .push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or(json!(""))})),
            Some("image") => parts.push(image_part(b, i, j)?),
            Some("tool_result") => {
                let text = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => {
                        text_of_blocks(inner, &format!("messages.{i}.content.{j}.content"))?
                    }
                    Some(_) => {
                        return Err(invalid(format!(
                            "messages.{i}.content.{j}.content: must be a string or text blocks."
                        )));
                    }
                };
                let text = if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    format!("Error: {text}")
                } else {
                    text
                };
                out.push(json!({"role": "tool", "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null), "content": text}));
            }
            other => {
                return Err(invalid(format!(
                    "messages.{i}.content.{j}: a `{}` block cannot be translated for this model.",
                    other.unwrap_or("?")
                )));
            }
        }
    }
    if !parts.is_empty() {
        let content = if parts.len() == 1 && parts[0]["type"] == "text" {
            parts[0]["text"].clone()
        } else {
            Value::Array(parts)
        };
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

fn image_part(b: &Value, i: usize, j: usize) -> Result<Value, Invalid> {
    let src = b.get("source").unwrap_or(&Value::Null);
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            src.get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png"),
            src.get("data").and_then(Value::as_str).unwrap_or("")
        ),
        Some("url") => src
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => {
            return Err(invalid(format!(
                "messages.{i}.content.{j}.source: type must be base64 or url."
            )));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn assistant_message(content: &Value, i: usize) -> Result<Value, Invalid> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(b) => b,
        _ => {
            return Err(invalid(format!(
                "messages.{i}.content: must be a string or a list of blocks."
            )));
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": serde_json::to_string(b.get("input").unwrap_or(&json!({}))).unwrap_or_default(),
                },
            })),
            // Reasoning the model showed before: not part of what it is asked again.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(invalid(format!(
                    "messages.{i}.content.{j}: a `{}` block cannot be translated for this model.",
                    other.unwrap_or("?")
                )));
            }
        }
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

/// `finish_reason` (and vLLM's `stop_reason`, the stop string that matched) →
/// Anthropic's `stop_reason` and `stop_sequence`.
fn stop_reason(finish: Option<&str>, matched: Option<&Value>, stops: &[String]) -> (Value, Value) {
    match finish {
        Some("length") => (json!("max_tokens"), Value::Null),
        Some("tool_calls" | "function_call") => (json!("tool_use"), Value::Null),
        Some("stop") => match matched.and_then(Value::as_str) {
            Some(s) if stops.iter().any(|x| x == s) => (json!("stop_sequence"), json!(s)),
            _ => (json!("end_turn"), Value::Null),
        },
        Some(_) => (json!("end_turn"), Value::Null),
        None => (Value::Null, Value::Null),
    }
}

/// The stop sequences a Messages request asked for.
pub fn stop_sequences(req: &Value) -> Vec<String> {
    req.get("stop_sequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A chat completion → a Messages response, named `model` (what the client asked for).
pub fn response_from_chat(resp: &Value, model: &str, stops: &[String]) -> Value {
    let choice = resp.pointer("/choices/0").unwrap_or(&Value::Null);
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(t) = msg.get("content").and_then(Value::as_str)
        && !t.is_empty()
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(tool_use_block(call));
    }
    let (reason, seq) = stop_reason(
        choice.get("finish_reason").and_then(Value::as_str),
        choice.get("stop_reason"),
        stops,
    );
    json!({
        "id": message_id(resp.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": seq,
        "usage": {
            "input_tokens": resp.pointer("/usage/prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            "output_tokens": resp.pointer("/usage/completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        },
    })
}

fn tool_use_block(call: &Value) -> Value {
    let args = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    json!({
        "type": "tool_use",
        "id": call.get("id").cloned().unwrap_or(Value::Null),
        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
        "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
    })
}

fn message_id(backend: Option<&str>) -> String {
    match backend {
        Some(id) if !id.is_empty() => format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        _ => "msg_llmvisor".to_string(),
    }
}

/// An error of llmvisor's or the backend's (OpenAI's shape, or anything) → Anthropic's
/// `{"type": "error", "error": {"type", "message"}}` for an HTTP status.
pub fn error_body(status: u16, openai_error: &Value) -> Value {
    let kind = match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ if status >= 500 => "api_error",
        _ => "invalid_request_error",
    };
    let message = openai_error
        .pointer("/error/message")
        .or_else(|| openai_error.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("The request failed.");
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// One Anthropic SSE event: its name and data.
pub type Event = (&'static str, Value);

/// Turns a chat completions SSE stream (the `data:` payloads, in order) into
/// Anthropic's stream events.
pub struct StreamTranslator {
    model: String,
    stops: Vec<String>,
    started: bool,
    /// The open content block: (index, is it text, the backend's tool-call index).
    open: Option<(usize, bool, Option<u64>)>,
    next_index: usize,
    stop: (Value, Value),
    usage: (u64, u64),
    finished: bool,
}

impl StreamTranslator {
    /// For a request that asked for `model` with these stop sequences.
    pub fn new(model: &str, stops: Vec<String>) -> Self {
        Self {
            model: model.to_string(),
            stops,
            started: false,
            open: None,
            next_index: 0,
            stop: (Value::Null, Value::Null),
            usage: (0, 0),
            finished: false,
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push((
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(id), "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
    }

    fn close_block(&mut self, out: &mut Vec<Event>) {
        if let Some((index, _, _)) = self.open.take() {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// One `data:` payload of the backend's stream (`[DONE]` included).
    pub fn push(&mut self, data: &str) -> Vec<Event> {
        let mut out = Vec::new();
        let data = data.trim();
        if data == "[DONE]" {
            return self.finish();
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if chunk.get("error").is_some() {
            self.start(None, &mut out);
            out.push(("error", error_body(500, &chunk)));
            self.finished = true;
            return out;
        }
        self.start(chunk.get("id").and_then(Value::as_str), &mut out);
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = (
                u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
                u.get("completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            );
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str)
            && !text.is_empty()
        {
            if !matches!(self.open, Some((_, true, _))) {
                self.close_block(&mut out);
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((index, true, None));
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
                ));
            }
            let index = self.open.map_or(0, |o| o.0);
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let backend_index = call.get("index").and_then(Value::as_u64);
            let same = matches!(self.open, Some((_, false, b)) if b == backend_index);
            if !same {
                self.close_block(&mut out);
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((index, false, backend_index));
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": {
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": {},
                    }}),
                ));
            }
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str)
                && !args.is_empty()
            {
                let index = self.open.map_or(0, |o| o.0);
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = stop_reason(Some(f), choice.get("stop_reason"), &self.stops);
        }
        out
    }

    /// The end of the stream: the last block closed, `message_delta`, `message_stop`.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        self.finished = true;
        self.start(None, &mut out);
        self.close_block(&mut out);
        let reason = if self.stop.0.is_null() {
            json!("end_turn")
        } else {
            self.stop.0.clone()
        };
        out.push((
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": self.stop.1},
                "usage": {"input_tokens": self.usage.0, "output_tokens": self.usage.1}}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }
}

/// One event as SSE text.
pub fn sse(event: &Event) -> String {
    format!("event: {}\ndata: {}\n\n", event.0, event.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as the `anthropic` SDK sends it for a tool round trip (system as
    /// blocks, an assistant tool_use, the user's tool_result and a question).
    #[test]
    fn a_tool_round_trip_request() {
        let req = json!({
            "model": "claude-local", "max_tokens": 256,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["\n\nHuman:"], "temperature": 0.2, "top_k": 40,
            "metadata": {"user_id": "u1"},
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"}]}
            ]
        });
        let chat = request_to_chat(&req).unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "claude-local", "max_tokens": 256,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                    {"role": "user", "content": "And tomorrow?"}
                ],
                "stop": ["\n\nHuman:"], "temperature": 0.2, "top_k": 40, "user": "u1",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": "required"
            })
        );
    }

    #[test]
    fn images_streams_and_refusals() {
        let req = json!({"model": "m", "max_tokens": 8, "stream": true, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
            {"type": "text", "text": "What is it?"}]}]});
        let chat = request_to_chat(&req).unwrap();
        assert_eq!(
            chat["messages"][0]["content"][0],
            json!({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}})
        );
        assert_eq!(chat["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            request_to_chat(&json!({"model": "m", "messages": []})),
            Err(Invalid(
                "max_tokens: Field required (a positive integer).".into()
            ))
        );
        let doc = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "document"}]}]});
        assert!(
            request_to_chat(&doc)
                .unwrap_err()
                .0
                .contains("`document` block")
        );
    }

    /// A llama-server chat completion with a tool call (recorded shape) and a vLLM
    /// one stopped by a stop sequence.
    #[test]
    fn responses() {
        let resp = json!({"id": "chatcmpl-abc", "object": "chat.completion", "model": "tiny",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}});
        assert_eq!(
            response_from_chat(&resp, "claude-local", &[]),
            json!({"id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-local",
                "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 20, "output_tokens": 7}})
        );
        let vllm = json!({"id": "chatcmpl-x", "choices": [{"finish_reason": "stop", "stop_reason": "END", "message": {"role": "assistant", "content": "Hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        let m = response_from_chat(&vllm, "m", &["END".into()]);
        assert_eq!(
            (m["stop_reason"].clone(), m["stop_sequence"].clone()),
            (json!("stop_sequence"), json!("END"))
        );
        let long = json!({"choices": [{"finish_reason": "length", "message": {"content": "abc"}}]});
        assert_eq!(
            response_from_chat(&long, "m", &[])["stop_reason"],
            "max_tokens"
        );
    }

    /// A streamed answer: text, then a tool call in two argument pieces, then the
    /// usage chunk and [DONE] (the chunk shapes vLLM and llama-server send).
    #[test]
    fn a_stream() {
        let mut t = StreamTranslator::new("claude-local", vec![]);
        let mut events = Vec::new();
        for data in [
            r#"{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"content":"Let me"},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"content":" check."},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-9","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"chatcmpl-9","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":9}}"#,
            "[DONE]",
        ] {
            events.extend(t.push(data));
        }
        events.extend(t.finish());
        let names: Vec<&str> = events.iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["id"], "msg_9");
        assert_eq!(
            events[5].1["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}})
        );
        assert_eq!(
            events[7].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"})
        );
        assert_eq!(
            events[9].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"input_tokens": 12, "output_tokens": 9}})
        );
        assert!(sse(&events[10]).starts_with("event: message_stop\ndata: {"));
    }

    #[test]
    fn errors_in_anthropics_shape() {
        let e = json!({"error": {"message": "no such model", "type": "invalid_request_error", "code": "model_not_found"}});
        assert_eq!(
            error_body(404, &e),
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no such model"}})
        );
        assert_eq!(error_body(429, &e)["error"]["type"], "rate_limit_error");
        assert_eq!(error_body(503, &e)["error"]["type"], "overloaded_error");
        assert_eq!(error_body(502, &e)["error"]["type"], "api_error");
    }
}
