//! The weight search: candidate weightings of the runs (a grid over the simplex, with each run
//! alone and equal weights among them), each slide's blend under each candidate reduced to Dice
//! counts at every threshold of the grid, and each candidate scored with the per-organ (and per
//! data source) thresholds that are best for it.

use std::collections::BTreeMap;

use ftu_formats::dice::ThresholdCounts;
use ftu_formats::{DataSource, Organ};
use serde::Serialize;

use crate::eval::thresholds::{self, Choice, OofSlide};

/// Weightings of `n` runs: every point of the simplex whose weights are multiples of
/// `1 / steps` (each run alone among them), and equal weights; in a fixed order, equal weights
/// first.
pub fn simplex(n: usize, steps: usize) -> Vec<Vec<f64>> {
    fn compositions(left: usize, parts: usize, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if parts == 1 {
            prefix.push(left);
            out.push(prefix.clone());
            prefix.pop();
            return;
        }
        for first in (0..=left).rev() {
            prefix.push(first);
            compositions(left - first, parts - 1, prefix, out);
            prefix.pop();
        }
    }
    let equal = vec![1.0 / n as f64; n];
    let mut out = vec![equal.clone()];
    let mut points = Vec::new();
    compositions(steps, n, &mut Vec::new(), &mut points);
    for p in points {
        let w: Vec<f64> = p.iter().map(|&k| k as f64 / steps as f64).collect();
        if w.iter().zip(&equal).any(|(a, b)| (a - b).abs() > 1e-9) {
            out.push(w);
        }
    }
    out
}

/// How many points [`simplex`] gives.
pub fn simplex_len(n: usize, steps: usize) -> u128 {
    // C(steps + n - 1, n - 1), plus equal weights when they are not on the grid.
    let mut c: u128 = 1;
    for i in 0..(n as u128 - 1) {
        c = c * (steps as u128 + 1 + i) / (i + 1);
    }
    c + u128::from(steps % n != 0)
}

/// The weights of the runs that serve a slide, renormalised to sum to 1 (as the engine averages
/// the groups that serve a slide's organ); `None` when none of them has weight.
pub fn effective(weights: &[f64], serves: &[bool]) -> Option<Vec<f64>> {
    let total: f64 = weights.iter().zip(serves).filter(|(_, &s)| s).map(|(w, _)| w).sum();
    (total > 0.0).then(|| {
        weights
            .iter()
            .zip(serves)
            .map(|(&w, &s)| if s { w / total } else { 0.0 })
            .collect()
    })
}

/// One labelled slide's Dice counts under each candidate (`None`: no run with weight serves it).
pub struct SlideCounts {
    pub organ: Organ,
    pub source: DataSource,
    pub counts: Vec<Option<ThresholdCounts>>,
}

/// The thresholds a candidate is scored with, by organ, and by (data source, organ) when the
/// slides come from more than one source.
#[derive(Debug, Clone, Serialize)]
pub struct Chosen {
    pub default: Choice,
    pub per_organ: BTreeMap<Organ, Choice>,
    /// Empty unless the slides come from more than one data source.
    pub per_source: BTreeMap<DataSource, BTreeMap<Organ, Choice>>,
}

impl Chosen {
    /// The threshold a slide gets.
    pub fn threshold(&self, organ: Organ, source: DataSource) -> f64 {
        self.per_source
            .get(&source)
            .and_then(|t| t.get(&organ))
            .or_else(|| self.per_organ.get(&organ))
            .unwrap_or(&self.default)
            .threshold
    }
}

/// A candidate scored on the out-of-fold slides.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    /// One weight per run, summing to 1.
    pub weights: Vec<f64>,
    /// Whether a run with weight serves every organ of the slides (only such a candidate can be
    /// the ensemble).
    pub covers: bool,
    /// Slides scored: those some run with weight serves.
    pub slides: usize,
    /// Mean Dice over those slides, each at its thresholds.
    pub mean_dice: f64,
    /// Mean Dice per organ, at the organ's thresholds.
    pub organ_dice: BTreeMap<Organ, f64>,
    pub thresholds: Chosen,
}

