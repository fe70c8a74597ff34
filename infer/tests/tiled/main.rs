//! Tiled whole-slide prediction through the real ONNX Runtime: agreement with resize mode on a
//! one-window slide, seams against a one-window run, a tiled BigTIFF end to end (tissue
//! detection, postprocessing, GeoJSON round trip, mask TIFF), and shards merged.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

#[path = "../common/mod.rs"]
mod common;
mod runs;
mod wsi;

use std::path::{Path, PathBuf};

use ftu_formats::manifest::Manifest;
use ftu_formats::mask::runs::RunMask;
use ftu_formats::mask::{image as mask_image, rle};
use ftu_formats::organ::{DataSource, Organ};
use ftu_formats::schema::{self, SubmissionRow, TestRow};
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::write::{write_tiff_pages, Chunking, Compression, Samples, TiffSpec};
use ftu_formats::slide::{RgbImage, SlideLimits};
use ftu_infer::engine::{Engine, SlideContext, Timings};
use ftu_infer::predict::{self, OnError, PredictOptions};
use ftu_infer::session::{Runtime, RuntimeOptions};
use ftu_infer::tiled;
use ftu_onnx::samples::{self, InputShape};
use rand::{Rng, SeedableRng};

use common::ftu_infer_command;

fn runtime() -> Runtime {
    Runtime::load(RuntimeOptions {
        threads: Some(1),
        ..RuntimeOptions::default()
    })
    .expect("ONNX Runtime must be installed for these tests (see scripts/test.sh)")
}

fn engine(dir: &Path, text: &str) -> Engine {
    let path = dir.join("ensemble.toml");
    std::fs::write(&path, text).unwrap();
    Engine::load(Manifest::load(&path).unwrap(), &runtime()).unwrap()
}

const KIDNEY: SlideContext = SlideContext {
    organ: Organ::Kidney,
    source: DataSource::Hpa,
    pixel_size: 0.4,
};

/// Smooth random colour fields (a conv net's output on white noise is noise too).
fn smooth_slide(width: usize, height: usize, seed: u64) -> RgbImage {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let waves: Vec<[f32; 4]> = (0..9)
        .map(|_| {
            [
                rng.random_range(0.01..0.2),
                rng.random_range(0.01..0.2),
                rng.random_range(0.0..6.3),
                rng.random_range(20.0..60.0),
            ]
        })
        .collect();
    let mut img = RgbImage::new(width, height);
    for (i, p) in img.data.chunks_exact_mut(3).enumerate() {
        let (y, x) = ((i / width) as f32, (i % width) as f32);
        for (c, v) in p.iter_mut().enumerate() {
            let s: f32 = waves[c * 3..c * 3 + 3]
                .iter()
                .map(|w| w[3] * (w[0] * x + w[1] * y + w[2]).sin())
                .sum();
            *v = (128.0 + s).clamp(0.0, 255.0) as u8;
        }
    }
    img
}

