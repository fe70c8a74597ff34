//! The subcommands of `ftu-infer`: each file holds one subcommand's options and its `run`;
//! `runtime` and `progress` hold what `predict`, `pseudo` and `inspect` share.

pub mod bundle;
pub mod inspect;
pub mod merge;
pub mod predict;
pub mod progress;
pub mod pseudo;
pub mod rle;
pub mod runtime;
pub mod score;
