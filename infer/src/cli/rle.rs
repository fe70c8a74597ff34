//! `ftu-infer rle`: the competition's run-length encoding (column-major, 1-based) of a mask
//! image, and back.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use ftu_formats::mask::{image as mask_image, rle};
use ftu_formats::slide::SlideLimits;

#[derive(Subcommand)]
pub enum RleCommand {
    /// Print the RLE of a mask image (any non-zero pixel is foreground).
    Encode {
        mask: PathBuf,
        /// Refuse images with more pixels than this.
        #[arg(long, default_value_t = ftu_formats::slide::DEFAULT_MAX_PIXELS)]
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

impl RleCommand {
    pub fn run(self) -> Result<()> {
        match self {
            RleCommand::Encode { mask, max_pixels } => {
                let m = mask_image::read_mask(&mask, SlideLimits { max_pixels })?;
                println!("{}", rle::encode(&m));
            }
            RleCommand::Decode {
                height,
                width,
                out,
                rle: text,
            } => {
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
                    .with_context(|| format!("decoding RLE for a {width}×{height} (width×height) mask"))?;
                mask_image::write_mask_png(&out, &m)?;
                eprintln!("wrote {} ({} foreground pixels)", out.display(), m.count());
            }
        }
        Ok(())
    }
}
