//! `target_pixel_size`: model input sizes from each slide's pixel size.

use super::SIZE_MULTIPLE;

/// `target_pixel_size`: slides are scaled by their pixel size so that the models see the µm per
/// pixel they were trained at. A group's `size` is then its input side for a slide of
/// `reference_size` pixels at `target_pixel_size` µm (a 3000² HPA training slide by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelScaling {
    pub target_pixel_size: f64,
    pub reference_size: f64,
}

impl PixelScaling {
    /// The model input (height, width) for a slide, rounded to multiples of [`SIZE_MULTIPLE`].
    pub fn input_dims(&self, size: usize, height: usize, width: usize, pixel_size: f64) -> (usize, usize) {
        let factor = pixel_size / self.target_pixel_size * size as f64 / self.reference_size;
        (
            round_to_multiple(height as f64 * factor),
            round_to_multiple(width as f64 * factor),
        )
    }
}

/// Nearest multiple of [`SIZE_MULTIPLE`], at least one multiple.
pub fn round_to_multiple(v: f64) -> usize {
    let m = SIZE_MULTIPLE as f64;
    ((v / m).round().max(1.0) * m) as usize
}
