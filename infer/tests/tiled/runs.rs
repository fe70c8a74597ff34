//! Runs over tiled manifests: shards merged, resize mode's outputs, scaled windows, rows freed
//! as the windows pass them, and a bad slide's row.

use super::*;

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
