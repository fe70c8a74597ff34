//! Sliding windows over a slide: where the windows start, the Gaussian weight each window gives
//! its pixels (centre trusted, borders not, as nnU-Net), the summed weight per pixel that turns
//! the weighted sum of window predictions into an average, and [`TilePlan`], which puts them
//! together: the tiling `ftu-infer` predicts with and `ftu-train` validates crops mode with.

use crate::blocks::BlockMap;
use crate::resize::resize_map;
use crate::slide::RgbImage;

/// Window starts along one axis of `len` pixels: the first at 0, the last flush with the end,
/// evenly spaced with at most `window · (1 − overlap)` between starts.
pub fn starts(len: usize, window: usize, overlap: f64) -> Vec<usize> {
    if len <= window {
        return vec![0];
    }
    let step = (window as f64 * (1.0 - overlap)).max(1.0);
    let span = (len - window) as f64;
    let n = (span / step).ceil() as usize + 1;
    (0..n)
        .map(|i| (span * i as f64 / (n - 1) as f64).round() as usize)
        .collect()
}

/// The 1-D Gaussian a window weighs its pixels by: σ = window/8, peak 1, never below 1e-3 so
/// that a pixel only a window's border covers still gets that window's value.
pub fn gaussian(window: usize) -> Vec<f32> {
    let sigma = window as f64 / 8.0;
    let centre = (window as f64 - 1.0) / 2.0;
    (0..window)
        .map(|i| {
            let d = (i as f64 - centre) / sigma;
            ((-0.5 * d * d).exp() as f32).max(1e-3)
        })
        .collect()
}

/// Per pixel of an axis of `len`, the summed weight of the windows covering it. With the 2-D
/// weight `g(y)·g(x)` and every window counted, a pixel's total weight is `cover_y · cover_x`.
pub fn coverage(len: usize, starts: &[usize], weights: &[f32]) -> Vec<f32> {
    let mut cover = vec![0f32; len];
    for &s in starts {
        let end = (s + weights.len()).min(len);
        cover[s..end].iter_mut().zip(weights).for_each(|(c, w)| *c += w);
    }
    cover
}

/// A window in slide pixels; `width`/`height` are inside the slide (smaller than the window's
/// side only when the slide is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// The windows of side `side` (slide pixels) over a `width × height` slide, row by row.
pub fn windows(width: usize, height: usize, side: usize, overlap: f64) -> Vec<Window> {
    let xs = starts(width, side, overlap);
    let ys = starts(height, side, overlap);
    ys.iter()
        .flat_map(|&y| {
            xs.iter().map(move |&x| Window {
                x,
                y,
                width: side.min(width - x),
                height: side.min(height - y),
            })
        })
        .collect()
}

/// The windows of side `side` over a slide, the ones worth running (row by row, top to bottom),
/// and the per-axis coverage that normalises their blend. A window not run counts as predicting
/// 0, so every pixel's weights still sum to 1.
#[derive(Debug, Clone)]
pub struct TilePlan {
    /// The window's side in slide pixels.
    pub side: usize,
    weights: Vec<f32>,
    cover_x: Vec<f32>,
    cover_y: Vec<f32>,
    /// How many windows cover the slide.
    pub windows: usize,
    /// The windows `keep` kept, row by row top to bottom.
    pub to_run: Vec<Window>,
}

impl TilePlan {
    pub fn new(width: usize, height: usize, side: usize, overlap: f64, keep: impl Fn(&Window) -> bool) -> TilePlan {
        let weights = gaussian(side);
        let cover_x = coverage(width, &starts(width, side, overlap), &weights);
        let cover_y = coverage(height, &starts(height, side, overlap), &weights);
        let all = windows(width, height, side, overlap);
        TilePlan {
            side,
            weights,
            cover_x,
            cover_y,
            windows: all.len(),
            to_run: all.into_iter().filter(|w| keep(w)).collect(),
        }
    }

    /// Adds `k ·` the window's share of the average to `map`: `prob` is the model's `size × size`
    /// map of the window's pixels padded to `side × side` ([`pad_edge`]), resized back to the
    /// window's scale and cropped to the window.
    pub fn blend(&self, map: &mut BlockMap, w: &Window, prob: Vec<f32>, size: usize, k: f32) {
        let side = self.side;
        let back = if side == size {
            prob
        } else {
            resize_map(&prob, size, size, side, side)
        };
        let values = crop_map(back, side, w.width, w.height);
        let rows: Vec<f32> = (0..w.height).map(|r| self.weights[r] / self.cover_y[w.y + r]).collect();
        let cols: Vec<f32> = (0..w.width).map(|c| self.weights[c] / self.cover_x[w.x + c]).collect();
        map.add_window((w.x, w.y, w.width, w.height), &values, &rows, &cols, k);
    }
}

/// The region padded to `side × side` by repeating its last row and column (windows larger than
/// the slide).
pub fn pad_edge(region: RgbImage, side: usize) -> RgbImage {
    if region.width == side && region.height == side {
        return region;
    }
    RgbImage {
        data: pad_samples(&region.data, region.width, region.height, 3, side),
        width: side,
        height: side,
    }
}

