//! 2-D convolution on the CPU as im2col + gemm in NCHW: the forward pass and both gradients.
//!
//! candle 0.9.2's CPU conv2d gathers its patches with per-element index arithmetic, and its
//! backward runs conv_transpose2d, a direct six-deep loop: together they made a U-Net training
//! step 5.45× PyTorch's. Here each image is one matrix product in the layout the tensors already
//! have, so nothing is transposed or copied around the products:
//!
//! - forward: `Y_n (C_out × L) = W (C_out × C·k·k) · im2col(X_n) (C·k·k × L)`; a 1×1 stride-1
//!   convolution multiplies by `X_n` itself;
//! - kernel gradient: `dW = Σ_n dY_n · im2col(X_n)ᵀ`, the patches gathered again rather than kept
//!   from the forward (they are k² times the activation);
//! - input gradient: `dX_n = col2im(Wᵀ · dY_n)`, skipped when the input needs no gradient (the
//!   network's input image).
//!
//! The products are the `gemm` crate's (candle's own matmul kernel), each split over the rayon
//! pool; im2col and col2im run over channels in parallel. One group only: grouped and depthwise
//! convolutions keep candle's path. Each spatial size comes from its own dimension (candle's
//! backward takes the width's output padding from the height and fails on non-square strided
//! inputs).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

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

/// The f32 values of a contiguous CPU tensor's storage.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: the {what} must be f32, not {:?}", s.dtype())
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the {what} must be contiguous")
    };
    Ok(&v[start..end])
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
        Ok((CpuStorage::F32(forward(x, w, g)), g.output_shape()))
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
        Ok((CpuStorage::F32(input_gradient(dy, w, g)), self.input.clone()))
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
        Ok((CpuStorage::F32(kernel_gradient(dy, x, g)), self.kernel.clone()))
    }
}

/// The geometry of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k_h: usize,
    k_w: usize,
    out_h: usize,
    out_w: usize,
    s: Spacing,
}

impl Geometry {
    fn new(input: &Shape, kernel: &Shape, s: Spacing) -> candle_core::Result<Geometry> {
        let (n, c, h, w) = input.dims4()?;
        let (c_out, c_k, k_h, k_w) = kernel.dims4()?;
        if c_k != c {
            candle_core::bail!("ftu-conv2d: kernel {kernel:?} for an input of {c} channels ({input:?})")
        }
        if s.stride == 0 || s.dilation == 0 {
            candle_core::bail!("ftu-conv2d: stride and dilation must be positive ({s:?})")
        }
        let out = |size: usize, k: usize| -> candle_core::Result<usize> {
            let span = s.dilation * (k - 1) + 1;
            if size + 2 * s.padding < span {
                candle_core::bail!("ftu-conv2d: input {input:?} padded by {} is smaller than kernel {kernel:?}", s.padding)
            }
            Ok((size + 2 * s.padding - span) / s.stride + 1)
        };
        Ok(Geometry {
            n,
            c,
            h,
            w,
            c_out,
            k_h,
            k_w,
            out_h: out(h, k_h)?,
            out_w: out(w, k_w)?,
            s,
        })
    }

    fn output_shape(&self) -> Shape {
        (self.n, self.c_out, self.out_h, self.out_w).into()
    }

    fn check_output(&self, shape: &Shape, op: &str) -> candle_core::Result<()> {
        if shape != &self.output_shape() {
            candle_core::bail!("{op}: output gradient {shape:?}, expected {:?}", self.output_shape())
        }
        Ok(())
    }

    /// Rows of the patch matrix: C·k_h·k_w.
    fn rows(&self) -> usize {
        self.c * self.k_h * self.k_w
    }

    /// Output positions per image.
    fn len(&self) -> usize {
        self.out_h * self.out_w
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// The patch matrix is the input itself: a 1×1 kernel at stride 1 without padding.
    fn is_pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.s.stride == 1 && self.s.padding == 0
    }

    /// The outputs `u` whose input index `u·stride + offset` lies in `0..size`.
    fn valid(&self, out: usize, size: usize, offset: isize) -> std::ops::Range<usize> {
        let s = self.s.stride as isize;
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
        (i * self.s.dilation) as isize - self.s.padding as isize
    }

