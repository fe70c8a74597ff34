//! Tiled whole-slide prediction through the real ONNX Runtime: agreement with resize mode on a
//! one-window slide, seams against a one-window run, a tiled BigTIFF end to end (tissue
//! detection, postprocessing, GeoJSON round trip, mask TIFF), and shards merged.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

mod common;

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

#[test]
fn a_tiled_bigtiff_runs_only_its_tissue_windows_and_outlines_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    let fixture = WsiFixture::new();
    let (w, h) = (1200, 1000);
    let data = kaggle_folder(dir.path(), &[("wsi", w, h)], &fixture);
    let manifest = "[thresholds]\ndefault = 0.5\n\
        [postprocess.kidney]\nmin_area_um2 = 20.0\nmax_hole_px = 50\n\
        [[group]]\nsize = 128\nmode = \"tiles\"\noverlap = 0.5\nbatch = 4\n\
        [[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    let mut e = engine(dir.path(), manifest);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut opts = options(&data, &out);
    opts.geojson = Some(out.join("geojson"));
    opts.masks = Some(out.join("masks"));
    opts.overlays = Some(out.join("overlays"));
    let report = predict::predict_dir(&mut e, &opts, &mut |_| {}).unwrap();
    let stats = &report.tiles[0].stats;
    // 1200×1000 with 128 windows every 64 px: 18 × 15.
    assert_eq!(stats.windows, 18 * 15);
    assert!(
        stats.windows_run > 10 && stats.windows_run < stats.windows / 2,
        "{} of {} windows ran",
        stats.windows_run,
        stats.windows
    );
    let tissue = stats.tissue.as_ref().unwrap();
    assert!(
        tissue.tissue_fraction > 0.05 && tissue.tissue_fraction < 0.2,
        "{tissue:?}"
    );

    // The submission equals the truth: the 3-px speckle (28 px, under 20 µm² / 0.25 = 80 px) is gone.
    let sub = schema::read_submission(&opts.out).unwrap();
    let truth = fixture.truth(w, h, 5.0);
    let got = RunMask::from_mask(&rle::decode(&sub[0].rle, h, w).unwrap());
    let dice = ftu_formats::dice::dice_masks(&got.to_mask(), &truth.to_mask());
    assert!(dice > 0.999, "dice {dice}");

    // The mask TIFF is the submission's mask.
    let mask = mask_image::read_mask(&out.join("masks/wsi.tiff"), SlideLimits::default()).unwrap();
    assert_eq!(RunMask::from_mask(&mask), got);

    // Rasterising the GeoJSON polygons gives the mask back.
    let text = std::fs::read_to_string(out.join("geojson/wsi.geojson")).unwrap();
    let fc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(fc["type"], "FeatureCollection");
    let features = fc["features"].as_array().unwrap();
    assert_eq!(features.len(), 3);
    let polygons: Vec<Vec<Vec<[f64; 2]>>> = features
        .iter()
        .map(|f| {
            assert_eq!(f["geometry"]["type"], "Polygon");
            assert_eq!(f["properties"]["classification"]["name"], "kidney");
            let p = f["properties"]["mean_probability"].as_f64().unwrap();
            assert!(p > 0.9 && p <= 1.0, "{p}");
            serde_json::from_value(f["geometry"]["coordinates"].clone()).unwrap()
        })
        .collect();
    let mut raster = ftu_formats::mask::Mask::zeros(h, w);
    for y in 0..h {
        for x in 0..w {
            let hit = polygons
                .iter()
                .any(|rings| ftu_formats::mask::geojson::inside(rings, x as f64 + 0.5, y as f64 + 0.5));
            raster.set(y, x, hit);
        }
    }
    let round_trip = ftu_formats::dice::dice_masks(&raster, &mask);
    assert!(round_trip >= 0.99, "GeoJSON round trip dice {round_trip}");
    for rings in &polygons {
        assert_eq!(rings[0].first(), rings[0].last(), "closed");
    }
    assert!(out.join("geojson/wsi.png").is_file() && out.join("overlays/wsi.png").is_file());
}

