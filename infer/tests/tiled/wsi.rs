//! A tiled BigTIFF end to end (tissue detection, postprocessing, GeoJSON round trip, mask TIFF),
//! and pyramidal slides whose windows are planned on, or read from, a reduced page.

use super::*;

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
