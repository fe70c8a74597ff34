//! Which training slides an epoch draws, in what order: every slide once per shuffled pass (the
//! default), or by organ — an organ drawn with probability ∝ its weight, then the next slide of
//! that organ's own shuffled pass — so a rare organ is seen as often as asked.

use ftu_formats::Organ;
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::seq::SliceRandom;
use rand::Rng;

/// `samples` indices drawn from `train_idx`; `organ_of(i)` is slide `i`'s organ. With
/// `organ_weights` (by [`Organ::index`]), organs are drawn by weight (an organ without training
/// slides is never drawn); `None` when every organ present has weight 0.
pub fn epoch_order(
    train_idx: &[usize],
    organ_of: impl Fn(usize) -> Organ,
    samples: usize,
    organ_weights: Option<&[f64; 5]>,
    rng: &mut impl Rng,
) -> Option<Vec<usize>> {
    let Some(weights) = organ_weights else {
        let mut order = Vec::with_capacity(samples);
        while order.len() < samples {
            let mut pass = train_idx.to_vec();
            pass.shuffle(rng);
            order.extend(pass);
        }
        order.truncate(samples);
        return Some(order);
    };
    let mut slides: [Vec<usize>; 5] = Default::default();
    for &i in train_idx {
        slides[organ_of(i).index()].push(i);
    }
    let organ_weight: Vec<f64> = (0..5)
        .map(|o| if slides[o].is_empty() { 0.0 } else { weights[o] })
        .collect();
    let organs = WeightedIndex::new(&organ_weight).ok()?;
    let mut queues: [Vec<usize>; 5] = Default::default();
    let order = (0..samples)
        .map(|_| {
            let o = organs.sample(rng);
            if queues[o].is_empty() {
                queues[o] = slides[o].clone();
                queues[o].shuffle(rng);
            }
            queues[o].pop().expect("a drawn organ has slides")
        })
        .collect();
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Slides 0–7 kidney, 8–9 lung.
    fn organ_of(i: usize) -> Organ {
        if i < 8 {
            Organ::Kidney
        } else {
            Organ::Lung
        }
    }

    fn share_of_lung(order: &[usize]) -> f64 {
        order.iter().filter(|&&i| organ_of(i) == Organ::Lung).count() as f64 / order.len() as f64
    }

    #[test]
    fn by_default_each_slide_comes_once_per_pass() {
        let idx: Vec<usize> = (0..10).collect();
        let order = epoch_order(&idx, organ_of, 25, None, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert_eq!(order.len(), 25);
        for pass in order.chunks(10).take(2) {
            let mut p = pass.to_vec();
            p.sort_unstable();
            assert_eq!(p, idx);
        }
    }

    /// Equal organ weights on 8 kidney and 2 lung slides: half the draws are lung (binomial,
    /// 4000 draws: σ ≈ 0.008), and a lung slide's draws alternate between the two.
    #[test]
    fn organ_weights_set_each_organs_share_of_the_draws() {
        let idx: Vec<usize> = (0..10).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let equal = [1.0; 5];
        let order = epoch_order(&idx, organ_of, 4000, Some(&equal), &mut rng).unwrap();
        assert!((share_of_lung(&order) - 0.5).abs() < 0.04, "{}", share_of_lung(&order));
        let lungs: Vec<usize> = order.iter().copied().filter(|&i| i >= 8).collect();
        for pair in lungs.chunks_exact(2) {
            assert_ne!(pair[0], pair[1], "each organ's slides come once per pass");
        }
        let mut w = [1.0; 5];
        w[Organ::Kidney.index()] = 3.0;
        let order = epoch_order(&idx, organ_of, 4000, Some(&w), &mut rng).unwrap();
        assert!((share_of_lung(&order) - 0.25).abs() < 0.04, "{}", share_of_lung(&order));
        // Weight on an organ without slides (spleen) is not drawn; zero on all present ones fails.
        let mut w = [0.0; 5];
        w[Organ::Spleen.index()] = 1.0;
        assert!(epoch_order(&idx, organ_of, 10, Some(&w), &mut rng).is_none());
        w[Organ::Lung.index()] = 1.0;
        let order = epoch_order(&idx, organ_of, 50, Some(&w), &mut rng).unwrap();
        assert_eq!(share_of_lung(&order), 1.0);
    }
}
