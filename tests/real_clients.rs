//! Real clients against the real binary: the official `openai`, `anthropic` and
//! `ollama` Python packages, against the mock and (where the test says so) the real
//! llama-server of `scripts/llama-fixture.sh`. Needs Python with them (`.venv/` made by `.ci/run`, or any
//! `python3` that can import them). Without it a test says SKIPPED loudly; under CI
//! it fails instead.

mod common;
#[macro_use]
mod llama_fixture;

use std::path::Path;
use std::process::Command;

use common::*;

/// A Python interpreter that can import `module`, if there is one.
fn python_with(module: &str) -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    [venv, "python3"].into_iter().find_map(|py| {
        let ok = (py == "python3" || Path::new(py).exists())
            && Command::new(py)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success());
        ok.then(|| py.to_string())
    })
}

/// A Python that can import `module`; None (after saying SKIPPED, or failing under
/// CI) when there is none.
fn python_or_skip(module: &str, test: &str) -> Option<String> {
    let python = python_with(module);
    if python.is_none() {
        let msg = format!(
            "the `{module}` Python package is not installed (run .ci/run or `python3 -m venv .venv && .venv/bin/pip install {module}`)"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("\n**** SKIPPED {test}: {msg} ****\n");
    }
    python
}

/// Run `tests/clients/<script> BASE MODEL` against `lv`; it must end with "ok".
async fn run_client(python: String, script: &str, lv: &Llmvisor, model: &str) {
    run_client_args(python, script, lv, &[model]).await;
}

/// Run `tests/clients/<script> BASE ARGS…` against `lv`; it must end with "ok".
async fn run_client_args(python: String, script: &str, lv: &Llmvisor, rest: &[&str]) {
    let mut args = vec![
        format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR")),
        lv.base.clone(),
    ];
    args.extend(rest.iter().map(|s| s.to_string()));
    let out =
        tokio::task::spawn_blocking(move || Command::new(python).args(args).output().unwrap())
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{script} failed:\n{stdout}\n{stderr}\nllmvisor log:\n{}",
        lv.log()
    );
}

#[tokio::test]
async fn official_openai_python_client() {
    let Some(python) = python_or_skip("openai", "official_openai_python_client") else {
        return;
    };
    let lv = Llmvisor::start(
        "",
        &mock_model(
            "qwen",
            &[],
            "served_name = \"Qwen/Qwen2.5-7B-Instruct\"\naliases = [\"gpt-4o-mini\"]",
        ),
    )
    .await;
    run_client(python, "openai_client.py", &lv, "gpt-4o-mini").await;
    // Every request of the script reached the backend but the two refused ones.
    assert_eq!(lv.mock_stats("qwen").await["requests"], 4);
}

/// The `anthropic` SDK on `/v1/messages`, translated to chat completions for a
/// backend that serves only OpenAI's API (the mock, standing in for vLLM).
#[tokio::test]
async fn official_anthropic_python_client() {
    let Some(python) = python_or_skip("anthropic", "official_anthropic_python_client") else {
        return;
    };
    let lv = Llmvisor::start(
        "[clients.claude]\nkey_sha256 = \"333a721092ce3efd6de2e4e0962d75f1d025c7d6776573aaa982d30e8d255493\"\n",
        &mock_model("local", &[], "aliases = [\"claude-local\"]"),
    )
    .await;
    run_client(python, "anthropic_client.py", &lv, "claude-local").await;
    // The messages and the streams reached the backend as chat completions: two
    // plain, the tool call, its result, the streamed tool call.
    let stats = lv.mock_stats("local").await;
    assert_eq!(stats["requests"], 5, "{stats}");
    // The last one: the tool, its schema and the choice, translated.
    let last = &stats["last_request"];
    assert_eq!(
        last["tool_choice"]["function"]["name"], "get_weather",
        "{last}"
    );
    assert_eq!(
        last["tools"][0]["function"]["parameters"]["required"],
        serde_json::json!(["city", "days"])
    );
}

/// The `anthropic` SDK on the real llama-server, translated to its chat
/// completions (llama-cpp's default: its own `/v1/messages` stream lacks
/// `message_start`, which the SDK's stream cannot read; the native path is
/// tests/passthrough.rs' `real_llama_server_messages_are_forwarded_natively`).
/// Shapes strict, the tiny model's text and lengths as bounds; the tool_use turn
/// written by hand (that llama-server makes no tool calls for the tiny model).
#[tokio::test]
async fn official_anthropic_python_client_on_the_real_llama_server() {
    let f = require_llama!();
    let Some(python) = python_or_skip(
        "anthropic",
        "official_anthropic_python_client_on_the_real_llama_server",
    ) else {
        return;
    };
    let lv = Llmvisor::start("", &llama_model(&f, "tiny")).await;
    run_client_args(python, "anthropic_client.py", &lv, &["tiny", "--real"]).await;
}

