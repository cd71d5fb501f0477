//! `[gpu]`, `[profiles.<name>]` and the GPU keys of a model: schema, checks and
//! resolved forms.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::problems::Problems;
use super::{ByteSize, HumanDuration, Kind, ModelConfig};

/// `[gpu]`: where GPU facts come from.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Declared GPUs for demos and tests on machines without one, e.g.
    /// `simulate = [{ name = "RTX 3090", memory = "24GiB" }]`. When set, NVML is not
    /// asked and every report says the GPUs are simulated.
    pub simulate: Vec<SimulatedGpu>,
    /// Skip NVML altogether (no GPU telemetry, no memory checks).
    pub disable_nvml: bool,
}

/// One simulated GPU.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedGpu {
    /// Product name shown in reports.
    pub name: String,
    /// Memory of the GPU.
    pub memory: ByteSize,
}

/// `gpus = [0, 1]` or `gpus = "any"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum GpuSelect {
    /// These device indices (nvidia-smi's numbering).
    List(Vec<u32>),
    /// Wherever there is room (the string `"any"`).
    Word(String),
}

impl Default for GpuSelect {
    fn default() -> Self {
        GpuSelect::List(Vec::new())
    }
}

/// What a model does when it has been idle for `idle_ttl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleAction {
    /// Stop the unit (the default).
    #[default]
    Stop,
    /// vLLM's sleep mode: `POST /sleep?level=1` frees GPU memory, `POST /wake_up`
    /// brings the weights back in well under a second.
    Sleep,
}

impl IdleAction {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            IdleAction::Stop => "stop",
            IdleAction::Sleep => "sleep",
        }
    }
}

/// A model's GPU needs, resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuNeed {
    /// Placed by llmvisor on any GPU(s) with room (`gpus = "any"`).
    pub any: bool,
    /// How many GPUs the model spans (`tensor_parallel`, else the pinned count, else 1
    /// for `any`; 0 for a model without GPUs).
    pub count: u32,
    /// Memory needed on each GPU it uses, in bytes.
    pub vram: Option<u64>,
    /// Eviction order: idle models of lower priority are stopped first.
    pub priority: i32,
    /// Stop or sleep when idle.
    pub idle_action: IdleAction,
    /// Floor of `max_concurrent` after out-of-memory restarts.
    pub min_concurrent: u32,
    /// Floor of vLLM's `--gpu-memory-utilization` after out-of-memory restarts.
    pub min_gpu_memory_utilization: f64,
}

/// `[profiles.<name>]`: when a set of models may run.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Daily windows in host local time, `"HH:MM-HH:MM"`; a window may cross
    /// midnight (`"06:00-02:00"`). Empty: only active when activated by hand.
    #[serde(default)]
    pub windows: Vec<String>,
    /// The models this profile allows while active.
    pub models: Vec<String>,
    /// Models to start when the profile becomes active: `true` for all of them, or
    /// a list.
    #[serde(default)]
    pub preload: Preload,
    /// While active, only this profile's models (and those of other active
    /// profiles) may run: the others are drained and stopped.
    #[serde(default)]
    pub exclusive: bool,
    /// How long in-flight requests of models being stopped by a switch may take.
    #[serde(default = "default_drain")]
    pub drain_timeout: HumanDuration,
}

fn default_drain() -> HumanDuration {
    HumanDuration::secs(300)
}

/// `preload = true` or `preload = ["a", "b"]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Preload {
    /// All or none of the profile's models.
    All(bool),
    /// These.
    List(Vec<String>),
}

impl Default for Preload {
    fn default() -> Self {
        Preload::All(false)
    }
}

/// A daily window in minutes after local midnight; `end <= start` crosses midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start, minutes after midnight (0..1440).
    pub start: u32,
    /// End, minutes after midnight (1..=1440).
    pub end: u32,
}

