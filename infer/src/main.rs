//! `ftu-infer`: RLE tools and scoring now; the ONNX Runtime ensemble engine lands here next.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ftu_infer::{mask_image, rle, score, slide::SlideLimits};
use std::io::Read;
use std::path::PathBuf;

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
    /// Run-length encoding in the competition's convention (column-major, 1-based).
    #[command(subcommand)]
    Rle(RleCommand),
    /// Mean Dice of a submission against the truth, overall and per organ.
    Score(ScoreArgs),
}

#[derive(Subcommand)]
enum RleCommand {
    /// Print the RLE of a mask image (any non-zero pixel is foreground).
    Encode {
        mask: PathBuf,
        /// Refuse images with more pixels than this.
        #[arg(long, default_value_t = ftu_infer::slide::DEFAULT_MAX_PIXELS)]
        max_pixels: u64,
    },
    /// Write the mask an RLE string describes as a 0/255 PNG.
    Decode {
        #[arg(long)]
        height: usize,
        #[arg(long)]
        width: usize,
        #[arg(long)]
        out: PathBuf,
        /// The RLE string; read from stdin when absent.
        rle: Option<String>,
    },
}

#[derive(Args)]
struct ScoreArgs {
    /// Truth: a train.csv, or id,rle with --meta for sizes and organs.
    #[arg(long)]
    truth: PathBuf,
    /// Predictions: id,rle (a submission).
    #[arg(long)]
    pred: PathBuf,
    /// A test.csv giving each id's organ and size.
    #[arg(long)]
    meta: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Rle(RleCommand::Encode { mask, max_pixels }) => {
            let m = mask_image::read_mask(&mask, SlideLimits { max_pixels })?;
            println!("{}", rle::encode(&m));
        }
        Command::Rle(RleCommand::Decode {
            height,
            width,
            out,
            rle: text,
        }) => {
            if height == 0 || width == 0 {
                bail!("--height and --width must be positive");
            }
            let text = match text {
                Some(t) => t,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading the RLE from stdin")?;
                    s
                }
            };
            let m = rle::decode(&text, height, width)
                .with_context(|| format!("decoding RLE for a {height}×{width} mask"))?;
            mask_image::write_mask_png(&out, &m)?;
            eprintln!("wrote {} ({} foreground pixels)", out.display(), m.count());
        }
        Command::Score(a) => {
            let scores = score::score_files(&a.truth, &a.pred, a.meta.as_deref())?;
            if scores.images.is_empty() {
                bail!("{} has no rows to score", a.truth.display());
            }
            println!("mean dice {:.4} over {} images", scores.mean(), scores.images.len());
            println!("{:<16}{:>6}{:>9}", "organ", "count", "dice");
            for o in scores.per_organ() {
                println!("{:<16}{:>6}{:>9.4}", o.organ.as_str(), o.count, o.dice);
            }
        }
    }
    Ok(())
}
