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
            a.extend(spec.extra_args.iter().cloned());
            a
        }
        Backend::Ollama { .. } => {
            env.insert("OLLAMA_HOST".into(), format!("127.0.0.1:{port}"));
            // llmvisor decides when the model unloads, not Ollama's own timer.
            env.insert("OLLAMA_KEEP_ALIVE".into(), "-1".into());
            env.insert(
                "OLLAMA_NUM_PARALLEL".into(),
                spec.max_concurrent.to_string(),
            );
            if let Some(ctx) = spec.context_length {
                env.insert("OLLAMA_CONTEXT_LENGTH".into(), ctx.to_string());
            }
            let mut a = vec![exe("ollama"), "serve".into()];
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
    unit
}

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
    fn ollama_env_and_llama_cpp_argv() {
        let u = render(&spec(
            "[models.o]\nkind = \"ollama\"\nmodel = \"llama3.2:1b\"\nport = 9000\nmax_concurrent = 2\n",
        ));
        assert_eq!(u.argv, ["ollama", "serve"]);
        assert_eq!(u.env["OLLAMA_HOST"], "127.0.0.1:9000");
        assert_eq!(u.env["OLLAMA_NUM_PARALLEL"], "2");
        let u = render(&spec(
            "[models.l]\nkind = \"llama-cpp\"\nmodel = \"/m/tiny.gguf\"\nport = 9001\ncontext_length = 2048\nmax_concurrent = 4\nembeddings = true\n",
        ));
        assert_eq!(
            u.argv.join(" "),
            "llama-server --model /m/tiny.gguf --host 127.0.0.1 --port 9001 --ctx-size 2048 --parallel 4 --alias l --embeddings"
        );
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
