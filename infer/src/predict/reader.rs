//! The read stage: the rows a run predicts, and the thread that decodes slides read whole one
//! ahead of the models; where a row's slide file is and whether its size is the CSV's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use ftu_formats::kaggle::Split;
use ftu_formats::manifest::Manifest;
use ftu_formats::schema::TestRow;
use ftu_formats::slide::{read_slide, RgbImage};

use super::journal;
use super::options::{reads_tiles, run_fingerprint, selected_rows, PredictOptions};
use super::{PredictError, SlideFailure};

/// A slide read whole, with how long reading it took.
type ReadSlide = (Result<RgbImage, SlideFailure>, Duration);

/// The rows a run predicts and, for manifests that read slides whole, a thread that decodes
/// them in order one slide ahead of the models. Started before the engine is loaded, it
/// overlaps the first slide's decoding with session creation (and CUDA's start-up).
pub struct SlideReader {
    pub(super) rows: Vec<TestRow>,
    /// Whether it was started for a tiled manifest (no reader thread).
    pub(super) tiled: bool,
    /// `None` for tiled manifests: they read slides region by region, nothing whole ahead.
    pub(super) slides: Option<Receiver<ReadSlide>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlideReader {
    /// The rows `opts` selects, with a reader thread started on those an earlier run's journal
    /// does not hold (continuing) unless `manifest` is tiled.
    pub fn start(opts: &PredictOptions, manifest: &Manifest) -> Result<SlideReader, PredictError> {
        let rows = selected_rows(opts)?;
        let tiled = reads_tiles(manifest);
        if tiled {
            return Ok(SlideReader {
                rows,
                tiled,
                slides: None,
                thread: None,
            });
        }
        let finished = match opts.resume {
            true => journal::finished(&journal::path_for(&opts.out), &run_fingerprint(manifest, opts))?,
            false => HashMap::new(),
        };
        let to_read: Vec<TestRow> = rows
            .iter()
            .filter(|r| !finished.get(&r.id).is_some_and(|k| k.matches(r)))
            .cloned()
            .collect();
        // One decoded slide waits in the channel: memory stays bounded whatever the run's length.
        let (tx, rx) = sync_channel::<ReadSlide>(1);
        let opts = opts.clone();
        let thread = std::thread::Builder::new()
            .name("ftu-reader".into())
            .spawn(move || {
                for row in &to_read {
                    let t0 = Instant::now();
                    let slide = read_row(&opts, row);
                    if tx.send((slide, t0.elapsed())).is_err() {
                        break; // the run stopped
                    }
                }
            })
            .map_err(|cause| PredictError::Thread(cause.to_string()))?;
        Ok(SlideReader {
            rows,
            tiled,
            slides: Some(rx),
            thread: Some(thread),
        })
    }
}

impl Drop for SlideReader {
    /// A run that stops early closes the channel: the reader ends after the slide it is on.
    fn drop(&mut self) {
        drop(self.slides.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The row's slide file: given with `--slides`, or found in test_images/.
pub(super) fn image_path(opts: &PredictOptions, row: &TestRow) -> Result<PathBuf, SlideFailure> {
    if let Some(path) = opts.slides.as_ref().and_then(|l| l.path(&row.id)) {
        return Ok(path.to_path_buf());
    }
    Split::Test
        .find_image(&opts.data, &row.id)
        .ok_or_else(|| SlideFailure::Missing(Split::Test.tiff_path(&opts.data, &row.id)))
}

/// The RLE numbers pixels by the CSV's size: a mismatch would misplace every run.
pub(super) fn check_size(path: &Path, row: &TestRow, width: usize, height: usize) -> Result<(), SlideFailure> {
    if (width, height) != (row.img_width as usize, row.img_height as usize) {
        return Err(SlideFailure::Size {
            path: path.to_path_buf(),
            width,
            height,
            csv_width: row.img_width,
            csv_height: row.img_height,
        });
    }
    Ok(())
}

pub(super) fn read_row(opts: &PredictOptions, row: &TestRow) -> Result<RgbImage, SlideFailure> {
    let path = image_path(opts, row)?;
    let slide = read_slide(&path, opts.limits)?;
    check_size(&path, row, slide.width, slide.height)?;
    Ok(slide)
}
