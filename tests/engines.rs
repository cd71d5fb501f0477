//! Each engine's own command-line parser as the judge of what llmvisor renders.
//!
//! Every `vllm` and `llama-cpp` model the project shows anywhere — `examples/*.toml`,
//! the NixOS hosts' generated settings (`tests/nix-eval/hosts/*.toml`), every
//! ```` ```toml ```` block of the docs that is a whole configuration, and the cases of
//! the render tests (tensor parallel, memory fraction, sleep mode, served name,
//! `extra_args`) — is rendered with `llmvisor::units::render`, also as it restarts after
//! each out-of-memory step-down (`gpu::oom::step_fraction` / `step_concurrency`, applied
//! as the fleet's `unit_for` does), and then:
//!
//! - **vLLM**: parsed by vLLM's own `vllm serve` parser (`scripts/vllm-parse.py` in the
//!   venv of `scripts/vllm-fixture.sh`, all argvs in one Python process), with the
//!   serve subcommand's own `validate()`. A flag vLLM does not know fails the test with
//!   the flag named; so do a deprecated flag, a `VLLM_*` variable vLLM does not read,
//!   and a parsed value other than the one llmvisor meant.
//! - **llama.cpp**: run as `llama-server <argv…> --help` with the real binary of
//!   `scripts/llama-fixture.sh`: llama.cpp parses every argument (unknown flags, values
//!   that are not numbers, unknown enum values) before it prints the help and exits 0.
//!
//! Without a fixture a test says SKIPPED loudly. The llama-server fixture is built by
//! `.ci/run`, so under `CI=true` that test fails instead. The vLLM venv is 6.1 GB
//! and `.ci/run` does not install it: under `CI=true` too the vLLM test only says
//! SKIPPED (run `scripts/vllm-fixture.sh` once to arm it; see README.md).

#[macro_use]
mod llama_fixture;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use llmvisor::config::{Backend, Config, IdleAction, Kind, ModelSpec};
use llmvisor::gpu::oom::{VLLM_DEFAULT_GPU_MEMORY_UTILIZATION, step_concurrency, step_fraction};
use llmvisor::units::render;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the whole repository is here: the Nix build's source is only what
/// cargo and the other tests need (nixos-modules/package.nix), without README.md,
/// docs/*.md, scripts/ or tests/nix-eval/, which these tests read. There they say
/// SKIPPED; under CI=true (a clone of the repository) they must not.
macro_rules! require_repository {
    () => {
        if !repo().join("README.md").exists() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("README.md is missing: not a clone of the repository");
            }
            eprintln!(
                "\n**** SKIPPED (the repository's docs, scripts and tests/nix-eval are not in this source: a Nix build) ****\n"
            );
            return;
        }
    };
}

/// One rendered model: where it comes from and its spec (possibly stepped down).
struct Case {
    label: String,
    spec: ModelSpec,
}

