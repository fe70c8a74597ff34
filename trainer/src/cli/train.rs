//! `ftu-train train`: its options (each with its default, taken from [`TrainConfig::default`]),
//! how they resolve over `--config` or a resumed run's config.toml, progress bars, and the run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{fields, SamplingMode, TrainConfig};
use crate::run_dir::RunMode;
use crate::train::{self, FoldProgress};
use ftu_formats::Organ;

/// Every option can also come from `--config FILE` (TOML, the keys of RUN/config.toml); flags
/// given here win over the file. `--resume` alone continues a run with its saved options.
#[derive(Args)]
pub struct TrainArgs {
    /// A TOML file of options (the keys of RUN/config.toml); flags given here win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from each fold's last complete epoch, with its saved options
    /// (flags given must match them, but --epochs may grow: the run is extended).
    #[arg(long)]
    pub resume: bool,
    /// Remove the run in --out (its config, folds, metrics, models) and start again.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// A Kaggle-layout folder: train.csv and train_images/.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The run folder (new or empty; one holding a run needs --resume or --overwrite, or a --fold
    /// not yet started).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// DECODER-ENCODER, e.g. unet-resnet34, fpn-efficientnet_b3, segformer-mit_b2.
    #[arg(long)]
    pub arch: Option<String>,
    /// Decoder widths, comma-separated (U-Net 5, FPN 2, SegFormer 1 value) [default: the
    /// architecture's].
    #[arg(long, value_delimiter = ',')]
    pub decoder_channels: Option<Vec<usize>>,
    /// Side of the square training input, a multiple of 32 (slides are resized to it).
    #[arg(long)]
    pub size: Option<usize>,
    /// Train at each of these sizes (e.g. 512,768); one manifest serves them together.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Folds of the stratified (by organ) k-fold split; 1 is a full-data fit (every labelled
    /// slide trains, none validates, the last epoch is exported).
    #[arg(long)]
    pub folds: Option<usize>,
    /// With --folds 1: the run folder (or manifest.toml) whose thresholds and postprocessing the
    /// manifest takes [default: threshold 0.5].
    #[arg(long)]
    pub thresholds_from: Option<PathBuf>,
    /// Train this fold only (0-based): one job of a run whose folds run as separate jobs, at
    /// once if need be, into one --out [default: every fold].
    #[arg(long)]
    pub fold: Option<usize>,
    /// Train and validate on these organs' slides only (comma-separated; each slide keeps its
    /// fold of a run of every organ); the manifest serves only them [default: every organ].
    #[arg(long, value_delimiter = ',')]
    pub organs: Option<Vec<Organ>>,
    /// Epochs per fold.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Slides per batch.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Training samples per epoch (0: the training slides, at least 8 batches; in crops mode
    /// enough crops to tile them once).
    #[arg(long)]
    pub samples_per_epoch: Option<usize>,
    /// Seed of the split, the initialisation, sampling and augmentation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Peak learning rate of AdamW (linear warmup, then cosine decay to optim.min_lr).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Batches whose gradients are summed before each optimiser step.
    #[arg(long)]
    pub accumulate: Option<usize>,
    /// Decay of an exponential moving average of the weights, validated and exported (0: none).
    #[arg(long)]
    pub ema: Option<f64>,
    /// Batches of training samples BatchNorm's statistics are re-estimated on before each
    /// validation (0: none).
    #[arg(long)]
    pub bn_recalibrate: Option<usize>,
    /// MiB of slides kept decoded at training scale; others are decoded when drawn.
    #[arg(long)]
    pub cache_mb: Option<usize>,
    /// Threads for loading and augmentation (0: every core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Input normalisation the models train with and their manifest names: imagenet, unit, pm1.
    #[arg(long)]
    pub norm: Option<String>,
    /// A timm / Hugging Face model.safetensors for the encoder, as a path or as a Hub name in
    /// the local Hugging Face cache (`timm/resnet34.a1_in1k`, `nvidia/mit-b2@REVISION`)
    /// [default: none; the encoder starts from random weights].
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// A pseudo.csv from `ftu-infer pseudo`: soft-labelled slides that join every fold's
    /// training set (never validation).
    #[arg(long)]
    pub pseudo: Option<PathBuf>,
    /// Factor on a pseudo-labelled slide's loss.
    #[arg(long)]
    pub pseudo_weight: Option<f64>,
    /// LO,HI: pseudo-label pixels with LO < p < HI count in no loss term (e.g. 0.3,0.7).
    #[arg(long, value_delimiter = ',')]
    pub pseudo_unsure: Option<Vec<f64>>,
    /// Train on crops of SIZE² at a fixed scale (sampling.mode = "crops") instead of whole
    /// slides resized to SIZE²; the manifest serves the folds as a tiled group.
    #[arg(long)]
    pub crops: bool,
    /// Crops: model pixels per slide pixel (1 = the slide's own scale).
    #[arg(long)]
    pub crop_scale: Option<f64>,
    /// Crops: µm per model pixel (each slide scaled by its pixel_size over this).
    #[arg(long)]
    pub crop_pixel_size: Option<f64>,
    /// Epochs for which the encoder's parameters do not change.
    #[arg(long)]
    pub freeze_encoder_epochs: Option<usize>,
    /// Add an organ-class head on the deepest features (5-way, loss weight loss.organ).
    #[arg(long)]
    pub organ_head: bool,
    /// Add a pixel-size regression head on the deepest features (loss weight loss.pixel_size).
    #[arg(long)]
    pub pixel_size_head: bool,
    /// Deep supervision: auxiliary mask heads on the decoder's levels (loss.deep_supervision).
    #[arg(long)]
    pub deep_supervision: bool,
    /// cpu, cuda or cuda:N (CUDA needs the build with `--features cuda`; the CPU build says so).
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16 or f16: the precision of convolutions and matmuls (f32 weights, BatchNorm and
    /// losses; f16 with dynamic loss scaling). On the CPU bf16 and f16 are emulated (rounded, run
    /// in f32: slower, for checking); they pay off on a GPU.
    #[arg(long)]
    pub precision: Option<String>,
}

/// Each option's key in config.toml, for the defaults `--help` shows.
const CONFIG_KEYS: &[(&str, &str)] = &[
    ("arch", "arch"),
    ("size", "size"),
    ("folds", "folds"),
    ("epochs", "epochs"),
    ("batch", "batch"),
    ("samples_per_epoch", "samples_per_epoch"),
    ("seed", "seed"),
    ("lr", "optim.lr"),
    ("accumulate", "optim.accumulate"),
    ("ema", "optim.ema"),
    ("bn_recalibrate", "optim.bn_recalibrate"),
    ("cache_mb", "cache_mb"),
    ("workers", "workers"),
    ("norm", "norm"),
    ("pseudo_weight", "pseudo_weight"),
    ("crop_scale", "sampling.scale"),
    ("freeze_encoder_epochs", "freeze_encoder_epochs"),
    ("device", "device"),
    ("precision", "precision"),
];

/// `train`'s command with each option's default (from [`TrainConfig::default`], so help and
/// behaviour cannot disagree) at the end of its help line.
pub fn with_defaults(cmd: clap::Command) -> clap::Command {
    let defaults = TrainConfig::default().flattened();
    CONFIG_KEYS.iter().fold(cmd, |cmd, &(id, key)| {
        let value = defaults
            .get(key)
            .unwrap_or_else(|| panic!("TrainConfig has no key {key}"))
            .trim_matches('"')
            .to_string();
        cmd.mut_arg(id, |arg| {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            arg.help(format!("{help} [default: {value}]"))
        })
    })
}

impl TrainArgs {
    /// The options: `--config`'s file, else (with `--resume`) the run's saved config.toml, else
    /// the defaults; the flags given on top; paths made absolute.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let saved = match (&self.config, self.resume, &self.out) {
            (None, true, Some(out)) => Some(out.join("config.toml")).filter(|p| p.exists()),
            _ => None,
        };
        let mut c = match self.config.as_ref().or(saved.as_ref()) {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = &self.$field { c.$field = v.clone().into(); })*};
        }
        set!(
            data,
            out,
            size,
            folds,
            epochs,
            batch,
            samples_per_epoch,
            seed,
            cache_mb,
            workers,
            freeze_encoder_epochs
        );
        if let Some(v) = &self.arch {
            c.arch = fields::arch::parse(v)?;
        }
        if let Some(v) = &self.norm {
            c.norm = fields::norm::parse(v)?;
        }
        if let Some(v) = &self.device {
            c.device = fields::device::parse(v)?;
        }
        if let Some(v) = &self.precision {
            c.precision = fields::precision::parse(v)?;
        }
        if let Some(sizes) = &self.sizes {
            c.sizes = sizes.clone();
        }
        if let Some(organs) = &self.organs {
            c.organs = organs.clone();
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
        if self.thresholds_from.is_some() {
            c.thresholds_from = self.thresholds_from.clone();
        }
        if let Some(w) = self.pseudo_weight {
            c.pseudo_weight = w;
        }
        if let Some(band) = &self.pseudo_unsure {
            let [lo, hi] = band[..] else {
                anyhow::bail!(
                    "--pseudo-unsure takes LO,HI (two numbers), got {}",
                    band.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
                );
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
            c.sampling.mode = SamplingMode::Crops;
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
        Ok(c.with_absolute_paths()?)
    }

    /// Resolves the options, trains, and reports each fold and the thresholds.
    pub fn run(&self) -> Result<()> {
        let cfg = self.resolve()?;
        if cfg.pretrained.is_none() {
            eprintln!(
                "note: no --pretrained file: the {} encoder starts from random weights",
                cfg.arch
            );
        }
        let out = cfg.out.clone();
        // Ctrl-C: every file a run writes is renamed into place whole, so stopping anywhere is safe.
        let _ = ctrlc::set_handler(move || {
            eprintln!(
                "\ninterrupted; continue with: ftu-train train --out {} --resume",
                shell_quoted(&out.display().to_string())
            );
            std::process::exit(130);
        });
        let mode = RunMode {
            resume: self.resume,
            overwrite: self.overwrite,
        };
        let summary = train::run_with(&cfg, mode, &mut Bars { bar: None })
            .with_context(|| format!("training into {}", cfg.out.display()))?;
        for f in &summary.folds {
            if cfg.folds == 1 {
                eprintln!(
                    "{}²: trained on every labelled slide for {} epochs -> {}",
                    f.size,
                    f.best_epoch,
                    f.onnx.display()
                );
                continue;
            }
            eprintln!(
                "{}² fold {}: best validation Dice {:.4} (full resolution) at epoch {} -> {}",
                f.size,
                f.fold,
                f.best_dice,
                f.best_epoch,
                f.onnx.display()
            );
        }
        if let (Some(path), None) = (&summary.manifest, &summary.thresholds) {
            eprintln!("manifest for ftu-infer: {}", path.display());
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
        Ok(())
    }
}

/// `s` as one shell word.
pub fn shell_quoted(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// indicatif bars for `train`.
pub struct Bars {
    pub bar: Option<ProgressBar>,
}

impl FoldProgress for Bars {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    #[test]
    fn help_shows_each_default_from_the_config() {
        let mut cmd = with_defaults(Cli::command());
        let help = cmd.render_help().to_string();
        for needle in [
            "[default: 512]",
            "[default: 5]",
            "[default: 20]",
            "[default: 0.003]",
            "[default: unet-resnet34]",
            "[default: imagenet]",
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
        // Every option has a description.
        for arg in cmd.get_arguments() {
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quoted("/runs/a-1"), "/runs/a-1");
        assert_eq!(shell_quoted("/my runs/it's"), r"'/my runs/it'\''s'");
    }
}
