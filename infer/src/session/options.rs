//! How sessions are made: the device, intra-op threads and their pools, spinning, and the CUDA
//! provider's options.

use std::str::FromStr;

use ftu_formats::manifest::{ConvSearch, CudaSettings};

use super::RuntimeError;

/// Where a session's intra-op threads come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadPool {
    /// Each session its own pool (ONNX Runtime's default): an ensemble of n models on c cores
    /// has n × c intra-op threads, each pool idle between its own session's runs.
    #[default]
    PerSession,
    /// One pool for every session of the process (ONNX Runtime's global thread pools): c
    /// threads whatever the ensemble's size.
    Shared,
}

impl ThreadPool {
    pub fn name(self) -> &'static str {
        match self {
            ThreadPool::PerSession => "per-session",
            ThreadPool::Shared => "shared",
        }
    }
}

impl FromStr for ThreadPool {
    type Err = String;
    fn from_str(s: &str) -> Result<ThreadPool, String> {
        [ThreadPool::PerSession, ThreadPool::Shared]
            .into_iter()
            .find(|pool| pool.name() == s)
            .ok_or_else(|| format!("`{s}`: expected per-session or shared"))
    }
}

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl FromStr for Device {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Device, RuntimeError> {
        let bad = || RuntimeError::BadDevice(s.to_string());
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => {
                let id = other.strip_prefix("cuda:").ok_or_else(bad)?;
                id.parse::<i32>()
                    .ok()
                    .filter(|id| *id >= 0)
                    .map(Device::Cuda)
                    .ok_or_else(bad)
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

/// How sessions are made.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub device: Device,
    /// Run on the CPU when the CUDA provider cannot be registered, instead of failing.
    pub allow_cpu_fallback: bool,
    /// Intra-op threads per session; ONNX Runtime's default (one per core) when `None`.
    pub threads: Option<usize>,
    /// Whether idle intra-op threads spin before they sleep (`session.intra_op.allow_spinning`);
    /// when `None`, [`default_spinning`] for this machine.
    pub spinning: Option<bool>,
    /// One intra-op pool per session, or one for all. The first runtime loaded in a process
    /// decides (ONNX Runtime has one environment per process); a later one asking otherwise
    /// gets [`RuntimeError::ThreadPoolMismatch`].
    pub thread_pool: ThreadPool,
    /// The CUDA execution provider's options (with `Device::Cuda`).
    pub cuda: CudaSettings,
}

impl RuntimeOptions {
    /// Whether idle intra-op threads spin: as set, else [`default_spinning`] (`None`: ONNX
    /// Runtime's own default).
    pub(super) fn spinning_or_default(&self) -> Option<bool> {
        self.spinning.or_else(default_spinning)
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            device: Device::Cpu,
            allow_cpu_fallback: false,
            threads: None,
            spinning: None,
            thread_pool: ThreadPool::PerSession,
            cuda: CudaSettings::default(),
        }
    }
}

/// Spinning off on machines of at most 4 cores, ONNX Runtime's default (on) above. With every
/// core an intra-op thread, threads that spin between model runs take the cores the slide
/// reader and the pre- and post-processing need: on 2 cores, `predict` ran 1.18× faster with
/// spinning off (8 slides of 3000², two models at 768², flips; 5.53 against 4.67 slides/s,
/// medians of 4 alternating runs), the model stage itself included. Many-core machines were not
/// measured, so they keep ONNX Runtime's choice.
pub fn default_spinning() -> Option<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores <= 4).then_some(false)
}

/// ONNX Runtime's CUDA provider on `device`, with the options that are set.
pub(super) fn cuda_provider(device: i32, settings: &CudaSettings) -> ort::ep::CUDA {
    use ort::ep::cuda::ConvAlgorithmSearch;
    let mut cuda = ort::ep::CUDA::default().with_device_id(device);
    if let Some(search) = settings.conv_search {
        cuda = cuda.with_conv_algorithm_search(match search {
            ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
            ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
            ConvSearch::Default => ConvAlgorithmSearch::Default,
        });
    }
    if let Some(mib) = settings.memory_limit_mib {
        cuda = cuda.with_memory_limit(mib.saturating_mul(1 << 20));
    }
    if let Some(tf32) = settings.tf32 {
        cuda = cuda.with_tf32(tf32);
    }
    cuda
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_options_reach_the_provider_only_when_set() {
        let set = CudaSettings {
            conv_search: Some(ConvSearch::Heuristic),
            memory_limit_mib: Some(2),
            tf32: Some(false),
        };
        let shown = format!("{:?}", cuda_provider(1, &set));
        for want in [
            "\"device_id\": \"1\"",
            "\"cudnn_conv_algo_search\": \"HEURISTIC\"",
            "\"gpu_mem_limit\": \"2097152\"",
            "\"use_tf32\": \"false\"",
        ] {
            assert!(shown.contains(want), "{want} not in {shown}");
        }
        let shown = format!("{:?}", cuda_provider(0, &CudaSettings::default()));
        for absent in ["cudnn_conv_algo_search", "gpu_mem_limit", "use_tf32"] {
            assert!(!shown.contains(absent), "{absent} in {shown}");
        }
    }

    #[test]
    fn devices_parse_and_print_back() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }
}
