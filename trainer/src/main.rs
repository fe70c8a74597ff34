//! `ftu-train`: synthetic data, k-fold training, ONNX export.

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ftu_trainer::cli::ensemble::EnsembleArgs;
use ftu_trainer::cli::export::ExportArgs;
use ftu_trainer::cli::synth::SynthArgs;
use ftu_trainer::cli::synth_wsi::SynthWsiArgs;
use ftu_trainer::cli::train::TrainArgs;

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
    /// Write one synthetic whole-slide image (tiled BigTIFF, tile by tile) with test.csv and
    /// truth.csv: glass with tissue islands holding FTU discs.
    SynthWsi(SynthWsiArgs),
    /// Build an architecture, optionally fill it from weights, and write it as ONNX.
    Export(ExportArgs),
    /// k-fold training on a Kaggle-layout folder; exports each fold to ONNX and writes
    /// RUN/manifest.toml for ftu-infer.
    Train(Box<TrainArgs>),
    /// Finished runs (architectures, sizes, organ-specific runs) made one ensemble: weights,
    /// per-organ thresholds and postprocessing chosen on their out-of-fold predictions.
    Ensemble(EnsembleArgs),
    /// List the architectures (decoders × encoders) and which pretrained files fit each encoder.
    Archs,
}

fn main() -> std::process::ExitCode {
    // Training frees and allocates the same large tensors every step.
    ftu_trainer::memory::keep_freed_memory();
    ftu_formats::exit::run(|| dispatch(parse()))
}

/// The command line, with `train`'s defaults in its help.
fn parse() -> Cli {
    let cmd = Cli::command().mut_subcommand("train", ftu_trainer::cli::train::with_defaults);
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) => a.run()?,
        Command::SynthWsi(a) => a.run()?,
        Command::Export(a) => a.run()?,
        Command::Train(a) => a.run()?,
        Command::Ensemble(a) => a.run()?,
        Command::Archs => print!("{}", ftu_trainer::cli::archs::listing()),
    }
    Ok(())
}
