//! `ftu-train`: synthetic data generation (training and export land here next).

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ftu_trainer::synth::{self, SynthConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ftu-train",
    version,
    about = "Train FTU segmentation models; make synthetic data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic Kaggle-layout folder (slides, train.csv, test.csv, truth.csv).
    Synth(SynthArgs),
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    /// Number of training slides.
    #[arg(long, default_value_t = 40)]
    train: usize,
    /// Number of test slides (their truth goes to truth.csv).
    #[arg(long, default_value_t = 10)]
    test: usize,
    /// Slide side in pixels (the competition's are about 3000).
    #[arg(long, default_value_t = 512)]
    size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write LZW, tiled, 16-bit, BigTIFF and JPEG-tiled slides, not only plain TIFF.
    #[arg(long)]
    mixed_formats: bool,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Synth(a) => {
            let cfg = SynthConfig {
                train: a.train,
                test: a.test,
                size: a.size,
                seed: a.seed,
                mixed_formats: a.mixed_formats,
            };
            let bar = ProgressBar::new((a.train + a.test) as u64)
                .with_style(ProgressStyle::with_template(
                    "{prefix} {bar:30} {pos}/{len} slides {elapsed}",
                )?)
                .with_prefix("synth");
            let summary = synth::generate(&a.out, &cfg, || bar.inc(1))
                .with_context(|| format!("generating synthetic data in {}", a.out.display()))?;
            bar.finish_and_clear();
            eprintln!(
                "wrote {} training and {} test slides to {}",
                summary.train.len(),
                summary.test.len(),
                a.out.display()
            );
        }
    }
    Ok(())
}