/// Row-major `w × h` pixels of `channels` samples each (`w`, `h` ≤ `side`), padded to
/// `side × side` by repeating the last row and column: a slide window's RGB, a label plane.
pub fn pad_samples<T: Copy>(data: &[T], w: usize, h: usize, channels: usize, side: usize) -> Vec<T> {
    let row_len = w * channels;
    let mut out = Vec::with_capacity(side * side * channels);
    for y in 0..side {
        let row = &data[y.min(h - 1) * row_len..][..row_len];
        out.extend_from_slice(row);
        let last = &row[row_len - channels..];
        for _ in w..side {
            out.extend_from_slice(last);
        }
    }
    out
}

/// The top-left `w × h` of a `side × side` map.
fn crop_map(map: Vec<f32>, side: usize, w: usize, h: usize) -> Vec<f32> {
    if w == side && h == side {
        return map;
    }
    (0..h)
        .flat_map(|y| map[y * side..y * side + w].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn padding_repeats_the_edge_and_cropping_undoes_it() {
        let img = RgbImage {
            width: 2,
            height: 1,
            data: vec![1, 2, 3, 4, 5, 6],
        };
        let p = pad_edge(img, 3);
        assert_eq!(p.pixel(2, 2), [4, 5, 6]);
        assert_eq!(p.pixel(0, 1), [1, 2, 3]);
        // One sample per pixel (a label plane): 2×2 to 3×3.
        assert_eq!(pad_samples(&[1u8, 2, 3, 4], 2, 2, 1, 3), [1, 2, 2, 3, 4, 4, 3, 4, 4]);
        let map: Vec<f32> = (0..9).map(|v| v as f32).collect();
        assert_eq!(crop_map(map, 3, 2, 1), [0.0, 1.0]);
    }

    /// Windows that all predict the same value blend to that value everywhere, whatever the
    /// overlap, the edge windows and the resize back; a window not run counts as 0.
    #[test]
    fn a_constant_prediction_blends_to_itself_and_skipped_windows_to_zero() {
        let (width, height) = (300, 170);
        for overlap in [0.0, 0.25, 0.5] {
            let plan = TilePlan::new(width, height, 128, overlap, |_| true);
            let mut map = BlockMap::new(width, height);
            for w in &plan.to_run {
                plan.blend(&mut map, w, vec![0.7; 64 * 64], 64, 1.0);
            }
            for (y, x) in [(0, 0), (169, 299), (85, 150), (10, 290)] {
                assert!(
                    (map.get(y, x) - 0.7).abs() < 1e-4,
                    "overlap {overlap} at {y},{x}: {}",
                    map.get(y, x)
                );
            }
        }
        let plan = TilePlan::new(width, height, 128, 0.0, |w| w.x == 0);
        assert_eq!((plan.windows, plan.to_run.len()), (6, 2));
        let mut map = BlockMap::new(width, height);
        for w in &plan.to_run {
            plan.blend(&mut map, w, vec![1.0; 128 * 128], 128, 1.0);
        }
        assert!((map.get(50, 10) - 1.0).abs() < 1e-5 && map.get(50, 299) == 0.0);
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn starts_cover_the_axis_flush_at_both_ends() {
        assert_eq!(starts(100, 100, 0.5), [0]);
        assert_eq!(starts(60, 100, 0.5), [0]);
        assert_eq!(starts(200, 100, 0.5), [0, 50, 100]);
        assert_eq!(starts(200, 100, 0.0), [0, 100]);
        // 250 px, steps of at most 50: 0, 50, 100, 150 → four windows.
        assert_eq!(starts(250, 100, 0.5), [0, 50, 100, 150]);
        assert_eq!(starts(101, 100, 0.5), [0, 1]);
    }

    #[test]
    fn the_gaussian_peaks_at_the_centre_and_is_symmetric() {
        let g = gaussian(64);
        assert!((g[31] - g[32]).abs() < 1e-6 && g[31] > 0.99);
        assert!(g.iter().zip(g.iter().rev()).all(|(a, b)| (a - b).abs() < 1e-6));
        assert!(g[0] >= 1e-3 && g[0] < 0.01);
    }

    proptest! {
        #[test]
        fn every_pixel_is_covered_and_steps_respect_the_overlap(
            len in 1usize..3000, window in 1usize..600, overlap in 0.0f64..0.95
        ) {
            let s = starts(len, window, overlap);
            prop_assert_eq!(s[0], 0);
            prop_assert_eq!(*s.last().unwrap(), len.saturating_sub(window));
            let max_step = (window as f64 * (1.0 - overlap)).max(1.0).ceil() as usize;
            for pair in s.windows(2) {
                prop_assert!(pair[1] > pair[0] && pair[1] - pair[0] <= max_step);
            }
            let cover = coverage(len, &s, &gaussian(window));
            prop_assert!(cover.iter().all(|&c| c >= 1e-3));
        }
    }

    #[test]
    fn windows_stay_inside_the_slide() {
        let w = windows(250, 80, 100, 0.5);
        assert_eq!(w.len(), 4);
        assert!(w.iter().all(|w| w.x + w.width <= 250 && w.y == 0 && w.height == 80));
        assert_eq!(
            w[3],
            Window {
                x: 150,
                y: 0,
                width: 100,
                height: 80
            }
        );
    }
}
