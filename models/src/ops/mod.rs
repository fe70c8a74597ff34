//! Kernels: custom ops over CPU storage (and their device-generic twins) that the layers and the
//! trainer's optimiser call, apart from the layers themselves.

pub mod adamw;
pub(crate) mod attention;
pub(crate) mod batch_norm;
pub(crate) mod bias;
pub(crate) mod conv;
mod cpu_values;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod pointwise;
pub(crate) mod pool;
mod precomputed;
pub mod simd;
pub(crate) mod upsample;
pub(crate) mod window_attention;

/// max |a − b| in float64, for the ops' tests against their references.
#[cfg(test)]
pub(crate) fn max_diff_f64(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    use candle_core::DType;
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

/// Float64 copies of `vars`, for a reference computation of the ops' tests.
#[cfg(test)]
pub(crate) fn f64_vars(vars: &[&candle_core::Var]) -> Vec<candle_core::Var> {
    vars.iter()
        .map(|v| candle_core::Var::from_tensor(&v.to_dtype(candle_core::DType::F64).unwrap()).unwrap())
        .collect()
}

/// The gradients of Σ weights⊙`ours` and of Σ weights⊙`reference` (f64) with random weights, for
/// each (name, f32 variable, its f64 copy): each within 1e-5 of the largest reference gradient
/// (at least 1). `what` names the case in the message.
#[cfg(test)]
pub(crate) fn assert_gradients_match(
    ours: &candle_core::Tensor,
    reference: &candle_core::Tensor,
    vars: &[(&str, &candle_core::Var, &candle_core::Var)],
    what: &str,
) {
    use candle_core::{DType, Tensor};
    let weights = Tensor::randn(0f32, 1.0, ours.shape(), ours.device()).unwrap();
    let g_ours = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = (reference * weights.to_dtype(DType::F64).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, ours, theirs) in vars {
        let (a, r) = (g_ours.get(ours).unwrap(), g_ref.get(theirs).unwrap());
        let top = r.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let diff = max_diff_f64(a, r);
        assert!(diff <= 1e-5 * top.max(1.0), "{what}: {name} gradient off by {diff:.2e}");
    }
}
