//! Pseudo-labels end to end: `ftu-infer pseudo` writes soft labels that the trainer reads back
//! as they were predicted, and a run with them trains on them but never validates on them.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

use std::path::{Path, PathBuf};

use ftu_formats::kaggle::Split;
use ftu_formats::schema::{self, PseudoRow};
use ftu_formats::{read_slide, SlideLimits};
use ftu_infer::predict::PredictOptions;
use ftu_onnx::samples::{self, InputShape};
use ftu_tests::{synth_data, Quiet};
use ftu_trainer::config::TrainConfig;
use ftu_trainer::data::{batch, load_pseudo, normaliser, SlideCache};
use ftu_trainer::train;

const SIDE: u32 = 192;

/// A manifest whose one model's probability is the red channel (red/255, no activation) at the
/// slides' own size, so a square slide's soft label is its red channel, byte for byte.
fn red_manifest(dir: &Path) -> PathBuf {
    let model = samples::pixel_linear([1.0, 0.0, 0.0], 0.0, InputShape::default(), "logits").unwrap();
    ftu_onnx::write(&model, &dir.join("red.onnx")).unwrap();
    let path = dir.join("red.toml");
    std::fs::write(
        &path,
        format!(
            "[[group]]\nsize = {SIDE}\n[[group.model]]\npath = \"red.onnx\"\nnorm = \"unit\"\nactivation = \"none\"\n"
        ),
    )
    .unwrap();
    path
}

fn pseudo_labels(data: &Path, out: &Path, manifest: &Path) -> Vec<PseudoRow> {
    let mut engine = ftu_tests::engine(manifest);
    let opts = PredictOptions::new(data, out.join("unused.csv"));
    let report = ftu_infer::pseudo::pseudo_labels(&mut engine, &opts, out, &mut |_| {}).unwrap();
    assert_eq!(report.csv, out.join("pseudo.csv"));
    schema::read_pseudo(&report.csv).unwrap()
}

#[test]
fn soft_labels_round_trip_from_the_engine_to_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 2, 4, SIDE, 5);
    let out = dir.path().join("pseudo");
    let rows = pseudo_labels(&data, &out, &red_manifest(dir.path()));
    let test = schema::read_test(&Split::Test.csv(&data)).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        test.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        "a row per test slide, in test.csv's order"
    );
    let mut square = 0;
    for (row, meta) in rows.iter().zip(&test) {
        assert_eq!(
            (row.organ, row.img_width, row.img_height),
            (meta.organ, meta.img_width, meta.img_height)
        );
        assert!(row.label.is_file(), "{}", row.label.display());
        let image = read_slide(&row.image, SlideLimits::default()).unwrap();
        let label = read_slide(&row.label, SlideLimits::default()).unwrap();
        assert_eq!((label.width, label.height), (image.width, image.height));
        if image.width != image.height {
            continue;
        }
        // Square: the model sees the slide as it is, so p = red/255 and the label is red.
        square += 1;
        let red: Vec<u8> = image.data.chunks_exact(3).map(|p| p[0]).collect();
        let slide = load_pseudo(row, SIDE as usize, None).unwrap();
        assert!(slide.soft);
        assert_eq!(
            slide.mask, red,
            "slide {}: the trainer reads the label that was predicted",
            row.id
        );
    }
    assert!(square > 0, "synth makes square slides");

    // In a batch beside a labelled slide, a soft label's unsure pixels (0.25 < p < 0.75) are
    // left out of the loss, and nothing else is.
    let train = schema::read_train(&Split::Train.csv(&data)).unwrap();
    let labelled = train.len();
    let cache = SlideCache::build(&data, train, rows.clone(), SIDE as usize, 1 << 30, None, || {}).unwrap();
    let p = (0..rows.len())
        .find(|&i| rows[i].img_width == rows[i].img_height)
        .unwrap();
    let norm = normaliser("unit").unwrap();
    let b = batch(&cache, &[0, labelled + p], &[0, 0], None, &norm, Some([0.25, 0.75])).unwrap();
    let keep = b
        .keep
        .expect("a soft label with a band")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let plane = (SIDE * SIDE) as usize;
    assert!(
        keep[..plane].iter().all(|&k| k == 1.0),
        "a labelled slide keeps every pixel"
    );
    let soft = &cache.get(labelled + p).unwrap().mask;
    for (k, &m) in keep[plane..].iter().zip(soft) {
        let unsure = (m as f64 / 255.0) > 0.25 && (m as f64 / 255.0) < 0.75;
        assert_eq!(*k, if unsure { 0.0 } else { 1.0 });
    }
    assert!(keep[plane..].contains(&0.0) && keep[plane..].contains(&1.0));
    let masks = b.masks.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        (masks[plane..]
            .iter()
            .zip(soft)
            .all(|(t, &m)| (t - m as f32 / 255.0).abs() < 1e-6))
    );
}

