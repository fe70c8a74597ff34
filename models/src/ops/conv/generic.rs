//! Convolution off ftu's CPU ops (CUDA, other dtypes, `Ctx::generic`) with a backward pass made
//! of forward convolutions. candle 0.9.2 differentiates conv2d through `conv_transpose2d`, whose
//! CUDA kernel is a naive loop, one thread per input-gradient element over every output it
//! touches; its forward conv2d on CUDA is im2col + cuBLAS. So here:
//!
//! - the forward is candle's conv2d, unchanged;
//! - the input gradient is a forward convolution of the output gradient, dilated by the stride
//!   (zeros between its elements), padded, with the kernel flipped and its in/out channels
//!   swapped — the "full" correlation that is the transpose of the forward;
//! - the kernel gradient is candle's own formula (a convolution of the input by the output
//!   gradient, batch and channels swapped), which is already im2col + cuBLAS on CUDA.
//!
//! Everything is composed candle tensor ops, so the same code runs on the CPU (other dtypes, the
//! generic path) and is tested there against ftu's CPU gradient ops; on CUDA it runs candle's
//! fast forward kernels. The custom op only carries the gradient: its forward returns the
//! convolution computed beforehand (`layers/precomputed.rs`).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::Spacing;
use crate::ops::precomputed::Precomputed;
use crate::Result;

/// `x` (N, C, H, W) convolved with `weight` (K, C, k_h, k_w), one group, any device and dtype,
/// with the backward pass described above.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, spacing: Spacing) -> Result<Tensor> {
    let y = candle_conv2d(&x.detach(), &weight.detach(), spacing, 1)?;
    let op = WithGradients {
        spacing,
        result: Precomputed::new("ftu-conv2d-generic", y),
    };
    Ok(x.apply_op2(weight, op)?)
}

/// candle's conv2d, around its CPU bug: 0.9.2's tiled CPU conv2d takes a contiguous NCHW input
/// for NHWC when C = H = W (`layout_is_valid` in cpu_backend/conv2d.rs) and returns wrong
/// values; a strided view of the same values takes its copying path instead.
pub(crate) fn candle_conv2d(
    x: &Tensor,
    weight: &Tensor,
    spacing: Spacing,
    groups: usize,
) -> candle_core::Result<Tensor> {
    let (c_in, h, w) = (x.dim(1)?, x.dim(2)?, x.dim(3)?);
    let x = if x.device().is_cpu() && groups == 1 && c_in == h && h == w {
        x.pad_with_zeros(3, 0, 1)?.narrow(3, 0, w)?
    } else {
        x.clone()
    };
    x.conv2d(weight, spacing.padding, spacing.stride, spacing.dilation, groups)
}

/// `x` (N, C, H, W) convolved channel by channel with `weight` (C, 1, k_h, k_w), any device and
/// dtype: the sum over the k_h·k_w taps of the kernel of a shifted (and strided) view of the
/// padded input times that tap's per-channel weight, so that CUDA runs a few elementwise kernels
/// over the whole tensor where candle's grouped conv2d runs one convolution per channel (a
/// thousand launches in an EfficientNet layer). Gradients come from candle's autograd of these
/// ops. Stride-1 taps are views of the padded input; strided ones are copies of the output's
/// size, k_h·k_w of them kept for the backward pass.
pub(crate) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, spacing: Spacing) -> candle_core::Result<Tensor> {
    let Spacing {
        stride,
        padding,
        dilation,
    } = spacing;
    let (_, c, h, w) = x.dims4()?;
    let (_, _, k_h, k_w) = weight.dims4()?;
    let out = |size: usize, k: usize| {
        (size + 2 * padding)
            .checked_sub(dilation * (k - 1) + 1)
            .map(|v| v / stride + 1)
    };
    let (Some(h_out), Some(w_out)) = (out(h, k_h), out(w, k_w)) else {
        candle_core::bail!("depthwise conv: input {h}×{w} padded by {padding} is smaller than kernel {k_h}×{k_w}");
    };
    // Padding enough past the end that every strided view can take `stride` rows per output row.
    let padded = x
        .pad_with_zeros(2, padding, padding + stride)?
        .pad_with_zeros(3, padding, padding + stride)?;
    let mut sum: Option<Tensor> = None;
    for i in 0..k_h {
        for j in 0..k_w {
            let rows = every(&padded, 2, i * dilation, h_out, stride)?;
            let tap = every(&rows, 3, j * dilation, w_out, stride)?;
            let tap = if stride > 1 { tap.contiguous()? } else { tap };
            let weight_ij = weight.narrow(2, i, 1)?.narrow(3, j, 1)?.reshape((1, c, 1, 1))?;
            let term = tap.broadcast_mul(&weight_ij)?;
            sum = Some(match sum {
                None => term,
                Some(s) => (s + term)?,
            });
        }
    }
    sum.ok_or_else(|| candle_core::Error::Msg("depthwise conv: an empty kernel".into()))
}

