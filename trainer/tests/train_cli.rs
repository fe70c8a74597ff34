//! `ftu-train train` from the command line: a TOML config with flags on top (flags win), the
//! resolved options saved in RUN/config.toml, and config typos refused by name before any work.

mod common;

use common::{fails, ftu_train, ok, strs, synth, tiny, with};
use std::path::Path;
use std::process::Command;

#[test]
fn config_file_and_flags_resolve_into_the_runs_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 6, 2);
    let run = dir.path().join("run");
    let config = dir.path().join("train.toml");
    std::fs::write(
        &config,
        "arch = \"unet-resnet18\"\ndecoder_channels = [16, 16, 8, 8, 8]\nsize = 96\nfolds = 2\nfold = 1\nepochs = 1\nbatch = 2\n[loss]\nlovasz = 0.5\n[augment]\np_stain = 1.0\n",
    )
    .unwrap();
    let o = ftu_train(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--size",
        "64",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("fold 1: best validation Dice"), "{stderr}");
    let resolved: toml::Table = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resolved["size"].as_integer(), Some(64), "the flag wins over the file");
    assert!(
        resolved.get("fold").is_none(),
        "config.toml holds the run's options, not a job's"
    );
    assert_eq!(resolved["loss"]["lovasz"].as_float(), Some(0.5));
    assert_eq!(resolved["augment"]["p_stain"].as_float(), Some(1.0));
    assert_eq!(resolved["optim"]["lr"].as_float(), Some(3e-3), "defaults fill the rest");
    assert!(
        Path::new(resolved["data"].as_str().unwrap()).is_absolute(),
        "paths are stored absolute"
    );
    // Fold 1 alone is half the run: no manifest yet, and it says what is missing.
    assert!(!run.join("manifest.toml").exists());
    assert!(
        stderr.contains("1 of 2 folds finished") && stderr.contains("fold(s) 0"),
        "{stderr}"
    );
    // Fold 0's job joins the run and, finishing it, writes the manifest of both folds.
    let o = Command::new(env!("CARGO_BIN_EXE_ftu-train"))
        .args(["train", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .args(["--size", "64", "--fold", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let manifest = std::fs::read_to_string(run.join("manifest.toml")).unwrap();
    assert!(
        manifest.contains("fold0/model.onnx") && manifest.contains("fold1/model.onnx"),
        "{manifest}"
    );
}

#[test]
fn a_config_typo_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("train.toml");
    std::fs::write(&config, "epochs = 1\n[optim]\nlearning_rate = 0.1\n").unwrap();
    let o = ftu_train(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data",
        "x",
        "--out",
        "y",
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("learning_rate") && stderr.contains("train.toml"),
        "{stderr}"
    );
}

/// A finished run is never trained over by the same command; `--resume` alone continues it with
/// its saved options, from any working directory; options that differ are named with both values;
/// a longer `--epochs` extends it on the learning-rate schedule `optim::learning_rate` states.
#[test]
fn a_rerun_is_refused_and_a_resume_extends_the_run_on_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 6, 2);
    let run = dir.path().join("run");
    let config = dir.path().join("warmup.toml");
    std::fs::write(&config, "[optim]\nwarmup_steps = 0\n").unwrap();
    // Four optimiser steps an epoch: 8 samples in batches of 2.
    let mut args = with(tiny(&data, &run, 1), "--samples-per-epoch", "8");
    args.extend(["--config".to_string(), config.to_str().unwrap().to_string()]);
    ok(&strs(&args));
    let before = std::fs::read(run.join("fold0/model.onnx")).unwrap();
    let e = fails(&strs(&args));
    assert!(
        e.contains("holds this run already") && e.contains("--resume") && e.contains("--overwrite"),
        "{e}"
    );
    assert!(!e.contains("epoch 1"), "nothing trained: {e}");
    assert_eq!(
        std::fs::read(run.join("fold0/model.onnx")).unwrap(),
        before,
        "the run is untouched"
    );
    // Into the data folder: refused, nothing written there.
    let mut into_data = tiny(&data, &data, 1);
    into_data.push("--overwrite".into());
    let e = fails(&strs(&into_data));
    assert!(e.contains("no ftu run") && !data.join("config.toml").exists(), "{e}");
    // A resume with one option changed names it.
    let e = fails(&["train", "--out", run.to_str().unwrap(), "--resume", "--lr", "0.01"]);
    assert!(e.contains("optim.lr: 0.003 in the run, 0.01 given"), "{e}");
    // `--resume` alone, from another directory, two epochs longer.
    let o = Command::new(env!("CARGO_BIN_EXE_ftu-train"))
        .current_dir(dir.path().join("data"))
        .args(["train", "--out"])
        .arg(&run)
        .args(["--resume", "--epochs", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("resuming after epoch 1"), "{stderr}");
    let cfg = ftu_trainer::config::TrainConfig::from_toml_file(&run.join("config.toml")).unwrap();
    assert_eq!(cfg.epochs, 3);
    // Each epoch's learning rate (its last step's) follows the stated schedule: epoch 1 on the
    // 1-epoch run's curve, epochs 2 and 3 on the 3-epoch run's, from the step the run stopped at.
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(metrics.as_bytes());
    let rows: Vec<ftu_trainer::train::Metrics> = reader.deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 6, "{metrics}");
    let steps = 4;
    for r in &rows {
        let total = if r.epoch == 1 { steps } else { 3 * steps };
        let want = ftu_trainer::optim::learning_rate(&cfg.optim, r.epoch * steps - 1, total);
        assert!(
            (r.lr - want).abs() < 1e-12,
            "fold {} epoch {}: lr {} against {want}",
            r.fold,
            r.epoch,
            r.lr
        );
    }
    let lr = |epoch| rows.iter().find(|r| r.fold == 0 && r.epoch == epoch).unwrap().lr;
    assert!(
        lr(2) > lr(1) && lr(3) < lr(2),
        "a warm restart that decays again: {metrics}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("fold0/state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 3, "{state}");
    // --overwrite starts again.
    args.push("--overwrite".into());
    ok(&strs(&args));
    let cfg = ftu_trainer::config::TrainConfig::from_toml_file(&run.join("config.toml")).unwrap();
    assert_eq!(cfg.epochs, 1);
}

