//! `ftu-train synth`: its options and its run (see [`crate::synth`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::synth::{self, SynthConfig};

/// Write a synthetic Kaggle-layout folder (slides, train.csv, test.csv, truth.csv).
#[derive(Args)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Number of training slides.
    #[arg(long, default_value_t = 40)]
    pub train: usize,
    /// Number of test slides (their truth goes to truth.csv).
    #[arg(long, default_value_t = 10)]
    pub test: usize,
    /// Slide side in pixels (the competition's are about 3000).
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write LZW, tiled, 16-bit, BigTIFF and JPEG-tiled slides, not only plain TIFF.
    #[arg(long)]
    pub mixed_formats: bool,
}

impl SynthArgs {
    pub fn run(&self) -> Result<()> {
        let cfg = SynthConfig {
            train: self.train,
            test: self.test,
            size: self.size,
            seed: self.seed,
            mixed_formats: self.mixed_formats,
        };
        let bar = ProgressBar::new((self.train + self.test) as u64)
            .with_style(ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} slides {elapsed}",
            )?)
            .with_prefix("synth");
        let summary = synth::generate(&self.out, &cfg, || bar.inc(1))
            .with_context(|| format!("generating synthetic data in {}", self.out.display()))?;
        bar.finish_and_clear();
        eprintln!(
            "wrote {} training and {} test slides to {}",
            summary.train.len(),
            summary.test.len(),
            self.out.display()
        );
        Ok(())
    }
}
