//! `ftu-train train`: k-fold training. Per fold: AdamW with warmup + cosine, accumulation,
//! clipping, optional EMA and encoder freezing; every epoch validation Dice (at the training size
//! and at full resolution, overall and per organ) into RUN/metrics.csv, curves as PNG, overlays,
//! best/last checkpoints with optimiser state (atomic); the best checkpoint exported to ONNX with
//! its out-of-fold probabilities. After the folds: per-organ thresholds searched on the
//! full-resolution OOF set and RUN/manifest.toml for ftu-infer.
//!
//! With several `sizes`, the folds (the same split) are trained at each size in RUN/sizeS/, each
//! with its own manifest, and RUN/manifest.toml serves them together: one group per size, the
//! thresholds searched on their blended OOF maps, blended as ftu-infer blends groups.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::DType;
use ftu_formats::manifest::file::{GroupFile, ModelFile, PostprocessFile, TtaFile};
use ftu_formats::manifest::{ManifestFile, OutputRef};
use ftu_formats::schema::{self, PseudoRow, SubmissionRow, TrainRow};
use rayon::prelude::*;

use crate::config::{SamplingMode, TrainConfig};
use crate::data::crops::CropSpec;
use crate::data::split;
use crate::data::SlideCache;
use crate::error::At;
pub use crate::error::{Result, TrainError};
use crate::eval::{full_res, thresholds};
pub use crate::fold::{arch_config, FoldProgress, FoldResult, Metrics};
use crate::fold::{train_fold, write_json, FoldState};
use crate::run_dir::{self, fold_dir, RunMode};

pub struct RunSummary {
    pub folds: Vec<FoldResult>,
    pub manifest: Option<PathBuf>,
    pub thresholds: Option<thresholds::Thresholds>,
}

/// The finished folds of one training size: a group of the manifest.
struct Group {
    /// The run at this size.
    cfg: TrainConfig,
    /// The size's folder inside the manifest's folder ("" for a single size).
    prefix: String,
    finished: Vec<usize>,
    /// Each finished fold's best full-resolution validation Dice.
    fold_dice: Vec<f64>,
    weight: f64,
}

/// Runs the configured folds (at each size) and writes the manifest. `resume` continues fold
/// checkpoints; see [`run_with`] for the other ways into an existing run folder.
pub fn run(cfg: &TrainConfig, resume: bool, progress: &mut dyn FoldProgress) -> Result<RunSummary> {
    run_with(
        cfg,
        RunMode {
            resume,
            overwrite: false,
        },
        progress,
    )
}

/// The run's labelled slides and the fold of each: the stratified split of every slide of
/// train.csv, then (with `organs`) only those organs' slides, each keeping its fold.
pub fn slides_and_folds(cfg: &TrainConfig) -> Result<(Vec<TrainRow>, Vec<usize>)> {
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
    let fold_of = split::stratified(&rows, cfg.folds, cfg.seed);
    if cfg.organs.is_empty() {
        return Ok((rows, fold_of));
    }
    let (rows, fold_of): (Vec<TrainRow>, Vec<usize>) = rows
        .into_iter()
        .zip(fold_of)
        .filter(|(r, _)| cfg.organs.contains(&r.organ))
        .unzip();
    let organs: Vec<&str> = cfg.organs.iter().map(|o| o.as_str()).collect();
    for k in 0..cfg.folds {
        if !fold_of.contains(&k) {
            return Err(TrainError::Run(format!(
                "{}: the {} slides of {} leave fold {k} of {} without a validation slide; use fewer folds",
                train_csv.display(),
                rows.len(),
                organs.join(", "),
                cfg.folds
            )));
        }
    }
    Ok((rows, fold_of))
}

