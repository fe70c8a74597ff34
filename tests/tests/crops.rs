//! ftu-train in crops mode end to end on synthetic slides: windows cut at half scale, each
//! validation slide tiled as ftu-infer tiles it. The manifest serves the folds as a tiled group;
//! a fold's full-resolution validation Dice is what ftu-infer gives with that fold's model on the
//! same slides (training-time and serving-time predictions agree); RUN/oof.csv scores as the
//! threshold search says. Needs libonnxruntime (scripts/test.sh installs it).

use std::collections::HashMap;
use std::path::Path;

use ftu_formats::kaggle::Split;
use ftu_formats::manifest::file::{GroupFile, ModelFile, TtaFile};
use ftu_formats::manifest::{GroupMode, Manifest, ManifestFile, OutputRef};
use ftu_formats::schema::{self, TestRow};
use ftu_infer::predict::PredictOptions;
use ftu_tests::{synth_data, Quiet};
use ftu_trainer::config::{SamplingMode, TrainConfig};
use ftu_trainer::train;

fn crops_config(data: &Path, out: &Path) -> TrainConfig {
    let mut cfg = TrainConfig {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        arch: "unet-resnet18".parse().unwrap(),
        decoder_channels: Some(vec![16, 16, 8, 8, 8]),
        size: 64,
        folds: 2,
        epochs: 2,
        batch: 4,
        samples_per_epoch: 12,
        overlays: 1,
        ..TrainConfig::default()
    };
    cfg.sampling.mode = SamplingMode::Crops;
    cfg.sampling.scale = 0.5;
    cfg.ensemble.threshold_from = 0.5;
    cfg.ensemble.threshold_to = 0.5;
    cfg
}

