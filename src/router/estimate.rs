//! Prompt token estimates, without asking any backend.
//!
//! With a model's `tokenizer.json` the count is the tokenizer's, over the text of
//! every message (or prompt, or input) plus a fixed overhead per message for the chat
//! template. Without one, the heuristic: one token per 4 ASCII characters (rounded
//! up, per text) plus one token per non-ASCII character, plus the same overheads.
//! English prose comes out within about 10–20% of real Llama, Qwen and GPT
//! tokenizers; CJK text is counted high, code somewhat low. The backend stays the
//! final judge of its own context window.
//!
//! The body is read field by field, each value left unparsed until it is looked at,
//! so a field of an unexpected type (`"query": 1`, a message that is a string, a
//! `max_tokens` of `"100"`) costs only its own contribution, never the whole
//! estimate: the estimate guards the context window, the token route rules and the
//! `tpm` limit, and a client must not switch it off with an odd value. A key given
//! twice counts every time (some backends read the first, some the last). Plain
//! strings, the common case, are borrowed from the body without building a JSON
//! tree, and nesting is followed only as deep as the API allows (token-id batches,
//! content parts), so the work stays linear in the body's size.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokenizers::Tokenizer;

/// Tokens a chat template adds per message (role markers, separators).
pub const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply.
pub const PER_REPLY: u64 = 3;

/// A JSON string, borrowed from the body unless it holds escapes.
#[derive(Deserialize)]
pub(crate) struct Text<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

/// The members of a JSON object in order, duplicates kept, values unparsed.
pub(crate) struct Members<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((Text(k), v)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members of `raw` if it is an object (none otherwise).
fn members(raw: &RawValue) -> Vec<(Cow<'_, str>, &RawValue)> {
    serde_json::from_str::<Members<'_>>(raw.get()).map_or_else(|_| Vec::new(), |m| m.0)
}

/// The elements of `raw` if it is an array (none otherwise).
fn elements(raw: &RawValue) -> Vec<&RawValue> {
    serde_json::from_str::<Vec<&RawValue>>(raw.get()).unwrap_or_default()
}

/// The string `raw` holds, if it is one.
fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|t| t.0)
}

/// What kind of JSON value `raw` is, from its first byte.
fn first(raw: &RawValue) -> u8 {
    raw.get().trim_start().bytes().next().unwrap_or(b' ')
}

/// A count given as a number or a numeric string (lenient servers accept `"100"`
/// and `100.0`); fractions round up, negative or odd values count as none.
fn count(raw: &RawValue) -> Option<u64> {
    let s = match text(raw) {
        Some(t) => t.trim().to_string(),
        None => raw.get().trim().to_string(),
    };
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    match s.parse::<f64>() {
        // `as` saturates at u64::MAX.
        Ok(f) if f.is_finite() && f > 0.0 => Some(f.ceil() as u64),
        _ => None,
    }
}

/// The text of a request that counts towards its prompt.
#[derive(Debug, Default, PartialEq)]
pub struct Prompt<'a> {
    /// Text pieces (borrowed from the body unless they hold escapes).
    pub texts: Vec<Cow<'a, str>>,
    /// Chat messages (each adds [`PER_MESSAGE`]).
    pub messages: u64,
    /// Prompts given as token ids (counted as they are).
    pub token_ids: u64,
    /// `max_tokens` / `max_completion_tokens`, if set.
    pub max_tokens: Option<u64>,
}

/// Whether `raw` is a number (a token id).
fn is_number(raw: &RawValue) -> bool {
    matches!(first(raw), b'-' | b'0'..=b'9')
}

