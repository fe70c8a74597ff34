//! `ftu-infer predict` over a Kaggle-layout folder (or slide files given as such, with no test.csv:
//! [`crate::slides`]): every row of test.csv, in order, the next slide
//! decoded on another thread while the models run on this one; thresholds per organ and source;
//! one submission row per id whatever happens; probability maps, overlays and a JSON report.
//! Manifests with tiled groups read each slide region by region instead ([`crate::tiled`]),
//! keep probabilities in blocks and masks as row runs, so whole-slide images fit in memory.
//! Masks are cleaned per organ, outlined as GeoJSON, and rows can be split into shards.
//! Finished slides go to a journal ([`journal`]) so a killed run resumes with `--continue`.

mod extras;
mod finished;
pub mod journal;
mod options;
mod pipeline;
mod reader;
mod regions;
mod report;
mod whole;

use std::path::PathBuf;

use crate::engine::EngineError;
use crate::score;
use ftu_formats::atomic::WriteError;
use ftu_formats::schema::CsvError;
use ftu_formats::slide::SlideError;

pub use options::{reads_tiles, run_fingerprint, OnError, PredictOptions, Shard};
pub use pipeline::{predict_dir, predict_with};
pub use reader::SlideReader;
pub use report::{PredictReport, Skipped, SlideTiles, StageTime};
pub use whole::threshold;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error(transparent)]
    Truth(#[from] score::ScoreError),
    #[error("{data}/test.csv has no rows")]
    Empty { data: PathBuf },
    #[error("slide {id}: {cause} (pass --on-error skip to write an empty mask for it and go on{kept})")]
    Slide {
        id: String,
        cause: Box<SlideFailure>,
        /// Where the slides finished before it are kept, when there are any.
        kept: String,
    },
    #[error(
        "none of the {} slides could be predicted (the first: {first}); no output is written, every reason is in {}",
        .report.failed,
        PredictReport::path_for(&.report.submission).display()
    )]
    NothingPredicted {
        first: String,
        /// What the run did, as written beside the output.
        report: Box<PredictReport>,
    },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot start the slide reader thread: {0}")]
    Thread(String),
}

/// Why one slide could not be predicted.
#[derive(Debug, thiserror::Error)]
pub enum SlideFailure {
    #[error("no image {0} (.tiff, .tif, .png or .jpg)")]
    Missing(PathBuf),
    #[error(transparent)]
    Read(#[from] SlideError),
    #[error("{path} is {width}×{height}, but test.csv says {csv_width}×{csv_height}")]
    Size {
        path: PathBuf,
        width: usize,
        height: usize,
        csv_width: u32,
        csv_height: u32,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What a run has done so far.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A slide finished: slides done, total, its id.
    Slide { done: usize, total: usize, id: &'a str },
    /// Within a tiled slide: windows done, windows to run.
    Windows { done: usize, total: usize },
}

/// Told of each [`Event`] as the run goes.
pub type SlideProgress<'a> = &'a mut dyn FnMut(Event);
