//! One fold of k-fold training as named steps: [`Fold::setup`] (a fresh model, or the last
//! complete epoch when resuming), then per epoch [`Fold::train_epoch`], [`Fold::validate`]
//! (best checkpoint, out-of-fold probabilities, overlays), [`Fold::checkpoint`] (last weights,
//! optimiser state, the fold's state, each atomic) and [`Fold::record`] (metrics CSV and plots),
//! and at the end [`Fold::export`] of the best checkpoint to ONNX.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use ftu_formats::blocks::BlockMap;
use ftu_formats::manifest::Normalisation;
use ftu_formats::resize::resize_map;
use ftu_formats::{tiles, Organ};
use ftu_models::store::is_buffer;
use ftu_models::weights::{self, Scope};
use ftu_models::{Arch, ArchConfig, Ctx, ExportMeta, Precision, Segmenter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::sampling;
use crate::data::{self, Batch, SlideCache};
use crate::error::{At, Result, TrainError};
use crate::eval::full_res;
use crate::optim::loss_scale::{LossScale, SavedLossScale};
use crate::optim::{self, AdamW, Ema};
use crate::run_dir::fold_dir;
use crate::{losses, plots};

/// The longest side of a validation overlay (smaller slides keep their own size).
pub const OVERLAY_SIDE: usize = 512;

/// What the caller sees of progress.
pub trait Progress {
    /// A counter that worker threads advance (slide decoding); finished by the next `finish`.
    fn ticker(&mut self, _what: &str, _total: usize) -> Box<dyn Fn() + Send + Sync> {
        Box::new(|| {})
    }
    fn start(&mut self, what: &str, total: usize);
    fn tick(&mut self, message: &str);
    fn finish(&mut self, line: &str);
}

/// One row of RUN/metrics.csv. `val_dice` is at the training size; `val_dice_full` and the
/// per-organ columns are at each slide's full resolution (the competition's metric, which picks
/// the best checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub fold: usize,
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_dice: f64,
    /// Absent in runs written before full-resolution validation.
    #[serde(default)]
    pub val_dice_full: Option<f64>,
    pub dice_kidney: Option<f64>,
    pub dice_prostate: Option<f64>,
    pub dice_largeintestine: Option<f64>,
    pub dice_spleen: Option<f64>,
    pub dice_lung: Option<f64>,
    pub seconds: f64,
}

/// RUN/foldK/state.json: where a fold stands, for `--resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FoldState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// The best validation Dice at full resolution so far.
    pub best_dice: f64,
    pub best_epoch: usize,
    /// Set once the best checkpoint has been exported.
    pub exported: bool,
    /// The float16 loss scale at the end of the last epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<SavedLossScale>,
}

impl FoldState {
    /// Fold `k`'s saved state.
    pub(crate) fn read(cfg: &TrainConfig, k: usize) -> Result<FoldState> {
        let path = fold_dir(cfg, k).join("state.json");
        let text = std::fs::read_to_string(&path).at("reading", &path)?;
        serde_json::from_str(&text).at("reading", &path)
    }
}

pub struct FoldResult {
    pub fold: usize,
    /// The training size.
    pub size: usize,
    pub best_dice: f64,
    pub best_epoch: usize,
    pub onnx: PathBuf,
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).at("writing", path)?;
    Ok(ftu_formats::atomic::write_atomic(path, |w| {
        std::io::Write::write_all(w, text.as_bytes())
    })?)
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

fn read_metrics(path: &Path) -> Result<Vec<Metrics>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).at("reading", path)?;
    reader
        .deserialize()
        .collect::<Result<Vec<Metrics>, _>>()
        .at("reading", path)
}

