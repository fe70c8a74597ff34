//! The subcommands of `ftu-train` that take more than a few lines: each file holds one
//! subcommand's options and its `run`.

pub mod archs;
pub mod ensemble;
pub mod export;
pub mod synth;
pub mod synth_wsi;
pub mod train;
