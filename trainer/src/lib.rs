//! ftu-trainer: synthetic Kaggle-layout data now; k-fold Candle training lands here next.
//! Shared formats (RLE, CSV, slides) come from ftu-infer.

pub mod synth;
