//! The ONNX Runtime options `predict`, `pseudo` and `inspect` share, and the ensemble loaded on
//! them with what it loaded said on stderr.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use ftu_formats::manifest::{ConvSearch, CudaSettings, Manifest};

use crate::engine::Engine;
use crate::session::{Device, Runtime, RuntimeOptions, ThreadPool};

#[derive(Args)]
pub struct RuntimeArgs {
    /// cpu, cuda or cuda:N (the CUDA execution provider needs onnxruntime-gpu).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// When CUDA cannot be used, run on the CPU (and say so) instead of failing.
    #[arg(long)]
    pub allow_cpu_fallback: bool,
    /// Intra-op threads per model (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Whether ONNX Runtime's idle threads spin before sleeping. Default: off on machines of at
    /// most 4 cores (it leaves them to the slide reader between model runs), on above.
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    pub spin: Option<bool>,
    /// `per-session`: each model its own intra-op pool (ONNX Runtime's default); `shared`: one
    /// pool for all the ensemble's models (`--threads` and `--spin` then set that pool).
    #[arg(long, value_name = "per-session|shared", default_value = "per-session")]
    pub thread_pool: ThreadPool,
    /// CUDA: how cuDNN picks convolution algorithms (over the manifest's `[cuda] conv_search`;
    /// ONNX Runtime's default: exhaustive).
    #[arg(long, value_name = "exhaustive|heuristic|default")]
    pub cuda_conv_search: Option<ConvSearch>,
    /// CUDA: the most device memory ONNX Runtime's arena takes, in MiB (over the manifest's
    /// `[cuda] memory_limit_mib`; default: no limit).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub cuda_memory_limit_mib: Option<u64>,
    /// CUDA: whether float32 convolutions and matmuls may use TF32 tensor cores (over the
    /// manifest's `[cuda] tf32`; ONNX Runtime's default: on).
    #[arg(long, value_name = "on|off", value_parser = parse_switch)]
    pub cuda_tf32: Option<bool>,
}

fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
    }
}

impl RuntimeArgs {
    pub fn load(&self) -> Result<Runtime> {
        self.load_with(CudaSettings::default())
    }

    /// With the manifest's `[cuda]` options where no flag sets them.
    pub fn load_with(&self, manifest_cuda: CudaSettings) -> Result<Runtime> {
        let device: Device = self.device.parse()?;
        let flags = CudaSettings {
            conv_search: self.cuda_conv_search,
            memory_limit_mib: self.cuda_memory_limit_mib.map(|m| m as usize),
            tf32: self.cuda_tf32,
        };
        let runtime = Runtime::load(RuntimeOptions {
            device,
            allow_cpu_fallback: self.allow_cpu_fallback,
            threads: self.threads,
            spinning: self.spin,
            thread_pool: self.thread_pool,
            cuda: flags.or(manifest_cuda),
        })?;
        Ok(runtime)
    }
}

/// The manifest's ensemble on the asked-for runtime, with what it loaded said on stderr.
pub fn load_engine(manifest: &Path, runtime: &RuntimeArgs) -> Result<(Engine, Runtime)> {
    load_engine_from(Manifest::load(manifest)?, runtime, false)
}

/// With `strict`, a manifest that contradicts what a model states is refused, not warned about.
pub fn load_engine_from(manifest: Manifest, runtime: &RuntimeArgs, strict: bool) -> Result<(Engine, Runtime)> {
    let runtime = runtime.load_with(manifest.cuda)?;
    eprintln!(
        "ONNX Runtime {} on {}",
        runtime.library.display(),
        runtime.options().device
    );
    let engine = Engine::load_checked(manifest, &runtime, strict)?;
    if let Some(note) = runtime.fallback() {
        eprintln!("warning: {note}");
    }
    for (spec, described, norm) in engine.described() {
        let from = match spec.norm {
            Some(_) => "the manifest's",
            None => "the model's ftu.norm",
        };
        eprintln!(
            "{}: {} ({}), norm {} ({from})",
            spec.field,
            spec.path.display(),
            described.summary(),
            crate::engine::describe::norm_name(norm, spec.channels)
        );
    }
    for w in engine.warnings() {
        eprintln!("warning: {w}");
    }
    let m = engine.manifest();
    eprintln!(
        "{} models in {} groups (sizes {}), TTA {} × {} scales",
        m.groups.iter().map(|g| g.models.len()).sum::<usize>(),
        m.groups.len(),
        m.groups
            .iter()
            .map(|g| g.size.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        m.tta.mode.as_str(),
        m.tta.scales.len()
    );
    Ok((engine, runtime))
}
