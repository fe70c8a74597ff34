//! Kernels: custom ops over CPU storage (and their device-generic twins) that the layers and the
//! trainer's optimiser call, apart from the layers themselves.

pub mod adamw;
pub(crate) mod batch_norm;
pub(crate) mod conv;
mod cpu_values;
pub(crate) mod layer_norm;
pub(crate) mod pointwise;
pub(crate) mod pool;
mod precomputed;
pub(crate) mod upsample;