/// Scores candidate `c` over the slides' counts, choosing its thresholds on `grid`.
pub fn score(c: usize, weights: &[f64], slides: &[SlideCounts], grid: &[f64], organs: &[Organ]) -> Scored {
    let of = |s: &SlideCounts| {
        s.counts[c].as_ref().map(|counts| OofSlide {
            organ: s.organ,
            counts: counts.clone(),
        })
    };
    let scored: Vec<(&SlideCounts, OofSlide)> = slides.iter().filter_map(|s| Some((s, of(s)?))).collect();
    let oof: Vec<OofSlide> = scored
        .iter()
        .map(|(_, o)| OofSlide {
            organ: o.organ,
            counts: o.counts.clone(),
        })
        .collect();
    let th = thresholds::search(&oof, grid);
    let sources: Vec<DataSource> = {
        let mut s: Vec<DataSource> = slides.iter().map(|s| s.source).collect();
        s.sort();
        s.dedup();
        s
    };
    let mut per_source = BTreeMap::new();
    if sources.len() > 1 {
        for &source in &sources {
            let part: Vec<OofSlide> = scored
                .iter()
                .filter(|(s, _)| s.source == source)
                .map(|(_, o)| OofSlide {
                    organ: o.organ,
                    counts: o.counts.clone(),
                })
                .collect();
            per_source.insert(source, thresholds::search(&part, grid).per_organ);
        }
    }
    let chosen = Chosen {
        default: th.default,
        per_organ: th.per_organ,
        per_source,
    };
    let index = |t: f64| {
        grid.iter()
            .position(|&g| (g - t).abs() < 1e-9)
            .expect("a threshold of the grid")
    };
    let mut by_organ: BTreeMap<Organ, (f64, usize)> = BTreeMap::new();
    for (s, o) in &scored {
        let d = o.counts.dice(index(chosen.threshold(s.organ, s.source)));
        let e = by_organ.entry(s.organ).or_default();
        e.0 += d;
        e.1 += 1;
    }
    let total: f64 = by_organ.values().map(|(d, _)| d).sum();
    Scored {
        weights: weights.to_vec(),
        covers: organs.iter().all(|o| by_organ.contains_key(o)),
        slides: scored.len(),
        mean_dice: total / scored.len().max(1) as f64,
        organ_dice: by_organ.into_iter().map(|(o, (d, n))| (o, d / n as f64)).collect(),
        thresholds: chosen,
    }
}

/// The candidate to use: the best covering one, but equal weights (candidate 0) unless another
/// is better by more than rounding.
pub fn choose(scored: &[Scored]) -> Option<usize> {
    let mut best: Option<usize> = scored.first().filter(|s| s.covers).map(|_| 0);
    for (i, s) in scored.iter().enumerate().skip(1) {
        if !s.covers {
            continue;
        }
        match best {
            Some(b) if s.mean_dice <= scored[b].mean_dice + 1e-9 => {}
            _ => best = Some(i),
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simplex_holds_each_run_alone_and_equal_weights() {
        let s = simplex(3, 4);
        assert_eq!(s.len() as u128, simplex_len(3, 4));
        assert_eq!(s.len(), 15 + 1, "C(6, 2) grid points and equal thirds");
        assert!(s[0].iter().all(|&w| (w - 1.0 / 3.0).abs() < 1e-12));
        for run in 0..3 {
            assert!(s.iter().any(|w| w[run] == 1.0), "run {run} alone");
        }
        assert!(s.iter().all(|w| (w.iter().sum::<f64>() - 1.0).abs() < 1e-12));
        // Two runs at steps of 0.5: equal weights are on the grid and come once, first.
        assert_eq!(simplex(2, 2), vec![vec![0.5, 0.5], vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(simplex_len(2, 2), 3);
    }

    #[test]
    fn weights_of_runs_that_do_not_serve_a_slide_are_left_out() {
        assert_eq!(
            effective(&[0.5, 0.25, 0.25], &[true, false, true]),
            Some(vec![2.0 / 3.0, 0.0, 1.0 / 3.0])
        );
        assert_eq!(effective(&[0.0, 1.0], &[true, false]), None);
    }

    /// Two kidney slides and a lung slide under two candidates; the second is better on kidney
    /// only by rounding, so equal weights (the first) stay chosen; a candidate that leaves lung
    /// unserved is never chosen however it scores.
    #[test]
    fn equal_weights_stay_unless_beaten_and_uncovering_candidates_never_win() {
        let grid = [0.5];
        let counts = |truth, pred, both| ThresholdCounts {
            truth,
            pred: vec![pred],
            both: vec![both],
        };
        let slide = |organ, c: Vec<Option<ThresholdCounts>>| SlideCounts {
            organ,
            source: DataSource::Hpa,
            counts: c,
        };
        let slides = vec![
            slide(
                Organ::Kidney,
                vec![
                    Some(counts(10, 10, 8)),
                    Some(counts(10, 10, 8)),
                    Some(counts(10, 10, 10)),
                ],
            ),
            slide(
                Organ::Kidney,
                vec![
                    Some(counts(10, 10, 8)),
                    Some(counts(10, 10, 8)),
                    Some(counts(10, 10, 10)),
                ],
            ),
            slide(
                Organ::Lung,
                vec![Some(counts(10, 10, 5)), Some(counts(10, 10, 5)), None],
            ),
        ];
        let organs = [Organ::Kidney, Organ::Lung];
        let scored: Vec<Scored> = (0..3).map(|c| score(c, &[0.5, 0.5], &slides, &grid, &organs)).collect();
        assert!((scored[0].mean_dice - (0.8 + 0.8 + 0.5) / 3.0).abs() < 1e-12);
        assert_eq!(scored[0].organ_dice[&Organ::Lung], 0.5);
        assert!(!scored[2].covers && scored[2].mean_dice == 1.0 && scored[2].slides == 2);
        assert_eq!(choose(&scored), Some(0));
    }
}
