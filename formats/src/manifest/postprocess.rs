//! `[postprocess]`: the clean-up of a thresholded mask, per organ.

use std::collections::BTreeMap;

use crate::organ::Organ;

/// Clean-up of a thresholded mask. Areas in µm² are converted with the slide's pixel size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PostprocessSpec {
    /// Components smaller than this are removed.
    pub min_area: Option<Area>,
    /// Holes smaller than this are filled.
    pub max_hole: Option<Area>,
    /// Grow (positive) or shrink (negative) the mask by this many pixels, with a disc.
    pub dilate: i32,
}

impl PostprocessSpec {
    pub fn is_identity(&self) -> bool {
        self.min_area.is_none() && self.max_hole.is_none() && self.dilate == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Area {
    Pixels(f64),
    SquareMicrons(f64),
}

impl Area {
    /// The area in pixels of a slide with this pixel size (µm).
    pub fn pixels(&self, pixel_size: f64) -> f64 {
        match *self {
            Area::Pixels(p) => p,
            Area::SquareMicrons(a) => a / (pixel_size * pixel_size),
        }
    }
}

/// `[postprocess.default]` and `[postprocess.<organ>]` (an organ's table replaces the default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PostprocessTable {
    pub default: PostprocessSpec,
    pub organ: BTreeMap<Organ, PostprocessSpec>,
}

impl PostprocessTable {
    pub fn get(&self, organ: Organ) -> PostprocessSpec {
        self.organ.get(&organ).copied().unwrap_or(self.default)
    }
}
