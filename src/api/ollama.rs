//! Ollama's API (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`)
//! translated to and from OpenAI's chat completions and embeddings: pure functions
//! of JSON values, no I/O. The HTTP wiring is src/api/ollama_api.rs.
//!
//! Shapes follow Ollama's API reference (docs/api.md of ollama/ollama) and were
//! checked with the `ollama` Python client (0.6), which parses every response here
//! into its typed models (tests/real_clients.rs).
//!
//! | Ollama | OpenAI |
//! | --- | --- |
//! | `messages[].content`, `images` (base64) | `content` text, `image_url` parts as `data:` URLs |
//! | `messages[].tool_calls[].function.arguments` (an object) | the same as a JSON string |
//! | `tools` | `tools` (the same shape) |
//! | `format: "json"` / a JSON schema | `response_format` `json_object` / `json_schema` |
//! | `options.temperature`, `top_p`, `seed`, `stop` | the same fields |
//! | `options.num_predict` | `max_tokens` (`-1`: none) |
//! | `options.top_k`, `min_p`, `repeat_penalty`, `presence_penalty`, `frequency_penalty` | `top_k`, `min_p`, `repetition_penalty`, … (vLLM and llama-server read them) |
//! | `options.num_ctx` | not sent: a model's context is its `context_length` |
//! | `prompt`, `system`, `suffix` (generate) | a system and a user message; `raw: true` → `/v1/completions` |
//! | `done_reason` | `finish_reason` (`stop`, `length`; tool calls → `stop`) |
//! | `prompt_eval_count`, `eval_count` | `usage.prompt_tokens`, `completion_tokens` |

use serde_json::{Map, Value, json};

/// A request that cannot be translated, with the message for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

fn invalid(m: impl Into<String>) -> Invalid {
    Invalid(m.into())
}

/// Which Ollama endpoint a translation serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/api/chat`: `message` objects.
    Chat,
    /// `/api/generate`: `response` text.
    Generate,
}

/// Ollama's `stream`: true unless the request says `false`.
pub fn streams(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool) != Some(false)
}

/// `keep_alive` in seconds: a number of seconds or a duration string (`"5m"`,
/// `"1h"`, `"0"`); negative means forever. `None` when absent or unreadable.
pub fn keep_alive_secs(req: &Value) -> Option<f64> {
    match req.get("keep_alive")? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<f64>() {
                return Some(n);
            }
            if let Some(rest) = s.strip_prefix('-') {
                return humantime::parse_duration(rest)
                    .ok()
                    .map(|d| -d.as_secs_f64());
            }
            humantime::parse_duration(s).ok().map(|d| d.as_secs_f64())
        }
        _ => None,
    }
}

/// The sampling options mapped onto OpenAI fields of `out`.
fn options(req: &Value, out: &mut Map<String, Value>) {
    let Some(o) = req.get("options").and_then(Value::as_object) else {
        return;
    };
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("stop", "stop"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("repeat_penalty", "repetition_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ] {
        if let Some(v) = o.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(n) = o.get("num_predict").and_then(Value::as_i64)
        && n >= 0
    {
        out.insert("max_tokens".into(), json!(n));
    }
}

/// `format`: `"json"` or a JSON schema.
fn format(req: &Value, out: &mut Map<String, Value>) {
    match req.get("format") {
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        _ => {}
    }
}

/// The common head of a translated request: model, stream (with usage), options.
fn head(req: &Value, model: &str) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    let stream = streams(req);
    out.insert("stream".into(), json!(stream));
    if stream {
        // eval_count needs the usage chunk.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    options(req, &mut out);
    format(req, &mut out);
    out
}

/// One Ollama chat message as an OpenAI one.
fn message(m: &Value) -> Result<Value, Invalid> {
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("messages: each message needs a role"))?;
    let text = m.get("content").and_then(Value::as_str).unwrap_or("");
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    let images: Vec<&str> = m
        .get("images")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if images.is_empty() {
        out.insert("content".into(), json!(text));
    } else {
        let mut parts = vec![json!({"type": "text", "text": text})];
        for b64 in images {
            parts.push(json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}}));
        }
        out.insert("content".into(), Value::Array(parts));
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let f = &c["function"];
                let args = match &f["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".into(),
                    v => v.to_string(),
                };
                json!({"id": format!("call_{i}"), "type": "function",
                       "function": {"name": f["name"], "arguments": args}})
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if role == "tool" {
        // Ollama names the tool; OpenAI wants the call's id, which Ollama does
        // not keep: the calls of the assistant turn are numbered in order.
        if let Some(name) = m.get("tool_name").and_then(Value::as_str) {
            out.insert("name".into(), json!(name));
        }
        out.insert(
            "tool_call_id".into(),
            m.get("tool_call_id").cloned().unwrap_or(json!("call_0")),
        );
    }
    Ok(Value::Object(out))
}

