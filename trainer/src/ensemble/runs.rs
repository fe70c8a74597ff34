//! The finished runs an ensemble is made of: each run's options, its size groups with their
//! weights (as its manifest serves them), its folds' out-of-fold maps, and the check that every
//! run was trained on the same labelled slides with the same folds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use ftu_formats::blend::{combine, GroupMap};
use ftu_formats::manifest::file::GroupFile;
use ftu_formats::manifest::ManifestFile;
use ftu_formats::schema::TrainRow;
use ftu_formats::Organ;

use crate::config::TrainConfig;
use crate::error::{At, Result, TrainError};
use crate::run_dir::{fold_dir, fold_finished, sized};

/// One size of a run: its folds' out-of-fold maps and the group its manifest serves them as.
pub struct SizeGroup {
    /// The run at this size (its `out` is the size's folder).
    pub cfg: TrainConfig,
    /// The group as the run's manifest.toml writes it (model paths relative to the run).
    pub group: GroupFile,
    /// The group's share of the run's weight (the run's group weights, summing to 1).
    pub share: f64,
    /// Per fold, its oof.safetensors (memory-mapped: a slide's map is read when it is needed).
    oof: Vec<MmapedSafetensors>,
}

/// A finished training run.
pub struct Run {
    /// A short name: the run folder's name (made unique among the runs).
    pub name: String,
    pub dir: PathBuf,
    pub cfg: TrainConfig,
    pub manifest: ManifestFile,
    pub sizes: Vec<SizeGroup>,
    /// Slide id → (organ, fold), from RUN/folds.csv.
    pub folds: BTreeMap<String, (Organ, usize)>,
}

impl Run {
    /// Whether the run's models serve slides of `organ`.
    pub fn serves(&self, organ: Organ) -> bool {
        self.cfg.organs.is_empty() || self.cfg.organs.contains(&organ)
    }

    /// The run's out-of-fold map of a slide at its full resolution: each size's map (from the
    /// slide's fold) blended by the run's group weights, as ftu-infer blends the run's manifest.
    pub fn oof_map(&self, row: &TrainRow, fold: usize) -> Result<Vec<f32>> {
        let mut groups = Vec::with_capacity(self.sizes.len());
        for s in &self.sizes {
            let path = || fold_dir(&s.cfg, fold).join("oof.safetensors");
            let t = s.oof[fold].load(&row.id, &Device::Cpu).map_err(|_| TrainError::File {
                what: "reading",
                path: path(),
                cause: format!("no out-of-fold map for slide {}", row.id),
            })?;
            let (height, width) = t.dims2()?;
            let map = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            groups.push((GroupMap::Small { map, width, height }, s.share as f32));
        }
        Ok(combine(row.img_width as usize, row.img_height as usize, groups))
    }
}

/// Reads RUN/folds.csv.
fn read_folds(path: &Path) -> Result<BTreeMap<String, (Organ, usize)>> {
    #[derive(serde::Deserialize)]
    struct Row {
        id: String,
        organ: Organ,
        fold: usize,
    }
    let mut reader = csv::Reader::from_path(path).at("reading", path)?;
    let mut out = BTreeMap::new();
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let row = row.map_err(|e| TrainError::File {
            what: "reading",
            path: path.to_path_buf(),
            cause: format!("row {}: {e}", i + 2),
        })?;
        out.insert(row.id, (row.organ, row.fold));
    }
    Ok(out)
}

