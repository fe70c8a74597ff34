//! ftu training: synthetic Kaggle-layout data, k-fold Candle training, ONNX export of folds, the
//! ensemble manifest for ftu-infer.

pub mod augment;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod eval;
pub mod export;
pub mod fold;
pub mod hub;
pub mod losses;
pub mod memory;
pub mod optim;
pub mod plots;
pub mod run_dir;
pub mod synth;
pub mod train;
