//! What a run predicts and writes: its options, the shard of test.csv it takes, and the
//! fingerprint that tells whether an earlier run's journal may be reused.

use std::path::PathBuf;

use ftu_formats::kaggle::Split;
use ftu_formats::manifest::{GroupMode, Manifest};
use ftu_formats::schema::{self, TestRow};
use ftu_formats::slide::SlideLimits;

use super::journal;
use super::PredictError;
use crate::slides::SlideList;

/// What to do when a slide fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop with the error; nothing is written.
    Fail,
    /// Write an empty mask for the slide, go on, and list it at the end and in the report.
    Skip,
}

#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The Kaggle-layout folder: test.csv and test_images/.
    pub data: PathBuf,
    pub out: PathBuf,
    pub probs: Option<PathBuf>,
    pub overlays: Option<PathBuf>,
    /// Longest side of an overlay PNG.
    pub overlay_size: usize,
    pub on_error: OnError,
    pub limits: SlideLimits,
    /// Write each slide's FTU outlines here as GeoJSON, with a PNG overview of them.
    pub geojson: Option<PathBuf>,
    /// Write each slide's mask here as a tiled 0/255 TIFF.
    pub masks: Option<PathBuf>,
    /// Predict only this shard's rows of test.csv.
    pub shard: Option<Shard>,
    /// Slide files instead of `data`'s test.csv: the output is then a CSV of
    /// `id,organ,pixel_size,height,width,rle`.
    pub slides: Option<SlideList>,
    /// Reuse the slides an earlier run of the same manifest and options finished (its journal
    /// beside `out`) instead of starting over.
    pub resume: bool,
    /// A fingerprint of what else decides the masks (e.g. `--read-level0`), for the journal.
    pub run_options: String,
}

impl PredictOptions {
    /// Predicts `data`'s test.csv into `out` and nothing else: no probability maps, overlays
    /// (1024 px when asked for), GeoJSON or mask TIFFs; a failed slide stops the run; default
    /// slide limits; every row.
    pub fn new(data: impl Into<PathBuf>, out: impl Into<PathBuf>) -> PredictOptions {
        PredictOptions {
            data: data.into(),
            out: out.into(),
            probs: None,
            overlays: None,
            overlay_size: 1024,
            on_error: OnError::Fail,
            limits: SlideLimits::default(),
            geojson: None,
            masks: None,
            shard: None,
            slides: None,
            resume: false,
            run_options: String::new(),
        }
    }
}

/// `i/N`: rows `i, i + N, i + 2N, …` of test.csv (0-based), so shards get a mix of slides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("shard `{s}`: expected i/N with 0 <= i < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn holds(&self, row_index: usize) -> bool {
        row_index % self.count == self.index
    }
}

/// The rows of test.csv (or of `opts.slides`) that `opts` selects: all, or one shard's.
pub(super) fn selected_rows(opts: &PredictOptions) -> Result<Vec<TestRow>, PredictError> {
    let all_rows = match &opts.slides {
        Some(list) => list.rows.clone(),
        None => schema::read_test(&Split::Test.csv(&opts.data))?,
    };
    if all_rows.is_empty() {
        return Err(PredictError::Empty {
            data: opts.data.clone(),
        });
    }
    Ok(match opts.shard {
        None => all_rows,
        Some(shard) => all_rows
            .into_iter()
            .enumerate()
            .filter(|(i, _)| shard.holds(*i))
            .map(|(_, r)| r)
            .collect(),
    })
}

/// Whether the manifest reads slides region by region (a tiled group) rather than whole.
pub fn reads_tiles(manifest: &Manifest) -> bool {
    manifest.groups.iter().any(|g| matches!(g.mode, GroupMode::Tiles(_)))
}

/// What decides a run's masks, as the journal's fingerprint: the manifest's text, each model
/// file's size and modification time, the output's kind, the shard and `opts.run_options`.
pub fn run_fingerprint(manifest: &Manifest, opts: &PredictOptions) -> String {
    let text = std::fs::read(&manifest.path).unwrap_or_default();
    let models: Vec<String> = manifest
        .groups
        .iter()
        .flat_map(|g| &g.models)
        .map(|m| {
            let meta = std::fs::metadata(&m.path).ok();
            let modified = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{} {} {modified}", m.path.display(), meta.map_or(0, |m| m.len()))
        })
        .collect();
    let kind = format!(
        "slides={} shard={:?} {}",
        opts.slides.is_some(),
        opts.shard.map(|s| s.to_string()),
        opts.run_options
    );
    journal::fingerprint(
        [text.as_slice(), kind.as_bytes()]
            .into_iter()
            .chain(models.iter().map(|m| m.as_bytes())),
    )
}
