//! OpenTelemetry traces (`[telemetry]`, src/telemetry/trace.rs) through the real
//! binary: a recording OTLP/HTTP receiver of our own decodes what llmvisor exports
//! with the protocol's own protobuf types (`opentelemetry-proto`, generated from the
//! OTLP `.proto` files the Collector, Tempo and Jaeger accept; llmvisor's encoder,
//! src/telemetry/otlp.rs, is its own, so this checks it against them), and checks the spans' parent/child structure, their
//! GenAI attributes, the `traceparent` the backend (the mock, which records every
//! header) received, that no prompt text leaves without `capture_content`, and that
//! a collector that never answers costs requests nothing (spans dropped, counted).

mod common;
#[macro_use]
mod llama_fixture;

use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use common::{Llmvisor, eventually, mock_model};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;

/// Everything the receiver got: (resource attributes, span) pairs.
type Got = Arc<Mutex<Vec<(Vec<(String, String)>, Span)>>>;

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(&kv.value))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The headers of every export the receiver got.
type Heads = Arc<Mutex<Vec<axum::http::HeaderMap>>>;

/// A recording OTLP/HTTP receiver's app: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered as a collector does.
fn receiver_app() -> (axum::Router, Got, Heads) {
    async fn traces(
        State((got, heads)): State<(Got, Heads)>,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> impl axum::response::IntoResponse {
        let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
        heads.lock().unwrap().push(headers);
        let mut g = got.lock().unwrap();
        for rs in req.resource_spans {
            let res: Vec<(String, String)> = rs
                .resource
                .map(|r| {
                    r.attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect()
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    g.push((res.clone(), s));
                }
            }
        }
        (
            [("content-type", "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    }
    let got = Got::default();
    let heads = Heads::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state((got.clone(), heads.clone()));
    (app, got, heads)
}

/// A recording OTLP/HTTP receiver on a free port.
async fn receiver() -> (String, Got) {
    let (app, got, _) = receiver_app();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

/// Run `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &str) {
    let out = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(out.status.success(), "openssl {args}: {out:?}");
}

/// The same receiver behind TLS with a certificate for 127.0.0.1 from a CA of its
/// own, made with the `openssl` command line as a user's private CA would be:
/// its URL, and `ca.pem` (the CA) in `dir`.
async fn tls_receiver(dir: &std::path::Path) -> (String, Got, Heads) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(
        dir,
        &format!("req -x509 {ec} -days 2 -subj /CN=llmvisor-test-CA -keyout ca.key -out ca.pem"),
    );
    openssl(
        dir,
        &format!("req {ec} -subj /CN=127.0.0.1 -keyout srv.key -out srv.csr"),
    );
    std::fs::write(
        dir.join("srv.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile srv.ext -out srv.pem",
    );
    let certs = CertificateDer::pem_file_iter(dir.join("srv.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (app, got, heads) = receiver_app();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the CA ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                .await;
            });
        }
    });
    (url, got, heads)
}

/// The spans of one trace, once `n` of them have arrived.
async fn trace_of(got: &Got, trace_id: &str, n: usize) -> Vec<Span> {
    eventually(Duration::from_secs(15), async || {
        let g = got.lock().unwrap();
        let spans: Vec<Span> = g
            .iter()
            .map(|(_, s)| s.clone())
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect();
        if spans.len() >= n {
            Ok(spans)
        } else {
            Err(format!(
                "{} span(s) of {trace_id}: {:?}",
                spans.len(),
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            ))
        }
    })
    .await
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name:?} in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const SECRET: &str = "the secret prompt text";

async fn chat(lv: &Llmvisor, model: &str, traceparent: Option<&str>) -> reqwest::Response {
    let mut req = lv.client.post(lv.url("/v1/chat/completions")).json(&json!({
        "model": model, "stream": true, "max_tokens": 3,
        "messages": [{"role": "user", "content": SECRET}],
    }));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_request_is_one_trace_of_its_phases_with_genai_attributes() {
    let (url, got) = receiver().await;
    let model = mock_model("m", &["--startup-delay", "300ms"], "");
    let port: u16 = model
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap()
        .parse()
        .unwrap();
    let lv = Llmvisor::start(
        "",
        &format!("[telemetry]\notlp_endpoint = \"{url}\"\n\n{model}"),
    )
    .await;

    // A cold start, under the client's own trace.
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let resp = chat(&lv, "m", Some(&tp)).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    // The request, its cold start, the upstream attempt and its first token; no
    // queue wait: a slot was free once the model was up (tested below).
    let spans = trace_of(&got, TRACE, 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");

    // The request span and the upstream span are both `chat m` (GenAI spans are
    // named `<operation> <model>`): told apart by their kind.
    let root = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("the request (server) span");
    assert_eq!(
        hex(&root.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "m"),
        ("gen_ai.response.model", "m"),
        ("llmvisor.route", "m"),
        ("llmvisor.client", "anonymous"),
        ("llmvisor.target", "m"),
        ("llmvisor.stream", "true"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(attr(root, k).as_deref(), Some(v), "{k} of {root:#?}");
    }
    let tokens = |s: &Span, k: &str| attr(s, k).and_then(|v| v.parse::<u64>().ok());
    assert!(
        tokens(root, "gen_ai.usage.input_tokens").is_some_and(|n| n > 0),
        "{root:#?}"
    );
    assert_eq!(
        tokens(root, "gen_ai.usage.output_tokens"),
        Some(3),
        "{root:#?}"
    );
    assert!(attr(root, "llmvisor.request_id").is_some());

    let root_id = hex(&root.span_id);
    let cold = named(&spans, "cold start");
    let up = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("an upstream (client) span");
    let first = named(&spans, "first token");
    for s in [cold, up] {
        assert_eq!(
            hex(&s.parent_span_id),
            root_id,
            "{} under the request",
            s.name
        );
        assert!(
            s.start_time_unix_nano >= root.start_time_unix_nano
                && s.end_time_unix_nano <= root.end_time_unix_nano,
            "{} within the request",
            s.name
        );
    }
    assert_eq!(
        hex(&first.parent_span_id),
        hex(&up.span_id),
        "first token under upstream"
    );
    assert_eq!(cold.kind, SpanKind::Internal as i32);
    // The mock waited 300 ms before it was healthy.
    assert!(
        cold.end_time_unix_nano - cold.start_time_unix_nano >= 250_000_000,
        "{cold:#?}"
    );
    assert!(cold.end_time_unix_nano <= up.start_time_unix_nano + 1_000_000);
    assert!(first.end_time_unix_nano <= up.end_time_unix_nano);
    for (k, v) in [
        ("gen_ai.operation.name", "chat".to_string()),
        ("gen_ai.request.model", "m".to_string()),
        ("gen_ai.provider.name", "command".to_string()),
        ("server.address", "127.0.0.1".to_string()),
        ("server.port", port.to_string()),
        ("http.response.status_code", "200".to_string()),
    ] {
        assert_eq!(attr(up, k), Some(v), "{k} of {up:#?}");
    }
    assert_eq!(tokens(up, "gen_ai.usage.output_tokens"), Some(3));

    // The backend was told its caller: the upstream span, in the client's trace.
    let stats = lv.mock_stats("m").await;
    assert_eq!(
        stats["last_headers"]["traceparent"],
        format!("00-{TRACE}-{}-01", hex(&up.span_id)),
        "{stats}"
    );

    // No prompt text in any span without capture_content.
    let everything = format!("{:?}", got.lock().unwrap());
    assert!(!everything.contains(SECRET));
    // The resource names the service. (The guard must not outlive the line: the
    // receiver runs on this test's thread.)
    let res = got.lock().unwrap()[0].0.clone();
    assert!(
        res.contains(&("service.name".into(), "llmvisor".into())),
        "{res:?}"
    );

    // A refused request is a span too, with its status and error type.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let resp = chat(
        &lv,
        "nope",
        Some(&format!("00-{other}-b7ad6b7169203331-01")),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let spans = trace_of(&got, other, 1).await;
    let refused = &spans[0];
    assert_eq!(refused.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(refused, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert_eq!(
        attr(refused, "error.type").as_deref(),
        Some("model_not_found")
    );

    // Without a traceparent: a trace of its own; the model is up, so no cold start.
    let before = got.lock().unwrap().len();
    let resp = chat(&lv, "m", None).await;
    resp.text().await.unwrap();
    let names = eventually(Duration::from_secs(15), async || {
        let g = got.lock().unwrap();
        let new: Vec<_> = g[before..].iter().map(|(_, s)| s.clone()).collect();
        match new.iter().find(|s| s.kind == SpanKind::Server as i32) {
            Some(root) if new.len() >= 3 => Ok((root.clone(), new)),
            _ => Err(format!("{} new span(s)", new.len())),
        }
    })
    .await;
    let (root, new) = names;
    assert!(root.parent_span_id.is_empty(), "a root span");
    let mut got_names: Vec<_> = new.iter().map(|s| s.name.as_str()).collect();
    got_names.sort();
    assert_eq!(got_names, ["chat m", "chat m", "first token"]);
    assert_eq!(lv.metric("llmvisor_trace_spans_dropped_total").await, 0.0);
}

/// `queue wait` is there when the request waited for a slot: one slot, held by a
/// slow stream; a second request queues behind it.
#[tokio::test]
async fn a_request_that_waits_for_a_slot_has_a_queue_wait_span() {
    let (url, got) = receiver().await;
    let model = mock_model("m", &["--token-delay", "100ms"], "max_concurrent = 1");
    let lv = Llmvisor::start(
        "",
        &format!("[telemetry]\notlp_endpoint = \"{url}\"\n\n{model}"),
    )
    .await;
    // Started (a trace of its own), so the traced request waits for the slot only.
    chat(&lv, "m", None).await.text().await.unwrap();
    // Holds the one slot for about 300 ms (3 tokens, 100 ms apart).
    let holder = chat(&lv, "m", None).await;
    assert_eq!(holder.status(), 200);
    let waiter = {
        let lv = &lv;
        async move {
            let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
            chat(lv, "m", Some(&tp)).await.text().await.unwrap()
        }
    };
    let (_, _) = tokio::join!(holder.text(), waiter);
    let spans = trace_of(&got, TRACE, 4).await;
    let root = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("the request (server) span");
    let queue = named(&spans, "queue wait");
    let up = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("an upstream (client) span");
    assert_eq!(queue.parent_span_id, root.span_id, "under the request");
    assert_eq!(attr(queue, "llmvisor.model").as_deref(), Some("m"));
    // It waited for most of the holder's 300 ms, and went upstream after.
    assert!(
        queue.end_time_unix_nano - queue.start_time_unix_nano >= 100_000_000,
        "{queue:#?}"
    );
    assert!(queue.end_time_unix_nano <= up.start_time_unix_nano + 1_000_000);
    assert!(spans.iter().all(|s| s.name != "cold start"), "{spans:#?}");
}

#[tokio::test]
async fn prompt_text_is_on_the_span_only_when_asked_for() {
    let (url, got) = receiver().await;
    let lv = Llmvisor::start(
        "",
        &format!(
            "[telemetry]\notlp_endpoint = \"{url}/v1/traces\"\ncapture_content = true\nservice_name = \"gpu-box\"\n\n{}",
            mock_model("m", &[], "")
        ),
    )
    .await;
    let resp = chat(&lv, "m", Some(&format!("00-{TRACE}-{CLIENT_SPAN}-01"))).await;
    resp.text().await.unwrap();
    let spans = trace_of(&got, TRACE, 4).await;
    let root = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    let messages = attr(root, "gen_ai.input.messages").expect("the messages");
    let v: serde_json::Value = serde_json::from_str(&messages).unwrap();
    assert_eq!(v[0]["content"], SECRET);
    let res = got.lock().unwrap()[0].0.clone();
    assert!(
        res.contains(&("service.name".into(), "gpu-box".into())),
        "{res:?}"
    );

    // A client's unsampled trace is honoured: nothing is recorded for it.
    let before = lv.metric("llmvisor_trace_spans_exported_total").await;
    let quiet = "11111111111111111111111111111111";
    let resp = chat(&lv, "m", Some(&format!("00-{quiet}-{CLIENT_SPAN}-00"))).await;
    resp.text().await.unwrap();
    // A sampled request after it: once its spans are in, the unsampled one's
    // would have been too.
    let resp = chat(&lv, "m", Some(&format!("00-{TRACE}-{CLIENT_SPAN}-01"))).await;
    resp.text().await.unwrap();
    // 4 spans of the first (with its cold start), 3 of this one.
    trace_of(&got, TRACE, 7).await;
    assert!(
        !got.lock()
            .unwrap()
            .iter()
            .any(|(_, s)| hex(&s.trace_id) == quiet),
        "spans of an unsampled trace"
    );
    assert!(lv.metric("llmvisor_trace_spans_exported_total").await >= before + 3.0);
    // The backend still learns the caller's (unsampled) trace.
    let tp = lv.mock_stats("m").await["last_headers"]["traceparent"].clone();
    assert!(
        tp.as_str()
            .is_some_and(|t| t.starts_with(&format!("00-{TRACE}-"))),
        "{tp}"
    );
}

#[tokio::test]
async fn with_tracing_off_the_clients_traceparent_reaches_the_backend_as_it_came() {
    let lv = Llmvisor::start("", &mock_model("m", &[], "")).await;
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let resp = chat(&lv, "m", Some(&tp)).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    assert_eq!(lv.mock_stats("m").await["last_headers"]["traceparent"], tp);
    assert_eq!(lv.metric("llmvisor_trace_spans_exported_total").await, 0.0);
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_requests_nothing() {
    // Accepts connections (the kernel's backlog) and never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let lv = Llmvisor::start(
        "",
        &format!(
            "[telemetry]\notlp_endpoint = \"{url}\"\nqueue = 8\n\n{}",
            mock_model("m", &[], "")
        ),
    )
    .await;
    // The exporter takes up to 512 spans into its first export, which never ends;
    // past those and the 8 the queue holds, spans are dropped. Requests go on
    // until the drops show, at most 1000 of them.
    let mut sent = 0;
    let mut dropped = 0.0;
    while sent < 1000 && dropped == 0.0 {
        for _ in 0..50 {
            let resp = chat(&lv, "m", None).await;
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap();
        }
        sent += 50;
        dropped = lv.metric("llmvisor_trace_spans_dropped_total").await;
    }
    assert!(
        dropped > 0.0,
        "nothing dropped after {sent} requests:\n{}",
        lv.log()
    );
    assert_eq!(lv.metric("llmvisor_trace_spans_exported_total").await, 0.0);
    eprintln!("{sent} requests answered while the collector hung; {dropped} spans dropped");
    drop(silent);
}

/// An `https://` collector with a certificate from a private CA: with
/// `[telemetry] ca_file` naming that CA the spans arrive, with the configured
/// `headers` and `headers_file`'s on every export, and the secret header's value
/// never in llmvisor's log; without it (Mozilla's roots) the certificate is
/// refused, the spans are counted as failed and the log says why. Checked against
/// rustls's own server (tokio-rustls) and certificates made by `openssl`.
#[tokio::test]
async fn an_https_collector_gets_spans_and_headers_only_when_its_ca_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (url, got, heads) = tls_receiver(dir.path()).await;
    let secret = "Basic bGx tdmlzb3I6c2VjcmV0";
    std::fs::write(
        dir.path().join("otlp-headers"),
        format!("# the collector's key\nAuthorization: {secret}\n"),
    )
    .unwrap();
    let telemetry = |ca: bool| {
        format!(
            "[telemetry]\notlp_endpoint = \"{url}\"\nheaders = {{ \"X-Scope-OrgID\" = \"homelab\" }}\nheaders_file = {:?}\n{}\n{}",
            dir.path().join("otlp-headers").display().to_string(),
            if ca {
                format!(
                    "ca_file = {:?}\n",
                    dir.path().join("ca.pem").display().to_string()
                )
            } else {
                String::new()
            },
            mock_model("m", &[], "")
        )
    };
    let lv = Llmvisor::start("", &telemetry(true)).await;
    let resp = chat(&lv, "m", Some(&format!("00-{TRACE}-{CLIENT_SPAN}-01"))).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let spans = trace_of(&got, TRACE, 3).await;
    named(&spans, "chat m");
    let h = heads.lock().unwrap()[0].clone();
    assert_eq!(h["x-scope-orgid"], "homelab");
    assert_eq!(h["authorization"], secret);
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert!(
        !lv.log().contains("bGx"),
        "the secret in the log:\n{}",
        lv.log()
    );
    drop(lv);

    let exports = heads.lock().unwrap().len();
    let lv = Llmvisor::start("", &telemetry(false)).await;
    let resp = chat(&lv, "m", None).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let failed = eventually(Duration::from_secs(15), async || {
        match lv.metric("llmvisor_trace_spans_failed_total").await {
            n if n > 0.0 => Ok(n),
            _ => Err(lv.log()),
        }
    })
    .await;
    assert!(failed >= 2.0, "{failed}");
    assert_eq!(lv.metric("llmvisor_trace_spans_exported_total").await, 0.0);
    assert_eq!(
        heads.lock().unwrap().len(),
        exports,
        "an export got through"
    );
    let log = lv.log();
    assert!(
        log.contains("cannot export") && log.contains("UnknownIssuer"),
        "{log}"
    );
    assert!(!log.contains("bGx"), "the secret in the log:\n{log}");
}

/// Phoenix (`arize-phoenix`, scripts/phoenix-fixture.sh), the trace UI seed 001
/// sends its spans to, run for real: it reads llmvisor's export with its own OTLP
/// decoder, and its REST API gives back each trace as llmvisor sent it: the client's
/// parent, the request span over its `upstream` span over `first token`, the
/// children inside their parents' times, the GenAI attributes, and the upstream's
/// 4xx an error on the CLIENT span only (OpenTelemetry's HTTP rule). This is the
/// check of the hand-written encoder (src/telemetry/otlp.rs) against a real backend.
#[tokio::test]
async fn phoenix_shows_each_trace_as_llmvisor_sent_it() {
    let phoenix = require_phoenix!();
    let dir = tempfile::tempdir().unwrap();
    let (port, grpc) = (common::free_port(), common::free_port());
    let log = std::fs::File::create(dir.path().join("phoenix.log")).unwrap();
    /// Phoenix in a process group of its own, killed whole when the test ends
    /// (its server may start workers of its own).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
    let mut phoenix = Kill(
        std::process::Command::new(&phoenix)
            .arg("serve")
            .env("PHOENIX_WORKING_DIR", dir.path())
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc.to_string())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .process_group(0)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("phoenix"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let phoenix_log =
        || std::fs::read_to_string(dir.path().join("phoenix.log")).unwrap_or_default();
    // Python, a database migration and the UI's assets: 30-60 s on 2 busy cores.
    eventually(Duration::from_secs(240), async || {
        if let Ok(Some(status)) = phoenix.0.try_wait() {
            panic!("phoenix exited ({status}):\n{}", phoenix_log());
        }
        match http.get(format!("{base}/v1/projects")).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            _ => Err(phoenix_log()),
        }
    })
    .await;

    // `bad` is a mock that serves another name: the backend answers 404.
    let models = format!(
        "{}\n[models.bad]\nkind = \"command\"\ncommand = [\"{}\", \"--port\", \"{{port}}\", \"--served-name\", \"other\"]\nport = {}\n",
        mock_model("m", &[], ""),
        common::MOCK,
        // A port of its own (held for this process), as mock_model's: without
        // one it got llmvisor's default, which other tests' backends use too.
        common::free_port()
    );
    let lv = Llmvisor::start(
        "",
        &format!("[telemetry]\notlp_endpoint = \"{base}\"\n\n{models}"),
    )
    .await;
    let resp = chat(&lv, "m", Some(&format!("00-{TRACE}-{CLIENT_SPAN}-01"))).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let bad_trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = chat(
        &lv,
        "bad",
        Some(&format!("00-{bad_trace}-{CLIENT_SPAN}-01")),
    )
    .await;
    // (The body in the message: once, in a full run on 2 loaded cores, this was
    // a 503, not understood yet.)
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 404, "{text}");

    let spans = |trace: &'static str, n: usize| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            eventually(Duration::from_secs(30), async || {
                let all: serde_json::Value = http
                    .get(format!("{base}/v1/projects/default/spans?limit=1000"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let of: Vec<serde_json::Value> = all["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["context"]["trace_id"] == trace)
                    .cloned()
                    .collect();
                if of.len() >= n {
                    Ok(of)
                } else {
                    Err(format!("{} span(s) of {trace}: {all}", of.len()))
                }
            })
            .await
        }
    };
    let by = |spans: &[serde_json::Value], parent: &str, name: &str| -> serde_json::Value {
        let of: Vec<_> = spans
            .iter()
            .filter(|s| s["parent_id"] == parent && s["name"] == name)
            .collect();
        assert_eq!(of.len(), 1, "{name:?} under {parent}: {spans:#?}");
        of[0].clone()
    };
    let time = |s: &serde_json::Value, at: &str| {
        chrono::DateTime::parse_from_rfc3339(s[at].as_str().unwrap()).unwrap()
    };
    let inside = |child: &serde_json::Value, parent: &serde_json::Value| {
        assert!(
            time(child, "start_time") >= time(parent, "start_time")
                && time(child, "end_time") <= time(parent, "end_time")
                && time(child, "start_time") <= time(child, "end_time"),
            "{child:#?} not inside {parent:#?}"
        );
    };

    // The request span, `cold start` (the model's first request), the upstream
    // span and `first token`.
    let ok = spans(TRACE, 4).await;
    let request = by(&ok, CLIENT_SPAN, "chat m");
    assert_eq!(request["name"], "chat m");
    let a = &request["attributes"];
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.request.model"], "m");
    assert_eq!(a["llmvisor.client"], "anonymous");
    assert_eq!(a["llmvisor.route"], "m");
    assert_eq!(a["llmvisor.stream"], true);
    assert_eq!(a["http.response.status_code"], 200);
    assert!(a["gen_ai.usage.input_tokens"].as_i64() > Some(0), "{a:#?}");
    assert_eq!(a["gen_ai.usage.output_tokens"], 3, "{a:#?}");
    assert!(
        a.get("gen_ai.input.messages").is_none(),
        "prompt text sent: {a:#?}"
    );
    assert_eq!(request["status_code"], "UNSET");
    let id = request["context"]["span_id"].as_str().unwrap();
    inside(&by(&ok, id, "cold start"), &request);
    let upstream = by(&ok, id, "chat m");
    inside(&upstream, &request);
    let u = &upstream["attributes"];
    assert_eq!(u["server.address"], "127.0.0.1");
    assert!(u["server.port"].as_i64() > Some(0), "{u:#?}");
    assert_eq!(u["gen_ai.provider.name"], "command");
    let first = by(
        &ok,
        upstream["context"]["span_id"].as_str().unwrap(),
        "first token",
    );
    assert_eq!(first["name"], "first token");
    inside(&first, &upstream);

    let bad = spans(bad_trace, 3).await;
    let request = by(&bad, CLIENT_SPAN, "chat bad");
    assert_eq!(request["attributes"]["http.response.status_code"], 404);
    assert_eq!(request["attributes"]["error.type"], "upstream_404");
    assert_eq!(
        request["status_code"], "UNSET",
        "a 4xx is not a server span's error"
    );
    let upstream = by(
        &bad,
        request["context"]["span_id"].as_str().unwrap(),
        "chat bad",
    );
    assert_eq!(upstream["status_code"], "ERROR");
    assert_eq!(upstream["attributes"]["http.response.status_code"], 404);
    assert_eq!(lv.metric("llmvisor_trace_spans_failed_total").await, 0.0);
}
