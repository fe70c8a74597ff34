//! The run folder's rules: which `--out` a training job may write into, RUN/config.toml and
//! RUN/folds.csv written once and checked by every later job, and which folds have finished.
//!
//! A run is never silently trained over. A new job takes an empty (or absent) folder; a folder
//! that holds a run is continued with `--resume` (same options; `epochs` may grow), started again
//! with `--overwrite`, or joined by a fold job (`--fold K` with the same options, fold K not
//! started) — so the folds of one run can run as separate jobs, at once, on machines sharing the
//! folder. A folder holding anything else is refused whatever the flags.

use std::path::{Path, PathBuf};

use ftu_formats::atomic::{create_new, is_tmp_name, write_atomic};
use ftu_formats::schema::TrainRow;

use crate::config::{Difference, TrainConfig};
use crate::error::{At, Result, TrainError};

/// What the command line asked of an `--out` that already holds a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunMode {
    /// Continue each fold from its last complete epoch.
    pub resume: bool,
    /// Remove the run's files and start again.
    pub overwrite: bool,
}

/// The files and folders a run writes at its top level (and nothing else is removed by
/// `--overwrite`).
fn is_run_entry(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(
        name,
        "config.toml" | "folds.csv" | "metrics.csv" | "manifest.toml" | "thresholds.json" | "oof.csv"
    ) || numbered("fold")
        || numbered("size")
}

pub fn fold_dir(cfg: &TrainConfig, k: usize) -> PathBuf {
    cfg.out.join(format!("fold{k}"))
}

/// Whether fold `k` at `cfg.size` has begun (an epoch committed, or its folder holds files).
fn fold_started(cfg: &TrainConfig, k: usize) -> bool {
    let dir = fold_dir(cfg, k);
    dir.join("state.json").exists() || dir.join("model.onnx").exists()
}

/// Whether fold `k` at `cfg.size` is finished: exported, with its out-of-fold maps (a
/// full-data fit, `folds = 1`, has none).
pub fn fold_finished(cfg: &TrainConfig, k: usize) -> bool {
    let dir = fold_dir(cfg, k);
    dir.join("model.onnx").exists() && (cfg.folds == 1 || dir.join("oof.safetensors").exists())
}

/// The run at each of its sizes (itself when it has one).
pub fn sized(cfg: &TrainConfig) -> Vec<TrainConfig> {
    if cfg.sizes.is_empty() {
        vec![cfg.clone()]
    } else {
        cfg.sizes.iter().map(|&s| cfg.at_size(s)).collect()
    }
}

/// "key: A in the run, B given" lines.
fn listed(diffs: &[Difference]) -> String {
    diffs
        .iter()
        .map(|d| format!("{}: {} in the run, {} given", d.key, d.ours, d.theirs))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Options that may differ between a saved run and a job that continues it: `epochs` may grow
/// with `--resume` (the run is extended; see [`crate::optim::learning_rate`]).
fn blocking(saved: &TrainConfig, job: &TrainConfig, resume: bool) -> Vec<Difference> {
    saved
        .run_options()
        .differences(job)
        .into_iter()
        .filter(|d| !(resume && d.key == "epochs" && job.epochs > saved.epochs))
        .collect()
}

/// Takes `cfg.out` for this job by the rules above, and writes RUN/config.toml when the job
/// starts the run or extends it. Call once the inputs are checked: nothing is written before.
pub fn claim(cfg: &TrainConfig, mode: RunMode) -> Result<()> {
    let out = &cfg.out;
    let config_path = out.join("config.toml");
    let job = cfg.run_options();
    let refuse = |message: String| Err(TrainError::Run(format!("--out {}: {message}", out.display())));
    if out.exists() {
        if !out.is_dir() {
            return refuse("is a file, not a folder".into());
        }
        // Another job of the run may create config.toml (whole: `create_new`) between the look
        // for it and the listing, as the folds of an array job starting at once do: the folder
        // holds no run only if config.toml is still absent once the files are listed.
        if !config_path.exists() {
            let foreign = entries(out)?.into_iter().find(|n| !is_tmp_name(n));
            if let Some(name) = foreign.filter(|_| !config_path.exists()) {
                return refuse(format!(
                    "holds files but no ftu run (no config.toml; e.g. {name}); give an empty or new folder"
                ));
            }
        }
        if !config_path.exists() {
            // Empty: this job starts the run (below).
        } else if mode.overwrite {
            remove_run(out)?;
        } else {
            let saved = TrainConfig::from_toml_file(&config_path)?;
            let diffs = blocking(&saved, &job, mode.resume);
            if let Some(d) = diffs.iter().find(|d| d.key == "epochs" && mode.resume) {
                return refuse(format!(
                    "epochs: the run has {}, {} given; a run can be extended, not shortened",
                    d.ours, d.theirs
                ));
            }
            if !diffs.is_empty() {
                let verb = if mode.resume { "resume it with" } else { "use" };
                return refuse(format!(
                    "holds a run with other options ({}); {verb} the run's options (`--resume` alone reuses them), \
                     another --out, or --overwrite to start again",
                    listed(&diffs)
                ));
            }
            if mode.resume {
                if job.epochs > saved.epochs {
                    write_config(&config_path, &job)?;
                }
                return Ok(());
            }
            // A fold job joins a run whose other folds run elsewhere.
            if let Some(k) = cfg.fold {
                if sized(cfg).iter().all(|c| !fold_started(c, k)) {
                    return Ok(());
                }
                return refuse(format!(
                    "fold {k} of this run has already started; add --resume to continue it or --overwrite to start the run again"
                ));
            }
            let finished = sized(cfg)
                .iter()
                .map(|c| (0..c.folds).filter(|&k| fold_finished(c, k)).count())
                .sum::<usize>();
            return refuse(format!(
                "holds this run already ({finished} fold(s) finished); add --resume to continue it, --overwrite to start again, \
                 or pick another --out"
            ));
        }
    }
    std::fs::create_dir_all(out).at("creating", out)?;
    let text = job.to_toml();
    if !create_new(&config_path, text.as_bytes())? {
        // Another job of the run wrote it first: it must be this run.
        let saved = TrainConfig::from_toml_file(&config_path)?;
        let diffs = saved.run_options().differences(&job);
        if !diffs.is_empty() {
            return refuse(format!(
                "another job started a run with other options here at the same time ({})",
                listed(&diffs)
            ));
        }
    }
    Ok(())
}

fn write_config(path: &Path, cfg: &TrainConfig) -> Result<()> {
    let text = cfg.to_toml();
    Ok(write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))?)
}

