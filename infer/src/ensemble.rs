//! The ensemble over a slide in memory: every group's map at the slide's size (resize groups
//! through the engine, tile groups through [`crate::tiled`]), averaged by group weight.

use ftu_formats::manifest::GroupMode;
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::RgbImage;

use crate::engine::{Engine, EngineError, ProbMap, SlideInfo, Timings};
use crate::tiled::group_sum;

impl Engine {
    /// The ensemble's probability map for one slide, at the slide's size, every group resized
    /// (a tiled group runs over the in-memory slide: see [`crate::tiled`] for slides read in tiles).
    pub fn predict(&mut self, slide: &RgbImage, info: &SlideInfo, t: &mut Timings) -> Result<ProbMap, EngineError> {
        let (height, width) = (slide.height, slide.width);
        // The first group's resized map becomes the total: no extra slide-sized buffer to fill.
        let mut total: Option<Vec<f32>> = None;
        let mut weight_sum = 0f32;
        for gi in 0..self.manifest().groups.len() {
            if !self.group_serves(gi, info.organ) {
                continue;
            }
            let group_weight = self.manifest().groups[gi].weight;
            let back = match self.manifest().groups[gi].mode {
                GroupMode::Resize => self.resized_group(gi, slide, info, t)?,
                GroupMode::Tiles(_) => {
                    let mut source = SlideSource::Memory(slide.clone());
                    let map = group_sum(self, gi, &mut source, info, None, t)?;
                    let mut dense = vec![0f32; width * height];
                    map.add_into(&mut dense);
                    dense
                }
            };
            match &mut total {
                None => {
                    let mut back = back;
                    back.iter_mut().for_each(|v| *v *= group_weight);
                    total = Some(back);
                }
                Some(total) => total
                    .iter_mut()
                    .zip(&back)
                    .for_each(|(acc, v)| *acc += group_weight * v),
            }
            weight_sum += group_weight;
        }
        let Some(mut total) = total else {
            return Err(EngineError::NoModel(info.organ));
        };
        if weight_sum != 1.0 {
            total.iter_mut().for_each(|v| *v /= weight_sum);
        }
        Ok(ProbMap {
            width,
            height,
            data: total,
        })
    }
}
