//! A forwarded request's body as llmvisor reads and rewrites it: the few fields it
//! looks at (`model`, `stream`, `stream_options`), found by their byte ranges, and
//! the rewrite that sends the body on with `model` set to the target's name and,
//! when llmvisor wants the usage of a stream, `stream_options.include_usage` on.
//!
//! Every other byte reaches the backend as the client sent it. The body must be
//! UTF-8 (RFC 8259): serde_json skips the fields it does not look at without
//! checking their bytes, so the whole body is checked first. The rewrite never
//! produces a key twice: a `stream_options` the client sent (`null`, an object) is
//! replaced or merged into, and `model`, `stream` or `stream_options` given twice is
//! refused, since backends disagree on which of two copies counts.

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;

use super::ApiError;
use crate::router::estimate::{Members, Text};

/// What the client sent as `stream_options`, as far as adding `include_usage` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOptions {
    /// No `stream_options`: llmvisor may add the key.
    Absent,
    /// `null` at this byte range: llmvisor may replace it.
    Null(usize, usize),
    /// An object without `include_usage`, its `{` at this offset: llmvisor may add
    /// the member (`empty`: the object has no members yet).
    Without {
        /// Offset of the object's `{`.
        open: usize,
        /// The object has no members.
        empty: bool,
    },
    /// The client's own `include_usage` (a value other than `true` counts as false).
    Asked(bool),
    /// A value of another type: left to the backend to judge.
    Odd,
}

impl StreamOptions {
    /// Whether llmvisor can turn `include_usage` on without changing what the client
    /// asked for (the extra usage chunk is then removed from the stream).
    pub fn injectable(self) -> bool {
        matches!(self, Self::Absent | Self::Null(..) | Self::Without { .. })
    }

    /// Whether the client asked for the usage chunk itself.
    pub fn asked(self) -> bool {
        self == Self::Asked(true)
    }
}

/// What llmvisor reads from a body.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// The model asked for.
    pub model: String,
    /// Byte range of the `model` value (with its quotes).
    pub model_span: (usize, usize),
    /// `stream` (absent or `null`: false).
    pub stream: bool,
    /// `stream_options`.
    pub stream_options: StreamOptions,
    /// `model` is a `multipart/form-data` field: its span holds the bare value.
    pub form: bool,
}

fn bad(message: impl Into<String>, code: &'static str) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        code,
    }
}

/// Offset of `raw` inside `body` (`raw` was parsed from `body`).
fn offset(body: &str, raw: &str) -> usize {
    raw.as_ptr() as usize - body.as_ptr() as usize
}

/// Read the fields llmvisor needs; 400 `invalid_json` for a body that is not UTF-8,
/// not JSON, not an object, that names one of those fields twice or whose `stream`
/// is not a boolean, 400 `missing_model` / `invalid_model` for `model`. Any other
/// field may hold anything: it is the backend's to judge.
pub fn parse_head(bytes: &[u8]) -> Result<Head, ApiError> {
    let body = std::str::from_utf8(bytes).map_err(|e| {
        bad(
            format!(
                "The request body is not valid UTF-8 (at byte {}).",
                e.valid_up_to()
            ),
            "invalid_json",
        )
    })?;
    if body.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(bad(
            "The request body must be a JSON object.",
            "invalid_json",
        ));
    }
    let Members(members) = serde_json::from_str::<Members<'_>>(body).map_err(|e| {
        bad(
            format!("The request body is not valid JSON: {e}."),
            "invalid_json",
        )
    })?;
    let (mut model, mut stream, mut options) = (None, None, None);
    for (k, v) in members {
        let slot = match k.as_ref() {
            "model" => &mut model,
            "stream" => &mut stream,
            "stream_options" => &mut options,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(bad(
                format!("The request body is not valid JSON: `{k}` is given twice."),
                "invalid_json",
            ));
        }
    }
    let stream = match stream.map(RawValue::get) {
        None | Some("null" | "false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(bad(
                "The request body is not valid JSON: `stream` must be a boolean.",
                "invalid_json",
            ));
        }
    };
    let Some(raw) = model.filter(|m| m.get() != "null") else {
        return Err(bad("You must provide a model parameter.", "missing_model"));
    };
    let requested = serde_json::from_str::<Text<'_>>(raw.get())
        .map_err(|_| bad("`model` must be a string.", "invalid_model"))?
        .0
        .into_owned();
    if requested.is_empty() {
        return Err(bad("You must provide a model parameter.", "missing_model"));
    }
    let start = offset(body, raw.get());
    let stream_options = match options {
        None => StreamOptions::Absent,
        Some(o) if o.get() == "null" => {
            let s = offset(body, o.get());
            StreamOptions::Null(s, s + o.get().len())
        }
        Some(o) => match serde_json::from_str::<Members<'_>>(o.get()) {
            Ok(Members(m)) => match m.iter().find(|(k, _)| k == "include_usage") {
                Some((_, v)) => StreamOptions::Asked(v.get() == "true"),
                None => StreamOptions::Without {
                    open: offset(body, o.get()),
                    empty: m.is_empty(),
                },
            },
            Err(_) => StreamOptions::Odd,
        },
    };
    Ok(Head {
        model: requested,
        model_span: (start, start + raw.get().len()),
        stream,
        stream_options,
        form: false,
    })
}

