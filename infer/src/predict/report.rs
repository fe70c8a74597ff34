//! A run's report: what it predicted, reused and skipped, the time per stage and each tiled
//! slide's windows; printed by `ftu-infer predict` and written as JSON beside the output.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::Timings;
use crate::tiled::TileStats;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_sits_beside_the_submission() {
        assert_eq!(
            PredictReport::path_for(Path::new("out/sub.csv")),
            Path::new("out/sub.report.json")
        );
    }
}