#[test]
fn crops_mode_validates_as_ftu_infer_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 10, 2, 192, 5);
    let run = dir.path().join("run");
    let summary = train::run(&crops_config(&data, &run), false, &mut Quiet).unwrap();
    assert_eq!(summary.folds.len(), 2);

    // One tiled group at the crop scale, the folds in it.
    let manifest_path = summary.manifest.expect("a manifest after both folds");
    let manifest = Manifest::load(&manifest_path).unwrap();
    assert_eq!(manifest.groups.len(), 1);
    let GroupMode::Tiles(spec) = manifest.groups[0].mode else {
        panic!("crops mode exports a tiled group, got {:?}", manifest.groups[0].mode);
    };
    assert_eq!((spec.scale, spec.overlap, manifest.groups[0].size), (0.5, 0.25, 64));
    assert!(run.join("fold0/overlays").read_dir().unwrap().count() == 1);

    // RUN/oof.csv (the out-of-fold maps, kept at the crop scale, resized back) is what the
    // threshold search scored.
    let th = summary.thresholds.unwrap();
    let scores = ftu_infer::score::score_files(&data.join("train.csv"), &run.join("oof.csv"), None).unwrap();
    assert_eq!(scores.images.len(), 10);
    assert!(
        (scores.mean() - th.default.dice).abs() < 1e-12,
        "{} vs {}",
        scores.mean(),
        th.default.dice
    );

    // Fold 0's model alone, served by ftu-infer over fold 0's validation slides, at threshold
    // 0.5 and without TTA: the Dice it scores is the fold's full-resolution validation Dice (equal
    // here; the bound leaves room for ONNX Runtime's and Candle's arithmetic to flip a pixel).
    let rows = schema::read_train(&data.join("train.csv")).unwrap();
    let fold_of: HashMap<String, usize> = csv::Reader::from_path(run.join("folds.csv"))
        .unwrap()
        .deserialize::<(String, String, usize)>()
        .map(|r| r.map(|(id, _, fold)| (id, fold)).unwrap())
        .collect();
    let val: Vec<_> = rows.iter().filter(|r| fold_of[&r.id] == 0).collect();
    let serve = dir.path().join("serve");
    std::fs::create_dir_all(Split::Test.images(&serve)).unwrap();
    for r in &val {
        let src = Split::Train.find_image(&data, &r.id).unwrap();
        std::fs::copy(&src, Split::Test.images(&serve).join(src.file_name().unwrap())).unwrap();
    }
    let test_rows: Vec<TestRow> = val
        .iter()
        .map(|r| TestRow {
            id: r.id.clone(),
            organ: r.organ,
            data_source: r.data_source,
            img_height: r.img_height,
            img_width: r.img_width,
            pixel_size: r.pixel_size,
            tissue_thickness: r.tissue_thickness,
        })
        .collect();
    schema::write_rows(&Split::Test.csv(&serve), &test_rows).unwrap();
    let mut thresholds = toml::Table::new();
    thresholds.insert("default".into(), toml::Value::Float(0.5));
    let single = ManifestFile {
        tta: Some(TtaFile {
            mode: Some("none".into()),
            scales: None,
        }),
        thresholds: Some(thresholds),
        group: vec![GroupFile {
            size: 64,
            mode: Some("tiles".into()),
            overlap: Some(0.25),
            scale: Some(0.5),
            batch: Some(4),
            model: vec![ModelFile {
                path: run.join("fold0/model.onnx"),
                norm: Some("imagenet".into()),
                output: Some(OutputRef::Name("logits".into())),
                activation: Some("sigmoid".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let single_path = dir.path().join("fold0.toml");
    single.write(&single_path, "fold 0 alone").unwrap();
    let mut engine = ftu_tests::engine(&single_path);
    let submission = dir.path().join("fold0.csv");
    let predicted = ftu_tests::predict(&mut engine, &PredictOptions::new(&serve, &submission));
    assert_eq!(predicted.report.predicted, val.len());
    let truth: Vec<schema::SubmissionRow> = val
        .iter()
        .map(|r| schema::SubmissionRow {
            id: r.id.clone(),
            rle: r.rle.clone(),
        })
        .collect();
    let truth_path = serve.join("truth.csv");
    schema::write_rows(&truth_path, &truth).unwrap();
    let served = ftu_infer::score::score_files(&truth_path, &submission, Some(&Split::Test.csv(&serve))).unwrap();
    assert_eq!(served.images.len(), val.len());
    let fold0 = summary.folds.iter().find(|f| f.fold == 0).unwrap();
    assert!(
        (served.mean() - fold0.best_dice).abs() < 1e-3,
        "ftu-infer {} against the trainer's validation {}",
        served.mean(),
        fold0.best_dice
    );
}

/// Pixel-size augmentation rescales HPA slides to HuBMAP's scale, except where crops are read at
/// a target µm per pixel (already one physical scale for every slide).
#[test]
fn pixel_size_augmentation_is_off_only_for_crops_at_a_target_pixel_size() {
    use ftu_formats::organ::DataSource;
    use ftu_trainer::config::SamplingConfig;
    use ftu_trainer::data::crops::CropSpec;
    use ftu_trainer::data::SlideCache;

    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 3, 0, 128, 9);
    let rows = schema::read_train(&data.join("train.csv")).unwrap();
    assert!(rows.iter().all(|r| r.data_source == DataSource::Hpa));
    let expected: Vec<Option<f64>> = rows.iter().map(|r| Some(0.4 / r.organ.hubmap_pixel_size())).collect();
    let factors = |cache: &SlideCache| {
        (0..rows.len())
            .map(|i| cache.scale(i).hpa_to_hubmap)
            .collect::<Vec<_>>()
    };

    let resized = SlideCache::build(&data, rows.clone(), vec![], 64, usize::MAX, None, || {}).unwrap();
    assert_eq!(factors(&resized), expected, "resize mode");
    let crops = |sampling: SamplingConfig| {
        SlideCache::build_crops(
            &data,
            rows.clone(),
            vec![],
            CropSpec::new(64, &sampling),
            usize::MAX,
            None,
            || {},
        )
        .unwrap()
    };
    let by_scale = crops(SamplingConfig {
        scale: 0.5,
        ..SamplingConfig::default()
    });
    assert_eq!(
        factors(&by_scale),
        expected,
        "crops at a scale keep each slide's own scale"
    );
    let by_pixel_size = crops(SamplingConfig {
        pixel_size: Some(0.8),
        ..SamplingConfig::default()
    });
    assert_eq!(
        factors(&by_pixel_size),
        vec![None; rows.len()],
        "crops at 0.8 µm per pixel"
    );
}