/// RUN/metrics.csv: every fold's foldK/metrics.csv in one table, by fold and epoch. Each fold
/// writes only its own file, so fold jobs running at once never lose each other's rows; any job
/// may rebuild the table, and the job that finishes the run rebuilds it from the final files.
pub(crate) fn merge_metrics(cfg: &TrainConfig) -> Result<()> {
    let merged = cfg.out.join("metrics.csv");
    let mut rows = Vec::new();
    let mut without_file = Vec::new();
    for k in 0..cfg.folds {
        let own = fold_dir(cfg, k).join("metrics.csv");
        if own.exists() {
            rows.extend(read_metrics(&own)?);
        } else {
            without_file.push(k);
        }
    }
    // Folds of runs written before the fold files keep their rows of the table.
    if !without_file.is_empty() {
        rows.extend(
            read_metrics(&merged)?
                .into_iter()
                .filter(|m| without_file.contains(&m.fold)),
        );
    }
    rows.sort_by_key(|m| (m.fold, m.epoch));
    write_metrics(&merged, &rows)
}

fn write_metrics(path: &Path, rows: &[Metrics]) -> Result<()> {
    Ok(ftu_formats::atomic::write_atomic(path, |w| {
        let mut csv = csv::Writer::from_writer(w);
        for r in rows {
            csv.serialize(r).map_err(std::io::Error::other)?;
        }
        csv.flush()
    })?)
}

/// A validation pass: mean loss, per-slide Dice at 0.5 at the training size and at full
/// resolution, and probabilities at the training scale with their width and height (`size²` in
/// resize mode; the slide's size times the crop scale in crops mode).
struct Validation {
    loss: f64,
    dice: Vec<f64>,
    dice_full: Vec<f64>,
    probs: Vec<Vec<f32>>,
    shapes: Vec<(usize, usize)>,
}

