//! Pictures to look at: a slide scaled down with the outlines of masks drawn on it (prediction in
//! yellow, truth in cyan), and the outlines of GeoJSON polygons. The trainer draws validation
//! overlays with these and `predict` its overviews.

use crate::mask::geojson;
use crate::mask::Mask;
use crate::resize;
use crate::slide::RgbImage;

/// A mask to outline, as a predicate over slide pixels, and its colour.
pub type Layer<'a> = (&'a dyn Fn(usize, usize) -> bool, [u8; 3]);

/// Prediction outline in yellow, truth outline in cyan: both stand out on pink and purple stain.
pub const PRED_COLOUR: [u8; 3] = [255, 230, 0];
pub const TRUTH_COLOUR: [u8; 3] = [0, 220, 255];

/// The slide scaled to `max_side` with the outlines of the prediction (and truth) drawn on it.
pub fn overlay(slide: &RgbImage, pred: &Mask, truth: Option<&Mask>, max_side: usize) -> (usize, usize, Vec<u8>) {
    let pred_at = |y: usize, x: usize| pred.get(y, x);
    let truth_at = |y: usize, x: usize| truth.is_some_and(|m| m.get(y, x));
    let mut layers: Vec<Layer> = Vec::new();
    if truth.is_some() {
        layers.push((&truth_at, TRUTH_COLOUR));
    }
    layers.push((&pred_at, PRED_COLOUR));
    outline_overlay(slide, slide.width, slide.height, &layers, max_side)
}

/// The size of a picture of a `width × height` slide whose longer side is at most `max_side`.
fn picture_size(width: usize, height: usize, max_side: usize) -> (usize, usize) {
    let scale = (max_side as f64 / width.max(height) as f64).min(1.0);
    (
        ((width as f64 * scale).round() as usize).max(1),
        ((height as f64 * scale).round() as usize).max(1),
    )
}

/// `base` (the slide, or a thumbnail of a `width × height` slide) scaled to `max_side`, with the
/// boundary of each layer's mask (a predicate over slide pixels) drawn in its colour.
pub fn outline_overlay(
    base: &RgbImage,
    width: usize,
    height: usize,
    layers: &[Layer],
    max_side: usize,
) -> (usize, usize, Vec<u8>) {
    let (w, h) = picture_size(width, height, max_side);
    let mut img = resize::resize_rgb(base, w, h);
    for (inside_slide, colour) in layers {
        // Nearest sampling of the mask at the overlay's size, then its boundary pixels.
        let small: Vec<bool> = (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                inside_slide(y * height / h, x * width / w)
            })
            .collect();
        let inside = |y: isize, x: isize| {
            y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w && small[y as usize * w + x as usize]
        };
        for y in 0..h as isize {
            for x in 0..w as isize {
                // 8-neighbourhood: lines two pixels wide on diagonals, visible at any zoom.
                let edge = inside(y, x) && !(-1..=1).all(|dy| (-1..=1).all(|dx| inside(y + dy, x + dx)));
                if edge {
                    let i = (y as usize * w + x as usize) * 3;
                    img.data[i..i + 3].copy_from_slice(colour);
                }
            }
        }
    }
    (w, h, img.data)
}

/// The GeoJSON overview: `base` scaled to `max_side` with every polygon ring drawn as lines.
pub fn outline_overview(
    base: &RgbImage,
    width: usize,
    height: usize,
    outlines: &[geojson::Outline],
    max_side: usize,
) -> (usize, usize, Vec<u8>) {
    let (w, h) = picture_size(width, height, max_side);
    let mut img = resize::resize_rgb(base, w, h);
    let (sx, sy) = (w as f64 / width as f64, h as f64 / height as f64);
    let mut plot = |x: f64, y: f64| {
        let (px, py) = (x.floor() as isize, y.floor() as isize);
        if px >= 0 && py >= 0 && (px as usize) < w && (py as usize) < h {
            let i = (py as usize * w + px as usize) * 3;
            img.data[i..i + 3].copy_from_slice(&PRED_COLOUR);
        }
    };
    for o in outlines {
        for ring in std::iter::once(&o.outer).chain(&o.holes) {
            for seg in ring.windows(2) {
                let (ax, ay, bx, by) = (seg[0][0] * sx, seg[0][1] * sy, seg[1][0] * sx, seg[1][1] * sy);
                let steps = ((bx - ax).abs().max((by - ay).abs()).ceil() as usize).max(1);
                for k in 0..=steps {
                    let f = k as f64 / steps as f64;
                    plot(ax + f * (bx - ax), ay + f * (by - ay));
                }
            }
        }
    }
    (w, h, img.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_outline_the_mask_and_keep_the_inside() {
        let mut slide = RgbImage::new(20, 10);
        slide.data.fill(100);
        let mut mask = Mask::zeros(10, 20);
        for y in 2..8 {
            for x in 5..15 {
                mask.set(y, x, true);
            }
        }
        let (w, h, rgb) = overlay(&slide, &mask, None, 100);
        assert_eq!((w, h), (20, 10));
        let px = |y: usize, x: usize| [rgb[(y * w + x) * 3], rgb[(y * w + x) * 3 + 1], rgb[(y * w + x) * 3 + 2]];
        assert_eq!(px(2, 5), PRED_COLOUR);
        assert_eq!(px(7, 14), PRED_COLOUR);
        assert_eq!(px(4, 8), [100; 3], "inside stays the slide");
        assert_eq!(px(0, 0), [100; 3], "outside stays the slide");
        let (w, h, _) = overlay(&slide, &mask, Some(&mask), 10);
        assert_eq!((w, h), (10, 5));
    }
}