/// `count` entries along `axis` from `start`, `step` apart (the tensor must reach
/// `start + count·step`).
fn every(t: &Tensor, axis: usize, start: usize, count: usize, step: usize) -> candle_core::Result<Tensor> {
    if step == 1 {
        return t.narrow(axis, start, count);
    }
    let run = t.narrow(axis, start, count * step)?;
    let mut dims = run.dims().to_vec();
    dims[axis] = count;
    dims.insert(axis + 1, step);
    run.reshape(dims)?.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)
}

/// The gradient for the input of `input_shape` (N, C, H, W), from the output gradient `grad`
/// (N, K, H_out, W_out) and the kernel (K, C, k_h, k_w).
pub(crate) fn input_gradient(
    grad: &Tensor,
    weight: &Tensor,
    spacing: Spacing,
    input_shape: &Shape,
) -> candle_core::Result<Tensor> {
    let Spacing {
        stride,
        padding,
        dilation,
    } = spacing;
    let (_, _, h, w) = input_shape.dims4()?;
    let (_, _, k_h, k_w) = weight.dims4()?;
    let mut g = grad.clone();
    for (axis, size, k) in [(2, h, k_h), (3, w, k_w)] {
        g = dilate(&g, axis, stride)?;
        // Output row i of the full correlation reads dilated rows i − reach … i − reach + span:
        // `reach` zeros before, and after, enough for the last input rows (those the forward's
        // stride skipped past get zero gradient through the same zeros).
        let span = dilation * (k - 1);
        let reach = span as isize - padding as isize;
        let after = size as isize + span as isize - reach - g.dim(axis)? as isize;
        g = pad_or_crop(&g, axis, reach, after)?;
    }
    let flipped = weight.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
    let unit = Spacing {
        stride: 1,
        padding: 0,
        dilation,
    };
    candle_conv2d(&g, &flipped, unit, 1)
}

/// The gradient for the kernel (K, C, k_h, k_w), from the input and the output gradient.
pub(crate) fn kernel_gradient(
    x: &Tensor,
    grad: &Tensor,
    spacing: Spacing,
    kernel: (usize, usize),
) -> candle_core::Result<Tensor> {
    // Batch and channels swapped: the input's channels are the batch, the output gradient's
    // channels the kernels, and the images the summed-over channels.
    let swapped = Spacing {
        stride: spacing.dilation,
        padding: spacing.padding,
        dilation: spacing.stride,
    };
    let g = candle_conv2d(&x.transpose(0, 1)?, &grad.transpose(0, 1)?, swapped, 1)?.transpose(0, 1)?;
    // The swapped convolution can reach past the kernel when the stride skipped the last rows.
    g.narrow(2, 0, kernel.0)?.narrow(3, 0, kernel.1)?.contiguous()
}

/// `s − 1` zeros between consecutive elements along `axis`.
fn dilate(t: &Tensor, axis: usize, s: usize) -> candle_core::Result<Tensor> {
    if s == 1 {
        return Ok(t.clone());
    }
    let n = t.dim(axis)?;
    // Each element followed by s − 1 zeros (a new axis after `axis`), then the trailing zeros cut.
    let zeros = t.zeros_like()?;
    let mut parts = vec![t.unsqueeze(axis + 1)?];
    for _ in 1..s {
        parts.push(zeros.unsqueeze(axis + 1)?);
    }
    let interleaved = Tensor::cat(&parts, axis + 1)?;
    let mut dims = t.dims().to_vec();
    dims[axis] = n * s;
    interleaved.reshape(dims)?.narrow(axis, 0, (n - 1) * s + 1)
}

/// Zeros before and after along `axis`, or rows cut where a count is negative.
fn pad_or_crop(t: &Tensor, axis: usize, before: isize, after: isize) -> candle_core::Result<Tensor> {
    let t = t.pad_with_zeros(axis, before.max(0) as usize, after.max(0) as usize)?;
    let (cut_front, cut_back) = ((-before).max(0) as usize, (-after).max(0) as usize);
    if cut_front + cut_back == 0 {
        return Ok(t);
    }
    let len = t.dim(axis)? - cut_front - cut_back;
    t.narrow(axis, cut_front, len)
}

/// (x, weight) → the convolution computed beforehand, with its gradients.
struct WithGradients {
    spacing: Spacing,
    result: Precomputed,
}

impl CustomOp2 for WithGradients {
    fn name(&self) -> &'static str {
        "ftu-conv2d-generic"
    }

    fn cpu_fwd(
        &self,
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.result.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The network's input image needs no gradient, and it is the most expensive one.
        let grad_x = if x.track_op() {
            Some(input_gradient(grad, weight, self.spacing, x.shape())?)
        } else {
            None
        };
        let (_, _, k_h, k_w) = weight.dims4()?;
        let grad_w = kernel_gradient(x, grad, self.spacing, (k_h, k_w))?;
        Ok((grad_x, Some(grad_w)))
    }
}