fn evaluate(
    cfg: &TrainConfig,
    model: &Segmenter,
    cache: &SlideCache,
    idx: &[usize],
    norm: &Normalisation,
    device: &Device,
) -> Result<Validation> {
    if cache.crops().is_some() {
        return evaluate_tiled(cfg, model, cache, idx, norm, device);
    }
    let ctx = Ctx::eval();
    let (mut loss, mut dice_all, mut probs) = (0f64, Vec::new(), Vec::new());
    for chunk in idx.chunks(cfg.batch) {
        let seeds = vec![0; chunk.len()];
        let b = data::batch(cache, chunk, &seeds, None, norm, None)?.to_device(device)?;
        let out = model.forward(&b.images, &ctx)?;
        loss += losses::segmentation(&out.logits, &b.masks, &cfg.loss, None, None)?.to_scalar::<f32>()? as f64
            * chunk.len() as f64;
        // The whole batch's probabilities come to the host at once.
        let p = candle_nn::ops::sigmoid(&out.logits)?.to_device(&Device::Cpu)?;
        for (j, &i) in chunk.iter().enumerate() {
            let prob = p.get(j)?.flatten_all()?.to_vec1::<f32>()?;
            dice_all.push(ftu_formats::dice::dice_thresholded(&prob, 0.5, &cache.get(i)?.mask));
            probs.push(prob);
        }
    }
    // Each slide resized back to its own size and scored there, a few slides at a time.
    let rows = cache.rows();
    let dice_full = idx
        .par_iter()
        .zip(&probs)
        .map(|(&i, p)| Ok(full_res::score(p, cfg.size, &rows[i], &[0.5], None)?.counts.dice(0)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Validation {
        loss: loss / idx.len().max(1) as f64,
        dice: dice_all,
        dice_full,
        shapes: vec![(cfg.size, cfg.size); probs.len()],
        probs,
    })
}

/// Crops-mode validation: each validation slide covered with the windows `ftu-infer` runs on
/// a tiled group (the same [`tiles::TilePlan`]: windows at the crop scale, background windows
/// skipped by the same tissue detector, Gaussian blending), scored at full resolution. The loss
/// and the training-size Dice are over the windows that ran (Dice pooled per slide); the map
/// kept for out-of-fold use is the blend resized to the slide's size times the crop scale.
fn evaluate_tiled(
    cfg: &TrainConfig,
    model: &Segmenter,
    cache: &SlideCache,
    idx: &[usize],
    norm: &Normalisation,
    device: &Device,
) -> Result<Validation> {
    let (spec, full) = cache.crops().expect("crops mode");
    let min_fraction = ftu_formats::manifest::TissueDetection::default().min_fraction;
    let ctx = Ctx::eval();
    let rows = cache.rows();
    let (mut loss, mut windows) = (0f64, 0usize);
    let mut out = Validation {
        loss: 0.0,
        dice: Vec::new(),
        dice_full: Vec::new(),
        probs: Vec::new(),
        shapes: Vec::new(),
    };
    for &i in idx {
        let (slide, row) = (&full[i], &rows[i]);
        let side = spec.side(row.pixel_size);
        let plan = tiles::TilePlan::new(slide.width, slide.height, side, spec.overlap, |w| {
            slide.tissue.fraction(w.x, w.y, w.width, w.height) >= min_fraction
        });
        let mut map = BlockMap::new(slide.width, slide.height);
        let (mut inter, mut sum) = (0usize, 0usize);
        for chunk in plan.to_run.chunks(cfg.batch) {
            let samples = chunk
                .par_iter()
                .map(|w| Ok((slide.crop(w.x, w.y, side, spec.size, cache.stain())?, false)))
                .collect::<Result<Vec<_>>>()?;
            let b = data::stack(&samples, &vec![row; chunk.len()], norm, None).to_device(device)?;
            let logits = model.forward(&b.images, &ctx)?.logits;
            loss += losses::segmentation(&logits, &b.masks, &cfg.loss, None, None)?.to_scalar::<f32>()? as f64
                * chunk.len() as f64;
            windows += chunk.len();
            let p = candle_nn::ops::sigmoid(&logits)?.to_device(&Device::Cpu)?;
            for (j, (w, (sample, _))) in chunk.iter().zip(&samples).enumerate() {
                let prob = p.get(j)?.flatten_all()?.to_vec1::<f32>()?;
                for (&q, &m) in prob.iter().zip(&sample.mask) {
                    let pred = usize::from(q > 0.5);
                    inter += pred * m as usize;
                    sum += pred + m as usize;
                }
                plan.blend(&mut map, w, prob, spec.size, 1.0);
            }
        }
        out.dice
            .push(if sum == 0 { 1.0 } else { 2.0 * inter as f64 / sum as f64 });
        let mut dense = vec![0f32; slide.width * slide.height];
        for (y, line) in dense.chunks_exact_mut(slide.width).enumerate() {
            map.row(y, line);
        }
        out.dice_full
            .push(full_res::score_full(&dense, row, &[0.5], None)?.counts.dice(0));
        let factor = spec.factor(row.pixel_size);
        let shape = (
            ((slide.width as f64 * factor).round() as usize).max(1),
            ((slide.height as f64 * factor).round() as usize).max(1),
        );
        out.probs
            .push(resize_map(&dense, slide.width, slide.height, shape.0, shape.1));
        out.shapes.push(shape);
    }
    out.loss = loss / windows.max(1) as f64;
    Ok(out)
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
        progress: &mut dyn Progress,
    ) -> Result<Fold<'a>> {
        let precision: Precision = cfg
            .precision
            .parse()
            .map_err(|m| TrainError::Run(format!("precision: {m}")))?;
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

    /// The state, weights, optimiser and EMA of the last complete epoch.
    fn resume(&mut self, progress: &mut dyn Progress) -> Result<()> {
        let (last, last_optim) = (self.path("last.safetensors"), self.path("last.optim.safetensors"));
        self.state = FoldState::read(self.cfg, self.k)?;
        if let Some(saved) = &self.state.loss_scale {
            self.loss_scale.resume(saved);
        }
        self.settle_checkpoint()?;
        weights::load(&self.model, &last, Scope::Full).at("resuming from", &last)?;
        self.opt.load(&last_optim).at("resuming from", &last_optim)?;
        if let Some(e) = self.ema.as_mut() {
            e.load(&candle_core::safetensors::load(&last_optim, &candle_core::Device::Cpu)?)?;
        }
        progress.finish(&format!(
            "fold {}: resuming after epoch {}",
            self.k, self.state.epochs_done
        ));
        Ok(())
    }

    /// The epochs still to train.
    pub(crate) fn remaining_epochs(&self) -> std::ops::RangeInclusive<usize> {
        self.state.epochs_done + 1..=self.cfg.epochs
    }

    /// One pass over `samples` training slides in batches (the next batch drawn and augmented
    /// while the model works on this one), gradients accumulated, clipped, and stepped.
    pub(crate) fn train_epoch(&mut self, epoch: usize, progress: &mut dyn Progress) -> Result<Trained> {
        let (cfg, k, cache, norm) = (self.cfg, self.k, self.cache, self.norm);
        let mut rng = ChaCha8Rng::seed_from_u64(seed_of(&[cfg.seed, k as u64, epoch as u64]));
        let rows = cache.rows();
        let order = sampling::epoch_order(
            &self.train_idx,
            |i| rows[i].organ,
            self.samples,
            cfg.sampling.weights().as_ref(),
            &mut rng,
        )
        .ok_or_else(|| {
            TrainError::Run(format!(
                "fold {k}: sampling.organ_weights gives weight 0 to every organ of the training slides"
            ))
        })?;
        // Per-image loss factors: the organ's, times pseudo_weight for pseudo-labelled slides.
        let factors = cfg.loss.organ_factors();
        let weighted = factors.is_some() || cache.labelled() < rows.len();
        let device = self.device.clone();
        let image_weights = |chunk: &[usize]| -> Result<Option<Tensor>> {
            if !weighted {
                return Ok(None);
            }
            let w: Vec<f32> = chunk
                .iter()
                .map(|&i| {
                    let organ = factors.map_or(1.0, |f| f[rows[i].organ.index()]);
                    let pseudo = if i >= cache.labelled() { cfg.pseudo_weight } else { 1.0 };
                    (organ * pseudo) as f32
                })
                .collect();
            Ok(Some(Tensor::from_vec(w, chunk.len(), &device)?))
        };
        let frozen = epoch <= cfg.freeze_encoder_epochs;
        let chunks: Vec<&[usize]> = order.chunks(cfg.batch).collect();
        progress.start(&format!("fold {k} epoch {epoch}/{}", cfg.epochs), chunks.len());
        let mut loss_sum = 0f64;
        let mut acc: Option<GradStore> = None;
        let mut in_acc = 0;
        let mut lr = 0.0;
        let seeds_for = |b: usize, n: usize| {
            (0..n)
                .map(|j| seed_of(&[cfg.seed, k as u64, epoch as u64, b as u64, j as u64]))
                .collect::<Vec<_>>()
        };
        // Batch b + 1 is drawn, augmented and uploaded to the device on a thread of its own while
        // batch b trains: on a GPU the host-to-device copy leaves the training thread too.
        let load = |b: usize| -> Result<Option<data::Batch>> {
            let Some(c) = chunks.get(b) else { return Ok(None) };
            let host = data::batch(
                cache,
                c,
                &seeds_for(b, c.len()),
                Some(&cfg.augment),
                norm,
                cfg.pseudo_unsure,
            )?;
            Ok(Some(host.to_device(&device)?))
        };
        let mut next = load(0)?;
        for b in 0..chunks.len() {
            let batch = next.take().expect("a batch is ready");
            let model = &self.model;
            let (loaded, step_result) = std::thread::scope(|scope| {
                let loader = scope.spawn(|| load(b + 1));
                let ctx = Ctx::train(seed_of(&[cfg.seed, k as u64, epoch as u64, b as u64, 99]))
                    .with_precision(self.precision);
                let loss_scale = &self.loss_scale;
                let result = image_weights(chunks[b])
                    .and_then(|weights| loss_and_gradients(cfg, model, &batch, weights.as_ref(), &ctx, loss_scale));
                let loaded = loader
                    .join()
                    .map_err(|_| TrainError::Run("the batch loader panicked".into()));
                (loaded, result)
            });
            next = loaded??;
            let (value, grads) = step_result?;
            if !value.is_finite() {
                let hint = match self.precision {
                    Precision::F16 => "; an activation may be beyond float16's ±65504: try --precision bf16",
                    _ => "",
                };
                return Err(TrainError::Run(format!(
                    "fold {k} epoch {epoch} batch {b}: the loss is {value}; lower optim.lr{hint}"
                )));
            }
            loss_sum += value;
            acc = Some(match acc.take() {
                None => grads,
                Some(mut a) => {
                    for (_, p) in &self.named {
                        if let Some(g) = grads.get(p) {
                            let sum = match a.get(p) {
                                Some(prev) => (prev + g)?,
                                None => g.clone(),
                            };
                            a.insert(p, sum);
                        }
                    }
                    a
                }
            });
            in_acc += 1;
            if in_acc == cfg.optim.accumulate || b + 1 == chunks.len() {
                let grads = acc.take().expect("gradients accumulated");
                lr = self.step(&grads, in_acc, frozen)?;
                in_acc = 0;
            }
            progress.tick(&format!("loss {:.4}", loss_sum / (b + 1) as f64));
        }
        Ok(Trained {
            train_loss: loss_sum / chunks.len() as f64,
            lr,
        })
    }

    /// One optimiser step on gradients summed over `batches` batches (averaged, divided by the
    /// loss scale, clipped to `clip_norm`), then the EMA; returns the step's learning rate. With
    /// float16's dynamic loss scale, gradients that are not finite skip the step (and the EMA).
    fn step(&mut self, grads: &GradStore, batches: usize, frozen: bool) -> Result<f64> {
        let cfg = self.cfg;
        let scale = 1.0 / (batches as f64 * self.loss_scale.scale());
        let norm = self.opt.grad_norm(grads)? * scale;
        if !self.loss_scale.update(norm.is_finite()) {
            return Ok(optim::learning_rate(&cfg.optim, self.opt.step, self.total_steps));
        }
        let clip = if cfg.optim.clip_norm > 0.0 && norm > cfg.optim.clip_norm {
            cfg.optim.clip_norm / norm
        } else {
            1.0
        };
        let lr = optim::learning_rate(&cfg.optim, self.opt.step, self.total_steps);
        let encoder_prefix = &self.encoder_prefix;
        self.opt.step(grads, lr, scale * clip, |name| {
            frozen && name.starts_with(encoder_prefix)
        })?;
        if let Some(e) = self.ema.as_mut() {
            e.update()?;
        }
        Ok(lr)
    }

    /// Validation on the EMA weights when there are some: Dice overall and per organ; a new best
    /// saves its checkpoint and out-of-fold probabilities; overlays of the first slides.
    pub(crate) fn validate(&mut self, epoch: usize) -> Result<Validated> {
        let (cfg, cache) = (self.cfg, self.cache);
        if let Some(e) = self.ema.as_mut() {
            e.swap()?;
        }
        if cfg.optim.bn_recalibrate > 0 {
            self.recalibrate_batch_norm(epoch)?;
        }
        if self.val_idx.is_empty() {
            // A full-data fit: no validation, and every epoch is the one exported.
            self.model.store().save(&self.path("best.safetensors"))?;
            if let Some(e) = self.ema.as_mut() {
                e.swap()?;
            }
            return Ok(Validated {
                loss: f64::NAN,
                dice: f64::NAN,
                dice_full: f64::NAN,
                organ_dice: BTreeMap::new(),
                improved: true,
            });
        }
        let rows = cache.rows();
        let val = evaluate(cfg, &self.model, cache, &self.val_idx, self.norm, &self.device)?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (dice, dice_full) = (mean(&val.dice), mean(&val.dice_full));
        let mut per_organ: BTreeMap<Organ, Vec<f64>> = BTreeMap::new();
        for (&i, &d) in self.val_idx.iter().zip(&val.dice_full) {
            per_organ.entry(rows[i].organ).or_default().push(d);
        }
        let organ_dice = per_organ
            .into_iter()
            .map(|(o, v)| (o, v.iter().sum::<f64>() / v.len() as f64))
            .collect();
        let improved = dice_full > self.state.best_dice;
        if improved {
            self.model.store().save(&self.path("best.safetensors"))?;
            let oof: HashMap<String, Tensor> = self
                .val_idx
                .iter()
                .zip(val.probs.iter().zip(&val.shapes))
                .map(|(&i, (p, &(w, h)))| {
                    Ok((
                        rows[i].id.clone(),
                        Tensor::from_slice(p, (h, w), &candle_core::Device::Cpu)?,
                    ))
                })
                .collect::<Result<_>>()?;
            optim::save_atomic(&oof, &self.path("oof.safetensors"))?;
            // The overlays show the epoch that is exported: the best.
            for ((&i, p), &shape) in self.val_idx.iter().zip(&val.probs).zip(&val.shapes).take(cfg.overlays) {
                self.overlay(i, p, shape)?;
            }
        }
        if let Some(e) = self.ema.as_mut() {
            e.swap()?;
        }
        Ok(Validated {
            loss: val.loss,
            dice,
            dice_full,
            organ_dice,
            improved,
        })
    }

    /// "Precise BN": BatchNorm's running statistics set to the average of `bn_recalibrate`
    /// batches' statistics, on training samples drawn (and augmented) with seeds of the fold
    /// and epoch, so validation and the checkpoint see statistics of the current weights rather
    /// than a momentum average that lags them while the weights move fast (few steps an epoch,
    /// or EMA weights).
    fn recalibrate_batch_norm(&mut self, epoch: usize) -> Result<()> {
        let (cfg, k) = (self.cfg, self.k);
        let mut rng = ChaCha8Rng::seed_from_u64(seed_of(&[cfg.seed, k as u64, epoch as u64, 77]));
        let order: Vec<usize> = (0..cfg.optim.bn_recalibrate * cfg.batch)
            .map(|_| self.train_idx[rng.random_range(0..self.train_idx.len())])
            .collect();
        for (b, chunk) in order.chunks(cfg.batch).enumerate() {
            let seeds: Vec<u64> = (0..chunk.len())
                .map(|j| seed_of(&[cfg.seed, k as u64, epoch as u64, 78, b as u64, j as u64]))
                .collect();
            let batch =
                data::batch(self.cache, chunk, &seeds, Some(&cfg.augment), self.norm, None)?.to_device(&self.device)?;
            self.model
                .forward(&batch.images, &Ctx::recalibrate_with(1.0 / (b + 1) as f64))?;
        }
        Ok(())
    }

    /// foldK/overlays/ID.png: validation slide `i` with its prediction (`prob`, `width × height`
    /// at the training scale, resized up) and truth outlined, at [`OVERLAY_SIDE`] pixels a side or
    /// the slide's own size if smaller.
    fn overlay(&self, i: usize, prob: &[f32], (width, height): (usize, usize)) -> Result<()> {
        let row = &self.cache.rows()[i];
        let (full_w, full_h) = (row.img_width as usize, row.img_height as usize);
        let scale = (OVERLAY_SIDE as f64 / full_w.max(full_h) as f64).min(1.0);
        let side = |v: usize| ((v as f64 * scale).round() as usize).max(1);
        let (ow, oh) = (side(full_w), side(full_h));
        let (rgb, truth) = match self.cache.crops() {
            None => {
                let path = ftu_formats::kaggle::Split::Train
                    .find_image(&self.cfg.data, &row.id)
                    .ok_or_else(|| {
                        TrainError::Run(format!("slide {}: its image is gone from train_images/", row.id))
                    })?;
                let slide = ftu_formats::read_slide(&path, ftu_formats::SlideLimits::default())
                    .map_err(|e| TrainError::Run(e.to_string()))?;
                let truth = ftu_formats::mask::rle::decode(&row.rle, full_h, full_w)
                    .map_err(|e| TrainError::Run(format!("train.csv, slide {}: {e}", row.id)))?;
                let small: Vec<u8> = (0..oh * ow)
                    .map(|j| {
                        let (y, x) = ((j / ow) * full_h / oh, (j % ow) * full_w / ow);
                        truth.data()[y * full_w + x]
                    })
                    .collect();
                (ftu_formats::resize::resize_rgb(&slide, ow, oh), small)
            }
            Some((_, full)) => full[i].overview(ow, oh)?,
        };
        let prob = resize_map(prob, width, height, ow, oh);
        let mask =
            |data: Vec<u8>| ftu_formats::Mask::from_row_major(oh, ow, data).map_err(|e| TrainError::Run(e.to_string()));
        let pred = mask(prob.iter().map(|&v| u8::from(v > 0.5)).collect())?;
        let truth = mask(truth)?;
        let (w, h, px) = ftu_formats::draw::overlay(&rgb, &pred, Some(&truth), ow.max(oh));
        let id = &row.id;
        ftu_formats::mask::image::write_rgb_png(&self.dir.join("overlays").join(format!("{id}.png")), w, h, &px)?;
        Ok(())
    }

    /// Last checkpoint, optimiser state and the fold's state, so that a kill at any instant
    /// resumes from a complete epoch: the weights and optimiser state go to files named by the
    /// epoch (`last.E.safetensors`, `last.E.optim.safetensors`), state.json saying epoch E is
    /// the commit, and only then are they renamed to `last.safetensors` and
    /// `last.optim.safetensors` ([`Fold::resume`] finishes renames a kill interrupted and drops
    /// files of uncommitted epochs). Each file is written atomically.
    pub(crate) fn checkpoint(&mut self, epoch: usize, validated: &Validated) -> Result<()> {
        if validated.improved {
            // -1 when there is no validation (a full-data fit): state.json holds numbers only.
            self.state.best_dice = if validated.dice_full.is_finite() {
                validated.dice_full
            } else {
                -1.0
            };
            self.state.best_epoch = epoch;
        }
        let (weights, optim_path) = self.epoch_files(epoch);
        self.model.store().save(&weights)?;
        self.opt.save(&optim_path)?;
        if let Some(e) = &self.ema {
            let mut all = candle_core::safetensors::load(&optim_path, &candle_core::Device::Cpu)?;
            all.extend(e.tensors());
            optim::save_atomic(&all, &optim_path)?;
        }
        self.state.epochs_done = epoch;
        self.state.loss_scale = self.loss_scale.saved();
        write_json(&self.path("state.json"), &self.state)?;
        self.settle_checkpoint()
    }

    /// Epoch `epoch`'s weights and optimiser files before they become the last checkpoint.
    fn epoch_files(&self, epoch: usize) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("last.{epoch}.safetensors")),
            self.path(&format!("last.{epoch}.optim.safetensors")),
        )
    }

    /// Makes the committed epoch's files (state.json's `epochs_done`) the last checkpoint and
    /// removes files of any other epoch (a kill before the commit leaves them).
    fn settle_checkpoint(&self) -> Result<()> {
        let done = self.state.epochs_done;
        let (weights, optim_path) = self.epoch_files(done);
        for (tagged, last) in [(weights, "last.safetensors"), (optim_path, "last.optim.safetensors")] {
            if tagged.exists() {
                std::fs::rename(&tagged, self.path(last)).at("renaming", &tagged)?;
            }
        }
        let stale = std::fs::read_dir(&self.dir).at("listing", &self.dir)?;
        for entry in stale.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let epoch_file = name
                .strip_prefix("last.")
                .and_then(|rest| rest.split('.').next())
                .is_some_and(|e| e.parse::<usize>().is_ok());
            if epoch_file {
                std::fs::remove_file(entry.path()).at("removing", &entry.path())?;
            }
        }
        Ok(())
    }

    /// The epoch's row in RUN/metrics.csv, this fold's loss and Dice curves, and its line.
    pub(crate) fn record(
        &mut self,
        epoch: usize,
        trained: &Trained,
        validated: &Validated,
        took: Duration,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let k = self.k;
        let organ_dice = |o: Organ| validated.organ_dice.get(&o).copied();
        let row = Metrics {
            fold: k,
            epoch,
            lr: trained.lr,
            train_loss: trained.train_loss,
            val_loss: validated.loss,
            val_dice: validated.dice,
            val_dice_full: validated.dice_full.is_finite().then_some(validated.dice_full),
            dice_kidney: organ_dice(Organ::Kidney),
            dice_prostate: organ_dice(Organ::Prostate),
            dice_largeintestine: organ_dice(Organ::LargeIntestine),
            dice_spleen: organ_dice(Organ::Spleen),
            dice_lung: organ_dice(Organ::Lung),
            seconds: took.as_secs_f64(),
        };
        self.metrics.retain(|m| m.epoch != epoch);
        self.metrics.push(row);
        self.metrics.sort_by_key(|m| m.epoch);
        write_metrics(&self.path("metrics.csv"), &self.metrics)?;
        merge_metrics(self.cfg)?;
        let mine: Vec<&Metrics> = self.metrics.iter().collect();
        let pts = |f: fn(&Metrics) -> f64| {
            mine.iter()
                .map(|m| (m.epoch as f64, f(m)))
                .filter(|p| p.1.is_finite())
                .collect::<Vec<_>>()
        };
        let (loss_png, dice_png) = (self.path("loss.png"), self.path("dice.png"));
        let best = (self.state.best_epoch > 0).then_some(self.state.best_epoch as f64);
        let best = if validated.improved { Some(epoch as f64) } else { best };
        plots::line_chart(
            &loss_png,
            &format!("fold {k} loss"),
            &[("train", pts(|m| m.train_loss)), ("validation", pts(|m| m.val_loss))],
            best,
        )
        .at("plotting", &loss_png)?;
        plots::line_chart(
            &dice_png,
            &format!("fold {k} validation Dice"),
            &[
                ("at training size", pts(|m| m.val_dice)),
                (
                    "full resolution",
                    mine.iter()
                        .filter_map(|m| Some((m.epoch as f64, m.val_dice_full?)))
                        .collect(),
                ),
            ],
            best,
        )
        .at("plotting", &dice_png)?;
        let validation = if validated.dice_full.is_finite() {
            format!(
                "val loss {:.4}, val Dice {:.4} (full resolution {:.4}){}",
                validated.loss,
                validated.dice,
                validated.dice_full,
                if validated.improved { " (best)" } else { "" }
            )
        } else {
            "no validation (a full-data fit)".to_string()
        };
        progress.finish(&format!(
            "fold {k} epoch {epoch}: train loss {:.4}, {validation}{} ({:.1} s)",
            trained.train_loss,
            if self.loss_scale.is_dynamic() {
                format!(
                    "; f16 loss scale {}, {} steps skipped so far",
                    self.loss_scale.scale(),
                    self.loss_scale.skipped
                )
            } else {
                String::new()
            },
            took.as_secs_f64()
        ));
        Ok(())
    }

    /// The best checkpoint as foldK/model.onnx.
    pub(crate) fn export(mut self) -> Result<FoldResult> {
        let (cfg, k) = (self.cfg, self.k);
        let onnx = self.path("model.onnx");
        let best = self.path("best.safetensors");
        let best_model = Segmenter::new(self.arch, arch_config(cfg), 0)?;
        weights::load(&best_model, &best, Scope::Full).at("loading", &best)?;
        let meta = ExportMeta {
            norm: cfg.norm.clone(),
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
    progress: &mut dyn Progress,
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

/// The batch's loss (segmentation, deep supervision, organ and pixel-size heads) and gradients;
/// `image_weights` scale each image's segmentation loss.
fn loss_and_gradients(
    cfg: &TrainConfig,
    model: &Segmenter,
    batch: &Batch,
    image_weights: Option<&Tensor>,
    ctx: &Ctx,
    loss_scale: &LossScale,
) -> Result<(f64, GradStore)> {
    let out = model.forward(&batch.images, ctx)?;
    let keep = batch.keep.as_ref();
    let mut loss = losses::segmentation(&out.logits, &batch.masks, &cfg.loss, image_weights, keep)?;
    for aux in &out.aux {
        let aux_loss = losses::segmentation(aux, &batch.masks, &cfg.loss, image_weights, keep)?;
        loss = (loss + (aux_loss * cfg.loss.deep_supervision)?)?;
    }
    if let Some(organ) = &out.organ {
        let ce = candle_nn::loss::cross_entropy(organ, &batch.organs)?;
        loss = (loss + (ce * cfg.loss.organ)?)?;
    }
    if let Some(px) = &out.pixel_size {
        let mse = candle_nn::loss::mse(px, &batch.pixel_sizes)?;
        loss = (loss + (mse * cfg.loss.pixel_size)?)?;
    }
    let value = loss.to_scalar::<f32>()? as f64;
    Ok((value, loss_scale.backward(&loss)?))
}
