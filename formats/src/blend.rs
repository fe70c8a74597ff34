//! The ensemble's average of group maps at a slide's size: what `ftu-infer` does with the groups
//! of a manifest, and what the trainer does with out-of-fold maps when it picks thresholds and
//! ensemble weights on them — one copy, so both see the same numbers.

use crate::resize::resize_map;

/// One group's map of a slide, before the groups are averaged.
#[derive(Debug, Clone)]
pub enum GroupMap {
    /// A map at the group's input size (row-major `width × height`), resized to the slide's.
    Small { map: Vec<f32>, width: usize, height: usize },
    /// A map already at the slide's size.
    Full(Vec<f32>),
}

/// The weighted average (weights summing to any positive total) of `groups` at
/// `width × height`. Resizing is linear, so groups of the same input size are summed (by weight)
/// at that size and resized once: one slide-sized resize per input size, not per group.
pub fn combine(width: usize, height: usize, groups: Vec<(GroupMap, f32)>) -> Vec<f32> {
    assert!(!groups.is_empty(), "a blend of at least one map");
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
    let mut total = total.expect("at least one group");
    if weight_sum != 1.0 {
        total.iter_mut().for_each(|v| *v /= weight_sum);
    }
    total
}

/// The weighted average of maps already at one size, into `out` (resized to fit): the blend of
/// [`combine`]'s full-size maps without taking them, for searches that blend the same maps with
/// many weights.
pub fn weighted_mean_into(maps: &[(&[f32], f32)], out: &mut Vec<f32>) {
    assert!(!maps.is_empty(), "a blend of at least one map");
    let len = maps[0].0.len();
    assert!(maps.iter().all(|(m, _)| m.len() == len), "maps of one size");
    let weight_sum: f32 = maps.iter().map(|(_, w)| w).sum();
    out.clear();
    out.resize(len, 0.0);
    for &(map, weight) in maps {
        out.iter_mut().zip(map).for_each(|(acc, v)| *acc += weight * v);
    }
    if weight_sum != 1.0 {
        out.iter_mut().for_each(|v| *v /= weight_sum);
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
        let got = combine(width, height, parts);
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(g, e)| (g - e).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    #[test]
    fn a_weighted_mean_of_full_maps_equals_combining_them() {
        let a: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        let b: Vec<f32> = (0..12).map(|i| ((i * 5) % 12) as f32 / 12.0).collect();
        let mut out = Vec::new();
        weighted_mean_into(&[(&a, 0.3), (&b, 0.9)], &mut out);
        let want = combine(
            4,
            3,
            vec![(GroupMap::Full(a.clone()), 0.3), (GroupMap::Full(b.clone()), 0.9)],
        );
        assert_eq!(out.len(), 12);
        for (o, w) in out.iter().zip(&want) {
            assert!((o - w).abs() < 1e-6);
        }
        assert!((out[1] - (0.3 * a[1] + 0.9 * b[1]) / 1.2).abs() < 1e-6);
    }
}