/// [`run`] with the rules of [`crate::run_dir`] for an `--out` that holds a run: `--resume`,
/// `--overwrite`, and fold jobs (`fold = K`) joining the run's folder. The inputs (train.csv,
/// the pretrained file, pseudo-labels) are checked before anything is written. The run's
/// manifest is written once every fold (at every size) has finished, by whichever job finishes
/// last, so no manifest ever lacks a finished fold.
pub fn run_with(cfg: &TrainConfig, mode: RunMode, progress: &mut dyn FoldProgress) -> Result<RunSummary> {
    cfg.validate()?;
    let (rows, fold_of) = slides_and_folds(cfg)?;
    if let Some(path) = &cfg.pretrained {
        if !path.is_file() {
            return Err(TrainError::Run(format!(
                "pretrained: {} is not a file (a timm or Hugging Face model.safetensors)",
                path.display()
            )));
        }
    }
    let pseudo = match &cfg.pseudo {
        Some(path) => schema::read_pseudo(path).at("reading", path)?,
        None => Vec::new(),
    };
    run_dir::claim(cfg, mode)?;
    run_dir::write_folds(&cfg.out, &rows, &fold_of)?;
    let resume = mode.resume;
    if cfg.workers > 0 {
        // Ignored when a global pool already exists (a second run in one process).
        let _ = rayon::ThreadPoolBuilder::new().num_threads(cfg.workers).build_global();
    }

    if cfg.sizes.is_empty() {
        let (folds, group) = train_size(cfg, &rows, &pseudo, &fold_of, resume, progress)?;
        let written = match group {
            Some(g) => Some(write_manifest(cfg, &rows, &fold_of, &[g])?),
            None => {
                waiting(cfg, progress);
                None
            }
        };
        return Ok(summary(folds, written));
    }
    let mut all = Vec::new();
    let mut groups = Vec::new();
    for (i, &size) in cfg.sizes.iter().enumerate() {
        let sub = cfg.at_size(size);
        progress.finish(&format!("size {size}²: {}", sub.out.display()));
        run_dir::write_size_config(&sub)?;
        run_dir::write_folds(&sub.out, &rows, &fold_of)?;
        let (folds, group) = train_size(&sub, &rows, &pseudo, &fold_of, resume, progress)?;
        all.extend(folds);
        if let Some(mut g) = group {
            // The size's own manifest serves it alone.
            write_manifest(&sub, &rows, &fold_of, std::slice::from_ref(&g))?;
            g.prefix = format!("size{size}/");
            g.weight = match cfg.ensemble.size_weights.get(i) {
                Some(&w) => w,
                None if cfg.ensemble.weight_by_dice => oof_dice(&g, &fold_of).max(1e-3),
                None => 1.0,
            };
            groups.push(g);
        } else {
            waiting(&sub, progress);
        }
    }
    // The joint manifest once every size has finished every fold.
    let written = if groups.len() == cfg.sizes.len() {
        Some(write_manifest(cfg, &rows, &fold_of, &groups)?)
    } else {
        None
    };
    Ok(summary(all, written))
}

/// Says which folds are still to finish before the manifest is written.
fn waiting(cfg: &TrainConfig, progress: &mut dyn FoldProgress) {
    let open: Vec<String> = (0..cfg.folds)
        .filter(|&k| !run_dir::fold_finished(cfg, k))
        .map(|k| k.to_string())
        .collect();
    progress.finish(&format!(
        "{}: {} of {} folds finished; the manifest is written when fold(s) {} finish (by their job, or by `ftu-train train --resume`)",
        cfg.out.display(),
        cfg.folds - open.len(),
        cfg.folds,
        open.join(", ")
    ));
}

fn summary(folds: Vec<FoldResult>, written: Option<(PathBuf, Option<thresholds::Thresholds>)>) -> RunSummary {
    let (manifest, thresholds) = written.unzip();
    RunSummary {
        folds,
        manifest,
        thresholds: thresholds.flatten(),
    }
}

/// The folds at `cfg.size` (all of them, or the job's `fold`); the group of the run's folds when
/// every one has finished (folds may run as separate jobs).
fn train_size(
    cfg: &TrainConfig,
    rows: &[TrainRow],
    pseudo: &[PseudoRow],
    fold_of: &[usize],
    resume: bool,
    progress: &mut dyn FoldProgress,
) -> Result<(Vec<FoldResult>, Option<Group>)> {
    let device = cfg.device.open().map_err(|e| TrainError::Run(e.to_string()))?;
    let arch = cfg.arch;
    let tick = progress.ticker("decode", rows.len() + pseudo.len());
    let stain_target = cfg.augment.stain_normalize_to.as_deref();
    let (cache, scale) = match cfg.sampling.mode {
        SamplingMode::Resize => {
            let cache = SlideCache::build(
                &cfg.data,
                rows.to_vec(),
                pseudo.to_vec(),
                cfg.size,
                cfg.cache_mb << 20,
                stain_target,
                tick,
            )?;
            (cache, format!("at {}²", cfg.size))
        }
        SamplingMode::Crops => {
            let spec = CropSpec::new(cfg.size, &cfg.sampling);
            let cache = SlideCache::build_crops(
                &cfg.data,
                rows.to_vec(),
                pseudo.to_vec(),
                spec,
                cfg.cache_mb << 20,
                stain_target,
                tick,
            )?;
            let scale = match spec.pixel_size {
                Some(p) => format!("for {}² crops at {p} µm per pixel", cfg.size),
                None => format!("for {}² crops at scale {}", cfg.size, spec.scale),
            };
            (cache, scale)
        }
    };
    progress.finish(&format!(
        "decoded {} slides{} {scale} ({} kept in memory)",
        rows.len(),
        if pseudo.is_empty() {
            String::new()
        } else {
            format!(" and {} pseudo-labelled", pseudo.len())
        },
        cache.cached()
    ));
    let norm = cfg.norm.preset();
    let folds_to_run: Vec<usize> = match cfg.fold {
        Some(k) => vec![k],
        None => (0..cfg.folds).collect(),
    };
    let mut results = Vec::new();
    for k in folds_to_run {
        results.push(train_fold(
            cfg, arch, &device, &cache, fold_of, k, &norm, resume, progress,
        )?);
    }
    let finished: Vec<usize> = (0..cfg.folds).filter(|&k| run_dir::fold_finished(cfg, k)).collect();
    if finished.len() < cfg.folds {
        return Ok((results, None));
    }
    let fold_dice = finished
        .iter()
        .map(|&k| Ok(FoldState::read(cfg, k)?.best_dice))
        .collect::<Result<Vec<f64>>>()?;
    let group = Group {
        cfg: cfg.clone(),
        prefix: String::new(),
        finished,
        fold_dice,
        weight: 1.0,
    };
    Ok((results, Some(group)))
}

