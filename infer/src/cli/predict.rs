//! `ftu-infer predict`: its options and its run (see [`crate::predict`]).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use ftu_formats::manifest::Manifest;
use ftu_formats::slide::SlideLimits;

use crate::cli::progress::with_progress;
use crate::cli::runtime::{load_engine_from, RuntimeArgs};
use crate::predict::{self, OnError, PredictOptions};
use crate::slides::{SlideDefaults, SlideList, SlidesMeta};

#[derive(Args)]
pub struct PredictArgs {
    /// The ensemble manifest (TOML).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Folder with test.csv and test_images/ (truth.csv, when present, is drawn on overlays).
    #[arg(long, required_unless_present = "slides", conflicts_with = "slides")]
    pub data: Option<PathBuf>,
    /// Slide files or folders of them instead of --data (no test.csv): ids from the file names,
    /// sizes and µm per pixel from the files. The output CSV is then
    /// id,organ,pixel_size,height,width,rle.
    #[arg(long, num_args = 1..)]
    pub slides: Vec<PathBuf>,
    /// With --slides: a CSV of id,organ[,pixel_size][,data_source] (other columns ignored, so a
    /// test.csv serves); a row's pixel_size wins over the file's. Default: none.
    // The brackets are the help's notation for optional columns, not links.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "CSV", requires = "slides")]
    pub slides_meta: Option<PathBuf>,
    /// With --slides: the organ of every slide without a --slides-meta row. Default: none (each
    /// slide needs a row).
    #[arg(long)]
    pub organ: Option<ftu_formats::Organ>,
    /// With --slides: µm per pixel of every file that states none and has no --slides-meta
    /// pixel_size; auto: such a file is an error.
    #[arg(long, value_name = "auto|UM", default_value = "auto")]
    pub pixel_size: crate::slides::PixelSizeArg,
    /// With --slides: where slides without a --slides-meta data_source come from, for manifests
    /// with per-source thresholds.
    #[arg(long, default_value = "hpa")]
    pub data_source: ftu_formats::DataSource,
    /// Reuse the slides an interrupted or failed run of the same manifest and options finished
    /// (OUT's stem.journal.csv) and predict only the rest. Default: start over.
    #[arg(long = "continue")]
    pub resume: bool,
    /// The submission to write (id,rle); a .report.json lands beside it.
    #[arg(long, default_value = "submission.csv")]
    pub out: PathBuf,
    /// Write each slide's probability map here as an 8-bit PNG (round(p·255)), or as a pyramidal
    /// tiled TIFF with the slide's pixel size (ID.tiff) for slides predicted by a tiled manifest.
    /// Default: not written.
    #[arg(long)]
    pub probs: Option<PathBuf>,
    /// Write each slide with the predicted (yellow) and true (cyan) outlines here as PNG.
    /// Default: not written.
    #[arg(long)]
    pub overlays: Option<PathBuf>,
    /// Longest side of an overlay or overview PNG.
    #[arg(long, default_value_t = 1024)]
    pub overlay_size: usize,
    /// Write each slide's FTU outlines here as QuPath GeoJSON, with a PNG overview. Default: not
    /// written.
    #[arg(long)]
    pub geojson: Option<PathBuf>,
    /// Write each slide's final mask here as a pyramidal tiled 0/255 TIFF with the slide's pixel
    /// size, which QuPath and OpenSlide open at scale. Default: not written.
    #[arg(long)]
    pub masks: Option<PathBuf>,
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Tiled groups read windows from the full-resolution page even when the slide's pyramid
    /// has a level at (or finer than) the group's scale (read from by default: fewer pixels to
    /// decode, the mask within a stated tolerance).
    #[arg(long)]
    pub read_level0: bool,
    /// After predicting, run every batch the models were given again through bare ONNX Runtime
    /// (keeping them in memory, up to 4 GiB) and print that limit next to predict's own times.
    #[arg(long)]
    pub bench_limit: bool,
    /// Refuse to run when the manifest contradicts what a model states in its metadata (a norm
    /// other than its ftu.norm, a group size over 2× from its ftu.train_size) instead of warning.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Which of test.csv's slides a run takes, and what it does with a bad one.
#[derive(Args)]
pub struct BatchArgs {
    /// Predict only rows i, i+N, i+2N, … of test.csv (0-based), for array jobs; see `merge`.
    /// Default: every row.
    #[arg(long, value_name = "i/N")]
    pub shard: Option<predict::Shard>,
    /// fail: stop at the first bad slide; skip: go on without it (predict writes it an empty
    /// mask, pseudo leaves it out of pseudo.csv) and list it at the end.
    #[arg(long, value_enum, default_value = "fail")]
    pub on_error: OnError,
    /// Refuse slides with more pixels than this.
    #[arg(long, default_value_t = ftu_formats::slide::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

impl BatchArgs {
    /// Options predicting `data` into `out` with these slides and limits, nothing else written.
    pub fn options(&self, data: PathBuf, out: PathBuf) -> PredictOptions {
        PredictOptions {
            on_error: self.on_error,
            limits: SlideLimits {
                max_pixels: self.max_pixels,
            },
            shard: self.shard,
            ..PredictOptions::new(data, out)
        }
    }
}

impl PredictArgs {
    pub fn run(self) -> Result<()> {
        let started = std::time::Instant::now();
        self.check_inputs()?;
        let manifest = Manifest::load(&self.manifest)?;
        let slides = match &self.slides[..] {
            [] => None,
            paths => {
                let defaults = SlideDefaults {
                    meta: self.slides_meta.as_deref().map(SlidesMeta::read).transpose()?,
                    organ: self.organ,
                    data_source: self.data_source,
                    pixel_size: self.pixel_size,
                };
                let list = SlideList::from_paths(paths, &defaults)?;
                for r in &list.rows {
                    println!(
                        "{}: {}×{}, {}, {} µm/pixel ({})",
                        r.id,
                        r.img_width,
                        r.img_height,
                        r.organ.as_str(),
                        r.pixel_size,
                        list.pixel_size_from[&r.id]
                    );
                }
                for p in &list.not_slides {
                    println!("not a slide, left out: {}", p.display());
                }
                if let (Some(first), Some(meta)) = (list.unmatched_meta.first(), &defaults.meta) {
                    println!(
                        "note: {} id(s) of {} match no slide file (the first: {first})",
                        list.unmatched_meta.len(),
                        meta.path.display()
                    );
                }
                Some(list)
            }
        };
        let what = match &self.data {
            Some(d) => d.display().to_string(),
            None => format!("{} slide file(s)", slides.as_ref().map_or(0, |l| l.rows.len())),
        };
        let opts = PredictOptions {
            probs: self.probs,
            overlays: self.overlays,
            overlay_size: self.overlay_size.max(16),
            geojson: self.geojson,
            masks: self.masks,
            slides,
            resume: self.resume,
            run_options: format!("read_level0={}", self.read_level0),
            ..self.batch.options(self.data.unwrap_or_default(), self.out)
        };
        // The first slide decodes while the sessions are built.
        let reader = predict::SlideReader::start(&opts, &manifest).with_context(|| format!("predicting {what}"))?;
        let loaded_at = std::time::Instant::now();
        let (mut engine, runtime) = load_engine_from(manifest, &self.runtime, self.strict)?;
        let loaded = loaded_at.elapsed();
        if self.bench_limit {
            engine.record_batches(4 << 30);
        }
        engine.set_read_levels(!self.read_level0);
        let report = match with_progress(|progress| predict::predict_with(&mut engine, &opts, reader, progress)) {
            Ok(report) => report,
            Err(e) => {
                if let predict::PredictError::NothingPredicted { report, .. } = &e {
                    println!("{report}");
                }
                return Err(anyhow::Error::new(e).context(format!("predicting {what}")));
            }
        };
        if let Some(note) = runtime.fallback() {
            println!("note: {note}");
        }
        println!("{report}");
        if self.bench_limit {
            let total = started.elapsed().as_secs_f64();
            let limit = engine.replay().context("replaying the batches for --bench-limit")?;
            let ratio = |s: f64| s / limit.seconds.max(1e-9);
            let model = report.timings.model.as_secs_f64();
            println!(
                "limit: the same {} model runs ({} images) through bare ONNX Runtime took {:.2} s",
                limit.batches, limit.items, limit.seconds
            );
            println!(
                "  model stage in predict {model:.2} s ({:.2}× the limit); predict {:.2} s ({:.2}×); \
             with start-up and loading ({:.2} s) {total:.2} s ({:.2}×)",
                ratio(model),
                report.wall_seconds,
                ratio(report.wall_seconds),
                loaded.as_secs_f64(),
                ratio(total)
            );
        }
        Ok(())
    }

    /// Where `--data` or `--slides` was given the other's kind of folder, what to pass instead.
    fn check_inputs(&self) -> Result<()> {
        if let Some(data) = &self.data {
            if data.is_dir() && !data.join("test.csv").is_file() {
                let slides = std::fs::read_dir(data)
                    .map(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.path().is_file() && crate::slides::is_slide(&e.path()))
                    })
                    .unwrap_or(false);
                if slides {
                    bail!(
                        "{} has no test.csv but holds slide files; predict them with --slides {} and --organ or \
                     --slides-meta (--data takes a Kaggle-layout folder: test.csv and test_images/)",
                        data.display(),
                        data.display()
                    );
                }
            }
        }
        for p in &self.slides {
            if p.is_dir() && p.join("test.csv").is_file() && p.join("test_images").is_dir() {
                bail!(
                    "{} is a Kaggle-layout folder (test.csv, test_images/); predict it with --data {}",
                    p.display(),
                    p.display()
                );
            }
        }
        Ok(())
    }
}
