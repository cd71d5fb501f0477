//! From a [`ModelSpec`] to what a unit manager starts: argv, environment, unit name,
//! description and the spec hash that tells a running unit from a changed one.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::config::{Backend, ModelSpec};

/// Everything a manager needs to start one model.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitSpec {
    /// `llmvisor-model-<instance>.service`.
    pub unit: String,
    /// The model instance name.
    pub model: String,
    /// Human description (systemd's `Description=`).
    pub description: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment of the process (on top of the manager's base environment).
    pub env: BTreeMap<String, String>,
    /// Hash of argv and environment; also exported as `LLMVISOR_SPEC_HASH`.
    pub spec_hash: String,
    /// The unit's properties (limits, sandbox), for managers that make units.
    pub properties: Vec<super::properties::Property>,
    /// Time between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: std::time::Duration,
}

/// The unit name of a model instance. Instance names are validated to the characters
/// systemd allows unescaped, so no escaping is needed here.
pub fn unit_name(instance: &str) -> String {
    format!("llmvisor-model-{instance}.service")
}

/// Replace `{port}`, `{served_name}` and `{name}` in one pass, so a value that
/// itself contains braces is never substituted again.
fn substitute(arg: &str, spec: &ModelSpec) -> String {
    let mut out = String::with_capacity(arg.len() + 16);
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let value = match after.find('}').map(|close| &after[1..close]) {
            Some("port") => Some(spec.port.to_string()),
            Some("served_name") => Some(spec.served_name.clone()),
            Some("name") => Some(spec.name.clone()),
            _ => None,
        };
        match value {
            Some(v) => {
                out.push_str(&v);
                rest = &after[after.find('}').map_or(after.len(), |c| c + 1)..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Render a model spec into a unit spec.
pub fn render(spec: &ModelSpec) -> UnitSpec {
    let port = spec.port.to_string();
    let exe = |default: &str| {
        spec.executable
            .clone()
            .unwrap_or_else(|| default.to_string())
    };
    let mut env = BTreeMap::new();
    let argv: Vec<String> = match &spec.backend {
        Backend::Vllm {
            model,
            tensor_parallel_size,
            gpu_memory_utilization,
        } => {
            let mut a = vec![
                exe("vllm"),
                "serve".into(),
                model.clone(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.clone(),
                "--served-model-name".into(),
                spec.served_name.clone(),
            ];
            if let Some(tp) = tensor_parallel_size {
                a.extend(["--tensor-parallel-size".into(), tp.to_string()]);
            }
            if let Some(ctx) = spec.context_length {
                a.extend(["--max-model-len".into(), ctx.to_string()]);
            }
            if let Some(f) = gpu_memory_utilization {
                a.extend(["--gpu-memory-utilization".into(), f.to_string()]);
            }
            if spec.gpu.idle_action == crate::config::IdleAction::Sleep {
                // Sleep mode and its /sleep, /wake_up endpoints (dev-mode routes).
                a.push("--enable-sleep-mode".into());
                env.insert("VLLM_SERVER_DEV_MODE".into(), "1".into());
            }
            a.extend(spec.extra_args.iter().cloned());
            a
        }
        Backend::Ollama { model } => {
            env.insert("OLLAMA_HOST".into(), format!("127.0.0.1:{port}"));
            // One model per instance: Ollama never swaps in another one.
            env.insert("OLLAMA_MAX_LOADED_MODELS".into(), "1".into());
            // llmvisor decides when the model unloads, not Ollama's own timer.
            env.insert("OLLAMA_KEEP_ALIVE".into(), "-1".into());
            env.insert(
                "OLLAMA_NUM_PARALLEL".into(),
                spec.max_concurrent.to_string(),
            );
            if let Some(ctx) = spec.context_length {
                env.insert("OLLAMA_CONTEXT_LENGTH".into(), ctx.to_string());
            }
            // `ollama serve` does not pull: the wrapper makes sure the tag is in the
            // store first (see OLLAMA_WRAPPER), then becomes the server.
            let mut a = vec![
                "/bin/sh".into(),
                "-c".into(),
                OLLAMA_WRAPPER.into(),
                "llmvisor-ollama".into(),
                exe("ollama"),
                model.clone(),
            ];
            a.extend(spec.extra_args.iter().cloned());
            a
        }
        Backend::LlamaCpp { model, embeddings } => {
            let mut a = vec![
                exe("llama-server"),
                "--model".into(),
                model.clone(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.clone(),
            ];
            if let Some(ctx) = spec.context_length {
                a.extend(["--ctx-size".into(), ctx.to_string()]);
            }
            a.extend([
                "--parallel".into(),
                spec.max_concurrent.to_string(),
                "--alias".into(),
                spec.served_name.clone(),
            ]);
            if *embeddings {
                a.push("--embeddings".into());
            }
            a.extend(spec.extra_args.iter().cloned());
            a
        }
        Backend::Command { argv } => argv.iter().map(|a| substitute(a, spec)).collect(),
    };
    if !spec.limits.gpus.is_empty() {
        // Indices in PCI bus order, as nvidia-smi numbers them.
        env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
        let ids: Vec<String> = spec.limits.gpus.iter().map(u32::to_string).collect();
        // By UUID when placement read them from NVML: indices can change between
        // boots, UUIDs do not.
        let ids = if spec.limits.gpu_uuids.len() == spec.limits.gpus.len() {
            spec.limits.gpu_uuids.clone()
        } else {
            ids
        };
        env.insert("CUDA_VISIBLE_DEVICES".into(), ids.join(","));
    }
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    env.insert("LLMVISOR_MODEL".into(), spec.name.clone());

    let mut h = Sha256::new();
    for a in &argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    h.update([1]);
    for (k, v) in &env {
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
        h.update([0]);
    }
    // The unit's confinement is part of what runs: changing it restarts the unit.
    h.update(format!("{:?}{:?}", spec.limits, spec.stop_timeout).as_bytes());
    let digest = h.finalize();
    let spec_hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    env.insert("LLMVISOR_SPEC_HASH".into(), spec_hash.clone());

    let mut unit = UnitSpec {
        unit: unit_name(&spec.name),
        model: spec.name.clone(),
        description: if spec.limits.gpus.is_empty() {
            format!("llmvisor model {} ({})", spec.name, spec.kind.as_str())
        } else {
            let gpus: Vec<String> = spec.limits.gpus.iter().map(u32::to_string).collect();
            format!(
                "llmvisor model {} ({}, GPU {})",
                spec.name,
                spec.kind.as_str(),
                gpus.join(",")
            )
        },
        argv,
        env,
        spec_hash,
        properties: Vec::new(),
        stop_timeout: spec.stop_timeout,
    };
    unit.properties = super::properties::properties(spec, &unit);
    if matches!(spec.backend, Backend::Ollama { .. }) && !spec.env.contains_key("PATH") {
        // The wrapper runs `sleep`, `tr`, `grep` and `tail`. A transient unit's PATH
        // is systemd's built-in one, which on NixOS is systemd's own bin directory
        // alone (nixpkgs substitutes it): the system profile goes first, then the
        // usual directories. (Child processes keep llmvisor's PATH.)
        unit.properties.insert(
            0,
            super::properties::Property {
                name: "Environment",
                value: super::properties::Value::Env("PATH".into(), UNIT_PATH.into()),
            },
        );
    }
    if matches!(spec.backend, Backend::Ollama { .. }) && !spec.env.contains_key("OLLAMA_MODELS") {
        // Under systemd the store is in the unit's StateDirectory, which survives
        // restarts and is writable under ProtectSystem=strict. (Child processes keep
        // Ollama's default, `~/.ollama/models` of the user llmvisor runs as.)
        let at = unit
            .properties
            .iter()
            .position(|p| p.name == "StateDirectory")
            .unwrap_or(unit.properties.len());
        unit.properties.insert(
            at,
            super::properties::Property {
                name: "Environment",
                value: super::properties::Value::Env(
                    "OLLAMA_MODELS".into(),
                    format!("/var/lib/llmvisor/models/{}/ollama", spec.name),
                ),
            },
        );
    }
    unit
}

/// The PATH an `ollama` unit's wrapper finds its tools on under systemd: NixOS's
/// system profile (which holds coreutils and grep), then systemd's built-in PATH
/// of a distribution with a split /usr (a directory that is not there is skipped).
/// Not observed on a NixOS host: read from nixpkgs' systemd build, which
/// substitutes `@defaultPathNormal@` with its own `bin/`.
pub const UNIT_PATH: &str =
    "/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How an `ollama` instance runs (`sh -c OLLAMA_WRAPPER llmvisor-ollama EXE TAG
/// EXTRA…`): `ollama serve` loads models but does not pull them, and answers its
/// health check before a model is there. So first a server on 127.0.0.2 (same port,
/// which llmvisor's health check on 127.0.0.1 does not see) is asked whether the tag
/// is in the store (`ollama show`) and pulls it if not (`ollama pull`, which needs
/// `allow_network = true` under systemd); then the shell becomes `ollama serve` on
/// `OLLAMA_HOST`. While it pulls, llmvisor shows `loading`; a failed pull fails the
/// start with Ollama's own error line.
pub const OLLAMA_WRAPPER: &str = r#"exe=$1 tag=$2; shift 2
side=127.0.0.2:${OLLAMA_HOST##*:}
OLLAMA_HOST=$side "$exe" serve >&2 & srv=$!
trap 'kill $srv 2>/dev/null' EXIT
trap 'exit 143' TERM INT
n=0
until OLLAMA_HOST=$side "$exe" list >/dev/null 2>&1; do
  kill -0 $srv 2>/dev/null || { echo "ollama serve exited before $tag could be checked" >&2; exit 1; }
  n=$((n+1)); [ $n -le 600 ] || { echo "ollama serve did not answer on $side within 120 s" >&2; exit 1; }
  sleep 0.2
done
if ! OLLAMA_HOST=$side "$exe" show "$tag" >/dev/null 2>&1; then
  echo "llmvisor: $tag is not in the store; ollama pull $tag" >&2
  out=$(OLLAMA_HOST=$side "$exe" pull "$tag" 2>&1) || {
    echo "cannot pull $tag: $(printf '%s\n' "$out" | tr '\r' '\n' | grep . | tail -n 1)" >&2; exit 1; }
fi
kill $srv; wait $srv 2>/dev/null; trap - EXIT
exec "$exe" serve "$@""#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn spec(toml: &str) -> ModelSpec {
        Config::parse_open(toml)
            .unwrap()
            .validate()
            .unwrap()
            .models
            .remove(0)
    }

    #[test]
    fn vllm_argv() {
        let u = render(&spec(
            r#"[models.qwen]
            kind = "vllm"
            model = "Qwen/Qwen2.5-72B-Instruct-AWQ"
            port = 8001
            tensor_parallel_size = 2
            context_length = 32768
            gpu_memory_utilization = 0.9
            extra_args = ["--enable-prefix-caching"]"#,
        ));
        assert_eq!(
            u.argv,
            [
                "vllm",
                "serve",
                "Qwen/Qwen2.5-72B-Instruct-AWQ",
                "--host",
                "127.0.0.1",
                "--port",
                "8001",
                "--served-model-name",
                "qwen",
                "--tensor-parallel-size",
                "2",
                "--max-model-len",
                "32768",
                "--gpu-memory-utilization",
                "0.9",
                "--enable-prefix-caching"
            ]
        );
        assert_eq!(u.unit, "llmvisor-model-qwen.service");
        assert_eq!(u.env["LLMVISOR_SPEC_HASH"], u.spec_hash);
    }

    #[test]
    fn vllm_minimal_argv_and_environment() {
        let u = render(&spec(
            "[models.small]\nkind = \"vllm\"\nmodel = \"/srv/models/qwen\"\nport = 8002\nexecutable = \"/opt/vllm/bin/vllm\"\ngpus = [1, 2]\ntensor_parallel = 2\nenv = { HF_HUB_OFFLINE = \"1\" }\n",
        ));
        // No optional flag without its key; tensor parallelism from `tensor_parallel`.
        assert_eq!(
            u.argv.join(" "),
            "/opt/vllm/bin/vllm serve /srv/models/qwen --host 127.0.0.1 --port 8002 --served-model-name small --tensor-parallel-size 2"
        );
        assert_eq!(u.env["CUDA_VISIBLE_DEVICES"], "1,2");
        assert_eq!(u.env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
        assert_eq!(u.env["HF_HUB_OFFLINE"], "1");
        assert_eq!(u.env["LLMVISOR_MODEL"], "small");
        assert!(
            !u.env.keys().any(|k| k.starts_with("OLLAMA_")),
            "{:?}",
            u.env
        );
    }

    #[test]
    fn ollama_argv_pulls_then_serves_and_env_configures_it() {
        let u = render(&spec(
            "[models.o]\nkind = \"ollama\"\nmodel = \"llama3.2:1b\"\nport = 9000\nmax_concurrent = 2\ncontext_length = 8192\n",
        ));
        assert_eq!(
            u.argv,
            [
                "/bin/sh",
                "-c",
                OLLAMA_WRAPPER,
                "llmvisor-ollama",
                "ollama",
                "llama3.2:1b"
            ]
        );
        assert_eq!(u.env["OLLAMA_HOST"], "127.0.0.1:9000");
        assert_eq!(u.env["OLLAMA_NUM_PARALLEL"], "2");
        assert_eq!(u.env["OLLAMA_KEEP_ALIVE"], "-1");
        assert_eq!(u.env["OLLAMA_MAX_LOADED_MODELS"], "1");
        assert_eq!(u.env["OLLAMA_CONTEXT_LENGTH"], "8192");
        // Child processes keep Ollama's own store; a unit gets its StateDirectory.
        assert!(!u.env.contains_key("OLLAMA_MODELS"));
        let props: Vec<String> = u
            .properties
            .iter()
            .map(|p| format!("{}={}", p.name, p.value))
            .collect();
        assert!(
            props.contains(&"Environment=OLLAMA_MODELS=/var/lib/llmvisor/models/o/ollama".into()),
            "{props:?}"
        );
        assert!(props.contains(&"StateDirectory=llmvisor/models/o".into()));

        // `env` wins: the operator's own store, and no second OLLAMA_MODELS property.
        let u = render(&spec(
            "[models.o]\nkind = \"ollama\"\nmodel = \"qwen2.5:7b\"\nport = 9000\nexecutable = \"/nix/store/x-ollama/bin/ollama\"\nenv = { OLLAMA_MODELS = \"/srv/ollama\", OLLAMA_KEEP_ALIVE = \"5m\" }\n",
        ));
        assert_eq!(
            u.argv[4..],
            ["/nix/store/x-ollama/bin/ollama", "qwen2.5:7b"]
        );
        assert_eq!(u.env["OLLAMA_MODELS"], "/srv/ollama");
        assert_eq!(u.env["OLLAMA_KEEP_ALIVE"], "5m");
        let stores: Vec<_> = u
            .properties
            .iter()
            .filter(|p| p.value.to_string().starts_with("OLLAMA_MODELS="))
            .collect();
        assert_eq!(stores.len(), 1, "{stores:?}");
    }

    /// The wrapper against a stand-in `ollama` that records its calls: the tag is
    /// looked up on the side address, pulled when missing, then served on OLLAMA_HOST.
    /// Its environment is the unit's, with a PATH that holds only the four tools the
    /// wrapper is said to need (`sleep`, `tr`, `grep`, `tail`, linked from this host):
    /// a NixOS unit's own PATH holds none of them (see [`UNIT_PATH`]).
    #[test]
    fn ollama_wrapper_pulls_a_missing_tag_on_the_side_address_then_execs_serve() {
        let dir = tempfile::tempdir().unwrap();
        let tools = dir.path().join("tools");
        std::fs::create_dir(&tools).unwrap();
        for t in ["sleep", "tr", "grep", "tail"] {
            let path = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| std::path::Path::new(d).join(t))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("no {t} on this host"));
            std::os::unix::fs::symlink(path, tools.join(t)).unwrap();
        }
        let log = dir.path().join("calls");
        let fake = dir.path().join("ollama");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$1 $2 @$OLLAMA_HOST\" >> {log}\ncase $1 in\n  serve) [ \"$OLLAMA_HOST\" = 127.0.0.1:9000 ] && exit 0; exec sleep 30 ;;\n  show) grep -q '^pull' {log} ;;\n  pull) [ \"$2\" = bad:tag ] && {{ printf 'pulling manifest\\rpulling 12%%\\r\\n'; echo 'Error: pull model manifest: file does not exist'; exit 1; }}; exit 0 ;;\nesac\n",
                log = log.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = |tag: &str| {
            let u = render(&spec(&format!(
                "[models.o]\nkind = \"ollama\"\nmodel = \"{tag}\"\nport = 9000\nexecutable = \"{}\"\n",
                fake.display()
            )));
            let _ = std::fs::remove_file(&log);
            let out = std::process::Command::new(&u.argv[0])
                .args(&u.argv[1..])
                .env_clear()
                .env("PATH", &tools)
                .envs(&u.env)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("not found"), "a tool is missing:\n{err}");
            (out, std::fs::read_to_string(&log).unwrap_or_default())
        };
        let (out, calls) = run("tiny:1b");
        assert!(out.status.success(), "{out:?}");
        let calls: Vec<&str> = calls.lines().collect();
        // The side server is started in the background, so its own log line may come
        // after the wrapper's first `list` (which waits for it).
        assert!(calls.contains(&"serve  @127.0.0.2:9000"), "{calls:?}");
        let at = |c: &str| calls.iter().position(|x| *x == c).unwrap();
        assert!(
            at("show tiny:1b @127.0.0.2:9000") < at("pull tiny:1b @127.0.0.2:9000"),
            "{calls:?}"
        );
        assert!(calls.contains(&"list  @127.0.0.2:9000"), "{calls:?}");
        assert!(calls.contains(&"show tiny:1b @127.0.0.2:9000"), "{calls:?}");
        assert!(calls.contains(&"pull tiny:1b @127.0.0.2:9000"), "{calls:?}");
        assert_eq!(calls.last(), Some(&"serve  @127.0.0.1:9000"), "{calls:?}");

        // A failed pull: no server on OLLAMA_HOST, Ollama's error as the last line.
        let (out, calls) = run("bad:tag");
        assert!(!out.status.success());
        assert!(!calls.contains("@127.0.0.1:9000"), "{calls}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.lines().last(),
            Some("cannot pull bad:tag: Error: pull model manifest: file does not exist"),
            "{err}"
        );
    }

    /// Under systemd an Ollama unit gets a PATH with the wrapper's tools (NixOS's
    /// system profile first), unless the model's `env` sets one; other kinds get
    /// none from llmvisor.
    #[test]
    fn an_ollama_unit_gets_a_path_for_its_wrapper() {
        let paths = |toml: &str| -> Vec<String> {
            render(&spec(toml))
                .properties
                .iter()
                .map(|p| p.value.to_string())
                .filter(|v| v.starts_with("PATH="))
                .collect()
        };
        assert_eq!(
            paths("[models.o]\nkind = \"ollama\"\nmodel = \"m:1b\"\nport = 9000\n"),
            [format!("PATH={UNIT_PATH}")]
        );
        assert!(UNIT_PATH.starts_with("/run/current-system/sw/bin:"));
        assert_eq!(
            paths(
                "[models.o]\nkind = \"ollama\"\nmodel = \"m:1b\"\nport = 9000\nenv = { PATH = \"/opt/bin\" }\n"
            ),
            ["PATH=/opt/bin"],
            "the model's own PATH is its env's, alone"
        );
        assert!(
            paths("[models.l]\nkind = \"llama-cpp\"\nmodel = \"/m/t.gguf\"\nport = 9001\n")
                .is_empty()
        );
    }

    #[test]
    fn llama_cpp_argv() {
        let u = render(&spec(
            "[models.l]\nkind = \"llama-cpp\"\nmodel = \"/m/tiny.gguf\"\nport = 9001\ncontext_length = 2048\nmax_concurrent = 4\nembeddings = true\nextra_args = [\"--pooling\", \"mean\"]\n",
        ));
        assert_eq!(
            u.argv.join(" "),
            "llama-server --model /m/tiny.gguf --host 127.0.0.1 --port 9001 --ctx-size 2048 --parallel 4 --alias l --embeddings --pooling mean"
        );
        // Defaults: no --ctx-size (the model's own), 16 slots, served_name as alias.
        let u = render(&spec(
            "[models.chat]\nkind = \"llama-cpp\"\nmodel = \"/m/tiny.gguf\"\nport = 9002\nserved_name = \"tiny\"\nexecutable = \"/opt/llama/llama-server\"\n",
        ));
        assert_eq!(
            u.argv.join(" "),
            "/opt/llama/llama-server --model /m/tiny.gguf --host 127.0.0.1 --port 9002 --parallel 16 --alias tiny"
        );
        assert!(!u.env.keys().any(|k| k.starts_with("OLLAMA_")));
    }

    #[test]
    fn command_placeholders_and_hash_changes_with_spec() {
        let a = render(&spec(
            "[models.m]\nkind = \"command\"\ncommand = [\"srv\", \"--port={port}\", \"{served_name}\"]\nport = 7000\nserved_name = \"x\"\n",
        ));
        assert_eq!(a.argv, ["srv", "--port=7000", "x"]);
        let d = render(&spec(
            "[models.m]\nkind = \"command\"\ncommand = [\"srv\", \"{served_name}-{port}\"]\nport = 7000\nserved_name = \"{name}\"\n",
        ));
        assert_eq!(
            d.argv,
            ["srv", "{name}-7000"],
            "values are not substituted again"
        );
        let b = render(&spec(
            "[models.m]\nkind = \"command\"\ncommand = [\"srv\", \"--port={port}\", \"{served_name}\"]\nport = 7001\nserved_name = \"x\"\n",
        ));
        assert_ne!(a.spec_hash, b.spec_hash);
        let c = render(&spec(
            "[models.m]\nkind = \"command\"\ncommand = [\"srv\", \"--port={port}\", \"{served_name}\"]\nport = 7000\nserved_name = \"x\"\nmax_queue = 3\n",
        ));
        // Gate settings do not change what runs, so they do not change the hash.
        assert_eq!(a.spec_hash, c.spec_hash);
    }
}