#[test]
fn a_run_with_pseudo_labels_trains_on_them_and_never_validates_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 6, 4, SIDE, 6);
    let out = dir.path().join("pseudo");
    let rows = pseudo_labels(&data, &out, &red_manifest(dir.path()));
    assert_eq!(rows.len(), 4);
    let cfg = |run: &str, pseudo: Option<PathBuf>| TrainConfig {
        data: data.clone(),
        out: dir.path().join(run),
        arch: "unet-resnet18".parse().unwrap(),
        decoder_channels: Some(vec![16, 16, 8, 8, 8]),
        size: 64,
        folds: 2,
        epochs: 1,
        batch: 4,
        // Every slide once (labelled and pseudo-labelled), not the default's 8 batches.
        samples_per_epoch: 8,
        overlays: 0,
        pseudo,
        pseudo_weight: 2.0,
        ..TrainConfig::default()
    };
    let with = train::run(&cfg("with", Some(out.join("pseudo.csv"))), false, &mut Quiet).unwrap();
    let without = train::run(&cfg("without", None), false, &mut Quiet).unwrap();
    let pseudo_ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    // Validation: the labelled slides alone, the same with and without pseudo-labels.
    let validated = |run: &str| {
        let mut ids: Vec<String> = (0..2)
            .flat_map(|k| {
                let path = dir.path().join(run).join(format!("fold{k}/oof.safetensors"));
                candle_core::safetensors::load(path, &candle_core::Device::Cpu)
                    .unwrap()
                    .into_keys()
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids
    };
    let train_ids: Vec<String> = {
        let mut ids: Vec<String> = schema::read_train(&Split::Train.csv(&data))
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(validated("with"), train_ids);
    assert_eq!(validated("without"), train_ids);
    let oof = schema::read_submission(&dir.path().join("with").join("oof.csv")).unwrap();
    assert!(oof.iter().all(|r| !pseudo_ids.contains(&r.id.as_str())));
    assert_eq!(oof.len(), 6);
    // Training saw them: each fold's epoch had 3 labelled + 4 pseudo-labelled slides (two
    // batches instead of one), so its loss differs from the run without.
    let loss = |run: &str| -> Vec<f64> {
        csv::Reader::from_path(dir.path().join(run).join("metrics.csv"))
            .unwrap()
            .deserialize::<train::Metrics>()
            .map(|m| m.unwrap().train_loss)
            .collect()
    };
    for (a, b) in loss("with").iter().zip(loss("without")) {
        assert_ne!(*a, b);
    }
    assert_eq!(with.folds.len(), without.folds.len());

    // A pseudo-labelled slide that is also a training slide is refused by name.
    let mut clash = rows.clone();
    clash[0].id = train_ids[0].clone();
    let bad = dir.path().join("clash.csv");
    schema::write_rows(&bad, &clash).unwrap();
    let err = train::run(&cfg("clash", Some(bad)), false, &mut Quiet)
        .err()
        .expect("a clash")
        .to_string();
    assert!(
        err.contains("also a training slide") && err.contains(&train_ids[0]),
        "{err}"
    );
}
