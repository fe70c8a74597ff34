//! Training augmentations on a square RGB image (f32, 0–1, HWC) and its mask. Every geometric
//! transform moves the mask with the image exactly: both are sampled through the same inverse
//! map, the image bilinearly and the mask at the nearest pixel. Colour transforms leave the mask.

mod colour;
mod geometry;
pub mod stain;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::AugmentConfig;

/// A training sample: `size`² pixels, image HWC in 0–1, mask 0/1.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub size: usize,
    pub image: Vec<f32>,
    pub mask: Vec<u8>,
}

impl Sample {
    pub fn new(size: usize, image: Vec<f32>, mask: Vec<u8>) -> Sample {
        assert_eq!(image.len(), size * size * 3, "image must be size² × 3");
        assert_eq!(mask.len(), size * size, "mask must be size²");
        Sample { size, image, mask }
    }
}

/// How much the pixel-size augmentation rescales one slide.
#[derive(Debug, Clone, Copy)]
pub struct SlideScale {
    /// 0.4 / hubmap_pixel_size[organ] for HPA slides (how much smaller the same tissue looks in
    /// HuBMAP's scans); `None` for HuBMAP slides, and for every slide when crops are read at a
    /// target pixel size.
    pub hpa_to_hubmap: Option<f64>,
}

