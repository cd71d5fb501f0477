//! GPUs: the inventory (NVML through nvml-wrapper, or GPUs declared in
//! `[gpu] simulate`), placement and eviction decisions (pure functions over a
//! snapshot), and recognising CUDA out-of-memory failures.
//!
//! Without an NVIDIA driver the inventory says so in one line and is empty; nothing
//! else depends on it being there.

pub mod nvml;
pub mod oom;
pub mod placement;

use serde::Serialize;

use crate::config::GpuSettings;

/// The line logged (once) and shown where GPU telemetry would be.
pub const NO_DRIVER: &str =
    "no NVIDIA driver: libnvidia-ml.so.1 could not be loaded — running without GPU telemetry";

/// A process on a GPU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuProcess {
    /// Its pid (0 for a simulated GPU's models).
    pub pid: u32,
    /// GPU memory it uses, when the driver says.
    pub used_memory: Option<u64>,
    /// The llmvisor model it belongs to, when known.
    pub model: Option<String>,
}

/// One GPU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuInfo {
    /// Device index (nvidia-smi's numbering).
    pub index: u32,
    /// `GPU-…` UUID (`SIMULATED-<index>` for simulated GPUs).
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Minor number of `/dev/nvidiaN`.
    pub minor: Option<u32>,
    /// Memory in bytes.
    pub memory_total: u64,
    /// Used memory in bytes.
    pub memory_used: u64,
    /// Free memory in bytes.
    pub memory_free: u64,
    /// GPU utilisation, percent.
    pub utilization_percent: Option<u32>,
    /// Temperature, °C.
    pub temperature_celsius: Option<u32>,
    /// Power draw, watts.
    pub power_watts: Option<f64>,
    /// Processes using it.
    pub processes: Vec<GpuProcess>,
    /// Declared in `[gpu] simulate`, not real.
    pub simulated: bool,
}

/// Where the inventory comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    /// The NVIDIA driver.
    Nvml {
        /// Driver version.
        driver_version: String,
    },
    /// `[gpu] simulate`.
    Simulated,
    /// No GPU telemetry.
    None {
        /// Why.
        reason: String,
    },
}

impl Source {
    /// Short name: `nvml`, `simulated`, `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Nvml { .. } => "nvml",
            Source::Simulated => "simulated",
            Source::None { .. } => "none",
        }
    }
}

/// One reading of every GPU.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Where it comes from.
    #[serde(flatten)]
    pub source: Source,
    /// The GPUs, by index.
    pub gpus: Vec<GpuInfo>,
    /// A reading that failed (the GPUs are those read before it).
    pub error: Option<String>,
}

enum Backend {
    Nvml(Box<nvml::NvmlInventory>),
    Simulated(Vec<(String, u64)>),
    None(String),
    /// Readings a test sets, standing in for NVML's (fleet tests: memory taken by
    /// processes outside llmvisor).
    #[cfg(test)]
    Fake(std::sync::Arc<std::sync::Mutex<Vec<GpuInfo>>>),
}

/// The GPU inventory of this host.
pub struct Inventory {
    backend: Backend,
}

