//! Where the tissue is: Otsu's threshold on the HSV saturation of a slide thumbnail. Glass and
//! background are grey or white (low saturation); stained tissue is pink and purple.

use serde::Serialize;

use crate::slide::RgbImage;

/// Saturation never counts as tissue below this (0–255): on a slide with no tissue at all Otsu
/// would split the glass's noise in two.
pub const MIN_SATURATION: u8 = 20;

/// Longest side of the thumbnail tissue is detected on.
pub const THUMBNAIL_SIDE: usize = 2048;

/// Tissue per thumbnail pixel, and the thumbnail's scale.
#[derive(Debug, Clone)]
pub struct TissueMap {
    /// Slide pixels per thumbnail pixel.
    pub factor: usize,
    pub width: usize,
    pub height: usize,
    pub tissue: Vec<bool>,
    pub threshold: u8,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TissueSummary {
    pub saturation_threshold: u8,
    pub tissue_fraction: f64,
}

/// HSV saturation, 0–255.
pub fn saturation(p: [u8; 3]) -> u8 {
    let max = p[0].max(p[1]).max(p[2]);
    let min = p[0].min(p[1]).min(p[2]);
    if max == 0 {
        0
    } else {
        ((max - min) as u32 * 255 / max as u32) as u8
    }
}

/// Otsu's threshold of a 256-bin histogram: the `t` maximising the between-class variance of
/// the values `≤ t` against those above it.
pub fn otsu(hist: &[u64; 256]) -> u8 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let sum_all: f64 = hist.iter().enumerate().map(|(i, &n)| i as f64 * n as f64).sum();
    let (mut w0, mut sum0) = (0f64, 0f64);
    let (mut best, mut best_t) = (-1f64, 0u8);
    for (t, &n) in hist.iter().enumerate() {
        w0 += n as f64;
        sum0 += t as f64 * n as f64;
        let w1 = total as f64 - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

impl TissueMap {
    /// Tissue where the saturation is above Otsu's threshold (and at least [`MIN_SATURATION`]).
    pub fn detect(thumbnail: &RgbImage, factor: usize) -> TissueMap {
        let sats: Vec<u8> = thumbnail
            .data
            .chunks_exact(3)
            .map(|p| saturation([p[0], p[1], p[2]]))
            .collect();
        let mut hist = [0u64; 256];
        sats.iter().for_each(|&s| hist[s as usize] += 1);
        let threshold = otsu(&hist).max(MIN_SATURATION);
        TissueMap {
            factor,
            width: thumbnail.width,
            height: thumbnail.height,
            tissue: sats.iter().map(|&s| s > threshold).collect(),
            threshold,
        }
    }

    /// The fraction of tissue in a slide-pixel rectangle (at the thumbnail's resolution).
    pub fn fraction(&self, x: usize, y: usize, w: usize, h: usize) -> f64 {
        let (x0, y0) = (x / self.factor, y / self.factor);
        let x1 = (x + w).div_ceil(self.factor).min(self.width).max(x0 + 1);
        let y1 = (y + h).div_ceil(self.factor).min(self.height).max(y0 + 1);
        let mut n = 0usize;
        for ty in y0..y1.min(self.height) {
            n += self.tissue[ty * self.width + x0..ty * self.width + x1.min(self.width)]
                .iter()
                .filter(|&&t| t)
                .count();
        }
        n as f64 / ((x1 - x0) * (y1 - y0)) as f64
    }

    pub fn summary(&self) -> TissueSummary {
        TissueSummary {
            saturation_threshold: self.threshold,
            tissue_fraction: self.tissue.iter().filter(|&&t| t).count() as f64 / self.tissue.len().max(1) as f64,
        }
    }
}

/// The thumbnail factor that keeps the longer side at most `max_side` pixels.
pub fn thumbnail_factor(width: usize, height: usize, max_side: usize) -> usize {
    width.max(height).div_ceil(max_side.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_of_grey_is_zero_and_of_pure_colour_full() {
        assert_eq!(saturation([200, 200, 200]), 0);
        assert_eq!(saturation([0, 0, 0]), 0);
        assert_eq!(saturation([255, 0, 0]), 255);
        assert_eq!(saturation([200, 100, 150]), 127);
    }

    #[test]
    fn otsu_splits_two_clusters_between_them() {
        let mut hist = [0u64; 256];
        for v in 5..15 {
            hist[v] = 100;
        }
        for v in 120..140 {
            hist[v] = 30;
        }
        let t = otsu(&hist);
        assert!((14..120).contains(&t), "{t}");
    }

    #[test]
    fn tissue_is_found_where_the_stain_is() {
        // A white slide, 40×20 thumbnail, with a pink patch at x 10..20, y 5..15.
        let mut img = RgbImage::new(40, 20);
        for (i, p) in img.data.chunks_exact_mut(3).enumerate() {
            let (y, x) = (i / 40, i % 40);
            let pink = (10..20).contains(&x) && (5..15).contains(&y);
            p.copy_from_slice(if pink { &[220, 120, 170] } else { &[240, 238, 241] });
        }
        let map = TissueMap::detect(&img, 8);
        assert_eq!(map.summary().tissue_fraction, 100.0 / 800.0);
        // Slide pixels: the patch covers x 80..160, y 40..120.
        assert_eq!(map.fraction(80, 40, 80, 80), 1.0);
        assert_eq!(map.fraction(200, 0, 100, 100), 0.0);
        assert_eq!(map.fraction(0, 0, 160, 160), 100.0 / 400.0);
        // A white slide has no tissue.
        let blank = TissueMap::detect(
            &RgbImage {
                width: 2,
                height: 1,
                data: vec![250, 250, 248, 252, 250, 250],
            },
            1,
        );
        assert!(blank.tissue.iter().all(|&t| !t));
    }
}
