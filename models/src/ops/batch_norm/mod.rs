//! Training-mode BatchNorm, optionally followed by a residual add and an activation, as one CPU
//! op with its own backward pass.
//!
//! Composed from candle ops, BatchNorm → add → ReLU costs about fifteen passes over the activation
//! forwards, more backwards, and every gradient of every step is accumulated by candle as
//! `zeros + grad` (two more passes and an allocation). Here the forward is two passes (per-plane
//! sums, then the affine map with the residual and the activation) and the backward two (the
//! per-channel sums of the activation's gradient, then the input gradient), each parallel over
//! (image, channel) planes; per-plane partial sums are added in a fixed order, so results do not
//! depend on the thread count.

pub(crate) mod generic;

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_values::{f32s, storage_f32s};
use crate::ops::simd::{self, LANES};
use crate::profile;
use crate::Result;

/// The name errors give.
const OP: &str = "ftu-batch-norm";

/// The activation applied after the normalisation (and the residual add).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Identity,
    Relu,
    Silu,
}

/// Per-channel batch mean and biased variance, as the forward pass used them.
#[derive(Debug, Clone)]
pub(crate) struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// `act(γ·(x − mean)/√(var + eps) + β [+ residual])` with the batch's statistics of `x`
/// (N, C, H, W); returns the statistics for the running averages.
pub(crate) fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    residual: Option<&Tensor>,
    act: Act,
) -> Result<(Tensor, BatchStats)> {
    let stats = Arc::new(Mutex::new(None));
    let op = FusedBatchNorm {
        eps: eps as f32,
        act,
        stats: stats.clone(),
    };
    // γ and β as one argument, so that a residual fits the three a custom op takes.
    let params = Tensor::cat(&[gamma, beta], 0)?;
    let x = x.contiguous()?;
    let y = match residual {
        Some(r) => {
            if r.shape() != x.shape() {
                return Err(crate::ModelError::Input {
                    what: format!("residual of {:?}", r.dims()),
                    expected: format!("the normalised tensor's shape {:?}", x.dims()),
                });
            }
            x.apply_op3(&params, &r.contiguous()?, op)?
        }
        None => x.apply_op2(&params, op)?,
    };
    let stats = stats
        .lock()
        .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))?
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("batch-norm forward left no statistics".into()))?;
    Ok((y, stats))
}

struct FusedBatchNorm {
    eps: f32,
    act: Act,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

/// (N, C, plane) of an NCHW shape.
fn split(shape: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, h, w) = shape.dims4()?;
    Ok((n, c, h * w))
}

/// Per channel, the sums of the per-plane pairs, images in order.
fn per_channel(partial: &[(f64, f64)], c: usize) -> Vec<(f64, f64)> {
    let mut sums = vec![(0f64, 0f64); c];
    for (nc, (a, b)) in partial.iter().enumerate() {
        sums[nc % c].0 += a;
        sums[nc % c].1 += b;
    }
    sums
}

/// `Σ a` and `Σ b` over the pairs (a, b) = `f(x, y)` of `xs` and `ys` side by side: [`LANES`]
/// f32 lanes within blocks of 1024 values (so the loop vectorises; a plain f32 sum is
/// sequential), the blocks added in f64.
#[inline(always)]
fn lane_sums(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut sa, mut sb) = (0f64, 0f64);
    for (xb, yb) in xs.chunks(1024).zip(ys.chunks(1024)) {
        let (mut la, mut lb) = ([0f32; LANES], [0f32; LANES]);
        let (xc, yc) = (xb.chunks_exact(LANES), yb.chunks_exact(LANES));
        let (xr, yr) = (xc.remainder(), yc.remainder());
        for (x, y) in xc.zip(yc) {
            for l in 0..LANES {
                let (a, b) = f(x[l], y[l]);
                la[l] += a;
                lb[l] += b;
            }
        }
        for (&x, &y) in xr.iter().zip(yr) {
            let (a, b) = f(x, y);
            la[0] += a;
            lb[0] += b;
        }
        sa += la.iter().map(|&v| v as f64).sum::<f64>();
        sb += lb.iter().map(|&v| v as f64).sum::<f64>();
    }
    (sa, sb)
}

/// `Σ g` and `Σ g·(x − mean)` over a plane.
#[inline(always)]
fn sums(g: &[f32], x: &[f32], mean: f32) -> (f64, f64) {
    lane_sums(g, x, |g, x| (g, g * (x - mean)))
}

