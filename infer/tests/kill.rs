//! Kill-anywhere: `ftu-infer predict`, `merge` and `bundle` started as processes and sent SIGKILL
//! after seeded random delays spread over a whole run (so some land while the submission, its
//! report, probability PNGs or the bundle are being written). Afterwards every output is either
//! the previous complete one (or absent) or the new complete one — never a torn file — and a
//! rerun finishes. Needs libonnxruntime (scripts/test.sh installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ftu_formats::organ::{DataSource, Organ};
use ftu_formats::schema::{self, TestRow};
use ftu_formats::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
use ftu_onnx::samples::{self, InputShape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{ftu_infer_command, ftu_infer_quiet, predict_args};

const SIDE: usize = 192;

/// The two tests run one after the other: each times its commands, and a run of the other beside
/// them would make those times (and so where the kills land) depend on the scheduler.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A Kaggle folder of `n` random slides and a manifest whose model's output is the red channel.
fn fixture(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("test_images")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut rows = Vec::new();
    for i in 0..n {
        let pixels: Vec<u8> = (0..SIDE * SIDE * 3).map(|_| rng.random()).collect();
        let spec = TiffSpec {
            width: SIDE as u32,
            height: SIDE as u32,
            samples: Samples::Rgb8,
            chunking: Chunking::Strips { rows: 32 },
            compression: Compression::Deflate,
            bigtiff: false,
        };
        write_tiff_image(&data.join(format!("test_images/{i}.tiff")), &spec, &pixels).unwrap();
        rows.push(TestRow {
            id: i.to_string(),
            organ: Organ::ALL[i % 5],
            data_source: DataSource::Hpa,
            img_height: SIDE as u32,
            img_width: SIDE as u32,
            pixel_size: 0.4,
            tissue_thickness: 4.0,
        });
    }
    schema::write_rows(&data.join("test.csv"), &rows).unwrap();
    let model = samples::pixel_linear([1.0, 0.0, 0.0], -0.5, InputShape::default(), "logits").unwrap();
    ftu_onnx::write(&model, &dir.join("red.onnx")).unwrap();
    let manifest = dir.join("m.toml");
    std::fs::write(
        &manifest,
        "[tta]\nmode = \"d4\"\n[[group]]\nsize = 128\n[[group.model]]\npath = \"red.onnx\"\nnorm = \"unit\"\n",
    )
    .unwrap();
    (data, manifest)
}

/// Runs `cmd` to completion and returns how long it took.
fn timed(mut cmd: Command) -> Duration {
    let start = Instant::now();
    assert!(cmd.status().unwrap().success(), "{cmd:?}");
    start.elapsed()
}

/// The shortest of three runs of `make()`, each after `reset()`: the first run also loads ONNX
/// Runtime from a cold disk cache, and a reference that long would draw many delays past the end
/// of a warm run.
fn reference(make: impl Fn() -> Command, reset: impl Fn()) -> Duration {
    (0..3)
        .map(|_| {
            reset();
            timed(make())
        })
        .min()
        .unwrap()
}

/// Starts `cmd`, kills it after `delay` (if it is still running), and says whether it was.
fn kill_after(mut cmd: Command, delay: Duration) -> bool {
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + delay;
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    running
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// 180 runs of `predict` (with --probs, so PNG writes are in the window too), 30 of `merge`
/// and 20 of `bundle` killed at random: each output afterwards is the old one (or absent) or the new one, whole.
#[test]
fn killed_commands_leave_the_old_output_or_the_new_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, manifest) = fixture(d, 12);
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut kills = 0;

    // predict: the reference run, then an "old" submission from another threshold.
    let out = d.join("sub.csv");
    let report = d.join("sub.report.json");
    let probs = d.join("probs");
    let predict = |out: &Path| {
        let mut c = ftu_infer_quiet(&predict_args(&manifest, &data, out));
        c.args(["--threads", "1", "--probs"]).arg(&probs);
        c
    };
    let full = reference(|| predict(&out), || ());
    let new = read(&out).unwrap();
    let new_pngs: Vec<Vec<u8>> = (0..12)
        .map(|i| read(&probs.join(format!("{i}.png"))).unwrap())
        .collect();
    let old = b"id,rle\n0,\n".to_vec();
    for _ in 0..180 {
        std::fs::write(&out, &old).unwrap();
        let _ = std::fs::remove_file(&report);
        let _ = std::fs::remove_dir_all(&probs);
        let delay = full.mul_f64(rng.random_range(0.0..1.1));
        kills += usize::from(kill_after(predict(&out), delay));
        let got = read(&out).unwrap();
        assert!(got == old || got == new, "a torn submission after a kill at {delay:?}");
        if let Some(r) = read(&report) {
            serde_json::from_slice::<serde_json::Value>(&r).expect("a whole report");
            assert_eq!(got, new, "the report is written after the submission");
        }
        for (i, png) in new_pngs.iter().enumerate() {
            if let Some(p) = read(&probs.join(format!("{i}.png"))) {
                assert_eq!(&p, png, "probability map {i} torn");
            }
        }
    }
    println!("predict: {kills} of 180 runs killed mid-run (a whole run takes {full:?})");
    // A rerun after all that finishes with the same submission.
    timed(predict(&out));
    assert_eq!(read(&out).unwrap(), new);

    // merge: shards of the same folder, merged over an old file.
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| {
            let s = d.join(format!("shard{i}.csv"));
            let mut c = predict(&s);
            c.args(["--shard", &format!("{i}/3")]);
            timed(c);
            s
        })
        .collect();
    let merged = d.join("merged.csv");
    let merge = || {
        let mut c = ftu_infer_quiet(&["merge", "--test", data.join("test.csv").to_str().unwrap(), "--out"]);
        c.arg(&merged).args(&shards);
        c
    };
    let full = reference(&merge, || ());
    assert_eq!(read(&merged).unwrap(), new);
    for _ in 0..30 {
        std::fs::write(&merged, &old).unwrap();
        let delay = full.mul_f64(rng.random_range(0.0..1.1));
        kills += usize::from(kill_after(merge(), delay));
        let got = read(&merged).unwrap();
        assert!(got == old || got == new, "a torn merge after a kill at {delay:?}");
    }

    println!("predict and merge: {kills} of 210 runs killed mid-run (a whole merge takes {full:?})");
    // bundle: the folder is absent or complete (built beside and renamed).
    let bundle_out = d.join("bundle");
    let bundle = || {
        let mut c = ftu_infer_quiet(&["bundle", "--manifest", manifest.to_str().unwrap(), "--out"]);
        c.arg(&bundle_out);
        c
    };
    let full = reference(&bundle, || std::fs::remove_dir_all(&bundle_out).unwrap_or(()));
    let files = |root: &Path| -> Vec<(PathBuf, u64)> {
        let mut v: Vec<(PathBuf, u64)> = walk(root)
            .into_iter()
            .map(|p| (p.strip_prefix(root).unwrap().to_path_buf(), p.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    };
    let complete = files(&bundle_out);
    for _ in 0..20 {
        std::fs::remove_dir_all(&bundle_out).unwrap_or(());
        let delay = full.mul_f64(rng.random_range(0.0..1.1));
        kills += usize::from(kill_after(bundle(), delay));
        if bundle_out.exists() {
            assert_eq!(
                files(&bundle_out),
                complete,
                "a partial bundle after a kill at {delay:?}"
            );
        }
        // A leftover half-built folder beside it does not stop the next bundle.
        std::fs::remove_dir_all(&bundle_out).unwrap_or(());
        timed(bundle());
        assert_eq!(files(&bundle_out), complete);
    }
    println!("{kills} processes killed mid-run");
    assert!(kills >= 150, "only {kills} kills landed while the commands ran");
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Complete lines in the journal of a run writing `out` (its header included), 0 when absent.
fn journal_lines(out: &Path) -> usize {
    let journal = out.with_file_name(format!("{}.journal.csv", out.file_stem().unwrap().to_str().unwrap()));
    read(&journal).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// Starts `cmd` and SIGKILLs it once the journal of `out` holds `slides` finished slides (or
/// after `timeout`); says whether it was still running then.
fn kill_at_slide(mut cmd: Command, out: &Path, slides: usize, timeout: Duration) -> bool {
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + timeout;
    while Instant::now() < end && journal_lines(out) < slides + 1 {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    running
}

/// `predict --continue` killed part-way (once or twice, at a slide count drawn at random, so
/// some kills land while a journal line is being written), then resumed, writes the same
/// submission as an unbroken run, and the resumed runs predict only what was left.
#[test]
fn a_killed_predict_resumed_with_continue_gives_the_unbroken_submission() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 12;
    let (data, manifest) = fixture(d, n);
    let out = d.join("sub.csv");
    let predict = || {
        let mut c = ftu_infer_quiet(&predict_args(&manifest, &data, &out));
        c.args(["--threads", "1", "--continue"]);
        c
    };
    let full = timed(predict());
    let unbroken = read(&out).unwrap();
    assert_eq!(journal_lines(&out), 0, "a finished run removes its journal");
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let mut resumed_mid_run = 0;
    for round in 0..8 {
        std::fs::remove_file(&out).unwrap();
        let mut at = rng.random_range(1..n - 1);
        // Whether the last run was killed (an earlier one's resume may have finished).
        let mut killed = false;
        for _ in 0..=(round % 2) {
            killed = kill_at_slide(predict(), &out, at, full * 4);
            at = rng.random_range(at..n);
        }
        let finished = journal_lines(&out).saturating_sub(1);
        if killed && finished < n {
            assert!(
                !out.exists(),
                "round {round}: a run killed before its last slide wrote a submission"
            );
        }
        let resumed = ftu_infer_command(&predict_args(&manifest, &data, &out))
            .args(["--threads", "1", "--continue"])
            .output()
            .unwrap();
        assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
        assert_eq!(
            read(&out).unwrap(),
            unbroken,
            "round {round}: resumed after {finished} slides"
        );
        assert_eq!(journal_lines(&out), 0);
        if killed && finished > 0 && finished < n {
            resumed_mid_run += 1;
            let said = String::from_utf8_lossy(&resumed.stdout);
            assert!(
                said.contains(&format!("{n} predicted ({finished} reused from the journal)")),
                "round {round}: {said}"
            );
        }
    }
    assert!(
        resumed_mid_run >= 6,
        "only {resumed_mid_run} of 8 rounds were killed part-way"
    );
}
