//! Ollama's native API: `/api/version`, `/api/tags`, `/api/chat`,
//! `/api/generate`, `/api/embed` (and the legacy `/api/embeddings`).

use std::time::{Instant, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::generate::{self, FinishReason, Item, Message, Prompt};
use crate::state::{self, Admitted, AppState, Call, Flavor};
use crate::stream::{self, Frame};

/// `POST /api/chat` body; unknown fields (`format`, `tools`, `keep_alive`,
/// ...) are ignored.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    /// Requested model; `None` means the served one.
    model: Option<String>,
    /// The conversation.
    #[serde(default)]
    messages: Vec<Message>,
    /// NDJSON streaming; Ollama defaults to true.
    stream: Option<bool>,
    /// Sampling options; only `num_predict` matters here.
    options: Option<Options>,
}

/// `POST /api/generate` body.
#[derive(Debug, Deserialize)]
struct GenerateRequest {
    /// Requested model; `None` means the served one.
    model: Option<String>,
    /// The prompt (may be absent: Ollama then just loads the model).
    #[serde(default)]
    prompt: String,
    /// NDJSON streaming; Ollama defaults to true.
    stream: Option<bool>,
    /// Sampling options; only `num_predict` matters here.
    options: Option<Options>,
}

/// Ollama `options`.
#[derive(Clone, Copy, Debug, Deserialize)]
struct Options {
    /// Length limit; negative means unlimited (-1) or "fill the context"
    /// (-2), both of which end at `--max-tokens` here.
    num_predict: Option<i64>,
}

/// `POST /api/embed` body.
#[derive(Debug, Deserialize)]
struct EmbedRequest {
    /// Requested model; `None` means the served one.
    model: Option<String>,
    /// One string or several.
    input: EmbedInput,
}

/// `input` of `/api/embed`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    /// One string.
    One(String),
    /// Several strings.
    Many(Vec<String>),
}

/// `POST /api/embeddings` (legacy) body.
#[derive(Debug, Deserialize)]
struct LegacyEmbedRequest {
    /// Requested model; `None` means the served one.
    model: Option<String>,
    /// The text to embed.
    #[serde(default)]
    prompt: String,
}

/// Which generation endpoint a [`Plan`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/api/chat`: text in `message.content`.
    Chat,
    /// `/api/generate`: text in `response`.
    Generate,
}

/// Everything needed to render one Ollama generation.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Endpoint shape.
    pub kind: Kind,
    /// Served model name.
    pub model: &'static str,
    /// RFC 3339 time of the request (one per response keeps lines cheap).
    pub created_at: String,
    /// Prompt hash the words derive from.
    pub seed: u64,
    /// Prompt tokens (`prompt_eval_count`).
    pub prompt_tokens: u64,
    /// Tokens to generate (`eval_count`).
    pub n: u64,
    /// `done_reason`.
    pub finish: FinishReason,
    /// Arrival of the request, for `total_duration`.
    pub started: Instant,
}

impl Plan {
    /// The NDJSON lines of the streamed response, generated lazily.
    pub fn frames(self) -> Frames {
        Frames {
            plan: self,
            step: 0,
        }
    }

    /// A line carrying `text`; `done` adds the final statistics.
    fn line<'a>(&'a self, text: &'a str, done: bool) -> Line<'a> {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Line {
            model: self.model,
            created_at: &self.created_at,
            message: (self.kind == Kind::Chat).then_some(LineMessage {
                role: "assistant",
                content: text,
            }),
            response: (self.kind == Kind::Generate).then_some(text),
            done,
            stats: done.then_some(Final {
                done_reason: self.finish,
                total_duration: elapsed,
                load_duration: 0,
                prompt_eval_count: self.prompt_tokens,
                prompt_eval_duration: 0,
                eval_count: self.n,
                eval_duration: elapsed,
            }),
        }
    }
}

/// Lazy iterator over the NDJSON lines of a [`Plan`]: one per token, then
/// the `done` line with the counts.
#[derive(Debug)]
pub struct Frames {
    /// What to render.
    plan: Plan,
    /// Index of the next line.
    step: u64,
}

impl Iterator for Frames {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        let p = &self.plan;
        let k = self.step;
        self.step += 1;
        if k < p.n {
            let piece = generate::token(p.seed, k, k + 1 == p.n);
            Some(Frame::token(stream::ndjson(&p.line(piece, false))))
        } else if k == p.n {
            Some(Frame::last(stream::ndjson(&p.line("", true))))
        } else {
            None
        }
    }
}

