//! ftu-train end to end on synthetic slides: 2 folds, 1 epoch, small size. The manifest the
//! trainer writes loads in ftu-infer as it is and yields a row for every test id, in order; its
//! full-resolution validation Dice is what `ftu-infer score` gives its out-of-fold masks; and a
//! run stopped after epoch 1 and resumed gives the same metrics as an unbroken run with the seed.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

use std::path::Path;

use ftu_formats::manifest::Manifest;
use ftu_infer::predict::PredictOptions;
use ftu_tests::{synth_data, Quiet};
use ftu_trainer::config::TrainConfig;
use ftu_trainer::train::{self, Metrics};

fn data(dir: &Path, train: usize, test: usize) -> std::path::PathBuf {
    synth_data(dir, train, test, 192, 11)
}

fn small(data: &Path, out: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        arch: "unet-resnet18".parse().unwrap(),
        decoder_channels: Some(vec![16, 16, 8, 8, 8]),
        size: 64,
        folds: 2,
        epochs,
        batch: 4,
        // Two batches an epoch keep the tests short (the default is at least 8).
        samples_per_epoch: 8,
        overlays: 1,
        ..TrainConfig::default()
    }
}

fn metrics(path: &Path) -> Vec<Metrics> {
    csv::Reader::from_path(path)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn the_trainers_manifest_serves_every_test_id_in_ftu_infer() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 10, 4);
    let run = dir.path().join("run");
    let summary = train::run(&small(&data, &run, 1), false, &mut Quiet).unwrap();
    assert_eq!(summary.folds.len(), 2);
    let manifest_path = summary.manifest.expect("a manifest after all folds");
    for k in 0..2 {
        let fold = run.join(format!("fold{k}"));
        for file in [
            "model.onnx",
            "best.safetensors",
            "last.safetensors",
            "last.optim.safetensors",
            "oof.safetensors",
            "loss.png",
            "dice.png",
        ] {
            assert!(fold.join(file).is_file(), "fold{k}/{file} missing");
        }
        assert_eq!(std::fs::read_dir(fold.join("overlays")).unwrap().count(), 1);
    }
    for file in ["config.toml", "folds.csv", "metrics.csv", "thresholds.json", "oof.csv"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let rows = metrics(&run.join("metrics.csv"));
    assert_eq!(
        rows.iter().map(|m| (m.fold, m.epoch)).collect::<Vec<_>>(),
        vec![(0, 1), (1, 1)]
    );

    // Full-resolution validation equals `ftu-infer score` on the same predictions: RUN/oof.csv
    // holds each slide's mask from its fold's best epoch (its out-of-fold map) at the slide's own
    // size (192² here, trained at 64²); scored against train.csv, each fold's mean is the Dice
    // the fold reported.
    let scores = ftu_infer::score::score_files(&data.join("train.csv"), &run.join("oof.csv"), None).unwrap();
    assert_eq!(scores.images.len(), 10);
    let fold_of: std::collections::HashMap<String, usize> = csv::Reader::from_path(run.join("folds.csv"))
        .unwrap()
        .deserialize::<(String, String, usize)>()
        .map(|r| r.map(|(id, _, fold)| (id, fold)).unwrap())
        .collect();
    for f in &summary.folds {
        let mine: Vec<f64> = scores
            .images
            .iter()
            .filter(|s| fold_of[&s.id] == f.fold)
            .map(|s| s.dice)
            .collect();
        let scored = mine.iter().sum::<f64>() / mine.len() as f64;
        assert!(
            (scored - f.best_dice).abs() < 1e-12,
            "fold {}: ftu-infer score {scored}, the trainer {}",
            f.fold,
            f.best_dice
        );
        let row = rows.iter().find(|m| m.fold == f.fold).unwrap();
        assert_eq!(row.val_dice_full, Some(f.best_dice));
    }

    let manifest = Manifest::load(&manifest_path).unwrap();
    assert_eq!(manifest.groups.len(), 1);
    assert_eq!(manifest.groups[0].models.len(), 2);
    assert_eq!(manifest.groups[0].size, 64);
    let mut engine = ftu_tests::engine(&manifest_path);
    let predicted = ftu_tests::predict(
        &mut engine,
        &PredictOptions::new(&data, dir.path().join("submission.csv")),
    );
    assert_eq!(predicted.report.predicted, 4);
    assert_eq!(predicted.ids, predicted.test_ids);
}

