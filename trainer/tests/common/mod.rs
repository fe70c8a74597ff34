//! What the CLI tests of `ftu-train` share: running the binary, and small synthetic data.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The `ftu-train` binary of this build with `args`, not started.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ftu-train"));
    c.args(args);
    c
}

/// `ftu-train args`, run to its end.
pub fn ftu_train(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

/// `ftu_train` that must succeed; its stderr.
pub fn ok(args: &[&str]) -> String {
    let o = ftu_train(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "ftu-train {}:\n{stderr}", args.join(" "));
    stderr
}

/// `ftu_train` that must fail; its stderr.
pub fn fails(args: &[&str]) -> String {
    let o = ftu_train(args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "ftu-train {} succeeded:\n{stderr}", args.join(" "));
    stderr
}

/// A Kaggle-layout folder of `train` synthetic slides of 96² and no test slides.
pub fn synth(out: &Path, train: usize, seed: u64) {
    ok(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--train",
        &train.to_string(),
        "--test",
        "0",
        "--size",
        "96",
        "--seed",
        &seed.to_string(),
    ]);
}

/// The options of a tiny training run: U-Net with a ResNet-18 encoder and narrow decoder at 64²,
/// 2 folds, `epochs` epochs of two batches of 2.
pub fn tiny(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        "--arch",
        "unet-resnet18",
        "--decoder-channels",
        "16,16,8,8,8",
        "--size",
        "64",
        "--folds",
        "2",
        "--epochs",
        &epochs.to_string(),
        "--batch",
        "2",
        "--samples-per-epoch",
        "4",
        "--seed",
        "4",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// `args` with `flag`'s value replaced by `value` (or both appended).
pub fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}
