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
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

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

/// `x` (N, C, H, W) convolved per channel with `weight` (C, 1, k_h, k_w): a depthwise
/// convolution (groups = channels), no bias; f32 on the CPU, with gradients for both. Direct
/// loops over each plane's runs: a k² product per value is too little work for a matrix kernel,
/// and candle runs it as C separate convolutions (its backward as C naive transposed ones).
pub(crate) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, spacing: Spacing) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, DepthwiseOp { spacing })?)
}

struct DepthwiseOp {
    spacing: Spacing,
}

impl DepthwiseOp {
    /// The geometry of one plane (one image, one channel), and the planes' count.
    fn plane_geometry(&self, input: &Shape, kernel: &Shape) -> candle_core::Result<(Geometry, usize)> {
        let (n, c, h, w) = input.dims4()?;
        let (c_out, per_group, k_h, k_w) = kernel.dims4()?;
        if c_out != c || per_group != 1 {
            candle_core::bail!(
                "ftu-depthwise-conv2d: kernel {kernel:?} for an input of {c} channels (C, 1, k, k expected)"
            )
        }
        let one = Geometry::new(&(1, 1, h, w).into(), &(1, 1, k_h, k_w).into(), self.spacing)?;
        Ok((one, n * c))
    }
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "ftu-depthwise-conv2d"
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
        let (g, planes) = self.plane_geometry(l1.shape(), l2.shape())?;
        let (n, c, _, _) = l1.shape().dims4()?;
        let taps = g.k_h * g.k_w;
        let mut y = vec![0f32; planes * g.len()];
        profile::scope("depthwise conv2d forward", x.len() + y.len(), || {
            y.par_chunks_mut(g.len())
                .zip(x.par_chunks(g.plane()))
                .enumerate()
                .for_each(|(nc, (out, src))| {
                    let kernel = &w[(nc % c) * taps..][..taps];
                    g.runs((0, g.out_h), |tap, o, i, count| {
                        axpy(kernel[tap], src, i, g.s.stride, &mut out[o..o + count]);
                    });
                });
        });
        Ok((CpuStorage::F32(y), (n, c, g.out_h, g.out_w).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, planes) = self.plane_geometry(x.shape(), weight.shape())?;
        let c = x.dim(1)?;
        let taps = g.k_h * g.k_w;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (Storage::Cpu(gs), Storage::Cpu(xs), Storage::Cpu(ws)) = (&*gs, &*xs, &*ws) else {
            candle_core::bail!("ftu-depthwise-conv2d: tensors must be on the CPU")
        };
        let dy = f32s(gs, gl, self.name(), "output gradient")?;
        let xv = f32s(xs, xl, self.name(), "input")?;
        let w = f32s(ws, wl, self.name(), "kernel")?;
        if dy.len() != planes * g.len() {
            candle_core::bail!(
                "ftu-depthwise-conv2d: output gradient of {} values, expected {}",
                dy.len(),
                planes * g.len()
            )
        }
        let n = planes / c.max(1);
        let s = g.s.stride;
        let grad_x = if x.track_op() {
            let mut dx = vec![0f32; planes * g.plane()];
            profile::scope("depthwise conv2d input gradient", dx.len() + dy.len(), || {
                dx.par_chunks_mut(g.plane())
                    .zip(dy.par_chunks(g.len()))
                    .enumerate()
                    .for_each(|(nc, (dst, src))| {
                        let kernel = &w[(nc % c) * taps..][..taps];
                        g.runs((0, g.out_h), |tap, o, i, count| {
                            let k = kernel[tap];
                            for (j, &v) in src[o..o + count].iter().enumerate() {
                                dst[i + j * s] += k * v;
                            }
                        });
                    });
            });
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        // Per channel, its taps summed over the images in order.
        let mut dw = vec![0f32; c * taps];
        profile::scope("depthwise conv2d kernel gradient", xv.len() + dy.len(), || {
            dw.par_chunks_mut(taps).enumerate().for_each(|(ch, dst)| {
                for img in 0..n {
                    let nc = img * c + ch;
                    let (src, grad) = (&xv[nc * g.plane()..][..g.plane()], &dy[nc * g.len()..][..g.len()]);
                    g.runs((0, g.out_h), |tap, o, i, count| {
                        dst[tap] += grad[o..o + count]
                            .iter()
                            .enumerate()
                            .map(|(j, &v)| v * src[i + j * s])
                            .sum::<f32>();
                    });
                }
            });
        });
        Ok((grad_x, Some(Tensor::from_vec(dw, weight.shape(), weight.device())?)))
    }
}

/// `out[j] += a·src[start + j·stride]` for every j.
fn axpy(a: f32, src: &[f32], start: usize, stride: usize, out: &mut [f32]) {
    if stride == 1 {
        let len = out.len();
        for (o, &v) in out.iter_mut().zip(&src[start..start + len]) {
            *o += a * v;
        }
    } else {
        for (j, o) in out.iter_mut().enumerate() {
            *o += a * src[start + j * stride];
        }
    }
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
                candle_core::bail!(
                    "ftu-conv2d: input {input:?} padded by {} is smaller than kernel {kernel:?}",
                    s.padding
                )
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

    /// Values one pass reads and writes: input, kernel and output, and the patches written and
    /// read once (from cache, for the most part).
    fn traffic(&self) -> usize {
        let patches = 2 * self.n * self.rows() * self.len();
        self.n * (self.c * self.plane() + self.c_out * self.len()) + self.c_out * self.rows() + patches
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

    /// Calls `f(tap, out_start, in_start, count)` for every run of outputs of rows `band` that
    /// read an input plane: `count` outputs from `out_start` (counted from the band's first
    /// output) read `in_start`, `in_start + stride`, …
    fn runs(&self, band: (usize, usize), mut f: impl FnMut(usize, usize, usize, usize)) {
        let s = self.s.stride;
        for i in 0..self.k_h {
            let oy = self.offset(i);
            let rows = self.valid(self.out_h, self.h, oy);
            let rows = rows.start.max(band.0)..rows.end.min(band.1);
            for j in 0..self.k_w {
                let ox = self.offset(j);
                let cols = self.valid(self.out_w, self.w, ox);
                if cols.is_empty() {
                    continue;
                }
                for t in rows.clone() {
                    let y = (t * s) as isize + oy;
                    let x = (cols.start * s) as isize + ox;
                    f(
                        i * self.k_w + j,
                        (t - band.0) * self.out_w + cols.start,
                        y as usize * self.w + x as usize,
                        cols.len(),
                    );
                }
            }
        }
    }

    /// Output rows per band: enough that a band's patches (C·k_h·k_w × rows·out_w) make a
    /// matrix product worth its call, few enough that they stay in a core's L2 cache between
    /// im2col writing them and the product reading them.
    fn band_rows(&self, patch_values: usize) -> usize {
        (patch_values / (self.rows() * self.out_w).max(1)).clamp(1, self.out_h.max(1))
    }

    /// Every (image, first row, end row) band of about `patch_values` patch entries, images in
    /// order.
    fn bands(&self, patch_values: usize) -> Vec<(usize, usize, usize)> {
        let step = self.band_rows(patch_values);
        (0..self.n)
            .flat_map(|n| {
                (0..self.out_h)
                    .step_by(step)
                    .map(move |r| (n, r, (r + step).min(self.out_h)))
            })
            .collect()
    }
}

/// Patch entries per band in the forward (and stride-1 input gradient): written by im2col and
/// read back by the product while they are still in L2.
const FORWARD_BAND: usize = 96 * 1024;

/// Patch entries per band for the kernel gradient, whose product sums over the band's width:
/// wider bands mean fewer read-modify-writes of the kernel-sized result.
const KERNEL_GRADIENT_BAND: usize = 768 * 1024;

/// Row stride of a band's patch matrix of `width` columns: a little more than the width and
/// never a multiple of 64 values, so that the product's strided walk down the rows does not
/// map every row to the same cache sets.
fn patch_stride(width: usize) -> usize {
    let ld = width.next_multiple_of(16) + 16;
    if ld % 64 == 0 {
        ld + 16
    } else {
        ld
    }
}

/// im2col of output rows `band` of one image (C, H, W) into `cols`, row `c·k_h·k_w + tap` at
/// `row·ld`; entries that read padding are zero.
fn im2col(image: &[f32], g: Geometry, band: (usize, usize), cols: &mut [f32], ld: usize) {
    let (plane, taps, s) = (g.plane(), g.k_h * g.k_w, g.s.stride);
    if g.s.padding > 0 {
        cols.fill(0.0);
    }
    for (c, src) in image.chunks_exact(plane).enumerate() {
        let out = &mut cols[c * taps * ld..(c + 1) * taps * ld];
        g.runs(band, |tap, o, i, count| {
            let dst = &mut out[tap * ld + o..][..count];
            if s == 1 {
                dst.copy_from_slice(&src[i..i + count]);
            } else {
                for (k, d) in dst.iter_mut().enumerate() {
                    *d = src[i + k * s];
                }
            }
        });
    }
}

/// col2im, the adjoint of whole-image `im2col` (`cols` of C·k_h·k_w × L): each patch entry is
/// added back where it was read from.
fn col2im(cols: &[f32], g: Geometry, image: &mut [f32]) {
    let (plane, taps, len, s) = (g.plane(), g.k_h * g.k_w, g.len(), g.s.stride);
    for (dst, src) in image.chunks_exact_mut(plane).zip(cols.chunks_exact(taps * len)) {
        dst.fill(0.0);
        g.runs((0, g.out_h), |tap, o, i, count| {
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
    }
}

/// The output buffer shared by the tasks of `forward`, each of which writes its own disjoint
/// region of it.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: only `region` hands out access, and its callers take disjoint regions.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Values `start..start + len`.
    ///
    /// # Safety
    /// No two live regions may overlap, and the buffer must outlive them.
    #[allow(clippy::mut_from_ref)]
    unsafe fn region(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "output region {start}+{len} past {}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// `Y_n[:, band] = W · patches(band)` for every band of every image, bands in parallel, each
/// with its own patch buffer and a single-threaded product.
fn forward(x: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len) = (g.rows(), g.len());
    let mut y = vec![0f32; g.n * g.c_out * len];
    let out = SharedOut {
        ptr: y.as_mut_ptr(),
        len: y.len(),
    };
    g.bands(FORWARD_BAND)
        .into_par_iter()
        .for_each_init(Vec::new, |cols, (n, r0, r1)| {
            let width = (r1 - r0) * g.out_w;
            let ld = patch_stride(width);
            cols.resize(rows * ld, 0.0);
            im2col(
                &x[n * g.c * g.plane()..(n + 1) * g.c * g.plane()],
                g,
                (r0, r1),
                cols,
                ld,
            );
            let start = n * g.c_out * len + r0 * g.out_w;
            // SAFETY: the band's outputs are rows `start + o·len .. + width` for o < C_out: bands
            // of one image cover disjoint output rows and images disjoint planes, so no two tasks
            // write the same value, and nothing reads `y` until all have finished.
            let dst = unsafe { out.region(start, (g.c_out - 1) * len + width) };
            matmul(
                Mat::strided(dst, g.c_out, width, len),
                false,
                MatRef::rows(w, g.c_out, rows),
                MatRef::strided(cols, rows, width, ld),
                false,
            );
        });
    y
}

/// The gradient for the input. At stride 1 it is itself a convolution: of the output gradient
/// with the kernel flipped in space and its channel axes swapped, padded by
/// `dilation·(k − 1) − padding`, so it runs banded like the forward. Strided convolutions
/// scatter `Wᵀ · dY_n` back with col2im, images in parallel.
fn input_gradient(dy: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
    let (k_h, k_w, d, p) = (g.k_h, g.k_w, g.s.dilation, g.s.padding);
    if g.s.stride == 1 && d * (k_h - 1) >= p && d * (k_w - 1) >= p && k_h == k_w {
        let taps = k_h * k_w;
        let mut flipped = vec![0f32; w.len()];
        for o in 0..g.c_out {
            for c in 0..g.c {
                let src = &w[(o * g.c + c) * taps..][..taps];
                let dst = &mut flipped[(c * g.c_out + o) * taps..][..taps];
                for (t, v) in dst.iter_mut().enumerate() {
                    *v = src[taps - 1 - t];
                }
            }
        }
        let transposed = Geometry {
            n: g.n,
            c: g.c_out,
            h: g.out_h,
            w: g.out_w,
            c_out: g.c,
            k_h,
            k_w,
            out_h: g.h,
            out_w: g.w,
            s: Spacing {
                stride: 1,
                padding: d * (k_h - 1) - p,
                dilation: d,
            },
        };
        return forward(dy, &flipped, transposed);
    }
    let (rows, len) = (g.rows(), g.len());
    let mut dx = vec![0f32; g.n * g.c * g.plane()];
    let w_t = MatRef::rows(w, g.c_out, rows).t();
    let parallel_products = g.n < rayon::current_num_threads();
    dx.par_chunks_exact_mut(g.c * g.plane())
        .zip(dy.par_chunks_exact(g.c_out * len))
        .for_each_init(Vec::new, |dcols, (image, grad)| {
            dcols.resize(rows * len, 0.0);
            let grad = MatRef::rows(grad, g.c_out, len);
            matmul(Mat::rows(dcols, rows, len), false, w_t, grad, parallel_products);
            col2im(dcols, g, image);
        });
    dx
}

/// `dW = Σ_bands dY_n[:, band] · patches(band)ᵀ`. The bands are cut into one contiguous share per
/// thread, each summed into its own matrix, and the shares added in order, so the result does
/// not depend on scheduling.
fn kernel_gradient(dy: &[f32], x: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len) = (g.rows(), g.len());
    let bands = g.bands(KERNEL_GRADIENT_BAND);
    let shares = rayon::current_num_threads().min(bands.len()).max(1);
    let partial: Vec<Vec<f32>> = (0..shares)
        .into_par_iter()
        .map(|t| {
            let mut dw = vec![0f32; g.c_out * rows];
            let mut cols = Vec::new();
            let mine = &bands[t * bands.len() / shares..(t + 1) * bands.len() / shares];
            for (i, &(n, r0, r1)) in mine.iter().enumerate() {
                let width = (r1 - r0) * g.out_w;
                let ld = patch_stride(width);
                cols.resize(rows * ld, 0.0);
                im2col(
                    &x[n * g.c * g.plane()..(n + 1) * g.c * g.plane()],
                    g,
                    (r0, r1),
                    &mut cols,
                    ld,
                );
                let start = n * g.c_out * len + r0 * g.out_w;
                let grad = &dy[start..start + (g.c_out - 1) * len + width];
                matmul(
                    Mat::rows(&mut dw, rows, g.c_out),
                    i > 0,
                    MatRef::strided(&cols, rows, width, ld),
                    MatRef::strided(grad, g.c_out, width, len).t(),
                    false,
                );
            }
            dw
        })
        .collect();
    let mut partial = partial.into_iter();
    let mut dw_t = partial.next().unwrap_or_else(|| vec![0f32; g.c_out * rows]);
    for p in partial {
        dw_t.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    let mut dw = vec![0f32; g.c_out * rows];
    for (r, row) in dw_t.chunks_exact(g.c_out).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            dw[o * rows + r] = v;
        }
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
        Self::strided(data, rows, cols, cols)
    }

    /// A row-major `rows × cols` matrix whose rows start `stride` values apart.
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> MatRef<'a> {
        MatRef {
            data,
            rows,
            cols,
            rs: stride,
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

/// A row-major destination matrix whose rows start `stride` values apart.
pub(crate) struct Mat<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<'a> Mat<'a> {
    pub(crate) fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Mat<'a> {
        Self::strided(data, rows, cols, cols)
    }

    pub(crate) fn strided(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Mat<'a> {
        Mat {
            data,
            rows,
            cols,
            stride,
        }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; split over the rayon pool when
/// `parallel` and large.
pub(crate) fn matmul(dst: Mat, accumulate: bool, lhs: MatRef, rhs: MatRef, parallel: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && dst.rows == m && dst.cols == n && dst.stride >= n,
        "matmul: {m}×{k} · {}×{n} into {}×{} (row stride {})",
        rhs.rows,
        dst.rows,
        dst.cols,
        dst.stride
    );
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst.stride + n <= dst.data.len();
    assert!(
        lhs.fits() && rhs.fits() && dst_fits,
        "matmul: a view reaches past its data"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst.data[row * dst.stride..row * dst.stride + n].fill(0.0);
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 && m * n * k >= 1 << 18 {
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
            dst.stride as isize,
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
            false,
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

    /// Inputs large enough to be cut into many bands (forward and kernel gradient) give the same
    /// values and gradients as candle's conv2d.
    #[test]
    fn many_bands_match_candles_conv2d() {
        let dev = Device::Cpu;
        for (c_in, c_out, k, s, side) in [
            (64, 16, 3, spacing(1, 1, 1), 40),
            (48, 24, 3, spacing(2, 1, 1), 41),
            (96, 8, 1, spacing(1, 0, 1), 64),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, c_in, side, side), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
            let g = Geometry::new(x.shape(), w.shape(), s).unwrap();
            assert!(
                g.bands(FORWARD_BAND).len() > 3 * 2,
                "{c_in}→{c_out}: several bands per image"
            );
            let reference = x.conv2d(&w, s.padding, s.stride, s.dilation, 1).unwrap();
            let fast = conv2d(&x, &w, s).unwrap();
            let d = max_abs(&(&reference - &fast).unwrap());
            assert!(d <= 1e-5 * max_abs(&reference), "{c_in}→{c_out}: values off by {d}");
            let weights = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
            let g_ref = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_new = (&fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &x), ("kernel", &w)] {
                let (a, b) = (g_ref.get(v).unwrap(), g_new.get(v).unwrap());
                let d = max_abs(&(a - b).unwrap());
                assert!(
                    d <= 1e-5 * max_abs(a),
                    "{c_in}→{c_out}: {name} gradient off by {d} of {}",
                    max_abs(a)
                );
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

    /// The depthwise op equals candle's grouped conv2d in values and both gradients, at the
    /// kernels and strides EfficientNet and MiT use, on odd and even sides (square: candle's own
    /// backward fails on non-square strided inputs).
    #[test]
    fn depthwise_matches_candles_grouped_conv2d() {
        let dev = Device::Cpu;
        let cases = [
            (3, spacing(1, 1, 1)),
            (3, spacing(2, 1, 1)),
            (5, spacing(1, 2, 1)),
            (5, spacing(2, 2, 1)),
        ];
        for ((k, s), side) in cases
            .into_iter()
            .flat_map(|case| [2, 3, 4, 11, 12].map(|side| (case, side)))
        {
            let c = 4;
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, side, side), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c, 1, k, k), &dev).unwrap()).unwrap();
            let reference = x.conv2d(&w, s.padding, s.stride, s.dilation, c).unwrap();
            let ours = depthwise_conv2d(&x, &w, s).unwrap();
            assert_eq!(reference.dims(), ours.dims(), "k {k} {s:?}: shape");
            let d = max_abs(&(&reference - &ours).unwrap());
            assert!(
                d <= 1e-5 * max_abs(&reference).max(1.0),
                "k {k} {s:?}: values off by {d}"
            );
            let weights = Tensor::randn(0f32, 1.0, reference.dims(), &dev).unwrap();
            let g_ref = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_new = (&ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &x), ("kernel", &w)] {
                let (a, b) = (g_ref.get(v).unwrap(), g_new.get(v).unwrap());
                let d = max_abs(&(a - b).unwrap());
                assert!(
                    d <= 1e-5 * max_abs(a).max(1.0),
                    "k {k} {s:?}: {name} gradient off by {d}"
                );
            }
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
