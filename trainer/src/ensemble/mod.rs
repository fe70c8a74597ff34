//! `ftu-train ensemble`: finished runs (other architectures, sizes, organ-specific runs) made one
//! ensemble on their out-of-fold (OOF) predictions, as nnU-Net's `find_best_configuration` does
//! with cross-validation: the runs' weights (a grid over the simplex), per-organ thresholds (and
//! per data source), and per-organ postprocessing are each chosen on the blend's OOF Dice at full
//! resolution, each only where it raises it. Slides are visited one at a time, keeping Dice counts
//! per candidate, never every OOF map at once.
//!
//! Writes DIR/manifest.toml (a group per run × size, models linked or copied into DIR/models/),
//! DIR/oof.csv (the chosen ensemble's OOF masks as a submission), DIR/ensemble.json (every
//! candidate scored) and DIR/summary.txt (the table [`Summary::table`] prints).

pub mod postprocess;
pub mod runs;
pub mod search;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ftu_formats::dice::ThresholdCounts;
use ftu_formats::manifest::file::{ManifestFile, PostprocessFile};
use ftu_formats::mask::rle;
use ftu_formats::mask::runs::RunMask;
use ftu_formats::schema::{self, SubmissionRow, TrainRow};
use ftu_formats::{DataSource, Organ};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{At, Result, TrainError};
use crate::eval::thresholds;
use crate::fold::write_json;
use crate::train::FoldProgress;
use postprocess::{MaskedSlide, OrganChoice};
use runs::Run;
use search::{Scored, SlideCounts};

/// What `ftu-train ensemble` is asked.
pub struct EnsembleRequest {
    pub runs: Vec<PathBuf>,
    pub out: PathBuf,
    /// The Kaggle-layout folder whose train.csv holds the truth; the first run's `data` if absent.
    pub data: Option<PathBuf>,
    /// Weights are multiples of `1 / weight_steps`.
    pub weight_steps: usize,
    /// Choose postprocessing per organ (else none).
    pub postprocess: bool,
    /// Replace an existing DIR.
    pub overwrite: bool,
}

/// One line of the summary: a named candidate and its scores.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub label: String,
    pub candidate: Scored,
}

/// What was chosen, and how every candidate scored.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub runs: Vec<RunInfo>,
    pub slides: usize,
    pub organs: Vec<Organ>,
    /// Each run alone, the best of each pair, the best of all (and equal weights), the chosen.
    pub lines: Vec<Line>,
    pub chosen: Scored,
    /// Per organ; only organs whose spec is not "no change" are written to the manifest.
    pub postprocess: BTreeMap<Organ, OrganChoice>,
    /// Mean OOF Dice of the chosen ensemble with its postprocessing (that of oof.csv).
    pub final_dice: f64,
    pub candidates: Vec<Scored>,
    pub manifest: PathBuf,
    pub data: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub name: String,
    pub path: PathBuf,
    pub arch: String,
    pub sizes: Vec<usize>,
    /// Empty: every organ.
    pub organs: Vec<Organ>,
}

/// The search's grid of thresholds: the first run's `ensemble.threshold_*`.
fn threshold_grid(run: &Run) -> Vec<f64> {
    let e = &run.cfg.ensemble;
    thresholds::grid(e.threshold_from, e.threshold_to, e.threshold_step)
}