/// The configured random pipeline, drawing from `rng` in a fixed order (so a seed repeats):
/// pixel-size rescale, flips, rot90, scale-rotate-shift, HSV, brightness/contrast, gamma, HED
/// stain, blur, noise. Macenko normalisation happens when the slide is cached, not here.
pub fn augment(sample: &mut Sample, scale: SlideScale, cfg: &AugmentConfig, rng: &mut ChaCha8Rng) {
    let chance = |p: f64, rng: &mut ChaCha8Rng| p > 0.0 && rng.random::<f64>() < p;
    let sym = |r: f64, rng: &mut ChaCha8Rng| (rng.random::<f64>() * 2.0 - 1.0) * r;
    if let Some(factor) = scale.hpa_to_hubmap {
        if chance(cfg.p_pixel_size, rng) {
            let [lo, hi] = cfg.pixel_size_range;
            sample.affine(factor.clamp(lo, hi), 0.0, 0.0, 0.0);
        }
    }
    if chance(cfg.p_hflip, rng) {
        sample.hflip();
    }
    if chance(cfg.p_vflip, rng) {
        sample.vflip();
    }
    if chance(cfg.p_rot90, rng) {
        sample.rot90(rng.random_range(1..4));
    }
    if chance(cfg.p_affine, rng) {
        let scale = 1.0 + sym(cfg.scale, rng);
        let angle = sym(cfg.rotate, rng);
        let (sx, sy) = (sym(cfg.shift, rng), sym(cfg.shift, rng));
        sample.affine(scale.max(0.05), angle, sx, sy);
    }
    if chance(cfg.p_hsv, rng) {
        let h = sym(cfg.hue, rng) as f32;
        let s = 1.0 + sym(cfg.saturation, rng) as f32;
        let v = 1.0 + sym(cfg.value, rng) as f32;
        sample.hsv(h, s, v);
    }
    if chance(cfg.p_brightness_contrast, rng) {
        let b = sym(cfg.brightness, rng) as f32;
        let c = 1.0 + sym(cfg.contrast, rng) as f32;
        sample.brightness_contrast(b, c);
    }
    if chance(cfg.p_gamma, rng) {
        sample.gamma((1.0 + sym(cfg.gamma, rng)).max(0.05) as f32);
    }
    if chance(cfg.p_stain, rng) {
        let alpha = [0; 3].map(|_| 1.0 + sym(cfg.stain, rng) as f32);
        let beta = [0; 3].map(|_| sym(cfg.stain, rng) as f32);
        sample.hed_jitter(alpha, beta);
    }
    if chance(cfg.p_blur, rng) {
        let sigma = (0.1 + rng.random::<f64>() * (cfg.blur - 0.1).max(0.0)) as f32;
        sample.blur(sigma);
    }
    if chance(cfg.p_noise, rng) {
        sample.noise(cfg.noise as f32, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::colour::{hsv_to_rgb, rgb_to_hsv};
    use super::*;
    use rand::SeedableRng;

    const N: usize = 32;

    /// A grey image with one bright red pixel at (x, y), and the mask marking that pixel alone.
    fn marked(x: usize, y: usize) -> Sample {
        let mut image = vec![0.5f32; N * N * 3];
        let mut mask = vec![0u8; N * N];
        let d = y * N + x;
        image[d * 3..d * 3 + 3].copy_from_slice(&[1.0, 0.0, 0.0]);
        mask[d] = 1;
        Sample::new(N, image, mask)
    }

    /// A 3×3 marked block (survives resampling) centred at (x, y).
    fn marked_block(x: usize, y: usize) -> Sample {
        let mut s = marked(x, y);
        for dy in 0..3 {
            for dx in 0..3 {
                let d = (y + dy - 1) * N + (x + dx - 1);
                s.image[d * 3..d * 3 + 3].copy_from_slice(&[1.0, 0.0, 0.0]);
                s.mask[d] = 1;
            }
        }
        s
    }

    /// The mask is where the image is red: strongly red pixels are marked, and marked pixels are
    /// at least partly red (bilinear image, nearest mask).
    fn assert_follows(s: &Sample, what: &str) {
        let mut marked = 0;
        for d in 0..N * N {
            let redness = s.image[d * 3] - s.image[d * 3 + 1];
            if redness >= 0.8 {
                assert_eq!(s.mask[d], 1, "{what}: red pixel {d} not in the mask");
            }
            if s.mask[d] == 1 {
                assert!(redness >= 0.2, "{what}: mask pixel {d} not red ({redness})");
                marked += 1;
            }
        }
        assert!(marked > 0, "{what}: the mark left the image");
    }

    fn red_argmax(s: &Sample) -> (usize, usize) {
        let d = (0..N * N)
            .max_by(|&a, &b| s.image[a * 3].total_cmp(&s.image[b * 3]))
            .unwrap();
        (d % N, d / N)
    }

    fn marked_pixels(s: &Sample) -> Vec<(usize, usize)> {
        (0..N * N).filter(|&d| s.mask[d] == 1).map(|d| (d % N, d / N)).collect()
    }

    #[test]
    fn flips_and_quarter_turns_move_the_mask_with_the_image() {
        let ops: Vec<(&str, Box<dyn Fn(&mut Sample)>, (usize, usize))> = vec![
            ("hflip", Box::new(|s| s.hflip()), (N - 1 - 5, 9)),
            ("vflip", Box::new(|s| s.vflip()), (5, N - 1 - 9)),
            // NumPy rot90 (counter-clockwise): (x, y) → (y, N − 1 − x).
            ("rot90", Box::new(|s| s.rot90(1)), (9, N - 1 - 5)),
            ("rot180", Box::new(|s| s.rot90(2)), (N - 1 - 5, N - 1 - 9)),
            ("rot270", Box::new(|s| s.rot90(3)), (N - 1 - 9, 5)),
        ];
        for (name, op, expected) in ops {
            let mut s = marked(5, 9);
            op(&mut s);
            assert_eq!(red_argmax(&s), expected, "{name}: image");
            assert_eq!(marked_pixels(&s), vec![expected], "{name}: mask");
        }
    }

    #[test]
    fn scale_rotate_shift_moves_the_mask_with_the_image() {
        for (scale, deg, sx, sy) in [
            (1.0, 90.0, 0.0, 0.0),
            (1.3, 17.0, 0.1, -0.05),
            (0.8, -40.0, -0.1, 0.1),
            (1.0, 0.0, 0.25, 0.0),
        ] {
            let mut s = marked_block(10, 12);
            s.affine(scale, deg, sx, sy);
            assert_follows(&s, &format!("scale {scale} rotate {deg} shift {sx},{sy}"));
        }
        // A shift by a quarter side moves the mark by 8 pixels exactly; the strip shifted in from
        // the left edge is mirrored, so the mark's mirror image appears at x = 3 in both.
        let mut s = marked(5, 9);
        s.affine(1.0, 0.0, 0.25, 0.0);
        assert_eq!(marked_pixels(&s), vec![(3, 9), (13, 9)]);
        assert_follows(&s, "shift");
    }

    #[test]
    fn pixel_size_rescale_shrinks_about_the_centre_with_the_mask() {
        let mut s = marked_block(26, 16);
        // A kidney HPA slide: 0.4 / 0.5 = 0.8.
        s.affine(0.8, 0.0, 0.0, 0.0);
        let c = (N as f64 - 1.0) / 2.0;
        let expected = (c + (26.0 - c) * 0.8, c + (16.0 - c) * 0.8);
        // The mark itself (mirrored copies appear beyond the old edge, in mask and image alike).
        let pixels: Vec<_> = marked_pixels(&s).into_iter().filter(|p| p.0 < 27).collect();
        let cx = pixels.iter().map(|p| p.0 as f64).sum::<f64>() / pixels.len() as f64;
        let cy = pixels.iter().map(|p| p.1 as f64).sum::<f64>() / pixels.len() as f64;
        assert!(
            (cx - expected.0).abs() < 0.75 && (cy - expected.1).abs() < 0.75,
            "{cx},{cy} vs {expected:?}"
        );
        assert_follows(&s, "pixel-size rescale");
    }

    #[test]
    fn the_pixel_size_factor_is_clamped_to_its_range() {
        // Prostate: 0.4 / 6.263 = 0.064 would leave no FTU; the range's 0.5 is applied instead.
        let cfg = AugmentConfig {
            p_pixel_size: 1.0,
            ..AugmentConfig::none()
        };
        let info = |f| SlideScale { hpa_to_hubmap: Some(f) };
        let run = |info, cfg: &AugmentConfig| {
            let mut s = marked_block(26, 16);
            augment(&mut s, info, cfg, &mut ChaCha8Rng::seed_from_u64(3));
            s
        };
        let mut expected = marked_block(26, 16);
        expected.affine(0.5, 0.0, 0.0, 0.0);
        assert_eq!(run(info(0.4 / 6.263), &cfg), expected);
        let mut expected = marked_block(26, 16);
        expected.affine(0.8, 0.0, 0.0, 0.0);
        assert_eq!(run(info(0.8), &cfg), expected, "inside the range the factor is kept");
        let wide = AugmentConfig {
            pixel_size_range: [0.05, 2.0],
            ..cfg.clone()
        };
        assert_ne!(run(info(0.4 / 6.263), &wide), run(info(0.4 / 6.263), &cfg));
        let never = AugmentConfig {
            p_pixel_size: 0.0,
            ..cfg
        };
        assert_eq!(run(info(0.8), &never), marked_block(26, 16));
        assert_eq!(
            run(SlideScale { hpa_to_hubmap: None }, &wide),
            marked_block(26, 16),
            "HuBMAP slides are not rescaled"
        );
    }

    #[test]
    fn colour_transforms_change_the_image_but_never_the_mask() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let base = marked(8, 8);
        let ops: Vec<(&str, Box<dyn Fn(&mut Sample, &mut ChaCha8Rng)>)> = vec![
            ("hsv", Box::new(|s, _| s.hsv(20.0, 1.2, 0.9))),
            ("brightness_contrast", Box::new(|s, _| s.brightness_contrast(0.1, 1.2))),
            ("gamma", Box::new(|s, _| s.gamma(1.3))),
            ("noise", Box::new(|s, r| s.noise(0.05, r))),
            ("blur", Box::new(|s, _| s.blur(1.0))),
            (
                "hed",
                Box::new(|s, _| s.hed_jitter([1.1, 0.9, 1.0], [0.02, -0.02, 0.0])),
            ),
        ];
        for (name, op) in ops {
            let mut s = base.clone();
            op(&mut s, &mut rng);
            assert_eq!(s.mask, base.mask, "{name}: mask");
            assert_ne!(s.image, base.image, "{name}: image unchanged");
            assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)), "{name}: out of range");
            // The mark stays where it was (colour only).
            assert_eq!(red_argmax(&s), (8, 8), "{name}: mark moved");
        }
    }

    #[test]
    fn hsv_and_hed_round_trip_without_jitter() {
        for rgb in [[0.8f32, 0.4, 0.6], [0.3, 0.2, 0.7], [0.95, 0.9, 0.92]] {
            let back = hsv_to_rgb(rgb_to_hsv(rgb));
            let hed = stain::from_hed(stain::to_hed(rgb));
            for i in 0..3 {
                assert!((back[i] - rgb[i]).abs() < 1e-5);
                assert!((hed[i] - rgb[i]).abs() < 1e-4, "{rgb:?} → {hed:?}");
            }
        }
    }

    /// Tissue rendered from two known stains: Macenko recovers the stains, and normalising a
    /// slide stained differently towards a target reproduces the target's rendering.
    #[test]
    fn macenko_recovers_stains_and_normalises_towards_a_target() {
        let norm = |v: [f32; 3]| {
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            v.map(|x| x / n)
        };
        let render = |stains: [[f32; 3]; 2], scale: f32, rng: &mut ChaCha8Rng| -> (Vec<f32>, Vec<[f32; 2]>) {
            let mut img = Vec::new();
            let mut concs = Vec::new();
            for _ in 0..4000 {
                let c = [
                    (0.2 + rng.random::<f32>() * 1.3) * scale,
                    (0.2 + rng.random::<f32>() * 0.8) * scale,
                ];
                let od = [0, 1, 2].map(|i| c[0] * stains[0][i] + c[1] * stains[1][i]);
                img.extend(stain::from_od(od));
                concs.push(c);
            }
            (img, concs)
        };
        let h = norm([0.65, 0.70, 0.29]);
        let e = norm([0.07, 0.99, 0.11]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (img, _) = render([h, e], 1.0, &mut rng);
        let basis = stain::StainBasis::fit(&img).expect("enough tissue");
        for (got, want) in basis.stains.iter().zip([h, e]) {
            let cos: f32 = (0..3).map(|i| got[i] * want[i]).sum();
            assert!(cos > 0.97, "stain {got:?} vs {want:?} (cos {cos})");
        }
        // A second slide: other stain hues and stronger staining; normalised towards the first,
        // its mean colour moves to the first slide's.
        let h2 = norm([0.55, 0.80, 0.25]);
        let e2 = norm([0.15, 0.95, 0.25]);
        let (mut img2, _) = render([h2, e2], 1.4, &mut rng);
        let basis2 = stain::StainBasis::fit(&img2).expect("enough tissue");
        let mean = |v: &[f32]| [0, 1, 2].map(|c| v.iter().skip(c).step_by(3).sum::<f32>() / (v.len() / 3) as f32);
        let before = mean(&img2);
        basis2.normalise_to(&mut img2, &basis);
        let after = mean(&img2);
        let target = mean(&img);
        let dist = |a: [f32; 3], b: [f32; 3]| (0..3).map(|i| (a[i] - b[i]).abs()).fold(0f32, f32::max);
        assert!(
            dist(after, target) < 0.5 * dist(before, target),
            "before {before:?} after {after:?} target {target:?}"
        );
        assert!(dist(after, target) < 0.05, "after {after:?} target {target:?}");
    }

    #[test]
    fn the_pipeline_repeats_for_a_seed_and_keeps_mask_values_binary() {
        let cfg = AugmentConfig {
            p_pixel_size: 1.0,
            ..AugmentConfig::default()
        };
        let info = SlideScale {
            hpa_to_hubmap: Some(0.8),
        };
        let run = |seed| {
            let mut s = marked_block(12, 20);
            augment(&mut s, info, &cfg, &mut ChaCha8Rng::seed_from_u64(seed));
            s
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        assert!(run(5).mask.iter().all(|&m| m <= 1));
    }
}
