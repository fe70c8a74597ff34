//! The finished slides of a run: each predicted slide's row goes to the journal (synced, so
//! a killed run resumes from it), a failed one is listed with its reason; at the end the output
//! is written in the rows' order from the journal (an empty mask for a failed slide, never a
//! missing row), the report beside it, and the journal removed. A run that predicts nothing
//! writes its report but no output: empty masks for every slide would read as "no FTU".

use std::collections::HashSet;
use std::time::Duration;

use super::journal::Journal;
use super::options::{OnError, PredictOptions};
use super::report::{PredictReport, Skipped, SlideTiles, StageTime};
use super::{PredictError, SlideFailure};
use crate::engine::Timings;
use crate::slides::SlideResultRow;
use crate::tiled::TileStats;
use ftu_formats::atomic::{write_atomic, WriteError};
use ftu_formats::schema::{SubmissionRow, TestRow};

/// A slide through every stage: its row's RLE, its foreground fraction, and what tiling did
/// (tiled manifests only).
pub(super) struct FinishedSlide {
    pub(super) rle: String,
    pub(super) fraction: f64,
    pub(super) tiles: Option<TileStats>,
}

/// The run's finished slides so far: journalled, counted, and at the end written as the output.
pub(super) struct FinishedSlides {
    on_error: OnError,
    journal: Journal,
    /// Whether rows carry the slide's metadata (`--slides`): `id,organ,pixel_size,height,width,rle`.
    with_meta: bool,
    skipped: Vec<Skipped>,
    skipped_ids: HashSet<String>,
    tiles: Vec<SlideTiles>,
    /// Slides predicted by this run, and those whose rows an earlier run's journal held.
    predicted: usize,
    reused: usize,
    /// Sum over predicted slides of their foreground fraction.
    foreground: f64,
}

impl FinishedSlides {
    pub(super) fn new(opts: &PredictOptions, journal: Journal) -> FinishedSlides {
        FinishedSlides {
            on_error: opts.on_error,
            journal,
            with_meta: opts.slides.is_some(),
            skipped: Vec::new(),
            skipped_ids: HashSet::new(),
            tiles: Vec::new(),
            predicted: 0,
            reused: 0,
            foreground: 0.0,
        }
    }

    /// Whether the journal holds `row` finished; if so it counts as predicted (reused).
    pub(super) fn reuse(&mut self, row: &TestRow) -> bool {
        match self.journal.finished(row) {
            Some(fraction) => {
                self.foreground += fraction;
                self.reused += 1;
                true
            }
            None => false,
        }
    }

    /// A slide's outcome: its row in the journal, or (with `--on-error skip`) the reason it gets
    /// an empty one.
    pub(super) fn record(
        &mut self,
        row: &TestRow,
        outcome: Result<FinishedSlide, SlideFailure>,
    ) -> Result<(), PredictError> {
        match outcome {
            Ok(o) => {
                self.foreground += o.fraction;
                if let Some(stats) = o.tiles {
                    self.tiles.push(SlideTiles {
                        id: row.id.clone(),
                        stats,
                    });
                }
                self.journal.append(row, o.fraction, o.rle)?;
                self.predicted += 1;
            }
            Err(cause) if self.on_error == OnError::Skip => {
                self.skipped.push(Skipped {
                    id: row.id.clone(),
                    reason: cause.to_string(),
                });
                self.skipped_ids.insert(row.id.clone());
            }
            Err(cause) => {
                let kept = self.kept_note();
                // A journal with no finished slide has nothing to resume from.
                self.journal.discard_if_empty();
                return Err(PredictError::Slide {
                    id: row.id.clone(),
                    cause: Box::new(cause),
                    kept,
                });
            }
        }
        Ok(())
    }

    /// `; the 3 slides finished are kept in sub.journal.csv: rerun with --continue to reuse them`.
    fn kept_note(&self) -> String {
        match self.journal.len() {
            0 => String::new(),
            n => format!(
                "; the {n} slide(s) finished are kept in {}: rerun with --continue to reuse them",
                self.journal.path().display()
            ),
        }
    }

    /// Writes the output (all `rows`, in order), then the report beside it, removes the journal,
    /// and returns the report; a run that predicted none of its slides is an error after the
    /// report is written.
    pub(super) fn write(
        mut self,
        opts: &PredictOptions,
        rows: &[TestRow],
        timings: Timings,
        wall: Duration,
    ) -> Result<PredictReport, PredictError> {
        let total = rows.len();
        let predicted = self.predicted + self.reused;
        let nothing = predicted == 0 && total > 0;
        if !nothing {
            self.write_rows(opts, rows)?;
        }
        let wall = wall.as_secs_f64();
        let report = PredictReport {
            submission: opts.out.clone(),
            slides: total,
            predicted,
            reused: self.reused,
            failed: self.skipped.len(),
            skipped: self.skipped,
            stages: timings
                .stages()
                .iter()
                .map(|(n, d)| StageTime {
                    stage: n.to_string(),
                    seconds: d.as_secs_f64(),
                })
                .collect(),
            wall_seconds: wall,
            slides_per_second: self.predicted as f64 / wall.max(1e-9),
            foreground_fraction: if predicted > 0 {
                self.foreground / predicted as f64
            } else {
                0.0
            },
            shard: opts.shard.map(|s| s.to_string()),
            tiles: self.tiles,
            not_slides: opts.slides.as_ref().map(|l| l.not_slides.clone()).unwrap_or_default(),
            timings,
        };
        let json = serde_json::to_vec_pretty(&report).expect("the report serialises");
        let path = PredictReport::path_for(&opts.out);
        write_atomic(&path, |w| std::io::Write::write_all(w, &json))?;
        self.journal.remove()?;
        if nothing {
            return Err(PredictError::NothingPredicted {
                first: report
                    .skipped
                    .first()
                    .map(|s| format!("{}: {}", s.id, s.reason))
                    .unwrap_or_default(),
                report: Box::new(report),
            });
        }
        Ok(report)
    }

    /// The output from the journal's rows, through a temp file renamed into place.
    fn write_rows(&mut self, opts: &PredictOptions, rows: &[TestRow]) -> Result<(), PredictError> {
        let mut failure: Option<PredictError> = None;
        let (journal, skipped, with_meta) = (&mut self.journal, &self.skipped_ids, self.with_meta);
        write_atomic(&opts.out, |w| {
            let mut csv = csv::Writer::from_writer(w);
            for row in rows {
                let rle = if skipped.contains(&row.id) {
                    String::new()
                } else {
                    match journal.rle(&row.id) {
                        Ok(Some(rle)) => rle,
                        Ok(None) => {
                            // Every row is predicted, reused or skipped before the output is written.
                            unreachable!("slide {} is neither finished nor failed", row.id)
                        }
                        Err(e) => {
                            failure = Some(PredictError::Journal(e));
                            return Err(std::io::Error::other("reading the journal"));
                        }
                    }
                };
                if with_meta {
                    csv.serialize(SlideResultRow {
                        id: row.id.clone(),
                        organ: row.organ,
                        pixel_size: row.pixel_size,
                        height: row.img_height,
                        width: row.img_width,
                        rle,
                    })
                } else {
                    csv.serialize(SubmissionRow {
                        id: row.id.clone(),
                        rle,
                    })
                }
                .map_err(std::io::Error::other)?;
            }
            csv.flush()
        })
        .map_err(|e: WriteError| failure.take().unwrap_or(PredictError::Write(e)))
    }
}