/// Checks the runs, scores every candidate on their OOF maps, chooses, and writes `req.out`;
/// `progress` counts the slides of each of the two passes.
pub fn run(req: &EnsembleRequest, progress: &mut dyn FoldProgress) -> Result<Summary> {
    if req.runs.is_empty() {
        return Err(TrainError::Run("--runs: at least one finished run".into()));
    }
    claim_out(&req.out, &req.runs, req.overwrite)?;
    let names = runs::names(&req.runs);
    let runs: Vec<Run> = req
        .runs
        .iter()
        .zip(names)
        .map(|(dir, name)| runs::open(dir, name))
        .collect::<Result<_>>()?;
    let n = runs.len();
    let candidates_len = search::simplex_len(n, req.weight_steps);
    if candidates_len > 5000 {
        return Err(TrainError::Run(format!(
            "{n} runs at weight steps of 1/{} make {candidates_len} candidate weightings; give a coarser --weight-step",
            req.weight_steps
        )));
    }
    let data = match &req.data {
        Some(d) => d.clone(),
        None => runs[0].cfg.data.clone(),
    };
    let train_csv = ftu_formats::kaggle::Split::Train.csv(&data);
    let train = schema::read_train(&train_csv).at("reading", &train_csv)?;
    let (rows, fold_of) = runs::common_slides(&runs, &train, &train_csv)?;
    let mut organs: Vec<Organ> = rows.iter().map(|r| r.organ).collect();
    organs.sort();
    organs.dedup();
    let grid = threshold_grid(&runs[0]);
    let grid32 = thresholds::as_f32(&grid);
    let candidates = search::simplex(n, req.weight_steps);

    // Pass 1: each slide's counts under every candidate.
    let tick = progress.ticker("scoring candidates", rows.len());
    let counts: Vec<SlideCounts> = rows
        .par_iter()
        .zip(&fold_of)
        .map(|(row, &fold)| {
            let c = slide_counts(&runs, row, fold, &candidates, &grid32)?;
            tick();
            Ok(c)
        })
        .collect::<Result<_>>()?;
    progress.finish(&format!(
        "scored {} candidate weighting(s) of {n} run(s) on {} slides",
        candidates.len(),
        rows.len()
    ));
    let scored: Vec<Scored> = (0..candidates.len())
        .into_par_iter()
        .map(|c| search::score(c, &candidates[c], &counts, &grid, &organs))
        .collect();
    let chosen_i = search::choose(&scored).ok_or_else(|| {
        TrainError::Run(format!(
            "no weighting of the runs serves every organ of their slides ({}); add a run of every organ",
            organs.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let chosen = scored[chosen_i].clone();

    // Pass 2: the chosen blend's masks, postprocessing chosen on them, oof.csv.
    let tick = progress.ticker("postprocessing", rows.len());
    let masked: Vec<MaskedSlide> = rows
        .par_iter()
        .zip(&fold_of)
        .map(|(row, &fold)| {
            let map = blend(&runs, row, fold, &chosen.weights)?.expect("the chosen weights serve every organ");
            let (h, w) = (row.img_height as usize, row.img_width as usize);
            let t = chosen.thresholds.threshold(row.organ, row.data_source) as f32;
            let truth = rle::decode(&row.rle, h, w)
                .map_err(|cause| TrainError::Run(format!("train.csv, slide {}: {cause}", row.id)))?;
            tick();
            Ok(MaskedSlide {
                organ: row.organ,
                pixel_size: row.pixel_size,
                pred: RunMask::from_map(&map, h, w, t),
                truth: RunMask::from_mask(&truth),
            })
        })
        .collect::<Result<_>>()?;
    let specs = if req.postprocess {
        postprocess::grid()
    } else {
        postprocess::grid().into_iter().take(1).collect()
    };
    let post = postprocess::choose(&masked, &specs);
    progress.finish(&format!("postprocessing: {} spec(s) tried per organ", specs.len()));
    let finals: Vec<(SubmissionRow, f64)> = rows
        .par_iter()
        .zip(&masked)
        .map(|(row, m)| {
            let spec = post[&row.organ].spec();
            let mask = ftu_formats::postprocess::apply(m.pred.clone(), &spec, m.pixel_size);
            let dice = mask.dice(&m.truth);
            (
                SubmissionRow {
                    id: row.id.clone(),
                    rle: mask.rle(),
                },
                dice,
            )
        })
        .collect();
    let final_dice = finals.iter().map(|(_, d)| d).sum::<f64>() / finals.len().max(1) as f64;

    std::fs::create_dir_all(&req.out).at("creating", &req.out)?;
    let oof_rows: Vec<SubmissionRow> = finals.into_iter().map(|(r, _)| r).collect();
    let oof_path = req.out.join("oof.csv");
    schema::write_rows(&oof_path, &oof_rows).at("writing", &oof_path)?;
    let manifest = write_manifest(&req.out, &runs, &chosen, &post)?;
    let summary = Summary {
        runs: runs
            .iter()
            .map(|r| RunInfo {
                name: r.name.clone(),
                path: r.dir.clone(),
                arch: r.cfg.arch.to_string(),
                sizes: r.sizes.iter().map(|s| s.cfg.size).collect(),
                organs: r.cfg.organs.clone(),
            })
            .collect(),
        slides: rows.len(),
        organs,
        lines: lines(&runs, &scored, chosen_i),
        chosen,
        postprocess: post,
        final_dice,
        candidates: scored,
        manifest,
        data,
    };
    write_json(&req.out.join("ensemble.json"), &summary)?;
    let table = summary.table();
    let summary_path = req.out.join("summary.txt");
    ftu_formats::atomic::write_atomic(&summary_path, |w| std::io::Write::write_all(w, table.as_bytes()))?;
    Ok(summary)
}

/// DIR must be new or empty, or hold an earlier ensemble and `--overwrite` be given; it must
/// not be one of the runs.
fn claim_out(out: &Path, runs: &[PathBuf], overwrite: bool) -> Result<()> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if runs.iter().any(|r| abs(r) == abs(out)) {
        return Err(TrainError::Run(format!(
            "--out {}: is one of the runs; give a folder of its own",
            out.display()
        )));
    }
    if !out.exists() {
        return Ok(());
    }
    let names: Vec<String> = std::fs::read_dir(out)
        .at("listing", out)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    if !names.iter().any(|n| n == "ensemble.json") {
        return Err(TrainError::Run(format!(
            "--out {}: holds files that are not an ensemble (e.g. {}); give an empty or new folder",
            out.display(),
            names[0]
        )));
    }
    if !overwrite {
        return Err(TrainError::Run(format!(
            "--out {}: holds an ensemble already; add --overwrite to replace it, or pick another --out",
            out.display()
        )));
    }
    for name in ["manifest.toml", "oof.csv", "ensemble.json", "summary.txt", "models"] {
        let p = out.join(name);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).at("removing", &p)?;
        } else if p.exists() {
            std::fs::remove_file(&p).at("removing", &p)?;
        }
    }
    Ok(())
}

/// Slide `row`'s blend under `weights` at full resolution; `None` when no run with weight
/// serves its organ.
fn blend(runs: &[Run], row: &TrainRow, fold: usize, weights: &[f64]) -> Result<Option<Vec<f32>>> {
    let serves: Vec<bool> = runs.iter().map(|r| r.serves(row.organ)).collect();
    let Some(w) = search::effective(weights, &serves) else {
        return Ok(None);
    };
    let maps = runs
        .iter()
        .zip(&w)
        .filter(|(_, &w)| w > 0.0)
        .map(|(r, &w)| Ok((r.oof_map(row, fold)?, w as f32)))
        .collect::<Result<Vec<_>>>()?;
    let parts: Vec<(&[f32], f32)> = maps.iter().map(|(m, w)| (m.as_slice(), *w)).collect();
    let mut out = Vec::new();
    ftu_formats::blend::weighted_mean_into(&parts, &mut out);
    Ok(Some(out))
}

/// One slide's Dice counts under every candidate: each serving run's map read once, each
/// distinct effective weighting blended once.
fn slide_counts(
    runs: &[Run],
    row: &TrainRow,
    fold: usize,
    candidates: &[Vec<f64>],
    grid: &[f32],
) -> Result<SlideCounts> {
    let (h, w) = (row.img_height as usize, row.img_width as usize);
    let serves: Vec<bool> = runs.iter().map(|r| r.serves(row.organ)).collect();
    let maps: Vec<Option<Vec<f32>>> = runs
        .iter()
        .zip(&serves)
        .map(|(r, &s)| s.then(|| r.oof_map(row, fold)).transpose())
        .collect::<Result<_>>()?;
    let truth = rle::decode(&row.rle, h, w)
        .map_err(|cause| TrainError::Run(format!("train.csv, slide {}: {cause}", row.id)))?;
    // Candidates that differ only in runs that do not serve this slide blend the same maps.
    let mut seen: std::collections::HashMap<Vec<i64>, ThresholdCounts> = std::collections::HashMap::new();
    let mut buf = Vec::new();
    let counts = candidates
        .iter()
        .map(|weights| {
            let eff = search::effective(weights, &serves)?;
            let key: Vec<i64> = eff.iter().map(|w| (w * 1e9).round() as i64).collect();
            if let Some(c) = seen.get(&key) {
                return Some(c.clone());
            }
            let parts: Vec<(&[f32], f32)> = maps
                .iter()
                .zip(&eff)
                .filter(|(_, &w)| w > 0.0)
                .map(|(m, &w)| (m.as_deref().expect("a serving run's map"), w as f32))
                .collect();
            ftu_formats::blend::weighted_mean_into(&parts, &mut buf);
            let c = ThresholdCounts::of(&buf, truth.data(), grid);
            seen.insert(key, c.clone());
            Some(c)
        })
        .collect();
    Ok(SlideCounts {
        organ: row.organ,
        source: row.data_source,
        counts,
    })
}

/// The summary's lines: each run alone, the best weighting of each pair and of all runs, equal
/// weights, and the chosen one.
fn lines(runs: &[Run], scored: &[Scored], chosen: usize) -> Vec<Line> {
    let n = runs.len();
    let support = |s: &Scored| -> Vec<usize> { (0..n).filter(|&i| s.weights[i] > 1e-12).collect() };
    let best_with = |set: &[usize]| {
        scored
            .iter()
            .filter(|s| support(s) == set)
            .max_by(|a, b| a.mean_dice.total_cmp(&b.mean_dice))
            .cloned()
    };
    let weights_label = |s: &Scored| {
        support(s)
            .iter()
            .map(|&i| format!("{:.2} {}", s.weights[i], runs[i].name))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut out = Vec::new();
    for i in 0..n {
        if let Some(s) = best_with(&[i]) {
            out.push(Line {
                label: format!("{} alone{}", runs[i].name, if s.covers { "" } else { " (its organs)" }),
                candidate: s,
            });
        }
    }
    if n > 2 {
        for a in 0..n {
            for b in a + 1..n {
                if let Some(s) = best_with(&[a, b]) {
                    out.push(Line {
                        label: format!("best of {} and {}: {}", runs[a].name, runs[b].name, weights_label(&s)),
                        candidate: s,
                    });
                }
            }
        }
    }
    if n > 1 {
        out.push(Line {
            label: "equal weights".into(),
            candidate: scored[0].clone(),
        });
        let all: Vec<usize> = (0..n).collect();
        if let Some(s) = best_with(&all) {
            out.push(Line {
                label: format!("best of all: {}", weights_label(&s)),
                candidate: s,
            });
        }
    }
    out.push(Line {
        label: format!("chosen: {}", weights_label(&scored[chosen])),
        candidate: scored[chosen].clone(),
    });
    out
}

impl Summary {
    /// The table `ftu-train ensemble` prints, and how to predict with the result.
    pub fn table(&self) -> String {
        let mut s = format!(
            "Out-of-fold mean Dice at full resolution over {} labelled slides, each candidate at its best per-organ thresholds:\n\n",
            self.slides
        );
        let width = self
            .lines
            .iter()
            .map(|l| l.label.chars().count())
            .max()
            .unwrap_or(10)
            .max(10);
        s.push_str(&format!("{:width$}  {:>6}", "", "mean"));
        for o in &self.organs {
            s.push_str(&format!("  {:>14}", o.as_str()));
        }
        s.push('\n');
        let row = |label: &str, mean: f64, per: &dyn Fn(Organ) -> Option<f64>| {
            let mut line = format!("{label:width$}  {mean:>6.4}");
            for &o in &self.organs {
                match per(o) {
                    Some(d) => line.push_str(&format!("  {d:>14.4}")),
                    None => line.push_str(&format!("  {:>14}", "-")),
                }
            }
            line.push('\n');
            line
        };
        for l in &self.lines {
            let c = &l.candidate;
            s.push_str(&row(&l.label, c.mean_dice, &|o| c.organ_dice.get(&o).copied()));
        }
        let post = |o: Organ| self.postprocess.get(&o).map(|p| p.dice_after);
        s.push_str(&row("chosen, with postprocessing", self.final_dice, &post));
        s.push_str("\nthresholds: ");
        let t = &self.chosen.thresholds;
        let mut parts = vec![format!("default {:.2}", t.default.threshold)];
        parts.extend(t.per_organ.iter().map(|(o, c)| format!("{o} {:.2}", c.threshold)));
        for (source, per) in &t.per_source {
            parts.extend(per.iter().map(|(o, c)| format!("{source}/{o} {:.2}", c.threshold)));
        }
        s.push_str(&parts.join(", "));
        s.push_str("\npostprocessing: ");
        let kept: Vec<String> = self
            .postprocess
            .iter()
            .filter(|(_, p)| !p.spec().is_identity())
            .map(|(o, p)| {
                let mut what = Vec::new();
                if let Some(a) = p.min_area_um2 {
                    what.push(format!("components under {a} µm² removed"));
                }
                if let Some(a) = p.max_hole_um2 {
                    what.push(format!("holes under {a} µm² filled"));
                }
                match p.dilate_px {
                    0 => {}
                    d if d > 0 => what.push(format!("dilated {d} px")),
                    d => what.push(format!("eroded {} px", -d)),
                }
                format!("{o}: {} ({:.4} -> {:.4})", what.join(", "), p.dice_before, p.dice_after)
            })
            .collect();
        s.push_str(if kept.is_empty() { "none raised Dice" } else { "" });
        s.push_str(&kept.join("; "));
        s.push_str(&format!(
            "\n\npredict with:\n  ftu-infer predict --manifest {} --data DATA --out submission.csv\n",
            self.manifest.display()
        ));
        s
    }
}

/// DIR/manifest.toml: one group per run × size (weight: the run's weight times the size's share),
/// the runs' models linked (or copied) into DIR/models/RUN/, paths relative to DIR.
fn write_manifest(out: &Path, runs: &[Run], chosen: &Scored, post: &BTreeMap<Organ, OrganChoice>) -> Result<PathBuf> {
    let first = &runs[0].manifest;
    for r in &runs[1..] {
        if (r.manifest.target_pixel_size, r.manifest.reference_size) != (first.target_pixel_size, first.reference_size)
        {
            return Err(TrainError::Run(format!(
                "runs {} and {} scale slides differently (target_pixel_size); an ensemble needs one scaling",
                runs[0].name, r.name
            )));
        }
    }
    let mut groups = Vec::new();
    for (run, &w) in runs.iter().zip(&chosen.weights) {
        if w <= 0.0 {
            continue;
        }
        for size in &run.sizes {
            let mut g = size.group.clone();
            g.weight = Some(round9(w * size.share));
            for m in &mut g.model {
                let rel = PathBuf::from("models").join(&run.name).join(&m.path);
                link_or_copy(&run.dir.join(&m.path), &out.join(&rel))?;
                m.path = rel;
            }
            groups.push(g);
        }
    }
    let mut table = toml::Table::new();
    let t = &chosen.thresholds;
    table.insert("default".into(), toml::Value::Float(t.default.threshold));
    for (o, c) in &t.per_organ {
        table.insert(o.as_str().into(), toml::Value::Float(c.threshold));
    }
    for (source, per) in &t.per_source {
        let sub: toml::Table = per
            .iter()
            .map(|(o, c)| (o.as_str().to_string(), toml::Value::Float(c.threshold)))
            .collect();
        table.insert(source_key(*source).into(), toml::Value::Table(sub));
    }
    let postprocess: BTreeMap<String, PostprocessFile> = post
        .iter()
        .filter(|(_, p)| !p.spec().is_identity())
        .map(|(o, p)| {
            let f = PostprocessFile {
                min_area_um2: p.min_area_um2,
                max_hole_um2: p.max_hole_um2,
                dilate_px: (p.dilate_px > 0).then_some(p.dilate_px as i64),
                erode_px: (p.dilate_px < 0).then_some(-p.dilate_px as i64),
                ..PostprocessFile::default()
            };
            (o.as_str().to_string(), f)
        })
        .collect();
    let manifest = ManifestFile {
        target_pixel_size: first.target_pixel_size,
        reference_size: first.reference_size,
        tta: first.tta.clone(),
        thresholds: Some(table),
        postprocess: (!postprocess.is_empty()).then_some(postprocess),
        group: groups,
        ..ManifestFile::default()
    };
    let path = out.join("manifest.toml");
    let comment = format!(
        "Written by ftu-train ensemble from {}; weights, thresholds and postprocessing chosen on their out-of-fold predictions (see ensemble.json).",
        runs.iter()
            .zip(&chosen.weights)
            .map(|(r, w)| format!("{} ({}, weight {w:.2})", r.name, r.cfg.arch))
            .collect::<Vec<_>>()
            .join(", ")
    );
    manifest
        .write(&path, &comment)
        .map_err(|e| TrainError::Run(e.to_string()))?;
    Ok(path)
}

/// The data source as the manifest's `[thresholds.SOURCE]` key.
fn source_key(s: DataSource) -> &'static str {
    match s {
        DataSource::Hpa => "hpa",
        DataSource::Hubmap => "hubmap",
    }
}

fn round9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// A hard link where the filesystem allows (no copy of a large model), else a copy.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).at("creating", dir)?;
    }
    if to.exists() {
        std::fs::remove_file(to).at("replacing", to)?;
    }
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).at("copying", from)?;
    Ok(())
}