/// `/api/chat` → `/v1/chat/completions` body.
pub fn chat_request(req: &Value, model: &str) -> Result<Value, Invalid> {
    let mut out = head(req, model);
    let messages = match req.get("messages") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ms)) => ms.iter().map(message).collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("messages must be an array")),
    };
    out.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = req.get("tools").filter(|t| t.is_array()) {
        out.insert("tools".into(), tools.clone());
    }
    Ok(Value::Object(out))
}

/// `/api/generate` → (path, body): chat completions with the system and the
/// prompt as messages, or `/v1/completions` for `raw` (no template) and `suffix`
/// (fill-in-the-middle, OpenAI's `suffix`).
pub fn generate_request(req: &Value, model: &str) -> Result<(&'static str, Value), Invalid> {
    let prompt = match req.get("prompt") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid("prompt must be a string")),
    };
    let mut out = head(req, model);
    let raw = req.get("raw").and_then(Value::as_bool) == Some(true);
    if let Some(images) = req.get("images").filter(|i| i.is_array()) {
        let m = json!({"role": "user", "content": prompt, "images": images});
        let mut msgs = Vec::new();
        if let Some(s) = req.get("system").and_then(Value::as_str) {
            msgs.push(json!({"role": "system", "content": s}));
        }
        msgs.push(message(&m)?);
        out.insert("messages".into(), Value::Array(msgs));
        return Ok(("/v1/chat/completions", Value::Object(out)));
    }
    if raw || req.get("suffix").is_some_and(|s| !s.is_null()) {
        out.insert("prompt".into(), json!(prompt));
        if let Some(s) = req.get("suffix").filter(|s| !s.is_null()) {
            out.insert("suffix".into(), s.clone());
        }
        return Ok(("/v1/completions", Value::Object(out)));
    }
    let mut msgs = Vec::new();
    if let Some(s) = req.get("system").and_then(Value::as_str) {
        msgs.push(json!({"role": "system", "content": s}));
    }
    msgs.push(json!({"role": "user", "content": prompt}));
    out.insert("messages".into(), Value::Array(msgs));
    Ok(("/v1/chat/completions", Value::Object(out)))
}

/// `/api/embed` (`input`: a string or strings) or `/api/embeddings` (`prompt`)
/// → `/v1/embeddings` body.
pub fn embed_request(req: &Value, model: &str, legacy: bool) -> Result<Value, Invalid> {
    let input = if legacy {
        match req.get("prompt") {
            Some(Value::String(s)) => json!(s),
            _ => return Err(invalid("prompt must be a string")),
        }
    } else {
        match req.get("input") {
            Some(v @ Value::String(_)) => v.clone(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => Value::Array(a.clone()),
            _ => return Err(invalid("input must be a string or an array of strings")),
        }
    };
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("input".into(), input);
    if let Some(d) = req.get("dimensions").filter(|d| d.is_number()) {
        out.insert("dimensions".into(), d.clone());
    }
    Ok(Value::Object(out))
}

/// Ollama's `done_reason` for an OpenAI `finish_reason`.
pub fn done_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "length",
        _ => "stop",
    }
}

/// Timing and counts of one answer, in Ollama's fields (durations in ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// From arrival to the end.
    pub total_ns: u64,
    /// Waiting for the model to start (a cold start) and for a slot.
    pub load_ns: u64,
    /// From the request's send to the first token.
    pub prompt_eval_ns: u64,
    /// From the first token to the end.
    pub eval_ns: u64,
    /// Prompt tokens.
    pub prompt_eval_count: u64,
    /// Generated tokens.
    pub eval_count: u64,
}

fn finish_fields(out: &mut Map<String, Value>, reason: &str, t: &Timing) {
    out.insert("done_reason".into(), json!(reason));
    out.insert("total_duration".into(), json!(t.total_ns));
    out.insert("load_duration".into(), json!(t.load_ns));
    out.insert("prompt_eval_count".into(), json!(t.prompt_eval_count));
    out.insert("prompt_eval_duration".into(), json!(t.prompt_eval_ns));
    out.insert("eval_count".into(), json!(t.eval_count));
    out.insert("eval_duration".into(), json!(t.eval_ns));
}

