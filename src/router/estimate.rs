//! Prompt token estimates, without asking any backend.
//!
//! With a model's `tokenizer.json` the count is the tokenizer's, over the text of
//! every message (or prompt, or input) plus a fixed overhead per message for the chat
//! template. Without one, the heuristic: one token per 4 ASCII characters (rounded
//! up, per text) plus one token per non-ASCII character, plus the same overheads.
//! English prose comes out within about 10–20% of real Llama, Qwen and GPT
//! tokenizers; CJK text is counted high, code somewhat low. The backend stays the
//! final judge of its own context window.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokenizers::Tokenizer;

/// Tokens a chat template adds per message (role markers, separators).
pub const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply.
pub const PER_REPLY: u64 = 3;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    query: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    documents: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
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

/// One element of a content or prompt array: a string, a token id, a content part
/// (`{"type": "text", "text": …}`), or a nested array of token ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum Piece<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Id(#[allow(dead_code)] i64),
    Part {
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    },
    Ids(Vec<i64>),
}

/// Collect strings from a value that is a string, an array of strings, token ids,
/// arrays of token ids, or content parts. Plain strings, the common case, are
/// borrowed from the body without building a JSON tree.
fn collect<'a>(raw: &'a RawValue, out: &mut Prompt<'a>) {
    let text = raw.get().trim_start();
    if text.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<Cow<'a, str>>(raw.get()) {
            out.texts.push(s);
        }
        return;
    }
    if text.starts_with('[')
        && let Ok(pieces) = serde_json::from_str::<Vec<Piece<'a>>>(raw.get())
    {
        for p in pieces {
            match p {
                Piece::Text(t) => out.texts.push(t),
                Piece::Id(_) => out.token_ids += 1,
                Piece::Part { text: Some(t) } => out.texts.push(t),
                Piece::Part { text: None } => {}
                Piece::Ids(ids) => out.token_ids += ids.len() as u64,
            }
        }
    }
}

impl<'a> Prompt<'a> {
    /// Read the prompt of a request body (unknown shapes count as empty).
    pub fn of(body: &'a [u8]) -> Self {
        let mut out = Prompt::default();
        let Ok(b) = serde_json::from_slice::<Body<'_>>(body) else {
            return out;
        };
        out.max_tokens = b.max_completion_tokens.or(b.max_tokens);
        if let Some(ms) = &b.messages {
            out.messages = ms.len() as u64;
            for m in ms {
                if let Some(c) = m.content {
                    collect(c, &mut out);
                }
            }
        }
        for raw in [b.prompt, b.input, b.documents].into_iter().flatten() {
            collect(raw, &mut out);
        }
        if let Some(q) = b.query {
            out.texts.push(q);
        }
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