/// A plane's mean and its sum of squared deviations M₂: the sum, then the deviations from that
/// mean rounded to f32, corrected by their own sum (so the rounding costs nothing).
#[inline(always)]
fn moments(p: &[f32]) -> (f64, f64) {
    let len = p.len() as f64;
    let (sum, _) = lane_sums(p, p, |v, _| (v, 0.0));
    let m = (sum / len) as f32;
    let (d, d2) = lane_sums(p, p, |v, _| (v - m, (v - m) * (v - m)));
    (m as f64 + d / len, d2 - d * d / len)
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + simd::exp(-z))
}

impl Act {
    #[inline(always)]
    fn apply(self, z: f32) -> f32 {
        match self {
            Act::Identity => z,
            Act::Relu => z.max(0.0),
            Act::Silu => z * sigmoid(z),
        }
    }
}

/// One plane of the forward's affine map, residual add and activation; one loop per activation
/// (so that each vectorises).
#[inline(always)]
fn forward_plane(dst: &mut [f32], src: &[f32], residual: Option<&[f32]>, m: f32, scale: f32, b: f32, act: Act) {
    #[inline(always)]
    fn run(
        dst: &mut [f32],
        src: &[f32],
        residual: Option<&[f32]>,
        m: f32,
        scale: f32,
        b: f32,
        act: impl Fn(f32) -> f32,
    ) {
        match residual {
            Some(r) => {
                for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                    *d = act((s - m) * scale + b + r);
                }
            }
            None => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = act((s - m) * scale + b);
                }
            }
        }
    }
    match act {
        Act::Identity => run(dst, src, residual, m, scale, b, |z| Act::Identity.apply(z)),
        Act::Relu => run(dst, src, residual, m, scale, b, |z| Act::Relu.apply(z)),
        Act::Silu => run(dst, src, residual, m, scale, b, |z| Act::Silu.apply(z)),
    }
}

/// One plane of the activation's input gradient dz from dy (and the output for ReLU, the input
/// for SiLU, whose pre-activation z is recomputed).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn activation_gradient_plane(
    dz: &mut [f32],
    dy: &[f32],
    ys: &[f32],
    xs: &[f32],
    rs: Option<&[f32]>,
    (mean, scale, beta): (f32, f32, f32),
    act: Act,
) {
    match act {
        Act::Identity => dz.copy_from_slice(dy),
        Act::Relu => {
            for ((d, &g), &y) in dz.iter_mut().zip(dy).zip(ys) {
                *d = if y > 0.0 { g } else { 0.0 };
            }
        }
        Act::Silu => {
            let silu = |g: f32, z: f32| {
                let sg = sigmoid(z);
                g * sg * (1.0 + z * (1.0 - sg))
            };
            match rs {
                Some(rs) => {
                    for (((d, &g), &x), &r) in dz.iter_mut().zip(dy).zip(xs).zip(rs) {
                        *d = silu(g, (x - mean) * scale + beta + r);
                    }
                }
                None => {
                    for ((d, &g), &x) in dz.iter_mut().zip(dy).zip(xs) {
                        *d = silu(g, (x - mean) * scale + beta);
                    }
                }
            }
        }
    }
}