    /// Calls `f(tap, out_start, in_start, count)` for every run of outputs that read an input
    /// plane: `count` outputs from `out_start` read `in_start`, `in_start + stride`, …
    fn runs(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let s = self.s.stride;
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

/// im2col of one image (C, H, W) into `cols` (C·k_h·k_w × L), row `c·k_h·k_w + tap`. Entries that
/// read padding are never written: `cols` starts zeroed and every image writes the same entries.
fn im2col(image: &[f32], g: Geometry, cols: &mut [f32]) {
    let (plane, taps, len, s) = (g.plane(), g.k_h * g.k_w, g.len(), g.s.stride);
    cols.par_chunks_mut(taps * len)
        .zip(image.par_chunks(plane))
        .for_each(|(out, src)| {
            g.runs(|tap, o, i, count| {
                let dst = &mut out[tap * len + o..][..count];
                if s == 1 {
                    dst.copy_from_slice(&src[i..i + count]);
                } else {
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d = src[i + k * s];
                    }
                }
            });
        });
}

/// col2im, the adjoint of `im2col`: each patch entry is added back where it was read from.
fn col2im(cols: &[f32], g: Geometry, image: &mut [f32]) {
    let (plane, taps, len, s) = (g.plane(), g.k_h * g.k_w, g.len(), g.s.stride);
    image
        .par_chunks_mut(plane)
        .zip(cols.par_chunks(taps * len))
        .for_each(|(dst, src)| {
            dst.fill(0.0);
            g.runs(|tap, o, i, count| {
                let src = &src[tap * len + o..][..count];
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
}

fn forward(x: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len) = (g.rows(), g.len());
    let mut y = vec![0f32; g.n * g.c_out * len];
    let mut cols = if g.is_pointwise() { Vec::new() } else { vec![0f32; rows * len] };
    for (image, out) in x.chunks_exact(g.c * g.plane()).zip(y.chunks_exact_mut(g.c_out * len)) {
        let patches = if g.is_pointwise() {
            image
        } else {
            im2col(image, g, &mut cols);
            &cols
        };
        matmul(
            Mat::rows(out, g.c_out, len),
            false,
            MatRef::rows(w, g.c_out, rows),
            MatRef::rows(patches, rows, len),
        );
    }
    y
}

fn input_gradient(dy: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len) = (g.rows(), g.len());
    let mut dx = vec![0f32; g.n * g.c * g.plane()];
    let mut dcols = if g.is_pointwise() { Vec::new() } else { vec![0f32; rows * len] };
    let w_t = MatRef::rows(w, g.c_out, rows).t();
    for (grad, image) in dy.chunks_exact(g.c_out * len).zip(dx.chunks_exact_mut(g.c * g.plane())) {
        let grad = MatRef::rows(grad, g.c_out, len);
        if g.is_pointwise() {
            matmul(Mat::rows(image, rows, len), false, w_t, grad);
        } else {
            matmul(Mat::rows(&mut dcols, rows, len), false, w_t, grad);
            col2im(&dcols, g, image);
        }
    }
    dx
}

fn kernel_gradient(dy: &[f32], x: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len) = (g.rows(), g.len());
    let mut dw = vec![0f32; g.c_out * rows];
    let mut cols = if g.is_pointwise() { Vec::new() } else { vec![0f32; rows * len] };
    for (i, (grad, image)) in dy.chunks_exact(g.c_out * len).zip(x.chunks_exact(g.c * g.plane())).enumerate() {
        let patches = if g.is_pointwise() {
            image
        } else {
            im2col(image, g, &mut cols);
            &cols
        };
        matmul(
            Mat::rows(&mut dw, g.c_out, rows),
            i > 0,
            MatRef::rows(grad, g.c_out, len),
            MatRef::rows(patches, rows, len).t(),
        );
    }
    dw
}

/// A read-only matrix view: `rows × cols`, entry (r, c) at `r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without moving anything.
    pub(crate) fn t(self) -> MatRef<'a> {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// A row-major destination matrix.
pub(crate) struct Mat<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Mat<'a> {
    pub(crate) fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat { data, rows, cols }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; split over the rayon pool when large.
pub(crate) fn matmul(dst: Mat, accumulate: bool, lhs: MatRef, rhs: MatRef) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && dst.rows == m && dst.cols == n,
        "matmul: {m}×{k} · {}×{n} into {}×{}",
        rhs.rows,
        dst.rows,
        dst.cols
    );
    assert!(lhs.fits() && rhs.fits() && dst.data.len() >= m * n, "matmul: a view reaches past its data");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.data[..m * n].fill(0.0);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked to lie within its slice above, and `dst` is borrowed
    // mutably, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
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

    fn spacing(stride: usize, padding: usize, dilation: usize) -> Spacing {
        Spacing {
            stride,
            padding,
            dilation,
        }
    }

