//! The ensemble over a slide in memory: every group's map at the slide's size (resize groups
//! through the engine, tile groups through [`crate::tiled`]), averaged by group weight.
//!
//! It comes in two halves. [`Engine::slide_maps`] runs the models and keeps each resize group's
//! map at its input size; [`SlideMaps::combine`] needs no engine (it resizes back and averages),
//! so `predict` runs it beside the next slide's models.

use ftu_formats::manifest::GroupMode;
use ftu_formats::resize::resize_map;
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::RgbImage;

use crate::engine::{timed, Engine, EngineError, ProbMap, SlideInfo, Timings};
use crate::tiled::group_sum;

/// One group's map of a slide, before the groups are averaged.
#[derive(Debug, Clone)]
pub enum GroupMap {
    /// A resize group's map at its input size (row-major `width × height`).
    Small { map: Vec<f32>, width: usize, height: usize },
    /// A tiled group's map, already at the slide's size.
    Full(Vec<f32>),
}

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
    pub fn predict(&mut self, slide: &RgbImage, info: &SlideInfo, t: &mut Timings) -> Result<ProbMap, EngineError> {
        Ok(self.slide_maps(slide, info, t)?.combine(t))
    }

    /// Every group that serves the slide's organ, run over the slide: the models' half of
    /// [`Engine::predict`].
    pub fn slide_maps(
        &mut self,
        slide: &RgbImage,
        info: &SlideInfo,
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
        timed(&mut t.resize_back, || {
            let weight_sum: f32 = groups.iter().map(|(_, w)| w).sum();
            // Per input size, the weighted sum of its groups' maps.
            let mut small: Vec<(usize, usize, Vec<f32>)> = Vec::new();
            let mut full: Vec<(Vec<f32>, f32)> = Vec::new();
            for (map, weight) in groups {
                match map {
                    GroupMap::Small {
                        map,
                        width: w,
                        height: h,
                    } => match small.iter_mut().find(|(sw, sh, _)| (*sw, *sh) == (w, h)) {
                        Some((_, _, sum)) => sum.iter_mut().zip(&map).for_each(|(s, v)| *s += weight * v),
                        None => {
                            let mut map = map;
                            if weight != 1.0 {
                                map.iter_mut().for_each(|v| *v *= weight);
                            }
                            small.push((w, h, map));
                        }
                    },
                    GroupMap::Full(map) => full.push((map, weight)),
                }
            }
            // The first resized map becomes the total: no extra slide-sized buffer to fill.
            let mut total: Option<Vec<f32>> = None;
            let mut add = |map: Vec<f32>, weight: f32| match &mut total {
                None if weight == 1.0 => total = Some(map),
                None => total = Some(map.into_iter().map(|v| v * weight).collect()),
                Some(total) => total.iter_mut().zip(&map).for_each(|(acc, v)| *acc += weight * v),
            };
            for (w, h, sum) in small {
                add(resize_map(&sum, w, h, width, height), 1.0);
            }
            for (map, weight) in full {
                add(map, weight);
            }
            let mut total = total.expect("slide_maps gives at least one group");
            if weight_sum != 1.0 {
                total.iter_mut().for_each(|v| *v /= weight_sum);
            }
            ProbMap {
                width,
                height,
                data: total,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(w: usize, h: usize, f: impl Fn(usize, usize) -> f32) -> GroupMap {
        GroupMap::Small {
            map: (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| f(x, y))
                .collect(),
            width: w,
            height: h,
        }
    }

    /// Summing same-size groups before the one resize gives what resizing each and averaging
    /// gives, to rounding; groups of other sizes and full-size maps are averaged in by weight.
    #[test]
    fn combining_matches_resizing_every_group_then_averaging() {
        let (width, height) = (97, 61);
        let a = |x: usize, y: usize| ((x * 7 + y * 3) % 11) as f32 / 10.0;
        let b = |x: usize, y: usize| ((x * y) % 5) as f32 / 4.0;
        let c = |x: usize, y: usize| if (x / 3 + y / 2) % 2 == 0 { 0.9 } else { 0.1 };
        let full: Vec<f32> = (0..width * height).map(|i| (i % 13) as f32 / 12.0).collect();
        let parts = vec![
            (small(16, 12, a), 1.0),
            (small(16, 12, b), 0.5),
            (small(24, 20, c), 2.0),
            (GroupMap::Full(full.clone()), 0.25),
        ];
        let expected: Vec<f32> = {
            let mut acc = vec![0f32; width * height];
            for (part, weight) in &parts {
                let at_size = match part {
                    GroupMap::Small {
                        map,
                        width: w,
                        height: h,
                    } => resize_map(map, *w, *h, width, height),
                    GroupMap::Full(map) => map.clone(),
                };
                acc.iter_mut().zip(&at_size).for_each(|(s, v)| *s += weight * v);
            }
            acc.iter().map(|v| v / 3.75).collect()
        };
        let mut t = Timings::default();
        let got = SlideMaps {
            width,
            height,
            groups: parts,
        }
        .combine(&mut t);
        assert_eq!((got.width, got.height), (width, height));
        let worst = got
            .data
            .iter()
            .zip(&expected)
            .map(|(g, e)| (g - e).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
        assert!(t.resize_back > std::time::Duration::ZERO);
    }

    /// One group of weight 1 is its map resized, bit for bit (the single-group ensembles of the
    /// tests and the competition keep their submissions).
    #[test]
    fn one_group_of_weight_one_is_its_map_resized_exactly() {
        let map = small(20, 16, |x, y| ((x * 31 + y * 17) % 23) as f32 / 22.0);
        let GroupMap::Small { map: raw, .. } = map.clone() else {
            unreachable!()
        };
        let got = SlideMaps {
            width: 75,
            height: 50,
            groups: vec![(map, 1.0)],
        }
        .combine(&mut Timings::default());
        assert_eq!(got.data, resize_map(&raw, 20, 16, 75, 50));
    }
}