/// One Ollama generation line (streamed) or the whole answer.
#[derive(Serialize)]
struct Line<'a> {
    /// Served model.
    model: &'a str,
    /// RFC 3339 timestamp.
    created_at: &'a str,
    /// Chat only.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<LineMessage<'a>>,
    /// Generate only.
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a str>,
    /// True on the last line.
    done: bool,
    /// Present on the last line.
    #[serde(flatten)]
    stats: Option<Final>,
}

/// Chat message of a [`Line`].
#[derive(Serialize)]
struct LineMessage<'a> {
    /// `assistant`.
    role: &'static str,
    /// Token text (or the whole text).
    content: &'a str,
}

/// Statistics on the `done` line (durations in nanoseconds).
#[derive(Serialize)]
struct Final {
    /// `stop` or `length`.
    done_reason: &'static str,
    /// Since the request arrived.
    total_duration: u64,
    /// Always 0: the mock has nothing to load per request.
    load_duration: u64,
    /// Prompt tokens.
    prompt_eval_count: u64,
    /// Always 0.
    prompt_eval_duration: u64,
    /// Generated tokens.
    eval_count: u64,
    /// Generation time.
    eval_duration: u64,
}

/// `GET /api/version`.
pub async fn version(State(st): State<&'static AppState>) -> Response {
    if !st.is_ready() {
        return state::loading(Flavor::Ollama);
    }
    Json(json!({ "version": "0.0.0-mock" })).into_response()
}

/// `GET /api/tags`.
pub async fn tags(State(st): State<&'static AppState>) -> Response {
    if !st.is_ready() {
        return state::loading(Flavor::Ollama);
    }
    let name = st.cfg.served_name.as_str();
    Json(json!({
        "models": [{
            "name": name,
            "model": name,
            "modified_at": "2026-01-01T00:00:00Z",
            "size": 0,
            "digest": "mock",
            "details": {},
        }],
    }))
    .into_response()
}

/// Admits the request and parses its body, answering errors Ollama-style.
fn admit<T: for<'de> Deserialize<'de>>(
    st: &'static AppState,
    headers: HeaderMap,
    body: &Bytes,
) -> Result<(Admitted, T), Response> {
    let adm = st.admit(Flavor::Ollama, headers, body)?;
    match serde_json::from_slice(body) {
        Ok(req) => Ok((adm, req)),
        Err(e) => Err(adm.reject(state::bad_request(Flavor::Ollama, &e.to_string()))),
    }
}

/// Answers 404 unless `model` is the served one.
fn check_model(st: &AppState, adm: Admitted, model: Option<&str>) -> Result<Admitted, Response> {
    if st.model_matches(model, Flavor::Ollama) {
        Ok(adm)
    } else {
        Err(adm.reject(state::model_not_found(
            Flavor::Ollama,
            model.unwrap_or_default(),
        )))
    }
}