#[test]
fn a_pyramidal_slide_plans_its_windows_on_a_reduced_page_and_predicts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    let fixture = WsiFixture::new();
    // Wider than the 2048-px thumbnail, so the thumbnail shrinks by 3 and the 2× page serves it.
    let (w, h) = (4300, 1000);
    let data = kaggle_folder(dir.path(), &[("flat", w, h), ("pyramid", w, h)], &fixture);
    fixture.write_pyramid(&data.join("test_images/pyramid.tiff"), w, h, &[2, 8]);
    let manifest = "[thresholds]\ndefault = 0.5\n\
        [postprocess.kidney]\nmin_area_um2 = 20.0\n\
        [[group]]\nsize = 128\nmode = \"tiles\"\noverlap = 0.5\nbatch = 4\n\
        [[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    let mut e = engine(dir.path(), manifest);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let opts = options(&data, &out);
    let report = predict::predict_dir(&mut e, &opts, &mut |_| {}).unwrap();
    let (flat, pyramid) = (&report.tiles[0].stats, &report.tiles[1].stats);
    assert_eq!(flat.thumbnail_level, None);
    let level = pyramid.thumbnail_level.expect("the 2× page made the thumbnail");
    assert_eq!((level.page, level.width, level.height), (1, 2150, 500));
    println!(
        "windows run: flat {} of {}, pyramid {}; thumbnail {:.3} s vs {:.3} s",
        flat.windows_run, flat.windows, pyramid.windows_run, flat.thumbnail_seconds, pyramid.thumbnail_seconds
    );
    // The same windows are found to hold tissue, give or take the islands' rims.
    assert!(
        flat.windows_run.abs_diff(pyramid.windows_run) * 20 <= flat.windows_run,
        "{} vs {} windows",
        flat.windows_run,
        pyramid.windows_run
    );
    let ft = (flat.tissue.as_ref().unwrap(), pyramid.tissue.as_ref().unwrap());
    assert!(
        (ft.0.tissue_fraction - ft.1.tissue_fraction).abs() < 0.005,
        "{:?} vs {:?}",
        ft.0,
        ft.1
    );
    // The full-resolution page is what the windows read: the same masks, and the truth's.
    let sub = schema::read_submission(&opts.out).unwrap();
    assert_eq!(sub[0].rle, sub[1].rle);
    let truth = fixture.truth(w, h, 5.0);
    let got = RunMask::from_mask(&rle::decode(&sub[1].rle, h, w).unwrap());
    let dice = ftu_formats::dice::dice_masks(&got.to_mask(), &truth.to_mask());
    assert!(dice > 0.999, "dice {dice}");
}

/// A model working at a quarter of the slide's resolution (scale 0.25) on a slide with 4× and 16×
/// pages: its windows are read from the 4× page, decoding far fewer pixels, and the mask agrees
/// with reading the full-resolution page (Dice ≥ 0.98), and with the truth.
#[test]
fn windows_at_a_coarse_scale_are_read_from_the_pyramid_level_at_that_scale() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    let fixture = WsiFixture::new();
    let (w, h) = (1600, 1200);
    let data = kaggle_folder(dir.path(), &[("pyramid", w, h)], &fixture);
    fixture.write_pyramid(&data.join("test_images/pyramid.tiff"), w, h, &[4, 16]);
    let manifest = "[thresholds]\ndefault = 0.5\n\
        [[group]]\nsize = 64\nmode = \"tiles\"\noverlap = 0.25\nscale = 0.25\nbatch = 4\n\
        [[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    let run = |read_levels: bool| {
        let mut e = engine(dir.path(), manifest);
        e.set_read_levels(read_levels);
        let out = dir.path().join(format!("out-{read_levels}"));
        std::fs::create_dir_all(&out).unwrap();
        let opts = options(&data, &out);
        let report = predict::predict_dir(&mut e, &opts, &mut |_| {}).unwrap();
        let stats = report.tiles[0].stats.clone();
        let sub = schema::read_submission(&opts.out).unwrap();
        (stats, rle::decode(&sub[0].rle, h, w).unwrap())
    };
    let (full, full_mask) = run(false);
    let (level, level_mask) = run(true);
    assert!(full.read_levels.is_empty());
    assert_eq!(level.read_levels.len(), 1);
    assert_eq!((level.read_levels[0].width, level.read_levels[0].height), (400, 300));
    let ratio = full.pixels_decoded as f64 / level.pixels_decoded as f64;
    assert!(
        ratio >= 4.0,
        "{} vs {} pixels",
        full.pixels_decoded,
        level.pixels_decoded
    );
    let agree = ftu_formats::dice::dice_masks(&level_mask, &full_mask);
    println!(
        "pixels decoded: level 0 {}, 4× page {} ({ratio:.1}× fewer); mask Dice against level 0 {agree:.4}",
        full.pixels_decoded, level.pixels_decoded
    );
    assert!(agree >= 0.98, "dice against the level-0 path {agree}");
    let truth = fixture.truth(w, h, 0.0).to_mask();
    assert!(ftu_formats::dice::dice_masks(&level_mask, &truth) >= 0.95);
}

