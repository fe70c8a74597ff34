//! `ftu-train`: synthetic data generation and ONNX export (training lands here next).

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ftu_models::{Arch, ArchConfig, ExportMeta};
use ftu_trainer::export::{self, ExportRequest};
use ftu_trainer::synth::{self, SynthConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ftu-train",
    version,
    about = "Train FTU segmentation models; make synthetic data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic Kaggle-layout folder (slides, train.csv, test.csv, truth.csv).
    Synth(SynthArgs),
    /// Build an architecture, optionally fill it from weights, and write it as ONNX.
    Export(ExportArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// DECODER-ENCODER, e.g. unet-resnet34, fpn-efficientnet_b3, segformer-mit_b2.
    #[arg(long)]
    arch: Arch,
    /// A pretrained encoder: timm `model.safetensors` (ResNet, EfficientNet) or Hugging Face
    /// SegFormer/MiT `model.safetensors`.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Skip the classifier keys of --weights instead of refusing them.
    #[arg(long)]
    ignore_classifier: bool,
    /// An ftu checkpoint (every parameter and buffer) to export.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Export the encoder alone, with outputs feat0…featK (shallow to deep).
    #[arg(long)]
    encoder_only: bool,
    /// Decoder widths, comma-separated (U-Net 5, FPN 2, SegFormer 1 value).
    #[arg(long, value_delimiter = ',')]
    decoder_channels: Option<Vec<usize>>,
    /// FPN: ASPP on the deepest level.
    #[arg(long)]
    aspp: bool,
    /// Add the organ-class output (N×5).
    #[arg(long)]
    organ_head: bool,
    /// Add the pixel-size output (N×1).
    #[arg(long)]
    pixel_size_head: bool,
    /// Seed of the random initialisation (for what no file fills).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Input normalisation recorded in the model's metadata (imagenet, unit, pm1).
    #[arg(long, default_value = "imagenet")]
    norm: String,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    /// Number of training slides.
    #[arg(long, default_value_t = 40)]
    train: usize,
    /// Number of test slides (their truth goes to truth.csv).
    #[arg(long, default_value_t = 10)]
    test: usize,
    /// Slide side in pixels (the competition's are about 3000).
    #[arg(long, default_value_t = 512)]
    size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write LZW, tiled, 16-bit, BigTIFF and JPEG-tiled slides, not only plain TIFF.
    #[arg(long)]
    mixed_formats: bool,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Synth(a) => {
            let cfg = SynthConfig {
                train: a.train,
                test: a.test,
                size: a.size,
                seed: a.seed,
                mixed_formats: a.mixed_formats,
            };
            let bar = ProgressBar::new((a.train + a.test) as u64)
                .with_style(ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} slides {elapsed}",
                )?)
                .with_prefix("synth");
            let summary = synth::generate(&a.out, &cfg, || bar.inc(1))
                .with_context(|| format!("generating synthetic data in {}", a.out.display()))?;
            bar.finish_and_clear();
            eprintln!(
                "wrote {} training and {} test slides to {}",
                summary.train.len(),
                summary.test.len(),
                a.out.display()
            );
        }
        Command::Export(a) => run_export(a)?,
    }
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    let request = ExportRequest {
        arch: a.arch,
        config: ArchConfig {
            decoder_channels: a.decoder_channels,
            aspp: a.aspp,
            organ_head: a.organ_head,
            pixel_size_head: a.pixel_size_head,
            ..ArchConfig::default()
        },
        weights: a.weights,
        ignore_classifier: a.ignore_classifier,
        checkpoint: a.checkpoint,
        encoder_only: a.encoder_only,
        seed: a.seed,
        meta: ExportMeta {
            norm: a.norm,
            ..ExportMeta::default()
        },
        out: a.out,
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
    Ok(())
}
