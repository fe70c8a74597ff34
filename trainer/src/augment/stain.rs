//! Colour deconvolution (Ruifrok & Johnston's H&E-DAB matrix) and Macenko normalisation.

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
