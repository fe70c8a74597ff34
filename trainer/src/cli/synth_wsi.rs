//! `ftu-train synth-wsi`: its options and its run (see [`crate::synth::wsi`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::synth::wsi::{self, WsiConfig};

/// Write one synthetic whole-slide image (tiled BigTIFF, tile by tile) with test.csv and
/// truth.csv: glass with tissue islands holding FTU discs.
#[derive(Args)]
pub struct SynthWsiArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Width in pixels.
    #[arg(long, default_value_t = 40000)]
    pub width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = 40000)]
    pub height: u32,
    #[arg(long, default_value_t = 6)]
    pub islands: usize,
    /// Island radius in pixels.
    #[arg(long, default_value_t = 1500.0)]
    pub island_radius: f64,
    #[arg(long, default_value_t = 12)]
    pub ftus_per_island: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// JPEG tiles (quality 90) as slide scanners write them, instead of deflate.
    #[arg(long)]
    pub jpeg: bool,
    /// Also write reduced-resolution pages at these downsamples (e.g. 4,16), as pyramidal
    /// scanner files carry them; ftu-infer makes thumbnails from them.
    #[arg(long, value_delimiter = ',')]
    pub pyramid: Vec<u32>,
}

impl SynthWsiArgs {
    pub fn run(&self) -> Result<()> {
        let cfg = WsiConfig {
            width: self.width,
            height: self.height,
            islands: self.islands,
            island_radius: self.island_radius,
            ftus_per_island: self.ftus_per_island,
            seed: self.seed,
            jpeg: self.jpeg,
            pyramid: self.pyramid.clone(),
        };
        let bar = ProgressBar::new(0)
            .with_style(ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} tiles {elapsed}",
            )?)
            .with_prefix("synth-wsi");
        let plan = wsi::generate(&self.out, &cfg, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("writing a synthetic whole-slide image in {}", self.out.display()))?;
        bar.finish_and_clear();
        eprintln!(
            "wrote {}×{} slide with {} tissue islands and {} FTUs to {}",
            self.width,
            self.height,
            plan.islands.len(),
            plan.ftus.len(),
            self.out.display()
        );
        Ok(())
    }
}
