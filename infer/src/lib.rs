//! ftu-infer: the inference engine of ftu — ONNX Runtime sessions, the ensemble over groups of
//! models, tiled whole-slide prediction, mask post-processing, the `predict`
//! loop and its CLI. The formats it reads and writes live in `ftu-formats`; no Candle here.

pub mod bundle;
pub mod cli;
pub mod engine;
pub mod ensemble;
pub mod merge;
pub mod predict;
pub mod pseudo;
pub mod score;
pub mod session;
pub mod slides;
pub mod tiled;