    fn cases() -> Vec<(usize, usize, usize, Spacing)> {
        // (c_in, c_out, kernel, spacing): the stem, 3×3 and 1×1 convs at strides 1 and 2, a
        // dilated conv (ASPP), a patch embedding (kernel = stride, no padding), MiT's first one.
        vec![
            (3, 8, 7, spacing(2, 3, 1)),
            (4, 6, 3, spacing(1, 1, 1)),
            (4, 6, 3, spacing(2, 1, 1)),
            (5, 7, 1, spacing(1, 0, 1)),
            (5, 7, 1, spacing(2, 0, 1)),
            (4, 4, 3, spacing(1, 2, 2)),
            (3, 4, 4, spacing(4, 0, 1)),
            (3, 5, 7, spacing(4, 3, 1)),
        ]
    }

    #[test]
    fn matmul_of_transposed_views_matches_a_direct_sum() {
        let a: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..20).map(|v| (v % 7) as f32 - 3.0).collect();
        // a is 3×4 and b 5×4, both row-major: a · bᵀ is 3×5, added to a matrix of ones.
        let mut out = vec![1f32; 15];
        matmul(
            Mat::rows(&mut out, 3, 5),
            true,
            MatRef::rows(&a, 3, 4),
            MatRef::rows(&b, 5, 4).t(),
        );
        for r in 0..3 {
            for c in 0..5 {
                let direct: f32 = (0..4).map(|k| a[r * 4 + k] * b[c * 4 + k]).sum();
                assert_eq!(out[r * 5 + c], 1.0 + direct, "({r}, {c})");
            }
        }
    }

    /// Values and both gradients equal candle's own conv2d (the device-generic path, which the
    /// GPU runs) on square inputs of odd and even sides.
    #[test]
    fn values_and_gradients_match_candles_conv2d() {
        let dev = Device::Cpu;
        for (case, (c_in, c_out, k, s)) in cases().into_iter().enumerate() {
            for size in [16, 17] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c_in, size, size), &dev).unwrap()).unwrap();
                let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
                let reference = x.conv2d(&w, s.padding, s.stride, s.dilation, 1).unwrap();
                let fast = conv2d(&x, &w, s).unwrap();
                assert_eq!(reference.dims(), fast.dims(), "case {case} size {size}: shape");
                let d = max_abs(&(&reference - &fast).unwrap());
                assert!(
                    d <= 1e-5 * max_abs(&reference).max(1.0),
                    "case {case} size {size}: values off by {d}"
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
        for (case, (c_in, c_out, k, s)) in cases().into_iter().enumerate() {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c_in, 19, 26), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
            let y = conv2d(&x, &w, s).unwrap();
            let weights = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
            let loss = |x: &Tensor, w: &Tensor| -> f32 {
                let y = x.conv2d(w, s.padding, s.stride, s.dilation, 1).unwrap();
                (&y * &weights).unwrap().sum_all().unwrap().to_scalar().unwrap()
            };
            let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let base = loss(&x, &w);
            let dx = Tensor::randn(0f32, 1.0, x.dims(), &dev).unwrap();
            let dw = Tensor::randn(0f32, 1.0, w.dims(), &dev).unwrap();
            let along_x = loss(&(x.as_tensor() + &dx).unwrap(), &w) - base;
            let along_w = loss(&x, &(w.as_tensor() + &dw).unwrap()) - base;
            let predicted = |v: &Var, d: &Tensor| -> f32 {
                (grads.get(v).unwrap() * d)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            let (px, pw) = (predicted(&x, &dx), predicted(&w, &dw));
            assert!(
                (along_x - px).abs() <= 1e-3 * along_x.abs().max(1.0),
                "case {case}: input {along_x} vs {px}"
            );
            assert!(
                (along_w - pw).abs() <= 1e-3 * along_w.abs().max(1.0),
                "case {case}: kernel {along_w} vs {pw}"
            );
        }
    }

    /// The network's input image gets no gradient (it is the costliest one), a variable does.
    #[test]
    fn a_plain_input_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev).unwrap()).unwrap();
        let grads = conv2d(&x, &w, spacing(1, 1, 1))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some());
    }

    #[test]
    fn a_kernel_larger_than_the_padded_input_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((1, 2, 7, 7), candle_core::DType::F32, &dev).unwrap();
        let err = conv2d(&x, &w, spacing(1, 1, 1)).unwrap_err().to_string();
        assert!(err.contains("smaller than kernel"), "{err}");
    }
}
