//! `ftu-infer`: ensemble prediction through ONNX Runtime, model inspection, RLE tools and scoring.

use anyhow::Result;
use clap::{Parser, Subcommand};
use ftu_infer::cli::bundle::BundleArgs;
use ftu_infer::cli::inspect::InspectArgs;
use ftu_infer::cli::merge::MergeArgs;
use ftu_infer::cli::predict::PredictArgs;
use ftu_infer::cli::pseudo::PseudoArgs;
use ftu_infer::cli::rle::RleCommand;
use ftu_infer::cli::score::ScoreArgs;

#[derive(Parser)]
#[command(
    name = "ftu-infer",
    version,
    about = "Segment functional tissue units in histology slides"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict every slide of a Kaggle-layout folder with an ensemble manifest; write a submission.
    Predict(PredictArgs),
    /// Show an ONNX model's inputs, outputs, opset and ftu metadata as ONNX Runtime sees them.
    Inspect(InspectArgs),
    /// Run-length encoding in the competition's convention (column-major, 1-based).
    #[command(subcommand)]
    Rle(RleCommand),
    /// Mean Dice of a submission against the truth, overall and per organ.
    Score(ScoreArgs),
    /// Put shard outputs (`predict --shard i/N`) back together: in test.csv's order, a list's,
    /// or by id (`predict --slides` shards keep their columns).
    Merge(MergeArgs),
    /// Soft labels for unlabelled slides (a folder's test.csv) for `ftu-train train --pseudo`:
    /// OUT/labels/ID.png (round(p·255)) and OUT/pseudo.csv naming each slide's image and label.
    Pseudo(PseudoArgs),
    /// One folder for an offline Kaggle notebook: this binary, libonnxruntime (and the CUDA
    /// provider with --gpu), the ensemble's ONNX files and its manifest with relative paths.
    Bundle(BundleArgs),
}

fn main() -> std::process::ExitCode {
    ftu_formats::exit::run(|| dispatch(Cli::parse()))
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Predict(a) => a.run(),
        Command::Pseudo(a) => a.run(),
        Command::Bundle(a) => a.run(),
        Command::Inspect(a) => a.run(),
        Command::Rle(c) => c.run(),
        Command::Merge(a) => a.run(),
        Command::Score(a) => a.run(),
    }
}
