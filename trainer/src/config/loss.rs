//! `[loss]`: the loss terms' weights, the heads' losses, per-organ factors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};
use super::sampling::per_organ;

/// Weights of the loss terms; a term with weight 0 is not computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub bce: f64,
    pub dice: f64,
    pub tversky: f64,
    pub tversky_alpha: f64,
    pub tversky_beta: f64,
    pub focal: f64,
    pub focal_gamma: f64,
    pub lovasz: f64,
    /// Weight of each deep-supervision head's loss (the same mix at its resolution).
    pub deep_supervision: f64,
    /// Organ-class cross-entropy (models with an organ head).
    pub organ: f64,
    /// Pixel-size mean squared error in µm (models with a pixel-size head).
    pub pixel_size: f64,
    /// Organ name → factor on the segmentation loss of its slides (1 for organs not listed).
    pub per_organ: BTreeMap<String, f64>,
}

impl LossConfig {
    /// Each organ's loss factor by [`Organ::index`], when any is set.
    pub fn organ_factors(&self) -> Option<[f64; 5]> {
        (!self.per_organ.is_empty()).then(|| per_organ(&self.per_organ).expect("validated"))
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            bce: 1.0,
            dice: 1.0,
            tversky: 0.0,
            tversky_alpha: 0.3,
            tversky_beta: 0.7,
            focal: 0.0,
            focal_gamma: 2.0,
            lovasz: 0.0,
            deep_supervision: 0.2,
            organ: 0.1,
            pixel_size: 0.1,
            per_organ: BTreeMap::new(),
        }
    }
}

impl LossConfig {
    /// Its own ranges: per-organ factors, and at least one segmentation term.
    pub fn validate(&self) -> Result<(), ConfigError> {
        per_organ(&self.per_organ).map_err(|e| invalid("loss.per_organ", e))?;
        if self.bce + self.dice + self.tversky + self.focal + self.lovasz <= 0.0 {
            return Err(invalid(
                "loss",
                "at least one of bce, dice, tversky, focal, lovasz must be > 0",
            ));
        }
        Ok(())
    }
}
