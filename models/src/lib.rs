//! ftu architectures: encoder × decoder segmentation networks whose layers each hold their Candle
//! forward pass and their ONNX export side by side, so the trained network is the served network.

pub mod ctx;
pub mod decoders;
pub mod encoders;
pub mod export;
pub mod heads;
pub mod layers;
pub mod model;
pub mod ops;
pub mod profile;
pub mod registry;
pub mod store;
pub mod weights;

pub use ctx::{Ctx, Precision};
pub use export::Exporter;
pub use model::{ExportMeta, Outputs, Segmenter};
pub use registry::{Arch, ArchConfig};
pub use store::Store;

/// Everything that can go wrong building, running, loading or exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Onnx(#[from] ftu_onnx::OnnxError),
    #[error("unknown architecture {name:?}: expected DECODER-ENCODER with a decoder of {decoders} and an encoder of {encoders}")]
    UnknownArch {
        name: String,
        decoders: String,
        encoders: String,
    },
    #[error("architecture config: {0}")]
    Config(String),
    #[error("cannot read weights {path}: {cause}")]
    ReadWeights {
        path: std::path::PathBuf,
        cause: candle_core::Error,
    },
    #[error("weights {path} do not fit {arch}:\n{report}")]
    WeightsMismatch {
        path: std::path::PathBuf,
        arch: String,
        report: String,
    },
    #[error("input {what}: {expected}")]
    Input { what: String, expected: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
