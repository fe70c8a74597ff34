//! The competition metric: Dice per image, its mean, and the mean per organ.

use crate::mask::rle::Run;
use crate::mask::Mask;
use crate::organ::Organ;

/// Dice of two run lists over the same pixels, computed on the runs without building masks.
/// Both empty counts as a perfect match, as the competition scored it.
pub fn dice_runs(a: &[Run], b: &[Run]) -> f64 {
    let area = |runs: &[Run]| runs.iter().map(|r| r.len).sum::<usize>();
    let total = area(a) + area(b);
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        let lo = a[i].start.max(b[j].start);
        let hi = a[i].end().min(b[j].end());
        both += hi.saturating_sub(lo);
        if a[i].end() < b[j].end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    from_counts(both, total)
}

/// Dice of two masks of the same size.
pub fn dice_masks(a: &Mask, b: &Mask) -> f64 {
    assert_eq!(
        (a.height(), a.width()),
        (b.height(), b.width()),
        "dice of masks of different sizes"
    );
    dice_bytes(a.data(), b.data())
}

/// Dice of two 0/1 masks held as bytes over the same pixels.
pub fn dice_bytes(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "dice of masks of different sizes");
    dice_pairs(a.iter().copied().zip(b.iter().copied()))
}

/// Dice of the prediction `prob > threshold` against a 0/1 `truth`, without building the
/// prediction (the threshold search calls this for every slide at every threshold).
pub fn dice_thresholded(prob: &[f32], threshold: f32, truth: &[u8]) -> f64 {
    assert_eq!(prob.len(), truth.len(), "dice of maps of different sizes");
    dice_pairs(prob.iter().map(|&p| u8::from(p > threshold)).zip(truth.iter().copied()))
}

/// What Dice needs at every threshold of a grid, from one pass over a slide: so a threshold search
/// over full-resolution maps keeps a few counts per slide instead of the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdCounts {
    /// Foreground pixels of the truth.
    pub truth: usize,
    /// Per threshold of the grid: pixels with `prob > threshold`.
    pub pred: Vec<usize>,
    /// Per threshold: those that are also foreground in the truth.
    pub both: Vec<usize>,
}

impl ThresholdCounts {
    /// Counts for each threshold of `grid` (ascending). Equal, threshold by threshold, to
    /// [`dice_thresholded`].
    pub fn of(prob: &[f32], truth: &[u8], grid: &[f32]) -> ThresholdCounts {
        assert_eq!(prob.len(), truth.len(), "dice of maps of different sizes");
        assert!(grid.windows(2).all(|w| w[0] <= w[1]), "threshold grid must ascend");
        // Bin k holds the pixels above exactly the first k thresholds.
        let (mut all, mut fg) = (vec![0usize; grid.len() + 1], vec![0usize; grid.len() + 1]);
        let mut truth_count = 0;
        for (&p, &t) in prob.iter().zip(truth) {
            let k = grid.partition_point(|&g| p > g);
            all[k] += 1;
            fg[k] += t as usize;
            truth_count += t as usize;
        }
        // Above threshold i: every bin past i.
        let above = |bins: &[usize]| {
            let mut out = vec![0; grid.len()];
            let mut sum = 0;
            for i in (0..grid.len()).rev() {
                sum += bins[i + 1];
                out[i] = sum;
            }
            out
        };
        ThresholdCounts {
            truth: truth_count,
            pred: above(&all),
            both: above(&fg),
        }
    }

    /// Dice at the grid's `i`-th threshold.
    pub fn dice(&self, i: usize) -> f64 {
        from_counts(self.both[i], self.truth + self.pred[i])
    }
}

/// Dice over (prediction, truth) pixel pairs, each 0 or 1.
fn dice_pairs(pairs: impl Iterator<Item = (u8, u8)>) -> f64 {
    let (mut both, mut total) = (0usize, 0usize);
    for (x, y) in pairs {
        both += (x & y) as usize;
        total += (x + y) as usize;
    }
    from_counts(both, total)
}

