//! `ftu-infer predict` over a Kaggle-layout folder: every row of test.csv, in order, the next slide
//! decoded on another thread while the models run on this one; thresholds per organ and source;
//! one submission row per id whatever happens; probability PNGs, overlays and a JSON report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::atomic::{write_atomic, WriteError};
use crate::engine::{Engine, EngineError, ProbMap, SlideInfo, Timings};
use crate::mask::Mask;
use crate::schema::{self, CsvError, SubmissionRow, TestRow};
use crate::slide::{read_slide, RgbImage, SlideError, SlideLimits};
use crate::{mask_image, resize, rle, score};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error(transparent)]
    Truth(#[from] score::ScoreError),
    #[error("{data}/test.csv has no rows")]
    Empty { data: PathBuf },
    #[error("slide {id}: {cause} (pass --on-error skip to write an empty mask for it and go on)")]
    Slide { id: String, cause: SlideFailure },
    #[error(transparent)]
    Write(#[from] WriteError),
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
    pub predicted: usize,
    pub skipped: Vec<Skipped>,
    /// Seconds per stage, summed over slides. Reading runs on its own thread, beside the models.
    pub stages: Vec<StageTime>,
    pub wall_seconds: f64,
    pub slides_per_second: f64,
    pub foreground_fraction: f64,
    #[serde(skip)]
    pub timings: Timings,
}

impl PredictReport {
    /// `submission.csv` → `submission.report.json`.
    pub fn path_for(submission: &Path) -> PathBuf {
        let stem = submission.file_stem().and_then(|s| s.to_str()).unwrap_or("submission");
        submission.with_file_name(format!("{stem}.report.json"))
    }
}

/// Progress callback: slides done, total, the id just finished.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// The image file of a test id.
pub fn slide_path(data: &Path, id: &str) -> Option<PathBuf> {
    ["tiff", "tif", "png", "jpg", "jpeg"]
        .iter()
        .map(|ext| data.join("test_images").join(format!("{id}.{ext}")))
        .find(|p| p.is_file())
}

/// The mask where the probability is above the threshold.
pub fn threshold(prob: &ProbMap, threshold: f32) -> Mask {
    let data = prob.data.iter().map(|&p| u8::from(p > threshold)).collect();
    Mask::from_row_major(prob.height, prob.width, data).expect("a map's data fills its size")
}

/// Predicts every row of `data/test.csv` and writes the submission (temp file, then rename).
pub fn predict_dir(
    engine: &mut Engine,
    opts: &PredictOptions,
    progress: Progress,
) -> Result<PredictReport, PredictError> {
    let start = Instant::now();
    let rows = schema::read_test(&opts.data.join("test.csv"))?;
    if rows.is_empty() {
        return Err(PredictError::Empty {
            data: opts.data.clone(),
        });
    }
    let truth = match (&opts.overlays, opts.data.join("truth.csv")) {
        (Some(_), t) if t.is_file() => score::read_truth(&t, Some(&opts.data.join("test.csv")))?
            .into_iter()
            .map(|r| (r.meta.id.clone(), r.rle))
            .collect(),
        _ => HashMap::new(),
    };
    for dir in [&opts.probs, &opts.overlays].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|cause| WriteError {
            path: dir.clone(),
            cause,
        })?;
    }

    let mut timings = Timings::default();
    let mut submission = Vec::with_capacity(rows.len());
    let mut skipped = Vec::new();
    let mut foreground = 0f64;
    let total = rows.len();
    std::thread::scope(|scope| -> Result<(), PredictError> {
        // One decoded slide waits while the models run: reading overlaps inference, memory stays
        // at two slides.
        let (tx, rx) = sync_channel::<(Result<RgbImage, SlideFailure>, Duration)>(1);
        let reader_rows = &rows;
        let data = &opts.data;
        let limits = opts.limits;
        scope.spawn(move || {
            for row in reader_rows {
                let t0 = Instant::now();
                let slide = read_row(data, row, limits);
                if tx.send((slide, t0.elapsed())).is_err() {
                    break; // the consumer stopped on an error
                }
            }
        });
        for (i, row) in rows.iter().enumerate() {
            let (slide, read_time) = rx.recv().expect("the reader sends one result per row");
            let mut t = Timings {
                read: read_time,
                ..Timings::default()
            };
            let outcome = slide.and_then(|slide| predict_one(engine, opts, row, &slide, truth.get(&row.id), &mut t));
            timings.add(&t);
            match outcome {
                Ok((rle, fraction)) => {
                    foreground += fraction;
                    submission.push(SubmissionRow {
                        id: row.id.clone(),
                        rle,
                    });
                }
                Err(cause) if opts.on_error == OnError::Skip => {
                    skipped.push(Skipped {
                        id: row.id.clone(),
                        reason: cause.to_string(),
                    });
                    submission.push(SubmissionRow {
                        id: row.id.clone(),
                        rle: String::new(),
                    });
                }
                Err(cause) => {
                    return Err(PredictError::Slide {
                        id: row.id.clone(),
                        cause,
                    })
                }
            }
            progress(i + 1, total, &row.id);
        }
        Ok(())
    })?;

    schema::write_rows(&opts.out, &submission)?;
    let wall = start.elapsed().as_secs_f64();
    let predicted = total - skipped.len();
    let report = PredictReport {
        submission: opts.out.clone(),
        slides: total,
        predicted,
        skipped,
        stages: timings
            .stages()
            .iter()
            .map(|(n, d)| StageTime {
                stage: n.to_string(),
                seconds: d.as_secs_f64(),
            })
            .collect(),
        wall_seconds: wall,
        slides_per_second: total as f64 / wall.max(1e-9),
        foreground_fraction: if predicted > 0 {
            foreground / predicted as f64
        } else {
            0.0
        },
        timings,
    };
    let json = serde_json::to_vec_pretty(&report).expect("the report serialises");
    let path = PredictReport::path_for(&opts.out);
    write_atomic(&path, |w| std::io::Write::write_all(w, &json))?;
    Ok(report)
}

