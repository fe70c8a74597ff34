//! ONNX models as data: the protobuf types generated from the official `onnx.proto` (ONNX 1.23,
//! vendored in `proto/`), and a builder that writes graphs node by node.
//!
//! The models crate exports its networks through this; tests build small hand-made graphs with it.

pub mod fp16;
pub mod graph;
pub mod samples;

/// The protobuf messages of `onnx.proto`, as prost generates them.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use fp16::{to_fp16, Fp16Error, Fp16Report};
pub use graph::{read, to_bytes, write, Attr, Dim, GraphBuilder, ModelMeta, OnnxError};