/// `POST /api/chat`.
pub async fn chat(State(st): State<&'static AppState>, Call { headers, body }: Call) -> Response {
    let started = Instant::now();
    let (adm, req) = match admit::<ChatRequest>(st, headers, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    let mut prompt = Prompt::default();
    prompt.messages(&req.messages);
    generate(
        st,
        adm,
        Kind::Chat,
        req.model.as_deref(),
        prompt,
        req.options,
        req.stream,
        started,
    )
    .await
}

/// `POST /api/generate`.
pub async fn generate_handler(
    State(st): State<&'static AppState>,
    Call { headers, body }: Call,
) -> Response {
    let started = Instant::now();
    let (adm, req) = match admit::<GenerateRequest>(st, headers, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    let mut prompt = Prompt::default();
    prompt.text(&req.prompt);
    generate(
        st,
        adm,
        Kind::Generate,
        req.model.as_deref(),
        prompt,
        req.options,
        req.stream,
        started,
    )
    .await
}

/// Shared tail of `/api/chat` and `/api/generate`.
#[allow(clippy::too_many_arguments)] // Plain data from two request shapes.
async fn generate(
    st: &'static AppState,
    adm: Admitted,
    kind: Kind,
    model: Option<&str>,
    prompt: Prompt,
    options: Option<Options>,
    stream: Option<bool>,
    started: Instant,
) -> Response {
    let adm = match check_model(st, adm, model) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let requested = options
        .and_then(|o| o.num_predict)
        .and_then(|n| u64::try_from(n).ok());
    let (n, finish) = generate::completion_len(requested, st.cfg.max_tokens);
    let plan = Plan {
        kind,
        model: st.cfg.served_name.as_str(),
        created_at: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        seed: prompt.seed(),
        prompt_tokens: prompt.tokens(),
        n,
        finish,
        started,
    };
    if stream.unwrap_or(true) {
        let body = stream::paced_body(
            plan.frames(),
            st.cfg.token_delay,
            st.cfg.stall_after,
            adm.guard,
        );
        return stream::streaming_response("application/x-ndjson", body);
    }
    // Cancellation while sleeping is counted by the guard's drop.
    stream::sleep_tokens(st.cfg.token_delay, n).await;
    let text = generate::text(plan.seed, n);
    let response = Json(plan.line(&text, true)).into_response();
    adm.guard.complete();
    response
}

/// `/api/embed` response; typed so `f32`s print in shortest form.
#[derive(Serialize)]
struct EmbedResponse<'a> {
    /// Served model.
    model: &'a str,
    /// One vector per input.
    embeddings: Vec<Vec<f32>>,
    /// Since the request arrived (ns).
    total_duration: u64,
    /// Always 0.
    load_duration: u64,
    /// Input tokens.
    prompt_eval_count: u64,
}

/// `POST /api/embed`.
pub async fn embed(State(st): State<&'static AppState>, Call { headers, body }: Call) -> Response {
    let started = Instant::now();
    let (adm, req) = match admit::<EmbedRequest>(st, headers, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    let adm = match check_model(st, adm, req.model.as_deref()) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let texts: &[String] = match &req.input {
        EmbedInput::One(s) => std::slice::from_ref(s),
        EmbedInput::Many(v) => v,
    };
    let mut prompt_eval_count = 0;
    let embeddings = texts
        .iter()
        .map(|t| {
            let p = generate::item_prompt(Item::Text(t));
            prompt_eval_count += p.tokens();
            generate::embedding(p.seed(), st.cfg.embedding_dim)
        })
        .collect();
    let response = Json(EmbedResponse {
        model: &st.cfg.served_name,
        embeddings,
        total_duration: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
        load_duration: 0,
        prompt_eval_count,
    })
    .into_response();
    adm.guard.complete();
    response
}

/// Legacy `/api/embeddings` response.
#[derive(Serialize)]
struct LegacyEmbedResponse {
    /// The vector.
    embedding: Vec<f32>,
}

/// `POST /api/embeddings` (legacy single-prompt form, still used by some
/// clients).
pub async fn embeddings_legacy(
    State(st): State<&'static AppState>,
    Call { headers, body }: Call,
) -> Response {
    let (adm, req) = match admit::<LegacyEmbedRequest>(st, headers, &body) {
        Ok(parsed) => parsed,
        Err(resp) => return resp,
    };
    let adm = match check_model(st, adm, req.model.as_deref()) {
        Ok(adm) => adm,
        Err(resp) => return resp,
    };
    let p = generate::item_prompt(Item::Text(&req.prompt));
    let response = Json(LegacyEmbedResponse {
        embedding: generate::embedding(p.seed(), st.cfg.embedding_dim),
    })
    .into_response();
    adm.guard.complete();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Renders a plan and parses every NDJSON line.
    fn lines(kind: Kind, n: u64) -> Vec<Value> {
        let plan = Plan {
            kind,
            model: "mock",
            created_at: "2026-01-01T00:00:00Z".into(),
            seed: 3,
            prompt_tokens: 4,
            n,
            finish: "stop",
            started: Instant::now(),
        };
        let frames: Vec<Frame> = plan.frames().collect();
        assert_eq!(frames.len() as u64, n + 1);
        assert!(frames.last().is_some_and(|f| f.last));
        frames
            .iter()
            .map(|f| {
                assert_eq!(f.data.last(), Some(&b'\n'));
                assert_eq!(f.data.iter().filter(|&&b| b == b'\n').count(), 1);
                serde_json::from_slice(&f.data).expect("json line")
            })
            .collect()
    }

    #[test]
    fn chat_ndjson_shape() {
        let l = lines(Kind::Chat, 3);
        let text: String = l[..3]
            .iter()
            .map(|v| {
                assert_eq!(v["done"], false);
                assert!(v.get("eval_count").is_none());
                v["message"]["content"]
                    .as_str()
                    .expect("content")
                    .to_owned()
            })
            .collect();
        assert_eq!(text, generate::text(3, 3));
        let last = &l[3];
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["message"], json!({"role":"assistant","content":""}));
        assert_eq!(last["prompt_eval_count"], 4);
        assert_eq!(last["eval_count"], 3);
        assert!(last["total_duration"].is_u64());
    }

    #[test]
    fn generate_ndjson_shape() {
        let l = lines(Kind::Generate, 2);
        assert!(l[0]["response"].is_string());
        assert!(l[0].get("message").is_none());
        assert_eq!(l[2]["response"], "");
        assert_eq!(l[2]["eval_count"], 2);
    }
}
