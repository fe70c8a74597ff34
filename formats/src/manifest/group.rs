//! `[[group]]`: models that see a slide at one input size, and how they see it (resized whole or
//! in windows).

use super::model::ModelSpec;
use super::scaling::PixelScaling;

/// Models that see the slide at the same input size; their maps are averaged by model weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub size: usize,
    pub weight: f32,
    pub mode: GroupMode,
    pub models: Vec<ModelSpec>,
}

/// How a group sees a slide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupMode {
    /// The whole slide resized to the group's input size (the competition's way).
    Resize,
    /// Windows of the input size over the slide at the group's scale, blended (whole-slide images).
    Tiles(TileSpec),
}

/// `mode = "tiles"`: window overlap, scale and how many windows run in one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileSpec {
    /// Fraction of a window shared with its neighbour, in [0, 0.95].
    pub overlap: f64,
    /// Model pixels per slide pixel when the manifest has no `target_pixel_size`.
    pub scale: f64,
    /// Windows per model run (each with all its TTA variants).
    pub batch: usize,
}

impl TileSpec {
    /// Model pixels per slide pixel for a slide of this pixel size.
    pub fn factor(&self, size: usize, scaling: Option<&PixelScaling>, pixel_size: f64) -> f64 {
        match scaling {
            Some(s) => pixel_size / s.target_pixel_size * size as f64 / s.reference_size,
            None => self.scale,
        }
    }
}
