//! A CPU convolution for training whose backward pass is made of forward convolutions.
//!
//! candle 0.9.2 differentiates conv2d with conv_transpose2d, which on the CPU is a direct
//! six-deep loop without a matrix product: it made a U-Net training step about 10× slower than
//! PyTorch's. Here the forward value is candle's conv2d of detached tensors, and a custom op
//! that passes it through unchanged carries the gradients, computed as
//!
//! - kernel: (output gradient) · im2col(input)ᵀ, one matrix product over all images;
//! - input: col2im(kernelᵀ · output gradient).
//!
//! im2col and col2im are plain loops over (image, channel) planes in parallel; the products are
//! candle's gemm. Each spatial size comes from its own dimension (candle's own backward takes
//! the width's output padding from the height and fails on non-square strided inputs). One
//! group only; grouped convolutions keep candle's path.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::ConvCfg;
use crate::Result;

/// `x` (N, C, H, W) convolved with `weight` (C_out, C, k, k) as candle's conv2d computes it,
/// with fast gradients.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, c: ConvCfg) -> Result<Tensor> {
    debug_assert_eq!(c.groups, 1);
    let y = x
        .detach()
        .conv2d(&weight.detach(), c.padding, c.stride, c.dilation, 1)?
        .contiguous()?;
    Ok(y.apply_op3(x, weight, PassGradients { cfg: c })?)
}

/// Forward: a copy of its first argument (the detached convolution). Backward: the convolution's
/// gradients for its second (input) and third (kernel) arguments.
struct PassGradients {
    cfg: ConvCfg,
}

impl CustomOp3 for PassGradients {
    fn name(&self) -> &'static str {
        "ftu-conv2d-gradients"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("ftu-conv2d-gradients: the convolution output must be contiguous")
        };
        match s1 {
            CpuStorage::F32(v) => Ok((CpuStorage::F32(v[start..end].to_vec()), l1.shape().clone())),
            _ => candle_core::bail!("ftu-conv2d-gradients: f32 tensors only"),
        }
    }

    fn bwd(
        &self,
        _y: &Tensor,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::new(x, weight, grad, self.cfg)?;
        let rows = grad_rows(grad, g)?;
        let grad_x = input_gradient(weight, &rows, g)?;
        let grad_w = kernel_gradient(x, weight, &rows, g)?;
        Ok((None, Some(grad_x), Some(grad_w)))
    }
}

/// The geometry of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k_h: usize,
    k_w: usize,
    out_h: usize,
    out_w: usize,
    cfg: ConvCfg,
}

impl Geometry {
    fn new(x: &Tensor, weight: &Tensor, grad: &Tensor, cfg: ConvCfg) -> candle_core::Result<Geometry> {
        let (n, c, h, w) = x.dims4()?;
        let (_, _, k_h, k_w) = weight.dims4()?;
        let (_, _, out_h, out_w) = grad.dims4()?;
        Ok(Geometry {
            n,
            c,
            h,
            w,
            k_h,
            k_w,
            out_h,
            out_w,
            cfg,
        })
    }

    fn rows(&self) -> usize {
        self.c * self.k_h * self.k_w
    }

    fn len(&self) -> usize {
        self.out_h * self.out_w
    }
    /// The outputs `u` whose input index `u·stride + offset` lies in `0..size`.
    fn valid(&self, out: usize, size: usize, offset: isize) -> std::ops::Range<usize> {
        let s = self.cfg.stride as isize;
        let lo = if offset < 0 { (-offset + s - 1) / s } else { 0 };
        let hi = if (size as isize) > offset {
            ((size as isize - offset + s - 1) / s).min(out as isize)
        } else {
            0
        };
        lo as usize..(hi.max(lo)) as usize
    }

    /// Input offset of kernel tap index `i` (row or column).
    fn offset(&self, i: usize) -> isize {
        (i * self.cfg.dilation) as isize - self.cfg.padding as isize
    }