/// `sizes = [64, 96]`: the same folds at each size in RUN/size64 and RUN/size96 (each with its
/// own manifest), and RUN/manifest.toml with one group per size that ftu-infer serves. With a
/// one-threshold grid (0.5), the threshold search's Dice of the blended out-of-fold maps is what
/// `ftu-infer score` gives RUN/oof.csv.
#[test]
fn several_sizes_train_into_one_manifest_with_a_group_per_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 10, 3);
    let run = dir.path().join("run");
    let mut cfg = small(&data, &run, 1);
    cfg.sizes = vec![64, 96];
    cfg.ensemble.size_weights = vec![1.0, 3.0];
    cfg.ensemble.threshold_from = 0.5;
    cfg.ensemble.threshold_to = 0.5;
    let summary = train::run(&cfg, false, &mut Quiet).unwrap();
    assert_eq!(
        summary.folds.iter().map(|f| (f.size, f.fold)).collect::<Vec<_>>(),
        vec![(64, 0), (64, 1), (96, 0), (96, 1)]
    );
    for size in [64, 96] {
        let sub = run.join(format!("size{size}"));
        assert_eq!(
            std::fs::read(sub.join("folds.csv")).unwrap(),
            std::fs::read(run.join("folds.csv")).unwrap(),
            "size {size}: the same folds"
        );
        let own = Manifest::load(&sub.join("manifest.toml")).unwrap();
        assert_eq!(own.groups.len(), 1);
        assert_eq!(own.groups[0].size, size);
    }
    let manifest_path = summary.manifest.expect("a joint manifest");
    let manifest = Manifest::load(&manifest_path).unwrap();
    let groups: Vec<(usize, f32, usize)> = manifest
        .groups
        .iter()
        .map(|g| (g.size, g.weight, g.models.len()))
        .collect();
    assert_eq!(groups, vec![(64, 1.0, 2), (96, 3.0, 2)]);
    assert!(manifest.groups[1].models[0].path.ends_with("size96/fold0/model.onnx"));

    let th = summary.thresholds.unwrap();
    let scores = ftu_infer::score::score_files(&data.join("train.csv"), &run.join("oof.csv"), None).unwrap();
    assert_eq!(scores.images.len(), 10);
    assert!(
        (scores.mean() - th.default.dice).abs() < 1e-12,
        "ftu-infer score {}, the search {}",
        scores.mean(),
        th.default.dice
    );

    let mut engine = ftu_tests::engine(&manifest_path);
    let predicted = ftu_tests::predict(
        &mut engine,
        &PredictOptions::new(&data, dir.path().join("submission.csv")),
    );
    assert_eq!(predicted.report.predicted, 3);
    assert_eq!(predicted.ids, predicted.test_ids);
}

/// The per-organ options reach the training loop: with every organ's loss factor 0 the training
/// loss is 0 (the segmentation terms are the whole loss here), and sampling weights of 0 for every
/// organ are refused by name.
#[test]
fn per_organ_loss_factors_and_sampling_weights_reach_the_training_loop() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 6, 0);
    let mut cfg = small(&data, &dir.path().join("zero"), 1);
    cfg.fold = Some(0);
    let organs = ["kidney", "prostate", "largeintestine", "spleen", "lung"];
    cfg.loss.per_organ = organs.iter().map(|o| (o.to_string(), 0.0)).collect();
    train::run(&cfg, false, &mut Quiet).unwrap();
    let rows = metrics(&dir.path().join("zero").join("metrics.csv"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].train_loss, 0.0);
    assert!(rows[0].val_loss > 0.0, "validation is not weighted");

    let mut cfg = small(&data, &dir.path().join("none"), 1);
    cfg.fold = Some(0);
    cfg.sampling.organ_weights = organs.iter().map(|o| (o.to_string(), 0.0)).collect();
    let err = train::run(&cfg, false, &mut Quiet)
        .err()
        .expect("nothing to draw")
        .to_string();
    assert!(err.contains("sampling.organ_weights"), "{err}");
}

