//! The properties of a model's transient systemd unit, typed once: each renders to
//! systemd's unit-file syntax (what `llmvisor render-unit` prints, what `systemd-run
//! -p` takes and what `systemctl show` reports back) and to the D-Bus value
//! `StartTransientUnit` takes, from the same value — nothing is parsed back from text.
//! Sandboxing is on by default; every relaxation is a per-model key (`allow_network`,
//! `dynamic_user`).
//!
//! The D-Bus signatures follow systemd's `org.freedesktop.systemd1(5)` and were
//! checked against systemd 252 in the system tests' container (tests/system_limits.rs
//! reads them back with `systemctl show`).

use std::fmt;
use std::time::Duration;

use zbus::zvariant::{OwnedValue, Value as DbusValue};

use crate::config::{CpuList, ModelSpec};

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

/// Which addresses an `IPAddressAllow=`/`IPAddressDeny=` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// `any`: 0.0.0.0/0 and ::/0.
    Any,
    /// `localhost`: 127.0.0.0/8 and ::1/128.
    Localhost,
}

/// A property's value, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string as written (`Description`, `Slice`, `Type`, `KillMode`, …).
    Str(String),
    /// `yes` / `no`.
    Bool(bool),
    /// A number: bytes (`MemoryMax`), a count (`TasksMax`) or a weight (`IOWeight`).
    U64(u64),
    /// `CPUQuota=N%`; on D-Bus `CPUQuotaPerSecUSec` (N × 10 ms per second).
    Percent(u32),
    /// A CPU list (`AllowedCPUs`, `CPUAffinity`); on D-Bus a bit mask.
    Cpus(CpuList),
    /// An octal mode (`UMask=0077`).
    Mode(u32),
    /// A time span (`TimeoutStopSec`); on D-Bus `TimeoutStopUSec` in µs.
    Span(Duration),
    /// One variable of `Environment=`; all of them are one `as` on D-Bus.
    Env(String, String),
    /// One item of a list property (`StateDirectory=`, `CacheDirectory=`).
    Item(String),
    /// One `DeviceAllow=` entry; all of them are one `a(ss)` on D-Bus.
    Device {
        /// A node path or a `char-…` group.
        node: String,
        /// `r`, `w`, `m` letters.
        perms: &'static str,
    },
    /// A flag word that is empty: the empty capability bounding set (written ``)
    /// and no namespaces (`RestrictNamespaces=yes`). On D-Bus the word `0`.
    NoFlags(&'static str),
    /// Words (`SystemCallArchitectures=native`); on D-Bus `as`.
    Words(Vec<String>),
    /// An allow-list (`SystemCallFilter`, `RestrictAddressFamilies`); on D-Bus `(bas)`.
    AllowList(Vec<String>),
    /// `IPAddressAllow`/`IPAddressDeny`; on D-Bus `a(iayu)`.
    Addresses(Addresses),
    /// `ExecStart=`: the argv, shell-quoted in text; on D-Bus `a(sasb)`.
    Exec(Vec<String>),
    /// `ExecStopPost=-…`: an argv whose failure does not fail the unit (the `-`
    /// prefix in text, the `b` of `a(sasb)` on D-Bus).
    ExecIgnoringFailure(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) | Value::Item(s) => f.write_str(s),
            Value::Bool(b) => f.write_str(if *b { "yes" } else { "no" }),
            Value::U64(n) => write!(f, "{n}"),
            Value::Percent(p) => write!(f, "{p}%"),
            Value::Cpus(c) => write!(f, "{c}"),
            Value::Mode(m) => write!(f, "{m:04o}"),
            Value::Span(d) if d.subsec_millis() == 0 => write!(f, "{}s", d.as_secs()),
            Value::Span(d) => write!(f, "{}ms", d.as_millis()),
            Value::Env(k, v) => write!(f, "{k}={v}"),
            Value::Device { node, perms } => write!(f, "{node} {perms}"),
            Value::NoFlags(text) => f.write_str(text),
            Value::Words(w) | Value::AllowList(w) => f.write_str(&w.join(" ")),
            Value::Addresses(Addresses::Any) => f.write_str("any"),
            Value::Addresses(Addresses::Localhost) => f.write_str("localhost"),
            Value::Exec(argv) => f.write_str(&shell_join(argv)),
            Value::ExecIgnoringFailure(argv) => write!(f, "-{}", shell_join(argv)),
        }
    }
}

/// One property: `Name=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Property {
    /// systemd's property name in unit files.
    pub name: &'static str,
    /// The value.
    pub value: Value,
}

