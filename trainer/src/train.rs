//! `ftu-train train`: k-fold training. Per fold: AdamW with warmup + cosine, accumulation,
//! clipping, optional EMA and encoder freezing; every epoch validation Dice (overall and per
//! organ) into RUN/metrics.csv, curves as PNG, overlays, best/last checkpoints with optimiser
//! state (atomic); the best checkpoint exported to ONNX with its out-of-fold probabilities. After
//! the folds: per-organ thresholds searched on the OOF set and RUN/manifest.toml for ftu-infer.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::DType;
use ftu_formats::manifest::file::{GroupFile, ModelFile, TtaFile};
use ftu_formats::manifest::{ManifestFile, OutputRef};
use ftu_formats::schema::{self, SubmissionRow, TrainRow};
use ftu_models::Arch;
use rayon::prelude::*;

use crate::config::TrainConfig;
use crate::data::{self, SlideCache};
use crate::error::At;
pub use crate::error::{Result, TrainError};
pub use crate::fold::{arch_config, FoldResult, Metrics, Progress};
use crate::fold::{fold_dir, train_fold, write_json, FoldState};
use crate::{folds, full_res, thresholds};

pub struct RunSummary {
    pub folds: Vec<FoldResult>,
    pub manifest: Option<PathBuf>,
    pub thresholds: Option<thresholds::Thresholds>,
}

/// Runs the configured folds and writes the manifest. `resume` continues fold checkpoints.
pub fn run(cfg: &TrainConfig, resume: bool, progress: &mut dyn Progress) -> Result<RunSummary> {
    cfg.validate()?;
    let device = crate::device::parse(&cfg.device).map_err(|e| TrainError::Run(e.to_string()))?;
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
        results.push(train_fold(
            cfg, arch, &device, &cache, &fold_of, k, &norm, resume, progress,
        )?);
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

/// Threshold search on the OOF set of the finished folds, then RUN/manifest.toml.
fn write_manifest(
    cfg: &TrainConfig,
    cache: &SlideCache,
    fold_of: &[usize],
    finished: &[usize],
) -> Result<(PathBuf, thresholds::Thresholds)> {
    let rows: &[TrainRow] = cache.rows();
    let e = &cfg.ensemble;
    let grid = thresholds::grid(e.threshold_from, e.threshold_to, e.threshold_step);
    let grid32 = thresholds::as_f32(&grid);
    let mut oof = Vec::new();
    let mut weights = Vec::new();
    for &k in finished {
        let dir = fold_dir(cfg, k);
        let probs = candle_core::safetensors::load(dir.join("oof.safetensors"), &candle_core::Device::Cpu)?;
        let maps = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| fold_of[*i] == k)
            .map(|(_, row)| {
                let p = probs.get(&row.id).ok_or_else(|| TrainError::File {
                    what: "reading",
                    path: dir.join("oof.safetensors"),
                    cause: format!("no probabilities for slide {}", row.id),
                })?;
                Ok((row, p.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?))
            })
            .collect::<Result<Vec<_>>>()?;
        // Scored at each slide's full resolution, as the competition scores; only the counts
        // per threshold are kept.
        let scored = maps
            .par_iter()
            .map(|(row, prob)| {
                Ok(thresholds::OofSlide {
                    organ: row.organ,
                    counts: full_res::score(prob, cfg.size, row, &grid32, None)?.counts,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        oof.extend(scored);
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).at("reading", &state_path)?;
        let state: FoldState = serde_json::from_str(&text).at("reading", &state_path)?;
        weights.push(if cfg.ensemble.weight_by_dice {
            state.best_dice.max(1e-3)
        } else {
            1.0
        });
    }
    let th = thresholds::search(&oof, &grid);
    write_oof_submission(cfg, rows, finished)?;
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

/// RUN/oof.csv: the finished folds' best out-of-fold predictions at full resolution and
/// threshold 0.5 (each fold's foldK/oof.csv), in train.csv's order, as a submission that
/// `ftu-infer score --truth train.csv` scores. Skipped when a fold has none (a run from before
/// they were written).
fn write_oof_submission(cfg: &TrainConfig, rows: &[TrainRow], finished: &[usize]) -> Result<()> {
    let mut by_id = HashMap::new();
    for &k in finished {
        let path = fold_dir(cfg, k).join("oof.csv");
        if !path.exists() {
            return Ok(());
        }
        for row in schema::read_submission(&path).at("reading", &path)? {
            by_id.insert(row.id.clone(), row);
        }
    }
    let ordered: Vec<SubmissionRow> = rows.iter().filter_map(|r| by_id.remove(&r.id)).collect();
    let path = cfg.out.join("oof.csv");
    schema::write_rows(&path, &ordered).at("writing", &path)
}