#[test]
fn stopping_after_epoch_1_and_resuming_matches_an_unbroken_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 8, 0);
    let unbroken = dir.path().join("unbroken");
    let mut cfg = small(&data, &unbroken, 2);
    cfg.fold = Some(0);
    cfg.optim.ema = 0.5;
    train::run(&cfg, false, &mut Quiet).unwrap();

    let broken = dir.path().join("broken");
    let mut first = TrainConfig {
        out: broken.clone(),
        ..cfg.clone()
    };
    first.epochs = 1;
    train::run(&first, false, &mut Quiet).unwrap();
    // The run is "killed" after epoch 1; it resumes with the full options. Its config.toml says
    // 1 epoch, as if edited, so write the full config first (resume refuses a different one).
    let second = TrainConfig {
        out: broken.clone(),
        ..cfg.clone()
    };
    std::fs::write(broken.join("config.toml"), second.to_toml()).unwrap();
    train::run(&second, true, &mut Quiet).unwrap();

    let (a, b) = (
        metrics(&unbroken.join("metrics.csv")),
        metrics(&broken.join("metrics.csv")),
    );
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.fold, x.epoch), (y.fold, y.epoch));
        assert_eq!(x.lr, y.lr);
        assert_eq!(x.train_loss, y.train_loss, "epoch {}: train loss", x.epoch);
        assert_eq!(x.val_loss, y.val_loss, "epoch {}: val loss", x.epoch);
        assert_eq!(x.val_dice, y.val_dice, "epoch {}: val Dice", x.epoch);
        assert_eq!(
            x.val_dice_full, y.val_dice_full,
            "epoch {}: full-resolution Dice",
            x.epoch
        );
    }
    // A resume with other options is refused.
    let other = TrainConfig { size: 96, ..second };
    let err = train::run(&other, true, &mut Quiet)
        .err()
        .expect("a resume with other options fails")
        .to_string();
    assert!(err.contains("size: 64 in the run, 96 given"), "{err}");
}

/// `precision = "bf16"` and `"f16"` train (convolutions and matmuls rounded as on tensor cores,
/// f16 with its loss scale, saved in state.json for a resume) to about the f32 run's losses
/// with the same seed, and export float32 models all the same.
#[test]
fn mixed_precision_trains_like_float32_and_exports_float32() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(dir.path(), 6, 0);
    let mut last = Vec::new();
    for precision in ["f32", "bf16", "f16"] {
        let out = dir.path().join(precision);
        let mut cfg = small(&data, &out, 2);
        cfg.fold = Some(0);
        cfg.precision = precision.parse().unwrap();
        train::run(&cfg, false, &mut Quiet).unwrap();
        let rows = metrics(&out.join("metrics.csv"));
        assert_eq!(rows.len(), 2, "{precision}");
        last.push((precision, rows[1].train_loss, rows[1].val_loss));

        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("fold0/state.json")).unwrap()).unwrap();
        let scale = state.get("loss_scale");
        match precision {
            // Two epochs of two batches: four finite steps at 65536, none skipped.
            "f16" => assert_eq!(
                scale,
                Some(&serde_json::json!({"scale": 65536.0, "good_steps": 4, "skipped": 0})),
                "{state}"
            ),
            _ => assert_eq!(scale, None, "{precision}: {state}"),
        }
        let model = ftu_onnx::read(&out.join("fold0/model.onnx")).unwrap();
        let graph = model.graph.unwrap();
        let float = ftu_onnx::proto::tensor_proto::DataType::Float as i32;
        let int64 = ftu_onnx::proto::tensor_proto::DataType::Int64 as i32;
        assert!(
            graph
                .initializer
                .iter()
                .all(|t| t.data_type == Some(float) || t.data_type == Some(int64)),
            "{precision}: the export is not float32"
        );
    }
    println!("epoch 2 train and validation loss: {last:?}");
    let (_, train32, val32) = last[0];
    for &(precision, train, val) in &last[1..] {
        assert!(
            ((train - train32) / train32).abs() < 0.05 && ((val - val32) / val32).abs() < 0.05,
            "{precision}: losses {train:.4}, {val:.4} against f32's {train32:.4}, {val32:.4}"
        );
        assert_ne!(
            (train, val),
            (train32, val32),
            "{precision}: the same losses as f32 to the bit"
        );
    }
}
