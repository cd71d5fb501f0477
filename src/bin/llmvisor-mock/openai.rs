//! The OpenAI API as vLLM serves it: `/health`, `/v1/models`,
//! `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::generate::{self, FinishReason, Input, Message, Prompt};
use crate::state::{self, Admitted, AppState, Call, Flavor};
use crate::stream::{self, Frame};
use crate::tools::{self, ToolCall};

/// `POST /v1/chat/completions` body; unknown fields (temperature, vLLM's extra
/// sampling params, ...) are ignored. `tools` and `tool_choice` may make it call a
/// tool (src/bin/llmvisor-mock/tools.rs).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    /// Requested model; `None` means the served one.
    model: Option<String>,
    /// The conversation.
    messages: Vec<Message>,
    /// SSE streaming.
    stream: Option<bool>,
    /// `include_usage`.
    stream_options: Option<StreamOptions>,
    /// Legacy length limit.
    max_tokens: Option<u64>,
    /// Current length limit; wins over `max_tokens` as in vLLM.
    max_completion_tokens: Option<u64>,
    /// Functions the model may call.
    #[serde(default)]
    tools: Vec<tools::Tool>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`.
    tool_choice: Option<serde_json::Value>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    /// Requested model; `None` means the served one.
    model: Option<String>,
    /// String, strings, token ids or batches of token ids.
    prompt: Input,
    /// SSE streaming.
    stream: Option<bool>,
    /// `include_usage`.
    stream_options: Option<StreamOptions>,
    /// Length limit.
    max_tokens: Option<u64>,
}

/// `stream_options` of a completion request.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct StreamOptions {
    /// Send a final chunk with the token usage.
    include_usage: Option<bool>,
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    /// Requested model; `None` means the served one.
    model: Option<String>,
    /// What to embed.
    input: Input,
    /// `float` (default) or `base64`.
    encoding_format: Option<String>,
}

/// Token accounting of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens (see the counting rule in `--help`).
    pub prompt_tokens: u64,
    /// Generated tokens, equal to the token chunks streamed.
    pub completion_tokens: u64,
    /// Sum of both.
    pub total_tokens: u64,
}

/// Which completion endpoint a [`Plan`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

/// Everything needed to render one completion, streamed or not.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Endpoint shape.
    pub kind: Kind,
    /// Response id (`chatcmpl-mock-N` / `cmpl-mock-N`).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// Served model name.
    pub model: &'static str,
    /// Prompt hash the words derive from.
    pub seed: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens to generate.
    pub n: u64,
    /// `finish_reason`.
    pub finish: FinishReason,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// A tool call instead of text (chat only): its argument pieces are the
    /// `n` tokens.
    pub call: Option<(ToolCall, Vec<String>)>,
}

impl Plan {
    /// Usage of the whole response.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.n,
            total_tokens: self.prompt_tokens + self.n,
        }
    }

    /// The SSE events of the streamed response, generated lazily.
    pub fn frames(self) -> Frames {
        Frames {
            plan: self,
            step: 0,
        }
    }

    /// The non-streamed response.
    fn response(&self) -> Response {
        let text = generate::text(self.seed, self.n);
        let usage = self.usage();
        match self.kind {
            Kind::Chat => Json(Full {
                id: &self.id,
                object: "chat.completion",
                created: self.created,
                model: self.model,
                choices: [FullChatChoice {
                    index: 0,
                    message: match &self.call {
                        None => AssistantMessage {
                            role: "assistant",
                            content: Some(&text),
                            tool_calls: None,
                        },
                        Some((call, _)) => AssistantMessage {
                            role: "assistant",
                            content: None,
                            tool_calls: Some([call.message_entry()]),
                        },
                    },
                    logprobs: None,
                    finish_reason: self.finish,
                }],
                usage,
            })
            .into_response(),
            Kind::Text => Json(Full {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: self.model,
                choices: [FullTextChoice {
                    index: 0,
                    text: &text,
                    logprobs: None,
                    finish_reason: self.finish,
                }],
                usage,
            })
            .into_response(),
        }
    }
}

/// Lazy iterator over the SSE events of a [`Plan`]:
/// chat: role chunk, one chunk per token, finish chunk, [usage chunk],
/// `[DONE]`; completions: the same without the role chunk.
#[derive(Debug)]
pub struct Frames {
    /// What to render.
    plan: Plan,
    /// Index of the next event.
    step: u64,
}

impl Iterator for Frames {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        let p = &self.plan;
        let step = self.step;
        self.step += 1;
        // With include_usage every chunk carries `"usage": null`, as vLLM
        // and OpenAI do; otherwise the field is absent.
        let null_usage = p.include_usage.then_some(None);
        // Position counted from the first token event.
        let k = match p.kind {
            Kind::Chat if step == 0 => {
                return Some(Frame::plain(self.chat_chunk(
                    Delta {
                        role: Some("assistant"),
                        content: Some(""),
                        tool_calls: None,
                    },
                    None,
                    null_usage,
                )));
            }
            Kind::Chat => step - 1,
            Kind::Text => step,
        };
        // A tool call: the chunk that opens it, then its argument pieces as tokens.
        let k = match &p.call {
            Some((call, _)) if k == 0 => {
                return Some(Frame::plain(self.chat_chunk(
                    Delta {
                        role: None,
                        content: None,
                        tool_calls: Some(call.open_delta()),
                    },
                    None,
                    null_usage,
                )));
            }
            Some(_) => k - 1,
            None => k,
        };
        if k < p.n {
            if let Some((_, pieces)) = &p.call {
                let piece = pieces.get(k as usize).map_or("", String::as_str);
                return Some(Frame::token(self.chat_chunk(
                    Delta {
                        role: None,
                        content: None,
                        tool_calls: Some(ToolCall::piece_delta(piece)),
                    },
                    None,
                    null_usage,
                )));
            }
            let piece = generate::token(p.seed, k, k + 1 == p.n);
            let data = match p.kind {
                Kind::Chat => self.chat_chunk(
                    Delta {
                        role: None,
                        content: Some(piece),
                        tool_calls: None,
                    },
                    None,
                    null_usage,
                ),
                Kind::Text => self.text_chunk(piece, None, null_usage),
            };
            return Some(Frame::token(data));
        }
        // Events after the tokens: finish, optional usage, [DONE].
        let tail = k - p.n;
        let usage_step = if p.include_usage { 1 } else { u64::MAX };
        let done_step = if p.include_usage { 2 } else { 1 };
        Some(match tail {
            0 => Frame::plain(match p.kind {
                Kind::Chat => self.chat_chunk(
                    Delta {
                        role: None,
                        content: None,
                        tool_calls: None,
                    },
                    Some(p.finish),
                    null_usage,
                ),
                Kind::Text => self.text_chunk("", Some(p.finish), null_usage),
            }),
            t if t == usage_step => Frame::plain(stream::sse(&Chunk::<ChatChoice<'_>> {
                id: &p.id,
                object: self.chunk_object(),
                created: p.created,
                model: p.model,
                choices: &[],
                usage: Some(Some(p.usage())),
            })),
            t if t == done_step => Frame::last(stream::sse_done()),
            _ => return None,
        })
    }
}

impl Frames {
    /// `object` of stream chunks.
    fn chunk_object(&self) -> &'static str {
        match self.plan.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        }
    }

    /// One `chat.completion.chunk` event.
    fn chat_chunk(
        &self,
        delta: Delta<'_>,
        finish_reason: Option<&str>,
        usage: Option<Option<Usage>>,
    ) -> Bytes {
        let p = &self.plan;
        stream::sse(&Chunk {
            id: &p.id,
            object: "chat.completion.chunk",
            created: p.created,
            model: p.model,
            choices: &[ChatChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage,
        })
    }

    /// One streamed `text_completion` event.
    fn text_chunk(
        &self,
        text: &str,
        finish_reason: Option<&str>,
        usage: Option<Option<Usage>>,
    ) -> Bytes {
        let p = &self.plan;
        stream::sse(&Chunk {
            id: &p.id,
            object: "text_completion",
            created: p.created,
            model: p.model,
            choices: &[TextChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason,
            }],
            usage,
        })
    }
}

/// A stream chunk; `C` is the choice type of the endpoint.
#[derive(Serialize)]
struct Chunk<'a, C> {
    /// Response id.
    id: &'a str,
    /// `chat.completion.chunk` or `text_completion`.
    object: &'static str,
    /// Unix seconds.
    created: u64,
    /// Served model.
    model: &'a str,
    /// Zero (usage chunk) or one choice.
    choices: &'a [C],
    /// Absent, `null`, or the usage object (final chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

/// Choice of a chat stream chunk.
#[derive(Serialize)]
struct ChatChoice<'a> {
    /// Always 0: one choice per request.
    index: u32,
    /// What this chunk adds.
    delta: Delta<'a>,
    /// Always `null`.
    logprobs: Option<()>,
    /// Set on the finish chunk only.
    finish_reason: Option<&'a str>,
}

/// Chat delta; empty (`{}`) on the finish chunk.
#[derive(Serialize)]
struct Delta<'a> {
    /// Only on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    /// The token text.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    /// A tool call's opening or one of its argument pieces.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<serde_json::Value>,
}

/// Choice of a completions stream chunk.
#[derive(Serialize)]
struct TextChoice<'a> {
    /// Always 0.
    index: u32,
    /// The token text; empty on the finish chunk.
    text: &'a str,
    /// Always `null`.
    logprobs: Option<()>,
    /// Set on the finish chunk only.
    finish_reason: Option<&'a str>,
}

/// A non-streamed completion.
#[derive(Serialize)]
struct Full<'a, C> {
    /// Response id.
    id: &'a str,
    /// `chat.completion` or `text_completion`.
    object: &'static str,
    /// Unix seconds.
    created: u64,
    /// Served model.
    model: &'a str,
    /// The one choice.
    choices: [C; 1],
    /// Token accounting.
    usage: Usage,
}

/// Choice of a non-streamed chat completion.
#[derive(Serialize)]
struct FullChatChoice<'a> {
    /// Always 0.
    index: u32,
    /// The generated message.
    message: AssistantMessage<'a>,
    /// Always `null`.
    logprobs: Option<()>,
    /// `stop` or `length`.
    finish_reason: &'a str,
}

/// The generated chat message.
#[derive(Serialize)]
struct AssistantMessage<'a> {
    /// `assistant`.
    role: &'static str,
    /// The whole text; `null` with a tool call.
    content: Option<&'a str>,
    /// The tool call, if the model made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[serde_json::Value; 1]>,
}

/// Choice of a non-streamed text completion.
#[derive(Serialize)]
struct FullTextChoice<'a> {
    /// Always 0.
    index: u32,
    /// The whole text.
    text: &'a str,
    /// Always `null`.
    logprobs: Option<()>,
    /// `stop` or `length`.
    finish_reason: &'a str,
}

/// `GET /health`: 200 with an empty body once ready, 503 before.
pub async fn health(State(st): State<&'static AppState>) -> StatusCode {
    if st.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `GET /v1/models`.
pub async fn models(State(st): State<&'static AppState>) -> Response {
    if !st.is_ready() {
        return state::loading(Flavor::OpenAi);
    }
    let name = st.cfg.served_name.as_str();
    Json(json!({
        "object": "list",
        "data": [{
            "id": name,
            "object": "model",
            "created": st.started_unix,
            "owned_by": "llmvisor-mock",
            "root": name,
            "parent": null,
            "max_model_len": st.cfg.context_length,
        }],
    }))
    .into_response()
}

/// Parses a request body, answering 400 on failure.
fn parse<T: for<'de> Deserialize<'de>>(
    adm: Admitted,
    body: &Bytes,
) -> Result<(Admitted, T), Response> {
    match serde_json::from_slice(body) {
        Ok(req) => Ok((adm, req)),
        Err(e) => Err(adm.reject(state::bad_request(
            Flavor::OpenAi,
            &format!("Invalid request body: {e}"),
        ))),
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(st): State<&'static AppState>,
    Call { headers, body }: Call,
) -> Response {
    let adm = match st.admit(Flavor::OpenAi, headers, &body) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let (adm, req) = match parse::<ChatRequest>(adm, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    let mut prompt = Prompt::default();
    prompt.messages(&req.messages);
    let requested = req.max_completion_tokens.or(req.max_tokens);
    let call = match tools::pick(
        &req.tools,
        req.tool_choice.as_ref(),
        &req.messages,
        prompt.seed(),
    ) {
        Ok(call) => call,
        Err(e) => return adm.reject(state::bad_request(Flavor::OpenAi, &e.0)),
    };
    complete(
        st,
        adm,
        Kind::Chat,
        req.model.as_deref(),
        prompt,
        requested,
        req.stream,
        req.stream_options,
        call,
    )
    .await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(st): State<&'static AppState>,
    Call { headers, body }: Call,
) -> Response {
    let adm = match st.admit(Flavor::OpenAi, headers, &body) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let (adm, req) = match parse::<CompletionRequest>(adm, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    let mut prompt = Prompt::default();
    prompt.input(&req.prompt);
    complete(
        st,
        adm,
        Kind::Text,
        req.model.as_deref(),
        prompt,
        req.max_tokens,
        req.stream,
        req.stream_options,
        None,
    )
    .await
}

/// Shared tail of both completion endpoints: validation, then a streamed or
/// a whole response.
#[allow(clippy::too_many_arguments)] // Plain data from two request shapes.
async fn complete(
    st: &'static AppState,
    adm: Admitted,
    kind: Kind,
    model: Option<&str>,
    prompt: Prompt,
    requested: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    call: Option<ToolCall>,
) -> Response {
    if !st.model_matches(model, Flavor::OpenAi) {
        return adm.reject(state::model_not_found(
            Flavor::OpenAi,
            model.unwrap_or_default(),
        ));
    }
    if requested == Some(0) {
        // vLLM rejects a zero limit the same way.
        return adm.reject(state::bad_request(
            Flavor::OpenAi,
            "max_tokens must be at least 1, got 0.",
        ));
    }
    let (mut n, mut finish) = generate::completion_len(requested, st.cfg.max_tokens);
    // A tool call is never cut: its argument pieces are its tokens.
    let call = call.map(|c| {
        let pieces: Vec<String> = c.pieces().into_iter().map(str::to_string).collect();
        (n, finish) = (pieces.len() as u64, "tool_calls");
        (c, pieces)
    });
    let prefix = match kind {
        Kind::Chat => "chatcmpl-mock-",
        Kind::Text => "cmpl-mock-",
    };
    let plan = Plan {
        kind,
        id: format!("{prefix}{}", adm.index),
        created: state::unix_now(),
        model: st.cfg.served_name.as_str(),
        seed: prompt.seed(),
        prompt_tokens: prompt.tokens(),
        n,
        finish,
        include_usage: stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        call,
    };
    if stream.unwrap_or(false) {
        let body = stream::paced_body(
            plan.frames(),
            st.cfg.token_delay,
            st.cfg.stall_after,
            adm.guard,
        );
        return stream::streaming_response("text/event-stream", body);
    }
    // The guard lives across the sleep: if the client goes away meanwhile,
    // hyper drops this future and the request counts as cancelled.
    stream::sleep_tokens(st.cfg.token_delay, n).await;
    let response = plan.response();
    adm.guard.complete();
    response
}

/// One embedding in the response: floats, or base64 of little-endian f32.
#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    /// `encoding_format: float`.
    Floats(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(st): State<&'static AppState>,
    Call { headers, body }: Call,
) -> Response {
    let adm = match st.admit(Flavor::OpenAi, headers, &body) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let (adm, req) = match parse::<EmbeddingRequest>(adm, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    if !st.model_matches(req.model.as_deref(), Flavor::OpenAi) {
        let model = req.model.as_deref().unwrap_or_default();
        return adm.reject(state::model_not_found(Flavor::OpenAi, model));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return adm.reject(state::bad_request(
                Flavor::OpenAi,
                &format!("Unsupported encoding_format `{other}`: use `float` or `base64`."),
            ));
        }
    };
    let mut data = Vec::new();
    let mut prompt_tokens = 0;
    req.input.for_each(|item| {
        let p = generate::item_prompt(item);
        prompt_tokens += p.tokens();
        let v = generate::embedding(p.seed(), st.cfg.embedding_dim);
        let embedding = if base64 {
            Vector::Base64(generate::base64_f32(&v))
        } else {
            Vector::Floats(v)
        };
        data.push(Embedding {
            object: "embedding",
            index: data.len(),
            embedding,
        });
    });
    let response = Json(EmbeddingList {
        id: format!("embd-mock-{}", adm.index),
        object: "list",
        created: state::unix_now(),
        model: &st.cfg.served_name,
        data,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
    .into_response();
    adm.guard.complete();
    response
}

/// `/v1/embeddings` response. Typed rather than `json!` so that `f32`s are
/// printed in their shortest form, not widened to `f64`.
#[derive(Serialize)]
struct EmbeddingList<'a> {
    /// Response id.
    id: String,
    /// `list`.
    object: &'static str,
    /// Unix seconds.
    created: u64,
    /// Served model.
    model: &'a str,
    /// One entry per input, in order.
    data: Vec<Embedding>,
    /// Token accounting.
    usage: EmbeddingUsage,
}

/// One entry of [`EmbeddingList`].
#[derive(Serialize)]
struct Embedding {
    /// `embedding`.
    object: &'static str,
    /// Position of the input.
    index: usize,
    /// The vector.
    embedding: Vector,
}

/// Usage of an embedding request.
#[derive(Serialize)]
struct EmbeddingUsage {
    /// Input tokens.
    prompt_tokens: u64,
    /// Same as `prompt_tokens`.
    total_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A plan with fixed id, seed and prompt size.
    fn plan(kind: Kind, n: u64, include_usage: bool) -> Plan {
        Plan {
            kind,
            id: "chatcmpl-mock-7".into(),
            created: 1_700_000_000,
            model: "mock",
            seed: 99,
            prompt_tokens: 5,
            n,
            finish: "length",
            include_usage,
            call: None,
        }
    }

    /// Renders a plan, checks the `[DONE]` ending, and parses the other events.
    fn events(p: Plan) -> (Vec<Frame>, Vec<Value>) {
        let frames: Vec<Frame> = p.frames().collect();
        let last = frames.last().expect("frames");
        assert_eq!(&last.data[..], b"data: [DONE]\n\n");
        assert!(last.last);
        assert_eq!(frames.iter().filter(|f| f.last).count(), 1);
        let json = frames[..frames.len() - 1]
            .iter()
            .map(|f| {
                let s = std::str::from_utf8(&f.data).expect("utf8");
                let body = s
                    .strip_prefix("data: ")
                    .and_then(|s| s.strip_suffix("\n\n"))
                    .expect("sse framing");
                serde_json::from_str(body).expect("json event")
            })
            .collect();
        (frames, json)
    }

    #[test]
    fn chat_stream_shape_with_usage() {
        let (frames, ev) = events(plan(Kind::Chat, 3, true));
        // role + 3 tokens + finish + usage + [DONE]
        assert_eq!(frames.len(), 7);
        assert_eq!(frames.iter().filter(|f| f.token).count(), 3);
        assert_eq!(ev[0]["object"], "chat.completion.chunk");
        assert_eq!(ev[0]["id"], "chatcmpl-mock-7");
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(ev[0]["choices"][0]["finish_reason"], Value::Null);
        let text: String = ev[1..4]
            .iter()
            .map(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("content")
            })
            .collect();
        assert_eq!(text, generate::text(99, 3));
        assert_eq!(ev[4]["choices"][0]["delta"], json!({}));
        assert_eq!(ev[4]["choices"][0]["finish_reason"], "length");
        for e in &ev[..5] {
            assert!(e.get("usage").is_some_and(Value::is_null), "{e}");
        }
        assert_eq!(ev[5]["choices"], json!([]));
        assert_eq!(
            ev[5]["usage"],
            json!({"prompt_tokens":5,"completion_tokens":3,"total_tokens":8})
        );
    }

    /// A plan that calls a tool: what `complete` makes of a picked call.
    fn tool_plan() -> Plan {
        let call = ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris","days":3}"#.into(),
        };
        let pieces: Vec<String> = call.pieces().into_iter().map(str::to_string).collect();
        Plan {
            n: pieces.len() as u64,
            finish: "tool_calls",
            call: Some((call, pieces)),
            ..plan(Kind::Chat, 0, true)
        }
    }

    #[test]
    fn a_streamed_tool_call_opens_with_its_name_then_sends_argument_pieces() {
        let p = tool_plan();
        let n = p.n as usize;
        let (frames, ev) = events(p);
        // role + opening + n pieces + finish + usage + [DONE]
        assert_eq!(frames.len(), n + 5);
        assert_eq!(frames.iter().filter(|f| f.token).count(), n);
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            ev[1]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})
        );
        let args: String = ev[2..2 + n]
            .iter()
            .map(|e| {
                let d = &e["choices"][0]["delta"]["tool_calls"][0];
                assert_eq!(d["index"], 0);
                assert!(d.get("id").is_none() && d["function"].get("name").is_none());
                d["function"]["arguments"].as_str().expect("fragment")
            })
            .collect();
        assert_eq!(args, r#"{"city":"Paris","days":3}"#);
        assert_eq!(ev[2 + n]["choices"][0]["delta"], json!({}));
        assert_eq!(ev[2 + n]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(ev[3 + n]["usage"]["completion_tokens"], n as u64);
    }

    #[tokio::test]
    async fn a_tool_call_answer_has_null_content_and_the_call() {
        let resp = tool_plan().response();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&body).expect("json");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"type": "function", "id": "call_1",
                "function": {"name": "get_weather", "arguments": r#"{"city":"Paris","days":3}"#}}])
        );
    }

    #[test]
    fn chat_stream_without_usage_has_no_usage_field() {
        let (frames, ev) = events(plan(Kind::Chat, 2, false));
        assert_eq!(frames.len(), 5);
        assert!(ev.iter().all(|e| e.get("usage").is_none()));
        assert_eq!(ev[3]["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn completion_stream_shape() {
        let (frames, ev) = events(plan(Kind::Text, 4, true));
        // 4 tokens + finish + usage + [DONE]
        assert_eq!(frames.len(), 7);
        assert_eq!(ev[0]["object"], "text_completion");
        let text: String = ev[..4]
            .iter()
            .map(|e| e["choices"][0]["text"].as_str().expect("text"))
            .collect();
        assert_eq!(text, generate::text(99, 4));
        assert_eq!(ev[4]["choices"][0]["text"], "");
        assert_eq!(ev[4]["choices"][0]["finish_reason"], "length");
        assert_eq!(ev[5]["usage"]["completion_tokens"], 4);
    }
}

/// `/v1/rerank` request (vLLM's and Jina's shape).
#[derive(Deserialize)]
struct RerankRequest {
    model: Option<String>,
    query: String,
    documents: Vec<String>,
    top_n: Option<usize>,
}

/// `/v1/rerank`: a deterministic relevance score per document (shared words with
/// the query, with a tie-break from the text), best first.
pub async fn rerank(State(st): State<&'static AppState>, Call { headers, body }: Call) -> Response {
    let adm = match st.admit(Flavor::OpenAi, headers, &body) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let (adm, req) = match parse::<RerankRequest>(adm, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    if !st.model_matches(req.model.as_deref(), Flavor::OpenAi) {
        let model = req.model.as_deref().unwrap_or_default();
        return adm.reject(state::model_not_found(Flavor::OpenAi, model));
    }
    let words: std::collections::HashSet<&str> = req.query.split_whitespace().collect();
    let mut results: Vec<(usize, f64)> = req
        .documents
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let shared = d.split_whitespace().filter(|w| words.contains(w)).count();
            let tie = (d.len() % 97) as f64 / 1000.0;
            (i, shared as f64 + tie)
        })
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    results.truncate(req.top_n.unwrap_or(results.len()));
    let response = Json(serde_json::json!({
        "id": format!("rerank-mock-{}", adm.index),
        "model": st.cfg.served_name,
        "results": results.iter().map(|(i, s)| serde_json::json!({
            "index": i,
            "relevance_score": s,
            "document": {"text": req.documents[*i]},
        })).collect::<Vec<_>>(),
        "usage": {"total_tokens": req.documents.iter().map(|d| d.len() / 4 + 1).sum::<usize>()},
    }))
    .into_response();
    adm.guard.complete();
    response
}
