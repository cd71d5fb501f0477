//! Deterministic "model": token generation, prompt accounting and embeddings.
//!
//! Everything here is pure so that the exact output of a request can be
//! predicted by tests (same prompt, same words) and the hot path does no
//! locking and little allocation.

use serde::Deserialize;

/// The vocabulary of the mock model.
///
/// Every entry carries its trailing space so that a streamed token can be
/// handed out as a `&'static str` without allocating; the final token of a
/// completion is the same slice minus that space.
pub const WORDS: [&str; 64] = [
    "the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog ", "red ", "blue ",
    "green ", "cat ", "bird ", "tree ", "river ", "stone ", "light ", "dark ", "cloud ", "rain ",
    "sun ", "moon ", "star ", "sea ", "hill ", "road ", "house ", "door ", "window ", "book ",
    "page ", "word ", "song ", "bell ", "fire ", "ice ", "wind ", "leaf ", "root ", "seed ",
    "bread ", "milk ", "salt ", "gold ", "iron ", "glass ", "paper ", "clock ", "time ", "day ",
    "night ", "year ", "old ", "new ", "small ", "big ", "fast ", "slow ", "warm ", "cold ",
    "soft ", "hard ", "open ", "shut ",
];

/// Incremental 64-bit FNV-1a hasher.
///
/// Chosen because it is tiny, stable across Rust versions and platforms
/// (unlike `std`'s `DefaultHasher`), so outputs stay reproducible.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Feeds `bytes` into the hash.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash of everything written so far.
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// SplitMix64 finaliser: spreads the bits of `z` so that consecutive inputs
/// (token positions, vector components) give unrelated outputs.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `k`-th (0-based) token of the completion for a prompt with `seed`.
///
/// `last` drops the trailing space so the full text does not end in one.
pub fn token(seed: u64, k: u64, last: bool) -> &'static str {
    // `% 64` on a u64 always fits the array index.
    let word = WORDS[(mix(seed ^ mix(k)) % WORDS.len() as u64) as usize];
    if last { &word[..word.len() - 1] } else { word }
}

/// The whole completion text of `n` tokens: exactly the concatenation of
/// the pieces a stream would send.
pub fn text(seed: u64, n: u64) -> String {
    let mut out = String::with_capacity(n as usize * 6);
    for k in 0..n {
        out.push_str(token(seed, k, k + 1 == n));
    }
    out
}

/// Number of "tokens" in a piece of text: whitespace-separated words.
pub fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Accumulates the seed and the prompt-token count of a request's prompt.
///
/// Counting rule (also stated in `--help`): every whitespace-separated word
/// is one token, every chat message adds one token for its role, and every
/// token id given as a number is one token.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prompt {
    /// Hash of everything seen; the role and separator bytes make
    /// `user: "a b"` and `system: "a b"` give different completions.
    hash: Fnv,
    /// Prompt tokens counted so far.
    tokens: u64,
}

impl Prompt {
    /// Starts a chat message with `role`.
    pub fn message(&mut self, role: &str) {
        self.tokens += 1;
        self.hash.write(role.as_bytes());
        self.hash.write(&[0]);
    }

    /// Adds a piece of text.
    pub fn text(&mut self, s: &str) {
        self.tokens += count_words(s);
        self.hash.write(s.as_bytes());
        self.hash.write(&[0xff]);
    }

    /// Adds pre-tokenised input (token ids).
    pub fn token_ids(&mut self, ids: &[i64]) {
        self.tokens += ids.len() as u64;
        for id in ids {
            self.hash.write(&id.to_le_bytes());
        }
        self.hash.write(&[0xfe]);
    }

