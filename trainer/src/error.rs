//! The trainer's error, and `.at(what, path)` to name the file an error came from.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ftu_models::ModelError),
    #[error(transparent)]
    Write(#[from] ftu_formats::atomic::WriteError),
    #[error("{what} {path}: {cause}")]
    File {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("{0}")]
    Run(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Names the file an error came from.
pub(crate) trait At<T> {
    fn at(self, what: &'static str, path: &Path) -> Result<T>;
}

impl<T, E: std::fmt::Display> At<T> for std::result::Result<T, E> {
    fn at(self, what: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| TrainError::File {
            what,
            path: path.to_path_buf(),
            cause: e.to_string(),
        })
    }
}
