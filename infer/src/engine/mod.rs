//! The engine: one ONNX Runtime session per manifest model, checked against what the manifest
//! says about it, and one group's maps — resize, normalise, TTA as one batch, invert, activate,
//! average the group's models, resize back. Groups are combined in [`crate::ensemble`] (a slide
//! in memory) and [`crate::tiled`] (a slide read in windows).

pub mod describe;
mod groups;
mod load;
mod planes;
mod record;
mod run;
mod signature;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ndarray::Array4;
use ort::session::Session;

use crate::session::{Element, ModelInfo, RuntimeError};
use ftu_formats::manifest::{Manifest, ModelSpec, Normalisation};
use ftu_formats::organ::{DataSource, Organ};

pub use record::Replay;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("manifest {field} ({path}): {message}")]
    Unfit {
        field: String,
        path: PathBuf,
        message: String,
    },
    #[error("manifest {field} ({path}): running the model failed: {message}")]
    Run {
        field: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "manifest {field} ({path}): {count} of {total} values of output `{output}` are NaN or infinite \
         (an overflow, e.g. in fp16, or a broken export); no mask is made from them"
    )]
    NonFinite {
        field: String,
        path: PathBuf,
        output: String,
        count: usize,
        total: usize,
    },
    #[error(
        "--bench-limit: the batches outgrew the recording limit ({kept} kept, {mib_left} MiB left); bench fewer slides"
    )]
    RecordingFull { kept: usize, mib_left: usize },
    #[error(transparent)]
    Slide(#[from] ftu_formats::slide::SlideError),
    /// What a model states about itself (its `ftu.*` metadata) leaves its input undefined, or,
    /// when loading strictly, contradicts the manifest.
    #[error("manifest {manifest}: {message}")]
    Described { manifest: PathBuf, message: String },
    #[error("no model in the manifest serves organ {0}: give one without `organs`, or add {0} to a model's organs")]
    NoModel(Organ),
}

/// What the engine needs to know about a slide besides its pixels.
#[derive(Debug, Clone, Copy)]
pub struct SlideContext {
    pub organ: Organ,
    pub source: DataSource,
    pub pixel_size: f64,
}

/// A probability map at slide resolution, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbMap {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Wall time per stage, summed over slides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub read: Duration,
    pub resize: Duration,
    pub tta: Duration,
    pub model: Duration,
    pub resize_back: Duration,
    pub rle: Duration,
}

impl Timings {
    pub fn stages(&self) -> [(&'static str, Duration); 6] {
        [
            ("read", self.read),
            ("resize", self.resize),
            ("normalise+tta", self.tta),
            ("model", self.model),
            ("resize back", self.resize_back),
            ("threshold+rle", self.rle),
        ]
    }

    pub fn add(&mut self, other: &Timings) {
        self.read += other.read;
        self.resize += other.resize;
        self.tta += other.tta;
        self.model += other.model;
        self.resize_back += other.resize_back;
        self.rle += other.rle;
    }
}

pub(crate) fn timed<T>(slot: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *slot += start.elapsed();
    out
}

/// A model with its session and what its signature allows.
struct LoadedModel {
    spec: ModelSpec,
    session: Session,
    info: ModelInfo,
    /// What its metadata says about it, and the normalisation it is fed (the manifest's, or the
    /// model's own when the manifest gives none).
    described: describe::Described,
    norm: Normalisation,
    input: String,
    output: String,
    /// The input's and output's element types (float32, float16 or bfloat16): the batch is
    /// converted to the input's, the output read as float32 whatever its own.
    input_element: Element,
    output_element: Element,
    /// A fixed batch dimension (often 1 in exports without dynamic axes): batches are split to it.
    batch: Option<usize>,
    /// Every batch run, kept for [`Engine::replay`] while recording.
    recorded: Vec<Array4<f32>>,
}

pub struct Engine {
    manifest: Manifest,
    groups: Vec<Vec<LoadedModel>>,
    /// While recording: the bytes of batches still allowed to be kept, and whether one was not.
    recording: Option<record::Recording>,
    /// Tiled groups read windows from the pyramid level at their scale when a slide has one.
    read_levels: bool,
    /// Where the manifest and what the models state disagree, one sentence each.
    warnings: Vec<String>,
}

impl Engine {
    /// Where the manifest and what its models state disagree (a norm, a training size far from
    /// the group's), one sentence each naming the field, the model and both values.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Each model's manifest field, what its metadata says, and the normalisation it is fed.
    pub fn described(&self) -> impl Iterator<Item = (&ModelSpec, &describe::Described, &Normalisation)> {
        self.groups.iter().flatten().map(|m| (&m.spec, &m.described, &m.norm))
    }

    /// Whether tiled groups read a pyramidal slide's windows from the coarsest level that still
    /// has the group's resolution (the default), or always from the full-resolution page.
    pub fn set_read_levels(&mut self, on: bool) {
        self.read_levels = on;
    }

    pub fn read_levels(&self) -> bool {
        self.read_levels
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Each model's manifest field and what ONNX Runtime reported about it.
    pub fn models(&self) -> impl Iterator<Item = (&ModelSpec, &ModelInfo)> {
        self.groups.iter().flatten().map(|m| (&m.spec, &m.info))
    }

    /// The threshold for a slide.
    pub fn threshold(&self, info: &SlideContext) -> f32 {
        self.manifest.thresholds.get(info.organ, info.source)
    }

    /// Whether any model of group `gi` serves this organ.
    pub fn group_serves(&self, gi: usize, organ: Organ) -> bool {
        self.groups[gi].iter().any(|m| m.spec.serves(organ))
    }
}
