//! `ftu-infer bundle`: one folder for an offline Kaggle notebook (see [`crate::bundle`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::bundle::{self, BundleRequest};

#[derive(Args)]
pub struct BundleArgs {
    #[arg(long)]
    pub manifest: PathBuf,
    /// A new (or empty) folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also ship the CUDA execution provider found beside libonnxruntime (onnxruntime-gpu).
    #[arg(long)]
    pub gpu: bool,
}

impl BundleArgs {
    pub fn run(&self) -> Result<()> {
        let running = std::env::current_exe().context("locating the ftu-infer binary")?;
        // This binary if it is portable, else scripts/portable.sh's build beside it, else
        // this one with a warning.
        let choice = bundle::choose_binary(&running, bundle::inspect_binary)?;
        if let Some(w) = &choice.warning {
            eprintln!("warning: {w}");
        }
        eprintln!(
            "binary: {} ({})",
            choice.binary.path.display(),
            choice.binary.describe()
        );
        let binary = choice.binary.path.clone();
        let library = crate::session::find_library()?;
        let request = BundleRequest {
            manifest: self.manifest.clone(),
            out: self.out.clone(),
            gpu: self.gpu,
            binary,
            library,
        };
        let summary = bundle::bundle(&request)?;
        for f in &summary.files {
            println!("{}", self.out.join(f).display());
        }
        eprintln!(
            "bundle {}: {} files, {:.1} MB; see its README.md",
            self.out.display(),
            summary.files.len(),
            summary.bytes as f64 / 1e6
        );
        Ok(())
    }
}