/// The `boundary` of a `multipart/form-data` content type, if it is one.
pub fn form_boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    if !params
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/form-data")
    {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The fields llmvisor reads from a `multipart/form-data` body (an audio upload):
/// the `model` field's value and its byte range, and `stream` (`true` as text).
/// 400 `missing_model` without a `model` field.
pub fn parse_form_head(bytes: &[u8], boundary: &str) -> Result<Head, ApiError> {
    scan_form_head(bytes, boundary, true).map(|h| h.expect("a complete body gives an answer"))
}

/// [`parse_form_head`] on the first bytes of a body (`complete`: all of it): None
/// until they hold the `model` field and every part up to the first file part
/// (one with a `filename`: clients send fields, then files). Fields after a file
/// part are read only when the file part ends within the bytes given.
pub fn scan_form_head(
    bytes: &[u8],
    boundary: &str,
    complete: bool,
) -> Result<Option<Head>, ApiError> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let find = |hay: &[u8], from: usize, needle: &[u8]| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let (mut model, mut stream) = (None, false);
    let mut at = find(bytes, 0, delim);
    while let Some(start) = at {
        let part = start + delim.len();
        // `--` after the delimiter ends the body.
        if bytes.get(part..part + 2) == Some(b"--") {
            break;
        }
        let Some(head_end) = find(bytes, part, b"\r\n\r\n") else {
            if complete {
                break;
            }
            return Ok(None);
        };
        let headers = String::from_utf8_lossy(&bytes[part..head_end]).to_ascii_lowercase();
        if !complete && model.is_some() && headers.contains("filename=") {
            // The fields are read; the file is streamed.
            break;
        }
        let next = find(bytes, head_end, delim);
        if next.is_none() && !complete {
            // This part goes on past what was read.
            return Ok(None);
        }
        // The value ends before the CRLF that precedes the next delimiter.
        let value_end = next.map_or(bytes.len(), |n| n.saturating_sub(2));
        let name = headers
            .split(';')
            .find_map(|p| p.trim().strip_prefix("name="))
            .map(|n| {
                n.split(['\r', '\n'])
                    .next()
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string()
            });
        let value = (head_end + 4, value_end.max(head_end + 4));
        match name.as_deref() {
            Some("model") => model = Some(value),
            Some("stream") => stream = bytes.get(value.0..value.1) == Some(b"true"),
            _ => {}
        }
        at = next;
    }
    if model.is_none() && !complete {
        return Ok(None);
    }
    let Some((s, e)) = model else {
        return Err(bad("You must provide a model parameter.", "missing_model"));
    };
    let requested = std::str::from_utf8(&bytes[s..e])
        .map_err(|_| bad("`model` must be text.", "invalid_model"))?
        .to_string();
    if requested.is_empty() {
        return Err(bad("You must provide a model parameter.", "missing_model"));
    }
    Ok(Some(Head {
        model: requested,
        model_span: (s, e),
        stream,
        stream_options: StreamOptions::Odd,
        form: true,
    }))
}