impl FusedBatchNorm {
    fn forward(
        &self,
        x: &[f32],
        params: &[f32],
        residual: Option<&[f32]>,
        shape: &Shape,
    ) -> candle_core::Result<CpuStorage> {
        let (n, c, plane) = split(shape)?;
        if params.len() != 2 * c {
            candle_core::bail!("ftu-batch-norm: {} weights and biases for {c} channels", params.len())
        }
        let (gamma, beta) = params.split_at(c);
        // Per plane its mean and M₂, combined per channel by Chan's formula (equal counts):
        // M₂ = Σ M₂ₚ + plane·Σ (meanₚ − mean)².
        let moments: Vec<(f64, f64)> = x
            .par_chunks(plane)
            .map(|p| {
                simd::widest(
                    #[inline(always)]
                    || moments(p),
                )
            })
            .collect();
        let count = (n * plane) as f64;
        let mut mean = vec![0f64; c];
        for (nc, &(m, _)) in moments.iter().enumerate() {
            mean[nc % c] += m / n as f64;
        }
        let mut m2 = vec![0f64; c];
        for (nc, &(m, q)) in moments.iter().enumerate() {
            let d = m - mean[nc % c];
            m2[nc % c] += q + plane as f64 * d * d;
        }
        let var: Vec<f64> = m2.iter().map(|&q| (q / count).max(0.0)).collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
            let ch = nc % c;
            // The mean is subtracted before scaling: folded into one shift, a channel whose mean
            // is large against its spread would lose its digits to cancellation.
            let scale = gamma[ch] / (var[ch] as f32 + self.eps).sqrt();
            let (m, b) = (mean[ch] as f32, beta[ch]);
            let src = &x[nc * plane..(nc + 1) * plane];
            let r = residual.map(|r| &r[nc * plane..(nc + 1) * plane]);
            let act = self.act;
            simd::widest(
                #[inline(always)]
                || forward_plane(dst, src, r, m, scale, b, act),
            )
        });
        let stats = BatchStats {
            mean: mean.iter().map(|&m| m as f32).collect(),
            var: var.iter().map(|&v| v as f32).collect(),
        };
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))? = Some(stats);
        Ok(CpuStorage::F32(y))
    }

    /// The gradients for x, (γ, β) and the residual when there is one.
    fn backward(
        &self,
        x: &Tensor,
        params: &Tensor,
        residual: Option<&Tensor>,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch-norm backward before forward".into()))?;
        let (n, c, plane) = split(x.shape())?;
        let count = (n * plane) as f64;
        let params = params.to_vec1::<f32>()?;
        let (gamma, beta) = params.split_at(c);
        let inv: Vec<f32> = stats.var.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect();
        let grad = grad.contiguous()?;
        let act = self.act;
        // The activation's input gradient dz, per plane (written out: it is the residual's
        // gradient, and the second pass reads it instead of recomputing it).
        let mut dz = vec![0f32; x.elem_count()];
        let (x_storage, x_layout) = x.storage_and_layout();
        let xs = storage_f32s(&x_storage, x_layout, OP, "input")?;
        let (dy_storage, dy_layout) = grad.storage_and_layout();
        let dy = storage_f32s(&dy_storage, dy_layout, OP, "gradient")?;
        let (y_storage, y_layout) = y.storage_and_layout();
        let ys = storage_f32s(&y_storage, y_layout, OP, "output")?;
        let r_guard = residual.map(|r| r.storage_and_layout());
        let rs = match &r_guard {
            Some((storage, layout)) => Some(storage_f32s(storage, layout, OP, "residual")?),
            None => None,
        };
        let partial: Vec<(f64, f64)> = dz
            .par_chunks_mut(plane)
            .enumerate()
            .map(|(nc, dz)| {
                let ch = nc % c;
                let range = nc * plane..(nc + 1) * plane;
                let (xs, dy, ys) = (&xs[range.clone()], &dy[range.clone()], &ys[range.clone()]);
                let rs = rs.map(|r| &r[range.clone()]);
                let mean = stats.mean[ch];
                let scale = gamma[ch] * inv[ch];
                // The activation's gradient first (one loop per activation, so each vectorises),
                // then the two sums: f32 lanes within blocks, f64 across blocks.
                let (s, sx) = simd::widest(
                    #[inline(always)]
                    || {
                        activation_gradient_plane(dz, dy, ys, xs, rs, (mean, scale, beta[ch]), act);
                        sums(dz, xs, mean)
                    },
                );
                (s, sx * inv[ch] as f64)
            })
            .collect();
        let sums = per_channel(&partial, c);
        let mut dx = vec![0f32; x.elem_count()];
        dx.par_chunks_mut(plane)
            .zip(dz.par_chunks(plane))
            .enumerate()
            .for_each(|(nc, (dst, dz))| {
                let ch = nc % c;
                let (mean_dz, mean_dz_xhat) = ((sums[ch].0 / count) as f32, (sums[ch].1 / count) as f32);
                let (mean, inv) = (stats.mean[ch], inv[ch]);
                let k = gamma[ch] * inv;
                let xs = &xs[nc * plane..(nc + 1) * plane];
                simd::widest(
                    #[inline(always)]
                    || {
                        for ((d, &xv), &g) in dst.iter_mut().zip(xs).zip(dz) {
                            let xhat = (xv - mean) * inv;
                            *d = k * (g - mean_dz - xhat * mean_dz_xhat);
                        }
                    },
                )
            });
        let dev = x.device();
        let dparams: Vec<f32> = sums
            .iter()
            .map(|&(_, sx)| sx as f32)
            .chain(sums.iter().map(|&(s, _)| s as f32))
            .collect();
        let dr = match residual {
            Some(_) => Some(Tensor::from_vec(dz, x.shape(), dev)?),
            None => None,
        };
        Ok((
            Tensor::from_vec(dx, x.shape(), dev)?,
            Tensor::from_vec(dparams, 2 * c, dev)?,
            dr,
        ))
    }
}

