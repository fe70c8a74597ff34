//! RUN/foldK/metrics.csv and RUN/metrics.csv: a fold's rows, one per epoch, and the merged
//! table; each epoch's record (the row, the loss and Dice curves, the progress line).

use std::path::Path;
use std::time::Duration;

use ftu_formats::Organ;
use serde::{Deserialize, Serialize};

use super::{Fold, FoldProgress, Trained, Validated};
use crate::config::TrainConfig;
use crate::error::{At, Result};
use crate::plots;
use crate::run_dir::fold_dir;

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

pub(super) fn read_metrics(path: &Path) -> Result<Vec<Metrics>> {
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

impl Fold<'_> {
    /// The epoch's row in RUN/metrics.csv, this fold's loss and Dice curves, and its line.
    pub(crate) fn record(
        &mut self,
        epoch: usize,
        trained: &Trained,
        validated: &Validated,
        took: Duration,
        progress: &mut dyn FoldProgress,
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
}