/// The body with `model` set to `name` (every other byte as sent), and with
/// `inject_usage`, `stream_options.include_usage` turned on: the key added first,
/// a `null` replaced, or the member added to the client's object. Returns the body
/// itself when nothing changes.
pub fn rewrite(body: &Bytes, head: &Head, name: &str, inject_usage: bool) -> Bytes {
    let (start, end) = head.model_span;
    let quoted = if head.form {
        name.to_string()
    } else {
        serde_json::to_string(name).unwrap_or_default()
    };
    let inject = inject_usage && head.stream_options.injectable();
    if body.get(start..end) == Some(quoted.as_bytes()) && !inject {
        return body.clone();
    }
    // (start, end, replacement), in body order once sorted.
    let mut edits: Vec<(usize, usize, &[u8])> = vec![(start, end, quoted.as_bytes())];
    if inject {
        match head.stream_options {
            StreamOptions::Absent => {
                // parse_head checked the body starts (after whitespace) with `{`.
                let open = body.iter().position(|b| *b == b'{').unwrap_or(0);
                edits.push((
                    open + 1,
                    open + 1,
                    br#""stream_options":{"include_usage":true},"#,
                ));
            }
            StreamOptions::Null(s, e) => edits.push((s, e, br#"{"include_usage":true}"#)),
            StreamOptions::Without { open, empty } => {
                let member: &[u8] = if empty {
                    br#""include_usage":true"#
                } else {
                    br#""include_usage":true,"#
                };
                edits.push((open + 1, open + 1, member));
            }
            StreamOptions::Asked(_) | StreamOptions::Odd => {}
        }
    }
    edits.sort_by_key(|e| e.0);
    let extra: usize = edits.iter().map(|e| e.2.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut at = 0;
    for (s, e, with) in edits {
        // Spans come from parsing this body and never overlap; a guard all the same.
        let (Some(before), true) = (body.get(at..s), s <= e && e <= body.len()) else {
            return body.clone();
        };
        out.extend_from_slice(before);
        out.extend_from_slice(with);
        at = e;
    }
    out.extend_from_slice(&body[at..]);
    out.freeze()
}

#[cfg(test)]
mod form_tests {
    use super::*;

    /// The shape the `openai` Python client sends for
    /// `audio.transcriptions.create(model=…, file=…)` (httpx: fields, then files).
    const BODY: &str = "--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b0\r\nContent-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\x01\r\n--b0--\r\n";

    #[test]
    fn the_model_field_is_found_and_rewritten_in_place() {
        assert_eq!(
            form_boundary("multipart/form-data; boundary=\"b0\""),
            Some("b0")
        );
        assert_eq!(form_boundary("application/json"), None);
        let head = parse_form_head(BODY.as_bytes(), "b0").unwrap();
        assert_eq!(head.model, "whisper");
        assert!(head.stream);
        let out = rewrite(&Bytes::from(BODY), &head, "openai/whisper-large-v3", false);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            BODY.replace("\r\nwhisper\r\n", "\r\nopenai/whisper-large-v3\r\n")
        );
    }

    /// Read a byte at a time: no answer until the fields before the file part are
    /// in, then the same head as from the whole body; a model after the file part
    /// needs that part's end.
    #[test]
    fn the_head_is_found_in_the_first_bytes() {
        let file_at = BODY
            .find("--b0\r\nContent-Disposition: form-data; name=\"file\"")
            .unwrap();
        let whole = parse_form_head(BODY.as_bytes(), "b0").unwrap();
        for n in 0..BODY.len() {
            let got = scan_form_head(&BODY.as_bytes()[..n], "b0", false).unwrap();
            // The file part's headers must be in to know it is one.
            let known = n
                >= BODY.find("filename=").unwrap()
                    + "filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n".len();
            assert_eq!(got.is_some(), known, "after {n} bytes");
            if let Some(h) = got {
                assert_eq!(h, whole);
                assert!(h.model_span.1 < file_at);
            }
        }
        let late = "--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nRIFF\r\n--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nw\r\n--b0--\r\n";
        let model_end = late.find("w\r\n--b0--").unwrap() + 3;
        for n in 0..late.len() {
            let got = scan_form_head(&late.as_bytes()[..n], "b0", false).unwrap();
            assert_eq!(
                got.is_some(),
                n >= model_end + 6,
                "after {n} bytes: {got:?}"
            );
        }
        assert_eq!(
            scan_form_head(late.as_bytes(), "b0", false)
                .unwrap()
                .unwrap()
                .model,
            "w"
        );
    }

    #[test]
    fn a_form_without_a_model_is_refused() {
        let body = "--b0\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--b0--\r\n";
        assert!(parse_form_head(body.as_bytes(), "b0").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn keys(text: &str) -> Vec<String> {
        serde_json::from_str::<Members<'_>>(text)
            .map(|m| m.0.into_iter().map(|(k, _)| k.into_owned()).collect())
            .unwrap_or_default()
    }

    fn raw_members(text: &str) -> Vec<(String, String)> {
        serde_json::from_str::<Members<'_>>(text)
            .map(|m| {
                m.0.into_iter()
                    .map(|(k, v)| (k.into_owned(), v.get().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn no_duplicates(keys: &[String]) -> bool {
        let mut seen = std::collections::HashSet::new();
        keys.iter().all(|k| seen.insert(k))
    }

    fn go(body: &str, name: &str, inject: bool) -> String {
        let b = Bytes::copy_from_slice(body.as_bytes());
        let h = parse_head(&b).expect("head");
        String::from_utf8(rewrite(&b, &h, name, inject).to_vec()).expect("utf-8")
    }

    #[test]
    fn stream_options_are_replaced_or_merged_never_doubled() {
        let out = go(
            r#"{"model":"a","stream":true,"stream_options":null,"messages":[]}"#,
            "b",
            true,
        );
        assert_eq!(
            out,
            r#"{"model":"b","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        );
        let out = go(
            r#"{"model":"a","stream":true,"stream_options":{ }}"#,
            "a",
            true,
        );
        assert_eq!(
            out,
            r#"{"model":"a","stream":true,"stream_options":{"include_usage":true }}"#
        );
        let out = go(
            r#"{"model":"a","stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
            "a",
            true,
        );
        assert_eq!(
            out,
            r#"{"model":"a","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#
        );
        // The client's own include_usage, or an odd value, is left alone.
        for body in [
            r#"{"model":"a","stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"a","stream":true,"stream_options":5}"#,
        ] {
            assert_eq!(go(body, "a", true), body);
        }
        let out = go(r#" {"stream":true, "model":"a"}"#, "c", true);
        assert_eq!(
            out,
            r#" {"stream_options":{"include_usage":true},"stream":true, "model":"c"}"#
        );
    }

    #[test]
    fn what_is_refused() {
        let code = |b: &[u8]| match parse_head(b) {
            Err(ApiError::BadRequest { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(b"{\"model\":\"m\",\"x\":\"\xff\"}"), "invalid_json");
        assert_eq!(code(b"[1]"), "invalid_json");
        assert_eq!(code(br#"{"model":"m","model":"n"}"#), "invalid_json");
        assert_eq!(
            code(br#"{"model":"m","stream_options":{},"stream_options":null}"#),
            "invalid_json"
        );
        assert_eq!(code(br#"{"model":1}"#), "invalid_model");
        assert_eq!(code(br#"{"model":""}"#), "missing_model");
        assert_eq!(code(br#"{"messages":[]}"#), "missing_model");
        // Odd types elsewhere are the backend's to judge.
        assert_eq!(code(br#"{"model":null}"#), "missing_model");
        assert_eq!(code(br#"{"model":"m","stream":"yes"}"#), "invalid_json");
        // Odd types elsewhere are the backend's to judge.
        let h = parse_head(br#"{"model":"m","stream":true,"query":1,"messages":7}"#).unwrap();
        assert!(h.stream);
        assert!(
            !parse_head(br#"{"model":"m","stream":null}"#)
                .unwrap()
                .stream
        );
    }

    /// Any JSON value, small.
    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[a-z \u{e9}\u{65e5}\"\\\\]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Bodies with unique keys: `model` (a string, or odd), `stream`,
    /// `stream_options` and other fields of any type, in any order.
    fn any_body() -> impl Strategy<Value = (Vec<(String, Value)>, String)> {
        let keys = prop::sample::subsequence(
            vec![
                "model",
                "stream",
                "stream_options",
                "messages",
                "prompt",
                "input",
                "query",
                "documents",
                "max_tokens",
                "temperature",
                "x_extra",
            ],
            0..=11,
        );
        (keys, "[ \n]{0,2}")
            .prop_flat_map(|(keys, ws)| {
                let values: Vec<_> = keys
                    .iter()
                    .map(|k| match *k {
                        "model" => prop_oneof![
                            3 => "[a-zA-Z0-9/.\u{e9}-]{1,12}".prop_map(Value::String),
                            1 => any_value(),
                        ]
                        .boxed(),
                        "stream" => prop_oneof![
                            3 => any::<bool>().prop_map(Value::Bool),
                            1 => any_value(),
                        ]
                        .boxed(),
                        "stream_options" => prop_oneof![
                            Just(Value::Null),
                            Just(json!({})),
                            Just(json!({"include_usage": true})),
                            Just(json!({"continuous_usage_stats": true})),
                            any_value(),
                        ]
                        .boxed(),
                        _ => any_value().boxed(),
                    })
                    .collect();
                let keys: Vec<String> = keys.into_iter().map(String::from).collect();
                (Just(keys), values, Just(ws))
            })
            .prop_flat_map(|(keys, values, ws)| {
                let members: Vec<(String, Value)> = keys.into_iter().zip(values).collect();
                (Just(members).prop_shuffle(), Just(ws))
            })
    }

    fn render(members: &[(String, Value)], ws: &str) -> String {
        let inner: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("{ws}{}{ws}:{ws}{v}", json!(k)))
            .collect();
        format!("{ws}{{{}{ws}}}{ws}", inner.join(","))
    }

    proptest! {
        // Failures are reported with their minimal input; no file is written.
            #![proptest_config(ProptestConfig {
                cases: 512,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = parse_head(&bytes) {
                let b = Bytes::from(bytes);
                let _ = rewrite(&b, &h, "x", true);
            }
        }

        #[test]
        fn rewritten_bodies_keep_every_member_once(
            (members, ws) in any_body(),
            name in "[a-zA-Z0-9/\u{e9}\"-]{1,10}",
            inject in any::<bool>(),
        ) {
            let text = render(&members, &ws);
            let body = Bytes::from(text.clone());
            let Ok(head) = parse_head(&body) else {
                // Only a missing, empty or non-string model, or a non-boolean stream
                // is refused.
                let get = |key: &str| members.iter().find(|(k, _)| k == key).map(|(_, v)| v);
                let model_ok = matches!(get("model"), Some(Value::String(s)) if !s.is_empty());
                let stream_ok = matches!(get("stream"), None | Some(Value::Bool(_) | Value::Null));
                prop_assert!(!(model_ok && stream_ok), "{text}");
                return Ok(());
            };
            let out = rewrite(&body, &head, &name, inject);
            let out = std::str::from_utf8(&out).expect("utf-8");
            let got: Value = serde_json::from_str(out).expect("json");
            let top = keys(out);
            prop_assert!(no_duplicates(&top), "{out}");
            let so = got.get("stream_options").map(|v| v.to_string()).unwrap_or_default();
            prop_assert!(no_duplicates(&keys(&so)), "{out}");
            prop_assert_eq!(&got["model"], &json!(name));
            let injected = inject && head.stream_options.injectable();
            if injected {
                prop_assert_eq!(&got["stream_options"]["include_usage"], &json!(true));
            }
            // Every other member is as sent, byte for byte.
            let sent = raw_members(&text);
            let now = raw_members(out);
            for (k, v) in &sent {
                if k == "model" || (injected && k == "stream_options") {
                    continue;
                }
                prop_assert_eq!(now.iter().find(|(n, _)| n == k).map(|(_, v)| v), Some(v));
            }
            let expected = members.len() + usize::from(injected && head.stream_options == StreamOptions::Absent);
            prop_assert_eq!(top.len(), expected);
        }
    }
}
