//! Kill-anywhere for `ftu-train train`: runs killed (SIGKILL) after seeded random delays spread
//! over a whole run — so kills land mid-epoch, mid-validation and while checkpoints, metrics,
//! exports and the manifest are being written — then `--resume`d (and killed again) until they
//! finish. Every finished run must equal an unbroken one: the same metrics (all but the seconds),
//! thresholds and ONNX exports, byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The tiny run of the CLI tests, 3 epochs, with an EMA of the weights.
fn train(data: &Path, out: &Path, resume: bool) -> Command {
    let mut c = common::command(&common::strs(&common::tiny(data, out, 3)));
    c.args(["--ema", "0.5"]).stdout(Stdio::null()).stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    c
}

/// Runs to completion; the time it took.
fn finish(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    start.elapsed()
}

/// Starts `cmd` and kills it after `delay`; whether it was still running.
fn kill_after(mut cmd: Command, delay: Duration) -> bool {
    let mut child = cmd.stderr(Stdio::null()).spawn().unwrap();
    let end = Instant::now() + delay;
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    running
}

/// What must not differ between runs: metrics without the seconds column, thresholds, exports.
fn outcome(run: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let without_seconds: String = metrics
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(rest, _)| rest).to_string() + "\n")
        .collect();
    let mut out = vec![(PathBuf::from("metrics.csv"), without_seconds.into_bytes())];
    for f in [
        "thresholds.json",
        "oof.csv",
        "fold0/model.onnx",
        "fold1/model.onnx",
        "fold0/last.safetensors",
    ] {
        out.push((
            f.into(),
            std::fs::read(run.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")),
        ));
    }
    out
}

#[test]
fn a_run_killed_anywhere_resumes_to_the_unbroken_result() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::synth(&data, 6, 3);
    let unbroken = dir.path().join("unbroken");
    let full = finish(train(&data, &unbroken, false));
    let want = outcome(&unbroken);

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut kills = 0;
    for trial in 0..6 {
        let run = dir.path().join(format!("run{trial}"));
        let mut resume = false;
        // Up to three kills, each at a random point of what is left, then run to the end. What
        // is left after a kill at d is at least `left - d` (a resumed run redoes the epoch it
        // lost and starts up again), so a delay under 0.9 of that lands in the run but for
        // timing noise.
        let mut left = full;
        for _ in 0..3 {
            let delay = left.mul_f64(rng.random_range(0.05..0.9));
            if !kill_after(train(&data, &run, resume), delay) {
                break;
            }
            kills += 1;
            resume = true;
            left -= delay;
        }
        finish(train(&data, &run, true));
        let got = outcome(&run);
        for ((name, a), (_, b)) in want.iter().zip(&got) {
            assert!(
                a == b,
                "trial {trial}: {} differs from the unbroken run",
                name.display()
            );
        }
        // No checkpoint of an uncommitted epoch is left behind.
        for fold in ["fold0", "fold1"] {
            for e in std::fs::read_dir(run.join(fold)).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with("last.")
                        || name.starts_with("last.safetensors")
                        || name.starts_with("last.optim"),
                    "{fold}/{name}"
                );
            }
        }
    }
    println!("{kills} training processes killed mid-run");
    assert!(kills >= 15, "only {kills} of 18 kills landed");
}
