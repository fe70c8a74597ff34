//! `[tissue]`: which windows of a tiled group are worth running.

/// Background windows are skipped: Otsu's threshold on the saturation of a slide thumbnail marks
/// tissue, and a window runs when at least `min_fraction` of it is tissue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TissueDetection {
    pub enabled: bool,
    pub min_fraction: f64,
}

impl Default for TissueDetection {
    fn default() -> Self {
        TissueDetection {
            enabled: true,
            min_fraction: 0.01,
        }
    }
}
