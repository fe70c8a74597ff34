//! `ftu-infer merge`: shard outputs put back together (see [`crate::merge`]).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::merge::{self, Order};

#[derive(Args)]
pub struct MergeArgs {
    /// The test.csv the shards split: rows in its order, each of its ids exactly once. Default:
    /// none (the shards' own ids, sorted, numbers as numbers).
    #[arg(long, conflicts_with = "ids")]
    pub test: Option<PathBuf>,
    /// A CSV whose id column (e.g. a list under the header `id`) gives the order, each id
    /// exactly once. Default: none.
    #[arg(long, value_name = "CSV")]
    pub ids: Option<PathBuf>,
    /// The merged output.
    #[arg(long, default_value = "submission.csv")]
    pub out: PathBuf,
    /// The shards' outputs (id,rle, or predict --slides' id,organ,pixel_size,height,width,rle),
    /// in any order.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

impl MergeArgs {
    pub fn run(&self) -> Result<()> {
        let order = match (&self.test, &self.ids) {
            (Some(test), _) => Order::Test(test),
            (None, Some(ids)) => Order::Ids(ids),
            (None, None) => Order::ById,
        };
        let rows = merge::merge_any(order, &self.shards)?;
        rows.write(&self.out)
            .with_context(|| format!("writing {}", self.out.display()))?;
        println!(
            "wrote {} ({} rows from {} shards)",
            self.out.display(),
            rows.len(),
            self.shards.len()
        );
        Ok(())
    }
}