/// OpenAI tool calls (arguments as a JSON string) as Ollama's (an object).
fn tool_calls(calls: &Value) -> Option<Value> {
    let calls = calls.as_array().filter(|a| !a.is_empty())?;
    Some(Value::Array(
        calls
            .iter()
            .map(|c| {
                let f = &c["function"];
                let args = f["arguments"]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or_else(|| json!({}));
                json!({"function": {"name": f["name"], "arguments": args}})
            })
            .collect(),
    ))
}

/// The usage counts of an OpenAI answer or usage chunk.
pub fn usage_counts(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some((
        u["prompt_tokens"].as_u64().unwrap_or(0),
        u["completion_tokens"].as_u64().unwrap_or(0),
    ))
}

/// A whole (non-streamed) OpenAI answer as Ollama's final object. `timing`'s
/// counts are filled from the answer's usage.
pub fn response_from_openai(
    api: Api,
    answer: &Value,
    model: &str,
    now: &str,
    mut timing: Timing,
) -> Value {
    let choice = &answer["choices"][0];
    if let Some((p, c)) = usage_counts(answer) {
        timing.prompt_eval_count = p;
        timing.eval_count = c;
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("created_at".into(), json!(now));
    let text = choice["message"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or("");
    match api {
        Api::Chat => {
            let mut msg = json!({"role": "assistant", "content": text});
            if let Some(r) = choice["message"]["reasoning_content"].as_str() {
                msg["thinking"] = json!(r);
            }
            if let Some(calls) = tool_calls(&choice["message"]["tool_calls"]) {
                msg["tool_calls"] = calls;
            }
            out.insert("message".into(), msg);
        }
        Api::Generate => {
            out.insert("response".into(), json!(text));
        }
    }
    out.insert("done".into(), json!(true));
    finish_fields(
        &mut out,
        done_reason(choice["finish_reason"].as_str()),
        &timing,
    );
    Value::Object(out)
}

/// An OpenAI embeddings answer as `/api/embed`'s (`legacy`: `/api/embeddings`'s
/// single `embedding`).
pub fn embed_response(answer: &Value, model: &str, legacy: bool, timing: Timing) -> Value {
    let vectors: Vec<Value> = answer["data"]
        .as_array()
        .map(|d| d.iter().map(|e| e["embedding"].clone()).collect())
        .unwrap_or_default();
    if legacy {
        return json!({"embedding": vectors.into_iter().next().unwrap_or(json!([]))});
    }
    json!({
        "model": model,
        "embeddings": vectors,
        "total_duration": timing.total_ns,
        "load_duration": timing.load_ns,
        "prompt_eval_count": usage_counts(answer).map_or(0, |u| u.0),
    })
}

/// Turns an OpenAI chat (or completions) SSE stream into Ollama's NDJSON lines:
/// one object per content delta, then the final `done: true` object with the
/// counts of the usage chunk.
pub struct StreamTranslator {
    api: Api,
    model: String,
    finish: Option<String>,
    counts: Option<(u64, u64)>,
    calls: Vec<Value>,
    done: bool,
}

impl StreamTranslator {
    /// For `model` as the client named it.
    pub fn new(api: Api, model: &str) -> Self {
        Self {
            api,
            model: model.to_string(),
            finish: None,
            counts: None,
            calls: Vec::new(),
            done: false,
        }
    }

    fn line(&self, now: &str, text: &str, thinking: Option<&str>) -> Value {
        let mut out = Map::new();
        out.insert("model".into(), json!(self.model));
        out.insert("created_at".into(), json!(now));
        match self.api {
            Api::Chat => {
                let mut msg = json!({"role": "assistant", "content": text});
                if let Some(t) = thinking {
                    msg["thinking"] = json!(t);
                }
                out.insert("message".into(), msg);
            }
            Api::Generate => {
                out.insert("response".into(), json!(text));
            }
        }
        out.insert("done".into(), json!(false));
        Value::Object(out)
    }

    /// One SSE `data:` payload; returns the NDJSON objects it makes (or an
    /// `{"error"}` object for an error event).
    pub fn push(&mut self, data: &str, now: &str) -> Vec<Value> {
        let data = data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Vec::new();
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        if let Some(e) = v.get("error") {
            let msg = e["message"].as_str().unwrap_or("the model failed");
            return vec![json!({"error": msg})];
        }
        if let Some(c) = usage_counts(&v) {
            self.counts = Some(c);
        }
        let mut out = Vec::new();
        let Some(choice) = v["choices"].get(0) else {
            return out;
        };
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
        let delta = &choice["delta"];
        let text = delta["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .unwrap_or("");
        let thinking = delta["reasoning_content"].as_str();
        if let Some(calls) = delta["tool_calls"].as_array() {
            for c in calls {
                let i = c["index"].as_u64().unwrap_or(0) as usize;
                while self.calls.len() <= i {
                    self.calls
                        .push(json!({"function": {"name": "", "arguments": ""}}));
                }
                let slot = &mut self.calls[i]["function"];
                if let Some(n) = c["function"]["name"].as_str() {
                    slot["name"] = json!(format!("{}{n}", slot["name"].as_str().unwrap_or("")));
                }
                if let Some(a) = c["function"]["arguments"].as_str() {
                    slot["arguments"] =
                        json!(format!("{}{a}", slot["arguments"].as_str().unwrap_or("")));
                }
            }
        }
        if !text.is_empty() || thinking.is_some() {
            out.push(self.line(now, text, thinking));
        }
        out
    }

    /// The final object (once; nothing after an error).
    pub fn finish(&mut self, now: &str, mut timing: Timing) -> Option<Value> {
        if self.done {
            return None;
        }
        self.done = true;
        if let Some((p, c)) = self.counts {
            timing.prompt_eval_count = p;
            timing.eval_count = c;
        }
        let mut last = self.line(now, "", None);
        let o = last.as_object_mut()?;
        o.insert("done".into(), json!(true));
        if self.api == Api::Chat
            && let Some(calls) = tool_calls(&Value::Array(self.calls.clone()))
        {
            o["message"]["tool_calls"] = calls;
        }
        finish_fields(o, done_reason(self.finish.as_deref()), &timing);
        Some(last)
    }
}

/// An OpenAI-shaped error body as Ollama's `{"error": "..."}`.
pub fn error_body(openai: &Value) -> Value {
    let msg = openai["error"]["message"]
        .as_str()
        .or_else(|| openai["error"].as_str())
        .unwrap_or("the request failed");
    json!({"error": msg})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_maps_options_format_images_and_tools() {
        let req = json!({
            "model": "llama3.2", "stream": false, "format": "json",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what is this?", "images": ["aGVsbG8="]},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "options": {"temperature": 0.2, "num_predict": 7, "num_ctx": 8192, "stop": ["\n"],
                        "seed": 3, "top_p": 0.9, "top_k": 20, "repeat_penalty": 1.1},
        });
        let out = chat_request(&req, "llama3.2").unwrap();
        assert_eq!(out["stream"], false);
        assert!(out.get("stream_options").is_none());
        assert_eq!(out["max_tokens"], 7);
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(out["stop"], json!(["\n"]));
        assert_eq!(out["seed"], 3);
        assert_eq!(out["top_k"], 20);
        assert_eq!(out["repetition_penalty"], 1.1);
        assert!(out.get("num_ctx").is_none());
        assert_eq!(out["response_format"]["type"], "json_object");
        assert_eq!(
            out["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,aGVsbG8="
        );
        assert_eq!(
            out["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(out["messages"][3]["tool_call_id"], "call_0");
        assert_eq!(out["tools"][0]["function"]["name"], "f");
    }

    #[test]
    fn streaming_is_the_default_and_asks_for_usage() {
        let out = chat_request(&json!({"messages": []}), "m").unwrap();
        assert_eq!(out["stream"], true);
        assert_eq!(out["stream_options"]["include_usage"], true);
        // num_predict -1 means no limit.
        let out = chat_request(&json!({"options": {"num_predict": -1}}), "m").unwrap();
        assert!(out.get("max_tokens").is_none());
    }

    #[test]
    fn generate_uses_chat_unless_raw_or_suffix() {
        let (path, out) = generate_request(
            &json!({"prompt": "why is the sky blue?", "system": "short", "stream": false}),
            "m",
        )
        .unwrap();
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(out["messages"][0]["role"], "system");
        assert_eq!(out["messages"][1]["content"], "why is the sky blue?");
        let (path, out) =
            generate_request(&json!({"prompt": "def f(", "suffix": "):"}), "m").unwrap();
        assert_eq!(path, "/v1/completions");
        assert_eq!(out["suffix"], "):");
        assert!(generate_request(&json!({"prompt": 3}), "m").is_err());
    }

    #[test]
    fn keep_alive_forms() {
        assert_eq!(keep_alive_secs(&json!({"keep_alive": 0})), Some(0.0));
        assert_eq!(keep_alive_secs(&json!({"keep_alive": "0"})), Some(0.0));
        assert_eq!(keep_alive_secs(&json!({"keep_alive": "5m"})), Some(300.0));
        assert_eq!(keep_alive_secs(&json!({"keep_alive": -1})), Some(-1.0));
        assert_eq!(keep_alive_secs(&json!({"keep_alive": "-1m"})), Some(-60.0));
        assert_eq!(keep_alive_secs(&json!({})), None);
    }

    /// A recorded vLLM-style chat answer with a tool call.
    #[test]
    fn a_whole_answer_becomes_the_final_object() {
        let answer = json!({
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
        });
        let t = Timing {
            total_ns: 5,
            ..Timing::default()
        };
        let out = response_from_openai(Api::Chat, &answer, "qwen", "2025-01-01T00:00:00Z", t);
        assert_eq!(out["done"], true);
        assert_eq!(out["done_reason"], "stop");
        assert_eq!(out["prompt_eval_count"], 12);
        assert_eq!(out["eval_count"], 9);
        assert_eq!(out["total_duration"], 5);
        assert_eq!(
            out["message"]["tool_calls"][0]["function"]["arguments"]["city"],
            "Paris"
        );
        let answer = json!({"choices": [{"text": "blue", "finish_reason": "length"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
        let out = response_from_openai(Api::Generate, &answer, "m", "t", Timing::default());
        assert_eq!(out["response"], "blue");
        assert_eq!(out["done_reason"], "length");
    }

    #[test]
    fn a_stream_becomes_ndjson_lines_and_a_final_object() {
        let mut t = StreamTranslator::new(Api::Chat, "m");
        let mut lines = Vec::new();
        for d in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#,
            "[DONE]",
        ] {
            lines.extend(t.push(d, "now"));
        }
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"]["content"], "Hel");
        assert_eq!(lines[0]["done"], false);
        let last = t.finish("now", Timing::default()).unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "length");
        assert_eq!(last["eval_count"], 2);
        assert_eq!(last["prompt_eval_count"], 4);
        assert!(t.finish("now", Timing::default()).is_none());

        let mut t = StreamTranslator::new(Api::Chat, "m");
        t.push(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{\"a\""}}]}}]}"#, "now");
        t.push(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#, "now");
        let last = t.finish("now", Timing::default()).unwrap();
        assert_eq!(
            last["message"]["tool_calls"][0]["function"]["arguments"]["a"],
            1
        );

        let mut t = StreamTranslator::new(Api::Generate, "m");
        let l = t.push(r#"{"choices":[{"index":0,"text":"blue"}]}"#, "now");
        assert_eq!(l[0]["response"], "blue");
        let e = t.push(
            r#"{"error":{"message":"backend failed","code":"backend_error"}}"#,
            "now",
        );
        assert_eq!(e[0]["error"], "backend failed");
    }

    #[test]
    fn embeddings_both_ways() {
        let out = embed_request(&json!({"input": ["a", "b"]}), "e", false).unwrap();
        assert_eq!(out["input"], json!(["a", "b"]));
        assert!(embed_request(&json!({"input": 3}), "e", false).is_err());
        let out = embed_request(&json!({"prompt": "a"}), "e", true).unwrap();
        assert_eq!(out["input"], "a");
        let answer = json!({"data": [{"embedding": [0.1, 0.2]}, {"embedding": [0.3, 0.4]}], "usage": {"prompt_tokens": 2}});
        let out = embed_response(&answer, "e", false, Timing::default());
        assert_eq!(out["embeddings"][1], json!([0.3, 0.4]));
        assert_eq!(out["prompt_eval_count"], 2);
        let out = embed_response(&answer, "e", true, Timing::default());
        assert_eq!(out["embedding"], json!([0.1, 0.2]));
    }

    #[test]
    fn errors_are_one_string() {
        let e = json!({"error": {"message": "The model `x` does not exist.", "type": "invalid_request_error"}});
        assert_eq!(
            error_body(&e),
            json!({"error": "The model `x` does not exist."})
        );
    }
}