impl Window {
    /// Parse `"HH:MM-HH:MM"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a window like \"06:00-02:00\" (HH:MM-HH:MM, local time)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let hm = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start, end) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
        if start == 1440 {
            return Err(bad());
        }
        if start == end || (start == 0 && end == 1440) {
            return Err(format!(
                "`{s}` covers the whole day; leave the model out of every profile instead"
            ));
        }
        Ok(Self { start, end })
    }

    /// Whether minute-of-day `m` (0..1440) is inside.
    pub fn contains(&self, m: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }
}

/// A checked profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileSpec {
    /// Its name.
    pub name: String,
    /// Daily windows.
    pub windows: Vec<Window>,
    /// Allowed models (instance names).
    pub models: Vec<String>,
    /// Models started when it becomes active.
    pub preload: Vec<String>,
    /// Stops the models of no active profile.
    pub exclusive: bool,
    /// Drain time for models a switch stops.
    pub drain_timeout: std::time::Duration,
}

/// `[gpu]`, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSettings {
    /// Simulated GPUs (empty: ask NVML).
    pub simulate: Vec<(String, u64)>,
    /// Do not load NVML.
    pub disable_nvml: bool,
}

/// Check `[gpu]`.
pub(super) fn check_gpu(g: &GpuConfig, p: &mut Problems) -> GpuSettings {
    for (i, s) in g.simulate.iter().enumerate() {
        if s.name.trim().is_empty() {
            p.add(format!("gpu.simulate[{i}].name"), "cannot be empty");
        }
        if s.memory.0 == 0 {
            p.add(format!("gpu.simulate[{i}].memory"), "must be more than 0");
        }
    }
    GpuSettings {
        simulate: g
            .simulate
            .iter()
            .map(|s| (s.name.clone(), s.memory.0))
            .collect(),
        disable_nvml: g.disable_nvml,
    }
}

