//! `llmvisor-mock`: a stand-in for vLLM (OpenAI API) and Ollama that needs
//! no GPU, for integration tests, the quick start and benchmarks.
//!
//! It must never be the bottleneck of a benchmark, hence: a multi-threaded
//! runtime, `TCP_NODELAY` on every connection, atomics instead of locks on
//! the hot path, state leaked to `&'static` (no refcounting), and streams
//! that hand hyper one buffer per event.
//!
//! It deliberately does not use the `llmvisor` library crate, so it builds
//! and behaves the same whatever state the supervisor is in.

// Handlers short-circuit with a ready-made `Response` as the `Err` of their
// helpers; it is moved once, on a cold path, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod audio;
mod generate;
mod messages;
mod ollama;
mod openai;
mod probes;
mod responses;
mod state;
mod stats;
mod stream;
mod tools;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Json;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use clap::Parser;
use tokio::net::TcpListener;

use crate::state::{AppState, Config};

/// `--help` description, including the token-counting rule tests rely on.
const ABOUT: &str = "\
Mock LLM server speaking the OpenAI API the way vLLM does, plus Ollama's API.
Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rerank,
/v1/responses (Responses API in llama-server's shapes: named SSE events
ending with response.completed, which carries usage.input_tokens and
output_tokens), /v1/messages (Anthropic's Messages API: a text block as
llama-server answers, or named SSE events message_start ... message_stop
with usage in message_start and message_delta), /v1/audio/transcriptions and /translations (multipart
uploads read as they come and counted: the answer's \"mock\" holds the
body's length, an FNV-1a 64 hash of its bytes and the model field),
/v1/models, /health, and Ollama's /api/*. It takes vLLM's argv too
(`serve MODEL --host H --port P --served-model-name N`), so a
`kind = \"vllm\"` model can run it.

Output is deterministic: the k-th generated word is picked from a fixed
64-word list by a hash of the prompt and k, so the same request always
gets the same text.

Tool calls (/v1/chat/completions with `tools`): tool_choice \"required\"
calls the first tool, {\"type\":\"function\",\"function\":{\"name\":N}}
calls N (unknown N: 400), \"auto\" or none given calls the first tool whose
name the last message mentions when that message is the user's, \"none\"
never. The answer is finish_reason \"tool_calls\" and one call whose
arguments fill every listed or required property of the tool's schema
with a deterministic value of its type; streamed as OpenAI does (a chunk
with id, type and name, then argument fragments of at most 8 bytes, each
one completion token). Shapes from OpenAI's API reference
(src/bin/llmvisor-mock/tools.rs says why not from llama-server).

Token accounting (usage, Ollama counts):
  prompt_tokens = whitespace-separated words of the prompt. Chat: the text
    of every message's content (a string, or the \"text\" parts of an
    array; other parts are ignored) plus 1 per message for its role.
    Completions/embeddings: the words of each prompt string, or 1 per
    token id when given as integers. Responses: `instructions` as a
    system message, a string `input` as a user message, each input item
    with a role as a message (the text of its parts).
  completion_tokens = n = min(max_completion_tokens | max_tokens |
    max_output_tokens | options.num_predict, --max-tokens), exactly the number of token
    chunks streamed. finish_reason is \"length\" when the request's own
    limit produced n, \"stop\" otherwise.

Test hooks: GET /mock/stats returns counters, the last model request body
(parsed, and as sent in \"last_body\") and its headers; --stall-after and
--hop-header make it misbehave the way hostile or odd backends do.

Limit probes (for the real-systemd tests; results under \"probes\" in
/mock/stats): --report-open says what open(O_RDWR) of each path returns
now (\"ok\" or the errno's name, e.g. ENXIO, EPERM), asked anew on every
stats request; --fork N forks N idle children at start (they die with the
mock) and reports how many it got and the first error (EAGAIN past
TasksMax); --alloc-mb N allocates and touches N MiB, 1 MiB at a time,
--alloc-after after start, printing \"allocated K MiB\" every 8 MiB to
stderr (past MemoryMax the kernel kills it); --busy-threads N spins N
threads for --busy-for at start and reports the CPU seconds they got.";

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "llmvisor-mock", version, about = ABOUT)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to listen on (0 picks a free one; see the printed address).
    #[arg(long)]
    port: u16,

    /// The only model name accepted (and listed). Also as vLLM spells it
    /// (`--served-model-name`).
    #[arg(
        long,
        alias = "served-model-name",
        default_value = "mock",
        value_name = "NAME"
    )]
    served_name: String,

    /// `serve MODEL`, as `vllm serve` is called: accepted and ignored, so a
    /// `kind = "vllm"` model can run the mock (`executable = llmvisor-mock`).
    #[arg(value_name = "VLLM_SERVE", hide = true)]
    vllm_serve: Vec<String>,

    /// Answer 503 on /health and the model endpoints until this long after
    /// start (e.g. 2s, 500ms), like a server loading weights.
    #[arg(long, default_value = "0s", value_name = "DUR", value_parser = humantime::parse_duration)]
    startup_delay: Duration,

    /// Time between generated tokens; non-streamed answers wait n times this.
    #[arg(long, default_value = "0s", value_name = "DUR", value_parser = humantime::parse_duration)]
    token_delay: Duration,

    /// Completion length: requests get min(their own limit, N) tokens.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_tokens: u64,

    /// Fraction (0.0 to 1.0) of model requests answered with HTTP 500,
    /// spread deterministically: request i fails when floor((i+1)F) > floor(iF).
    #[arg(long, default_value_t = 0.0, value_name = "F", value_parser = parse_fraction)]
    fail_rate: f64,

    /// Exit with status 1, without answering, when the N-th model request
    /// (completion or embedding) arrives.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    crash_after: Option<u64>,

    /// Like --crash-after, but first print a CUDA out-of-memory error to
    /// stderr.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    oom_after: Option<u64>,

    /// Length of embedding vectors.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    embedding_dim: u32,

    /// Context length reported as max_model_len in /v1/models.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    context_length: u64,

    /// How long `POST /wake_up` takes (vLLM sleep mode: `POST /sleep?level=1`,
    /// `POST /wake_up`, `GET /is_sleeping`; model requests get 503 while asleep).
    #[arg(long, default_value = "50ms", value_name = "DUR", value_parser = humantime::parse_duration)]
    wake_delay: Duration,

    /// Streams stop sending after N token chunks and hold the connection
    /// open without another byte: a backend that hangs mid-stream.
    #[arg(long, value_name = "N")]
    stall_after: Option<u64>,

    /// Send `Connection: NAME` and `NAME: 1` with every response: a
    /// hop-by-hop header (named in `Connection`) that a proxy must not pass
    /// on.
    #[arg(long, value_name = "NAME", value_parser = parse_header_name)]
    hop_header: Option<http::HeaderName>,

    /// Paths (comma-separated) to open read-write on every `GET /mock/stats`,
    /// reporting "ok" or the errno's name per path under `probes.open`.
    #[arg(long, value_name = "PATHS", value_delimiter = ',')]
    report_open: Vec<std::path::PathBuf>,

    /// Fork N idle child processes at start (they die with the mock); how
    /// many it got and the first error go to `probes.fork`.
    #[arg(long, value_name = "N")]
    fork: Option<u32>,

    /// Allocate and touch N MiB, 1 MiB at a time, --alloc-after after start,
    /// logging "allocated K MiB" to stderr every 8 MiB; then hold it.
    #[arg(long, value_name = "N")]
    alloc_mb: Option<u64>,

    /// Delay before --alloc-mb starts.
    #[arg(long, default_value = "0s", value_name = "DUR", value_parser = humantime::parse_duration)]
    alloc_after: Duration,

    /// Spin N threads at start for --busy-for; the CPU seconds they got and
    /// the wall time go to `probes.busy`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    busy_threads: u32,

    /// How long --busy-threads spin.
    #[arg(long, default_value = "2s", value_name = "DUR", value_parser = humantime::parse_duration)]
    busy_for: Duration,
}

