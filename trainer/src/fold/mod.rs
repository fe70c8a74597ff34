//! One fold of k-fold training as named steps: [`Fold::setup`] (a fresh model, or the last
//! complete epoch when resuming), then per epoch [`Fold::train_epoch`], [`Fold::validate`]
//! (best checkpoint, out-of-fold probabilities, overlays), [`Fold::checkpoint`] (last weights,
//! optimiser state, the fold's state, each atomic) and [`Fold::record`] (metrics CSV and plots),
//! and at the end [`Fold::export`] of the best checkpoint to ONNX.

mod checkpoint;
mod epoch;
mod metrics;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Var};
use ftu_formats::manifest::Normalisation;
use ftu_formats::Organ;
use ftu_models::store::is_buffer;
use ftu_models::weights::{self, Scope};
use ftu_models::{Arch, ArchConfig, ExportMeta, Precision, Segmenter};

use crate::config::TrainConfig;
use crate::data::SlideCache;
use crate::error::{At, Result};
use crate::optim::loss_scale::LossScale;
use crate::optim::{AdamW, Ema};
use crate::run_dir::fold_dir;

pub(crate) use checkpoint::{write_json, FoldState};
pub(crate) use metrics::merge_metrics;
use metrics::read_metrics;
pub use metrics::Metrics;

/// The longest side of a validation overlay (smaller slides keep their own size).
pub const OVERLAY_SIDE: usize = 512;

/// What the caller sees of a fold's training (and of an ensemble's search): steps started,
/// advanced and finished.
pub trait FoldProgress {
    /// A counter that worker threads advance (slide decoding); finished by the next `finish`.
    fn ticker(&mut self, _what: &str, _total: usize) -> Box<dyn Fn() + Send + Sync> {
        Box::new(|| {})
    }
    fn start(&mut self, what: &str, total: usize);
    fn tick(&mut self, message: &str);
    fn finish(&mut self, line: &str);
}

pub struct FoldResult {
    pub fold: usize,
    /// The training size.
    pub size: usize,
    pub best_dice: f64,
    pub best_epoch: usize,
    pub onnx: PathBuf,
}

