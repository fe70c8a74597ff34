//! `[sampling]`: which training slides an epoch draws, whole (resize mode) or as crops.

use std::collections::BTreeMap;

use ftu_formats::Organ;
use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};

/// How a training slide becomes a model input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    /// The whole slide resized to `size`² (the competition's 3000² slides).
    #[default]
    Resize,
    /// Windows of `size`² cut at a fixed scale (whole-slide images of any size); validated by
    /// tiling each validation slide as `ftu-infer` does, and exported as a tiled group.
    Crops,
}

/// Which training slides an epoch draws, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub mode: SamplingMode,
    /// Draw an organ first (by `organ_weights`, equal for organs not listed), then the next
    /// slide of that organ; else (the default) every training slide once per shuffled pass.
    /// Setting `organ_weights` turns it on.
    pub by_organ: bool,
    /// Organ name → relative share of the draws.
    pub organ_weights: BTreeMap<String, f64>,
    /// Crops: model pixels per slide pixel (1 = the slide's own scale; 0.25 reads a window of
    /// 4·size slide pixels), unless `pixel_size` is set.
    pub scale: f64,
    /// Crops: the µm per model pixel to train at; each slide's scale is then its `pixel_size`
    /// over this.
    pub pixel_size: Option<f64>,
    /// Crops: the probability that a crop is placed around a pixel of an FTU (drawn uniformly
    /// from the slide's FTU pixels); else it is placed uniformly and redrawn (up to 10 times)
    /// while less than `min_tissue` of it is tissue.
    pub p_ftu: f64,
    /// Crops: the least tissue fraction (the engine's saturation detector) of a random crop.
    pub min_tissue: f64,
    /// Crops: window overlap of the validation tiling and of the exported tiled group.
    pub overlap: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            mode: SamplingMode::Resize,
            by_organ: false,
            organ_weights: BTreeMap::new(),
            scale: 1.0,
            pixel_size: None,
            p_ftu: 0.5,
            min_tissue: 0.2,
            overlap: 0.25,
        }
    }
}

impl SamplingConfig {
    /// Each organ's weight by [`Organ::index`], when sampling by organ.
    pub fn weights(&self) -> Option<[f64; 5]> {
        (self.by_organ || !self.organ_weights.is_empty()).then(|| per_organ(&self.organ_weights).expect("validated"))
    }

    /// Its own ranges: organ weights, the crop scale and pixel size, the crop probabilities and
    /// the overlap.
    pub fn validate(&self) -> Result<(), ConfigError> {
        per_organ(&self.organ_weights).map_err(|e| invalid("sampling.organ_weights", e))?;
        if !(self.scale > 0.0 && self.scale <= 16.0) {
            return Err(invalid(
                "sampling.scale",
                format!("a factor in (0, 16], got {}", self.scale),
            ));
        }
        if let Some(p) = self.pixel_size {
            if !(p > 0.0 && p.is_finite()) {
                return Err(invalid("sampling.pixel_size", format!("µm per pixel > 0, got {p}")));
            }
        }
        for (name, p) in [("p_ftu", self.p_ftu), ("min_tissue", self.min_tissue)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(&format!("sampling.{name}"), format!("in [0, 1], got {p}")));
            }
        }
        if !(0.0..=0.95).contains(&self.overlap) {
            return Err(invalid(
                "sampling.overlap",
                format!("in [0, 0.95], got {}", self.overlap),
            ));
        }
        Ok(())
    }
}

/// A table of organ name → weight as an array by [`Organ::index`]; organs not named weigh 1.
pub(crate) fn per_organ(table: &BTreeMap<String, f64>) -> Result<[f64; 5], String> {
    let mut out = [1.0; 5];
    for (name, &w) in table {
        let organ: Organ = name
            .parse()
            .map_err(|e: ftu_formats::organ::UnknownOrgan| e.to_string())?;
        if !(w >= 0.0 && w.is_finite()) {
            return Err(format!("{name}: a weight ≥ 0, got {w}"));
        }
        out[organ.index()] = w;
    }
    Ok(out)
}