fn tiled_map(engine: &mut Engine, slide: &RgbImage) -> Vec<f32> {
    let mut source = SlideSource::Memory(slide.clone());
    let pred = tiled::predict_slide(
        engine,
        &mut source,
        &KIDNEY,
        0.5,
        true,
        SlideLimits::default(),
        &mut Timings::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let mut dense = vec![0f32; slide.width * slide.height];
    pred.map.expect("kept").add_into(&mut dense);
    dense
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tiled_and_resize_modes_agree_when_the_slide_is_one_window() {
    let dir = tempfile::tempdir().unwrap();
    ftu_onnx::write(&samples::conv_net(8, 2, 3).unwrap(), &dir.path().join("net.onnx")).unwrap();
    let model = "[[group.model]]\npath = \"net.onnx\"\nnorm = \"imagenet\"\n";
    let tta = "[tta]\nmode = \"flips\"\n[tissue]\ndetect = false\n";
    let slide = smooth_slide(96, 96, 1);
    let mut resize = engine(dir.path(), &format!("{tta}[[group]]\nsize = 96\n{model}"));
    let want = resize.predict(&slide, &KIDNEY, &mut Timings::default()).unwrap().data;
    let mut tiles = engine(
        dir.path(),
        &format!("{tta}[[group]]\nsize = 96\nmode = \"tiles\"\n{model}"),
    );
    let got = tiled_map(&mut tiles, &slide);
    assert!(max_diff(&got, &want) <= 1e-6, "max diff {}", max_diff(&got, &want));
    // The in-memory engine runs a tiled group the same way.
    let dense = tiles.predict(&slide, &KIDNEY, &mut Timings::default()).unwrap().data;
    assert!(max_diff(&dense, &want) <= 1e-6);
    assert!(want.iter().any(|&p| (p - want[0]).abs() > 0.05), "the map is not flat");
}

/// The windows of a 64² model over a 256² slide against the model run once on all of it. The
/// net (two stride-2 convs, bilinear upsampling) is translation-equivariant for shifts of 4 px,
/// and the windows start every 32 px, so only the windows' own borders (zero padding, edge
/// clamping of the upsampler) can differ: Gaussian blending must hide them.
#[test]
fn seams_between_windows_stay_below_the_bound() {
    const BOUND: f32 = 2e-3;
    let dir = tempfile::tempdir().unwrap();
    ftu_onnx::write(&samples::conv_net(8, 2, 5).unwrap(), &dir.path().join("net.onnx")).unwrap();
    let model = "[[group.model]]\npath = \"net.onnx\"\nnorm = \"imagenet\"\n[tissue]\ndetect = false\n";
    let slide = smooth_slide(256, 256, 2);
    let mut whole = engine(dir.path(), &format!("[[group]]\nsize = 256\n{model}"));
    let one_window = whole.predict(&slide, &KIDNEY, &mut Timings::default()).unwrap().data;
    let seam_error = |overlap: f64| {
        let mut e = engine(
            dir.path(),
            &format!("[[group]]\nsize = 64\nmode = \"tiles\"\noverlap = {overlap}\nbatch = 3\n{model}"),
        );
        let tiled = tiled_map(&mut e, &slide);
        // Pixels within 2 px of an inner window border (windows start every 32 px at 0.5
        // overlap, every 64 px at 0).
        let mut worst = 0f32;
        for y in 0..256 {
            for x in 0..256 {
                let near = |v: usize| (1..8).any(|k| (v as i64 - 32 * k).abs() <= 2);
                if near(x) || near(y) {
                    worst = worst.max((tiled[y * 256 + x] - one_window[y * 256 + x]).abs());
                }
            }
        }
        (worst, max_diff(&tiled, &one_window))
    };
    let (border, all) = seam_error(0.5);
    assert!(
        border < BOUND && all < BOUND,
        "overlap 0.5: borders {border}, everywhere {all}"
    );
    // Without overlap each border pixel comes from one window's padded edge: the seams show.
    let (border0, _) = seam_error(0.0);
    assert!(border0 > 10.0 * BOUND, "overlap 0: borders {border0}");
    println!("seam error: overlap 0.5 {border:.2e} (all pixels {all:.2e}); overlap 0 {border0:.2e}");
}

/// A slide `width × height` of glass with round tissue islands holding darker FTU discs; the
/// truth is the discs. Written tile by tile as a (Big)TIFF.
struct WsiFixture {
    islands: Vec<(f64, f64, f64)>,
    ftus: Vec<(f64, f64, f64)>,
}

impl WsiFixture {
    fn new() -> WsiFixture {
        WsiFixture {
            islands: vec![(300.0, 260.0, 180.0), (900.0, 700.0, 150.0)],
            ftus: vec![
                (260.0, 220.0, 40.0),
                (360.0, 320.0, 25.0),
                (900.0, 700.0, 50.0),
                (850.0, 620.0, 3.0), // speckle: removed by min_area
            ],
        }
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        let inside = |&(cx, cy, r): &(f64, f64, f64)| (px - cx).powi(2) + (py - cy).powi(2) <= r * r;
        if self.ftus.iter().any(inside) {
            [110, 40, 140]
        } else if self.islands.iter().any(inside) {
            [225, 130, 175]
        } else {
            [242, 240, 243]
        }
    }

    fn truth(&self, width: usize, height: usize, min_r: f64) -> RunMask {
        let mut m = ftu_formats::mask::Mask::zeros(height, width);
        for y in 0..height {
            for x in 0..width {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let hit = self
                    .ftus
                    .iter()
                    .any(|&(cx, cy, r)| r > min_r && (px - cx).powi(2) + (py - cy).powi(2) <= r * r);
                m.set(y, x, hit);
            }
        }
        RunMask::from_mask(&m)
    }

    fn write(&self, path: &Path, width: usize, height: usize) {
        self.write_pyramid(path, width, height, &[]);
    }

    /// The slide, then a reduced page per downsample in `levels` (each level pixel is the
    /// slide's pixel at its centre).
    fn write_pyramid(&self, path: &Path, width: usize, height: usize, levels: &[usize]) {
        let downsamples: Vec<usize> = std::iter::once(1).chain(levels.iter().copied()).collect();
        let pages: Vec<TiffSpec> = downsamples
            .iter()
            .map(|&d| TiffSpec {
                width: (width / d) as u32,
                height: (height / d) as u32,
                samples: Samples::Rgb8,
                chunking: Chunking::Tiles { size: 128 },
                compression: Compression::Deflate,
                bigtiff: true,
            })
            .collect();
        write_tiff_pages(path, &pages, |page, rect, buf| {
            let d = downsamples[page];
            for y in rect.y..rect.y + rect.height {
                for x in rect.x..rect.x + rect.width {
                    buf.extend_from_slice(&self.pixel(x as usize * d + d / 2, y as usize * d + d / 2));
                }
            }
            Ok(())
        })
        .unwrap();
    }
}

/// Foreground where green is low: logit = 8 − 20·g/255 (FTU green 40 → 0.99, tissue 130 → 0.03).
fn green_model(dir: &Path) {
    let m = samples::pixel_linear([0.0, -20.0, 0.0], 8.0, InputShape::default(), "o").unwrap();
    ftu_onnx::write(&m, &dir.join("green.onnx")).unwrap();
}

fn kaggle_folder(dir: &Path, slides: &[(&str, usize, usize)], fixture: &WsiFixture) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("test_images")).unwrap();
    let mut rows = Vec::new();
    let mut truth = Vec::new();
    for &(id, w, h) in slides {
        fixture.write(&data.join("test_images").join(format!("{id}.tiff")), w, h);
        rows.push(TestRow {
            id: id.into(),
            organ: Organ::Kidney,
            data_source: DataSource::Hpa,
            img_height: h as u32,
            img_width: w as u32,
            pixel_size: 0.5,
            tissue_thickness: 4.0,
        });
        truth.push(SubmissionRow {
            id: id.into(),
            rle: fixture.truth(w, h, 5.0).rle(),
        });
    }
    schema::write_rows(&data.join("test.csv"), &rows).unwrap();
    schema::write_rows(&data.join("truth.csv"), &truth).unwrap();
    data
}

fn options(data: &Path, out: &Path) -> PredictOptions {
    PredictOptions {
        overlay_size: 256,
        ..PredictOptions::new(data, out.join("submission.csv"))
    }
}