    /// Calls `f(tap, out_start, in_start, count)` for every run of outputs that read the input
    /// plane: `count` outputs from `out_start` read `in_start`, `in_start + stride`, …
    fn runs(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let s = self.cfg.stride;
        for i in 0..self.k_h {
            let oy = self.offset(i);
            for j in 0..self.k_w {
                let ox = self.offset(j);
                let cols = self.valid(self.out_w, self.w, ox);
                if cols.is_empty() {
                    continue;
                }
                for t in self.valid(self.out_h, self.h, oy) {
                    let y = (t * s) as isize + oy;
                    let x = (cols.start * s) as isize + ox;
                    f(
                        i * self.k_w + j,
                        t * self.out_w + cols.start,
                        y as usize * self.w + x as usize,
                        cols.len(),
                    );
                }
            }
        }
    }
}

/// im2col: (N, C, H, W) → (C·k_h·k_w, N·L), row c·k_h·k_w + tap, zeros where padding is read.
fn im2col(x: &[f32], g: Geometry) -> Vec<f32> {
    let (plane, taps, len, s) = (g.h * g.w, g.k_h * g.k_w, g.len(), g.cfg.stride);
    let mut cols = vec![0f32; g.rows() * g.n * len];
    // One channel's k_h·k_w rows at a time.
    cols.par_chunks_mut(taps * g.n * len).enumerate().for_each(|(c, out)| {
        for n in 0..g.n {
            let src = &x[(n * g.c + c) * plane..(n * g.c + c + 1) * plane];
            g.runs(|tap, o, i, count| {
                let dst = &mut out[(tap * g.n + n) * len + o..][..count];
                if s == 1 {
                    dst.copy_from_slice(&src[i..i + count]);
                } else {
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d = src[i + k * s];
                    }
                }
            });
        }
    });
    cols
}

/// col2im, the adjoint of `im2col`: each patch value is added back where it was read from.
fn col2im(cols: &[f32], g: Geometry) -> Vec<f32> {
    let (plane, taps, len, s) = (g.h * g.w, g.k_h * g.k_w, g.len(), g.cfg.stride);
    let mut x = vec![0f32; g.n * g.c * plane];
    x.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
        let (n, c) = (nc / g.c, nc % g.c);
        g.runs(|tap, o, i, count| {
            let src = &cols[((c * taps + tap) * g.n + n) * len + o..][..count];
            if s == 1 {
                for (d, v) in dst[i..i + count].iter_mut().zip(src) {
                    *d += v;
                }
            } else {
                for (k, v) in src.iter().enumerate() {
                    dst[i + k * s] += v;
                }
            }
        });
    });
    x
}

/// The output gradient as (C_out, N·L).
fn grad_rows(grad: &Tensor, g: Geometry) -> candle_core::Result<Tensor> {
    let c_out = grad.dim(1)?;
    grad.reshape((g.n, c_out, g.len()))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((c_out, g.n * g.len()))
}

fn input_gradient(weight: &Tensor, grad_rows: &Tensor, g: Geometry) -> candle_core::Result<Tensor> {
    let c_out = weight.dim(0)?;
    let w_t = weight.reshape((c_out, g.rows()))?.t()?.contiguous()?;
    let dcols = w_t.matmul(grad_rows)?.flatten_all()?.to_vec1::<f32>()?;
    Tensor::from_vec(col2im(&dcols, g), (g.n, g.c, g.h, g.w), weight.device())
}