/// The group's out-of-fold Dice at 0.5 and full resolution: its folds' best Dice, each over its
/// validation slides.
fn oof_dice(g: &Group, fold_of: &[usize]) -> f64 {
    let count = |k: usize| fold_of.iter().filter(|&&f| f == k).count() as f64;
    let slides: f64 = g.finished.iter().map(|&k| count(k)).sum();
    g.finished
        .iter()
        .zip(&g.fold_dice)
        .map(|(&k, d)| d * count(k))
        .sum::<f64>()
        / slides.max(1.0)
}

/// A slide's out-of-fold map at the training scale: values, width, height.
type OofMap = (Vec<f32>, usize, usize);

/// Each slide's out-of-fold map (training scale) of a group, from its folds' oof.safetensors.
fn oof_maps(g: &Group, rows: &[TrainRow], fold_of: &[usize]) -> Result<HashMap<usize, OofMap>> {
    let mut maps = HashMap::new();
    for &k in &g.finished {
        let path = fold_dir(&g.cfg, k).join("oof.safetensors");
        let probs = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)?;
        for (i, row) in rows.iter().enumerate().filter(|(i, _)| fold_of[*i] == k) {
            let p = probs.get(&row.id).ok_or_else(|| TrainError::File {
                what: "reading",
                path: path.clone(),
                cause: format!("no probabilities for slide {}", row.id),
            })?;
            let (h, w) = p.dims2()?;
            maps.insert(i, (p.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?, w, h));
        }
    }
    Ok(maps)
}