/// Opens a finished run: its config, folds, manifest and every fold's out-of-fold maps. A run
/// with a fold that has not finished is refused, naming the fold.
pub fn open(dir: &Path, name: String) -> Result<Run> {
    let config = dir.join("config.toml");
    if !config.exists() {
        return Err(TrainError::Run(format!(
            "run {}: no config.toml; is it an `ftu-train train` run folder?",
            dir.display()
        )));
    }
    let mut cfg = TrainConfig::from_toml_file(&config)?;
    if cfg.folds == 1 {
        return Err(TrainError::Run(format!(
            "run {}: a full-data fit (folds = 1) has no out-of-fold predictions to choose weights and \
             thresholds on; make the ensemble of the k-fold runs",
            dir.display()
        )));
    }
    // A run folder that moved keeps its contents: read them from where it is now.
    cfg.out = dir.to_path_buf();
    for c in sized(&cfg) {
        for k in 0..c.folds {
            if !fold_finished(&c, k) {
                return Err(TrainError::Run(format!(
                    "run {}: fold {k}{} has not finished (no {}); finish it with `ftu-train train --out {} --resume`",
                    dir.display(),
                    if cfg.sizes.is_empty() {
                        String::new()
                    } else {
                        format!(" at {}²", c.size)
                    },
                    fold_dir(&c, k).join("model.onnx").display(),
                    dir.display()
                )));
            }
        }
    }
    let manifest_path = dir.join("manifest.toml");
    let manifest = ManifestFile::read(&manifest_path).map_err(|e| TrainError::Run(e.to_string()))?;
    let sizes_cfg = sized(&cfg);
    if manifest.group.len() != sizes_cfg.len() {
        return Err(TrainError::Run(format!(
            "{}: {} group(s), but the run has {} size(s); was the manifest edited?",
            manifest_path.display(),
            manifest.group.len(),
            sizes_cfg.len()
        )));
    }
    let total: f64 = manifest.group.iter().map(|g| g.weight.unwrap_or(1.0)).sum();
    let mut sizes = Vec::new();
    for (c, group) in sizes_cfg.into_iter().zip(&manifest.group) {
        let oof = (0..c.folds)
            .map(|k| {
                let path = fold_dir(&c, k).join("oof.safetensors");
                // SAFETY: a finished fold's files are not written again (only `--overwrite` or
                // a longer `--resume` of that run would), and the maps are copied out on load.
                unsafe { MmapedSafetensors::new(&path) }.at("reading", &path)
            })
            .collect::<Result<Vec<_>>>()?;
        sizes.push(SizeGroup {
            share: group.weight.unwrap_or(1.0) / total,
            group: group.clone(),
            cfg: c,
            oof,
        });
    }
    let folds = read_folds(&dir.join("folds.csv"))?;
    Ok(Run {
        name,
        dir: dir.to_path_buf(),
        cfg,
        manifest,
        sizes,
        folds,
    })
}

/// Short names for run folders: each folder's name, with `-2`, `-3`, … where names repeat.
pub fn names(dirs: &[PathBuf]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    dirs.iter()
        .map(|d| {
            let base = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "run".into());
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                base
            } else {
                format!("{base}-{n}")
            }
        })
        .collect()
}

/// The labelled slides the runs share, in train.csv's order, with the fold of each. Every run
/// must hold every slide of its organs with the same fold as the others: the first run (or
/// slide) that differs is named.
pub fn common_slides(runs: &[Run], train: &[TrainRow], train_csv: &Path) -> Result<(Vec<TrainRow>, Vec<usize>)> {
    let mut fold_of: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for run in runs {
        for (id, &(_, fold)) in &run.folds {
            match fold_of.get(id.as_str()) {
                Some(&(f, other)) if f != fold => {
                    return Err(TrainError::Run(format!(
                        "runs {other} and {}: slide {id} is in fold {f} in one and fold {fold} in the other; \
                         an ensemble needs runs trained with the same folds and seed",
                        run.name
                    )))
                }
                Some(_) => {}
                None => {
                    fold_of.insert(id, (fold, &run.name));
                }
            }
        }
    }
    let by_id: BTreeMap<&str, &TrainRow> = train.iter().map(|r| (r.id.as_str(), r)).collect();
    if let Some(id) = fold_of.keys().find(|id| !by_id.contains_key(*id)) {
        return Err(TrainError::Run(format!(
            "slide {id} of run {} is not in {}; were the runs trained on other data? (--data)",
            fold_of[id].1,
            train_csv.display()
        )));
    }
    for run in runs {
        for (id, &(_, who)) in &fold_of {
            let organ = by_id[id].organ;
            if run.serves(organ) && !run.folds.contains_key(*id) {
                return Err(TrainError::Run(format!(
                    "run {} was not trained on slide {id} ({organ}), which run {who} was; \
                     an ensemble needs runs of the same labelled slides",
                    run.name
                )));
            }
        }
        if let Some((id, (organ, _))) = run.folds.iter().find(|(id, (o, _))| by_id[id.as_str()].organ != *o) {
            return Err(TrainError::Run(format!(
                "run {}: slide {id} is {organ} in its folds.csv but {} in {}",
                run.name,
                by_id[id.as_str()].organ,
                train_csv.display()
            )));
        }
    }
    let rows: Vec<TrainRow> = train
        .iter()
        .filter(|r| fold_of.contains_key(r.id.as_str()))
        .cloned()
        .collect();
    let folds = rows.iter().map(|r| fold_of[r.id.as_str()].0).collect();
    Ok((rows, folds))
}
