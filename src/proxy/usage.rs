//! What the relay learns from a response on its way to the client: when its first
//! byte came, and the token `usage` — from a JSON body, or from the usage chunk of an
//! SSE stream. The Responses API's `usage` (`input_tokens`, `output_tokens`) counts
//! the same, found at the top of a JSON body or inside the `response` of the
//! stream's `response.completed` event; Anthropic's (`/v1/messages` forwarded as
//! is) too, in a JSON body, or from the stream's `message_start` (inside its
//! `message`) and `message_delta` events. When llmvisor itself asked for that chunk (`stream_options.
//! include_usage`, for the usage store), the tap also removes it, and the
//! `"usage":null` fields it caused in every other chunk, so the client sees the
//! stream it asked for.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

/// Token counts of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Prompt (input) tokens; the Responses API's `input_tokens`.
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    /// Completion (output) tokens; the Responses API's `output_tokens`.
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

/// What the tap found, handed to the relay's end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tapped {
    /// When the first body byte arrived from the backend.
    pub first_byte: Option<Instant>,
    /// The response's usage, if it reported one.
    pub usage: Option<Usage>,
}

/// Largest JSON body kept to read its usage.
const MAX_JSON: usize = 4 << 20;

/// Watches (and for injected usage, filters) a response body.
pub struct Tap {
    sse: bool,
    strip: bool,
    buf: BytesMut,
    overflow: bool,
    found: Tapped,
}

#[derive(Deserialize)]
struct WithUsage<'a> {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
    /// The Responses API's `response.completed` event: the response, usage inside.
    #[serde(default)]
    response: Option<Nested>,
    /// Anthropic's `message_start` event: the message, usage inside. Read only when
    /// there is no `usage` at the top (a `message` of another shape, e.g. a string,
    /// must not spoil the rest).
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<Usage>,
}

impl WithUsage<'_> {
    fn usage(&self) -> Option<Usage> {
        self.usage
            .or_else(|| self.response.as_ref().and_then(|r| r.usage))
            .or_else(|| {
                self.message
                    .and_then(|m| serde_json::from_str::<Nested>(m.get()).ok())
                    .and_then(|m| m.usage)
            })
    }
}

impl Tap {
    /// For a body that is SSE or not; `strip` removes the usage llmvisor asked for.
    pub fn new(sse: bool, strip: bool) -> Self {
        Self {
            sse,
            strip: strip && sse,
            buf: BytesMut::new(),
            overflow: false,
            found: Tapped::default(),
        }
    }

    /// A data frame from the backend; returns what goes on to the client (possibly
    /// empty while an SSE event is incomplete).
    pub fn data(&mut self, data: Bytes) -> Bytes {
        if self.found.first_byte.is_none() && !data.is_empty() {
            self.found.first_byte = Some(Instant::now());
        }
        if !self.sse {
            if !self.overflow {
                if self.buf.len() + data.len() <= MAX_JSON {
                    self.buf.extend_from_slice(&data);
                } else {
                    self.overflow = true;
                    self.buf = BytesMut::new();
                }
            }
            return data;
        }
        if !self.strip {
            // Only look: keep the tail that may hold an incomplete event.
            self.buf.extend_from_slice(&data);
            self.scan_events(false);
            return data;
        }
        self.buf.extend_from_slice(&data);
        self.scan_events(true)
    }

    /// Split complete events off `buf`; note usage; with `filter`, return the events
    /// to forward (without the injected usage).
    fn scan_events(&mut self, filter: bool) -> Bytes {
        let mut out = BytesMut::new();
        while let Some(end) = find(&self.buf, b"\n\n") {
            let event = self.buf.split_to(end + 2);
            let has_usage = find(&event, b"\"usage\"").is_some();
            if has_usage && let Some(mut u) = event_usage(&event) {
                // Anthropic's `message_delta` may carry only `output_tokens`: the
                // input counted by `message_start` stays.
                if let Some(before) = self.found.usage
                    && u.0.prompt_tokens == 0
                {
                    u.0.prompt_tokens = before.prompt_tokens;
                }
                self.found.usage = Some(u.0);
                if filter && u.1 {
                    continue; // the injected usage-only chunk
                }
            }
            if filter {
                if has_usage {
                    out.extend_from_slice(&strip_null_usage(&event));
                } else {
                    out.extend_from_slice(&event);
                }
            }
        }
        if !filter && self.buf.len() > 64 << 10 {
            // A runaway line without an event end: stop keeping it.
            self.buf.clear();
        }
        out.freeze()
    }

    /// The end of the body: whatever is still held back (filter mode), and the
    /// findings.
    pub fn finish(&mut self) -> (Bytes, Tapped) {
        let rest = if self.sse {
            let rest = std::mem::take(&mut self.buf);
            if self.strip {
                rest.freeze()
            } else {
                Bytes::new()
            }
        } else {
            if !self.overflow && !self.buf.is_empty() {
                self.found.usage = serde_json::from_slice::<WithUsage<'_>>(&self.buf)
                    .ok()
                    .and_then(|w| w.usage());
            }
            self.buf = BytesMut::new();
            Bytes::new()
        };
        (rest, self.found)
    }

