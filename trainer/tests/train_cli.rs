//! `ftu-train train` from the command line: a TOML config with flags on top (flags win), the
//! resolved options saved in RUN/config.toml, and config typos refused by name before any work.

use std::path::Path;
use std::process::Command;

fn ftu_train(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ftu-train"))
        .args(args)
        .output()
        .unwrap()
}

fn synth(out: &Path) {
    let o = ftu_train(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--train",
        "6",
        "--test",
        "0",
        "--size",
        "96",
        "--seed",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn config_file_and_flags_resolve_into_the_runs_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
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
    assert!(stderr.contains("manifest for ftu-infer"), "{stderr}");
    let resolved: toml::Table = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resolved["size"].as_integer(), Some(64), "the flag wins over the file");
    assert_eq!(resolved["fold"].as_integer(), Some(1));
    assert_eq!(resolved["loss"]["lovasz"].as_float(), Some(0.5));
    assert_eq!(resolved["augment"]["p_stain"].as_float(), Some(1.0));
    assert_eq!(resolved["optim"]["lr"].as_float(), Some(3e-3), "defaults fill the rest");
    // Only fold 1 ran, so the manifest has that fold alone.
    let manifest = std::fs::read_to_string(run.join("manifest.toml")).unwrap();
    assert!(
        manifest.contains("fold1/model.onnx") && !manifest.contains("fold0/"),
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
