//! `ftu-infer pseudo`: its options and its run (see [`crate::pseudo`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::predict::BatchArgs;
use crate::cli::progress::with_progress;
use crate::cli::runtime::{load_engine, RuntimeArgs};

#[derive(Args)]
pub struct PseudoArgs {
    /// The ensemble manifest (TOML).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Folder with test.csv and test_images/: the unlabelled slides.
    #[arg(long)]
    pub data: PathBuf,
    /// Where labels/, pseudo.csv and predictions.csv go.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl PseudoArgs {
    pub fn run(&self) -> Result<()> {
        let (mut engine, _runtime) = load_engine(&self.manifest, &self.runtime)?;
        let opts = self.batch.options(self.data.clone(), self.out.join("predictions.csv"));
        let report = with_progress(|progress| crate::pseudo::pseudo_labels(&mut engine, &opts, &self.out, progress))
            .with_context(|| format!("pseudo-labelling {}", opts.data.display()))?;
        println!("{}", report.predict);
        println!(
            "wrote {} ({} slides with soft labels in {})",
            report.csv.display(),
            report.labelled,
            self.out.join("labels").display()
        );
        Ok(())
    }
}
