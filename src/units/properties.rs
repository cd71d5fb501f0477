//! The properties of a model's transient systemd unit, in systemd's own unit-file
//! syntax: what `llmvisor render-unit` prints, what `systemd-run -p` takes and what
//! `systemctl show` reports back. Sandboxing is on by default; every relaxation is a
//! per-model key (`allow_network`, `dynamic_user`).

use std::time::Duration;

use crate::config::ModelSpec;

use super::UnitSpec;

/// The slice every model unit runs in (the NixOS module caps its memory).
pub const SLICE: &str = "llmvisor.slice";

/// NVIDIA control nodes every GPU process needs, besides its `/dev/nvidiaN`.
const NVIDIA_CONTROL: [&str; 4] = [
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];

/// One property: `Name=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Property {
    /// systemd's property name.
    pub name: &'static str,
    /// The value in unit-file syntax.
    pub value: String,
}

fn prop(name: &'static str, value: impl Into<String>) -> Property {
    Property {
        name,
        value: value.into(),
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Every property of the model's unit, in a stable order. `ExecStart` is last; the
/// environment comes as one `Environment` property per variable.
pub fn properties(spec: &ModelSpec, unit: &UnitSpec) -> Vec<Property> {
    let l = &spec.limits;
    let state = format!("llmvisor/models/{}", spec.name);
    let mut p = vec![
        prop("Description", unit.description.clone()),
        prop("Slice", SLICE),
        // `exec`: a missing or unexecutable program fails the start job itself.
        prop("Type", "exec"),
    ];
    for (k, v) in &unit.env {
        p.push(prop("Environment", format!("{k}={v}")));
    }
    // Where model weights and caches live, writable under ProtectSystem=strict.
    p.push(prop("StateDirectory", state.clone()));
    p.push(prop("CacheDirectory", state.clone()));
    p.push(prop("Environment", format!("HOME=/var/lib/{state}")));
    p.push(prop(
        "Environment",
        format!("HF_HOME=/var/cache/{state}/huggingface"),
    ));

    // Resources
    if let Some(m) = l.memory_max {
        p.push(prop("MemoryMax", m.to_string()));
    }
    if let Some(m) = l.memory_high {
        p.push(prop("MemoryHigh", m.to_string()));
    }
    if let Some(q) = l.cpu_quota_percent {
        p.push(prop("CPUQuota", format!("{q}%")));
    }
    if let Some(c) = &l.allowed_cpus {
        p.push(prop("AllowedCPUs", c.as_str()));
        // The processes' own affinity too: AllowedCPUs= (a cpuset) needs the unified
        // cgroup hierarchy, CPUAffinity= holds on any (tests/system_limits.rs).
        p.push(prop("CPUAffinity", c.as_str()));
    }
    if let Some(t) = l.tasks_max {
        p.push(prop("TasksMax", t.to_string()));
    }
    if let Some(w) = l.io_weight {
        p.push(prop("IOWeight", w.to_string()));
    }

    // Device access: nothing but the pinned GPUs and what the driver needs.
    p.push(prop("DevicePolicy", "closed"));
    if l.gpus.is_empty() && !spec.gpu.any {
        // No GPU: a private /dev with only the pseudo devices (null, zero,
        // random, tty, shm), so not even the nodes' names are there.
        p.push(prop("PrivateDevices", "yes"));
    }
    if !l.gpus.is_empty() {
        // The device node's number is the GPU's minor number, which NVML reports;
        // without NVML it is taken to be the index.
        let nodes = if l.gpu_minors.len() == l.gpus.len() {
            &l.gpu_minors
        } else {
            &l.gpus
        };
        for g in nodes {
            p.push(prop("DeviceAllow", format!("/dev/nvidia{g} rw")));
        }
        for node in NVIDIA_CONTROL {
            p.push(prop("DeviceAllow", format!("{node} rw")));
        }
        p.push(prop("DeviceAllow", "char-nvidia-caps r"));
    }

    // Identity and file system
    p.push(prop(
        "DynamicUser",
        if l.dynamic_user { "yes" } else { "no" },
    ));
    p.push(prop("ProtectSystem", "strict"));
    p.push(prop("ProtectHome", "yes"));
    p.push(prop("PrivateTmp", "yes"));
    p.push(prop("PrivateMounts", "yes"));
    p.push(prop("ProtectProc", "invisible"));
    // ProcSubset=pid stays off: vLLM reads /proc/meminfo (psutil) to size its cache.
    p.push(prop("UMask", "0077"));

    // Capabilities and privileges
    p.push(prop("NoNewPrivileges", "yes"));
    p.push(prop("CapabilityBoundingSet", ""));
    p.push(prop("RestrictSUIDSGID", "yes"));
    p.push(prop("LockPersonality", "yes"));
    p.push(prop("RestrictRealtime", "yes"));
    p.push(prop("RestrictNamespaces", "yes"));
    // MemoryDenyWriteExecute stays off: PyTorch, Triton and llama.cpp JIT code.

    // Kernel protection
    p.push(prop("ProtectKernelTunables", "yes"));
    p.push(prop("ProtectKernelModules", "yes"));
    p.push(prop("ProtectKernelLogs", "yes"));
    p.push(prop("ProtectControlGroups", "yes"));
    p.push(prop("ProtectClock", "yes"));
    p.push(prop("ProtectHostname", "yes"));
    p.push(prop("SystemCallArchitectures", "native"));
    p.push(prop("SystemCallFilter", "@system-service"));

    // Network: loopback only unless the model may fetch weights. AF_NETLINK is
    // needed by NCCL and psutil to list interfaces.
    p.push(prop(
        "RestrictAddressFamilies",
        "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ));
    if !l.allow_network {
        p.push(prop("IPAddressDeny", "any"));
        p.push(prop("IPAddressAllow", "localhost"));
    }

    // Stopping
    p.push(prop("KillMode", "mixed"));
    p.push(prop("TimeoutStopSec", seconds(spec.stop_timeout)));
    // Failed units stay until the next start resets them, so their exit status
    // and journal can still be read (and `systemctl status` shows them).
    p.push(prop("CollectMode", "inactive"));
    // After the main process has ended, while the unit's cgroup is still there:
    // the kernel's OOM-kill count for llmvisor's exit report (systemd cannot see
    // OOM kills on cgroup v1). `-`: its failure never fails the unit.
    if let Some(argv) = super::oom_report::command() {
        p.push(prop("ExecStopPost", format!("-{}", shell_join(&argv))));
    }
    p.push(prop("ExecStart", shell_join(&unit.argv)));
    p
}

/// Quote one word for a POSIX shell (and for systemd's `ExecStart=` parser, which
/// accepts the same single quotes).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `systemd-run` command line that starts the same unit by hand.
pub fn systemd_run(unit: &UnitSpec) -> String {
    let mut out = vec!["systemd-run".to_string(), format!("--unit={}", unit.unit)];
    for p in &unit.properties {
        if p.name == "ExecStart" {
            continue;
        }
        out.push("-p".into());
        out.push(shell_quote(&format!("{}={}", p.name, p.value)));
    }
    out.push("--".into());
    out.extend(unit.argv.iter().map(|a| shell_quote(a)));
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::units::render;

    fn rendered(toml: &str) -> (ModelSpec, UnitSpec) {
        let spec = Config::parse_open(toml)
            .unwrap()
            .validate()
            .unwrap()
            .models
            .remove(0);
        let unit = render(&spec);
        (spec, unit)
    }

    fn values<'a>(props: &'a [Property], name: &str) -> Vec<&'a str> {
        props
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.value.as_str())
            .collect()
    }

    #[test]
    fn gpu_model_is_pinned_limited_and_sandboxed() {
        let (spec, unit) = rendered(
            r#"[models.big]
            kind = "vllm"
            model = "Qwen/Qwen2.5-72B-Instruct-AWQ"
            port = 8001
            gpus = [0, 1]
            tensor_parallel_size = 2
            memory_max = "64GiB"
            memory_high = "60GiB"
            cpu_quota = "800%"
            allowed_cpus = "0-7"
            tasks_max = 4096
            io_weight = 200"#,
        );
        let p = properties(&spec, &unit);
        assert_eq!(values(&p, "Slice"), ["llmvisor.slice"]);
        assert_eq!(
            values(&p, "Description"),
            ["llmvisor model big (vllm, GPU 0,1)"]
        );
        assert_eq!(values(&p, "MemoryMax"), ["68719476736"]);
        assert_eq!(values(&p, "MemoryHigh"), ["64424509440"]);
        assert_eq!(values(&p, "CPUQuota"), ["800%"]);
        assert_eq!(values(&p, "AllowedCPUs"), ["0-7"]);
        assert_eq!(values(&p, "CPUAffinity"), ["0-7"]);
        assert_eq!(values(&p, "TasksMax"), ["4096"]);
        assert_eq!(values(&p, "IOWeight"), ["200"]);
        assert_eq!(values(&p, "DevicePolicy"), ["closed"]);
        assert!(values(&p, "PrivateDevices").is_empty());
        assert_eq!(
            values(&p, "DeviceAllow"),
            [
                "/dev/nvidia0 rw",
                "/dev/nvidia1 rw",
                "/dev/nvidiactl rw",
                "/dev/nvidia-uvm rw",
                "/dev/nvidia-uvm-tools rw",
                "/dev/nvidia-modeset rw",
                "char-nvidia-caps r"
            ]
        );
        let env = values(&p, "Environment");
        assert!(env.contains(&"CUDA_VISIBLE_DEVICES=0,1"), "{env:?}");
        assert!(env.contains(&"CUDA_DEVICE_ORDER=PCI_BUS_ID"), "{env:?}");
        assert!(env.iter().any(|e| e.starts_with("LLMVISOR_SPEC_HASH=")));
        assert_eq!(values(&p, "DynamicUser"), ["yes"]);
        assert_eq!(values(&p, "CapabilityBoundingSet"), [""]);
        assert_eq!(values(&p, "IPAddressDeny"), ["any"]);
        assert_eq!(values(&p, "IPAddressAllow"), ["localhost"]);
        assert_eq!(values(&p, "KillMode"), ["mixed"]);
        assert_eq!(values(&p, "TimeoutStopSec"), ["30s"]);
        assert_eq!(values(&p, "CollectMode"), ["inactive"]);
        let post = values(&p, "ExecStopPost");
        assert!(
            post.len() == 1 && post[0].starts_with('-') && post[0].ends_with(" exit-report"),
            "{post:?}"
        );
        assert_eq!(p.last().unwrap().name, "ExecStart");
    }

    #[test]
    fn relaxations_and_a_cpu_model() {
        let (spec, unit) = rendered(
            "[models.tiny]\nkind = \"llama-cpp\"\nmodel = \"/m/tiny.gguf\"\nport = 9000\nallow_network = true\ndynamic_user = false\n",
        );
        let p = properties(&spec, &unit);
        assert!(values(&p, "IPAddressDeny").is_empty());
        assert_eq!(values(&p, "DynamicUser"), ["no"]);
        // No GPUs: the device policy stays closed with nothing allowed, in a
        // private /dev.
        assert_eq!(values(&p, "DevicePolicy"), ["closed"]);
        assert!(values(&p, "DeviceAllow").is_empty());
        assert_eq!(values(&p, "PrivateDevices"), ["yes"]);
        assert!(
            !values(&p, "Environment")
                .iter()
                .any(|e| e.starts_with("CUDA_VISIBLE_DEVICES"))
        );
    }

    #[test]
    fn systemd_run_line_quotes_what_needs_quoting() {
        let (_, unit) = rendered(
            r#"[models.m]
            kind = "command"
            command = ["srv", "--port", "{port}", "--json", '{"a": 1}', "it's"]
            port = 7000"#,
        );
        let line = systemd_run(&unit);
        assert!(
            line.starts_with("systemd-run --unit=llmvisor-model-m.service -p "),
            "{line}"
        );
        assert!(line.contains("-p Slice=llmvisor.slice"), "{line}");
        assert!(
            line.contains("-p 'Description=llmvisor model m (command)'"),
            "{line}"
        );
        assert!(
            line.ends_with(r#"-- srv --port 7000 --json '{"a": 1}' 'it'\''s'"#),
            "{line}"
        );
    }
}
