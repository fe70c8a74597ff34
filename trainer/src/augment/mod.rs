//! Training augmentations on a square RGB image (f32, 0–1, HWC) and its mask. Every geometric
//! transform moves the mask with the image exactly: both are sampled through the same inverse
//! map, the image bilinearly and the mask at the nearest pixel. Colour transforms leave the mask.

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

    /// Applies `f(x, y) -> (src_x, src_y)` (integer pixel permutation) to image and mask.
    fn permute(&mut self, f: impl Fn(usize, usize) -> (usize, usize)) {
        let n = self.size;
        let mut image = vec![0f32; self.image.len()];
        let mut mask = vec![0u8; self.mask.len()];
        for y in 0..n {
            for x in 0..n {
                let (sx, sy) = f(x, y);
                let (d, s) = (y * n + x, sy * n + sx);
                image[d * 3..d * 3 + 3].copy_from_slice(&self.image[s * 3..s * 3 + 3]);
                mask[d] = self.mask[s];
            }
        }
        self.image = image;
        self.mask = mask;
    }

    pub fn hflip(&mut self) {
        let n = self.size;
        self.permute(|x, y| (n - 1 - x, y));
    }

    pub fn vflip(&mut self) {
        let n = self.size;
        self.permute(|x, y| (x, n - 1 - y));
    }

    /// `k` quarter turns counter-clockwise (as NumPy's rot90).
    pub fn rot90(&mut self, k: usize) {
        let n = self.size;
        match k % 4 {
            0 => {}
            1 => self.permute(|x, y| (n - 1 - y, x)),
            2 => self.permute(|x, y| (n - 1 - x, n - 1 - y)),
            _ => self.permute(|x, y| (y, n - 1 - x)),
        }
    }

    /// Scale (> 1 zooms in), rotation (degrees, counter-clockwise) and shift (fraction of the
    /// side) about the centre; the outside is mirrored in (reflect-101) so no blank corners.
    pub fn affine(&mut self, scale: f64, degrees: f64, shift_x: f64, shift_y: f64) {
        let n = self.size;
        let c = (n as f64 - 1.0) / 2.0;
        let (sin, cos) = degrees.to_radians().sin_cos();
        let (tx, ty) = (shift_x * n as f64, shift_y * n as f64);
        let mut image = vec![0f32; self.image.len()];
        let mut mask = vec![0u8; self.mask.len()];
        for y in 0..n {
            for x in 0..n {
                // Inverse map: output → source.
                let (dx, dy) = (x as f64 - c - tx, y as f64 - c - ty);
                let sx = (cos * dx - sin * dy) / scale + c;
                let sy = (sin * dx + cos * dy) / scale + c;
                let d = y * n + x;
                let (mx, my) = (reflect(sx.round() as i64, n), reflect(sy.round() as i64, n));
                mask[d] = self.mask[my * n + mx];
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let (xa, xb, ya, yb) = (reflect(x0, n), reflect(x0 + 1, n), reflect(y0, n), reflect(y0 + 1, n));
                for ch in 0..3 {
                    let p = |xx: usize, yy: usize| self.image[(yy * n + xx) * 3 + ch];
                    let top = p(xa, ya) * (1.0 - fx) + p(xb, ya) * fx;
                    let bottom = p(xa, yb) * (1.0 - fx) + p(xb, yb) * fx;
                    image[d * 3 + ch] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        self.image = image;
        self.mask = mask;
    }

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

/// Mirror an index into 0..n without repeating the edge (OpenCV's BORDER_REFLECT_101).
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
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

fn hsv_to_rgb([h, s, v]: [f32; 3]) -> [f32; 3] {
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

/// Colour deconvolution (Ruifrok & Johnston's H&E-DAB matrix) and Macenko normalisation.
pub mod stain {
    /// Rows: haematoxylin, eosin, DAB optical-density directions (as scikit-image's rgb_from_hed).
    const RGB_FROM_HED: [[f32; 3]; 3] = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]];

    fn normalise(v: [f32; 3]) -> [f32; 3] {
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        v.map(|x| x / n)
    }

    fn inverse(m: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        let c = |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
        [
            [c(1, 1, 2, 2) / det, -c(0, 1, 2, 2) / det, c(0, 1, 1, 2) / det],
            [-c(1, 0, 2, 2) / det, c(0, 0, 2, 2) / det, -c(0, 0, 1, 2) / det],
            [c(1, 0, 2, 1) / det, -c(0, 0, 2, 1) / det, c(0, 0, 1, 1) / det],
        ]
    }

    fn stains() -> [[f32; 3]; 3] {
        RGB_FROM_HED.map(normalise)
    }

    /// Optical density of 0–1 RGB (I₀ = 1).
    pub fn od(rgb: [f32; 3]) -> [f32; 3] {
        rgb.map(|v| -(v.max(1.0 / 255.0)).ln())
    }

    pub fn from_od(od: [f32; 3]) -> [f32; 3] {
        od.map(|v| (-v).exp().clamp(0.0, 1.0))
    }

    pub fn to_hed(rgb: [f32; 3]) -> [f32; 3] {
        let od = od(rgb);
        let inv = inverse(stains());
        // od = hed · stains  ⇒  hed = od · stains⁻¹
        [0, 1, 2].map(|j| (0..3).map(|i| od[i] * inv[i][j]).sum())
    }

    pub fn from_hed(hed: [f32; 3]) -> [f32; 3] {
        let s = stains();
        from_od([0, 1, 2].map(|j| (0..3).map(|i| hed[i] * s[i][j]).sum()))
    }

    /// A slide's two stain vectors (OD space, unit length; haematoxylin first) and its 99th
    /// percentile concentrations, estimated as Macenko et al. (2009).
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct StainBasis {
        pub stains: [[f32; 3]; 2],
        pub max_conc: [f32; 2],
    }

    /// Optical densities above `beta` in every channel are tissue; brighter is background.
    const BETA: f32 = 0.15;
    const ALPHA_PERCENTILE: f32 = 1.0;

    fn percentile(values: &mut [f32], p: f32) -> f32 {
        values.sort_by(|a, b| a.total_cmp(b));
        let i = ((p / 100.0) * (values.len() - 1) as f32).round() as usize;
        values[i]
    }

    /// Eigenvectors of a symmetric 3×3 matrix by Jacobi rotations, by decreasing eigenvalue.
    fn eigenvectors(mut a: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
        let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        for _ in 0..50 {
            let (mut p, mut q, mut max) = (0, 1, 0.0);
            for i in 0..3 {
                for j in i + 1..3 {
                    if a[i][j].abs() > max {
                        (p, q, max) = (i, j, a[i][j].abs());
                    }
                }
            }
            if max < 1e-12 {
                break;
            }
            let theta = 0.5 * (2.0 * a[p][q]).atan2(a[q][q] - a[p][p]);
            let (s, c) = theta.sin_cos();
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
        let mut order = [0, 1, 2];
        order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
        order.map(|k| [v[0][k], v[1][k], v[2][k]])
    }

    impl StainBasis {
        /// `None` when the image has too little tissue to estimate stains.
        pub fn fit(rgb: &[f32]) -> Option<StainBasis> {
            let tissue: Vec<[f32; 3]> = rgb
                .chunks_exact(3)
                .map(|p| od([p[0], p[1], p[2]]))
                .filter(|o| o.iter().all(|&v| v > BETA))
                .collect();
            if tissue.len() < 16 {
                return None;
            }
            let n = tissue.len() as f64;
            let mean = [0, 1, 2].map(|i| tissue.iter().map(|o| o[i] as f64).sum::<f64>() / n);
            let mut cov = [[0f64; 3]; 3];
            for o in &tissue {
                for i in 0..3 {
                    for j in 0..3 {
                        cov[i][j] += (o[i] as f64 - mean[i]) * (o[j] as f64 - mean[j]) / n;
                    }
                }
            }
            let e = eigenvectors(cov);
            let (e1, e2) = (e[0].map(|x| x as f32), e[1].map(|x| x as f32));
            let dot = |a: [f32; 3], b: [f32; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
            let mut angles: Vec<f32> = tissue.iter().map(|&o| dot(o, e2).atan2(dot(o, e1))).collect();
            let lo = percentile(&mut angles, ALPHA_PERCENTILE);
            let hi = percentile(&mut angles, 100.0 - ALPHA_PERCENTILE);
            let dir = |phi: f32| {
                let v = [0, 1, 2].map(|i| e1[i] * phi.cos() + e2[i] * phi.sin());
                // Optical densities are positive: point the vector into the positive octant.
                let v = if v.iter().sum::<f32>() < 0.0 { v.map(|x| -x) } else { v };
                normalise(v)
            };
            let (a, b) = (dir(lo), dir(hi));
            // Haematoxylin is the bluer stain: larger red-channel optical density.
            let stains = if a[0] > b[0] { [a, b] } else { [b, a] };
            let conc: Vec<[f32; 2]> = tissue.iter().map(|&o| concentrations(o, stains)).collect();
            let mut c0: Vec<f32> = conc.iter().map(|c| c[0]).collect();
            let mut c1: Vec<f32> = conc.iter().map(|c| c[1]).collect();
            let max_conc = [percentile(&mut c0, 99.0), percentile(&mut c1, 99.0)];
            (max_conc[0] > 0.0 && max_conc[1] > 0.0).then_some(StainBasis { stains, max_conc })
        }

        /// Re-renders `rgb` (from a slide with basis `self`) in the stains of `target`.
        pub fn normalise_to(&self, rgb: &mut [f32], target: &StainBasis) {
            for p in rgb.chunks_exact_mut(3) {
                let c = concentrations(od([p[0], p[1], p[2]]), self.stains);
                let c = [0, 1].map(|k| c[k] * target.max_conc[k] / self.max_conc[k]);
                let out = from_od([0, 1, 2].map(|i| c[0] * target.stains[0][i] + c[1] * target.stains[1][i]));
                p.copy_from_slice(&out);
            }
        }
    }

    /// Least-squares concentrations of two stains for one optical density.
    fn concentrations(od: [f32; 3], s: [[f32; 3]; 2]) -> [f32; 2] {
        let dot = |a: [f32; 3], b: [f32; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
        let (a11, a12, a22) = (dot(s[0], s[0]), dot(s[0], s[1]), dot(s[1], s[1]));
        let (b1, b2) = (dot(s[0], od), dot(s[1], od));
        let det = a11 * a22 - a12 * a12;
        if det.abs() < 1e-9 {
            return [0.0, 0.0];
        }
        [(a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det]
    }
}

/// Per-slide facts the pixel-size augmentation needs.
#[derive(Debug, Clone, Copy)]
pub struct SlideInfo {
    /// 0.4 / hubmap_pixel_size[organ] for HPA slides (how much smaller the same tissue looks in
    /// HuBMAP's scans); `None` for HuBMAP slides, and for every slide when crops are read at a
    /// target pixel size.
    pub hpa_to_hubmap: Option<f64>,
}

/// The configured random pipeline, drawing from `rng` in a fixed order (so a seed repeats):
/// pixel-size rescale, flips, rot90, scale-rotate-shift, HSV, brightness/contrast, gamma, HED
/// stain, blur, noise. Macenko normalisation happens when the slide is cached, not here.
pub fn augment(sample: &mut Sample, info: SlideInfo, cfg: &AugmentConfig, rng: &mut ChaCha8Rng) {
    let chance = |p: f64, rng: &mut ChaCha8Rng| p > 0.0 && rng.random::<f64>() < p;
    let sym = |r: f64, rng: &mut ChaCha8Rng| (rng.random::<f64>() * 2.0 - 1.0) * r;
    if let Some(factor) = info.hpa_to_hubmap {
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
        let info = |f| SlideInfo { hpa_to_hubmap: Some(f) };
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
            run(SlideInfo { hpa_to_hubmap: None }, &wide),
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
        let info = SlideInfo {
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
