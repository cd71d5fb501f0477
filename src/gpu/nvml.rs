//! Reading GPUs through NVML (nvml-wrapper, which loads `libnvidia-ml.so.1` at run
//! time, so a host without the driver only loses telemetry).

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::{GpuInfo, GpuProcess, Snapshot, Source};

/// Why NVML could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The library is not there (no NVIDIA driver).
    NoDriver,
    /// It is there but failed.
    Other(String),
}

/// An open NVML handle.
pub struct NvmlInventory {
    nvml: Nvml,
    driver: String,
}

/// Where to look for the library: the loader's path first, then NixOS' driver
/// directory (a NixOS service does not have it on the loader path).
const LIBS: [&str; 2] = [
    "libnvidia-ml.so.1",
    "/run/opengl-driver/lib/libnvidia-ml.so.1",
];

impl NvmlInventory {
    /// Load and initialise NVML.
    pub fn open() -> Result<Self, OpenError> {
        let mut last = OpenError::NoDriver;
        for lib in LIBS {
            match Nvml::builder().lib_path(std::ffi::OsStr::new(lib)).init() {
                Ok(nvml) => {
                    let driver = nvml
                        .sys_driver_version()
                        .unwrap_or_else(|_| "unknown".into());
                    return Ok(Self { nvml, driver });
                }
                Err(NvmlError::LibloadingError(_)) => {}
                Err(NvmlError::DriverNotLoaded) => last = OpenError::NoDriver,
                Err(e) => last = OpenError::Other(e.to_string()),
            }
        }
        Err(last)
    }

    /// The driver version.
    pub fn driver_version(&self) -> &str {
        &self.driver
    }

    /// Read every GPU.
    pub fn snapshot(&self) -> Snapshot {
        let source = Source::Nvml {
            driver_version: self.driver.clone(),
        };
        let count = match self.nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                return Snapshot {
                    source,
                    gpus: Vec::new(),
                    error: Some(format!("cannot count GPUs: {e}")),
                };
            }
        };
        let mut gpus = Vec::new();
        let mut error = None;
        for index in 0..count {
            match self.read(index) {
                Ok(g) => gpus.push(g),
                Err(e) => {
                    error = Some(format!("GPU {index}: {e}"));
                }
            }
        }
        Snapshot {
            source,
            gpus,
            error,
        }
    }

    fn read(&self, index: u32) -> Result<GpuInfo, NvmlError> {
        let d = self.nvml.device_by_index(index)?;
        let mem = d.memory_info()?;
        let mut processes: Vec<GpuProcess> = Vec::new();
        for p in d
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .chain(d.running_graphics_processes().unwrap_or_default())
        {
            if processes.iter().any(|q| q.pid == p.pid) {
                continue;
            }
            processes.push(GpuProcess {
                pid: p.pid,
                used_memory: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
                model: None,
            });
        }
        Ok(GpuInfo {
            index,
            uuid: d.uuid()?,
            name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
            minor: d.minor_number().ok(),
            memory_total: mem.total,
            memory_used: mem.used,
            memory_free: mem.free,
            utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
            temperature_celsius: d.temperature(TemperatureSensor::Gpu).ok(),
            power_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            processes,
            simulated: false,
        })
    }
}
