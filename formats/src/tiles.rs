//! Sliding windows over a slide: where the windows start, the Gaussian weight each window gives
//! its pixels (centre trusted, borders not, as nnU-Net), and the summed weight per pixel that
//! turns the weighted sum of window predictions into an average.

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

#[cfg(test)]
mod tests {
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
