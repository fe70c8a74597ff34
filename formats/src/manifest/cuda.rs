//! `[cuda]`: the options of ONNX Runtime's CUDA execution provider a manifest may set.

/// Options of ONNX Runtime's CUDA execution provider; an unset one keeps ONNX Runtime's default
/// (exhaustive cuDNN convolution search, no arena limit, TF32 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaSettings {
    /// How cuDNN picks each convolution's algorithm (`cudnn_conv_algo_search`).
    pub conv_search: Option<ConvSearch>,
    /// The most device memory ONNX Runtime's arena takes, in MiB (`gpu_mem_limit`).
    pub memory_limit_mib: Option<usize>,
    /// Whether float32 convolutions and matmuls may use TF32 tensor cores (`use_tf32`).
    pub tf32: Option<bool>,
}

impl CudaSettings {
    /// These settings where set, `fallback`'s elsewhere (command-line flags over the manifest's).
    pub fn or(self, fallback: CudaSettings) -> CudaSettings {
        CudaSettings {
            conv_search: self.conv_search.or(fallback.conv_search),
            memory_limit_mib: self.memory_limit_mib.or(fallback.memory_limit_mib),
            tf32: self.tf32.or(fallback.tf32),
        }
    }
}

/// cuDNN's convolution algorithm choice: `exhaustive` benchmarks every algorithm once per input
/// shape (the fastest runs, a slower first batch), `heuristic` asks cuDNN's heuristics,
/// `default` takes the implicit-precomputed GEMM algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvSearch {
    Exhaustive,
    Heuristic,
    Default,
}

impl std::str::FromStr for ConvSearch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exhaustive" => Ok(ConvSearch::Exhaustive),
            "heuristic" => Ok(ConvSearch::Heuristic),
            "default" => Ok(ConvSearch::Default),
            _ => Err(format!("`{s}`: expected exhaustive, heuristic or default")),
        }
    }
}
