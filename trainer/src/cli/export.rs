//! `ftu-train export`: its options and its run (see [`crate::export`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ftu_models::{Arch, ArchConfig, ExportMeta};

use crate::export::{self, ExportRequest};

/// Build an architecture, optionally fill it from weights, and write it as ONNX.
#[derive(Args)]
pub struct ExportArgs {
    /// DECODER-ENCODER, e.g. unet-resnet34, fpn-efficientnet_b3, segformer-mit_b2.
    #[arg(long)]
    pub arch: Arch,
    /// A pretrained encoder: timm `model.safetensors` (ResNet, EfficientNet, ConvNeXt) or Hugging
    /// Face SegFormer/MiT `model.safetensors`, as a path or as a Hub name in the local Hugging
    /// Face cache (`timm/resnet34.a1_in1k`, `nvidia/mit-b2@REVISION`).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Skip the classifier keys of --weights instead of refusing them.
    #[arg(long)]
    pub ignore_classifier: bool,
    /// An ftu checkpoint (every parameter and buffer) to export.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Export the encoder alone, with outputs feat0…featK (shallow to deep).
    #[arg(long)]
    pub encoder_only: bool,
    /// Store the weights in float16 and run the graph in float16 (half the file, faster on GPUs
    /// with tensor cores); the inputs and outputs stay float32, so manifests need no change.
    #[arg(long)]
    pub fp16: bool,
    /// Decoder widths, comma-separated (U-Net 5, FPN 2, SegFormer 1 value).
    #[arg(long, value_delimiter = ',')]
    pub decoder_channels: Option<Vec<usize>>,
    /// FPN: ASPP on the deepest level.
    #[arg(long)]
    pub aspp: bool,
    /// Add the organ-class output (N×5).
    #[arg(long)]
    pub organ_head: bool,
    /// Add the pixel-size output (N×1).
    #[arg(long)]
    pub pixel_size_head: bool,
    /// Seed of the random initialisation (for what no file fills).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input normalisation recorded in the model's metadata (imagenet, unit, pm1).
    #[arg(long, default_value = "imagenet")]
    pub norm: String,
    #[arg(long)]
    pub out: PathBuf,
}

impl ExportArgs {
    pub fn run(self) -> Result<()> {
        let request = ExportRequest {
            arch: self.arch,
            config: ArchConfig {
                decoder_channels: self.decoder_channels,
                aspp: self.aspp,
                organ_head: self.organ_head,
                pixel_size_head: self.pixel_size_head,
                ..ArchConfig::default()
            },
            weights: match self.weights {
                Some(w) => Some(crate::hub::resolve(&w).context("--weights")?),
                None => None,
            },
            ignore_classifier: self.ignore_classifier,
            checkpoint: self.checkpoint,
            encoder_only: self.encoder_only,
            fp16: self.fp16,
            seed: self.seed,
            meta: ExportMeta {
                norm: self.norm,
                ..ExportMeta::default()
            },
            out: self.out,
        };
        let summary = export::export(&request)?;
        for (path, report) in &summary.loaded {
            eprintln!("{}:\n{report}", path.display());
        }
        eprintln!(
            "wrote {} ({}, {:.2} M parameters, outputs {})",
            request.out.display(),
            request.arch,
            summary.parameters as f64 / 1e6,
            summary.outputs.join(", ")
        );
        if let Some(r) = &summary.fp16 {
            eprintln!(
                "float16: {} initializers ({} values); {} beyond ±65504 stored as ±65504, {} below 6e-8 stored as 0; \
                 {} kept float32 (Resize scales)",
                r.initializers, r.values, r.saturated, r.flushed, r.kept_f32
            );
        }
        Ok(())
    }
}
