//! The ensemble over a slide in memory: every group's map at the slide's size (resize groups
//! through the engine, tile groups through [`crate::tiled`]), averaged by group weight.
//!
//! It comes in two halves. [`Engine::slide_maps`] runs the models and keeps each resize group's
//! map at its input size; [`SlideMaps::combine`] needs no engine (it resizes back and averages),
//! so `predict` runs it beside the next slide's models.

use ftu_formats::manifest::GroupMode;
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::RgbImage;

use crate::engine::{timed, Engine, EngineError, ProbMap, SlideContext, Timings};
use crate::tiled::group_sum;

pub use ftu_formats::blend::GroupMap;

/// Every serving group's map of one slide with the group's weight: what the models give, and
/// all [`SlideMaps::combine`] needs to make the slide's probability map.
#[derive(Debug, Clone)]
pub struct SlideMaps {
    pub width: usize,
    pub height: usize,
    pub groups: Vec<(GroupMap, f32)>,
}

impl Engine {
    /// The ensemble's probability map for one slide, at the slide's size, every group resized
    /// (a tiled group runs over the in-memory slide: see [`crate::tiled`] for slides read in tiles).
    pub fn predict(&mut self, slide: &RgbImage, info: &SlideContext, t: &mut Timings) -> Result<ProbMap, EngineError> {
        Ok(self.slide_maps(slide, info, t)?.combine(t))
    }

    /// Every group that serves the slide's organ, run over the slide: the models' half of
    /// [`Engine::predict`].
    pub fn slide_maps(
        &mut self,
        slide: &RgbImage,
        info: &SlideContext,
        t: &mut Timings,
    ) -> Result<SlideMaps, EngineError> {
        let (height, width) = (slide.height, slide.width);
        let mut groups = Vec::new();
        for gi in 0..self.manifest().groups.len() {
            if !self.group_serves(gi, info.organ) {
                continue;
            }
            let weight = self.manifest().groups[gi].weight;
            let map = match self.manifest().groups[gi].mode {
                GroupMode::Resize => {
                    let (map, w_in, h_in) = self.small_group(gi, slide, info, t)?;
                    GroupMap::Small {
                        map,
                        width: w_in,
                        height: h_in,
                    }
                }
                GroupMode::Tiles(_) => {
                    let mut source = SlideSource::Memory(slide.clone());
                    let map = group_sum(self, gi, &mut source, info, None, t)?;
                    let mut dense = vec![0f32; width * height];
                    map.add_into(&mut dense);
                    GroupMap::Full(dense)
                }
            };
            groups.push((map, weight));
        }
        if groups.is_empty() {
            return Err(EngineError::NoModel(info.organ));
        }
        Ok(SlideMaps { width, height, groups })
    }
}

impl SlideMaps {
    /// The weighted average of the groups' maps at the slide's size. Resizing is linear, so
    /// resize groups of the same input size are summed (by weight) at that size and resized
    /// back once: one slide-sized resize per input size, not per group.
    pub fn combine(self, t: &mut Timings) -> ProbMap {
        let SlideMaps { width, height, groups } = self;
        let data = timed(&mut t.resize_back, || {
            ftu_formats::blend::combine(width, height, groups)
        });
        ProbMap { width, height, data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's combine is the shared blend, timed.
    #[test]
    fn combining_is_the_shared_blend_and_is_timed() {
        let a: Vec<f32> = (0..48).map(|i| (i % 7) as f32 / 6.0).collect();
        let full: Vec<f32> = (0..96).map(|i| (i % 5) as f32 / 4.0).collect();
        let groups = vec![
            (
                GroupMap::Small {
                    map: a,
                    width: 8,
                    height: 6,
                },
                1.0,
            ),
            (GroupMap::Full(full), 0.5),
        ];
        let want = ftu_formats::blend::combine(12, 8, groups.clone());
        let mut t = Timings::default();
        let got = SlideMaps {
            width: 12,
            height: 8,
            groups,
        }
        .combine(&mut t);
        assert_eq!((got.width, got.height), (12, 8));
        assert_eq!(got.data, want);
        assert!(t.resize_back > std::time::Duration::ZERO);
    }
}