/// The folds of a run as jobs started at once into one folder (an array job on a shared
/// filesystem) give the models, metrics and out-of-fold masks of one process with the same seed.
#[test]
fn fold_jobs_started_at_once_equal_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 6, 3);
    let single = dir.path().join("single");
    let mut args = tiny(&data, &single, 2);
    args.extend(["--workers".into(), "1".into()]);
    ok(&strs(&args));
    let jobs = dir.path().join("jobs");
    let mut job_args = tiny(&data, &jobs, 2);
    job_args.extend(["--workers".into(), "1".into()]);
    let children: Vec<_> = (0..2)
        .map(|k| {
            Command::new(env!("CARGO_BIN_EXE_ftu-train"))
                .args(&job_args)
                .args(["--fold", &k.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let without_seconds = |p: &Path| -> String {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(rest, _)| rest).to_string() + "\n")
            .collect()
    };
    for f in [
        "fold0/model.onnx",
        "fold1/model.onnx",
        "oof.csv",
        "thresholds.json",
        "folds.csv",
        "config.toml",
    ] {
        let (a, b) = (std::fs::read(single.join(f)), std::fs::read(jobs.join(f)));
        let (a, b) = (
            a.unwrap_or_else(|e| panic!("{f}: {e}")),
            b.unwrap_or_else(|e| panic!("{f}: {e}")),
        );
        if f == "config.toml" {
            // The same options but `out`.
            let strip = |t: &[u8]| {
                String::from_utf8_lossy(t)
                    .lines()
                    .filter(|l| !l.starts_with("out ="))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(strip(&a), strip(&b), "{f}");
        } else {
            assert!(a == b, "{f} differs between one process and the fold jobs");
        }
    }
    assert_eq!(
        without_seconds(&single.join("metrics.csv")),
        without_seconds(&jobs.join("metrics.csv"))
    );
    let manifest = std::fs::read_to_string(jobs.join("manifest.toml")).unwrap();
    assert!(
        manifest.contains("fold0/model.onnx") && manifest.contains("fold1/model.onnx"),
        "{manifest}"
    );
}

/// `--folds 1` trains on every labelled slide with no validation, exports the last epoch, and
/// takes its thresholds from a k-fold run (`--thresholds-from`); `ensemble` refuses it (no OOF).
#[test]
fn a_full_data_fit_exports_its_last_epoch_with_a_runs_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 6, 4);
    let cv = dir.path().join("cv");
    ok(&strs(&tiny(&data, &cv, 1)));
    let full = dir.path().join("full");
    let args = with(
        with(tiny(&data, &full, 2), "--folds", "1"),
        "--thresholds-from",
        cv.to_str().unwrap(),
    );
    let stderr = ok(&strs(&args));
    assert!(
        stderr.contains("no validation") && stderr.contains("trained on every labelled slide for 2 epochs"),
        "{stderr}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("fold0/state.json")).unwrap()).unwrap();
    assert_eq!(
        (state["best_epoch"].as_u64(), state["epochs_done"].as_u64()),
        (Some(2), Some(2)),
        "{state}"
    );
    let thresholds = |p: &Path| {
        let m = ftu_formats::manifest::ManifestFile::read(&p.join("manifest.toml")).unwrap();
        (m.thresholds, m.group.iter().map(|g| g.model.len()).sum::<usize>())
    };
    let (cv_th, _) = thresholds(&cv);
    let (full_th, models) = thresholds(&full);
    assert_eq!(full_th, cv_th, "the k-fold run's thresholds");
    assert_eq!(models, 1, "one model, trained on every slide");
    assert!(!full.join("oof.csv").exists() && !full.join("fold0/oof.safetensors").exists());
    let e = fails(&[
        "ensemble",
        "--runs",
        full.to_str().unwrap(),
        "--out",
        dir.path().join("e").to_str().unwrap(),
    ]);
    assert!(e.contains("full-data fit"), "{e}");
}