/// The `[models]` of a whole configuration, or why it is not one.
fn models_of(text: &str) -> Result<Vec<ModelSpec>, String> {
    let mut c = Config::parse(text).map_err(|e| e.to_string())?;
    // A snippet without clients (auth is checked elsewhere): one client with a key
    // file, which validation does not read.
    if c.clients.is_empty() {
        c = Config::parse(&format!(
            "{text}\n[clients.engines-test]\nkey_file = \"k\"\n"
        ))
        .map_err(|e| e.to_string())?;
    }
    let s = c.validate().map_err(|p| {
        p.iter()
            .map(|p| format!("{p}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok(s.models)
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// ```` ```toml ```` blocks of a Markdown file, with the line each starts on.
fn toml_blocks(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        let t = line.trim_start();
        match &mut cur {
            None if t.starts_with("```toml") => cur = Some((i + 1, String::new())),
            Some(_) if t.starts_with("```") => out.push(cur.take().unwrap()),
            Some((_, b)) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The render tests' cases, and more of each key a `vllm` / `llama-cpp` model has.
const RENDER_CASES: &[(&str, &str)] = &[
    (
        "render: vllm tensor parallel, context, fraction, extra_args",
        r#"[models.qwen]
kind = "vllm"
model = "Qwen/Qwen2.5-72B-Instruct-AWQ"
port = 8001
tensor_parallel_size = 2
context_length = 32768
gpu_memory_utilization = 0.9
extra_args = ["--enable-prefix-caching"]"#,
    ),
    (
        "render: vllm minimal, pinned, tensor_parallel",
        r#"[models.small]
kind = "vllm"
model = "/srv/models/qwen"
port = 8002
executable = "/opt/vllm/bin/vllm"
gpus = [1, 2]
tensor_parallel = 2
env = { HF_HUB_OFFLINE = "1" }"#,
    ),
    (
        "render: vllm sleep mode, served name, placed anywhere",
        r#"[models.chat]
kind = "vllm"
model = "meta-llama/Llama-3.1-8B-Instruct"
served_name = "meta-llama/Llama-3.1-8B-Instruct"
port = 8003
gpus = "any"
vram = "20GiB"
idle_action = "sleep"
gpu_memory_utilization = 0.85
min_gpu_memory_utilization = 0.6"#,
    ),
    (
        "render: vllm common extra_args",
        r#"[models.tools]
kind = "vllm"
model = "Qwen/Qwen2.5-7B-Instruct"
port = 8004
gpus = [0]
context_length = 16384
extra_args = ["--enable-prefix-caching", "--max-num-seqs", "64", "--dtype", "bfloat16", "--kv-cache-dtype", "fp8", "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--generation-config", "vllm"]"#,
    ),
    (
        "render: llama-cpp context, slots, embeddings, pooling",
        r#"[models.l]
kind = "llama-cpp"
model = "/m/tiny.gguf"
port = 9001
context_length = 2048
max_concurrent = 4
embeddings = true
extra_args = ["--pooling", "mean"]"#,
    ),
    (
        "render: llama-cpp defaults, served name",
        r#"[models.chat]
kind = "llama-cpp"
model = "/m/tiny.gguf"
port = 9002
served_name = "tiny"
executable = "/opt/llama/llama-server""#,
    ),
    (
        "render: llama-cpp GPU offload",
        r#"[models.gpu]
kind = "llama-cpp"
model = "/srv/models/bge-m3-Q8_0.gguf"
port = 9003
gpus = [0]
context_length = 8192
max_concurrent = 4
embeddings = true
extra_args = ["--n-gpu-layers", "99"]"#,
    ),
];

/// Every `kind`-`want` model the project renders, each also after every step of the
/// out-of-memory step-down (as `fleet::Instance::unit_for` renders a restart).
fn cases(want: Kind) -> Vec<Case> {
    let mut sources: Vec<(String, Vec<ModelSpec>)> = Vec::new();
    for dir in ["examples", "tests/nix-eval/hosts"] {
        for f in toml_files(&repo().join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap();
            let label = f.strip_prefix(repo()).unwrap().display().to_string();
            let models = models_of(&text).unwrap_or_else(|e| panic!("{label}: {e}"));
            sources.push((label, models));
        }
    }
    let mut docs = vec![repo().join("README.md")];
    let mut md: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    md.sort();
    docs.extend(md);
    for f in docs {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.strip_prefix(repo()).unwrap().display().to_string();
        for (line, block) in toml_blocks(&text) {
            // Fragments (a table alone, keys out of context) are not whole configs.
            if let Ok(models) = models_of(&block) {
                sources.push((format!("{name}:{line}"), models));
            }
        }
    }
    for (label, toml) in RENDER_CASES {
        let models = models_of(toml).unwrap_or_else(|e| panic!("{label}: {e}"));
        sources.push(((*label).to_string(), models));
    }

    let mut out = Vec::new();
    for (label, models) in sources {
        for spec in models.into_iter().filter(|m| m.kind == want) {
            out.push(Case {
                label: format!("{label} [models.{}]", spec.name),
                spec: spec.clone(),
            });
            // The out-of-memory step-downs, down to the floors.
            let mut s = spec.clone();
            for step in 1.. {
                let before = s.clone();
                s.max_concurrent = step_concurrency(s.max_concurrent, s.gpu.min_concurrent);
                if let Backend::Vllm {
                    gpu_memory_utilization: f,
                    ..
                } = &mut s.backend
                {
                    *f = Some(step_fraction(
                        f.unwrap_or(VLLM_DEFAULT_GPU_MEMORY_UTILIZATION),
                        s.gpu.min_gpu_memory_utilization,
                    ));
                }
                if s == before {
                    break;
                }
                out.push(Case {
                    label: format!(
                        "{label} [models.{}] after {step} out-of-memory step-down(s)",
                        s.name
                    ),
                    spec: s.clone(),
                });
            }
        }
    }
    out
}

/// Every source must show at least one model of each kind it is meant to cover.
fn assert_covered(cases: &[Case], what: &str, prefixes: &[&str]) {
    for p in prefixes {
        assert!(
            cases.iter().any(|c| c.label.starts_with(p)),
            "no {what} model from {p}: the test no longer sees it"
        );
    }
}

/// Where `scripts/vllm-fixture.sh` installed vLLM, or why not.
fn vllm_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LLMVISOR_VLLM_PYTHON").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let script = repo().join("scripts/vllm-fixture.sh");
    // Not there in the Nix build's source (scripts/ is not the package's): the
    // test then says why it skips rather than panicking.
    let cannot = |e: std::io::Error| format!("{} cannot run: {e}", script.display());
    let print = Command::new(&script)
        .arg("--print")
        .output()
        .map_err(cannot)?;
    let py = PathBuf::from(String::from_utf8_lossy(&print.stdout).trim());
    let ok = Command::new(&script)
        .arg("--check")
        .status()
        .map_err(cannot)?
        .success();
    if ok {
        Ok(py)
    } else {
        Err(format!(
            "{} is missing (run scripts/vllm-fixture.sh: 6.1 GB, about 9 minutes once)",
            py.display()
        ))
    }
}

#[test]
fn vllm_parses_every_rendered_vllm_argv() {
    require_repository!();
    let cases = cases(Kind::Vllm);
    assert_covered(
        &cases,
        "vllm",
        &["tests/nix-eval/hosts/", "docs/", "render: "],
    );
    let py = match vllm_python() {
        Ok(p) => p,
        Err(why) => {
            // Explicitly optional, under CI=true too: .ci/run does not install a
            // 6.1 GB venv (see README.md, "Each engine's own parser").
            eprintln!(
                "\n**** SKIPPED (vLLM's own parser, {} argvs not checked): {why} ****\n",
                cases.len()
            );
            return;
        }
    };
    let mut input = String::new();
    for c in &cases {
        let u = render(&c.spec);
        input.push_str(&json!({"label": c.label, "argv": u.argv, "env": u.env}).to_string());
        input.push('\n');
    }
    // The judge must be able to say no: a flag vLLM does not know, named.
    let canary = ["vllm", "serve", "m", "--no-such-flag-llmvisor", "1"];
    input.push_str(&json!({"label": "canary", "argv": canary, "env": {}}).to_string());
    input.push('\n');
    let mut child = Command::new(&py)
        .arg(repo().join("scripts/vllm-parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/vllm-parse.py failed: {}\n{stderr}",
        out.status
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let head = &lines[0];
    let version = head["vllm"].as_str().unwrap();
    // The sleep endpoints llmvisor calls exist, as dev-mode routes.
    for path in ["/health", "/sleep", "/wake_up", "/is_sleeping"] {
        let at = head["routes"][path].as_array().unwrap();
        assert!(!at.is_empty(), "vLLM {version} has no {path} route");
        if path != "/health" {
            assert!(
                at.iter().all(|r| r["dev_mode"] == true),
                "vLLM {version}: {path} is not behind VLLM_SERVER_DEV_MODE: {at:?}"
            );
        }
    }
    let (results, canary) = lines[1..].split_at(lines.len() - 2);
    assert_eq!(results.len(), cases.len(), "{stderr}");
    assert_eq!(canary[0]["ok"], false, "{:?}", canary[0]);
    assert!(
        canary[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unrecognized arguments: --no-such-flag-llmvisor")),
        "{:?}",
        canary[0]
    );
    // Without --gpu-memory-utilization vLLM uses its own default, from which the
    // out-of-memory step-down starts.
    for (c, r) in cases.iter().zip(results) {
        if let Backend::Vllm {
            gpu_memory_utilization: None,
            ..
        } = c.spec.backend
        {
            assert_eq!(
                r["parsed"]["gpu_memory_utilization"].as_f64(),
                Some(VLLM_DEFAULT_GPU_MEMORY_UTILIZATION),
                "vLLM {version}'s default --gpu-memory-utilization is not llmvisor's ({})",
                c.label
            );
        }
    }

    let mut failures = Vec::new();
    for (c, r) in cases.iter().zip(results) {
        assert_eq!(r["label"], c.label.as_str());
        let argv = render(&c.spec).argv.join(" ");
        if r["ok"] != true {
            failures.push(format!(
                "{}: vLLM {version} rejects it: {}\n    {argv}",
                c.label, r["error"]
            ));
            continue;
        }
        if let Some(d) = r["deprecated"].as_array().filter(|d| !d.is_empty()) {
            failures.push(format!(
                "{}: deprecated in vLLM {version}: {d:?}\n    {argv}",
                c.label
            ));
        }
        if let Some(e) = r["unknown_env"].as_array().filter(|e| !e.is_empty()) {
            failures.push(format!(
                "{}: vLLM {version} reads no such variable: {e:?}",
                c.label
            ));
        }
        // vLLM understood what llmvisor meant.
        let Backend::Vllm {
            model,
            tensor_parallel_size,
            gpu_memory_utilization,
        } = &c.spec.backend
        else {
            unreachable!()
        };
        let p = &r["parsed"];
        let mut want = json!({
            "model_tag": model,
            "host": "127.0.0.1",
            "port": c.spec.port,
            "served_model_name": [c.spec.served_name],
            "enable_sleep_mode": c.spec.gpu.idle_action == IdleAction::Sleep,
        });
        if let Some(tp) = tensor_parallel_size {
            want["tensor_parallel_size"] = json!(tp);
        }
        if let Some(ctx) = c.spec.context_length {
            want["max_model_len"] = json!(ctx);
        }
        for (k, v) in want.as_object().unwrap() {
            if &p[k] != v {
                failures.push(format!(
                    "{}: vLLM {version} parsed {k} = {}, llmvisor meant {v}\n    {argv}",
                    c.label, p[k]
                ));
            }
        }
        if let Some(f) = gpu_memory_utilization {
            let got = p["gpu_memory_utilization"].as_f64();
            if got.is_none_or(|g| (g - f).abs() > 1e-9) {
                failures.push(format!(
                    "{}: vLLM {version} parsed gpu_memory_utilization = {got:?}, llmvisor meant {f}",
                    c.label
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vLLM argvs fail vLLM {version}'s own parser:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "vLLM {version} ({}) parsed all {} rendered `vllm serve` argvs",
        py.display(),
        cases.len()
    );
}

/// Option names in `llama-server --help` (`-c,    --ctx-size N   …`): the leading
/// flags of each line, past their value names, up to the description.
fn help_flags(help: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in help.lines().filter(|l| l.starts_with('-')) {
        for tok in line.split_whitespace() {
            let t = tok.trim_end_matches(',');
            if t.starts_with('-') {
                out.insert(t.to_string());
            } else if !t
                .chars()
                .all(|c| c.is_ascii_uppercase() || "_-|".contains(c))
                && !t.starts_with(['{', '<', '['])
            {
                break;
            }
        }
    }
    out
}

#[test]
fn llama_server_parses_every_rendered_llama_cpp_argv() {
    require_repository!();
    let cases = cases(Kind::LlamaCpp);
    assert_covered(
        &cases,
        "llama-cpp",
        &["examples/", "tests/nix-eval/hosts/", "docs/", "render: "],
    );
    let f = require_llama!();
    let help = Command::new(&f.server).arg("--help").output().unwrap();
    assert!(help.status.success());
    let known = help_flags(&String::from_utf8_lossy(&help.stdout));
    assert!(
        known.contains("--ctx-size") && known.contains("--parallel"),
        "cannot read llama-server --help: {known:?}"
    );
    let version = Command::new(&f.server).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&version.stdout).lines())
        .find(|l| l.starts_with("version"))
        .unwrap_or("version unknown")
        .to_string();

    // The judge must be able to say no: a flag llama.cpp does not know, named.
    let out = Command::new(&f.server)
        .args(["--model", "/m.gguf", "--no-such-flag-llmvisor", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid argument: --no-such-flag-llmvisor"),
        "{out:?}"
    );

    let mut failures = Vec::new();
    for c in &cases {
        let argv = render(&c.spec).argv;
        // The flags, by name, are in its help…
        for a in argv[1..].iter().filter(|a| a.starts_with("--")) {
            let name = a.split('=').next().unwrap();
            if !known.contains(name) {
                failures.push(format!(
                    "{}: llama-server has no flag {name}\n    {}",
                    c.label,
                    argv.join(" ")
                ));
            }
        }
        // …and llama.cpp's own parser takes the whole command line: it parses every
        // argument before `--help` prints and exits 0.
        let out = Command::new(&f.server)
            .args(&argv[1..])
            .arg("--help")
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err
                .lines()
                .chain(String::from_utf8_lossy(&out.stdout).lines())
                .find(|l| l.contains("error"))
                .unwrap_or("(no error line)")
                .to_string();
            failures.push(format!(
                "{}: llama-server rejects it ({}): {first}\n    {}",
                c.label,
                out.status,
                argv.join(" ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with llama-server ({version}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "llama-server ({version}) parsed all {} rendered llama-cpp argvs",
        cases.len()
    );
}

/// The test's own parts: Markdown blocks and help lines are read as meant.
#[test]
fn reads_markdown_blocks_and_help_lines() {
    let md = "x\n```toml\n[a]\nb = 1\n```\n```sh\nno\n```\n";
    assert_eq!(toml_blocks(md), vec![(2, "[a]\nb = 1\n".to_string())]);
    let help = "-c,    --ctx-size N                     size of the prompt context\n--embedding, --embeddings                restrict\n-np,   --parallel N   slots\n        (env: X)\n";
    let f = help_flags(help);
    for want in [
        "-c",
        "--ctx-size",
        "--embedding",
        "--embeddings",
        "--parallel",
    ] {
        assert!(f.contains(want), "{f:?}");
    }
    assert!(!f.contains("N"));
}

/// The names the `ollama` kind uses are exactly those checked against Ollama 0.32.0's
/// source (`envconfig/config.go`, `cmd/cmd.go`; the table in docs/configuration.md,
/// "kind = ollama"). A new one fails here until it is checked and listed there.
#[test]
fn ollama_names_are_the_checked_ones() {
    require_repository!();
    const CHECKED_ENV: [&str; 6] = [
        "OLLAMA_CONTEXT_LENGTH",
        "OLLAMA_HOST",
        "OLLAMA_KEEP_ALIVE",
        "OLLAMA_MAX_LOADED_MODELS",
        "OLLAMA_MODELS",
        "OLLAMA_NUM_PARALLEL",
    ];
    const CHECKED_COMMANDS: [&str; 4] = ["list", "pull", "serve", "show"];
    let docs = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let table = docs
        .split("**Checked against Ollama 0.32.0's source**")
        .nth(1)
        .expect("docs/configuration.md has the checked-names table");
    for name in CHECKED_ENV {
        assert!(
            table.contains(&format!("| `{name}` |")),
            "{name} not in the table"
        );
    }
    for cmd in CHECKED_COMMANDS {
        assert!(
            table.contains(&format!("`ollama {cmd}")),
            "{cmd} not in the table"
        );
    }

    let specs = models_of(
        "[models.o]\nkind = \"ollama\"\nmodel = \"llama3.2:1b\"\nport = 9000\ncontext_length = 8192\n",
    )
    .unwrap();
    let u = render(&specs[0]);
    let mut env: BTreeSet<&str> = u
        .env
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("OLLAMA_"))
        .collect();
    for p in &u.properties {
        if let llmvisor::units::properties::Value::Env(name, _) = &p.value
            && name.starts_with("OLLAMA_")
        {
            env.insert(name);
        }
    }
    assert_eq!(env, BTreeSet::from(CHECKED_ENV));
    // Every `"$exe" <command>` of the wrapper is a checked command.
    let wrapper = &u.argv[2];
    let used: BTreeSet<&str> = wrapper
        .split("\"$exe\" ")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(used, BTreeSet::from(CHECKED_COMMANDS), "{wrapper}");
    // `ollama serve` takes no arguments: extra_args is refused, not failed at start.
    let err = models_of(
        "[models.o]\nkind = \"ollama\"\nmodel = \"m:1b\"\nport = 9000\nextra_args = [\"--verbose\"]\n",
    )
    .unwrap_err();
    assert!(err.contains("models.o.extra_args"), "{err}");
}

/// `scripts/gpu-check.sh --dry-run`: the real-GPU check's script syntax, its Python,
/// and `llmvisor check-config` on the configuration it would run (no GPU needed).
#[test]
fn gpu_check_dry_run() {
    require_repository!();
    let out = Command::new(repo().join("scripts/gpu-check.sh"))
        .arg("--dry-run")
        .env("LLMVISOR", env!("CARGO_BIN_EXE_llmvisor"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    assert!(
        text.contains("PASS dry run: llmvisor check-config accepts"),
        "{text}"
    );
}