    /// Adds chat `messages` (OpenAI or Ollama shape).
    pub fn messages(&mut self, messages: &[Message]) {
        for m in messages {
            self.message(m.role.as_deref().unwrap_or(""));
            match &m.content {
                Some(Content::Text(s)) => self.text(s),
                Some(Content::Parts(parts)) => {
                    for p in parts {
                        // Images, audio etc. carry no countable text.
                        if matches!(p.kind.as_deref(), None | Some("text"))
                            && let Some(t) = &p.text
                        {
                            self.text(t);
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// Adds an OpenAI `prompt` / `input` value.
    pub fn input(&mut self, input: &Input) {
        input.for_each(|item| match item {
            Item::Text(s) => self.text(s),
            Item::Ids(ids) => self.token_ids(ids),
        });
    }

    /// Seed from which the completion words are derived.
    pub fn seed(&self) -> u64 {
        self.hash.finish()
    }

    /// Prompt tokens counted.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// One chat message; shared by the OpenAI and Ollama chat endpoints.
///
/// Unknown fields (`name`, `tool_calls`, `images`, ...) are ignored.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: Option<String>,
    /// Absent or `null` for assistant tool-call messages.
    pub content: Option<Content>,
}

/// Message content: a plain string or an array of typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// `"content": "hello"`.
    Text(String),
    /// `"content": [{"type":"text","text":"hello"}, {"type":"image_url",...}]`.
    Parts(Vec<Part>),
}

/// One content part; only text parts count.
#[derive(Debug, Deserialize)]
pub struct Part {
    /// The part's `type`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Present on text parts.
    pub text: Option<String>,
}

/// An OpenAI `prompt` (completions) or `input` (embeddings) value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// A single string.
    Text(String),
    /// A batch of strings.
    Texts(Vec<String>),
    /// A single pre-tokenised prompt.
    Ids(Vec<i64>),
    /// A batch of pre-tokenised prompts.
    IdBatches(Vec<Vec<i64>>),
}

/// One element of an [`Input`] batch.
#[derive(Clone, Copy, Debug)]
pub enum Item<'a> {
    /// Text.
    Text(&'a str),
    /// Token ids.
    Ids(&'a [i64]),
}

impl Input {
    /// Calls `f` for every element, in order (a single value is a batch of
    /// one).
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(Item<'a>)) {
        match self {
            Self::Text(s) => f(Item::Text(s)),
            Self::Texts(v) => v.iter().for_each(|s| f(Item::Text(s))),
            Self::Ids(ids) => f(Item::Ids(ids)),
            Self::IdBatches(v) => v.iter().for_each(|ids| f(Item::Ids(ids))),
        }
    }
}

/// Why generation stopped, as OpenAI (`finish_reason`) and Ollama
/// (`done_reason`) spell it.
pub type FinishReason = &'static str;

/// Completion length and finish reason for a request.
///
/// n = min(requested, cap). The reason is `"length"` when the request's own
/// limit is what stopped it (n == requested), otherwise the mock model
/// "naturally" ends after `cap` tokens and reports `"stop"`.
pub fn completion_len(requested: Option<u64>, cap: u64) -> (u64, FinishReason) {
    match requested {
        Some(r) if r <= cap => (r, "length"),
        _ => (cap, "stop"),
    }
}

/// Whether the `i`-th (0-based) model request must fail under `rate`.
///
/// Deterministic spreading: fails exactly when floor((i+1)·rate) steps past
/// floor(i·rate), so over any prefix the failure count is floor(len·rate).
pub fn should_fail(i: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    ((i + 1) as f64 * rate).floor() > (i as f64 * rate).floor()
}

/// Seed of one embedding input, independent of any other input in the batch.
pub fn item_prompt(item: Item<'_>) -> Prompt {
    let mut p = Prompt::default();
    match item {
        Item::Text(s) => p.text(s),
        Item::Ids(ids) => p.token_ids(ids),
    }
    p
}

/// A deterministic unit-length vector of `dim` components for `seed`.
pub fn embedding(seed: u64, dim: usize) -> Vec<f32> {
    let mut v: Vec<f64> = (0..dim as u64)
        .map(|j| {
            // 53 random bits mapped to [-1, 1).
            let bits = mix(seed ^ mix(j.wrapping_add(0x5eed))) >> 11;
            bits as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else if let Some(first) = v.first_mut() {
        // Astronomically unlikely, but a zero vector is not unit length.
        *first = 1.0;
    }
    v.into_iter().map(|x| x as f32).collect()
}

/// Standard base64 of the little-endian bytes of `v`: what OpenAI (and
/// vLLM) return for `"encoding_format": "base64"`, which the official
/// Python client requests by default.
pub fn base64_f32(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accounts a JSON array of chat messages.
    fn chat_prompt(json: &str) -> Prompt {
        let msgs: Vec<Message> = serde_json::from_str(json).expect("test json");
        let mut p = Prompt::default();
        p.messages(&msgs);
        p
    }

    #[test]
    fn counts_string_content_plus_role() {
        let p = chat_prompt(
            r#"[{"role":"system","content":"be  brief"},{"role":"user","content":"hello there world"}]"#,
        );
        // 2 + 3 words, + 1 per message.
        assert_eq!(p.tokens(), 7);
    }

    #[test]
    fn counts_text_parts_and_ignores_others() {
        let p = chat_prompt(
            r#"[{"role":"user","content":[
                {"type":"text","text":"describe this"},
                {"type":"image_url","image_url":{"url":"data:x"}},
                {"type":"text","text":"please"}]},
               {"role":"assistant","content":null,"tool_calls":[]}]"#,
        );
        assert_eq!(p.tokens(), 3 + 2);
    }

    #[test]
    fn counts_completion_prompts() {
        let count = |json: &str| {
            let input: Input = serde_json::from_str(json).expect("test json");
            let mut p = Prompt::default();
            p.input(&input);
            p.tokens()
        };
        assert_eq!(count(r#""one two three""#), 3);
        assert_eq!(count(r#"["one two", "three"]"#), 3);
        assert_eq!(count("[1, 2, 3, 4]"), 4);
        assert_eq!(count("[[1, 2], [3]]"), 3);
        assert_eq!(count(r#""""#), 0);
    }

    #[test]
    fn text_is_deterministic_and_prompt_dependent() {
        let a = chat_prompt(r#"[{"role":"user","content":"hello"}]"#).seed();
        let b = chat_prompt(r#"[{"role":"user","content":"hello"}]"#).seed();
        let c = chat_prompt(r#"[{"role":"user","content":"goodbye"}]"#).seed();
        let d = chat_prompt(r#"[{"role":"system","content":"hello"}]"#).seed();
        assert_eq!(text(a, 16), text(b, 16));
        assert_ne!(text(a, 16), text(c, 16));
        assert_ne!(text(a, 16), text(d, 16));
        assert_eq!(text(a, 16).split(' ').count(), 16);
        assert!(!text(a, 16).ends_with(' '));
        assert_eq!(text(a, 0), "");
    }

    #[test]
    fn text_is_concatenation_of_tokens() {
        let n = 5;
        let pieces: String = (0..n).map(|k| token(42, k, k + 1 == n)).collect();
        assert_eq!(pieces, text(42, n));
    }

    #[test]
    fn caps_completion_length() {
        assert_eq!(completion_len(None, 16), (16, "stop"));
        assert_eq!(completion_len(Some(5), 16), (5, "length"));
        assert_eq!(completion_len(Some(16), 16), (16, "length"));
        assert_eq!(completion_len(Some(100), 16), (16, "stop"));
    }

    #[test]
    fn fail_rate_pattern() {
        let pattern = |rate| (0..10).map(|i| should_fail(i, rate)).collect::<Vec<_>>();
        assert!(pattern(0.0).iter().all(|f| !f));
        assert!(pattern(1.0).iter().all(|f| *f));
        assert_eq!(
            pattern(0.5),
            [
                false, true, false, true, false, true, false, true, false, true
            ]
        );
        let fails = (0..1000).filter(|&i| should_fail(i, 0.1)).count();
        assert_eq!(fails, 100);
    }

    #[test]
    fn embeddings_are_unit_and_deterministic() {
        let a = embedding(item_prompt(Item::Text("hi")).seed(), 8);
        let b = embedding(item_prompt(Item::Text("hi")).seed(), 8);
        let c = embedding(item_prompt(Item::Text("ho")).seed(), 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert!((embedding(1, 1)[0].abs() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn base64_matches_known_values() {
        // 1.0f32 = 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
        assert_eq!(base64_f32(&[1.0, 1.0, 1.0]), "AACAPwAAgD8AAIA/");
    }
}
