//! Per-organ threshold search on out-of-fold probabilities: for each organ the threshold from a
//! grid that maximises the mean Dice of that organ's slides, and one default over all slides.
//! Slides come as Dice counts at each grid threshold (see [`crate::eval::full_res`]), so the maps
//! behind them can be at full resolution without being kept.

use std::collections::BTreeMap;

use ftu_formats::dice::ThresholdCounts;
use ftu_formats::Organ;
use serde::Serialize;

pub struct OofSlide {
    pub organ: Organ,
    /// At each threshold of the grid the search runs on.
    pub counts: ThresholdCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Choice {
    pub threshold: f64,
    /// Mean Dice of the slides at that threshold.
    pub dice: f64,
    pub slides: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    pub default: Choice,
    pub per_organ: BTreeMap<Organ, Choice>,
}

/// `from`, `from + step`, … up to `to` (inclusive, rounding tolerant).
pub fn grid(from: f64, to: f64, step: f64) -> Vec<f64> {
    let n = ((to - from) / step + 1e-9).floor() as usize;
    (0..=n)
        .map(|i| ((from + i as f64 * step) * 1e6).round() / 1e6)
        .collect()
}

/// The grid as the `f32` thresholds maps are compared with.
pub fn as_f32(grid: &[f64]) -> Vec<f32> {
    grid.iter().map(|&t| t as f32).collect()
}

fn best(slides: &[&OofSlide], grid: &[f64]) -> Choice {
    let mut best = Choice {
        threshold: 0.5,
        dice: f64::MIN,
        slides: slides.len(),
    };
    for (i, &t) in grid.iter().enumerate() {
        let mean = slides.iter().map(|s| s.counts.dice(i)).sum::<f64>() / slides.len().max(1) as f64;
        // Ties keep the threshold nearest 0.5.
        if mean > best.dice + 1e-12
            || ((mean - best.dice).abs() <= 1e-12 && (t - 0.5).abs() < (best.threshold - 0.5).abs())
        {
            best = Choice {
                threshold: t,
                dice: mean,
                slides: slides.len(),
            };
        }
    }
    best
}

/// The best threshold of `grid` per organ and over all slides; each slide's counts were taken
/// on this grid.
pub fn search(oof: &[OofSlide], grid: &[f64]) -> Thresholds {
    assert!(
        oof.iter().all(|s| s.counts.pred.len() == grid.len()),
        "out-of-fold counts taken on another grid"
    );
    let all: Vec<&OofSlide> = oof.iter().collect();
    let mut per_organ = BTreeMap::new();
    for organ in Organ::ALL {
        let slides: Vec<&OofSlide> = oof.iter().filter(|s| s.organ == organ).collect();
        if !slides.is_empty() {
            per_organ.insert(organ, best(&slides, grid));
        }
    }
    Thresholds {
        default: best(&all, grid),
        per_organ,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kidney slides whose FTU pixels have probability 0.35 and background 0.26: only a
    /// threshold in [0.27, 0.34) separates them (0.3 on a 0.05 grid). A lung slide with FTU 0.75,
    /// background 0.66: 0.7. The default must serve both as well as one value can.
    #[test]
    fn finds_the_known_best_threshold_per_organ() {
        let g = grid(0.05, 0.95, 0.05);
        assert_eq!(g.len(), 19);
        let slide = |organ, fg: f32, bg: f32| {
            let truth: Vec<u8> = (0..100).map(|i| u8::from(i % 4 == 0)).collect();
            let prob: Vec<f32> = truth.iter().map(|&t| if t == 1 { fg } else { bg }).collect();
            OofSlide {
                organ,
                counts: ThresholdCounts::of(&prob, &truth, &as_f32(&g)),
            }
        };
        let oof = vec![
            slide(Organ::Kidney, 0.35, 0.26),
            slide(Organ::Kidney, 0.34, 0.27),
            slide(Organ::Lung, 0.75, 0.66),
        ];
        let th = search(&oof, &g);
        assert_eq!(th.per_organ[&Organ::Kidney].threshold, 0.3);
        assert_eq!(th.per_organ[&Organ::Kidney].dice, 1.0);
        assert_eq!(th.per_organ[&Organ::Lung].threshold, 0.7);
        assert!(!th.per_organ.contains_key(&Organ::Spleen));
        // One threshold for all: 0.3 gets both kidney slides right and marks all of the lung
        // slide (Dice 2·25/125 = 0.4): mean 0.8, where 0.7 would give (0 + 0 + 1)/3.
        assert_eq!(th.default.threshold, 0.3);
        assert!((th.default.dice - 0.8).abs() < 1e-12);
        assert_eq!(th.default.slides, 3);
    }
}
