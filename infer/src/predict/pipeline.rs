//! The run: slides read whole go through three threads (read, model, finish), slides read
//! region by region one at a time; each finished slide is recorded, the output written at the end.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use ftu_formats::atomic::WriteError;
use ftu_formats::kaggle::Split;
use ftu_formats::schema::TestRow;

use super::finished::{FinishedSlide, FinishedSlides};
use super::journal;
use super::options::{reads_tiles, run_fingerprint, PredictOptions};
use super::reader::SlideReader;
use super::regions::predict_tiled_one;
use super::report::PredictReport;
use super::whole::{finish_one, model_one, ModelledRow};
use super::{Event, PredictError, SlideFailure, SlideProgress};
use crate::engine::{Engine, Timings};
use crate::score;

/// Predicts every row of `data/test.csv` (or of one shard of it) and writes the submission
/// (temp file, then rename).
pub fn predict_dir(
    engine: &mut Engine,
    opts: &PredictOptions,
    progress: SlideProgress,
) -> Result<PredictReport, PredictError> {
    let reader = SlideReader::start(opts, engine.manifest())?;
    predict_with(engine, opts, reader, progress)
}

/// [`predict_dir`] with its slides from `reader`, started (by [`SlideReader::start`] on the
/// same options) before the engine was loaded.
pub fn predict_with(
    engine: &mut Engine,
    opts: &PredictOptions,
    mut reader: SlideReader,
    progress: SlideProgress,
) -> Result<PredictReport, PredictError> {
    let start = Instant::now();
    let tiled = reads_tiles(engine.manifest());
    if tiled != reader.tiled {
        // Started for the other kind of manifest: start again for this one.
        reader = SlideReader::start(opts, engine.manifest())?;
    }
    let rows = std::mem::take(&mut reader.rows);
    for path in [opts.out.clone(), PredictReport::path_for(&opts.out)] {
        remove_stale_tmps(&path);
    }
    let (journal, replaced) =
        journal::Journal::open(&opts.out, &run_fingerprint(engine.manifest(), opts), opts.resume)?;
    if replaced > 0 {
        eprintln!(
            "note: {} held {replaced} finished slide(s) of an earlier run; starting over (--continue reuses them)",
            journal.path().display()
        );
    }
    let mut results = FinishedSlides::new(opts, journal);
    // The rows an earlier run finished are reused; the reader skipped the same ones.
    let todo: Vec<&TestRow> = rows.iter().filter(|r| !results.reuse(r)).collect();
    let truth: HashMap<String, String> = match (&opts.overlays, opts.data.join("truth.csv")) {
        (Some(_), t) if t.is_file() && opts.slides.is_none() => {
            score::read_truth(&t, Some(&Split::Test.csv(&opts.data)))?
                .into_iter()
                .map(|r| (r.meta.id.clone(), r.rle))
                .collect()
        }
        _ => HashMap::new(),
    };
    for dir in [&opts.probs, &opts.overlays, &opts.geojson, &opts.masks]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir).map_err(|cause| WriteError {
            path: dir.clone(),
            cause,
        })?;
    }

    let mut timings = Timings::default();
    let total = rows.len();
    let done_before = total - todo.len();
    if tiled {
        // Slides are opened region by region: nothing to decode ahead.
        for (i, &row) in todo.iter().enumerate() {
            let mut t = Timings::default();
            let outcome = predict_tiled_one(engine, opts, row, truth.get(&row.id), &mut t, &mut *progress);
            timings.add(&t);
            results.record(row, outcome)?;
            progress(Event::Slide {
                done: done_before + i + 1,
                total,
                id: &row.id,
            });
        }
    } else {
        std::thread::scope(|scope| -> Result<(), PredictError> {
            // Three stages, one thread each: the reader decodes the next slide, this thread runs
            // the models on the current one, and the finisher resizes the previous one's maps
            // back, thresholds, encodes and writes its outputs. At most four slides are held:
            // two at the reader (one decoding, one waiting), one at the models or waiting for the
            // finisher, one being finished.
            let rx = reader
                .slides
                .as_ref()
                .expect("a reader for a manifest that reads whole slides");
            let (jobs, job_rx) = sync_channel::<ModelledRow>(1);
            let (done_tx, done) = sync_channel::<(Result<FinishedSlide, SlideFailure>, Timings)>(1);
            let truth = &truth;
            scope.spawn(move || {
                for job in job_rx {
                    let mut t = job.t;
                    let outcome = job
                        .modelled
                        .and_then(|m| finish_one(opts, job.row, m, truth.get(&job.row.id), &mut t));
                    if done_tx.send((outcome, t)).is_err() {
                        break; // the consumer stopped on an error
                    }
                }
            });
            // The row whose outcome the finisher owes, with its index.
            let mut owed: Option<(usize, &TestRow)> = None;
            let mut collect = |(i, row): (usize, &TestRow)| -> Result<(), PredictError> {
                let (outcome, t) = done.recv().expect("the finisher answers every slide it is given");
                timings.add(&t);
                results.record(row, outcome)?;
                progress(Event::Slide {
                    done: done_before + i + 1,
                    total,
                    id: &row.id,
                });
                Ok(())
            };
            for (i, &row) in todo.iter().enumerate() {
                let (slide, read_time) = rx.recv().expect("the reader sends one result per row");
                let mut t = Timings {
                    read: read_time,
                    ..Timings::default()
                };
                let modelled = slide.and_then(|slide| model_one(engine, row, slide, &mut t));
                jobs.send(ModelledRow { row, modelled, t })
                    .expect("the finisher takes jobs until this loop ends");
                if let Some(prev) = owed.replace((i, row)) {
                    collect(prev)?;
                }
            }
            owed.map_or(Ok(()), collect)
        })?;
    }

    results.write(opts, &rows, timings, start.elapsed())
}

/// Removes the temp files of `path` (`name.PID.N.tmp`) that a killed run left: those whose
/// process is gone. A running writer's are kept. Only where `/proc` tells which processes run.
fn remove_stale_tmps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(middle) = file
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('.'))
            .and_then(|f| f.strip_suffix(".tmp"))
        else {
            continue;
        };
        let Some(pid) = middle.split_once('.').and_then(|(pid, n)| {
            (n.parse::<u64>().is_ok())
                .then_some(pid)
                .and_then(|p| p.parse::<u32>().ok())
        }) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
