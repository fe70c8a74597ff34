//! `ftu-train`: synthetic data, k-fold training, ONNX export.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ftu_models::{Arch, ArchConfig, ExportMeta};
use ftu_trainer::cli::ensemble::EnsembleArgs;
use ftu_trainer::cli::train::TrainArgs;
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
    /// Write one synthetic whole-slide image (tiled BigTIFF, tile by tile) with test.csv and
    /// truth.csv: glass with tissue islands holding FTU discs.
    SynthWsi(SynthWsiArgs),
    /// Build an architecture, optionally fill it from weights, and write it as ONNX.
    Export(ExportArgs),
    /// k-fold training on a Kaggle-layout folder; exports each fold to ONNX and writes
    /// RUN/manifest.toml for ftu-infer.
    Train(Box<TrainArgs>),
    /// Finished runs (architectures, sizes, organ-specific runs) made one ensemble: weights,
    /// per-organ thresholds and postprocessing chosen on their out-of-fold predictions.
    Ensemble(EnsembleArgs),
    /// List the architectures (decoders × encoders) and which pretrained files fit each encoder.
    Archs,
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
    /// Store the weights in float16 and run the graph in float16 (half the file, faster on GPUs
    /// with tensor cores); the inputs and outputs stay float32, so manifests need no change.
    #[arg(long)]
    fp16: bool,
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

#[derive(Args)]
struct SynthWsiArgs {
    #[arg(long)]
    out: PathBuf,
    /// Width in pixels.
    #[arg(long, default_value_t = 40000)]
    width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = 40000)]
    height: u32,
    #[arg(long, default_value_t = 6)]
    islands: usize,
    /// Island radius in pixels.
    #[arg(long, default_value_t = 1500.0)]
    island_radius: f64,
    #[arg(long, default_value_t = 12)]
    ftus_per_island: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JPEG tiles (quality 90) as slide scanners write them, instead of deflate.
    #[arg(long)]
    jpeg: bool,
    /// Also write reduced-resolution pages at these downsamples (e.g. 4,16), as pyramidal
    /// scanner files carry them; ftu-infer makes thumbnails from them.
    #[arg(long, value_delimiter = ',')]
    pyramid: Vec<u32>,
}

fn main() -> std::process::ExitCode {
    ftu_formats::exit::run(|| dispatch(parse()))
}

/// The command line, with `train`'s defaults in its help.
fn parse() -> Cli {
    let cmd = Cli::command().mut_subcommand("train", ftu_trainer::cli::train::with_defaults);
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
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
        Command::SynthWsi(a) => {
            let cfg = ftu_trainer::synth::wsi::WsiConfig {
                width: a.width,
                height: a.height,
                islands: a.islands,
                island_radius: a.island_radius,
                ftus_per_island: a.ftus_per_island,
                seed: a.seed,
                jpeg: a.jpeg,
                pyramid: a.pyramid,
            };
            let bar = ProgressBar::new(0)
                .with_style(ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} tiles {elapsed}",
                )?)
                .with_prefix("synth-wsi");
            let plan = ftu_trainer::synth::wsi::generate(&a.out, &cfg, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .with_context(|| format!("writing a synthetic whole-slide image in {}", a.out.display()))?;
            bar.finish_and_clear();
            eprintln!(
                "wrote {}×{} slide with {} tissue islands and {} FTUs to {}",
                a.width,
                a.height,
                plan.islands.len(),
                plan.ftus.len(),
                a.out.display()
            );
        }
        Command::Export(a) => run_export(a)?,
        Command::Train(a) => a.run()?,
        Command::Ensemble(a) => a.run()?,
        Command::Archs => print!("{}", ftu_trainer::cli::archs::listing()),
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
        fp16: a.fp16,
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
    if let Some(r) = &summary.fp16 {
        eprintln!(
            "float16: {} initializers ({} values); {} beyond ±65504 stored as ±65504, {} below 6e-8 stored as 0; \
             {} kept float32 (Resize scales)",
            r.initializers, r.values, r.saturated, r.flushed, r.kept_f32
        );
    }
    Ok(())
}
