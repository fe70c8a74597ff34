//! BatchNorm with batch statistics as one fused CPU op with its own backward pass.
//!
//! Composed from candle ops (mean, subtract, square, mean, divide, multiply, add), training-mode
//! BatchNorm costs about a dozen passes over the activation forwards and more backwards, each
//! reduction over (N, H, W) a strided walk; in a U-Net step that was a large share of the time.
//! Here the forward is two passes (statistics, then the affine map) and the backward two (the two
//! per-channel sums, then the input gradient), each parallel over channels or planes.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// Per-channel batch mean and biased variance, as the forward pass used them.
#[derive(Debug, Clone)]
pub(crate) struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// `γ·(x − mean)/√(var + eps) + β` with the batch's statistics of `x` (N, C, H, W); returns the
/// statistics for the running averages.
pub(crate) fn batch_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, BatchStats)> {
    let stats = Arc::new(Mutex::new(None));
    let op = FusedBatchNorm {
        eps: eps as f32,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = stats
        .lock()
        .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))?
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("batch-norm forward left no statistics".into()))?;
    Ok((y, stats))
}

struct FusedBatchNorm {
    eps: f32,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("ftu-batch-norm: {what} must be f32")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("ftu-batch-norm: {what} must be contiguous")
    };
    Ok(&v[start..end])
}

/// (N, C, plane) of an NCHW shape.
fn split(shape: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, h, w) = shape.dims4()?;
    Ok((n, c, h * w))
}

/// Per channel, the sum of `f(channel, plane)` over all images, in f64.
fn per_channel(
    data: &[f32],
    (n, c, plane): (usize, usize, usize),
    f: impl Fn(usize, &[f32]) -> f64 + Sync,
) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n)
                .map(|i| f(ch, &data[(i * c + ch) * plane..(i * c + ch + 1) * plane]))
                .sum()
        })
        .collect()
}

impl CustomOp3 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "ftu-batch-norm"
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
        let x = f32s(s1, l1, "input")?;
        let (gamma, beta) = (f32s(s2, l2, "weight")?, f32s(s3, l3, "bias")?);
        let dims = split(l1.shape())?;
        let (n, c, plane) = dims;
        let count = (n * plane) as f64;
        let mean: Vec<f64> = per_channel(x, dims, |_, p| p.iter().map(|&v| v as f64).sum())
            .into_iter()
            .map(|s| s / count)
            .collect();
        let var: Vec<f64> = per_channel(x, dims, |ch, p| p.iter().map(|&v| (v as f64 - mean[ch]).powi(2)).sum())
            .into_iter()
            .map(|s| s / count)
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(nc, (dst, src))| {
                let ch = nc % c;
                let scale = gamma[ch] / (var[ch] as f32 + self.eps).sqrt();
                let shift = beta[ch] - mean[ch] as f32 * scale;
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s * scale + shift;
                }
            });
        let stats = BatchStats {
            mean: mean.iter().map(|&m| m as f32).collect(),
            var: var.iter().map(|&v| v as f32).collect(),
        };
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))? = Some(stats);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch-norm statistics lock poisoned".into()))?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch-norm backward before forward".into()))?;
        let dims = split(x.shape())?;
        let (n, c, plane) = dims;
        let count = (n * plane) as f64;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let g = gamma.to_vec1::<f32>()?;
        let inv: Vec<f64> = stats
            .var
            .iter()
            .map(|&v| 1.0 / (v as f64 + self.eps as f64).sqrt())
            .collect();
        let sum_dy = per_channel(&dy, dims, |_, p| p.iter().map(|&v| v as f64).sum());
        // Σ dy·x̂ per channel: x and dy planes walked together.
        let sum_dy_xhat: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n)
                    .map(|i| {
                        let r = (i * c + ch) * plane..(i * c + ch + 1) * plane;
                        xs[r.clone()]
                            .iter()
                            .zip(&dy[r])
                            .map(|(&xv, &d)| d as f64 * (xv as f64 - stats.mean[ch] as f64) * inv[ch])
                            .sum::<f64>()
                    })
                    .sum()
            })
            .collect();
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
            let ch = nc % c;
            let r = nc * plane..(nc + 1) * plane;
            let (mean_dy, mean_dy_xhat) = (sum_dy[ch] / count, sum_dy_xhat[ch] / count);
            let k = g[ch] as f64 * inv[ch];
            for ((d, &xv), &gy) in dst.iter_mut().zip(&xs[r.clone()]).zip(&dy[r]) {
                let xhat = (xv as f64 - stats.mean[ch] as f64) * inv[ch];
                *d = (k * (gy as f64 - mean_dy - xhat * mean_dy_xhat)) as f32;
            }
        });
        let dev = x.device();
        let dgamma: Vec<f32> = sum_dy_xhat.iter().map(|&v| v as f32).collect();
        let dbeta: Vec<f32> = sum_dy.iter().map(|&v| v as f32).collect();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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

    /// Values, statistics and all three gradients equal BatchNorm composed from candle ops.
    #[test]
    fn fused_batch_norm_matches_the_composed_one() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 5, 6, 7), &dev).unwrap() + 0.7).unwrap()).unwrap();
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, 5, &dev).unwrap()).unwrap();
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, 5, &dev).unwrap()).unwrap();
        let eps = 1e-5;
        let (fused, stats) = batch_norm(&x, &gamma, &beta, eps).unwrap();
        let mean = x.mean_keepdim((0, 2, 3)).unwrap();
        let var = x
            .broadcast_sub(&mean)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_keepdim((0, 2, 3))
            .unwrap();
        let composed = x
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(&var + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma.reshape((1, 5, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs(&(&fused - &composed).unwrap()) < 1e-5);
        let mean_v = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let var_v = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for ch in 0..5 {
            assert!((stats.mean[ch] - mean_v[ch]).abs() < 1e-5);
            assert!((stats.var[ch] - var_v[ch]).abs() < 1e-4);
        }
        let weights = Tensor::randn(0f32, 1.0, (3, 5, 6, 7), &dev).unwrap();
        let g_fused = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g_comp = (&composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("input", &x), ("weight", &gamma), ("bias", &beta)] {
            let (a, b) = (g_comp.get(v).unwrap(), g_fused.get(v).unwrap());
            let d = max_abs(&(a - b).unwrap());
            assert!(d < 1e-4 * max_abs(a).max(1.0), "{name} gradient off by {d}");
        }
    }
}
