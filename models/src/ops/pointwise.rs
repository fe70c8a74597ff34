//! The exact GELU and the softmax over the last axis as CPU ops with their own backward passes.
//!
//! Candle's GELU is one op forward, but its backward is composed from about ten (square, negate,
//! exp, scale, multiply, erf, add, …), each a pass over the activation with an allocation, plus
//! the `zeros + grad` accumulation. Here the backward is one pass: dy·(Φ(x) + x·φ(x)). Both
//! passes take Φ and φ from a branch-free erfc and exp ([`simd`]), vectorised for the CPU's
//! widest instruction set; libm's `erff`, which candle calls, is scalar.
//! `candle_nn::ops::softmax` is five composed ops forward (max, subtract, exp, sum, divide) and
//! their gradients backward, and `softmax_last_dim` has no backward at all. Here the forward is one
//! pass per row and the backward one, dx = y·(dy − Σ dy·y), from the output the op keeps; both
//! sum in f64.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_values::{f32s, storage_f32s, zeros};
use crate::ops::simd;
use crate::{profile, Result};

/// Elements per parallel chunk of the pointwise passes.
const CHUNK: usize = 1 << 14;

/// 0.5·x·(1 + erf(x/√2)), as candle's `gelu_erf` computes it.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Gelu)?)
}

/// The softmax over the last axis of `x`.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

struct Gelu;

/// Φ(v), the standard normal's distribution function, from erfc: for v < 0 Φ(v) = erfc(|v|/√2)/2
/// directly, so that the left tail keeps its relative precision.
#[inline(always)]
fn normal_cdf(v: f32) -> f32 {
    let q = simd::erfc(v * std::f32::consts::FRAC_1_SQRT_2);
    if v >= 0.0 {
        1.0 - 0.5 * q
    } else {
        0.5 * q
    }
}

/// y = v·Φ(v).
#[inline(always)]
fn gelu_forward(y: &mut [f32], x: &[f32]) {
    for (y, &v) in y.iter_mut().zip(x) {
        *y = v * normal_cdf(v);
    }
}

