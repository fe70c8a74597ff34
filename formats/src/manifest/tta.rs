//! `[tta]`: the test-time augmentation a manifest asks for.

use crate::tta::TtaMode;

/// `[tta]`: which transforms, at which input scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Tta {
    pub mode: TtaMode,
    pub scales: Vec<f32>,
}

impl Default for Tta {
    fn default() -> Self {
        Tta {
            mode: TtaMode::None,
            scales: vec![1.0],
        }
    }
}
