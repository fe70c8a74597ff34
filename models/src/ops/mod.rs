//! Kernels: custom ops over CPU storage (and their device-generic twins) that the layers and the
//! trainer's optimiser call, apart from the layers themselves.

pub mod adamw;
pub(crate) mod attention;
pub(crate) mod batch_norm;
pub(crate) mod conv;
mod cpu_values;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod pointwise;
pub(crate) mod pool;
mod precomputed;
pub(crate) mod upsample;

/// max |a − b| in float64, for the ops' tests against their references.
#[cfg(test)]
pub(crate) fn max_diff_f64(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    use candle_core::DType;
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}