/// A size's RUN/sizeS/config.toml (derived from the run's, so every job writes the same bytes).
pub fn write_size_config(cfg: &TrainConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.out).at("creating", &cfg.out)?;
    write_config(&cfg.out.join("config.toml"), &cfg.run_options())
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .at("listing", dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `--overwrite`: the run's own files and folders go; anything else in the folder stays.
fn remove_run(out: &Path) -> Result<()> {
    for name in entries(out)? {
        let path = out.join(&name);
        if is_run_entry(&name) || is_tmp_name(&name) {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).at("removing", &path)?;
            } else {
                std::fs::remove_file(&path).at("removing", &path)?;
            }
        }
    }
    Ok(())
}

/// The text of RUN/folds.csv: id, organ, fold.
pub fn folds_csv(rows: &[TrainRow], fold_of: &[usize]) -> String {
    let mut text = String::from("id,organ,fold\n");
    for (r, f) in rows.iter().zip(fold_of) {
        text.push_str(&format!("{},{},{f}\n", r.id, r.organ));
    }
    text
}

/// Writes `dir/folds.csv` when absent; when present (another job of the run wrote it, or the run
/// is resumed), it must hold these folds: else an error naming the first row that differs.
pub fn write_folds(dir: &Path, rows: &[TrainRow], fold_of: &[usize]) -> Result<()> {
    let path = dir.join("folds.csv");
    let text = folds_csv(rows, fold_of);
    if create_new(&path, text.as_bytes())? {
        return Ok(());
    }
    let saved = std::fs::read_to_string(&path).at("reading", &path)?;
    if saved == text {
        return Ok(());
    }
    let (ours, theirs): (Vec<&str>, Vec<&str>) = (saved.lines().collect(), text.lines().collect());
    let line = (0..ours.len().max(theirs.len()))
        .find(|&i| ours.get(i) != theirs.get(i))
        .unwrap_or(0);
    Err(TrainError::Run(format!(
        "{}: line {} is `{}`, but this job's slides and folds give `{}` (has train.csv changed?)",
        path.display(),
        line + 1,
        ours.get(line).unwrap_or(&"(the end of the file)"),
        theirs.get(line).unwrap_or(&"(the end of the file)"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(out: &Path) -> TrainConfig {
        TrainConfig {
            data: "data".into(),
            out: out.to_path_buf(),
            folds: 2,
            epochs: 3,
            ..TrainConfig::default()
        }
    }

    fn err(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_finished_or_started_run_is_never_trained_over_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let c = cfg(&out);
        claim(&c, RunMode::default()).unwrap();
        assert!(out.join("config.toml").exists());
        // The same command again: refused, and told how to go on.
        let e = err(claim(&c, RunMode::default()));
        assert!(
            e.contains("holds this run already") && e.contains("--resume") && e.contains("--overwrite"),
            "{e}"
        );
        // Resume with the same options, or overwrite.
        claim(
            &c,
            RunMode {
                resume: true,
                ..RunMode::default()
            },
        )
        .unwrap();
        std::fs::create_dir_all(out.join("fold0")).unwrap();
        std::fs::write(out.join("fold0/state.json"), "{}").unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        claim(
            &c,
            RunMode {
                overwrite: true,
                ..RunMode::default()
            },
        )
        .unwrap();
        assert!(!out.join("fold0").exists(), "the run's files go");
        assert!(out.join("notes.txt").exists(), "what is not the run's stays");
    }

    #[test]
    fn differing_options_are_listed_by_key_with_both_values() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let c = cfg(&out);
        claim(&c, RunMode::default()).unwrap();
        let mut other = c.clone();
        other.optim.lr = 0.01;
        other.size = 256;
        let e = err(claim(
            &other,
            RunMode {
                resume: true,
                ..RunMode::default()
            },
        ));
        assert!(e.contains("optim.lr: 0.003 in the run, 0.01 given"), "{e}");
        assert!(e.contains("size: 512 in the run, 256 given"), "{e}");
        // Longer is an extension; shorter is refused by name.
        let mut longer = c.clone();
        longer.epochs = 5;
        claim(
            &longer,
            RunMode {
                resume: true,
                ..RunMode::default()
            },
        )
        .unwrap();
        let saved = TrainConfig::from_toml_file(&out.join("config.toml")).unwrap();
        assert_eq!(saved.epochs, 5, "the extended run's config");
        let e = err(claim(
            &c,
            RunMode {
                resume: true,
                ..RunMode::default()
            },
        ));
        assert!(e.contains("epochs: the run has 5, 3 given"), "{e}");
        // Without --resume a longer run is another run.
        let mut six = c.clone();
        six.epochs = 6;
        let e = err(claim(&six, RunMode::default()));
        assert!(e.contains("epochs: 5 in the run, 6 given"), "{e}");
    }

    #[test]
    fn fold_jobs_join_a_run_but_not_a_fold_that_has_started() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let job = |k| TrainConfig {
            fold: Some(k),
            ..cfg(&out)
        };
        claim(&job(0), RunMode::default()).unwrap();
        claim(&job(1), RunMode::default()).unwrap();
        let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(!saved.contains("fold ="), "the run's options, not a job's: {saved}");
        std::fs::create_dir_all(out.join("fold1")).unwrap();
        std::fs::write(out.join("fold1/state.json"), "{}").unwrap();
        let e = err(claim(&job(1), RunMode::default()));
        assert!(e.contains("fold 1 of this run has already started"), "{e}");
        let mut other = job(0);
        other.seed = 9;
        let e = err(claim(&other, RunMode::default()));
        assert!(e.contains("seed: 0 in the run, 9 given"), "{e}");
    }

    /// The folds of an array job start at once on a fresh folder: every one joins the run,
    /// however their looks at the folder and their writes of config.toml interleave.
    #[test]
    fn fold_jobs_starting_at_once_all_join_the_run() {
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..200 {
            let out = dir.path().join(format!("run{attempt}"));
            let barrier = std::sync::Barrier::new(4);
            let results: Vec<Result<()>> = std::thread::scope(|scope| {
                let jobs: Vec<_> = (0..4)
                    .map(|k| {
                        let (out, barrier) = (&out, &barrier);
                        scope.spawn(move || {
                            let job = TrainConfig {
                                fold: Some(k),
                                folds: 4,
                                ..cfg(out)
                            };
                            barrier.wait();
                            claim(&job, RunMode::default())
                        })
                    })
                    .collect();
                jobs.into_iter().map(|j| j.join().unwrap()).collect()
            });
            for (k, r) in results.into_iter().enumerate() {
                assert!(r.is_ok(), "attempt {attempt}, fold {k}: {}", err(r));
            }
            assert!(out.join("config.toml").exists());
        }
    }

    #[test]
    fn a_folder_that_is_not_a_run_is_refused_whatever_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.csv"), "id\n").unwrap();
        for mode in [
            RunMode::default(),
            RunMode {
                resume: true,
                overwrite: false,
            },
            RunMode {
                resume: false,
                overwrite: true,
            },
        ] {
            let e = err(claim(&cfg(dir.path()), mode));
            assert!(e.contains("no ftu run") && e.contains("train.csv"), "{e}");
        }
        assert!(!dir.path().join("config.toml").exists());
    }

    #[test]
    fn folds_csv_is_written_once_and_checked_after() {
        use ftu_formats::{DataSource, Organ};
        let dir = tempfile::tempdir().unwrap();
        let row = |id: &str| TrainRow {
            id: id.into(),
            organ: Organ::Lung,
            data_source: DataSource::Hpa,
            img_height: 4,
            img_width: 4,
            pixel_size: 0.4,
            tissue_thickness: 4.0,
            rle: String::new(),
            age: None,
            sex: None,
        };
        let rows = [row("1"), row("2")];
        write_folds(dir.path(), &rows, &[0, 1]).unwrap();
        write_folds(dir.path(), &rows, &[0, 1]).unwrap();
        let e = err(write_folds(dir.path(), &rows, &[1, 1]));
        assert!(e.contains("line 2 is `1,lung,0`") && e.contains("`1,lung,1`"), "{e}");
    }
}