/// dx = dy·(Φ(v) + v·φ(v)), φ(v) = e^(−v²/2)/√(2π).
#[inline(always)]
fn gelu_backward(dx: &mut [f32], x: &[f32], dy: &[f32]) {
    let inv_sqrt_2pi = (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2) as f32;
    for ((dx, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        let pdf = inv_sqrt_2pi * simd::exp(-0.5 * v * v);
        *dx = g * (normal_cdf(v) + v * pdf);
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "ftu-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name(), "input")?;
        let mut y = zeros(x.len());
        profile::scope("gelu forward", 2 * x.len(), || {
            y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
                simd::widest(
                    #[inline(always)]
                    || gelu_forward(y, x),
                )
            });
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xs, xl) = arg.storage_and_layout();
        let x = storage_f32s(&xs, xl, self.name(), "input")?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let dy = storage_f32s(&gs, gl, self.name(), "gradient")?;
        if dy.len() != x.len() {
            candle_core::bail!(
                "ftu-gelu: a gradient of {} values for an input of {}",
                dy.len(),
                x.len()
            )
        }
        let mut dx = zeros(x.len());
        profile::scope("gelu backward", 3 * x.len(), || {
            dx.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .zip(dy.par_chunks(CHUNK))
                .for_each(|((dx, x), dy)| {
                    simd::widest(
                        #[inline(always)]
                        || gelu_backward(dx, x, dy),
                    )
                });
        });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "ftu-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name(), "input")?;
        let c = layout.shape().dims().last().copied().unwrap_or(0);
        if c == 0 {
            candle_core::bail!("ftu-softmax: the last axis is empty")
        }
        let mut y = zeros(x.len());
        profile::scope("softmax forward", 2 * x.len(), || {
            y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(y, x)| {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // Sums in f64: over thousands of keys, an f32 sum is off by 1e-4.
                let mut sum = 0f64;
                for (y, &v) in y.iter_mut().zip(x) {
                    *y = (v - max).exp();
                    sum += *y as f64;
                }
                let inv = (1.0 / sum) as f32;
                for y in y.iter_mut() {
                    *y *= inv;
                }
            });
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (ys, yl) = res.storage_and_layout();
        let y = storage_f32s(&ys, yl, self.name(), "output")?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let dy = storage_f32s(&gs, gl, self.name(), "gradient")?;
        let c = res.dims().last().copied().unwrap_or(1);
        if dy.len() != y.len() {
            candle_core::bail!(
                "ftu-softmax: a gradient of {} values for an output of {}",
                dy.len(),
                y.len()
            )
        }
        let mut dx = zeros(y.len());
        profile::scope("softmax backward", 3 * y.len(), || {
            dx.par_chunks_mut(c)
                .zip(y.par_chunks(c))
                .zip(dy.par_chunks(c))
                .for_each(|((dx, y), dy)| {
                    let dot = y.iter().zip(dy).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
                    for ((dx, &p), &g) in dx.iter_mut().zip(y).zip(dy) {
                        *dx = p * (g - dot);
                    }
                });
        });
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_diff_f64;
    use candle_core::{DType, Device, Var, D};

    /// The GELU's kernels at every instruction-set level against f64 over [−10, 10]: values and
    /// gradients within 2·10⁻⁶ relative or 10⁻⁷ absolute, the left tail included.
    #[test]
    fn gelu_kernels_match_f64_at_every_level() {
        let x: Vec<f32> = (0..40_001).map(|i| -10.0 + 20.0 * i as f32 / 40_000.0).collect();
        let dy: Vec<f32> = x.iter().map(|v| 1.0 - 0.1 * v).collect();
        let erf = |v: f64| {
            let t = Tensor::new(&[v], &Device::Cpu).unwrap();
            t.erf().unwrap().to_vec1::<f64>().unwrap()[0]
        };
        for level in simd::SimdLevel::available() {
            let (mut y, mut dx) = (zeros(x.len()), zeros(x.len()));
            simd::at(
                level,
                #[inline(always)]
                || {
                    gelu_forward(&mut y, &x);
                    gelu_backward(&mut dx, &x, &dy);
                },
            );
            for i in (0..x.len()).step_by(7) {
                let v = x[i] as f64;
                let cdf = 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let (want_y, want_dx) = (v * cdf, dy[i] as f64 * (cdf + v * pdf));
                let ok = |got: f32, want: f64| (got as f64 - want).abs() <= (2e-6 * want.abs()).max(1e-7);
                assert!(ok(y[i], want_y), "{}: gelu({v}) = {}, not {want_y}", level.name(), y[i]);
                assert!(
                    ok(dx[i], want_dx),
                    "{}: gelu'({v}) = {}, not {want_dx}",
                    level.name(),
                    dx[i]
                );
            }
        }
    }

    /// Values and gradients against candle's own ops in f64 (`gelu_erf`; the composed softmax),
    /// on rows with a large offset (softmax must subtract the maximum) and more elements than a chunk.
    #[test]
    fn values_and_gradients_match_candles_ops_in_f64() {
        let dev = Device::Cpu;
        type Op = fn(&Tensor) -> Result<Tensor>;
        let reference = |name: &str, x: &Tensor| match name {
            "gelu" => x.gelu_erf().unwrap(),
            _ => candle_nn::ops::softmax(x, D::Minus1).unwrap(),
        };
        let ops: [(&str, Op); 2] = [("gelu", gelu), ("softmax", softmax_last_dim)];
        for (name, op) in ops {
            for dims in [(3, 7), (9, CHUNK / 7 + 5)] {
                let x = (Tensor::randn(0f32, 3.0, dims, &dev).unwrap() + 20.0).unwrap();
                let x = if name == "gelu" { (x - 20.0).unwrap() } else { x };
                let x = Var::from_tensor(&x).unwrap();
                let x64 = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
                let ours = op(&x).unwrap();
                let theirs = reference(name, &x64);
                let top = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(
                    max_diff_f64(&ours, &theirs) <= 1e-6 * top.max(1.0),
                    "{name} {dims:?}: values"
                );
                let w = Tensor::randn(0f32, 1.0, dims, &dev).unwrap();
                let g = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let w64 = w.to_dtype(DType::F64).unwrap();
                let g64 = (&theirs * &w64).unwrap().sum_all().unwrap().backward().unwrap();
                let (a, b) = (g.get(&x).unwrap(), g64.get(&x64).unwrap());
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                let diff = max_diff_f64(a, b);
                // candle's f64 GELU gradient uses 0.398942 for 1/√(2π) (relative error 7e-7).
                assert!(
                    diff <= 2e-6 * scale.max(1.0),
                    "{name} {dims:?}: gradient off by {diff:.2e}"
                );
            }
        }
    }
}