/// Parses a header name (lower case, as HTTP/1.1 tokens go).
fn parse_header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::try_from(s.to_ascii_lowercase()).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses a fraction in `0.0..=1.0`.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not between 0.0 and 1.0"))
    }
}

impl Args {
    /// The behaviour settings.
    fn config(&self) -> Config {
        Config {
            served_name: self.served_name.clone(),
            token_delay: self.token_delay,
            max_tokens: self.max_tokens,
            fail_rate: self.fail_rate,
            crash_after: self.crash_after,
            oom_after: self.oom_after,
            embedding_dim: self.embedding_dim as usize,
            context_length: self.context_length,
            wake_delay: self.wake_delay,
            stall_after: self.stall_after,
        }
    }

    /// The limit probes.
    fn probes(&self) -> probes::Probes {
        probes::Probes {
            report_open: self.report_open.clone(),
            fork: self.fork,
            alloc_mb: self.alloc_mb,
            alloc_after: self.alloc_after,
            busy_threads: self.busy_threads,
            busy_for: self.busy_for,
        }
    }
}

/// The probes of this run (set once at start-up).
static PROBES: std::sync::OnceLock<probes::Probes> = std::sync::OnceLock::new();

/// All routes.
fn router(st: &'static AppState) -> Router {
    Router::new()
        .route("/health", get(openai::health))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/rerank", post(openai::rerank))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/audio/transcriptions", post(audio::transcription))
        .route("/v1/audio/translations", post(audio::transcription))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate_handler))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings_legacy))
        .route("/mock/stats", get(mock_stats))
        .route("/sleep", post(state::sleep))
        .route("/wake_up", post(state::wake_up))
        .route("/is_sleeping", get(state::is_sleeping))
        // Long prompts are legitimate test input; axum's 2 MiB default is
        // below what a real engine accepts.
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(st)
}

