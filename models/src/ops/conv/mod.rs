//! 2-D convolution on the CPU: im2col + gemm in NCHW for ordinary convolutions, direct loops for
//! depthwise ones; the forward pass and both gradients of each, as candle custom ops.
//!
//! candle 0.9.2's CPU conv2d gathers its patches with per-element index arithmetic, and its
//! backward runs conv_transpose2d, a direct six-deep loop: together they made a U-Net training
//! step 5.45× PyTorch's. Here each image is cut into bands of output rows, and each band is one
//! matrix product in the layout the tensors already have (`compute.rs`):
//!
//! - forward: `Y_n[:, band] = W (C_out × C·k·k) · im2col(X_n, band)`;
//! - kernel gradient: `dW = Σ dY_n[:, band] · im2col(X_n, band)ᵀ`, the patches gathered again
//!   rather than kept from the forward (they are k² times the activation);
//! - input gradient: at stride 1 a convolution of `dY` with the flipped kernel; strided,
//!   `col2im(Wᵀ · dY_n)`; skipped when the input needs no gradient (the network's input image).
//!
//! A band's patches stay in L2 between im2col and the product (`geometry.rs`), bands run in
//! parallel with single-threaded products of the `gemm` crate, candle's own matmul kernel
//! (`matmul.rs`). Each spatial size comes from its own dimension (candle's backward takes the
//! width's output padding from the height and fails on non-square strided inputs).

mod compute;
mod depthwise;
mod depthwise_tokens;
pub(crate) mod generic;
mod geometry;
pub(crate) mod matmul;
#[cfg(test)]
mod tests;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use compute::{forward, input_gradient, kernel_gradient};
pub(crate) use depthwise::depthwise_conv2d;
pub(crate) use depthwise_tokens::depthwise_conv_tokens;
use geometry::Geometry;

use crate::ops::cpu_values::f32s;
use crate::{profile, Result};

/// Stride, zero padding and dilation, the same along both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spacing {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

/// `x` (N, C, H, W) convolved with `weight` (C_out, C, k_h, k_w), one group, no bias; f32 on the
/// CPU, with gradients for both.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, spacing: Spacing) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, Conv2dOp { spacing })?)
}

struct Conv2dOp {
    spacing: Spacing,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "ftu-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name(), "input")?;
        let w = f32s(s2, l2, self.name(), "kernel")?;
        let g = Geometry::new(l1.shape(), l2.shape(), self.spacing)?;
        let y = profile::scope("conv2d forward", g.traffic(), || forward(x, w, g));
        Ok((CpuStorage::F32(y), g.output_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // A tensor that is neither a variable nor computed from one (the input image) needs no
        // gradient, and its gradient is the most expensive one: full resolution.
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                weight,
                &InputGradient {
                    spacing: self.spacing,
                    input: x.shape().clone(),
                },
            )?)
        } else {
            None
        };
        let grad_w = grad.apply_op2_no_bwd(
            x,
            &KernelGradient {
                spacing: self.spacing,
                kernel: weight.shape().clone(),
            },
        )?;
        Ok((grad_x, Some(grad_w)))
    }
}

/// `col2im(Wᵀ · dY_n)` per image: the gradient for the input of the given shape.
struct InputGradient {
    spacing: Spacing,
    input: Shape,
}

impl CustomOp2 for InputGradient {
    fn name(&self) -> &'static str {
        "ftu-conv2d-input-gradient"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = f32s(s1, l1, self.name(), "output gradient")?;
        let w = f32s(s2, l2, self.name(), "kernel")?;
        let g = Geometry::new(&self.input, l2.shape(), self.spacing)?;
        g.check_output(l1.shape(), self.name())?;
        let dx = profile::scope("conv2d input gradient", g.traffic(), || input_gradient(dy, w, g));
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// `Σ_n dY_n · im2col(X_n)ᵀ`: the gradient for the kernel of the given shape.
struct KernelGradient {
    spacing: Spacing,
    kernel: Shape,
}

impl CustomOp2 for KernelGradient {
    fn name(&self) -> &'static str {
        "ftu-conv2d-kernel-gradient"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dy = f32s(s1, l1, self.name(), "output gradient")?;
        let x = f32s(s2, l2, self.name(), "input")?;
        let g = Geometry::new(l2.shape(), &self.kernel, self.spacing)?;
        g.check_output(l1.shape(), self.name())?;
        let dw = profile::scope("conv2d kernel gradient", g.traffic(), || kernel_gradient(dy, x, g));
        Ok((CpuStorage::F32(dw), self.kernel.clone()))
    }
}
