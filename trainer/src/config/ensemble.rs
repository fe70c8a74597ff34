//! `[ensemble]`: what goes into RUN/manifest.toml — fold and size weights, TTA, the threshold
//! search grid.

use ftu_formats::tta::TtaMode;
use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};

/// What goes into RUN/manifest.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnsembleConfig {
    /// Fold weights, and with several sizes the sizes' group weights, proportional to their
    /// full-resolution out-of-fold Dice (else equal).
    pub weight_by_dice: bool,
    /// With several sizes: each size's group weight, in the order of `sizes` (overrides
    /// `weight_by_dice` for the groups).
    pub size_weights: Vec<f64>,
    /// ftu-infer's TTA mode for the manifest (none, hflip, flips, d4).
    #[serde(with = "super::fields::tta")]
    pub tta: TtaMode,
    /// Threshold search grid: from, to (inclusive), step.
    pub threshold_from: f64,
    pub threshold_to: f64,
    pub threshold_step: f64,
}

impl Default for EnsembleConfig {
    fn default() -> Self {
        EnsembleConfig {
            weight_by_dice: false,
            size_weights: Vec::new(),
            tta: TtaMode::Flips,
            threshold_from: 0.05,
            threshold_to: 0.95,
            threshold_step: 0.05,
        }
    }
}

impl EnsembleConfig {
    /// Its own ranges: a threshold grid inside [0, 1] with a positive step.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.threshold_step > 0.0
            && self.threshold_from <= self.threshold_to
            && self.threshold_from >= 0.0
            && self.threshold_to <= 1.0)
        {
            return Err(invalid("ensemble.threshold_*", "need 0 ≤ from ≤ to ≤ 1 and step > 0"));
        }
        Ok(())
    }
}