/// `2·|A∩B| / (|A|+|B|)`, and 1 when both are empty, as the competition scored it.
fn from_counts(both: usize, total: usize) -> f64 {
    if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageScore {
    pub id: String,
    pub organ: Organ,
    pub dice: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrganScore {
    pub organ: Organ,
    pub count: usize,
    pub dice: f64,
}

/// Per-image scores with the summaries the competition reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub images: Vec<ImageScore>,
}

impl Scores {
    /// Mean Dice over images; NaN when there are none.
    pub fn mean(&self) -> f64 {
        self.images.iter().map(|s| s.dice).sum::<f64>() / self.images.len() as f64
    }

    /// Mean Dice per organ that has images, in the order of [`Organ::ALL`].
    pub fn per_organ(&self) -> Vec<OrganScore> {
        Organ::ALL
            .into_iter()
            .filter_map(|organ| {
                let ds: Vec<f64> = self
                    .images
                    .iter()
                    .filter(|s| s.organ == organ)
                    .map(|s| s.dice)
                    .collect();
                (!ds.is_empty()).then(|| OrganScore {
                    organ,
                    count: ds.len(),
                    dice: ds.iter().sum::<f64>() / ds.len() as f64,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::rle;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let r = |s: usize, l: usize| Run { start: s, len: l };
        assert_eq!(dice_runs(&[], &[]), 1.0);
        assert_eq!(dice_runs(&[r(0, 4)], &[]), 0.0);
        assert_eq!(dice_runs(&[r(0, 4)], &[r(0, 4)]), 1.0);
        // |P|=4, |T|=4, overlap 2 → 0.5.
        assert_eq!(dice_runs(&[r(0, 4)], &[r(2, 4)]), 0.5);
        // Overlap split across runs on both sides: P={0..3, 5..8}, T={2..6}: overlap {2,5} → 2·2/(6+4).
        assert!((dice_runs(&[r(0, 3), r(5, 3)], &[r(2, 4)]) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn per_organ_means_and_counts() {
        let s = |organ, dice| ImageScore {
            id: String::new(),
            organ,
            dice,
        };
        let scores = Scores {
            images: vec![s(Organ::Lung, 0.5), s(Organ::Kidney, 1.0), s(Organ::Lung, 0.0)],
        };
        assert!((scores.mean() - 0.5).abs() < 1e-12);
        let per = scores.per_organ();
        assert_eq!(per.len(), 2);
        assert_eq!((per[0].organ, per[0].count, per[0].dice), (Organ::Kidney, 1, 1.0));
        assert_eq!((per[1].organ, per[1].count, per[1].dice), (Organ::Lung, 2, 0.25));
    }

    proptest! {
        #[test]
        fn threshold_counts_agree_with_dice_at_each_threshold(
            values in proptest::collection::vec((0u8..=20, any::<bool>()), 0..200),
        ) {
            // Probabilities on a 0.05 grid, so many sit exactly on a threshold (`>` is strict).
            let prob: Vec<f32> = values.iter().map(|&(v, _)| v as f32 * 0.05).collect();
            let truth: Vec<u8> = values.iter().map(|&(_, t)| u8::from(t)).collect();
            let grid: Vec<f32> = (1..20).map(|i| i as f32 * 0.05).collect();
            let counts = ThresholdCounts::of(&prob, &truth, &grid);
            for (i, &t) in grid.iter().enumerate() {
                prop_assert_eq!(counts.dice(i), dice_thresholded(&prob, t, &truth));
            }
        }

        #[test]
        fn runs_and_masks_agree(h in 1usize..20, w in 1usize..20, a in any::<u64>(), b in any::<u64>()) {
            let make = |seed: u64| {
                let data = (0..h * w).map(|i| ((seed.rotate_left(i as u32 % 64) ^ i as u64) & 1) as u8).collect();
                Mask::from_row_major(h, w, data).unwrap()
            };
            let (ma, mb) = (make(a), make(b));
            let by_runs = dice_runs(&rle::runs(&ma), &rle::runs(&mb));
            prop_assert!((by_runs - dice_masks(&ma, &mb)).abs() < 1e-12);
            prop_assert!((0.0..=1.0).contains(&by_runs));
            prop_assert_eq!(dice_runs(&rle::runs(&ma), &rle::runs(&ma)), 1.0);
        }
    }
}
