//! Synthetic Kaggle-layout data: TIFF slides that look like stained tissue (textured pink/purple
//! background, nuclei speckle, stain and brightness varying between slides) with FTU-like shapes
//! whose geometry depends on the organ, plus train.csv, test.csv, truth.csv and
//! sample_submission.csv. Deterministic for a seed: every random draw comes from a seeded
//! generator or from a hash of (seed, x, y), so slides render in parallel and still repeat.

pub mod wsi;

use ftu_formats::atomic::WriteError;
use ftu_formats::kaggle::Split;
use ftu_formats::mask::rle;
use ftu_formats::mask::Mask;
use ftu_formats::schema::{self, CsvError, SubmissionRow, TestRow, TrainRow};
use ftu_formats::slide::write::{self as tiff_write, Chunking, Compression, Samples, TiffSpec};
use ftu_formats::slide::RgbImage;
use ftu_formats::{DataSource, Organ};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::HashSet;
use std::f32::consts::TAU;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub train: usize,
    pub test: usize,
    /// Side of square slides; non-square ones are `size` wide and 3/4 as tall.
    pub size: u32,
    pub seed: u64,
    /// Cycle slides through LZW, tiled, 16-bit, BigTIFF and JPEG files instead of plain TIFF.
    pub mixed_formats: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("--size must be at least 64 pixels, got {0}")]
    TooSmall(u32),
    #[error("--pyramid: downsample {downsample} must be at least 2 and leave the {width}×{height} slide at least a pixel a side")]
    Pyramid { downsample: u32, width: u32, height: u32 },
    #[error("cannot create {path}: {cause}")]
    CreateDir { path: PathBuf, cause: std::io::Error },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Csv(#[from] CsvError),
}

/// How a slide is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlideFormat {
    Plain,
    Lzw,
    TiledLzw,
    Rgb16Deflate,
    BigTiledDeflate,
    TiledJpeg,
}

impl SlideFormat {
    const MIXED: [SlideFormat; 6] = [
        SlideFormat::Plain,
        SlideFormat::Lzw,
        SlideFormat::TiledLzw,
        SlideFormat::Rgb16Deflate,
        SlideFormat::BigTiledDeflate,
        SlideFormat::TiledJpeg,
    ];

    fn spec(self, width: u32, height: u32) -> TiffSpec {
        let (samples, chunking, compression, bigtiff) = match self {
            SlideFormat::Plain => (Samples::Rgb8, Chunking::Strips { rows: 64 }, Compression::None, false),
            SlideFormat::Lzw => (Samples::Rgb8, Chunking::Strips { rows: 16 }, Compression::Lzw, false),
            SlideFormat::TiledLzw => (Samples::Rgb8, Chunking::Tiles { size: 256 }, Compression::Lzw, false),
            SlideFormat::Rgb16Deflate => (
                Samples::Rgb16,
                Chunking::Strips { rows: 32 },
                Compression::Deflate,
                false,
            ),
            SlideFormat::BigTiledDeflate => (Samples::Rgb8, Chunking::Tiles { size: 128 }, Compression::Deflate, true),
            SlideFormat::TiledJpeg => (
                Samples::Rgb8,
                Chunking::Tiles { size: 256 },
                Compression::Jpeg { quality: 92 },
                false,
            ),
        };
        TiffSpec {
            width,
            height,
            samples,
            chunking,
            compression,
            bigtiff,
        }
    }
}

/// Everything that decides one slide.
#[derive(Debug, Clone)]
pub struct SlidePlan {
    pub id: String,
    pub organ: Organ,
    pub data_source: DataSource,
    pub width: u32,
    pub height: u32,
    pub pixel_size: f64,
    pub format: SlideFormat,
    pub seed: u64,
}

impl SlidePlan {
    pub fn meta(&self) -> TestRow {
        TestRow {
            id: self.id.clone(),
            organ: self.organ,
            data_source: self.data_source,
            img_height: self.height,
            img_width: self.width,
            pixel_size: self.pixel_size,
            tissue_thickness: 4.0,
        }
    }

    /// Drawn size relative to HPA's 0.4 µm pixels, clamped so FTUs stay visible at small sizes.
    fn scale(&self) -> f32 {
        (0.4 / self.pixel_size).clamp(0.6, 1.6) as f32
    }
}

