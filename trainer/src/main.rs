//! `ftu-train`: synthetic data, k-fold training, ONNX export.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ftu_models::{Arch, ArchConfig, ExportMeta};
use ftu_trainer::config::TrainConfig;
use ftu_trainer::export::{self, ExportRequest};
use ftu_trainer::synth::{self, SynthConfig};
use ftu_trainer::train::{self, Progress};
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
}

/// Every option can also come from `--config FILE` (TOML, the keys of RUN/config.toml); flags
/// given here win over the file.
#[derive(Args)]
struct TrainArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue a killed run from each fold's last checkpoint (same options required).
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    arch: Option<String>,
    #[arg(long, value_delimiter = ',')]
    decoder_channels: Option<Vec<usize>>,
    #[arg(long)]
    size: Option<usize>,
    /// Train at each of these sizes (e.g. 512,768); one manifest serves them together.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    #[arg(long)]
    folds: Option<usize>,
    #[arg(long)]
    fold: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    samples_per_epoch: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    accumulate: Option<usize>,
    #[arg(long)]
    ema: Option<f64>,
    /// Batches of training samples BatchNorm's statistics are re-estimated on before each
    /// validation (0: none).
    #[arg(long)]
    bn_recalibrate: Option<usize>,
    #[arg(long)]
    cache_mb: Option<usize>,
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    norm: Option<String>,
    /// A timm / Hugging Face safetensors file for the encoder.
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// A pseudo.csv from `ftu-infer pseudo`: soft-labelled slides that join every fold's
    /// training set (never validation).
    #[arg(long)]
    pseudo: Option<PathBuf>,
    /// Factor on a pseudo-labelled slide's loss (default 0.5).
    #[arg(long)]
    pseudo_weight: Option<f64>,
    /// LO,HI: pseudo-label pixels with LO < p < HI count in no loss term (e.g. 0.3,0.7).
    #[arg(long, value_delimiter = ',')]
    pseudo_unsure: Option<Vec<f64>>,
    /// Train on crops of SIZE² at a fixed scale (sampling.mode = "crops") instead of whole
    /// slides resized to SIZE²; the manifest serves the folds as a tiled group.
    #[arg(long)]
    crops: bool,
    /// Crops: model pixels per slide pixel (1 = the slide's own scale).
    #[arg(long)]
    crop_scale: Option<f64>,
    /// Crops: µm per model pixel (each slide scaled by its pixel_size over this).
    #[arg(long)]
    crop_pixel_size: Option<f64>,
    #[arg(long)]
    freeze_encoder_epochs: Option<usize>,
    #[arg(long)]
    organ_head: bool,
    #[arg(long)]
    pixel_size_head: bool,
    #[arg(long)]
    deep_supervision: bool,
    /// cpu, cuda or cuda:N (CUDA needs the build with `--features cuda`; the CPU build says so).
    #[arg(long)]
    device: Option<String>,
    /// f32, bf16 or f16: the precision of convolutions and matmuls (f32 weights, BatchNorm and
    /// losses; f16 with dynamic loss scaling). On the CPU bf16 and f16 are emulated (rounded, run
    /// in f32: slower, for checking); they pay off on a GPU.
    #[arg(long)]
    precision: Option<String>,
}

impl TrainArgs {
    fn resolve(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = &self.$field { c.$field = v.clone().into(); })*};
        }
        set!(
            data,
            out,
            arch,
            size,
            folds,
            epochs,
            batch,
            samples_per_epoch,
            seed,
            cache_mb,
            workers,
            norm,
            freeze_encoder_epochs,
            device,
            precision
        );
        if let Some(sizes) = &self.sizes {
            c.sizes = sizes.clone();
        }
        if self.decoder_channels.is_some() {
            c.decoder_channels = self.decoder_channels.clone();
        }
        if self.fold.is_some() {
            c.fold = self.fold;
        }
        if self.pretrained.is_some() {
            c.pretrained = self.pretrained.clone();
        }
        if self.pseudo.is_some() {
            c.pseudo = self.pseudo.clone();
        }
        if let Some(w) = self.pseudo_weight {
            c.pseudo_weight = w;
        }
        if let Some(band) = &self.pseudo_unsure {
            let [lo, hi] = band[..] else {
                anyhow::bail!("--pseudo-unsure takes LO,HI (two numbers), got {band:?}");
            };
            c.pseudo_unsure = Some([lo, hi]);
        }
        if let Some(v) = self.lr {
            c.optim.lr = v;
        }
        if let Some(v) = self.accumulate {
            c.optim.accumulate = v;
        }
        if let Some(v) = self.ema {
            c.optim.ema = v;
        }
        if let Some(v) = self.bn_recalibrate {
            c.optim.bn_recalibrate = v;
        }
        if self.crops {
            c.sampling.mode = ftu_trainer::config::SamplingMode::Crops;
        }
        if let Some(v) = self.crop_scale {
            c.sampling.scale = v;
        }
        if self.crop_pixel_size.is_some() {
            c.sampling.pixel_size = self.crop_pixel_size;
        }
        c.organ_head |= self.organ_head;
        c.pixel_size_head |= self.pixel_size_head;
        c.deep_supervision |= self.deep_supervision;
        c.validate()?;
        Ok(c)
    }
}

/// indicatif bars for `train`.
struct Bars {
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn ticker(&mut self, what: &str, total: usize) -> Box<dyn Fn() + Send + Sync> {
        self.start(what, total);
        let bar = self.bar.clone().expect("start made a bar");
        Box::new(move || bar.inc(1))
    }

    fn start(&mut self, what: &str, total: usize) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let style = ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        self.bar = Some(
            ProgressBar::new(total as u64)
                .with_style(style)
                .with_prefix(what.to_string()),
        );
    }

    fn tick(&mut self, message: &str) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(message.to_string());
        }
    }

    fn finish(&mut self, line: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!("{line}");
    }
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
    ftu_formats::exit::run(|| dispatch(Cli::parse()))
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
            let cfg = ftu_trainer::wsi::WsiConfig {
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
            let plan = ftu_trainer::wsi::generate(&a.out, &cfg, |done, total| {
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
        Command::Train(a) => {
            let cfg = a.resolve()?;
            let summary = train::run(&cfg, a.resume, &mut Bars { bar: None })?;
            for f in &summary.folds {
                eprintln!(
                    "{}² fold {}: best validation Dice {:.4} (full resolution) at epoch {} -> {}",
                    f.size,
                    f.fold,
                    f.best_dice,
                    f.best_epoch,
                    f.onnx.display()
                );
            }
            if let (Some(path), Some(th)) = (&summary.manifest, &summary.thresholds) {
                eprintln!(
                    "out-of-fold at full resolution: default threshold {:.2} (mean Dice {:.4}); per organ: {}",
                    th.default.threshold,
                    th.default.dice,
                    th.per_organ
                        .iter()
                        .map(|(o, c)| format!("{o} {:.2} ({:.4})", c.threshold, c.dice))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                eprintln!("manifest for ftu-infer: {}", path.display());
            }
        }
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
