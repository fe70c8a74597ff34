//! Helpers the cross-crate tests share: synthetic Kaggle folders, ONNX Runtime, an engine from a
//! manifest, a whole `predict` run with the submission's ids next to test.csv's, a trainer
//! progress that prints nothing, and the docs' command lines ([`doc_commands`]).

pub mod doc_commands;

use std::path::{Path, PathBuf};

use ftu_formats::kaggle::Split;
use ftu_formats::manifest::Manifest;
use ftu_formats::schema;
use ftu_infer::engine::Engine;
use ftu_infer::predict::{self, PredictOptions, PredictReport};
use ftu_infer::session::{Runtime, RuntimeOptions};
use ftu_trainer::synth::{self, SynthConfig};
use ftu_trainer::train::FoldProgress;

/// A synthetic Kaggle folder `dir/data`: `train` labelled and `test` unlabelled slides of
/// `size`², all plain TIFF, from `seed`.
pub fn synth_data(dir: &Path, train: usize, test: usize, size: u32, seed: u64) -> PathBuf {
    let data = dir.join("data");
    let cfg = SynthConfig {
        train,
        test,
        size,
        seed,
        mixed_formats: false,
    };
    synth::generate(&data, &cfg, || {}).expect("synthetic data");
    data
}

/// ONNX Runtime with its default options (libonnxruntime from ORT_DYLIB_PATH; scripts/test.sh
/// installs it).
pub fn runtime() -> Runtime {
    Runtime::load(RuntimeOptions::default()).expect("ONNX Runtime (see scripts/test.sh)")
}

/// The engine of the manifest at `path`.
pub fn engine(path: &Path) -> Engine {
    let manifest = Manifest::load(path).unwrap_or_else(|e| panic!("{e}"));
    Engine::load(manifest, &runtime()).unwrap_or_else(|e| panic!("{e}"))
}

/// A `predict` run and what it wrote.
pub struct Predicted {
    pub report: PredictReport,
    /// The submission's ids, in its order.
    pub ids: Vec<String>,
    /// test.csv's ids, in its order.
    pub test_ids: Vec<String>,
}

/// Predicts `opts.data` with `engine` into `opts.out` and reads back the ids it wrote.
pub fn predict(engine: &mut Engine, opts: &PredictOptions) -> Predicted {
    let report = predict::predict_dir(engine, opts, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let test_ids = schema::read_test(&Split::Test.csv(&opts.data))
        .expect("test.csv")
        .into_iter()
        .map(|r| r.id)
        .collect();
    let ids = schema::read_submission(&opts.out)
        .expect("the submission")
        .into_iter()
        .map(|r| r.id)
        .collect();
    Predicted { report, ids, test_ids }
}

/// A trainer progress that prints nothing.
pub struct Quiet;

impl FoldProgress for Quiet {
    fn start(&mut self, _: &str, _: usize) {}
    fn tick(&mut self, _: &str) {}
    fn finish(&mut self, _: &str) {}
}
