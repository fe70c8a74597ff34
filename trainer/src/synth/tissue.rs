//! What a synthetic slide looks like: organ-shaped FTU outlines placed on textured, stained
//! tissue, rendered from hashes of (seed, x, y) so slides render in parallel and still repeat.

use ftu_formats::mask::Mask;
use ftu_formats::slide::RgbImage;
use ftu_formats::{DataSource, Organ};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::f32::consts::TAU;

use super::SlidePlan;

/// An FTU outline: a star-shaped curve r(θ) = R·(1 + Σ aₖ cos(kθ + φₖ)), stretched and rotated.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub(super) cx: f32,
    pub(super) cy: f32,
    pub(super) radius: f32,
    pub(super) aspect: f32,
    pub(super) angle: f32,
    pub(super) harmonics: Vec<(f32, f32)>,
}

impl Shape {
    /// Radius that bounds the whole outline, for placement and bounding boxes.
    fn reach(&self) -> f32 {
        self.radius * (1.0 + self.harmonics.iter().map(|h| h.0.abs()).sum::<f32>()) * self.aspect.max(1.0)
    }

    /// Normalised distance from the centre: < 1 inside, 0 at the centre.
    fn depth(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (s, c) = self.angle.sin_cos();
        let u = (dx * c + dy * s) / self.aspect;
        let v = -dx * s + dy * c;
        let theta = v.atan2(u);
        let r = self.radius
            * (1.0
                + self
                    .harmonics
                    .iter()
                    .enumerate()
                    .map(|(k, &(a, phi))| a * ((k + 2) as f32 * theta + phi).cos())
                    .sum::<f32>());
        (u * u + v * v).sqrt() / r
    }
}

/// Per-organ geometry, in units of the slide's shorter side.
struct OrganStyle {
    count: (usize, usize),
    radius: f32,
    aspect: (f32, f32),
    wobble: f32,
}

fn style(organ: Organ) -> OrganStyle {
    match organ {
        // Round glomeruli.
        Organ::Kidney => OrganStyle {
            count: (3, 6),
            radius: 0.05,
            aspect: (1.0, 1.15),
            wobble: 0.04,
        },
        // Glands: large, lobulated.
        Organ::Prostate => OrganStyle {
            count: (2, 4),
            radius: 0.08,
            aspect: (1.0, 1.5),
            wobble: 0.16,
        },
        // Crypts: elongated.
        Organ::LargeIntestine => OrganStyle {
            count: (5, 10),
            radius: 0.022,
            aspect: (2.5, 4.0),
            wobble: 0.05,
        },
        // White pulp: large and round.
        Organ::Spleen => OrganStyle {
            count: (1, 3),
            radius: 0.1,
            aspect: (1.0, 1.3),
            wobble: 0.08,
        },
        // Alveoli: many, irregular.
        Organ::Lung => OrganStyle {
            count: (5, 10),
            radius: 0.04,
            aspect: (1.0, 1.6),
            wobble: 0.2,
        },
    }
}

pub(super) fn place_shapes(plan: &SlidePlan, rng: &mut ChaCha8Rng) -> Vec<Shape> {
    let st = style(plan.organ);
    let side = plan.width.min(plan.height) as f32;
    let (w, h) = (plan.width as f32, plan.height as f32);
    let want = rng.random_range(st.count.0..=st.count.1);
    let mut shapes: Vec<Shape> = Vec::new();
    for _ in 0..want * 30 {
        if shapes.len() == want {
            break;
        }
        // At least a few pixels, so that no slide, however small, ends up without an FTU.
        let radius = (st.radius * side * plan.scale() * rng.random_range(0.75..1.25)).max(4.0);
        let harmonics = (0..3)
            .map(|_| (rng.random_range(-st.wobble..=st.wobble), rng.random_range(0.0..TAU)))
            .collect();
        let mut s = Shape {
            cx: 0.0,
            cy: 0.0,
            radius,
            aspect: rng.random_range(st.aspect.0..=st.aspect.1),
            angle: rng.random_range(0.0..TAU),
            harmonics,
        };
        let margin = s.reach() + 2.0;
        if 2.0 * margin >= w.min(h) {
            s.radius *= 0.5 * w.min(h) / margin * 0.8;
        }
        let margin = s.reach() + 2.0;
        s.cx = rng.random_range(margin..w - margin);
        s.cy = rng.random_range(margin..h - margin);
        // Bowman's-space rings and rims sit just outside the outline: keep neighbours clear of them.
        if shapes
            .iter()
            .all(|o| ((o.cx - s.cx).powi(2) + (o.cy - s.cy).powi(2)).sqrt() > (o.reach() + s.reach()) * 1.1 + 4.0)
        {
            shapes.push(s);
        }
    }
    shapes
}

/// Stain colours of one slide: eosin (pink) and hematoxylin (purple), plus brightness.
struct Stain {
    eosin: [f32; 3],
    hema: [f32; 3],
    brightness: f32,
}

fn stain(plan: &SlidePlan, rng: &mut ChaCha8Rng) -> Stain {
    let mut j = |v: f32, d: f32| v + rng.random_range(-d..=d);
    // Hubmap slides are stained and scanned elsewhere: darker, more purple (the domain shift).
    let (eosin, hema) = match plan.data_source {
        DataSource::Hpa => ([232.0, 150.0, 190.0], [85.0, 55.0, 140.0]),
        DataSource::Hubmap => ([205.0, 120.0, 175.0], [70.0, 40.0, 125.0]),
    };
    Stain {
        eosin: [j(eosin[0], 14.0), j(eosin[1], 18.0), j(eosin[2], 14.0)],
        hema: [j(hema[0], 18.0), j(hema[1], 14.0), j(hema[2], 18.0)],
        brightness: j(1.0, 0.07),
    }
}