/// Tool calls through the `openai` client on the mock: required, named and
/// streamed, the result sent back.
#[tokio::test]
async fn openai_tool_calls_on_the_mock() {
    let Some(python) = python_or_skip("openai", "openai_tool_calls_on_the_mock") else {
        return;
    };
    let lv = Llmvisor::start("", &mock_model("m", &[], "aliases = [\"gpt-4o\"]")).await;
    run_client(python, "openai_tools.py", &lv, "gpt-4o").await;
    assert_eq!(lv.mock_stats("m").await["requests"], 3);
}

/// The same on the real llama-server: a tool call and its result in the
/// conversation, answered (the call written by hand: that llama-server makes no
/// tool calls for the tiny model, even required ones).
#[tokio::test]
async fn openai_tool_calls_on_the_real_llama_server() {
    let f = require_llama!();
    let Some(python) = python_or_skip("openai", "openai_tool_calls_on_the_real_llama_server")
    else {
        return;
    };
    let lv = Llmvisor::start("", &llama_model(&f, "tiny")).await;
    run_client_args(python, "openai_tools.py", &lv, &["tiny", "--real"]).await;
}

/// A `kind = "llama-cpp"` model running the real llama-server fixture.
fn llama_model(f: &llama_fixture::Fixture, name: &str) -> String {
    format!(
        "[models.{name}]\nkind = \"llama-cpp\"\nmodel = {:?}\nexecutable = {:?}\nport = {}\nstart_timeout = \"60s\"\n",
        f.model.display().to_string(),
        f.server.display().to_string(),
        free_port()
    )
}

/// `client.responses.create`, plain and streamed, forwarded to the mock (its
/// `/v1/responses` has llama-server's shapes).
#[tokio::test]
async fn openai_responses_api_on_the_mock() {
    let Some(python) = python_or_skip("openai", "openai_responses_api_on_the_mock") else {
        return;
    };
    let lv = Llmvisor::start("", &mock_model("m", &[], "aliases = [\"gpt-4.1-mini\"]")).await;
    run_client(python, "openai_responses.py", &lv, "gpt-4.1-mini").await;
    assert_eq!(lv.mock_stats("m").await["requests"], 2);
}

/// `client.responses.create`, plain and streamed, forwarded to the real
/// llama-server.
#[tokio::test]
async fn openai_responses_api_on_the_real_llama_server() {
    let f = require_llama!();
    let Some(python) = python_or_skip("openai", "openai_responses_api_on_the_real_llama_server")
    else {
        return;
    };
    let lv = Llmvisor::start("", &llama_model(&f, "tiny")).await;
    run_client(python, "openai_responses.py", &lv, "tiny").await;
}

/// The `ollama` client (list, show, chat ± stream, generate ± stream, ps, embed)
/// on llmvisor's Ollama API, translated to the mock's OpenAI API (the mock's own
/// `/api/*` is not used).
#[tokio::test]
async fn official_ollama_python_client_on_the_mock() {
    let Some(python) = python_or_skip("ollama", "official_ollama_python_client_on_the_mock") else {
        return;
    };
    let lv = Llmvisor::start(
        "",
        &format!(
            "{}{}",
            mock_model("chat", &[], "aliases = [\"llama3.2:latest\"]"),
            mock_model("embed", &[], "capabilities = [\"embedding\"]")
        ),
    )
    .await;
    run_client_args(
        python,
        "ollama_client.py",
        &lv,
        &["llama3.2:latest", "embed"],
    )
    .await;
    // Translated to OpenAI's paths: 4 generations there, and the embedding.
    let stats = lv.mock_stats("chat").await;
    assert_eq!(stats["requests"], 4, "{stats}");
    assert_eq!(lv.mock_stats("embed").await["requests"], 1);
}

/// The same client against the real llama-server (a chat instance and an
/// embedding one with mean pooling).
#[tokio::test]
async fn official_ollama_python_client_on_the_real_llama_server() {
    let f = require_llama!();
    let Some(python) = python_or_skip(
        "ollama",
        "official_ollama_python_client_on_the_real_llama_server",
    ) else {
        return;
    };
    let lv = Llmvisor::start(
        "",
        &format!(
            "{}{}embeddings = true\nextra_args = [\"--pooling\", \"mean\"]\n",
            llama_model(&f, "tiny"),
            llama_model(&f, "tiny-embed")
        ),
    )
    .await;
    run_client_args(python, "ollama_client.py", &lv, &["tiny", "tiny-embed"]).await;
}
