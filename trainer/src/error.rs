//! The trainer's error, and `.at(what, path)` to name the file an error came from.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

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

/// What can be wrong with a training slide, its label or the data options.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("slide {id}: no image train_images/{id}.tiff (or .tif/.png/.jpg) in {dir}")]
    Missing { id: String, dir: PathBuf },
    #[error("slide {id}: {cause}")]
    Slide {
        id: String,
        cause: ftu_formats::slide::SlideError,
    },
    #[error("slide {id}: its image is {got_w}×{got_h}, train.csv says {want_w}×{want_h}")]
    Size {
        id: String,
        got_w: usize,
        got_h: usize,
        want_w: u32,
        want_h: u32,
    },
    #[error("slide {id}: rle: {cause}")]
    Rle {
        id: String,
        cause: ftu_formats::mask::rle::RleError,
    },
    #[error("pseudo-labelled slide {id}: its label {path} is {got_w}×{got_h}, the slide {want_w}×{want_h}")]
    LabelSize {
        id: String,
        path: PathBuf,
        got_w: usize,
        got_h: usize,
        want_w: u32,
        want_h: u32,
    },
    #[error("pseudo-labelled slide {id} is also a training slide")]
    PseudoIsLabelled { id: String },
    #[error("stain target {id}: not a training slide id")]
    UnknownStainTarget { id: String },
    #[error("stain target {id}: too little tissue to estimate its stains")]
    NoStains { id: String },
    #[error("unknown normalisation {0:?}")]
    Norm(String),
}

impl DataError {
    /// A slide's image must be the size its CSV row gives (its RLE numbers pixels by it).
    pub fn check_size(id: &str, (got_w, got_h): (usize, usize), (want_w, want_h): (u32, u32)) -> Result<(), DataError> {
        if (got_w, got_h) == (want_w as usize, want_h as usize) {
            return Ok(());
        }
        Err(DataError::Size {
            id: id.to_string(),
            got_w,
            got_h,
            want_w,
            want_h,
        })
    }
}

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