/// How a property travels in `StartTransientUnit`.
pub enum Dbus {
    /// A property of its own: (D-Bus name, value).
    One(&'static str, OwnedValue),
    /// An item of an `as` list property (`Environment`, `StateDirectory`, …).
    ListItem(&'static str, String),
    /// An entry of `DeviceAllow`'s `a(ss)`.
    Device(String, String),
}

fn owned(value: DbusValue<'static>) -> OwnedValue {
    OwnedValue::try_from(value).expect("plain values hold no file descriptors")
}

impl Property {
    /// The property in `StartTransientUnit`'s terms.
    pub fn dbus(&self) -> Dbus {
        let name = self.name;
        let one = |value: DbusValue<'static>| Dbus::One(name, owned(value));
        match &self.value {
            Value::Str(s) => one(DbusValue::from(s.clone())),
            Value::Bool(b) => one(DbusValue::from(*b)),
            Value::U64(n) => one(DbusValue::from(*n)),
            Value::Percent(p) => Dbus::One(
                "CPUQuotaPerSecUSec",
                owned(DbusValue::from(u64::from(*p) * 10_000)),
            ),
            Value::Cpus(c) => one(DbusValue::from(c.mask())),
            Value::Mode(m) => one(DbusValue::from(*m)),
            Value::Span(d) => Dbus::One(
                match name {
                    "TimeoutStopSec" => "TimeoutStopUSec",
                    "TimeoutStartSec" => "TimeoutStartUSec",
                    other => other,
                },
                owned(DbusValue::from(d.as_micros() as u64)),
            ),
            Value::Env(k, v) => Dbus::ListItem(name, format!("{k}={v}")),
            Value::Item(s) => Dbus::ListItem(name, s.clone()),
            Value::Device { node, perms } => Dbus::Device(node.clone(), perms.to_string()),
            Value::NoFlags(_) => one(DbusValue::from(0u64)),
            Value::Words(w) => one(DbusValue::from(w.clone())),
            Value::AllowList(w) => one(DbusValue::from((true, w.clone()))),
            Value::Addresses(a) => {
                // AF_INET = 2, AF_INET6 = 10.
                let addrs: Vec<(i32, Vec<u8>, u32)> = match a {
                    Addresses::Any => vec![(2, vec![0; 4], 0), (10, vec![0; 16], 0)],
                    Addresses::Localhost => {
                        let mut v6 = vec![0u8; 16];
                        v6[15] = 1;
                        vec![(2, vec![127, 0, 0, 0], 8), (10, v6, 128)]
                    }
                };
                one(DbusValue::from(addrs))
            }
            Value::Exec(argv) => one(DbusValue::from(vec![(
                argv.first().cloned().unwrap_or_default(),
                argv.clone(),
                false,
            )])),
            Value::ExecIgnoringFailure(argv) => one(DbusValue::from(vec![(
                argv.first().cloned().unwrap_or_default(),
                argv.clone(),
                true,
            )])),
        }
    }
}

fn prop(name: &'static str, value: Value) -> Property {
    Property { name, value }
}

fn text(name: &'static str, value: &str) -> Property {
    prop(name, Value::Str(value.to_string()))
}

fn flag(name: &'static str, on: bool) -> Property {
    prop(name, Value::Bool(on))
}

fn env(key: &str, value: impl Into<String>) -> Property {
    prop("Environment", Value::Env(key.to_string(), value.into()))
}

fn words(list: &str) -> Vec<String> {
    list.split_whitespace().map(str::to_string).collect()
}

/// Every property of the model's unit, in a stable order. `ExecStart` is last; the
/// environment comes as one `Environment` property per variable.
pub fn properties(spec: &ModelSpec, unit: &UnitSpec) -> Vec<Property> {
    let l = &spec.limits;
    let state = format!("llmvisor/models/{}", spec.name);
    let mut p = vec![
        text("Description", &unit.description),
        text("Slice", SLICE),
        // `exec`: a missing or unexecutable program fails the start job itself.
        text("Type", "exec"),
    ];
    for (k, v) in &unit.env {
        p.push(env(k, v.clone()));
    }
    // Where model weights and caches live, writable under ProtectSystem=strict.
    p.push(prop("StateDirectory", Value::Item(state.clone())));
    p.push(prop("CacheDirectory", Value::Item(state.clone())));
    p.push(env("HOME", format!("/var/lib/{state}")));
    p.push(env("HF_HOME", format!("/var/cache/{state}/huggingface")));

    // Resources
    if let Some(m) = l.memory_max {
        p.push(prop("MemoryMax", Value::U64(m)));
    }
    if let Some(m) = l.memory_high {
        p.push(prop("MemoryHigh", Value::U64(m)));
    }
    if let Some(q) = l.cpu_quota_percent {
        p.push(prop("CPUQuota", Value::Percent(q)));
    }
    if let Some(c) = &l.allowed_cpus {
        p.push(prop("AllowedCPUs", Value::Cpus(c.clone())));
        // The processes' own affinity too: AllowedCPUs= (a cpuset) needs the unified
        // cgroup hierarchy, CPUAffinity= holds on any (tests/system_limits.rs).
        p.push(prop("CPUAffinity", Value::Cpus(c.clone())));
    }
    if let Some(t) = l.tasks_max {
        p.push(prop("TasksMax", Value::U64(t)));
    }
    if let Some(w) = l.io_weight {
        p.push(prop("IOWeight", Value::U64(u64::from(w))));
    }

    // Device access: nothing but the pinned GPUs and what the driver needs.
    p.push(text("DevicePolicy", "closed"));
    if l.gpus.is_empty() && !spec.gpu.any {
        // No GPU: a private /dev with only the pseudo devices (null, zero,
        // random, tty, shm), so not even the nodes' names are there.
        p.push(flag("PrivateDevices", true));
    }
    if !l.gpus.is_empty() {
        // The device node's number is the GPU's minor number, which NVML reports;
        // without NVML it is taken to be the index.
        let nodes = if l.gpu_minors.len() == l.gpus.len() {
            &l.gpu_minors
        } else {
            &l.gpus
        };
        let device = |node: String, perms| prop("DeviceAllow", Value::Device { node, perms });
        for g in nodes {
            p.push(device(format!("/dev/nvidia{g}"), "rw"));
        }
        for node in NVIDIA_CONTROL {
            p.push(device(node.to_string(), "rw"));
        }
        p.push(device("char-nvidia-caps".to_string(), "r"));
    }

    // Identity and file system
    p.push(flag("DynamicUser", l.dynamic_user));
    p.push(text("ProtectSystem", "strict"));
    p.push(text("ProtectHome", "yes"));
    p.push(flag("PrivateTmp", true));
    p.push(flag("PrivateMounts", true));
    p.push(text("ProtectProc", "invisible"));
    // ProcSubset=pid stays off: vLLM reads /proc/meminfo (psutil) to size its cache.
    p.push(prop("UMask", Value::Mode(0o077)));

    // Capabilities and privileges
    p.push(flag("NoNewPrivileges", true));
    p.push(prop("CapabilityBoundingSet", Value::NoFlags("")));
    p.push(flag("RestrictSUIDSGID", true));
    p.push(flag("LockPersonality", true));
    p.push(flag("RestrictRealtime", true));
    p.push(prop("RestrictNamespaces", Value::NoFlags("yes")));
    // MemoryDenyWriteExecute stays off: PyTorch, Triton and llama.cpp JIT code.

    // Kernel protection
    for name in [
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
    ] {
        p.push(flag(name, true));
    }
    p.push(prop(
        "SystemCallArchitectures",
        Value::Words(words("native")),
    ));
    p.push(prop(
        "SystemCallFilter",
        Value::AllowList(words("@system-service")),
    ));

    // Network: loopback only unless the model may fetch weights. AF_NETLINK is
    // needed by NCCL and psutil to list interfaces.
    p.push(prop(
        "RestrictAddressFamilies",
        Value::AllowList(words("AF_UNIX AF_INET AF_INET6 AF_NETLINK")),
    ));
    if !l.allow_network {
        p.push(prop("IPAddressDeny", Value::Addresses(Addresses::Any)));
        p.push(prop(
            "IPAddressAllow",
            Value::Addresses(Addresses::Localhost),
        ));
    }

    // Stopping
    p.push(text("KillMode", "mixed"));
    p.push(prop("TimeoutStopSec", Value::Span(spec.stop_timeout)));
    // Failed units stay until the next start resets them, so their exit status
    // and journal can still be read (and `systemctl status` shows them).
    p.push(text("CollectMode", "inactive"));
    // After the main process has ended, while the unit's cgroup is still there:
    // the kernel's OOM-kill count for llmvisor's exit report (systemd cannot see
    // OOM kills on cgroup v1). `-`: its failure never fails the unit.
    if let Some(argv) = super::oom_report::command() {
        p.push(prop("ExecStopPost", Value::ExecIgnoringFailure(argv)));
    }
    p.push(prop("ExecStart", Value::Exec(unit.argv.clone())));
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

    fn values(props: &[Property], name: &str) -> Vec<String> {
        props
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.value.to_string())
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
        assert!(
            env.iter().any(|e| e == "CUDA_VISIBLE_DEVICES=0,1"),
            "{env:?}"
        );
        assert!(
            env.iter().any(|e| e == "CUDA_DEVICE_ORDER=PCI_BUS_ID"),
            "{env:?}"
        );
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
