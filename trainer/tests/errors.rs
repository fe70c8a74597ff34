//! How ftu-train fails, read by a person: `error: …` and `caused by: …` lines, exit status 1, no
//! stack backtrace even with RUST_BACKTRACE=1 in the environment, one with FTU_BACKTRACE=1.

use std::path::Path;
use std::process::Output;

mod common;

fn ftu_train(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::command(args)
        .env_remove("FTU_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Exit status 1, a line `error: …` followed only by `caused by: …` lines, and no
/// backtrace's header or numbered frames.
fn reads_as_sentences(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    // What the command said before failing (notes, progress) may come first; the report is the
    // rest: one `error: …` line, then only causes.
    let Some(start) = err.find("error: ").filter(|&i| i == 0 || err[..i].ends_with('\n')) else {
        panic!("no line starts with `error: `:\n{err}");
    };
    for line in err[start..].lines().skip(1) {
        assert!(
            line.starts_with("caused by: "),
            "a line that is no cause: {line:?} in\n{err}"
        );
    }
    assert!(
        !err.to_lowercase().contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );
    err
}

fn export_with_bad_weights(dir: &Path, env: &[(&str, &str)]) -> Output {
    let weights = dir.join("model.safetensors");
    std::fs::write(&weights, b"not a safetensors file").unwrap();
    let out = dir.join("m.onnx");
    ftu_train(
        &[
            "export",
            "--arch",
            "unet-resnet18",
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        env,
    )
}

#[test]
fn a_failing_command_prints_its_error_and_causes_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let err = reads_as_sentences(&export_with_bad_weights(dir.path(), &[]));
    assert!(err.contains("model.safetensors"), "the file is not named: {err}");

    let missing = dir.path().join("no-such-folder");
    let run = dir.path().join("run");
    let err = reads_as_sentences(&ftu_train(
        &[
            "train",
            "--data",
            missing.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(err.contains("no-such-folder"), "the folder is not named: {err}");

    // A Hub name that is not in the local cache: the command that downloads it, before any
    // data is read.
    let cache = dir.path().join("hf");
    let err = reads_as_sentences(&ftu_train(
        &[
            "train",
            "--data",
            missing.to_str().unwrap(),
            "--pretrained",
            "timm/resnet34.a1_in1k",
            "--out",
            run.to_str().unwrap(),
        ],
        &[("HF_HUB_CACHE", cache.to_str().unwrap())],
    ));
    assert!(
        err.contains("pretrained") && err.contains("huggingface-cli download timm/resnet34.a1_in1k model.safetensors"),
        "{err}"
    );
    assert!(!run.exists(), "nothing is written for a run that cannot start");
}

#[test]
fn ftu_backtrace_asks_for_the_backtrace_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = export_with_bad_weights(dir.path(), &[("FTU_BACKTRACE", "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("\nbacktrace:\n") && err.contains(" 0: "),
        "{err}"
    );

    let out = ftu_train(&["export", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