impl Inventory {
    /// Open the inventory `[gpu]` asks for. Without a driver, logs [`NO_DRIVER`]
    /// once and carries on.
    pub fn open(settings: &GpuSettings) -> Self {
        let backend = if !settings.simulate.is_empty() {
            tracing::info!(
                "GPUs are simulated ([gpu] simulate): {}",
                settings
                    .simulate
                    .iter()
                    .enumerate()
                    .map(|(i, (n, m))| format!("GPU {i} {n} {}", human(*m)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Backend::Simulated(settings.simulate.clone())
        } else if settings.disable_nvml {
            Backend::None("NVML disabled ([gpu] disable_nvml = true)".into())
        } else {
            match nvml::NvmlInventory::open() {
                Ok(n) => {
                    tracing::info!("GPU telemetry from NVML (driver {})", n.driver_version());
                    Backend::Nvml(Box::new(n))
                }
                Err(nvml::OpenError::NoDriver) => {
                    tracing::warn!("{NO_DRIVER}");
                    Backend::None(NO_DRIVER.into())
                }
                Err(nvml::OpenError::Other(e)) => {
                    let line = format!(
                        "NVML could not be initialised ({e}) — running without GPU telemetry"
                    );
                    tracing::warn!("{line}");
                    Backend::None(line)
                }
            }
        };
        Self { backend }
    }

    /// An inventory of simulated GPUs (for tests).
    pub fn simulated(gpus: Vec<(String, u64)>) -> Self {
        Self {
            backend: Backend::Simulated(gpus),
        }
    }

    /// An inventory whose readings the test sets through the handle, as NVML would
    /// report them (not `simulated`: placement trusts their free memory).
    #[cfg(test)]
    pub(crate) fn fake_nvml(
        gpus: Vec<GpuInfo>,
    ) -> (Self, std::sync::Arc<std::sync::Mutex<Vec<GpuInfo>>>) {
        let handle = std::sync::Arc::new(std::sync::Mutex::new(gpus));
        (
            Self {
                backend: Backend::Fake(handle.clone()),
            },
            handle,
        )
    }

    /// Whether the GPUs are simulated.
    pub fn is_simulated(&self) -> bool {
        matches!(self.backend, Backend::Simulated(_))
    }

    /// Whether there is any inventory to place models with.
    pub fn available(&self) -> bool {
        !matches!(self.backend, Backend::None(_))
    }

    /// Where facts come from (`nvml`, `simulated`, `none`) and, without any, why;
    /// without reading the GPUs.
    pub fn describe(&self) -> (&'static str, Option<String>) {
        match &self.backend {
            Backend::Nvml(_) => ("nvml", None),
            Backend::Simulated(_) => ("simulated", None),
            Backend::None(r) => ("none", Some(r.clone())),
            #[cfg(test)]
            Backend::Fake(_) => ("nvml", None),
        }
    }

    /// Read every GPU now. Simulated GPUs show no usage here; the fleet adds what
    /// its models declared.
    pub fn snapshot(&self) -> Snapshot {
        match &self.backend {
            Backend::Nvml(n) => n.snapshot(),
            Backend::Simulated(list) => Snapshot {
                source: Source::Simulated,
                gpus: list
                    .iter()
                    .enumerate()
                    .map(|(i, (name, mem))| GpuInfo {
                        index: i as u32,
                        uuid: format!("SIMULATED-{i}"),
                        name: name.clone(),
                        minor: None,
                        memory_total: *mem,
                        memory_used: 0,
                        memory_free: *mem,
                        utilization_percent: None,
                        temperature_celsius: None,
                        power_watts: None,
                        processes: Vec::new(),
                        simulated: true,
                    })
                    .collect(),
                error: None,
            },
            Backend::None(reason) => Snapshot {
                source: Source::None {
                    reason: reason.clone(),
                },
                gpus: Vec::new(),
                error: None,
            },
            #[cfg(test)]
            Backend::Fake(gpus) => Snapshot {
                source: Source::Nvml {
                    driver_version: "fake".into(),
                },
                gpus: gpus.lock().unwrap().clone(),
                error: None,
            },
        }
    }
}

/// Bytes as `18 GiB`, `3.1 GiB`, `512 MiB`.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    let text = format!("{v:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(18 << 30), "18 GiB");
        assert_eq!(human((31 << 30) / 10), "3.1 GiB");
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(0), "0 B");
    }

    #[test]
    fn simulated_inventory() {
        let inv = Inventory::simulated(vec![("RTX 3090".into(), 24 << 30)]);
        let s = inv.snapshot();
        assert_eq!(s.source.as_str(), "simulated");
        assert_eq!(s.gpus[0].memory_free, 24 << 30);
        assert!(s.gpus[0].simulated);
    }

    /// On this machine's kind (no driver) the real path reports the one line; on a
    /// GPU host it reads real GPUs. Either way it must not panic.
    #[test]
    fn real_nvml_opens_or_says_why() {
        let inv = Inventory::open(&GpuSettings::default());
        let s = inv.snapshot();
        match &s.source {
            Source::Nvml { .. } => {
                for g in &s.gpus {
                    assert!(!g.uuid.is_empty() && g.memory_total > 0, "{g:?}");
                }
            }
            Source::None { reason } => {
                assert!(reason.contains("NVML") || reason == NO_DRIVER, "{reason}")
            }
            Source::Simulated => panic!("nothing was simulated"),
        }
    }
}