/// Collect the text and token ids of a prompt-like value: a string, or an array of
/// strings, token ids, arrays of token ids (or of strings) and content parts
/// (`{"type": "text", "text": …}`); a lone content part too. Anything else, and
/// any odd element of an array, counts as nothing, the rest still counts.
fn collect<'a>(raw: &'a RawValue, out: &mut Prompt<'a>) {
    match first(raw) {
        b'"' => out.texts.extend(text(raw)),
        b'{' => part(raw, out),
        b'[' => {
            for e in elements(raw) {
                match first(e) {
                    b'"' => out.texts.extend(text(e)),
                    b'{' => part(e, out),
                    b'[' => {
                        for x in elements(e) {
                            if is_number(x) {
                                out.token_ids += 1;
                            } else {
                                out.texts.extend(text(x));
                            }
                        }
                    }
                    _ if is_number(e) => out.token_ids += 1,
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The `text` of a content part.
fn part<'a>(raw: &'a RawValue, out: &mut Prompt<'a>) {
    for (k, v) in members(raw) {
        if k == "text" {
            out.texts.extend(text(v));
        }
    }
}

impl<'a> Prompt<'a> {
    /// Read the prompt of a request body (a body that is not a JSON object counts as
    /// empty; a field of an unexpected type counts as nothing, the others still do).
    pub fn of(body: &'a [u8]) -> Self {
        let mut out = Prompt::default();
        let Ok(Members(fields)) = serde_json::from_slice::<Members<'a>>(body) else {
            return out;
        };
        let (mut max_tokens, mut max_completion_tokens) = (None, None);
        for (k, v) in fields {
            match k.as_ref() {
                "messages" => {
                    for m in elements(v) {
                        out.messages += 1;
                        for (k, c) in members(m) {
                            if k == "content" {
                                collect(c, &mut out);
                            }
                        }
                    }
                }
                "prompt" | "input" | "documents" | "query" => collect(v, &mut out),
                "max_tokens" => max_tokens = max_tokens.max(count(v)),
                "max_completion_tokens" => {
                    max_completion_tokens = max_completion_tokens.max(count(v));
                }
                _ => {}
            }
        }
        out.max_tokens = max_completion_tokens.or(max_tokens);
        out
    }

    fn overhead(&self) -> u64 {
        if self.messages > 0 {
            self.messages * PER_MESSAGE + PER_REPLY
        } else {
            0
        }
    }

    /// The heuristic count.
    pub fn heuristic(&self) -> u64 {
        let text: u64 = self.texts.iter().map(|t| heuristic_tokens(t)).sum();
        text + self.token_ids + self.overhead()
    }

    /// The count with a tokenizer.
    pub fn with_tokenizer(&self, tok: &Tokenizer) -> u64 {
        let text: u64 = self
            .texts
            .iter()
            .map(|t| match tok.encode_fast(t.as_ref(), false) {
                Ok(e) => e.len() as u64,
                Err(_) => heuristic_tokens(t),
            })
            .sum();
        text + self.token_ids + self.overhead()
    }
}

/// The heuristic for one text.
pub fn heuristic_tokens(text: &str) -> u64 {
    let mut ascii = 0u64;
    let mut other = 0u64;
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(4) + other
}

/// Estimates for one request, computed once per tokenizer and only when asked.
pub struct Estimator<'a> {
    body: &'a [u8],
    prompt: OnceCell<Prompt<'a>>,
    heuristic: OnceCell<u64>,
    by_tokenizer: RefCell<Vec<(usize, u64)>>,
}

impl<'a> Estimator<'a> {
    /// For a request body.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            prompt: OnceCell::new(),
            heuristic: OnceCell::new(),
            by_tokenizer: RefCell::new(Vec::new()),
        }
    }

    fn prompt(&self) -> &Prompt<'a> {
        self.prompt.get_or_init(|| Prompt::of(self.body))
    }

    /// Prompt tokens as `tok` counts them (the heuristic without one).
    pub fn prompt_tokens(&self, tok: Option<&Arc<Tokenizer>>) -> u64 {
        match tok {
            None => *self.heuristic.get_or_init(|| self.prompt().heuristic()),
            Some(t) => {
                let key = Arc::as_ptr(t) as usize;
                if let Some((_, n)) = self.by_tokenizer.borrow().iter().find(|(k, _)| *k == key) {
                    return *n;
                }
                let n = self.prompt().with_tokenizer(t);
                self.by_tokenizer.borrow_mut().push((key, n));
                n
            }
        }
    }

    /// `max_tokens` (or `max_completion_tokens`) as asked, 0 when not set.
    pub fn max_tokens(&self) -> u64 {
        self.prompt().max_tokens.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_completion_and_embedding_shapes() {
        let p = Prompt::of(
            br#"{"model":"m","max_tokens":50,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":[{"type":"text","text":"Hello there"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        );
        assert_eq!(p.texts, vec!["You are terse.", "Hello there"]);
        assert_eq!(p.messages, 2);
        assert_eq!(p.max_tokens, Some(50));
        // 14 chars → 4, 11 chars → 3, 2 messages × 4 + 3.
        assert_eq!(p.heuristic(), 4 + 3 + 11);

        let p = Prompt::of(br#"{"model":"m","prompt":["abcd","efgh"],"max_completion_tokens":7}"#);
        assert_eq!(p.heuristic(), 2);
        assert_eq!(p.max_tokens, Some(7));
        let p = Prompt::of(br#"{"model":"m","prompt":[1,2,3,4,5]}"#);
        assert_eq!(p.heuristic(), 5);
        let p = Prompt::of(br#"{"model":"m","input":"12345678"}"#);
        assert_eq!(p.heuristic(), 2);
        let p = Prompt::of(br#"{"model":"m","query":"abcd","documents":["abcd","efgh"]}"#);
        assert_eq!(p.heuristic(), 3);
        // Non-ASCII counts one per character.
        assert_eq!(heuristic_tokens("日本語"), 3);
        assert_eq!(Prompt::of(b"not json").heuristic(), 0);
    }

    #[test]
    fn a_tokenizer_counts_exactly() {
        let tok = Arc::new(test_tokenizer());
        let body = br#"{"messages":[{"role":"user","content":"hello world hello"}]}"#;
        let e = Estimator::new(body);
        // Word-level: three words, plus 4 + 3 for the one message.
        assert_eq!(e.prompt_tokens(Some(&tok)), 3 + 7);
        assert_eq!(e.prompt_tokens(None), 5 + 7);
        assert_eq!(e.max_tokens(), 0);
    }

    #[test]
    fn an_odd_field_counts_as_nothing_and_the_rest_still_counts() {
        let chat = r#"{"model":"m","messages":[{"role":"user","content":"abcdefgh"}]}"#;
        let base = Prompt::of(chat.as_bytes()).heuristic();
        assert_eq!(base, 2 + 7);
        for odd in [
            r#"{"model":"m","query":1,"messages":[{"role":"user","content":"abcdefgh"}]}"#,
            r#"{"model":"m","max_tokens":"x","messages":[{"role":"user","content":"abcdefgh"}]}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"abcdefgh"},"odd",{"content":[true,"abcd",{"text":5}]}],"documents":{}}"#,
        ] {
            assert!(Prompt::of(odd.as_bytes()).heuristic() >= base, "{odd}");
        }
        // Lenient servers read these as 100.
        for v in ["\"100\"", "100", "99.2"] {
            let b = format!(r#"{{"prompt":"a","max_tokens":{v}}}"#);
            assert_eq!(Prompt::of(b.as_bytes()).max_tokens, Some(100), "{v}");
        }
        assert_eq!(Prompt::of(br#"{"max_tokens":-1}"#).max_tokens, None);
        // A key given twice counts twice.
        assert_eq!(
            Prompt::of(br#"{"prompt":"abcd","prompt":"efgh"}"#).heuristic(),
            2
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        /// Any JSON value, small.
        fn any_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i32>().prop_map(|n| json!(n)),
                (-1e6f64..1e6).prop_map(|f| json!(f)),
                "[a-z \u{e9}\u{65e5}\"]{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn words() -> impl Strategy<Value = String> {
            "[a-z \u{e9}\u{65e5}\"\\\\]{0,40}"
        }

        /// A content value and the same with odd elements mixed in.
        fn content() -> impl Strategy<Value = (Value, Value)> {
            prop_oneof![
                words().prop_map(|w| (json!(w), json!(w))),
                (
                    prop::collection::vec(words(), 0..3),
                    prop::collection::vec(any_value(), 0..3)
                )
                    .prop_map(|(ws, odd)| {
                        let parts: Vec<Value> = ws
                            .iter()
                            .map(|w| json!({"type": "text", "text": w}))
                            .collect();
                        let mut with = parts.clone();
                        with.extend(odd);
                        (Value::Array(parts), Value::Array(with))
                    }),
            ]
        }

        /// A body's members.
        type Members = Vec<(String, Value)>;

        /// A valid body of one endpoint, and the same body with odd elements inside
        /// its arrays (messages, content parts, prompts).
        fn valid() -> impl Strategy<Value = (Members, Members)> {
            let chat = (
                prop::collection::vec(content(), 0..4),
                prop::collection::vec(any_value(), 0..2),
            )
                .prop_map(|(cs, odd)| {
                    let plain: Vec<Value> = cs
                        .iter()
                        .map(|(c, _)| json!({"role": "user", "content": c}))
                        .collect();
                    let mut with: Vec<Value> = cs
                        .iter()
                        .map(|(_, c)| json!({"role": "user", "content": c}))
                        .collect();
                    with.extend(odd);
                    (
                        vec![("messages".to_string(), Value::Array(plain))],
                        vec![("messages".to_string(), Value::Array(with))],
                    )
                });
            let prompt = (
                prop_oneof![Just("prompt"), Just("input")],
                prop_oneof![
                    words().prop_map(|w| json!(w)),
                    prop::collection::vec(words(), 0..3).prop_map(|w| json!(w)),
                    prop::collection::vec(0u32..50_000, 0..8).prop_map(|w| json!(w)),
                    prop::collection::vec(prop::collection::vec(0u32..9, 0..4), 0..3)
                        .prop_map(|w| json!(w)),
                ],
                prop::collection::vec(any_value(), 0..2),
            )
                .prop_map(|(k, v, odd)| {
                    let mut with = v.clone();
                    if let (Value::Array(a), false) = (&mut with, odd.is_empty()) {
                        a.extend(odd);
                    }
                    (vec![(k.to_string(), v)], vec![(k.to_string(), with)])
                });
            let rerank = (words(), prop::collection::vec(words(), 0..4)).prop_map(|(q, d)| {
                let m = vec![
                    ("query".to_string(), json!(q)),
                    ("documents".to_string(), json!(d)),
                ];
                (m.clone(), m)
            });
            prop_oneof![chat, prompt, rerank]
        }

        fn render(members: &[(String, Value)]) -> String {
            let inner: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{}:{v}", json!(k)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }

        const KNOWN: [&str; 9] = [
            "messages",
            "prompt",
            "input",
            "query",
            "documents",
            "max_tokens",
            "max_completion_tokens",
            "stream",
            "x_unknown",
        ];

        proptest! {
            // Failures are reported with their minimal input; no file is written.
            #![proptest_config(ProptestConfig {
                cases: 512,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            /// An odd-typed or unknown field never lowers the estimate, wherever it
            /// sits, and nothing panics.
            #[test]
            fn odd_fields_never_lower_the_estimate(
                (plain, inner_odd) in valid(),
                extra in prop::collection::vec((0..KNOWN.len(), any_value()), 0..4),
                at in any::<prop::sample::Index>(),
            ) {
                let mut base = vec![("model".to_string(), json!("m"))];
                base.extend(plain);
                let mut odd = vec![("model".to_string(), json!("m"))];
                odd.extend(inner_odd);
                for (k, v) in extra {
                    let k = KNOWN[k];
                    if odd.iter().all(|(have, _)| have != k) {
                        let i = at.index(odd.len() + 1);
                        odd.insert(i, (k.to_string(), v));
                    }
                }
                let (b, o) = (render(&base), render(&odd));
                let (pb, po) = (Prompt::of(b.as_bytes()), Prompt::of(o.as_bytes()));
                prop_assert!(po.heuristic() >= pb.heuristic(), "{b}\n{o}");
                prop_assert!(po.messages >= pb.messages);
                prop_assert!(po.max_tokens.unwrap_or(0) >= pb.max_tokens.unwrap_or(0));
                let tok = Arc::new(test_tokenizer());
                prop_assert!(po.with_tokenizer(&tok) >= pb.with_tokenizer(&tok));
            }

            #[test]
            fn any_bytes_are_safe(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                let e = Estimator::new(&bytes);
                let _ = e.prompt_tokens(None) + e.max_tokens();
            }
        }
    }

    /// A word-level tokenizer.json.
    pub fn test_tokenizer() -> Tokenizer {
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": null,
          "pre_tokenizer": {"type": "Whitespace"},
          "post_processor": null, "decoder": null,
          "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2}, "unk_token": "[UNK]"}
        }"#;
        Tokenizer::from_bytes(json.as_bytes()).expect("tokenizer")
    }
}
