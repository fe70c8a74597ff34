//! `ftu-train ensemble`: its options and its run (see [`crate::ensemble`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::train::Bars;
use crate::ensemble::{self, EnsembleRequest};

/// Finished runs made one ensemble: weights, thresholds and postprocessing chosen on their
/// out-of-fold predictions.
#[derive(Args)]
pub struct EnsembleArgs {
    /// Run folders of `ftu-train train`, every fold finished, trained on the same labelled slides
    /// with the same folds and seed (other architectures, sizes, organs).
    #[arg(long, num_args = 1.., required = true)]
    pub runs: Vec<PathBuf>,
    /// The ensemble's folder: manifest.toml, oof.csv, ensemble.json, summary.txt, models/.
    #[arg(long)]
    pub out: PathBuf,
    /// The Kaggle-layout folder whose train.csv holds the truth [default: the first run's data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Runs' weights are searched on multiples of this step (each run alone and equal weights
    /// are always candidates).
    #[arg(long, default_value_t = 0.1)]
    pub weight_step: f64,
    /// Choose no postprocessing (else per organ, from a small grid, where it raises Dice).
    #[arg(long)]
    pub no_postprocess: bool,
    /// Replace an ensemble already in --out.
    #[arg(long)]
    pub overwrite: bool,
}

impl EnsembleArgs {
    pub fn run(&self) -> Result<()> {
        if !(self.weight_step > 0.0 && self.weight_step <= 1.0) {
            anyhow::bail!("--weight-step must be in (0, 1], got {}", self.weight_step);
        }
        let steps = (1.0 / self.weight_step).round() as usize;
        if ((1.0 / steps as f64) - self.weight_step).abs() > 1e-9 {
            anyhow::bail!(
                "--weight-step must divide 1 (0.5, 0.25, 0.2, 0.1, …), got {}",
                self.weight_step
            );
        }
        let req = EnsembleRequest {
            runs: self.runs.clone(),
            out: self.out.clone(),
            data: self.data.clone(),
            weight_steps: steps,
            postprocess: !self.no_postprocess,
            overwrite: self.overwrite,
        };
        let summary = ensemble::run(&req, &mut Bars { bar: None })
            .with_context(|| format!("making the ensemble in {}", self.out.display()))?;
        print!("{}", summary.table());
        Ok(())
    }
}
