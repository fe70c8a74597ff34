//! ftu-trainer: synthetic Kaggle-layout data and ONNX export now; k-fold Candle training next.
//! Shared formats (RLE, CSV, slides) come from ftu-infer.

pub mod export;
pub mod synth;