pub(crate) fn seed_of(parts: &[u64]) -> u64 {
    // SplitMix-style mixing of the parts.
    parts.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, &p| {
        let mut z = h ^ p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

pub fn arch_config(cfg: &TrainConfig) -> ArchConfig {
    ArchConfig {
        decoder_channels: cfg.decoder_channels.clone(),
        deep_supervision: cfg.deep_supervision,
        organ_head: cfg.organ_head,
        pixel_size_head: cfg.pixel_size_head,
        ..ArchConfig::default()
    }
}

/// One fold in training: its model, optimiser, EMA and where it stands.
pub(crate) struct Fold<'a> {
    cfg: &'a TrainConfig,
    arch: Arch,
    /// Where the parameters, batches and optimiser state live.
    device: Device,
    cache: &'a SlideCache,
    norm: &'a Normalisation,
    k: usize,
    dir: PathBuf,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    model: Segmenter,
    /// Every variable (parameters and buffers) by name.
    named: Vec<(String, Var)>,
    opt: AdamW,
    ema: Option<Ema>,
    /// Encoder parameters start with this (frozen for the first epochs when asked).
    encoder_prefix: String,
    pub(crate) state: FoldState,
    /// Convolutions and matmuls in this precision; f16's loss scale.
    precision: Precision,
    loss_scale: LossScale,
    /// This fold's rows of foldK/metrics.csv, up to where it stands.
    metrics: Vec<Metrics>,
    /// Training samples per epoch.
    samples: usize,
    total_steps: usize,
}

/// What an epoch of training gave.
pub(crate) struct Trained {
    pub train_loss: f64,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
}

/// What validation after an epoch gave.
pub(crate) struct Validated {
    pub loss: f64,
    /// Mean Dice at the training size.
    pub dice: f64,
    /// Mean Dice at full resolution: what picks the best epoch.
    pub dice_full: f64,
    /// Mean Dice at full resolution of each organ present in the validation slides.
    pub organ_dice: BTreeMap<Organ, f64>,
    /// Whether this epoch is the fold's best so far (its checkpoint and OOF are saved).
    pub improved: bool,
}

impl<'a> Fold<'a> {
    /// A fresh model (with the pretrained encoder when configured) and optimiser, or, with
    /// `resume` and a saved state, the last complete epoch's weights, optimiser and EMA.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn setup(
        cfg: &'a TrainConfig,
        arch: Arch,
        device: &Device,
        cache: &'a SlideCache,
        fold_of: &[usize],
        k: usize,
        norm: &'a Normalisation,
        resume: bool,
        progress: &mut dyn FoldProgress,
    ) -> Result<Fold<'a>> {
        let precision = cfg.precision;
        let dir = fold_dir(cfg, k);
        std::fs::create_dir_all(dir.join("overlays")).at("creating", &dir.join("overlays"))?;
        // Pseudo-labelled slides (after the labelled ones) train in every fold, never validate.
        // `folds = 1` is a full-data fit: every labelled slide trains, none validates.
        let full_fit = cfg.folds == 1;
        let train_idx: Vec<usize> = (0..fold_of.len())
            .filter(|&i| full_fit || fold_of[i] != k)
            .chain(cache.labelled()..cache.rows().len())
            .collect();
        let val_idx: Vec<usize> = if full_fit {
            Vec::new()
        } else {
            (0..fold_of.len()).filter(|&i| fold_of[i] == k).collect()
        };

        let model = Segmenter::on_device(
            arch,
            arch_config(cfg),
            seed_of(&[cfg.seed, k as u64]),
            DType::F32,
            device,
        )?;
        if let Some(path) = &cfg.pretrained {
            let report = weights::load(
                &model,
                path,
                Scope::Encoder {
                    ignore_classifier: true,
                },
            )
            .at("loading the pretrained encoder", path)?;
            progress.finish(&format!(
                "fold {k}: encoder from {} ({} tensors)",
                path.display(),
                report.loaded
            ));
        }
        let named = model.store().named_vars();
        let params: Vec<(String, Var)> = named.iter().filter(|(n, _)| !is_buffer(n)).cloned().collect();
        let opt = AdamW::new(params, cfg.optim.clone())?;
        let ema = if cfg.optim.ema > 0.0 {
            Some(Ema::new(named.clone(), cfg.optim.ema)?)
        } else {
            None
        };
        let samples = match (cfg.samples_per_epoch, cache.crops()) {
            (0, None) => train_idx.len().max(crate::config::MIN_STEPS_PER_EPOCH * cfg.batch),
            // As many crops as it takes to tile the training slides once.
            (0, Some((spec, _))) => train_idx
                .iter()
                .map(|&i| {
                    let r = &cache.rows()[i];
                    let side = spec.side(r.pixel_size);
                    (r.img_width as usize).div_ceil(side) * (r.img_height as usize).div_ceil(side)
                })
                .sum(),
            (n, _) => n,
        };
        let steps_per_epoch = samples.div_ceil(cfg.batch).div_ceil(cfg.optim.accumulate);
        let mut fold = Fold {
            cfg,
            arch,
            device: device.clone(),
            cache,
            norm,
            k,
            dir,
            train_idx,
            val_idx,
            model,
            named,
            opt,
            ema,
            encoder_prefix: format!("{}.", arch.encoder.prefix()),
            state: FoldState {
                epochs_done: 0,
                best_dice: -1.0,
                best_epoch: 0,
                exported: false,
                loss_scale: None,
            },
            precision,
            loss_scale: LossScale::for_precision(precision),
            metrics: Vec::new(),
            samples,
            total_steps: steps_per_epoch * cfg.epochs,
        };
        if resume && fold.path("state.json").exists() {
            fold.resume(progress)?;
        }
        // This fold's earlier rows survive only up to where it resumes (from foldK/metrics.csv,
        // or RUN/metrics.csv in runs that kept no fold file).
        let own = fold.path("metrics.csv");
        let earlier = if own.exists() {
            read_metrics(&own)?
        } else if resume {
            read_metrics(&fold.run_metrics_path())?
        } else {
            Vec::new()
        };
        fold.metrics = earlier
            .into_iter()
            .filter(|m| m.fold == k && m.epoch <= fold.state.epochs_done)
            .collect();
        Ok(fold)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn run_metrics_path(&self) -> PathBuf {
        self.cfg.out.join("metrics.csv")
    }

    /// The epochs still to train.
    pub(crate) fn remaining_epochs(&self) -> std::ops::RangeInclusive<usize> {
        self.state.epochs_done + 1..=self.cfg.epochs
    }

    /// The best checkpoint as foldK/model.onnx.
    pub(crate) fn export(mut self) -> Result<FoldResult> {
        let (cfg, k) = (self.cfg, self.k);
        let onnx = self.path("model.onnx");
        let best = self.path("best.safetensors");
        let best_model = Segmenter::new(self.arch, arch_config(cfg), 0)?;
        weights::load(&best_model, &best, Scope::Full).at("loading", &best)?;
        let meta = ExportMeta {
            norm: cfg.norm.name().to_string(),
            train_size: Some(cfg.size),
            fold: Some(k),
            val_dice: (self.state.best_dice >= 0.0).then_some(self.state.best_dice),
        };
        let proto = best_model.export(&meta)?;
        ftu_onnx::write(&proto, &onnx).at("writing", &onnx)?;
        self.state.exported = true;
        write_json(&self.path("state.json"), &self.state)?;
        Ok(FoldResult {
            fold: k,
            size: cfg.size,
            best_dice: self.state.best_dice,
            best_epoch: self.state.best_epoch,
            onnx,
        })
    }
}

/// Trains fold `k` (or the rest of it, with `resume`) and exports its best checkpoint.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_fold(
    cfg: &TrainConfig,
    arch: Arch,
    device: &Device,
    cache: &SlideCache,
    fold_of: &[usize],
    k: usize,
    norm: &Normalisation,
    resume: bool,
    progress: &mut dyn FoldProgress,
) -> Result<FoldResult> {
    let mut fold = Fold::setup(cfg, arch, device, cache, fold_of, k, norm, resume, progress)?;
    for epoch in fold.remaining_epochs() {
        let start = std::time::Instant::now();
        let trained = fold.train_epoch(epoch, progress)?;
        let validated = fold.validate(epoch)?;
        // The epoch's metrics row first: a kill before the checkpoint commits redoes the epoch
        // and rewrites its row; one after it finds the row there.
        fold.record(epoch, &trained, &validated, start.elapsed(), progress)?;
        fold.checkpoint(epoch, &validated)?;
    }
    fold.export()
}
