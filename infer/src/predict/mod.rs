//! `ftu-infer predict` over a Kaggle-layout folder (or slide files given as such, with no test.csv:
//! [`crate::slides`]): every row of test.csv, in order, the next slide
//! decoded on another thread while the models run on this one; thresholds per organ and source;
//! one submission row per id whatever happens; probability maps, overlays and a JSON report.
//! Manifests with tiled groups read each slide region by region instead ([`crate::tiled`]),
//! keep probabilities in blocks and masks as row runs, so whole-slide images fit in memory.
//! Masks are cleaned per organ, outlined as GeoJSON, and rows can be split into shards.
//! Finished slides go to a journal ([`journal`]) so a killed run resumes with `--continue`.

pub mod journal;
mod results;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{Engine, EngineError, ProbMap, SlideInfo, Timings};
use crate::ensemble::SlideMaps;
use crate::score;
use crate::slides::SlideList;
use crate::tiled::{self, TileStats};
use ftu_formats::atomic::WriteError;
use ftu_formats::draw::{outline_overlay, outline_overview, overlay, Layer, PRED_COLOUR, TRUTH_COLOUR};
use ftu_formats::kaggle::Split;
use ftu_formats::manifest::{GroupMode, Manifest, PostprocessSpec};
use ftu_formats::mask::runs::{Component, RunMask, RunSums};
use ftu_formats::mask::Mask;
use ftu_formats::mask::{geojson, image as mask_image, rle};
use ftu_formats::postprocess;
use ftu_formats::schema::{self, CsvError, TestRow};
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::{read_slide, RgbImage, SlideError, SlideLimits};
use results::Results;

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

/// A slide that got an empty mask, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

/// What a run did; also written as JSON beside the submission.
#[derive(Debug, Clone, Serialize)]
pub struct PredictReport {
    pub submission: PathBuf,
    pub slides: usize,
    /// Slides with a mask: predicted by this run or reused from an earlier one's journal.
    pub predicted: usize,
    /// Of those, the ones reused (`--continue`).
    pub reused: usize,
    /// Slides that failed and got an empty mask (`--on-error skip`), listed in `skipped`.
    pub failed: usize,
    pub skipped: Vec<Skipped>,
    /// Seconds per stage, summed over slides. Reading runs on its own thread, beside the models.
    pub stages: Vec<StageTime>,
    pub wall_seconds: f64,
    pub slides_per_second: f64,
    pub foreground_fraction: f64,
    /// `i/N` when this run was one shard.
    pub shard: Option<String>,
    /// Per slide, what tiling did (tiled manifests only).
    pub tiles: Vec<SlideTiles>,
    /// Files of `--slides` folders that are not slides, left out.
    pub not_slides: Vec<PathBuf>,
    #[serde(skip)]
    pub timings: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlideTiles {
    pub id: String,
    #[serde(flatten)]
    pub stats: TileStats,
}

/// What a run did, as `ftu-infer predict` prints it: the submission, the time per stage, each
/// tiled slide's windows, the skipped slides, and where the JSON report is.
impl std::fmt::Display for PredictReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reused = match self.reused {
            0 => String::new(),
            n => format!(" ({n} reused from the journal)"),
        };
        writeln!(
            f,
            "wrote {} ({} rows, {} predicted{reused}, {} failed with empty masks) in {:.1} s, {:.2} slides/s",
            self.submission.display(),
            self.slides,
            self.predicted,
            self.failed,
            self.wall_seconds,
            self.slides_per_second
        )?;
        writeln!(f, "{:<16}{:>10}{:>14}", "stage", "seconds", "ms / slide")?;
        for (stage, d) in self.timings.stages() {
            let s = d.as_secs_f64();
            writeln!(
                f,
                "{stage:<16}{s:>10.2}{:>14.1}",
                1000.0 * s / self.slides.max(1) as f64
            )?;
        }
        for t in &self.tiles {
            let tissue = t
                .stats
                .tissue
                .as_ref()
                .map(|s| {
                    format!(
                        ", tissue {:.1}% (saturation > {})",
                        100.0 * s.tissue_fraction,
                        s.saturation_threshold
                    )
                })
                .unwrap_or_default();
            let level = t
                .stats
                .thumbnail_level
                .map(|l| format!(" (from pyramid page {}, {}×{})", l.page, l.width, l.height))
                .unwrap_or_default();
            writeln!(
                f,
                "{}: {} of {} windows run{tissue}, {:.3} s per tissue window, thumbnail {:.2} s{level}, probability blocks at most {:.0} MB{}",
                t.id,
                t.stats.windows_run,
                t.stats.windows,
                t.stats.seconds_per_window,
                t.stats.thumbnail_seconds,
                t.stats.map_peak_bytes as f64 / 1e6,
                if t.stats.streamed { " (rows freed as finished)" } else { "" }
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "failed {}: {}", s.id, s.reason)?;
        }
        for p in &self.not_slides {
            writeln!(f, "not a slide, left out: {}", p.display())?;
        }
        write!(f, "report: {}", PredictReport::path_for(&self.submission).display())
    }
}

