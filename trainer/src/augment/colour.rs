//! Colour transforms: they change the image and leave the mask.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::geometry::reflect;
use super::{stain, Sample};

impl Sample {
    fn map_pixels(&mut self, f: impl Fn([f32; 3]) -> [f32; 3]) {
        for px in self.image.chunks_exact_mut(3) {
            let out = f([px[0], px[1], px[2]]);
            for (p, o) in px.iter_mut().zip(out) {
                *p = o.clamp(0.0, 1.0);
            }
        }
    }

    /// Hue shift in degrees, saturation and value factors.
    pub fn hsv(&mut self, hue: f32, sat: f32, val: f32) {
        self.map_pixels(|rgb| {
            let [h, s, v] = rgb_to_hsv(rgb);
            hsv_to_rgb([
                (h + hue).rem_euclid(360.0),
                (s * sat).clamp(0.0, 1.0),
                (v * val).clamp(0.0, 1.0),
            ])
        });
    }

    pub fn brightness_contrast(&mut self, brightness: f32, contrast: f32) {
        self.map_pixels(|p| p.map(|v| (v - 0.5) * contrast + 0.5 + brightness));
    }

    pub fn gamma(&mut self, gamma: f32) {
        self.map_pixels(|p| p.map(|v| v.max(0.0).powf(gamma)));
    }

    pub fn noise(&mut self, sigma: f32, rng: &mut ChaCha8Rng) {
        for v in self.image.iter_mut() {
            // Box–Muller.
            let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            *v = (*v + sigma * z).clamp(0.0, 1.0);
        }
    }

    /// Separable Gaussian blur, mirrored borders.
    pub fn blur(&mut self, sigma: f32) {
        let radius = (3.0 * sigma).ceil().max(1.0) as i64;
        let kernel: Vec<f32> = (-radius..=radius)
            .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
        let n = self.size;
        for horizontal in [true, false] {
            let src = self.image.clone();
            for y in 0..n {
                for x in 0..n {
                    let mut acc = [0f32; 3];
                    for (k, w) in kernel.iter().enumerate() {
                        let o = k as i64 - radius;
                        let (sx, sy) = if horizontal {
                            (reflect(x as i64 + o, n), y)
                        } else {
                            (x, reflect(y as i64 + o, n))
                        };
                        for (ch, a) in acc.iter_mut().enumerate() {
                            *a += w * src[(sy * n + sx) * 3 + ch];
                        }
                    }
                    self.image[(y * n + x) * 3..(y * n + x) * 3 + 3].copy_from_slice(&acc);
                }
            }
        }
    }

    /// HED colour-deconvolution jitter: per stain, optical density c → c·α + β.
    pub fn hed_jitter(&mut self, alpha: [f32; 3], beta: [f32; 3]) {
        self.map_pixels(|rgb| {
            let hed = stain::to_hed(rgb);
            stain::from_hed([0, 1, 2].map(|i| hed[i] * alpha[i] + beta[i]))
        });
    }
}

pub(super) fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    [h, s, max]
}

pub(super) fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [f32; 3] {
    let c = v * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp.rem_euclid(2.0) - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}