fn kernel_gradient(x: &Tensor, weight: &Tensor, grad_rows: &Tensor, g: Geometry) -> candle_core::Result<Tensor> {
    let x = x.flatten_all()?.to_vec1::<f32>()?;
    let cols = Tensor::from_vec(im2col(&x, g), (g.rows(), g.n * g.len()), weight.device())?;
    grad_rows.matmul(&cols.t()?)?.reshape(weight.dims())
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

    fn cases() -> Vec<(usize, usize, usize, ConvCfg)> {
        // (c_in, c_out, kernel, cfg): the stem, 3×3 and 1×1 convs at strides 1 and 2, a
        // dilated conv (ASPP), a patch embedding (kernel = stride, no padding).
        vec![
            (3, 8, 7, ConvCfg::same(7).stride(2)),
            (4, 6, 3, ConvCfg::same(3)),
            (4, 6, 3, ConvCfg::same(3).stride(2)),
            (5, 7, 1, ConvCfg::same(1)),
            (5, 7, 1, ConvCfg::same(1).stride(2)),
            (4, 4, 3, ConvCfg::same(3).dilation(2).padding(2)),
            (3, 4, 4, ConvCfg::same(4).stride(4).padding(0)),
            (3, 5, 7, ConvCfg::same(7).stride(4).padding(3)),
        ]
    }

    /// Values and both gradients equal candle's conv2d on square inputs of odd and even sides.
    #[test]
    fn values_and_gradients_match_candles_conv2d() {
        let dev = Device::Cpu;
        for (case, (c_in, c_out, k, cfg)) in cases().into_iter().enumerate() {
            for size in [16, 17] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c_in, size, size), &dev).unwrap()).unwrap();
                let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
                let reference = x.conv2d(&w, cfg.padding, cfg.stride, cfg.dilation, 1).unwrap();
                let fast = conv2d(&x, &w, cfg).unwrap();
                assert_eq!(reference.dims(), fast.dims(), "case {case} size {size}: shape");
                assert_eq!(
                    max_abs(&(&reference - &fast).unwrap()),
                    0.0,
                    "case {case} size {size}: values"
                );
                // A loss weighing every output differently checks every gradient entry.
                let weights = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
                let g_ref = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g_new = (&fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, v) in [("input", &x), ("kernel", &w)] {
                    let (a, b) = (g_ref.get(v).unwrap(), g_new.get(v).unwrap());
                    let d = max_abs(&(a - b).unwrap());
                    assert!(
                        d <= 1e-5 * max_abs(a).max(1.0),
                        "case {case} size {size}: {name} gradient off by {d}"
                    );
                }
            }
        }
    }

    /// On non-square inputs (where candle's own backward fails on strided convs) the gradients
    /// predict the change of a loss that is linear in the input and in the kernel exactly.
    #[test]
    fn gradients_are_exact_directional_derivatives_on_non_square_inputs() {
        let dev = Device::Cpu;
        for (case, (c_in, c_out, k, cfg)) in cases().into_iter().enumerate() {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c_in, 19, 26), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
            let y = conv2d(&x, &w, cfg).unwrap();
            let weights = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
            let loss = |x: &Tensor, w: &Tensor| -> f32 {
                let y = x.conv2d(w, cfg.padding, cfg.stride, cfg.dilation, 1).unwrap();
                (&y * &weights).unwrap().sum_all().unwrap().to_scalar().unwrap()
            };
            let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let base = loss(&x, &w);
            let dx = Tensor::randn(0f32, 1.0, x.dims(), &dev).unwrap();
            let dw = Tensor::randn(0f32, 1.0, w.dims(), &dev).unwrap();
            let along_x = loss(&(x.as_tensor() + &dx).unwrap(), &w) - base;
            let along_w = loss(&x, &(w.as_tensor() + &dw).unwrap()) - base;
            let predicted_x: f32 = (grads.get(&x).unwrap() * &dx)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let predicted_w: f32 = (grads.get(&w).unwrap() * &dw)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(
                (along_x - predicted_x).abs() <= 1e-3 * along_x.abs().max(1.0),
                "case {case}: input {along_x} vs {predicted_x}"
            );
            assert!(
                (along_w - predicted_w).abs() <= 1e-3 * along_w.abs().max(1.0),
                "case {case}: kernel {along_w} vs {predicted_w}"
            );
        }
    }
}