impl PredictReport {
    /// `submission.csv` → `submission.report.json`.
    pub fn path_for(submission: &Path) -> PathBuf {
        let stem = submission.file_stem().and_then(|s| s.to_str()).unwrap_or("submission");
        submission.with_file_name(format!("{stem}.report.json"))
    }
}

/// What a run has done so far.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A slide finished: slides done, total, its id.
    Slide { done: usize, total: usize, id: &'a str },
    /// Within a tiled slide: windows done, windows to run.
    Windows { done: usize, total: usize },
}

pub type Progress<'a> = &'a mut dyn FnMut(Event);

/// The mask where the probability is above the threshold.
pub fn threshold(prob: &ProbMap, threshold: f32) -> Mask {
    let data = prob.data.iter().map(|&p| u8::from(p > threshold)).collect();
    Mask::from_row_major(prob.height, prob.width, data).expect("a map's data fills its size")
}

/// The rows of test.csv (or of `opts.slides`) that `opts` selects: all, or one shard's.
fn selected_rows(opts: &PredictOptions) -> Result<Vec<TestRow>, PredictError> {
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

/// A slide read whole, with how long reading it took.
type ReadSlide = (Result<RgbImage, SlideFailure>, Duration);

/// The rows a run predicts and, for manifests that read slides whole, a thread that decodes
/// them in order one slide ahead of the models. Started before the engine is loaded, it
/// overlaps the first slide's decoding with session creation (and CUDA's start-up).
pub struct SlideReader {
    rows: Vec<TestRow>,
    /// Whether it was started for a tiled manifest (no reader thread).
    tiled: bool,
    /// `None` for tiled manifests: they read slides region by region, nothing whole ahead.
    slides: Option<Receiver<ReadSlide>>,
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

/// Predicts every row of `data/test.csv` (or of one shard of it) and writes the submission
/// (temp file, then rename).
pub fn predict_dir(
    engine: &mut Engine,
    opts: &PredictOptions,
    progress: Progress,
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
    progress: Progress,
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
    let mut results = Results::new(opts, journal);
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
            let (jobs, job_rx) = sync_channel::<Finish>(1);
            let (done_tx, done) = sync_channel::<(Result<Outcome, SlideFailure>, Timings)>(1);
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
                jobs.send(Finish { row, modelled, t })
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

/// One slide's row and what else it produced.
struct Outcome {
    rle: String,
    fraction: f64,
    tiles: Option<TileStats>,
}

/// The row's slide file: given with `--slides`, or found in test_images/.
fn image_path(opts: &PredictOptions, row: &TestRow) -> Result<PathBuf, SlideFailure> {
    if let Some(path) = opts.slides.as_ref().and_then(|l| l.path(&row.id)) {
        return Ok(path.to_path_buf());
    }
    Split::Test
        .find_image(&opts.data, &row.id)
        .ok_or_else(|| SlideFailure::Missing(Split::Test.tiff_path(&opts.data, &row.id)))
}

/// The RLE numbers pixels by the CSV's size: a mismatch would misplace every run.
fn check_size(path: &Path, row: &TestRow, width: usize, height: usize) -> Result<(), SlideFailure> {
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

fn read_row(opts: &PredictOptions, row: &TestRow) -> Result<RgbImage, SlideFailure> {
    let path = image_path(opts, row)?;
    let slide = read_slide(&path, opts.limits)?;
    check_size(&path, row, slide.width, slide.height)?;
    Ok(slide)
}

fn info_of(row: &TestRow) -> SlideInfo {
    SlideInfo {
        organ: row.organ,
        source: row.data_source,
        pixel_size: row.pixel_size,
    }
}

/// A slide read whole whose models have run: what [`finish_one`] needs to make its row.
struct Modelled {
    slide: RgbImage,
    maps: SlideMaps,
    threshold: f32,
    post: PostprocessSpec,
}

/// A slide for the finisher thread, with its timings so far.
struct Finish<'a> {
    row: &'a TestRow,
    modelled: Result<Modelled, SlideFailure>,
    t: Timings,
}

/// The models' half of one slide read whole (every group in resize mode): each group's map.
fn model_one(engine: &mut Engine, row: &TestRow, slide: RgbImage, t: &mut Timings) -> Result<Modelled, SlideFailure> {
    let info = info_of(row);
    let maps = engine.slide_maps(&slide, &info, t)?;
    Ok(Modelled {
        slide,
        maps,
        threshold: engine.threshold(&info),
        post: engine.manifest().postprocess.get(row.organ),
    })
}

/// The rest of one slide, without the engine: the groups' maps resized back and averaged,
/// thresholded, post-processed and encoded; the requested outputs written.
fn finish_one(
    opts: &PredictOptions,
    row: &TestRow,
    modelled: Modelled,
    truth: Option<&String>,
    t: &mut Timings,
) -> Result<Outcome, SlideFailure> {
    let Modelled {
        slide,
        maps,
        threshold: cut,
        post,
    } = modelled;
    let prob = maps.combine(t);
    let start = Instant::now();
    let mask = threshold(&prob, cut);
    let runs_needed = !post.is_identity() || opts.geojson.is_some() || opts.masks.is_some();
    let (encoded, mask, runs) = if runs_needed {
        let thresholded = RunSums::of_dense(RunMask::from_mask(&mask), &prob.data);
        let runs = postprocess::apply(thresholded.mask.clone(), &post, row.pixel_size);
        (runs.rle(), runs.to_mask(), Some((runs, thresholded)))
    } else {
        (rle::encode(&mask), mask, None)
    };
    t.rle += start.elapsed();
    if let Some(dir) = &opts.probs {
        let grey: Vec<u8> = prob.data.iter().map(|&p| to_grey(p)).collect();
        mask_image::write_grey_png(&dir.join(format!("{}.png", row.id)), prob.width, prob.height, &grey)?;
    }
    if let Some(dir) = &opts.overlays {
        let truth = truth.and_then(|r| rle::decode(r, slide.height, slide.width).ok());
        let (w, h, rgb) = overlay(&slide, &mask, truth.as_ref(), opts.overlay_size);
        mask_image::write_rgb_png(&dir.join(format!("{}.png", row.id)), w, h, &rgb)?;
    }
    if let Some((runs, thresholded)) = &runs {
        write_extras(opts, row, runs, |c| thresholded.mean_over(&c.runs), &slide)?;
    }
    Ok(Outcome {
        rle: encoded,
        fraction: mask.count() as f64 / (mask.height() * mask.width()).max(1) as f64,
        tiles: None,
    })
}

/// One slide read region by region through the tiled engine.
fn predict_tiled_one(
    engine: &mut Engine,
    opts: &PredictOptions,
    row: &TestRow,
    truth: Option<&String>,
    t: &mut Timings,
    progress: Progress,
) -> Result<Outcome, SlideFailure> {
    let info = info_of(row);
    let path = image_path(opts, row)?;
    let start = Instant::now();
    let mut source = SlideSource::open(&path, opts.limits)?;
    t.read += start.elapsed();
    let (width, height) = (source.width(), source.height());
    check_size(&path, row, width, height)?;
    let threshold = engine.threshold(&info);
    let keep_map = opts.probs.is_some();
    let pred = tiled::predict_slide(
        engine,
        &mut source,
        &info,
        threshold,
        keep_map,
        opts.limits,
        t,
        &mut |done, total| progress(Event::Windows { done, total }),
    )?;
    let start = Instant::now();
    let runs = postprocess::apply(
        pred.mask.mask.clone(),
        &engine.manifest().postprocess.get(row.organ),
        row.pixel_size,
    );
    let encoded = runs.rle();
    t.rle += start.elapsed();
    if let (Some(dir), Some(map)) = (&opts.probs, &pred.map) {
        mask_image::write_prob_tiff(&dir.join(format!("{}.tiff", row.id)), map)?;
    }
    // Overlays and overviews start from the thumbnail the tissue detector used, or a new one.
    let base = match pred.thumbnail {
        Some((thumb, _)) => thumb,
        None if opts.overlays.is_some() || opts.geojson.is_some() => {
            let factor = ftu_formats::tissue::thumbnail_factor(width, height, ftu_formats::tissue::THUMBNAIL_SIDE);
            source.thumbnail(factor).map_err(SlideFailure::Read)?
        }
        None => RgbImage::new(1, 1),
    };
    if let Some(dir) = &opts.overlays {
        let truth = truth.and_then(|r| rle::parse(r, width * height).ok());
        let truth_at = truth.as_ref().map(|runs| {
            move |y: usize, x: usize| {
                let i = x * height + y;
                let k = runs.partition_point(|r| r.end() <= i);
                k < runs.len() && runs[k].start <= i
            }
        });
        let pred_at = |y: usize, x: usize| runs.get(y, x);
        let mut layers: Vec<Layer> = Vec::new();
        if let Some(f) = &truth_at {
            layers.push((f, TRUTH_COLOUR));
        }
        layers.push((&pred_at, PRED_COLOUR));
        let (w, h, rgb) = outline_overlay(&base, width, height, &layers, opts.overlay_size);
        mask_image::write_rgb_png(&dir.join(format!("{}.png", row.id)), w, h, &rgb)?;
    }
    write_extras(opts, row, &runs, |c| pred.mask.mean_over(&c.runs), &base)?;
    Ok(Outcome {
        rle: encoded,
        fraction: runs.count() as f64 / (width * height).max(1) as f64,
        tiles: Some(pred.stats),
    })
}

/// GeoJSON outlines with their overview, and the mask as a tiled TIFF, when asked for.
/// `base` is the slide or a thumbnail of it.
fn write_extras(
    opts: &PredictOptions,
    row: &TestRow,
    runs: &RunMask,
    mean_probability: impl Fn(&Component) -> f64,
    base: &RgbImage,
) -> Result<(), SlideFailure> {
    if let Some(dir) = &opts.geojson {
        let outlines = geojson::outlines(runs, mean_probability);
        let fc = geojson::feature_collection(&row.id, row.organ, &outlines);
        geojson::write(&dir.join(format!("{}.geojson", row.id)), &fc)?;
        let (w, h, rgb) = outline_overview(base, runs.width, runs.height, &outlines, opts.overlay_size);
        mask_image::write_rgb_png(&dir.join(format!("{}.png", row.id)), w, h, &rgb)?;
    }
    if let Some(dir) = &opts.masks {
        mask_image::write_mask_tiff(&dir.join(format!("{}.tiff", row.id)), runs)?;
    }
    Ok(())
}

fn to_grey(p: f32) -> u8 {
    (p.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_strictly_above() {
        let prob = ProbMap {
            width: 2,
            height: 2,
            data: vec![0.2, 0.5, 0.50001, 0.9],
        };
        let m = threshold(&prob, 0.5);
        assert_eq!(m.data(), [0, 0, 1, 1]);
        assert_eq!((m.height(), m.width()), (2, 2));
    }

    #[test]
    fn the_report_sits_beside_the_submission() {
        assert_eq!(
            PredictReport::path_for(Path::new("out/sub.csv")),
            Path::new("out/sub.report.json")
        );
    }
}