impl CustomOp2 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "ftu-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, params) = (f32s(s1, l1, OP, "input")?, f32s(s2, l2, OP, "weight and bias")?);
        let y = profile::scope("batch_norm+act forward", 3 * x.len(), || {
            self.forward(x, params, None, l1.shape())
        })?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, _) = profile::scope("batch_norm+act backward", 7 * x.elem_count(), || {
            self.backward(x, params, None, y, grad)
        })?;
        Ok((Some(dx), Some(dp)))
    }
}

impl CustomOp3 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "ftu-batch-norm-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, params) = (f32s(s1, l1, OP, "input")?, f32s(s2, l2, OP, "weight and bias")?);
        let r = f32s(s3, l3, OP, "residual")?;
        let y = profile::scope("batch_norm+add+act forward", 4 * x.len(), || {
            self.forward(x, params, Some(r), l1.shape())
        })?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        residual: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, dr) = profile::scope("batch_norm+add+act backward", 7 * x.elem_count(), || {
            self.backward(x, params, Some(residual), y, grad)
        })?;
        Ok((Some(dx), Some(dp), dr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// BatchNorm → add → activation composed from candle ops: the device-generic path.
    fn composed(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        r: Option<&Tensor>,
        act: Act,
    ) -> (Tensor, Tensor, Tensor) {
        let c = gamma.elem_count();
        let mean = x.mean_keepdim((0, 2, 3)).unwrap();
        let var = x
            .broadcast_sub(&mean)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_keepdim((0, 2, 3))
            .unwrap();
        let mut z = x
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(&var + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        if let Some(r) = r {
            z = (z + r).unwrap();
        }
        let y = match act {
            Act::Identity => z,
            Act::Relu => z.relu().unwrap(),
            Act::Silu => z.silu().unwrap(),
        };
        (y, mean, var)
    }

    /// Values, statistics and every gradient equal the composed ops, for each activation, with
    /// and without a residual.
    #[test]
    fn fused_batch_norm_matches_the_composed_one() {
        let dev = Device::Cpu;
        for act in [Act::Identity, Act::Relu, Act::Silu] {
            for with_residual in [false, true] {
                let what = format!("{act:?}, residual {with_residual}");
                let x =
                    Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 5, 6, 7), &dev).unwrap() + 0.7).unwrap()).unwrap();
                let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, 5, &dev).unwrap()).unwrap();
                let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, 5, &dev).unwrap()).unwrap();
                let r = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 6, 7), &dev).unwrap()).unwrap();
                let r_arg = with_residual.then_some(r.as_tensor());
                let eps = 1e-5;
                let (fused, stats) = batch_norm(&x, &gamma, &beta, eps, r_arg, act).unwrap();
                let (reference, mean, var) = composed(&x, &gamma, &beta, eps, r_arg, act);
                assert!(max_abs(&(&fused - &reference).unwrap()) < 1e-5, "{what}: values");
                let mean_v = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let var_v = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for ch in 0..5 {
                    assert!((stats.mean[ch] - mean_v[ch]).abs() < 1e-5, "{what}: mean");
                    assert!((stats.var[ch] - var_v[ch]).abs() < 1e-4, "{what}: variance");
                }
                let weights = Tensor::randn(0f32, 1.0, (3, 5, 6, 7), &dev).unwrap();
                let g_fused = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g_comp = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let mut vars = vec![("input", &x), ("weight", &gamma), ("bias", &beta)];
                if with_residual {
                    vars.push(("residual", &r));
                } else {
                    assert!(g_fused.get(&r).is_none(), "{what}: no residual, no gradient");
                }
                for (name, v) in vars {
                    let (a, b) = (g_comp.get(v).unwrap(), g_fused.get(v).unwrap());
                    let d = max_abs(&(a - b).unwrap());
                    assert!(d < 1e-4 * max_abs(a).max(1.0), "{what}: {name} gradient off by {d}");
                }
            }
        }
    }

    /// On planes of more than one block of lanes, with a mean 10⁴ times the spread: the
    /// statistics within 1e-6 relative of float64's, and every instruction-set level's plane
    /// kernels within rounding of the baseline's.
    #[test]
    fn statistics_survive_a_large_offset_and_every_level_agrees() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 0.01, (2, 3, 37, 41), &dev).unwrap() + 100.0).unwrap();
        let (_, stats) = batch_norm(
            &x,
            &Tensor::ones(3, DType::F32, &dev).unwrap(),
            &Tensor::zeros(3, DType::F32, &dev).unwrap(),
            1e-5,
            None,
            Act::Silu,
        )
        .unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let (ones, zeros) = (
            Tensor::ones(3, DType::F64, &dev).unwrap(),
            Tensor::zeros(3, DType::F64, &dev).unwrap(),
        );
        let (_, mean, var) = composed(&x64, &ones, &zeros, 1e-5, None, Act::Identity);
        let (mean, var) = (
            mean.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            var.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        );
        for ch in 0..3 {
            assert!(
                (stats.mean[ch] as f64 - mean[ch]).abs() < 1e-6 * mean[ch],
                "mean {} against {}",
                stats.mean[ch],
                mean[ch]
            );
            assert!(
                (stats.var[ch] as f64 - var[ch]).abs() < 1e-3 * var[ch],
                "variance {} against {}",
                stats.var[ch],
                var[ch]
            );
        }
        let plane = x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..37 * 41].to_vec();
        let dy: Vec<f32> = plane.iter().map(|v| (v - 100.0) * 50.0).collect();
        let run = |level| {
            let (mut y, mut dz) = (vec![0f32; plane.len()], vec![0f32; plane.len()]);
            let (m, s) = simd::at(
                level,
                #[inline(always)]
                || {
                    forward_plane(&mut y, &plane, None, 100.0, 90.0, 0.1, Act::Silu);
                    activation_gradient_plane(&mut dz, &dy, &y, &plane, None, (100.0, 90.0, 0.1), Act::Silu);
                    (moments(&plane), sums(&dz, &plane, 100.0))
                },
            );
            (y, dz, m, s)
        };
        let base = run(simd::SimdLevel::Baseline);
        for level in simd::SimdLevel::available() {
            let got = run(level);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
            for (a, b) in got.0.iter().chain(&got.1).zip(base.0.iter().chain(&base.1)) {
                assert!(close(*a as f64, *b as f64), "{}: {a} against {b}", level.name());
            }
            for (a, b) in [
                (got.2 .0, base.2 .0),
                (got.2 .1, base.2 .1),
                (got.3 .0, base.3 .0),
                (got.3 .1, base.3 .1),
            ] {
                assert!(close(a, b), "{}: sum {a} against {b}", level.name());
            }
        }
    }

    /// The device-generic op (`generic.rs`: composed kernels, analytic backward)
    /// equals the composed ops in values, statistics and every gradient, in f32 and f64, and
    /// gives no gradient to an input that needs none.
    #[test]
    fn the_generic_batch_norm_matches_the_composed_one() {
        let dev = Device::Cpu;
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let var_of = |t: Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
            let x = var_of((Tensor::randn(0f32, 2.0, (3, 5, 6, 7), &dev).unwrap() + 0.7).unwrap());
            let gamma = var_of(Tensor::randn(1f32, 0.3, 5, &dev).unwrap());
            let beta = var_of(Tensor::randn(0f32, 0.3, 5, &dev).unwrap());
            let (y, mean, var) = super::generic::batch_norm(&x, &gamma, &beta, 1e-5).unwrap();
            let (reference, r_mean, r_var) = composed(&x, &gamma, &beta, 1e-5, None, Act::Identity);
            let f32s = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
            assert!(max_abs(&f32s(&(&y - &reference).unwrap())) < 1e-5, "{dtype:?}: values");
            assert!(max_abs(&f32s(&(mean - r_mean.flatten_all().unwrap()).unwrap())) < 1e-6);
            assert!(max_abs(&f32s(&(var - r_var.flatten_all().unwrap()).unwrap())) < 1e-5);
            let weights = Tensor::randn(0f32, 1.0, (3, 5, 6, 7), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let g_new = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &x), ("weight", &gamma), ("bias", &beta)] {
                let (a, b) = (f32s(g_ref.get(v).unwrap()), f32s(g_new.get(v).unwrap()));
                assert_eq!(a.dims(), b.dims(), "{dtype:?}: {name} gradient shape");
                let d = max_abs(&(&a - &b).unwrap());
                assert!(d < 1e-4 * max_abs(&a).max(1.0), "{dtype:?}: {name} gradient off by {d}");
            }
        }
        let plain = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &dev).unwrap();
        let gamma = Var::from_tensor(&Tensor::ones(3, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let beta = Var::from_tensor(&Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let (y, _, _) = super::generic::batch_norm(&plain, &gamma, &beta, 1e-5).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&plain).is_none());
        assert!(grads.get(&gamma).is_some() && grads.get(&beta).is_some());
    }

    #[test]
    fn a_residual_of_another_shape_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &dev).unwrap();
        let (g, b) = (
            Tensor::ones(3, candle_core::DType::F32, &dev).unwrap(),
            Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap(),
        );
        let r = Tensor::zeros((2, 3, 4, 5), candle_core::DType::F32, &dev).unwrap();
        let err = batch_norm(&x, &g, &b, 1e-5, Some(&r), Act::Relu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("residual"), "{err}");
    }
}