#[test]
fn shards_merged_equal_one_run_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    let fixture = WsiFixture::new();
    let slides = [
        ("a", 1100, 900),
        ("b", 1000, 1000),
        ("c", 1200, 800),
        ("d", 1050, 950),
        ("e", 1100, 1000),
    ];
    let data = kaggle_folder(dir.path(), &slides, &fixture);
    let manifest = dir.path().join("ensemble.toml");
    std::fs::write(
        &manifest,
        "[[group]]\nsize = 256\nmode = \"tiles\"\n[[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = ftu_infer_command(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let out = dir.path();
    let (m, d) = (manifest.to_str().unwrap(), data.to_str().unwrap());
    let single = out.join("single.csv");
    run(&[
        "predict",
        "--manifest",
        m,
        "--data",
        d,
        "--out",
        single.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    let mut shards = Vec::new();
    for i in 0..3 {
        let p = out.join(format!("shard{i}.csv"));
        let shard = format!("{i}/3");
        run(&[
            "predict",
            "--manifest",
            m,
            "--data",
            d,
            "--out",
            p.to_str().unwrap(),
            "--shard",
            &shard,
            "--threads",
            "1",
        ]);
        let rows = schema::read_submission(&p).unwrap();
        assert_eq!(rows.len(), if i < 2 { 2 } else { 1 }, "shard {i}");
        shards.push(p);
    }
    let merged = out.join("merged.csv");
    let test_csv = data.join("test.csv");
    let mut args = vec![
        "merge",
        "--test",
        test_csv.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ];
    // Shards in any order.
    args.extend(shards.iter().rev().map(|p| p.to_str().unwrap()));
    run(&args);
    assert_eq!(std::fs::read(&merged).unwrap(), std::fs::read(&single).unwrap());
    let rows = schema::read_submission(&merged).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "d", "e"]
    );
    assert!(rows.iter().all(|r| !r.rle.is_empty()));
    // A missing shard is an error, not a short submission.
    let o = ftu_infer_command(&[
        "merge",
        "--test",
        data.join("test.csv").to_str().unwrap(),
        "--out",
        out.join("x.csv").to_str().unwrap(),
    ])
    .args(&shards[..2])
    .output()
    .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("in no shard"));
    assert!(!out.join("x.csv").exists());
}

/// Resize mode gets the same postprocessing, GeoJSON and mask TIFF as tiled mode.
#[test]
fn resize_mode_postprocesses_and_outlines_too() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    let fixture = WsiFixture::new();
    let data = kaggle_folder(dir.path(), &[("s", 1024, 1024)], &fixture);
    let manifest = "[postprocess.kidney]\nmin_area_px = 80\n\
        [[group]]\nsize = 1024\n[[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    let mut e = engine(dir.path(), manifest);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut opts = options(&data, &out);
    opts.geojson = Some(out.join("geojson"));
    opts.masks = Some(out.join("masks"));
    let report = predict::predict_dir(&mut e, &opts, &mut |_| {}).unwrap();
    assert!(report.tiles.is_empty(), "no tiled groups");
    let sub = schema::read_submission(&opts.out).unwrap();
    // The speckle (28 px) is gone, so the submission is exactly the truth.
    assert_eq!(sub[0].rle, fixture.truth(1024, 1024, 5.0).rle());
    let mask = mask_image::read_mask(&out.join("masks/s.tiff"), SlideLimits::default()).unwrap();
    assert_eq!(rle::encode(&mask), sub[0].rle);
    let fc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("geojson/s.geojson")).unwrap()).unwrap();
    assert_eq!(fc["features"].as_array().unwrap().len(), 3);
}

/// Windows seen at half resolution (`scale = 0.5`: 256 slide px per 128² window) still find the
/// FTUs; only their edges blur through the two resizes.
#[test]
fn scaled_windows_resize_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    let fixture = WsiFixture::new();
    let (w, h) = (1200, 1000);
    let data = kaggle_folder(dir.path(), &[("wsi", w, h)], &fixture);
    let manifest = "[[group]]\nsize = 128\nmode = \"tiles\"\nscale = 0.5\n\
        [[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    let mut e = engine(dir.path(), manifest);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let opts = options(&data, &out);
    let report = predict::predict_dir(&mut e, &opts, &mut |_| {}).unwrap();
    // 256-px windows every 128 px: 9 × 7.
    assert_eq!(report.tiles[0].stats.windows, 9 * 7);
    let sub = schema::read_submission(&opts.out).unwrap();
    let got = rle::decode(&sub[0].rle, h, w).unwrap();
    let truth = fixture.truth(w, h, 0.0).to_mask();
    let dice = ftu_formats::dice::dice_masks(&got, &truth);
    assert!(dice > 0.95 && dice < 1.0, "dice {dice}");
}

