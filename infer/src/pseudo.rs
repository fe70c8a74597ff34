//! `ftu-infer pseudo`: soft labels for unlabelled slides, for `ftu-train train --pseudo`. The
//! ensemble predicts a Kaggle-layout folder's test.csv as `predict` does, each slide's probability
//! map is kept as an 8-bit image (round(p·255), PNG, or a tiled TIFF for tiled manifests) in
//! OUT/labels/, and OUT/pseudo.csv names each slide's image and label with its metadata. (The
//! command lives here, not in the trainer, because running ONNX ensembles is the engine's job and
//! the trainer carries no ONNX Runtime.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ftu_formats::kaggle::Split;
use ftu_formats::schema::{self, PseudoRow};

use crate::engine::Engine;
use crate::predict::{predict_dir, PredictError, PredictOptions, PredictReport, SlideProgress};

pub struct PseudoReport {
    pub predict: PredictReport,
    /// OUT/pseudo.csv.
    pub csv: PathBuf,
    /// Slides with a label (skipped slides have none and are left out).
    pub labelled: usize,
}

/// Predicts `opts.data`'s test.csv (its `out`, `probs` replaced: OUT/predictions.csv and
/// OUT/labels/) and writes OUT/pseudo.csv, with paths relative to OUT for labels and absolute
/// ones for images.
pub fn pseudo_labels(
    engine: &mut Engine,
    opts: &PredictOptions,
    out: &Path,
    progress: SlideProgress,
) -> Result<PseudoReport, PredictError> {
    let opts = PredictOptions {
        out: out.join("predictions.csv"),
        probs: Some(out.join("labels")),
        ..opts.clone()
    };
    let report = predict_dir(engine, &opts, progress)?;
    let skipped: HashSet<&str> = report.skipped.iter().map(|s| s.id.as_str()).collect();
    let data = std::path::absolute(&opts.data).unwrap_or_else(|_| opts.data.clone());
    let mut rows = Vec::new();
    for (i, meta) in schema::read_test(&Split::Test.csv(&opts.data))?.into_iter().enumerate() {
        if skipped.contains(meta.id.as_str()) || !opts.shard.is_none_or(|s| s.holds(i)) {
            continue;
        }
        let label = ["png", "tiff"]
            .iter()
            .map(|ext| PathBuf::from("labels").join(format!("{}.{ext}", meta.id)))
            .find(|p| out.join(p).is_file());
        let (Some(label), Some(image)) = (label, Split::Test.find_image(&data, &meta.id)) else {
            continue;
        };
        rows.push(PseudoRow::new(&meta, image, label));
    }
    let csv = out.join("pseudo.csv");
    schema::write_rows(&csv, &rows)?;
    Ok(PseudoReport {
        predict: report,
        csv,
        labelled: rows.len(),
    })
}