fn read_row(data: &Path, row: &TestRow, limits: SlideLimits) -> Result<RgbImage, SlideFailure> {
    let path = slide_path(data, &row.id)
        .ok_or_else(|| SlideFailure::Missing(data.join("test_images").join(format!("{}.tiff", row.id))))?;
    let slide = read_slide(&path, limits)?;
    if (slide.width, slide.height) != (row.img_width as usize, row.img_height as usize) {
        // The RLE numbers pixels by the CSV's size: a mismatch would misplace every run.
        return Err(SlideFailure::Size {
            path,
            width: slide.width,
            height: slide.height,
            csv_width: row.img_width,
            csv_height: row.img_height,
        });
    }
    Ok(slide)
}

/// One slide: the RLE and the foreground fraction.
fn predict_one(
    engine: &mut Engine,
    opts: &PredictOptions,
    row: &TestRow,
    slide: &RgbImage,
    truth: Option<&String>,
    t: &mut Timings,
) -> Result<(String, f64), SlideFailure> {
    let info = SlideInfo {
        organ: row.organ,
        source: row.data_source,
        pixel_size: row.pixel_size,
    };
    let prob = engine.predict(slide, &info, t)?;
    let start = Instant::now();
    let mask = threshold(&prob, engine.threshold(&info));
    let encoded = rle::encode(&mask);
    t.rle += start.elapsed();
    if let Some(dir) = &opts.probs {
        let grey: Vec<u8> = prob
            .data
            .iter()
            .map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        mask_image::write_grey_png(&dir.join(format!("{}.png", row.id)), prob.width, prob.height, &grey)?;
    }
    if let Some(dir) = &opts.overlays {
        let truth = truth.and_then(|r| rle::decode(r, slide.height, slide.width).ok());
        let (w, h, rgb) = overlay(slide, &mask, truth.as_ref(), opts.overlay_size);
        mask_image::write_rgb_png(&dir.join(format!("{}.png", row.id)), w, h, &rgb)?;
    }
    Ok((
        encoded,
        mask.count() as f64 / (mask.height() * mask.width()).max(1) as f64,
    ))
}

/// Prediction outline in yellow, truth outline in cyan: both stand out on pink and purple stain.
const PRED_COLOUR: [u8; 3] = [255, 230, 0];
const TRUTH_COLOUR: [u8; 3] = [0, 220, 255];

/// The slide scaled to `max_side` with the outlines of the prediction (and truth) drawn on it.
pub fn overlay(slide: &RgbImage, pred: &Mask, truth: Option<&Mask>, max_side: usize) -> (usize, usize, Vec<u8>) {
    let scale = (max_side as f64 / slide.width.max(slide.height) as f64).min(1.0);
    let w = ((slide.width as f64 * scale).round() as usize).max(1);
    let h = ((slide.height as f64 * scale).round() as usize).max(1);
    let mut img = resize::resize_rgb(slide, w, h);
    for (mask, colour) in [(truth, TRUTH_COLOUR), (Some(pred), PRED_COLOUR)] {
        let Some(mask) = mask else { continue };
        // Nearest sampling of the mask at the overlay's size, then its boundary pixels.
        let small: Vec<bool> = (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                mask.get(y * slide.height / h, x * slide.width / w)
            })
            .collect();
        let inside = |y: isize, x: isize| {
            y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w && small[y as usize * w + x as usize]
        };
        for y in 0..h as isize {
            for x in 0..w as isize {
                // 8-neighbourhood: lines two pixels wide on diagonals, visible at any zoom.
                let edge = inside(y, x) && !(-1..=1).all(|dy| (-1..=1).all(|dx| inside(y + dy, x + dx)));
                if edge {
                    let i = (y as usize * w + x as usize) * 3;
                    img.data[i..i + 3].copy_from_slice(&colour);
                }
            }
        }
    }
    (w, h, img.data)
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
    fn overlays_outline_the_mask_and_keep_the_inside() {
        let mut slide = RgbImage::new(20, 10);
        slide.data.fill(100);
        let mut mask = Mask::zeros(10, 20);
        for y in 2..8 {
            for x in 5..15 {
                mask.set(y, x, true);
            }
        }
        let (w, h, rgb) = overlay(&slide, &mask, None, 100);
        assert_eq!((w, h), (20, 10));
        let px = |y: usize, x: usize| [rgb[(y * w + x) * 3], rgb[(y * w + x) * 3 + 1], rgb[(y * w + x) * 3 + 2]];
        assert_eq!(px(2, 5), PRED_COLOUR);
        assert_eq!(px(7, 14), PRED_COLOUR);
        assert_eq!(px(4, 8), [100; 3], "inside stays the slide");
        assert_eq!(px(0, 0), [100; 3], "outside stays the slide");
        let (w, h, _) = overlay(&slide, &mask, Some(&mask), 10);
        assert_eq!((w, h), (10, 5));
    }

    #[test]
    fn the_report_sits_beside_the_submission() {
        assert_eq!(
            PredictReport::path_for(Path::new("out/sub.csv")),
            Path::new("out/sub.report.json")
        );
    }
}
