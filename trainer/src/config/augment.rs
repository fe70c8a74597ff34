//! `[augment]`: each augmentation's probability and strength.

use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};

/// Each augmentation's probability `p_*` and strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    pub p_hflip: f64,
    pub p_vflip: f64,
    pub p_rot90: f64,
    pub p_affine: f64,
    /// Scale factor drawn from [1 − scale, 1 + scale].
    pub scale: f64,
    /// Rotation in degrees, from [−rotate, rotate].
    pub rotate: f64,
    /// Shift as a fraction of the side, from [−shift, shift].
    pub shift: f64,
    pub p_hsv: f64,
    /// Hue shift in degrees; saturation and value factors from [1 − s, 1 + s].
    pub hue: f64,
    pub saturation: f64,
    pub value: f64,
    pub p_brightness_contrast: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub p_gamma: f64,
    /// Gamma from [1 − gamma, 1 + gamma].
    pub gamma: f64,
    pub p_noise: f64,
    /// Noise standard deviation on the 0–1 scale.
    pub noise: f64,
    pub p_blur: f64,
    /// Largest Gaussian blur sigma in pixels.
    pub blur: f64,
    pub p_stain: f64,
    /// HED stain jitter (colour deconvolution): each stain's optical density c becomes c·α + β,
    /// α from [1 − stain, 1 + stain], β from [−stain, stain].
    pub stain: f64,
    /// Macenko stain normalisation towards this training slide id (every slide, always).
    pub stain_normalize_to: Option<String>,
    /// HPA slides rescaled by 0.4 / hubmap_pixel_size[organ] with this probability, so the
    /// model sees the scale of HuBMAP's scans (the competition's test set). Not applied in crops
    /// mode with a target `pixel_size`: those crops are already at one physical scale.
    pub p_pixel_size: f64,
    /// The pixel-size factor is clamped to [lo, hi]: prostate's 6.263 µm would shrink HPA tissue
    /// 16-fold, and a slide resized whole to `size`² keeps no FTU at that factor.
    pub pixel_size_range: [f64; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            p_hflip: 0.5,
            p_vflip: 0.5,
            p_rot90: 0.5,
            p_affine: 0.5,
            scale: 0.2,
            rotate: 30.0,
            shift: 0.1,
            p_hsv: 0.5,
            hue: 10.0,
            saturation: 0.3,
            value: 0.2,
            p_brightness_contrast: 0.5,
            brightness: 0.2,
            contrast: 0.2,
            p_gamma: 0.2,
            gamma: 0.2,
            p_noise: 0.1,
            noise: 0.02,
            p_blur: 0.1,
            blur: 1.0,
            p_stain: 0.5,
            stain: 0.15,
            stain_normalize_to: None,
            p_pixel_size: 0.5,
            pixel_size_range: [0.5, 2.0],
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all (validation, tests).
    pub fn none() -> AugmentConfig {
        AugmentConfig {
            p_hflip: 0.0,
            p_vflip: 0.0,
            p_rot90: 0.0,
            p_affine: 0.0,
            p_hsv: 0.0,
            p_brightness_contrast: 0.0,
            p_gamma: 0.0,
            p_noise: 0.0,
            p_blur: 0.0,
            p_stain: 0.0,
            p_pixel_size: 0.0,
            stain_normalize_to: None,
            ..AugmentConfig::default()
        }
    }
}

impl AugmentConfig {
    /// Its own ranges: probabilities in [0, 1], a positive pixel-size range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, p) in [
            ("p_hflip", self.p_hflip),
            ("p_vflip", self.p_vflip),
            ("p_rot90", self.p_rot90),
            ("p_affine", self.p_affine),
            ("p_hsv", self.p_hsv),
            ("p_brightness_contrast", self.p_brightness_contrast),
            ("p_gamma", self.p_gamma),
            ("p_noise", self.p_noise),
            ("p_blur", self.p_blur),
            ("p_stain", self.p_stain),
            ("p_pixel_size", self.p_pixel_size),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(&format!("augment.{name}"), format!("a probability, got {p}")));
            }
        }
        let [lo, hi] = self.pixel_size_range;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(invalid(
                "augment.pixel_size_range",
                format!("[lo, hi] with 0 < lo <= hi, got [{lo}, {hi}]"),
            ));
        }
        Ok(())
    }
}