    /// The findings so far (for a relay that ended early).
    pub fn found(&self) -> Tapped {
        self.found
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The usage of one SSE event, and whether the event is a usage-only chunk (no
/// choices).
fn event_usage(event: &[u8]) -> Option<(Usage, bool)> {
    let text = std::str::from_utf8(event).ok()?;
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    let w: WithUsage<'_> = serde_json::from_str(&data).ok()?;
    let usage = w.usage()?;
    // Only a chat/completions chunk without choices is a usage-only chunk.
    let empty = w.response.is_none()
        && w.message.is_none()
        && w.choices.is_none_or(|c| c.get().trim() == "[]");
    Some((usage, empty))
}

/// Remove `"usage":null` (the field every chunk carries once usage is asked for).
fn strip_null_usage(event: &[u8]) -> Vec<u8> {
    let mut s = event.to_vec();
    for pat in [
        &b",\"usage\":null"[..],
        b"\"usage\":null,",
        b", \"usage\": null",
        b"\"usage\": null, ",
    ] {
        while let Some(i) = find(&s, pat) {
            s.drain(i..i + pat.len());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tap: &mut Tap, parts: &[&str]) -> String {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&tap.data(Bytes::copy_from_slice(p.as_bytes())));
        }
        out.extend_from_slice(&tap.finish().0);
        String::from_utf8(out).unwrap()
    }

    const STREAM: [&str; 4] = [
        "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: {\"id\":\"1\",\"choi",
        "ces\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    ];

    #[test]
    fn a_top_level_message_of_another_shape_does_not_hide_the_usage() {
        let mut tap = Tap::new(false, false);
        run(
            &mut tap,
            &["{\"message\":\"a note\",\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}"],
        );
        assert_eq!(
            tap.found().usage,
            Some(Usage {
                prompt_tokens: 2,
                completion_tokens: 1
            })
        );
    }

    #[test]
    fn anthropic_stream_usage_is_read_from_message_start_and_message_delta() {
        let mut tap = Tap::new(true, false);
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":12,\"output_tokens\":0}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        let out = run(&mut tap, &events);
        assert_eq!(out, events.concat(), "relayed untouched");
        assert_eq!(
            tap.found().usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5
            })
        );
        // A non-streamed message: usage at the top.
        let mut tap = Tap::new(false, false);
        run(
            &mut tap,
            &[
                "{\"type\":\"message\",\"usage\":{\"input_tokens\":3,\"cache_read_input_tokens\":0,\"output_tokens\":4}}",
            ],
        );
        assert_eq!(
            tap.found().usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
    }

    #[test]
    fn injected_usage_is_read_and_removed() {
        let mut tap = Tap::new(true, true);
        let out = run(&mut tap, &STREAM);
        assert_eq!(
            out,
            "data: {\"id\":\"1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"id\":\"1\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
        );
        let found = tap.found();
        assert_eq!(
            found.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 2
            })
        );
        assert!(found.first_byte.is_some());
    }

    #[test]
    fn usage_the_client_asked_for_passes_untouched() {
        let mut tap = Tap::new(true, false);
        let out = run(&mut tap, &STREAM);
        assert_eq!(out, STREAM.concat());
        assert_eq!(tap.found().usage.unwrap().completion_tokens, 2);
    }

    /// The Responses API's stream as llama-server sends it (named events, no
    /// `[DONE]`): the usage of `response.completed`, and nothing removed.
    #[test]
    fn responses_stream_usage_is_read_from_response_completed() {
        let stream = [
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"status\":\"in_progress\"}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[],\"usage\":{\"input_tokens\":26,\"output_tokens\":3,\"total_tokens\":29}}}\n\n",
        ];
        for strip in [false, true] {
            let mut tap = Tap::new(true, strip);
            assert_eq!(run(&mut tap, &stream), stream.concat());
            assert_eq!(
                tap.found().usage,
                Some(Usage {
                    prompt_tokens: 26,
                    completion_tokens: 3
                })
            );
        }
    }

    #[test]
    fn json_bodies() {
        let mut tap = Tap::new(false, true);
        let body = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        assert_eq!(run(&mut tap, &[&body[..10], &body[10..]]), body);
        assert_eq!(
            tap.found().usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        let mut tap = Tap::new(false, false);
        run(
            &mut tap,
            &[r#"{"data":[],"usage":{"prompt_tokens":5,"total_tokens":5}}"#],
        );
        assert_eq!(
            tap.found().usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 0
            })
        );
        let mut tap = Tap::new(false, false);
        run(
            &mut tap,
            &[
                r#"{"object":"response","output":[],"usage":{"input_tokens":35,"output_tokens":5,"total_tokens":40}}"#,
            ],
        );
        assert_eq!(
            tap.found().usage,
            Some(Usage {
                prompt_tokens: 35,
                completion_tokens: 5
            })
        );
        let mut tap = Tap::new(false, false);
        run(&mut tap, &["not json"]);
        assert_eq!(tap.found().usage, None);
    }
}
