//! `ftu-train train`: k-fold training. Per fold: AdamW with warmup + cosine, accumulation,
//! clipping, optional EMA and encoder freezing; every epoch validation Dice (overall and per
//! organ) into RUN/metrics.csv, curves as PNG, overlays, best/last checkpoints with optimiser
//! state (atomic); the best checkpoint exported to ONNX with its out-of-fold probabilities. After
//! the folds: per-organ thresholds searched on the OOF set and RUN/manifest.toml for ftu-infer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use ftu_formats::manifest::file::{GroupFile, ModelFile, TtaFile};
use ftu_formats::manifest::{ManifestFile, Normalisation, OutputRef};
use ftu_formats::schema::TrainRow;
use ftu_formats::Organ;
use ftu_models::store::is_buffer;
use ftu_models::weights::{self, Scope};
use ftu_models::{Arch, ArchConfig, Ctx, ExportMeta, Segmenter};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, TrainConfig};
use crate::data::{self, DataError, SlideCache};
use crate::optim::{self, AdamW, Ema};
use crate::{folds, losses, plots, thresholds};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ftu_models::ModelError),
    #[error(transparent)]
    Write(#[from] ftu_formats::atomic::WriteError),
    #[error("{what} {path}: {cause}")]
    File {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("{0}")]
    Run(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Names the file an error came from.
trait At<T> {
    fn at(self, what: &'static str, path: &Path) -> Result<T>;
}

impl<T, E: std::fmt::Display> At<T> for std::result::Result<T, E> {
    fn at(self, what: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| TrainError::File {
            what,
            path: path.to_path_buf(),
            cause: e.to_string(),
        })
    }
}

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

/// One row of RUN/metrics.csv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub fold: usize,
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_dice: f64,
    pub dice_kidney: Option<f64>,
    pub dice_prostate: Option<f64>,
    pub dice_largeintestine: Option<f64>,
    pub dice_spleen: Option<f64>,
    pub dice_lung: Option<f64>,
    pub seconds: f64,
}

/// RUN/foldK/state.json: where a fold stands, for `--resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FoldState {
    /// Epochs finished.
    epochs_done: usize,
    best_dice: f64,
    best_epoch: usize,
    /// Set once the best checkpoint has been exported.
    exported: bool,
}

pub struct FoldResult {
    pub fold: usize,
    pub best_dice: f64,
    pub best_epoch: usize,
    pub onnx: PathBuf,
}

pub struct RunSummary {
    pub folds: Vec<FoldResult>,
    pub manifest: Option<PathBuf>,
    pub thresholds: Option<thresholds::Thresholds>,
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).at("writing", path)?;
    Ok(ftu_formats::atomic::write_atomic(path, |w| {
        std::io::Write::write_all(w, text.as_bytes())
    })?)
}