/// The threshold search on the groups' out-of-fold maps, blended by group weight at each slide's
/// full resolution; then, in `cfg.out`: manifest.toml (a group per size), thresholds.json and
/// oof.csv (the blended out-of-fold masks at 0.5 and full resolution, in train.csv's order, a
/// submission `ftu-infer score --truth train.csv` scores).
fn write_manifest(
    cfg: &TrainConfig,
    rows: &[TrainRow],
    fold_of: &[usize],
    groups: &[Group],
) -> Result<(PathBuf, Option<thresholds::Thresholds>)> {
    for g in groups {
        crate::fold::merge_metrics(&g.cfg)?;
    }
    let e = &cfg.ensemble;
    // A full-data fit has no out-of-fold predictions: its thresholds come from another run.
    let (table, postprocess, searched) = if cfg.folds == 1 {
        let (table, postprocess) = borrowed_thresholds(cfg)?;
        (table, postprocess, None)
    } else {
        let (th, submission) = search_oof(cfg, rows, fold_of, groups)?;
        let mut table = toml::Table::new();
        table.insert("default".to_string(), toml::Value::Float(th.default.threshold));
        for (organ, choice) in &th.per_organ {
            table.insert(organ.as_str().to_string(), toml::Value::Float(choice.threshold));
        }
        (table, None, Some((th, submission)))
    };
    let crops =
        |g: &Group| (g.cfg.sampling.mode == SamplingMode::Crops).then(|| CropSpec::new(g.cfg.size, &g.cfg.sampling));
    let group_file = |g: &Group| GroupFile {
        size: g.cfg.size as i64,
        weight: Some(g.weight),
        // Crops mode serves as a tiled group at the crop scale (`target_pixel_size` below when
        // the scale is a pixel size).
        mode: crops(g).map(|_| "tiles".into()),
        overlap: crops(g).map(|c| c.overlap),
        scale: crops(g).filter(|c| c.pixel_size.is_none()).map(|c| c.scale),
        batch: crops(g).map(|_| g.cfg.batch as i64),
        model: g
            .finished
            .iter()
            .zip(&g.fold_dice)
            .map(|(k, d)| ModelFile {
                path: format!("{}fold{k}/model.onnx", g.prefix).into(),
                weight: Some(if e.weight_by_dice { d.max(1e-3) } else { 1.0 }),
                norm: Some(g.cfg.norm.name().to_string()),
                output: Some(OutputRef::Name("logits".into())),
                activation: Some("sigmoid".into()),
                organs: (!g.cfg.organs.is_empty()).then(|| {
                    let mut organs = g.cfg.organs.clone();
                    organs.sort();
                    organs.iter().map(|o| o.to_string()).collect()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let pixel_size = groups.iter().find_map(|g| crops(g).and_then(|c| c.pixel_size));
    let manifest = ManifestFile {
        target_pixel_size: pixel_size,
        reference_size: pixel_size.map(|_| cfg.size as f64),
        tta: Some(TtaFile {
            mode: Some(e.tta.as_str().to_string()),
            scales: None,
        }),
        thresholds: Some(table),
        postprocess,
        group: groups.iter().map(group_file).collect(),
        ..Default::default()
    };
    let path = cfg.out.join("manifest.toml");
    let sizes: Vec<String> = groups.iter().map(|g| format!("{}²", g.cfg.size)).collect();
    let source = match (&searched, &cfg.thresholds_from) {
        (Some(_), _) => "thresholds searched on their out-of-fold predictions at full resolution".to_string(),
        (None, Some(from)) => format!("a full-data fit; thresholds and postprocessing from {}", from.display()),
        (None, None) => "a full-data fit; threshold 0.5 (no out-of-fold predictions to search)".to_string(),
    };
    let comment = format!(
        "Written by ftu-train from {} fold(s) of {} at {}; {source}.",
        groups.iter().map(|g| g.finished.len()).sum::<usize>(),
        cfg.arch,
        sizes.join(", ")
    );
    manifest
        .write(&path, &comment)
        .map_err(|e| TrainError::Run(e.to_string()))?;
    let Some((th, submission)) = searched else {
        return Ok((path, None));
    };
    write_json(&cfg.out.join("thresholds.json"), &th)?;
    let oof_path = cfg.out.join("oof.csv");
    schema::write_rows(&oof_path, &submission).at("writing", &oof_path)?;
    Ok((path, Some(th)))
}

/// The threshold search on the groups' out-of-fold maps, blended by group weight at each slide's
/// full resolution; and each slide's blended mask at 0.5 (oof.csv).
fn search_oof(
    cfg: &TrainConfig,
    rows: &[TrainRow],
    fold_of: &[usize],
    groups: &[Group],
) -> Result<(thresholds::Thresholds, Vec<SubmissionRow>)> {
    let e = &cfg.ensemble;
    let grid = thresholds::grid(e.threshold_from, e.threshold_to, e.threshold_step);
    let grid32 = thresholds::as_f32(&grid);
    let maps = groups
        .iter()
        .map(|g| oof_maps(g, rows, fold_of))
        .collect::<Result<Vec<_>>>()?;
    // Slides with a map in every group: all of them once every fold has finished.
    let slides: Vec<usize> = (0..rows.len())
        .filter(|i| maps.iter().all(|m| m.contains_key(i)))
        .collect();
    let scored = slides
        .par_iter()
        .map(|&i| {
            let parts: Vec<full_res::Part> = groups
                .iter()
                .zip(&maps)
                .map(|(g, m)| {
                    let (map, w, h) = &m[&i];
                    (map.as_slice(), (*w, *h), g.weight as f32)
                })
                .collect();
            let full = full_res::blend(&parts, &rows[i]);
            let s = full_res::score_full(&full, &rows[i], &grid32, Some(0.5))?;
            let oof = thresholds::OofSlide {
                organ: rows[i].organ,
                counts: s.counts,
            };
            let row = SubmissionRow {
                id: rows[i].id.clone(),
                rle: s.rle.unwrap_or_default(),
            };
            Ok((oof, row))
        })
        .collect::<Result<Vec<_>>>()?;
    let (oof, submission): (Vec<_>, Vec<_>) = scored.into_iter().unzip();
    Ok((thresholds::search(&oof, &grid), submission))
}

/// A full-data fit's `[thresholds]` and `[postprocess]`: those of `thresholds_from` (a run folder
/// or its manifest.toml), else 0.5 and none.
fn borrowed_thresholds(
    cfg: &TrainConfig,
) -> Result<(toml::Table, Option<std::collections::BTreeMap<String, PostprocessFile>>)> {
    let Some(from) = &cfg.thresholds_from else {
        let mut table = toml::Table::new();
        table.insert("default".to_string(), toml::Value::Float(0.5));
        return Ok((table, None));
    };
    let path = if from.is_dir() {
        from.join("manifest.toml")
    } else {
        from.clone()
    };
    let m = ManifestFile::read(&path).map_err(|e| TrainError::Run(format!("thresholds_from: {e}")))?;
    let table = m
        .thresholds
        .ok_or_else(|| TrainError::Run(format!("thresholds_from: {} has no [thresholds] table", path.display())))?;
    Ok((table, m.postprocess))
}
