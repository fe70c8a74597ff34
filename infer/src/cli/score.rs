//! `ftu-infer score`: a submission's mean Dice against the truth (see [`crate::score`]).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::score;

#[derive(Args)]
pub struct ScoreArgs {
    /// Truth: a train.csv, or id,rle with --meta for sizes and organs.
    #[arg(long)]
    pub truth: PathBuf,
    /// Predictions: id,rle (a submission).
    #[arg(long)]
    pub pred: PathBuf,
    /// A test.csv giving each id's organ and size.
    #[arg(long)]
    pub meta: Option<PathBuf>,
}

impl ScoreArgs {
    pub fn run(&self) -> Result<()> {
        let scores = score::score_files(&self.truth, &self.pred, self.meta.as_deref())?;
        if scores.images.is_empty() {
            bail!("{} has no rows to score", self.truth.display());
        }
        println!("mean dice {:.4} over {} images", scores.mean(), scores.images.len());
        println!("{:<16}{:>6}{:>9}", "organ", "count", "dice");
        for o in scores.per_organ() {
            println!("{:<16}{:>6}{:>9.4}", o.organ.as_str(), o.count, o.dice);
        }
        Ok(())
    }
}
