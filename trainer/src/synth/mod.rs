//! Synthetic Kaggle-layout data: TIFF slides that look like stained tissue (textured pink/purple
//! background, nuclei speckle, stain and brightness varying between slides) with FTU-like shapes
//! whose geometry depends on the organ, plus train.csv, test.csv, truth.csv and
//! sample_submission.csv. Deterministic for a seed: every random draw comes from a seeded
//! generator or from a hash of (seed, x, y), so slides render in parallel and still repeat.

mod tissue;
pub mod wsi;

pub use tissue::render;

use ftu_formats::atomic::WriteError;
use ftu_formats::kaggle::Split;
use ftu_formats::mask::rle;
use ftu_formats::schema::{self, CsvError, SubmissionRow, TestRow, TrainRow};
use ftu_formats::slide::write::{self as tiff_write, Chunking, Compression, Samples, TiffSpec};
use ftu_formats::slide::RgbImage;
use ftu_formats::{DataSource, Organ};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::HashSet;
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

#[cfg(test)]
mod tests {
    use super::tissue::place_shapes;
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