/// Check the GPU keys of one model; returns (pinned indices, need).
pub(super) fn check_model_gpu(
    name: &str,
    m: &ModelConfig,
    simulated: usize,
    p: &mut Problems,
) -> (Vec<u32>, GpuNeed) {
    let at = |key: &str| format!("models.{name}.{key}");
    let (pinned, any) = match &m.gpus {
        GpuSelect::List(l) => (l.clone(), false),
        GpuSelect::Word(w) if w == "any" => (Vec::new(), true),
        GpuSelect::Word(w) => {
            p.add(
                at("gpus"),
                format!("`{w}` is neither a list of GPU indices like [0, 1] nor \"any\""),
            );
            (Vec::new(), false)
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, g) in pinned.iter().enumerate() {
        if !seen.insert(g) {
            p.add(
                format!("models.{name}.gpus[{i}]"),
                format!("GPU {g} is listed twice"),
            );
        } else if simulated > 0 && *g as usize >= simulated {
            p.add(
                format!("models.{name}.gpus[{i}]"),
                format!("GPU {g} is not one of the {simulated} GPU(s) in gpu.simulate"),
            );
        }
    }
    if let (Some(a), Some(b)) = (m.tensor_parallel, m.tensor_parallel_size)
        && a != b
    {
        p.add(
            at("tensor_parallel"),
            format!("{a} differs from tensor_parallel_size ({b}); set one of them"),
        );
    }
    let tp = m.tensor_parallel.or(m.tensor_parallel_size);
    if m.tensor_parallel == Some(0) {
        p.add(at("tensor_parallel"), "must be at least 1");
    }
    if let Some(tp) = tp
        && !pinned.is_empty()
        && tp as usize != pinned.len()
    {
        let key = if m.tensor_parallel.is_some() {
            "tensor_parallel"
        } else {
            "tensor_parallel_size"
        };
        p.add(
            at(key),
            format!("{tp} does not match the {} GPU(s) in `gpus`", pinned.len()),
        );
    }
    let count = if any {
        tp.unwrap_or(1)
    } else {
        pinned.len() as u32
    };
    if any && simulated > 0 && count as usize > simulated {
        p.add(
            at("tensor_parallel"),
            format!("{count} GPUs asked for, but gpu.simulate declares {simulated}"),
        );
    }
    if let Some(v) = m.vram {
        if v.0 == 0 {
            p.add(at("vram"), "must be more than 0");
        }
        if count == 0 {
            p.add(
                at("vram"),
                "only means something with `gpus` (a list, or \"any\")",
            );
        }
    } else if any {
        p.add(
            at("vram"),
            "gpus = \"any\" needs `vram` (memory per GPU, e.g. \"18GiB\") to find a GPU with room",
        );
    }
    if m.idle_action == IdleAction::Sleep && !matches!(m.kind, Kind::Vllm | Kind::Command) {
        p.add(
            at("idle_action"),
            format!(
                "\"sleep\" needs vLLM's sleep mode (kind = \"vllm\", or a \"command\" that serves /sleep and /wake_up), not kind = \"{}\"",
                m.kind.as_str()
            ),
        );
    }
    let min_concurrent = m.min_concurrent.unwrap_or(1);
    if min_concurrent == 0 {
        p.add(at("min_concurrent"), "must be at least 1");
    } else if m.max_concurrent > 0 && min_concurrent > m.max_concurrent {
        p.add(
            at("min_concurrent"),
            format!(
                "{min_concurrent} is above max_concurrent ({})",
                m.max_concurrent
            ),
        );
    }
    let min_fraction = m.min_gpu_memory_utilization.unwrap_or(0.5);
    if !(min_fraction > 0.0 && min_fraction <= 1.0) {
        p.add(
            at("min_gpu_memory_utilization"),
            format!("{min_fraction} is not a fraction in (0, 1]"),
        );
    } else if m.kind != Kind::Vllm && m.min_gpu_memory_utilization.is_some() {
        p.add(
            at("min_gpu_memory_utilization"),
            format!(
                "only applies to kind = \"vllm\", not \"{}\"",
                m.kind.as_str()
            ),
        );
    }
    (
        pinned,
        GpuNeed {
            any,
            count,
            vram: m.vram.map(|v| v.0),
            priority: m.priority,
            idle_action: m.idle_action,
            min_concurrent: min_concurrent.max(1),
            min_gpu_memory_utilization: min_fraction,
        },
    )
}

/// Check `[profiles]` against the models.
pub(super) fn check_profiles(
    profiles: &BTreeMap<String, ProfileConfig>,
    models: &BTreeMap<String, ModelConfig>,
    p: &mut Problems,
) -> Vec<ProfileSpec> {
    let mut out = Vec::new();
    for (name, pc) in profiles {
        let at = |key: &str| format!("profiles.{name}.{key}");
        if super::problems::valid_instance_name(name).is_err() {
            p.add(
                format!("profiles.{name}"),
                "a profile name uses letters, digits, `.`, `_`, `-` and starts with a letter or digit",
            );
        }
        let mut windows = Vec::new();
        for (i, w) in pc.windows.iter().enumerate() {
            match Window::parse(w) {
                Ok(w) => windows.push(w),
                Err(e) => p.add(format!("profiles.{name}.windows[{i}]"), e),
            }
        }
        if pc.models.is_empty() {
            p.add(at("models"), "a profile needs at least one model");
        }
        for (i, m) in pc.models.iter().enumerate() {
            if !models.contains_key(m) {
                p.add(
                    format!("profiles.{name}.models[{i}]"),
                    format!("`{m}` is not a model (profiles name [models.<name>] instances)"),
                );
            }
        }
        let preload = match &pc.preload {
            Preload::All(true) => pc.models.clone(),
            Preload::All(false) => Vec::new(),
            Preload::List(l) => {
                for (i, m) in l.iter().enumerate() {
                    if !pc.models.contains(m) {
                        p.add(
                            format!("profiles.{name}.preload[{i}]"),
                            format!("`{m}` is not one of this profile's models"),
                        );
                    }
                }
                l.clone()
            }
        };
        out.push(ProfileSpec {
            name: name.clone(),
            windows,
            models: pc.models.clone(),
            preload,
            exclusive: pc.exclusive,
            drain_timeout: pc.drain_timeout.0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> crate::config::ModelSpec {
        crate::config::Config::parse_open(toml)
            .unwrap()
            .validate()
            .unwrap()
            .models
            .remove(0)
    }

    #[test]
    fn vllm_sleep_mode_tensor_parallel_and_pinning_by_uuid() {
        let mut s = spec(
            "[models.q]\nkind = \"vllm\"\nmodel = \"Qwen/Qwen2.5-72B-Instruct-AWQ\"\ngpus = [0, 1]\ntensor_parallel = 2\nvram = \"22GiB\"\nidle_action = \"sleep\"\n",
        );
        assert_eq!(s.gpu.count, 2);
        assert_eq!(s.gpu.vram, Some(22 << 30));
        let u = crate::units::render(&s);
        let argv = u.argv.join(" ");
        assert!(argv.contains("--tensor-parallel-size 2"), "{argv}");
        assert!(argv.contains("--enable-sleep-mode"), "{argv}");
        assert_eq!(u.env["VLLM_SERVER_DEV_MODE"], "1");
        assert_eq!(u.env["CUDA_VISIBLE_DEVICES"], "0,1");
        // As placement pins it on a host with NVML: UUIDs and device minors.
        s.limits.gpu_uuids = vec!["GPU-aaaa".into(), "GPU-bbbb".into()];
        s.limits.gpu_minors = vec![3, 4];
        let u = crate::units::render(&s);
        assert_eq!(u.env["CUDA_VISIBLE_DEVICES"], "GPU-aaaa,GPU-bbbb");
        let allow: Vec<_> = u
            .properties
            .iter()
            .filter(|p| p.name == "DeviceAllow")
            .map(|p| p.value.to_string())
            .collect();
        assert!(
            allow.iter().any(|a| a == "/dev/nvidia3 rw")
                && allow.iter().any(|a| a == "/dev/nvidia4 rw"),
            "{allow:?}"
        );
        assert!(!allow.iter().any(|a| a == "/dev/nvidia0 rw"), "{allow:?}");
    }

    #[test]
    fn gpu_keys_are_checked() {
        let cfg = crate::config::Config::parse_open(
            "[gpu]\nsimulate = [{ name = \"A\", memory = \"24GiB\" }]\n[models.a]\nkind = \"ollama\"\nmodel = \"x\"\ngpus = \"any\"\nidle_action = \"sleep\"\n[models.b]\nkind = \"command\"\ncommand = [\"x\"]\ngpus = [0, 3]\ntensor_parallel = 3\n[models.c]\nkind = \"command\"\ncommand = [\"x\"]\ngpus = \"some\"\n[profiles.p]\nwindows = [\"25:00-01:00\"]\nmodels = [\"nope\"]\npreload = [\"a\"]\n",
        )
        .unwrap();
        let ps: Vec<String> = cfg
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        for e in [
            "models.a.vram: gpus = \"any\" needs `vram`",
            "models.a.idle_action: \"sleep\" needs vLLM's sleep mode",
            "models.b.gpus[1]: GPU 3 is not one of the 1 GPU(s) in gpu.simulate",
            "models.b.tensor_parallel: 3 does not match the 2 GPU(s)",
            "models.c.gpus: `some` is neither",
            "profiles.p.windows[0]: `25:00-01:00` is not a window",
            "profiles.p.models[0]: `nope` is not a model",
            "profiles.p.preload[0]: `a` is not one of this profile's models",
        ] {
            assert!(
                ps.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {ps:#?}"
            );
        }
        assert_eq!(ps.len(), 8, "{ps:#?}");
    }

    #[test]
    fn windows() {
        let w = Window::parse("06:00-02:00").unwrap();
        assert!(w.contains(6 * 60));
        assert!(w.contains(23 * 60 + 59));
        assert!(w.contains(60));
        assert!(!w.contains(2 * 60));
        assert!(!w.contains(5 * 60 + 59));
        let n = Window::parse("02:00-06:00").unwrap();
        assert!(n.contains(120) && n.contains(359) && !n.contains(360) && !n.contains(119));
        assert_eq!(Window::parse("22:00-24:00").unwrap().end, 1440);
        assert!(Window::parse("6-2").is_err());
        assert!(Window::parse("25:00-02:00").is_err());
        assert!(Window::parse("03:00-03:00").is_err());
    }
}