/// Freeing rows as the windows pass them gives the same mask and probability sums as keeping the
/// whole map, in less memory, for one tiled group and for two of different window sizes.
#[test]
fn streamed_rows_equal_the_kept_map() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    // Tissue all the way down a tall slide: kept, the map holds all of it.
    let fixture = WsiFixture {
        islands: (0..5).map(|k| (300.0, 300.0 + 600.0 * k as f64, 260.0)).collect(),
        ftus: (0..5).map(|k| (300.0, 300.0 + 600.0 * k as f64, 60.0)).collect(),
    };
    let path = dir.path().join("s.tiff");
    fixture.write(&path, 600, 3000);
    let one = "[[group]]\nsize = 128\nmode = \"tiles\"\n[[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    // Two tiled groups of other window sizes and weights go down the slide together.
    let two = "[[group]]\nsize = 128\nmode = \"tiles\"\nweight = 2\n[[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n\
        [[group]]\nsize = 96\nmode = \"tiles\"\noverlap = 0.25\nbatch = 3\n[[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    for text in [one, two] {
        let mut e = engine(dir.path(), text);
        let mut run = |keep: bool| {
            let mut source = SlideSource::open(&path, SlideLimits::default()).unwrap();
            tiled::predict_slide(
                &mut e,
                &mut source,
                &KIDNEY,
                0.5,
                keep,
                SlideLimits::default(),
                &mut Timings::default(),
                &mut |_, _| {},
            )
            .unwrap()
        };
        let (kept, streamed) = (run(true), run(false));
        assert!(streamed.stats.streamed && !kept.stats.streamed);
        assert!(streamed.map.is_none());
        assert_eq!(kept.mask.mask, RunMask::threshold(kept.map.as_ref().unwrap(), 0.5));
        assert_eq!(streamed.mask.mask, kept.mask.mask);
        // Sums agree up to the order in which the groups' windows were added.
        for (a, b) in streamed.mask.sums.iter().flatten().zip(kept.mask.sums.iter().flatten()) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert!(
            streamed.stats.map_peak_bytes * 3 <= kept.stats.map_peak_bytes,
            "peak {} streamed vs {} kept",
            streamed.stats.map_peak_bytes,
            kept.stats.map_peak_bytes
        );
        assert_eq!(kept.mask.mask.to_mask(), fixture.truth(600, 3000, 0.0).to_mask());
    }
}

/// In tiled mode too, a slide that cannot be read gets an empty row with --on-error skip, and
/// stops the run (writing nothing) with fail.
#[test]
fn a_bad_slide_in_tiled_mode_keeps_its_row() {
    let dir = tempfile::tempdir().unwrap();
    green_model(dir.path());
    let fixture = WsiFixture::new();
    let data = kaggle_folder(
        dir.path(),
        &[("good", 1100, 900), ("bad", 1100, 900), ("gone", 1100, 900)],
        &fixture,
    );
    // Damage the middle of one slide's tiles and delete another.
    let bad = data.join("test_images/bad.tiff");
    let mut bytes = std::fs::read(&bad).unwrap();
    let n = bytes.len();
    bytes[n / 4..n / 2].fill(0x5A);
    std::fs::write(&bad, bytes).unwrap();
    std::fs::remove_file(data.join("test_images/gone.tiff")).unwrap();
    let manifest = "[[group]]\nsize = 128\nmode = \"tiles\"\n[[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n";
    let mut e = engine(dir.path(), manifest);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut opts = options(&data, &out);
    let err = predict::predict_dir(&mut e, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("slide bad") && err.contains("bad.tiff"), "{err}");
    assert!(!opts.out.exists(), "fail writes nothing");
    opts.on_error = OnError::Skip;
    let report = predict::predict_dir(&mut e, &opts, &mut |_| {}).unwrap();
    let rows = schema::read_submission(&opts.out).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["good", "bad", "gone"]
    );
    assert!(!rows[0].rle.is_empty() && rows[1].rle.is_empty() && rows[2].rle.is_empty());
    let skipped: Vec<_> = report.skipped.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(skipped, ["bad", "gone"]);
    assert_eq!(report.tiles.len(), 1);
}