fn seed_of(parts: &[u64]) -> u64 {
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

/// Runs the configured folds and writes the manifest. `resume` continues fold checkpoints.
pub fn run(cfg: &TrainConfig, resume: bool, progress: &mut dyn Progress) -> Result<RunSummary> {
    cfg.validate()?;
    if cfg.device != "cpu" {
        return Err(TrainError::Run(format!(
            "device {:?}: this build trains on the CPU only (the models crate keeps its variables on the CPU); use --device cpu",
            cfg.device
        )));
    }
    let arch: Arch = cfg.arch.parse().map_err(|e| TrainError::Run(format!("arch: {e}")))?;
    std::fs::create_dir_all(&cfg.out).at("creating", &cfg.out)?;
    let config_path = cfg.out.join("config.toml");
    if resume && config_path.exists() {
        let saved = TrainConfig::from_toml_file(&config_path)?;
        if saved != *cfg {
            return Err(TrainError::Run(format!(
                "--resume: the options differ from the run's {}; resume with the same options",
                config_path.display()
            )));
        }
    }
    let text = cfg.to_toml();
    ftu_formats::atomic::write_atomic(&config_path, |w| std::io::Write::write_all(w, text.as_bytes()))?;

    let train_csv = ftu_formats::kaggle::Split::Train.csv(&cfg.data);
    let rows = ftu_formats::schema::read_train(&train_csv).at("reading", &train_csv)?;
    if rows.len() < cfg.folds {
        return Err(TrainError::Run(format!(
            "{}: {} slides cannot make {} folds",
            train_csv.display(),
            rows.len(),
            cfg.folds
        )));
    }
    let fold_of = folds::stratified(&rows, cfg.folds, cfg.seed);
    folds::write(&cfg.out.join("folds.csv"), &rows, &fold_of)?;

    if cfg.workers > 0 {
        // Ignored when a global pool already exists (a second run in one process).
        let _ = rayon::ThreadPoolBuilder::new().num_threads(cfg.workers).build_global();
    }
    let tick = progress.ticker("decode", rows.len());
    let cache = SlideCache::build(
        &cfg.data,
        rows.clone(),
        cfg.size,
        cfg.cache_mb << 20,
        cfg.augment.stain_normalize_to.as_deref(),
        tick,
    )?;
    progress.finish(&format!(
        "decoded {} slides at {}² ({} kept in memory)",
        rows.len(),
        cfg.size,
        cache.cached()
    ));
    let norm = data::normaliser(&cfg.norm)?;
    let folds_to_run: Vec<usize> = match cfg.fold {
        Some(k) => vec![k],
        None => (0..cfg.folds).collect(),
    };
    let mut results = Vec::new();
    for k in folds_to_run {
        results.push(train_fold(cfg, arch, &cache, &fold_of, k, &norm, resume, progress)?);
    }
    // The manifest covers every fold of the run that has finished (folds may run separately).
    let finished: Vec<usize> = (0..cfg.folds)
        .filter(|k| {
            let dir = fold_dir(cfg, *k);
            dir.join("model.onnx").exists() && dir.join("oof.safetensors").exists()
        })
        .collect();
    let (manifest, th) = if finished.is_empty() {
        (None, None)
    } else {
        let (path, th) = write_manifest(cfg, &cache, &fold_of, &finished)?;
        (Some(path), Some(th))
    };
    Ok(RunSummary {
        folds: results,
        manifest,
        thresholds: th,
    })
}

fn fold_dir(cfg: &TrainConfig, k: usize) -> PathBuf {
    cfg.out.join(format!("fold{k}"))
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

fn write_metrics(path: &Path, rows: &[Metrics]) -> Result<()> {
    Ok(ftu_formats::atomic::write_atomic(path, |w| {
        let mut csv = csv::Writer::from_writer(w);
        for r in rows {
            csv.serialize(r).map_err(std::io::Error::other)?;
        }
        csv.flush()
    })?)
}

/// Validation of one fold: mean loss, per-slide Dice at 0.5 and probabilities (training scale).
struct Validation {
    loss: f64,
    dice: Vec<f64>,
    probs: Vec<Vec<f32>>,
}

fn validate(
    cfg: &TrainConfig,
    model: &Segmenter,
    cache: &SlideCache,
    idx: &[usize],
    norm: &Normalisation,
) -> Result<Validation> {
    let ctx = Ctx::eval();
    let (mut loss, mut dice_all, mut probs) = (0f64, Vec::new(), Vec::new());
    for chunk in idx.chunks(cfg.batch) {
        let seeds = vec![0; chunk.len()];
        let b = data::batch(cache, chunk, &seeds, None, norm)?;
        let out = model.forward(&b.images, &ctx)?;
        loss += losses::segmentation(&out.logits, &b.masks, &cfg.loss)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        let p = candle_nn::ops::sigmoid(&out.logits)?;
        for (j, &i) in chunk.iter().enumerate() {
            let prob = p.get(j)?.flatten_all()?.to_vec1::<f32>()?;
            dice_all.push(ftu_formats::dice::dice_thresholded(&prob, 0.5, &cache.get(i)?.mask));
            probs.push(prob);
        }
    }
    Ok(Validation {
        loss: loss / idx.len().max(1) as f64,
        dice: dice_all,
        probs,
    })
}

#[allow(clippy::too_many_arguments)]
fn train_fold(
    cfg: &TrainConfig,
    arch: Arch,
    cache: &SlideCache,
    fold_of: &[usize],
    k: usize,
    norm: &Normalisation,
    resume: bool,
    progress: &mut dyn Progress,
) -> Result<FoldResult> {
    let dir = fold_dir(cfg, k);
    std::fs::create_dir_all(dir.join("overlays")).at("creating", &dir.join("overlays"))?;
    let train_idx: Vec<usize> = (0..fold_of.len()).filter(|&i| fold_of[i] != k).collect();
    let val_idx: Vec<usize> = (0..fold_of.len()).filter(|&i| fold_of[i] == k).collect();
    let rows = cache.rows();

    let model = Segmenter::new(arch, arch_config(cfg), seed_of(&[cfg.seed, k as u64]))?;
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
    let params: Vec<(String, candle_core::Var)> = named.iter().filter(|(n, _)| !is_buffer(n)).cloned().collect();
    let mut opt = AdamW::new(params, cfg.optim.clone())?;
    let mut ema = if cfg.optim.ema > 0.0 {
        Some(Ema::new(named.clone(), cfg.optim.ema)?)
    } else {
        None
    };
    let encoder_prefix = format!("{}.", arch.encoder.prefix());

    let (last, last_optim, state_path, best) = (
        dir.join("last.safetensors"),
        dir.join("last.optim.safetensors"),
        dir.join("state.json"),
        dir.join("best.safetensors"),
    );
    let metrics_path = cfg.out.join("metrics.csv");
    let mut state = FoldState {
        epochs_done: 0,
        best_dice: -1.0,
        best_epoch: 0,
        exported: false,
    };
    if resume && state_path.exists() {
        let text = std::fs::read_to_string(&state_path).at("reading", &state_path)?;
        state = serde_json::from_str(&text).at("reading", &state_path)?;
        weights::load(&model, &last, Scope::Full).at("resuming from", &last)?;
        opt.load(&last_optim).at("resuming from", &last_optim)?;
        if let Some(e) = ema.as_mut() {
            e.load(&candle_core::safetensors::load(&last_optim, &candle_core::Device::Cpu)?)?;
        }
        progress.finish(&format!("fold {k}: resuming after epoch {}", state.epochs_done));
    }
    // This fold's earlier rows survive only up to where it resumes.
    let mut all_metrics: Vec<Metrics> = read_metrics(&metrics_path)?
        .into_iter()
        .filter(|m| m.fold != k || m.epoch <= state.epochs_done)
        .collect();

    let samples = if cfg.samples_per_epoch == 0 {
        train_idx.len()
    } else {
        cfg.samples_per_epoch
    };
    let batches = samples.div_ceil(cfg.batch);
    let steps_per_epoch = batches.div_ceil(cfg.optim.accumulate);
    let total_steps = steps_per_epoch * cfg.epochs;

    for epoch in state.epochs_done + 1..=cfg.epochs {
        let start = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed_of(&[cfg.seed, k as u64, epoch as u64]));
        let mut order = Vec::with_capacity(samples);
        while order.len() < samples {
            let mut pass = train_idx.clone();
            pass.shuffle(&mut rng);
            order.extend(pass);
        }
        order.truncate(samples);
        let frozen = epoch <= cfg.freeze_encoder_epochs;
        progress.start(&format!("fold {k} epoch {epoch}/{}", cfg.epochs), batches);
        let mut loss_sum = 0f64;
        let mut acc: Option<candle_core::backprop::GradStore> = None;
        let mut in_acc = 0;
        let mut lr = 0.0;
        let chunks: Vec<&[usize]> = order.chunks(cfg.batch).collect();
        let seeds_for = |b: usize, n: usize| {
            (0..n)
                .map(|j| seed_of(&[cfg.seed, k as u64, epoch as u64, b as u64, j as u64]))
                .collect::<Vec<_>>()
        };
        // The next batch is drawn and augmented while the model works on this one.
        let mut next = Some(data::batch(
            cache,
            chunks[0],
            &seeds_for(0, chunks[0].len()),
            Some(&cfg.augment),
            norm,
        )?);
        for b in 0..chunks.len() {
            let current = next.take().expect("a batch is ready");
            let (loaded, step_result) = std::thread::scope(|scope| {
                let loader = scope.spawn(|| {
                    chunks
                        .get(b + 1)
                        .map(|c| data::batch(cache, c, &seeds_for(b + 1, c.len()), Some(&cfg.augment), norm))
                        .transpose()
                });
                let step = || -> Result<(f64, candle_core::backprop::GradStore)> {
                    let ctx = Ctx::train(seed_of(&[cfg.seed, k as u64, epoch as u64, b as u64, 99]));
                    let out = model.forward(&current.images, &ctx)?;
                    let mut loss = losses::segmentation(&out.logits, &current.masks, &cfg.loss)?;
                    for aux in &out.aux {
                        loss = (loss
                            + (losses::segmentation(aux, &current.masks, &cfg.loss)? * cfg.loss.deep_supervision)?)?;
                    }
                    if let Some(organ) = &out.organ {
                        let ce = candle_nn::loss::cross_entropy(organ, &current.organs)?;
                        loss = (loss + (ce * cfg.loss.organ)?)?;
                    }
                    if let Some(px) = &out.pixel_size {
                        let mse = candle_nn::loss::mse(px, &current.pixel_sizes)?;
                        loss = (loss + (mse * cfg.loss.pixel_size)?)?;
                    }
                    let value = loss.to_scalar::<f32>()? as f64;
                    Ok((value, loss.backward()?))
                };
                let result = step();
                let loaded = loader
                    .join()
                    .map_err(|_| TrainError::Run("the batch loader panicked".into()));
                (loaded, result)
            });
            next = loaded??;
            let (value, grads) = step_result?;
            if !value.is_finite() {
                return Err(TrainError::Run(format!(
                    "fold {k} epoch {epoch} batch {b}: the loss is {value}; lower optim.lr"
                )));
            }
            loss_sum += value;
            acc = Some(match acc.take() {
                None => grads,
                Some(mut a) => {
                    for (_, p) in &named {
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
                let scale = 1.0 / in_acc as f64;
                let norm = opt.grad_norm(&grads)? * scale;
                let clip = if cfg.optim.clip_norm > 0.0 && norm > cfg.optim.clip_norm {
                    cfg.optim.clip_norm / norm
                } else {
                    1.0
                };
                lr = optim::learning_rate(&cfg.optim, opt.step, total_steps);
                opt.step(&grads, lr, scale * clip, |name| {
                    frozen && name.starts_with(&encoder_prefix)
                })?;
                if let Some(e) = ema.as_mut() {
                    e.update()?;
                }
                in_acc = 0;
            }
            progress.tick(&format!("loss {:.4}", loss_sum / (b + 1) as f64));
        }
        let train_loss = loss_sum / chunks.len() as f64;

        // Validation (on the EMA weights when there are some).
        if let Some(e) = ema.as_mut() {
            e.swap()?;
        }
        let val = validate(cfg, &model, cache, &val_idx, norm)?;
        let val_dice = val.dice.iter().sum::<f64>() / val.dice.len().max(1) as f64;
        let mut per_organ: BTreeMap<Organ, Vec<f64>> = BTreeMap::new();
        for (&i, &d) in val_idx.iter().zip(&val.dice) {
            per_organ.entry(rows[i].organ).or_default().push(d);
        }
        let organ_dice = |o: Organ| per_organ.get(&o).map(|v| v.iter().sum::<f64>() / v.len() as f64);
        let improved = val_dice > state.best_dice;
        if improved {
            state.best_dice = val_dice;
            state.best_epoch = epoch;
            model.store().save(&best)?;
            let oof: HashMap<String, Tensor> = val_idx
                .iter()
                .zip(&val.probs)
                .map(|(&i, p)| {
                    Ok((
                        rows[i].id.clone(),
                        Tensor::from_slice(p, (cfg.size, cfg.size), &candle_core::Device::Cpu)?,
                    ))
                })
                .collect::<Result<_>>()?;
            optim::save_atomic(&oof, &dir.join("oof.safetensors"))?;
        }
        for (&i, p) in val_idx.iter().zip(&val.probs).take(cfg.overlays) {
            let slide = cache.get(i)?;
            let rgb = ftu_formats::RgbImage {
                width: cfg.size,
                height: cfg.size,
                data: slide.image.iter().map(|&v| (v * 255.0).round() as u8).collect(),
            };
            let mask = |data: Vec<u8>| {
                ftu_formats::Mask::from_row_major(cfg.size, cfg.size, data).map_err(|e| TrainError::Run(e.to_string()))
            };
            let pred = mask(p.iter().map(|&v| u8::from(v > 0.5)).collect())?;
            let truth = mask(slide.mask.clone())?;
            let (w, h, px) = ftu_formats::draw::overlay(&rgb, &pred, Some(&truth), cfg.size);
            ftu_formats::mask::image::write_rgb_png(
                &dir.join("overlays").join(format!("{}.png", rows[i].id)),
                w,
                h,
                &px,
            )?;
        }
        if let Some(e) = ema.as_mut() {
            e.swap()?;
        }

        // Last checkpoint, optimiser state and the fold's state, each written atomically; the
        // state last, so a kill between them resumes from the previous complete epoch.
        model.store().save(&last)?;
        let mut optim_tensors = HashMap::new();
        if let Some(e) = &ema {
            optim_tensors.extend(e.tensors());
        }
        opt.save(&last_optim)?;
        if !optim_tensors.is_empty() {
            let mut all = candle_core::safetensors::load(&last_optim, &candle_core::Device::Cpu)?;
            all.extend(optim_tensors);
            optim::save_atomic(&all, &last_optim)?;
        }
        state.epochs_done = epoch;
        write_json(&state_path, &state)?;

        let row = Metrics {
            fold: k,
            epoch,
            lr,
            train_loss,
            val_loss: val.loss,
            val_dice,
            dice_kidney: organ_dice(Organ::Kidney),
            dice_prostate: organ_dice(Organ::Prostate),
            dice_largeintestine: organ_dice(Organ::LargeIntestine),
            dice_spleen: organ_dice(Organ::Spleen),
            dice_lung: organ_dice(Organ::Lung),
            seconds: start.elapsed().as_secs_f64(),
        };
        all_metrics.retain(|m| !(m.fold == k && m.epoch == epoch));
        all_metrics.push(row);
        all_metrics.sort_by_key(|m| (m.fold, m.epoch));
        write_metrics(&metrics_path, &all_metrics)?;
        let mine: Vec<&Metrics> = all_metrics.iter().filter(|m| m.fold == k).collect();
        let pts = |f: fn(&Metrics) -> f64| mine.iter().map(|m| (m.epoch as f64, f(m))).collect::<Vec<_>>();
        plots::line_chart(
            &dir.join("loss.png"),
            &format!("fold {k} loss"),
            &[("train", pts(|m| m.train_loss)), ("validation", pts(|m| m.val_loss))],
        )
        .at("plotting", &dir.join("loss.png"))?;
        plots::line_chart(
            &dir.join("dice.png"),
            &format!("fold {k} validation Dice"),
            &[("dice", pts(|m| m.val_dice))],
        )
        .at("plotting", &dir.join("dice.png"))?;
        progress.finish(&format!(
            "fold {k} epoch {epoch}: train loss {train_loss:.4}, val loss {:.4}, val Dice {val_dice:.4}{} ({:.1} s)",
            val.loss,
            if improved { " (best)" } else { "" },
            start.elapsed().as_secs_f64()
        ));
    }

    // Export the best checkpoint.
    let onnx = dir.join("model.onnx");
    let best_model = Segmenter::new(arch, arch_config(cfg), 0)?;
    weights::load(&best_model, &best, Scope::Full).at("loading", &best)?;
    let meta = ExportMeta {
        norm: cfg.norm.clone(),
        train_size: Some(cfg.size),
        fold: Some(k),
        val_dice: Some(state.best_dice),
    };
    let proto = best_model.export(&meta)?;
    ftu_onnx::write(&proto, &onnx).at("writing", &onnx)?;
    state.exported = true;
    write_json(&state_path, &state)?;
    Ok(FoldResult {
        fold: k,
        best_dice: state.best_dice,
        best_epoch: state.best_epoch,
        onnx,
    })
}

/// Threshold search on the OOF set of the finished folds, then RUN/manifest.toml.
fn write_manifest(
    cfg: &TrainConfig,
    cache: &SlideCache,
    fold_of: &[usize],
    finished: &[usize],
) -> Result<(PathBuf, thresholds::Thresholds)> {
    let rows: &[TrainRow] = cache.rows();
    let mut oof = Vec::new();
    let mut weights = Vec::new();
    for &k in finished {
        let dir = fold_dir(cfg, k);
        let probs = candle_core::safetensors::load(dir.join("oof.safetensors"), &candle_core::Device::Cpu)?;
        for (i, row) in rows.iter().enumerate().filter(|(i, _)| fold_of[*i] == k) {
            let p = probs.get(&row.id).ok_or_else(|| TrainError::File {
                what: "reading",
                path: dir.join("oof.safetensors"),
                cause: format!("no probabilities for slide {}", row.id),
            })?;
            oof.push(thresholds::OofSlide {
                organ: row.organ,
                prob: p.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                truth: cache.get(i)?.mask.clone(),
            });
        }
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).at("reading", &state_path)?;
        let state: FoldState = serde_json::from_str(&text).at("reading", &state_path)?;
        weights.push(if cfg.ensemble.weight_by_dice {
            state.best_dice.max(1e-3)
        } else {
            1.0
        });
    }
    let e = &cfg.ensemble;
    let grid = thresholds::grid(e.threshold_from, e.threshold_to, e.threshold_step);
    let th = thresholds::search(&oof, &grid);
    let mut table = toml::Table::new();
    table.insert("default".to_string(), toml::Value::Float(th.default.threshold));
    for (organ, choice) in &th.per_organ {
        table.insert(organ.as_str().to_string(), toml::Value::Float(choice.threshold));
    }
    let manifest = ManifestFile {
        tta: Some(TtaFile {
            mode: Some(e.tta.clone()),
            scales: None,
        }),
        thresholds: Some(table),
        group: vec![GroupFile {
            size: cfg.size as i64,
            weight: Some(1.0),
            model: finished
                .iter()
                .zip(&weights)
                .map(|(k, w)| ModelFile {
                    path: format!("fold{k}/model.onnx").into(),
                    weight: Some(*w),
                    norm: Some(cfg.norm.clone()),
                    output: Some(OutputRef::Name("logits".into())),
                    activation: Some("sigmoid".into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let path = cfg.out.join("manifest.toml");
    let comment = format!(
        "Written by ftu-train from {} fold(s) of {}; thresholds searched on their out-of-fold predictions.",
        finished.len(),
        cfg.arch
    );
    manifest
        .write(&path, &comment)
        .map_err(|e| TrainError::Run(e.to_string()))?;
    write_json(&cfg.out.join("thresholds.json"), &th)?;
    Ok((path, th))
}
