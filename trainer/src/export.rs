//! `ftu-train export`: builds an architecture by name, fills it from a pretrained encoder file or
//! an ftu checkpoint, and writes the whole network (or the encoder alone) as ONNX.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ftu_models::weights::{self, LoadReport, Scope};
use ftu_models::{Arch, ArchConfig, ExportMeta, Segmenter};

#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub arch: Arch,
    pub config: ArchConfig,
    /// A timm / Hugging Face safetensors file for the encoder.
    pub weights: Option<PathBuf>,
    /// Skip (rather than refuse) the classifier keys of `weights`.
    pub ignore_classifier: bool,
    /// An ftu checkpoint (safetensors of every parameter and buffer).
    pub checkpoint: Option<PathBuf>,
    pub encoder_only: bool,
    /// Store the weights and run the graph in float16; inputs and outputs stay float32.
    pub fp16: bool,
    pub seed: u64,
    pub meta: ExportMeta,
    pub out: PathBuf,
}

#[derive(Debug)]
pub struct ExportSummary {
    pub parameters: usize,
    pub loaded: Vec<(PathBuf, LoadReport)>,
    pub outputs: Vec<String>,
    /// What the float16 conversion did, when asked.
    pub fp16: Option<ftu_onnx::Fp16Report>,
}

fn load(model: &Segmenter, path: &Path, scope: Scope) -> Result<LoadReport> {
    weights::load(model, path, scope).with_context(|| format!("loading {}", path.display()))
}

pub fn export(request: &ExportRequest) -> Result<ExportSummary> {
    let model = Segmenter::new(request.arch, request.config.clone(), request.seed)
        .with_context(|| format!("building {}", request.arch))?;
    let mut loaded = Vec::new();
    if let Some(path) = &request.weights {
        let scope = Scope::Encoder {
            ignore_classifier: request.ignore_classifier,
        };
        loaded.push((path.clone(), load(&model, path, scope)?));
    }
    if let Some(path) = &request.checkpoint {
        loaded.push((path.clone(), load(&model, path, Scope::Full)?));
    }
    let mut proto = if request.encoder_only {
        model.export_encoder(&request.meta)
    } else {
        model.export(&request.meta)
    }
    .with_context(|| format!("exporting {}", request.arch))?;
    let fp16 = if request.fp16 {
        let report =
            ftu_onnx::to_fp16(&mut proto).with_context(|| format!("converting {} to float16", request.arch))?;
        proto.metadata_props.push(ftu_onnx::proto::StringStringEntryProto {
            key: Some("ftu.precision".to_string()),
            value: Some("fp16".to_string()),
        });
        Some(report)
    } else {
        None
    };
    let outputs = proto
        .graph
        .as_ref()
        .map(|g| g.output.iter().filter_map(|o| o.name.clone()).collect())
        .unwrap_or_default();
    ftu_onnx::write(&proto, &request.out).with_context(|| format!("writing {}", request.out.display()))?;
    Ok(ExportSummary {
        parameters: model.store().parameter_count(),
        loaded,
        outputs,
        fp16,
    })
}