/// Plans the train and test slides: organs balanced, ids unique, a quarter of slides not square,
/// test slides alternating HPA and Hubmap (Hubmap with its organ's pixel size and a shifted stain).
pub fn plan(cfg: &SynthConfig) -> Result<(Vec<SlidePlan>, Vec<SlidePlan>), SynthError> {
    if cfg.size < 64 {
        return Err(SynthError::TooSmall(cfg.size));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut ids = HashSet::new();
    let mut make = |i: usize, test: bool, rng: &mut ChaCha8Rng| {
        let id = loop {
            let id = rng.random_range(1000..100_000u32).to_string();
            if ids.insert(id.clone()) {
                break id;
            }
        };
        let organ = Organ::ALL[(i + test as usize * 2) % 5];
        let data_source = if test && i % 2 == 1 {
            DataSource::Hubmap
        } else {
            DataSource::Hpa
        };
        let pixel_size = match data_source {
            DataSource::Hpa => 0.4,
            DataSource::Hubmap => organ.hubmap_pixel_size(),
        };
        let height = if i % 4 == 3 {
            (cfg.size * 3 / 4).max(64)
        } else {
            cfg.size
        };
        let format = if cfg.mixed_formats {
            SlideFormat::MIXED[i % SlideFormat::MIXED.len()]
        } else {
            SlideFormat::Plain
        };
        SlidePlan {
            id,
            organ,
            data_source,
            width: cfg.size,
            height,
            pixel_size,
            format,
            seed: rng.random(),
        }
    };
    let train = (0..cfg.train).map(|i| make(i, false, &mut rng)).collect();
    let test = (0..cfg.test).map(|i| make(i, true, &mut rng)).collect();
    Ok((train, test))
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub train: Vec<TrainRow>,
    pub test: Vec<TestRow>,
}

/// Writes a Kaggle-layout folder under `out`. `on_slide` is called once per finished slide.
pub fn generate(out: &Path, cfg: &SynthConfig, on_slide: impl Fn() + Sync) -> Result<Summary, SynthError> {
    let (train_plans, test_plans) = plan(cfg)?;
    for dir in [out.to_path_buf(), Split::Train.images(out), Split::Test.images(out)] {
        std::fs::create_dir_all(&dir).map_err(|cause| SynthError::CreateDir {
            path: dir.clone(),
            cause,
        })?;
    }
    let write_all = |plans: &[SlidePlan], split: Split| -> Result<Vec<String>, SynthError> {
        plans
            .par_iter()
            .map(|p| {
                let (image, mask) = render(p);
                let path = split.tiff_path(out, &p.id);
                write_slide(&path, p.format, &image)?;
                on_slide();
                Ok(rle::encode(&mask))
            })
            .collect()
    };
    let train_rles = write_all(&train_plans, Split::Train)?;
    let test_rles = write_all(&test_plans, Split::Test)?;

    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
    let train: Vec<TrainRow> = train_plans
        .iter()
        .zip(train_rles)
        .map(|(p, rle)| {
            let m = p.meta();
            TrainRow {
                id: m.id,
                organ: m.organ,
                data_source: m.data_source,
                img_height: m.img_height,
                img_width: m.img_width,
                pixel_size: m.pixel_size,
                tissue_thickness: m.tissue_thickness,
                rle,
                age: Some(rng.random_range(20..85) as f64),
                sex: Some(if rng.random::<bool>() { "Male" } else { "Female" }.to_string()),
            }
        })
        .collect();
    let test: Vec<TestRow> = test_plans.iter().map(SlidePlan::meta).collect();
    let truth: Vec<SubmissionRow> = test
        .iter()
        .zip(test_rles)
        .map(|(t, rle)| SubmissionRow { id: t.id.clone(), rle })
        .collect();
    let sample: Vec<SubmissionRow> = test
        .iter()
        .map(|t| SubmissionRow {
            id: t.id.clone(),
            rle: String::new(),
        })
        .collect();
    schema::write_rows(&Split::Train.csv(out), &train)?;
    schema::write_rows(&Split::Test.csv(out), &test)?;
    schema::write_rows(&out.join("truth.csv"), &truth)?;
    schema::write_rows(&out.join("sample_submission.csv"), &sample)?;
    Ok(Summary { train, test })
}

fn write_slide(path: &Path, format: SlideFormat, image: &RgbImage) -> Result<(), WriteError> {
    let spec = format.spec(image.width as u32, image.height as u32);
    if spec.samples == Samples::Rgb16 {
        let wide: Vec<u8> = image
            .data
            .iter()
            .flat_map(|&v| (v as u16 * 257).to_ne_bytes())
            .collect();
        tiff_write::write_tiff_image(path, &spec, &wide)
    } else {
        tiff_write::write_tiff_image(path, &spec, &image.data)
    }
}

/// An FTU outline: a star-shaped curve r(θ) = R·(1 + Σ aₖ cos(kθ + φₖ)), stretched and rotated.
#[derive(Debug, Clone)]
struct Shape {
    cx: f32,
    cy: f32,
    radius: f32,
    aspect: f32,
    angle: f32,
    harmonics: Vec<(f32, f32)>,
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

fn place_shapes(plan: &SlidePlan, rng: &mut ChaCha8Rng) -> Vec<Shape> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> SynthConfig {
        SynthConfig {
            train: 10,
            test: 6,
            size: 160,
            seed,
            mixed_formats: true,
        }
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let (a, _) = plan(&cfg(1)).unwrap();
        let (b, _) = plan(&cfg(1)).unwrap();
        let (c, _) = plan(&cfg(2)).unwrap();
        assert_eq!(render(&a[0]), render(&b[0]));
        assert_ne!(render(&a[0]).0, render(&c[0]).0);
        assert_eq!(
            a.iter().map(|p| &p.id).collect::<Vec<_>>(),
            b.iter().map(|p| &p.id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_slide_has_an_ftu_and_tissue_colours() {
        let (train, test) = plan(&cfg(3)).unwrap();
        for p in train.iter().chain(&test) {
            let (img, mask) = render(p);
            let fg = mask.count() as f64 / (img.width * img.height) as f64;
            assert!(fg > 0.003 && fg < 0.6, "{} {}: foreground fraction {fg}", p.organ, p.id);
            // Stained tissue is pink/purple: red and blue above green on average.
            let n = (img.width * img.height) as f64;
            let mean = |c: usize| img.data.iter().skip(c).step_by(3).map(|&v| v as f64).sum::<f64>() / n;
            assert!(
                mean(0) > mean(1) + 10.0 && mean(2) > mean(1) + 10.0,
                "{}: not stain-coloured",
                p.id
            );
        }
    }

    #[test]
    fn smallest_slides_still_have_an_ftu_of_every_organ() {
        let (train, test) = plan(&SynthConfig {
            train: 10,
            test: 10,
            size: 64,
            seed: 6,
            mixed_formats: false,
        })
        .unwrap();
        for p in train.iter().chain(&test) {
            assert!(
                render(p).1.count() > 0,
                "{} {} ({}×{}) has no FTU",
                p.organ,
                p.id,
                p.width,
                p.height
            );
        }
    }

    #[test]
    fn organs_have_their_own_geometry() {
        // Crypts are elongated, glomeruli round: compare the aspect of their shapes' outlines.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let base = plan(&cfg(4)).unwrap().0[0].clone();
        let mut aspect = |organ| {
            let p = SlidePlan { organ, ..base.clone() };
            let shapes = place_shapes(&p, &mut rng);
            assert!(!shapes.is_empty());
            shapes.iter().map(|s| s.aspect).sum::<f32>() / shapes.len() as f32
        };
        assert!(aspect(Organ::LargeIntestine) > 2.0);
        assert!(aspect(Organ::Kidney) < 1.2);
    }

    #[test]
    fn plan_is_balanced_non_square_and_shifted_for_hubmap() {
        let (train, test) = plan(&SynthConfig {
            train: 20,
            test: 8,
            size: 128,
            seed: 5,
            mixed_formats: false,
        })
        .unwrap();
        for organ in Organ::ALL {
            assert_eq!(train.iter().filter(|p| p.organ == organ).count(), 4);
        }
        assert!(train.iter().any(|p| p.width != p.height));
        let ids: HashSet<_> = train.iter().chain(&test).map(|p| &p.id).collect();
        assert_eq!(ids.len(), 28, "ids are unique across train and test");
        let hubmap: Vec<_> = test.iter().filter(|p| p.data_source == DataSource::Hubmap).collect();
        assert!(!hubmap.is_empty() && hubmap.iter().all(|p| p.pixel_size == p.organ.hubmap_pixel_size()));
        assert!(matches!(
            plan(&SynthConfig { size: 10, ..cfg(1) }),
            Err(SynthError::TooSmall(10))
        ));
    }
}