fn hash(seed: u64, x: u64, y: u64) -> u64 {
    let mut z = seed ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ y.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(seed: u64, x: u64, y: u64) -> f32 {
    (hash(seed, x, y) >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise in [0, 1] with features about `cell` pixels across.
fn value_noise(seed: u64, x: f32, y: f32, cell: f32) -> f32 {
    let (fx, fy) = (x / cell, y / cell);
    let (ix, iy) = (fx.floor(), fy.floor());
    let (tx, ty) = (fx - ix, fy - iy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let at = |dx: u64, dy: u64| unit(seed, ix as i64 as u64 + dx, iy as i64 as u64 + dy);
    let top = at(0, 0) + (at(1, 0) - at(0, 0)) * sx;
    let bottom = at(0, 1) + (at(1, 1) - at(0, 1)) * sx;
    top + (bottom - top) * sy
}

/// Renders a slide and its ground-truth mask.
pub fn render(plan: &SlidePlan) -> (RgbImage, Mask) {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let stain = stain(plan, &mut rng);
    let shapes = place_shapes(plan, &mut rng);
    let (w, h) = (plan.width as usize, plan.height as usize);
    let side = w.min(h) as f32;
    let seed = plan.seed;
    // Nuclei are a few pixels across whatever the slide size, as at 0.4 µm.
    let nucleus = (side / 700.0).clamp(0.8, 4.0) * plan.scale();
    let organ = plan.organ;

    let mut data = vec![0u8; w * h * 3];
    let mut mask = vec![0u8; w * h];
    data.par_chunks_mut(w * 3)
        .zip(mask.par_chunks_mut(w))
        .enumerate()
        .for_each(|(y, (row, mrow))| {
            let near: Vec<&Shape> = shapes
                .iter()
                .filter(|s| (s.cy - y as f32).abs() <= s.reach() * 1.2 + 2.0)
                .collect();
            for x in 0..w {
                let (fx, fy) = (x as f32, y as f32);
                // Tissue density: coarse blobs with white gaps, fine fibrous texture on top.
                let coarse = value_noise(seed, fx, fy, side / 5.0);
                let fine = value_noise(seed ^ 1, fx, fy, 6.0 * nucleus);
                let density = ((coarse - 0.18) * 2.2).clamp(0.0, 1.0) * (0.55 + 0.45 * fine);
                // Nuclei: a jittered grid of dark dots, denser where tissue is dense.
                let cell = 7.0 * nucleus;
                let (gx, gy) = ((fx / cell).floor(), (fy / cell).floor());
                let mut hema = 0.0f32;
                let mut inside = 0.0f32; // depth inside an FTU (1 = centre), negative just outside
                let mut ring = 0.0f32;
                for s in &near {
                    let d = s.depth(fx, fy);
                    if d < 1.0 {
                        inside = 1.0 - d;
                    } else if d < 1.12 {
                        ring = 1.0;
                    }
                }
                let nuclei_p = match (organ, inside > 0.0) {
                    (Organ::Kidney | Organ::Spleen, true) => 0.95,
                    (_, true) => 0.25,
                    _ => 0.55 * density,
                };
                for (ox, oy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 0.0), (0.0, -1.0)] {
                    let (cx, cy) = (gx + ox, gy + oy);
                    let key = (cx as i64 as u64, cy as i64 as u64);
                    if unit(seed ^ 2, key.0, key.1) > nuclei_p {
                        continue;
                    }
                    let px = (cx + unit(seed ^ 3, key.0, key.1)) * cell;
                    let py = (cy + unit(seed ^ 4, key.0, key.1)) * cell;
                    let r = nucleus * (1.0 + unit(seed ^ 5, key.0, key.1));
                    let dd = ((fx - px).powi(2) + (fy - py).powi(2)).sqrt();
                    hema = hema.max((1.2 - dd / r).clamp(0.0, 1.0));
                }
                let mut eosin = density;
                if inside > 0.0 {
                    mrow[x] = 1;
                    match organ {
                        Organ::Kidney => eosin = 0.85,
                        Organ::Spleen => {
                            eosin = 0.6;
                            hema = hema.max(0.35);
                        }
                        // Gland and crypt lumens are pale, lined by a purple epithelial rim.
                        Organ::Prostate | Organ::LargeIntestine => {
                            if inside < 0.2 {
                                hema = hema.max(0.7);
                                eosin = 0.8;
                            } else {
                                eosin = 0.12;
                                hema *= 0.2;
                            }
                        }
                        // Alveoli are air: near white.
                        Organ::Lung => {
                            eosin = 0.05;
                            hema = 0.0;
                        }
                    }
                } else if ring > 0.0 {
                    match organ {
                        Organ::Kidney => {
                            eosin = 0.0; // Bowman's space
                            hema = 0.0;
                        }
                        Organ::Lung => {
                            eosin = 0.9; // alveolar wall
                            hema = hema.max(0.3);
                        }
                        _ => {}
                    }
                }
                let grain = (unit(seed ^ 6, x as u64, y as u64) - 0.5) * 10.0;
                for c in 0..3 {
                    let white = 246.0;
                    let base = white + (stain.eosin[c] - white) * eosin;
                    let v = base + (stain.hema[c] - base) * hema * 0.9;
                    row[x * 3 + c] = (v * stain.brightness + grain).round().clamp(0.0, 255.0) as u8;
                }
            }
        });
    let image = RgbImage {
        width: w,
        height: h,
        data,
    };
    let mask = Mask::from_row_major(h, w, mask).expect("mask buffer is h × w");
    (image, mask)
}
