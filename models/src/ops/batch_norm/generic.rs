//! Training BatchNorm off ftu's CPU ops (CUDA, other dtypes, `Ctx::generic`) as one op with an
//! analytic backward, made of candle tensor ops. Composed naively (subtract the mean, square,
//! average, divide, scale, shift), autograd keeps four or five activation-sized intermediates per
//! layer for the backward pass; here the backward keeps the input only, with the per-channel
//! mean and 1/σ, and recomputes x̂ from them:
//!
//! - forward: `y = x·s + t` with `s = γ/σ` and `t = β − μ·s` per channel (σ² the biased batch
//!   variance plus ε, as PyTorch normalises);
//! - backward: `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = (γ/σ)/M · (M·dy − dβ − x̂·dγ)`, with M = N·H·W.
//!
//! The custom op only carries the gradient: its forward returns `y`, computed beforehand
//! (`ops/precomputed.rs`).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::ops::precomputed::Precomputed;

/// `(y, mean, var)` of a training BatchNorm of `x` (N, C, H, W) with scale `gamma` and shift
/// `beta` (C); `mean` and `var` (the biased batch variance) per channel, detached.
pub(crate) fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let c = gamma.elem_count();
    let per_channel = |t: &Tensor| t.detach().reshape((1, c, 1, 1));
    let xd = x.detach();
    let mean = xd.mean_keepdim((0, 2, 3))?;
    let var = xd.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    let inv_std = (&var + eps)?.sqrt()?.recip()?;
    let scale = inv_std.broadcast_mul(&per_channel(gamma)?)?;
    let shift = per_channel(beta)?.broadcast_sub(&mean.broadcast_mul(&scale)?)?;
    let y = xd.broadcast_mul(&scale)?.broadcast_add(&shift)?;
    let op = BatchNormGradients {
        mean: mean.clone(),
        inv_std,
        result: Precomputed::new("ftu-batch-norm-generic", y),
    };
    let y = x.apply_op3(gamma, beta, op)?;
    Ok((y, mean.flatten_all()?, var.flatten_all()?))
}

struct BatchNormGradients {
    /// Per channel, (1, C, 1, 1).
    mean: Tensor,
    inv_std: Tensor,
    result: Precomputed,
}

impl CustomOp3 for BatchNormGradients {
    fn name(&self) -> &'static str {
        "ftu-batch-norm-generic"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.result.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let m = (n * h * w) as f64;
        let x_hat = x.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)?;
        let d_beta = grad.sum_keepdim((0, 2, 3))?;
        let d_gamma = (grad * &x_hat)?.sum_keepdim((0, 2, 3))?;
        let dx = if x.track_op() {
            let k = (gamma.reshape((1, c, 1, 1))? * &self.inv_std)?.affine(1.0 / m, 0.0)?;
            let inner = (grad.affine(m, 0.0)?.broadcast_sub(&d_beta)? - x_hat.broadcast_mul(&d_gamma)?)?;
            Some(inner.broadcast_mul(&k)?)
        } else {
            None
        };
        Ok((dx, Some(d_gamma.flatten_all()?), Some(d_beta.flatten_all()?)))
    }
}
