//! Postprocessing chosen on out-of-fold masks: per organ, the spec of a small grid (minimum
//! component area and largest hole filled, in µm² so a spec means the same tissue at any pixel
//! size; a disc dilation or erosion in pixels) that raises the organ's mean Dice most — applied
//! with the code `ftu-infer` applies it with, and kept only where it raises Dice.

use std::collections::BTreeMap;

use ftu_formats::manifest::{Area, PostprocessSpec};
use ftu_formats::mask::runs::RunMask;
use ftu_formats::postprocess;
use ftu_formats::Organ;
use rayon::prelude::*;
use serde::Serialize;

/// A slide's thresholded out-of-fold mask and its truth, as row runs (a few KB a slide).
pub struct MaskedSlide {
    pub organ: Organ,
    pub pixel_size: f64,
    pub pred: RunMask,
    pub truth: RunMask,
}

/// The specs tried for each organ; the first (no change) is the baseline.
pub fn grid() -> Vec<PostprocessSpec> {
    let areas = [None, Some(25.0), Some(100.0), Some(400.0), Some(1600.0)];
    let holes = [None, Some(100.0), Some(1000.0)];
    let mut out = Vec::new();
    for &dilate in &[0, -2, -1, 1, 2] {
        for &min_area in &areas {
            for &max_hole in &holes {
                out.push(PostprocessSpec {
                    min_area: min_area.map(Area::SquareMicrons),
                    max_hole: max_hole.map(Area::SquareMicrons),
                    dilate,
                });
            }
        }
    }
    out
}

/// What was chosen for one organ.
#[derive(Debug, Clone, Serialize)]
pub struct OrganChoice {
    pub slides: usize,
    /// Mean Dice of the organ's slides without postprocessing, and with the chosen spec.
    pub dice_before: f64,
    pub dice_after: f64,
    pub min_area_um2: Option<f64>,
    pub max_hole_um2: Option<f64>,
    /// Pixels: positive dilates, negative erodes.
    pub dilate_px: i32,
}

impl OrganChoice {
    pub fn spec(&self) -> PostprocessSpec {
        PostprocessSpec {
            min_area: self.min_area_um2.map(Area::SquareMicrons),
            max_hole: self.max_hole_um2.map(Area::SquareMicrons),
            dilate: self.dilate_px,
        }
    }
}

fn um2(a: Option<Area>) -> Option<f64> {
    a.map(|a| match a {
        Area::SquareMicrons(v) | Area::Pixels(v) => v,
    })
}

/// Per organ, the best spec of `specs` (the first is no change) on the organ's slides, and the
/// mean Dice before and after; a spec other than no change only where it is better by more than
/// rounding.
pub fn choose(slides: &[MaskedSlide], specs: &[PostprocessSpec]) -> BTreeMap<Organ, OrganChoice> {
    let mut out = BTreeMap::new();
    for organ in Organ::ALL {
        let mine: Vec<&MaskedSlide> = slides.iter().filter(|s| s.organ == organ).collect();
        if mine.is_empty() {
            continue;
        }
        let mean: Vec<f64> = specs
            .par_iter()
            .map(|spec| {
                mine.iter()
                    .map(|s| postprocess::apply(s.pred.clone(), spec, s.pixel_size).dice(&s.truth))
                    .sum::<f64>()
                    / mine.len() as f64
            })
            .collect();
        let mut best = 0;
        for (i, &d) in mean.iter().enumerate().skip(1) {
            if d > mean[best] + 1e-9 {
                best = i;
            }
        }
        out.insert(
            organ,
            OrganChoice {
                slides: mine.len(),
                dice_before: mean[0],
                dice_after: mean[best],
                min_area_um2: um2(specs[best].min_area),
                max_hole_um2: um2(specs[best].max_hole),
                dilate_px: specs[best].dilate,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::Mask;

    fn disc(h: usize, w: usize, discs: &[(f64, f64, f64)]) -> RunMask {
        let data = (0..h * w)
            .map(|i| {
                let (y, x) = ((i / w) as f64, (i % w) as f64);
                u8::from(
                    discs
                        .iter()
                        .any(|&(cy, cx, r)| (y - cy).powi(2) + (x - cx).powi(2) <= r * r),
                )
            })
            .collect();
        RunMask::from_mask(&Mask::from_row_major(h, w, data).unwrap())
    }

    /// Kidney predictions with specks beside the true disc: removing small components helps and
    /// is kept; lung predictions equal to the truth: nothing helps, so nothing is kept.
    #[test]
    fn a_spec_is_kept_only_where_it_raises_dice() {
        let truth = disc(64, 64, &[(32.0, 32.0, 12.0)]);
        let specks = disc(
            64,
            64,
            &[(32.0, 32.0, 12.0), (5.0, 5.0, 1.0), (58.0, 8.0, 1.5), (6.0, 57.0, 1.0)],
        );
        let slides = vec![
            MaskedSlide {
                organ: Organ::Kidney,
                pixel_size: 0.5,
                pred: specks.clone(),
                truth: truth.clone(),
            },
            MaskedSlide {
                organ: Organ::Lung,
                pixel_size: 0.5,
                pred: truth.clone(),
                truth: truth.clone(),
            },
        ];
        let chosen = choose(&slides, &grid());
        let kidney = &chosen[&Organ::Kidney];
        assert!(kidney.dice_after > kidney.dice_before, "{kidney:?}");
        assert_eq!(kidney.dice_after, 1.0, "{kidney:?}");
        assert!(kidney.min_area_um2.is_some(), "{kidney:?}");
        let lung = &chosen[&Organ::Lung];
        assert_eq!((lung.dice_before, lung.dice_after), (1.0, 1.0));
        assert!(lung.spec().is_identity(), "{lung:?}");
    }
}
