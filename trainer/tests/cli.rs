//! The ftu-train binary: synth output is a complete Kaggle-layout folder, repeatable by seed.

use std::path::Path;
use std::process::Command;

fn synth(out: &Path, seed: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_ftu-train"))
        .args([
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--train",
            "6",
            "--test",
            "4",
            "--size",
            "96",
            "--seed",
            seed,
            "--mixed-formats",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["", "train_images", "test_images"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                out.push((
                    format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn synth_writes_the_kaggle_layout_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    synth(&a, "7");
    synth(&b, "7");
    synth(&c, "8");
    let fa = files(&a);
    let names: Vec<&str> = fa.iter().map(|f| f.0.as_str()).collect();
    for n in ["/train.csv", "/test.csv", "/truth.csv", "/sample_submission.csv"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(names.iter().filter(|n| n.starts_with("train_images/")).count(), 6);
    assert_eq!(names.iter().filter(|n| n.starts_with("test_images/")).count(), 4);
    assert_eq!(fa, files(&b), "same seed, same bytes");
    assert_ne!(fa, files(&c), "another seed, other data");
    assert!(!names.iter().any(|n| n.ends_with(".tmp")));
}

#[test]
fn synth_rejects_a_size_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftu-train"))
        .args(["synth", "--out", dir.path().to_str().unwrap(), "--size", "8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 64") && !err.contains("panicked"), "{err}");
}
