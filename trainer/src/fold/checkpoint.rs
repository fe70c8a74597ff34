//! A fold's checkpoints and state.json: committed atomically each epoch, and resumed from.

use std::path::{Path, PathBuf};

use ftu_models::weights::{self, Scope};
use serde::{Deserialize, Serialize};

use super::{Fold, FoldProgress, Validated};
use crate::config::TrainConfig;
use crate::error::{At, Result};
use crate::optim;
use crate::optim::loss_scale::SavedLossScale;
use crate::run_dir::fold_dir;

/// RUN/foldK/state.json: where a fold stands, for `--resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FoldState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// The best validation Dice at full resolution so far.
    pub best_dice: f64,
    pub best_epoch: usize,
    /// Set once the best checkpoint has been exported.
    pub exported: bool,
    /// The float16 loss scale at the end of the last epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<SavedLossScale>,
}

impl FoldState {
    /// Fold `k`'s saved state.
    pub(crate) fn read(cfg: &TrainConfig, k: usize) -> Result<FoldState> {
        let path = fold_dir(cfg, k).join("state.json");
        let text = std::fs::read_to_string(&path).at("reading", &path)?;
        serde_json::from_str(&text).at("reading", &path)
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).at("writing", path)?;
    Ok(ftu_formats::atomic::write_atomic(path, |w| {
        std::io::Write::write_all(w, text.as_bytes())
    })?)
}

impl Fold<'_> {
    /// The state, weights, optimiser and EMA of the last complete epoch.
    pub(super) fn resume(&mut self, progress: &mut dyn FoldProgress) -> Result<()> {
        let (last, last_optim) = (self.path("last.safetensors"), self.path("last.optim.safetensors"));
        self.state = FoldState::read(self.cfg, self.k)?;
        if let Some(saved) = &self.state.loss_scale {
            self.loss_scale.resume(saved);
        }
        self.settle_checkpoint()?;
        weights::load(&self.model, &last, Scope::Full).at("resuming from", &last)?;
        self.opt.load(&last_optim).at("resuming from", &last_optim)?;
        if let Some(e) = self.ema.as_mut() {
            e.load(&candle_core::safetensors::load(&last_optim, &candle_core::Device::Cpu)?)?;
        }
        progress.finish(&format!(
            "fold {}: resuming after epoch {}",
            self.k, self.state.epochs_done
        ));
        Ok(())
    }

    /// Last checkpoint, optimiser state and the fold's state, so that a kill at any instant
    /// resumes from a complete epoch: the weights and optimiser state go to files named by the
    /// epoch (`last.E.safetensors`, `last.E.optim.safetensors`), state.json saying epoch E is
    /// the commit, and only then are they renamed to `last.safetensors` and
    /// `last.optim.safetensors` ([`Fold::resume`] finishes renames a kill interrupted and drops
    /// files of uncommitted epochs). Each file is written atomically.
    pub(crate) fn checkpoint(&mut self, epoch: usize, validated: &Validated) -> Result<()> {
        if validated.improved {
            // -1 when there is no validation (a full-data fit): state.json holds numbers only.
            self.state.best_dice = if validated.dice_full.is_finite() {
                validated.dice_full
            } else {
                -1.0
            };
            self.state.best_epoch = epoch;
        }
        let (weights, optim_path) = self.epoch_files(epoch);
        self.model.store().save(&weights)?;
        self.opt.save(&optim_path)?;
        if let Some(e) = &self.ema {
            let mut all = candle_core::safetensors::load(&optim_path, &candle_core::Device::Cpu)?;
            all.extend(e.tensors());
            optim::save_atomic(&all, &optim_path)?;
        }
        self.state.epochs_done = epoch;
        self.state.loss_scale = self.loss_scale.saved();
        write_json(&self.path("state.json"), &self.state)?;
        self.settle_checkpoint()
    }

    /// Epoch `epoch`'s weights and optimiser files before they become the last checkpoint.
    pub(super) fn epoch_files(&self, epoch: usize) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("last.{epoch}.safetensors")),
            self.path(&format!("last.{epoch}.optim.safetensors")),
        )
    }

    /// Makes the committed epoch's files (state.json's `epochs_done`) the last checkpoint and
    /// removes files of any other epoch (a kill before the commit leaves them).
    pub(super) fn settle_checkpoint(&self) -> Result<()> {
        let done = self.state.epochs_done;
        let (weights, optim_path) = self.epoch_files(done);
        for (tagged, last) in [(weights, "last.safetensors"), (optim_path, "last.optim.safetensors")] {
            if tagged.exists() {
                std::fs::rename(&tagged, self.path(last)).at("renaming", &tagged)?;
            }
        }
        let stale = std::fs::read_dir(&self.dir).at("listing", &self.dir)?;
        for entry in stale.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let epoch_file = name
                .strip_prefix("last.")
                .and_then(|rest| rest.split('.').next())
                .is_some_and(|e| e.parse::<usize>().is_ok());
            if epoch_file {
                std::fs::remove_file(entry.path()).at("removing", &entry.path())?;
            }
        }
        Ok(())
    }
}