/// `GET /mock/stats`.
async fn mock_stats(State(st): State<&'static AppState>) -> Json<serde_json::Value> {
    let mut stats = st.stats.snapshot();
    if let Some(p) = PROBES.get() {
        stats["probes"] = p.snapshot();
    }
    Json(stats)
}

/// Resolves on SIGTERM or SIGINT, and arms a hard exit one second later so
/// that open streams cannot hold up shutdown.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::process::exit(0);
    });
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let process_start = Instant::now();
    let args = Args::parse();
    // Logs go to stderr: stdout carries only the "listening" line that
    // callers parse.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let ready = args.startup_delay.is_zero();
    let st: &'static AppState = Box::leak(Box::new(AppState::new(args.config(), ready)));
    if !ready {
        let until = tokio::time::Instant::from_std(process_start + args.startup_delay);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            st.set_ready();
        });
    }

    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        // A caller that stopped reading stdout is no reason to stop serving.
        let _ = writeln!(out, "llmvisor-mock listening on http://{addr}");
        let _ = out.flush();
    }
    PROBES.get_or_init(|| args.probes()).start();

    let listener = listener.tap_io(|tcp| {
        // Token streams are many tiny writes; Nagle would batch them.
        let _ = tcp.set_nodelay(true);
    });
    let mut app = router(st);
    if let Some(name) = args.hop_header.clone() {
        app = app.layer(axum::middleware::map_response(
            move |mut r: axum::response::Response| {
                let name = name.clone();
                async move {
                    let h = r.headers_mut();
                    h.insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_str(name.as_str())
                            .unwrap_or(http::HeaderValue::from_static("close")),
                    );
                    h.insert(name, http::HeaderValue::from_static("1"));
                    r
                }
            },
        ));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! End-to-end tests over a real socket with a minimal HTTP/1.1 client
    //! (no HTTP client crate is available to the binary).

    use super::*;
    use serde_json::{Value, json};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The defaults of the command line.
    fn config() -> Config {
        Config {
            served_name: "mock".into(),
            token_delay: Duration::ZERO,
            max_tokens: 16,
            fail_rate: 0.0,
            crash_after: None,
            oom_after: None,
            embedding_dim: 8,
            context_length: 4096,
            wake_delay: Duration::from_millis(10),
            stall_after: None,
        }
    }

    /// Serves a fresh state on an ephemeral port.
    async fn start(cfg: Config, ready: bool) -> (SocketAddr, &'static AppState) {
        let st: &'static AppState = Box::leak(Box::new(AppState::new(cfg, ready)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router(st)).await;
        });
        (addr, st)
    }

    /// A `connection: close` HTTP/1.1 request.
    fn encode(method: &str, path: &str, body: Option<&str>) -> String {
        let body = body.unwrap_or("");
        format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nx-probe: yes\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Undoes chunked transfer encoding.
    fn dechunk(mut raw: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = raw.split_once("\r\n") {
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if size == 0 {
                break;
            }
            out.push_str(&rest[..size]);
            raw = &rest[size + 2..];
        }
        out
    }

    /// Sends one request; returns (status, lower-cased head, decoded body).
    async fn http(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        sock.write_all(encode(method, path, body).as_bytes())
            .await
            .expect("write");
        let mut raw = String::new();
        sock.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head");
        let head = head.to_ascii_lowercase();
        let status = head[9..12].parse().expect("status");
        let body = if head.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, head, body)
    }

    /// `GET /mock/stats` as JSON.
    async fn stats(addr: SocketAddr) -> Value {
        let (_, _, body) = http(addr, "GET", "/mock/stats", None).await;
        serde_json::from_str(&body).expect("stats json")
    }

    #[tokio::test]
    async fn chat_non_streaming_and_stats() {
        let (addr, _) = start(config(), true).await;
        let req = r#"{"model":"mock","messages":[{"role":"user","content":"hi there"}],"max_tokens":4,"temperature":0.3}"#;
        let (status, head, body) = http(addr, "POST", "/v1/chat/completions", Some(req)).await;
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("content-type: application/json"));
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-mock-0");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens":3,"completion_tokens":4,"total_tokens":7})
        );
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert_eq!(text.split(' ').count(), 4);
        // Same request, same words.
        let (_, _, again) = http(addr, "POST", "/v1/chat/completions", Some(req)).await;
        let again: Value = serde_json::from_str(&again).expect("json");
        assert_eq!(again["choices"][0]["message"]["content"], text);

        let s = stats(addr).await;
        assert_eq!(s["requests"], 2);
        assert_eq!(s["completed"], 2);
        assert_eq!(s["in_flight"], 0);
        assert_eq!(s["cancelled"], 0);
        assert_eq!(s["last_request"]["max_tokens"], 4);
        assert_eq!(s["last_headers"]["x-probe"], "yes");
        assert_eq!(s["pid"], std::process::id());
    }

    #[tokio::test]
    async fn chat_streaming_over_http() {
        let (addr, _) = start(config(), true).await;
        let req = r#"{"messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let (status, head, body) = http(addr, "POST", "/v1/chat/completions", Some(req)).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/event-stream"));
        let events: Vec<&str> = body.split_terminator("\n\n").collect();
        // role + 16 tokens + finish + usage + [DONE]
        assert_eq!(events.len(), 20, "{body}");
        assert_eq!(events[19], "data: [DONE]");
        let usage: Value = serde_json::from_str(&events[18]["data: ".len()..]).expect("json");
        assert_eq!(usage["usage"]["completion_tokens"], 16);
        assert_eq!(usage["usage"]["prompt_tokens"], 2);
        let finish: Value = serde_json::from_str(&events[17]["data: ".len()..]).expect("json");
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(stats(addr).await["completed"], 1);
    }

    #[tokio::test]
    async fn errors_are_openai_shaped() {
        let (addr, _) = start(config(), true).await;
        let (status, _, body) = http(addr, "POST", "/v1/chat/completions", Some("{nope")).await;
        assert_eq!(status, 400);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error");

        let req = r#"{"model":"other","prompt":"a"}"#;
        let (status, _, body) = http(addr, "POST", "/v1/completions", Some(req)).await;
        assert_eq!(status, 404);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"]["code"], "model_not_found");

        let req = r#"{"prompt":"a","max_tokens":0}"#;
        let (status, _, _) = http(addr, "POST", "/v1/completions", Some(req)).await;
        assert_eq!(status, 400);

        let (status, _, body) = http(
            addr,
            "POST",
            "/api/chat",
            Some(r#"{"model":"x","messages":[]}"#),
        )
        .await;
        assert_eq!(status, 404);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert!(v["error"].is_string());
    }

    #[tokio::test]
    async fn startup_gate() {
        let (addr, st) = start(config(), false).await;
        assert_eq!(http(addr, "GET", "/health", None).await.0, 503);
        assert_eq!(http(addr, "GET", "/v1/models", None).await.0, 503);
        assert_eq!(http(addr, "GET", "/api/version", None).await.0, 503);
        let req = r#"{"messages":[]}"#;
        assert_eq!(
            http(addr, "POST", "/v1/chat/completions", Some(req))
                .await
                .0,
            503
        );
        st.set_ready();
        let (status, _, body) = http(addr, "GET", "/health", None).await;
        assert_eq!((status, body.as_str()), (200, ""));
        let (_, _, body) = http(addr, "GET", "/v1/models", None).await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["data"][0]["id"], "mock");
        assert_eq!(v["data"][0]["max_model_len"], 4096);
        assert_eq!(
            http(addr, "POST", "/v1/chat/completions", Some(req))
                .await
                .0,
            200
        );
    }

    #[tokio::test]
    async fn fail_rate_alternates() {
        let (addr, _) = start(
            Config {
                fail_rate: 0.5,
                ..config()
            },
            true,
        )
        .await;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let req = r#"{"input":"a b"}"#;
            statuses.push(http(addr, "POST", "/v1/embeddings", Some(req)).await.0);
        }
        assert_eq!(statuses, [200, 500, 200, 500]);
    }

    #[tokio::test]
    async fn embeddings_shapes() {
        let (addr, _) = start(config(), true).await;
        let req = r#"{"input":["one two","three"],"model":"mock"}"#;
        let (_, _, body) = http(addr, "POST", "/v1/embeddings", Some(req)).await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(8));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        let req = r#"{"input":"x","encoding_format":"base64"}"#;
        let (_, _, body) = http(addr, "POST", "/v1/embeddings", Some(req)).await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["data"][0]["embedding"].as_str().map(str::len), Some(44));
        let (_, _, body) = http(
            addr,
            "POST",
            "/api/embed",
            Some(r#"{"model":"mock","input":["a","b c"]}"#),
        )
        .await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["embeddings"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["prompt_eval_count"], 3);
    }

    #[tokio::test]
    async fn ollama_streams_by_default() {
        let (addr, _) = start(config(), true).await;
        let req = r#"{"model":"mock:latest","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":3}}"#;
        let (status, head, body) = http(addr, "POST", "/api/chat", Some(req)).await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/x-ndjson"));
        let lines: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3]["done"], true);
        assert_eq!(lines[3]["done_reason"], "length");
        assert_eq!(lines[3]["eval_count"], 3);
        assert_eq!(lines[3]["prompt_eval_count"], 2);

        let req = r#"{"prompt":"hi","stream":false}"#;
        let (_, _, body) = http(addr, "POST", "/api/generate", Some(req)).await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["done"], true);
        assert_eq!(v["eval_count"], 16);
        assert_eq!(
            v["response"].as_str().map(|s| s.split(' ').count()),
            Some(16)
        );
    }

    #[tokio::test]
    async fn disconnect_mid_stream_counts_as_cancelled() {
        let cfg = Config {
            token_delay: Duration::from_millis(50),
            ..config()
        };
        let (addr, _) = start(cfg, true).await;
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let req = r#"{"messages":[{"role":"user","content":"x"}],"stream":true}"#;
        sock.write_all(encode("POST", "/v1/chat/completions", Some(req)).as_bytes())
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = sock.read(&mut buf).await.expect("read");
        assert!(n > 0);
        assert_eq!(stats(addr).await["in_flight"], 1);
        drop(sock);
        for _ in 0..100 {
            let s = stats(addr).await;
            if s["cancelled"] == 1 {
                assert_eq!(s["in_flight"], 0);
                assert_eq!(s["completed"], 0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("stream drop was not counted: {}", stats(addr).await);
    }

    #[tokio::test]
    async fn disconnect_while_waiting_counts_as_cancelled() {
        let cfg = Config {
            token_delay: Duration::from_millis(100),
            ..config()
        };
        let (addr, _) = start(cfg, true).await;
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let req = r#"{"prompt":"x"}"#;
        sock.write_all(encode("POST", "/v1/completions", Some(req)).as_bytes())
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(sock);
        for _ in 0..100 {
            if stats(addr).await["cancelled"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("handler drop was not counted: {}", stats(addr).await);
    }

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from([
            "llmvisor-mock",
            "--port",
            "0",
            "--token-delay",
            "5ms",
            "--fail-rate",
            "0.25",
            "--crash-after",
            "3",
        ])
        .expect("parse");
        assert_eq!(a.token_delay, Duration::from_millis(5));
        assert_eq!(a.crash_after, Some(3));
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.max_tokens, 16);
        assert!(
            Args::try_parse_from(["llmvisor-mock", "--port", "0", "--fail-rate", "1.5"]).is_err()
        );
        assert!(Args::try_parse_from(["llmvisor-mock"]).is_err());
        let a = Args::try_parse_from([
            "llmvisor-mock",
            "--port",
            "0",
            "--report-open",
            "/dev/nvidia0,/dev/nvidiactl",
            "--fork",
            "64",
            "--alloc-mb",
            "256",
            "--alloc-after",
            "3s",
            "--busy-threads",
            "2",
        ])
        .expect("parse");
        let p = a.probes();
        assert_eq!(p.report_open.len(), 2);
        assert_eq!((p.fork, p.alloc_mb), (Some(64), Some(256)));
        assert_eq!(p.alloc_after, Duration::from_secs(3));
        assert_eq!((p.busy_threads, p.busy_for), (2, Duration::from_secs(2)));
    }
}
