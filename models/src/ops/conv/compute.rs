//! The three computations of a convolution over bands of output rows: forward, input gradient,
//! kernel gradient.

use rayon::prelude::*;

use super::geometry::{col2im, im2col, im2col_over, patch_stride, Geometry, FORWARD_BAND, KERNEL_GRADIENT_BAND};
use super::matmul::{matmul, Mat, MatRef};
use super::Spacing;
use crate::ops::cpu_values::zeros;

/// The output buffer shared by the tasks of `forward`, each of which writes its own entries.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: only `band` hands out access, and each band's entries are its own.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The `rows × cols` matrix at `start`, rows `stride` apart.
    ///
    /// # Safety
    /// No two live matrices may share an entry, and the buffer must outlive them.
    unsafe fn band(&self, start: usize, rows: usize, cols: usize, stride: usize) -> Mat<'_> {
        assert!(start <= self.len, "output band at {start} past {}", self.len);
        Mat::from_raw(self.ptr.add(start), self.len - start, rows, cols, stride)
    }
}

/// The patches of output rows `r0..r1` of image `n` into `cols` (resized to fit): one row per
/// (channel, tap), `width` columns `ld` apart. Returns `(width, ld)`.
fn band_patches(x: &[f32], g: Geometry, (n, r0, r1): (usize, usize, usize), cols: &mut Vec<f32>) -> (usize, usize) {
    let width = (r1 - r0) * g.out_w;
    let ld = patch_stride(width);
    cols.resize(g.rows() * ld, 0.0);
    im2col(
        &x[n * g.c * g.plane()..(n + 1) * g.c * g.plane()],
        g,
        (r0, r1),
        cols,
        ld,
    );
    (width, ld)
}

/// The patches of a band as a matrix of C·k_h·k_w rows: for a 1×1 kernel at stride 1 without
/// padding they are the image's own rows, viewed in place (a pointwise convolution, most of
/// EfficientNet's); otherwise [`band_patches`] gathers them into `cols`.
fn band_patch_matrix<'a>(x: &'a [f32], g: Geometry, band: (usize, usize, usize), cols: &'a mut Vec<f32>) -> MatRef<'a> {
    let (n, r0, r1) = band;
    if g.pointwise() {
        let start = n * g.c * g.plane() + r0 * g.w;
        return MatRef::strided(
            &x[start..(n + 1) * g.c * g.plane()],
            g.c,
            (r1 - r0) * g.out_w,
            g.plane(),
        );
    }
    let (width, ld) = band_patches(x, g, band, cols);
    MatRef::strided(cols, g.rows(), width, ld)
}

/// `Y_n[:, band] = W · patches(band)` for every band of every image, bands in parallel, each
/// with its own patch buffer and a single-threaded product.
pub(super) fn forward(x: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len) = (g.rows(), g.len());
    let mut y = zeros(g.n * g.c_out * len);
    let out = SharedOut {
        ptr: y.as_mut_ptr(),
        len: y.len(),
    };
    g.bands(FORWARD_BAND)
        .into_par_iter()
        .for_each_init(Vec::new, |cols, (n, r0, r1)| {
            let width = (r1 - r0) * g.out_w;
            let patches = band_patch_matrix(x, g, (n, r0, r1), cols);
            let start = n * g.c_out * len + r0 * g.out_w;
            // SAFETY: the band's entries are `start + o·len .. + width` for o < C_out: bands of
            // one image cover disjoint output rows and images disjoint planes, so no two tasks
            // share an entry, and nothing reads `y` until all have finished.
            let dst = unsafe { out.band(start, g.c_out, width, len) };
            matmul(dst, false, MatRef::rows(w, g.c_out, rows), patches, false);
        });
    y
}

/// The gradient for the input. At stride 1 it is itself a convolution: of the output gradient
/// with the kernel flipped in space and its channel axes swapped, padded by
/// `dilation·(k − 1) − padding`, so it runs banded like the forward. Strided convolutions
/// scatter `Wᵀ · dY_n` back with col2im, images in parallel.
pub(super) fn input_gradient(dy: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
    let (k_h, k_w, d, p) = (g.k_h, g.k_w, g.s.dilation, g.s.padding);
    if g.s.stride == 1 && d * (k_h - 1) >= p && d * (k_w - 1) >= p && k_h == k_w {
        let taps = k_h * k_w;
        let mut flipped = vec![0f32; w.len()];
        // Blocks of 16 input channels: each output channel's 16 kernels are read as one run
        // and written to 16 rows, instead of a stride of C_out·taps for every kernel.
        const BLOCK: usize = 16;
        flipped
            .par_chunks_mut(BLOCK * g.c_out * taps)
            .enumerate()
            .for_each(|(b, rows)| {
                let c0 = b * BLOCK;
                let block = rows.len() / (g.c_out * taps);
                for o in 0..g.c_out {
                    let src = &w[(o * g.c + c0) * taps..][..block * taps];
                    for (c, kernel) in src.chunks_exact(taps).enumerate() {
                        let dst = &mut rows[(c * g.c_out + o) * taps..][..taps];
                        for (d, v) in dst.iter_mut().zip(kernel.iter().rev()) {
                            *d = *v;
                        }
                    }
                }
            });
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
    let mut dx = zeros(g.n * g.c * g.plane());
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

/// Whether a kernel gradient's products are short: the batch's output positions N·L are few
/// (1024 at 16² and batch 4), so the kernel-sized result is large against each product.
fn short_products(g: Geometry) -> bool {
    g.n * g.len() <= 2048
}

/// One band's share of a kernel gradient: `dst (+)= grad · patchesᵀ`, or its transpose
/// `patches · gradᵀ` when `transposed`; `grad` is C_out × width, `patches` rows × width.
fn kernel_product(dst: Mat, accumulate: bool, grad: MatRef, patches: MatRef, transposed: bool) {
    if transposed {
        matmul(dst, accumulate, patches, grad.t(), false);
    } else {
        matmul(dst, accumulate, grad, patches.t(), false);
    }
}

/// `dW` from `dWᵀ` (`rows × c_out`).
fn untranspose(dw_t: &[f32], rows: usize, c_out: usize) -> Vec<f32> {
    let mut dw = vec![0f32; c_out * rows];
    for (r, row) in dw_t.chunks_exact(c_out).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            dw[o * rows + r] = v;
        }
    }
    dw
}

/// `dW = Σ_n dY_n · im2col(X_n)ᵀ`.
///
/// Where the batch's output positions are few ([`short_products`], the deep layers), each task
/// owns the kernel entries of a share of the input channels and sums over the whole batch into
/// them, several whole images side by side per product, straight into `dW`. Elsewhere, and for
/// inputs of fewer channels than twice the threads, [`kernel_gradient_split`].
pub(super) fn kernel_gradient(dy: &[f32], x: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len, taps) = (g.rows(), g.len(), g.k_h * g.k_w);
    let threads = rayon::current_num_threads();
    if g.c < 2 * threads || !short_products(g) {
        return kernel_gradient_split(dy, x, g);
    }
    // dY with the batch inside each channel's row: (C_out, N·L).
    let total = g.n * len;
    let gathered;
    let dyc: &[f32] = if g.n == 1 {
        dy
    } else {
        let mut t = vec![0f32; g.c_out * total];
        t.par_chunks_exact_mut(total).enumerate().for_each(|(o, row)| {
            for n in 0..g.n {
                row[n * len..(n + 1) * len].copy_from_slice(&dy[(n * g.c_out + o) * len..][..len]);
            }
        });
        gathered = t;
        &gathered
    };
    let share = g.c.div_ceil(threads);
    let mut dw = vec![0f32; g.c_out * rows];
    let out = SharedOut {
        ptr: dw.as_mut_ptr(),
        len: dw.len(),
    };
    (0..g.c.div_ceil(share)).into_par_iter().for_each(|t| {
        let c0 = t * share;
        let sub = Geometry {
            c: share.min(g.c - c0),
            ..g
        };
        let sub_rows = sub.rows();
        // SAFETY: the task's entries are those of channels c0 .. c0 + sub.c, columns c0·taps ..
        // + sub_rows of every row of dW. The tasks' channel shares are disjoint, and nothing
        // reads `dw` until all have finished.
        let mut dst = unsafe { out.band(c0 * taps, g.c_out, sub_rows, rows) };
        let band_rows = sub.band_rows(KERNEL_GRADIENT_BAND);
        let images = if band_rows >= g.out_h {
            (KERNEL_GRADIENT_BAND / (sub_rows * len).max(1)).clamp(1, g.n)
        } else {
            1
        };
        let image = |n: usize| &x[(n * g.c + c0) * g.plane()..][..sub.c * g.plane()];
        let mut cols = Vec::new();
        let mut first = true;
        for n0 in (0..g.n).step_by(images) {
            let n1 = (n0 + images).min(g.n);
            for r0 in (0..g.out_h).step_by(band_rows.min(g.out_h)) {
                let r1 = (r0 + band_rows).min(g.out_h);
                let per = (r1 - r0) * g.out_w;
                let width = (n1 - n0) * per;
                let patches = if g.pointwise() && n1 - n0 == 1 {
                    MatRef::strided(&image(n0)[r0 * g.w..], sub.c, per, g.plane())
                } else {
                    let ld = patch_stride(width);
                    // Slack past the last row: each image's patches start `per` further in.
                    cols.resize(sub_rows * ld + width, 0.0);
                    if g.s.padding > 0 {
                        cols.fill(0.0);
                    }
                    for n in n0..n1 {
                        im2col_over(image(n), sub, (r0, r1), &mut cols[(n - n0) * per..], ld);
                    }
                    MatRef::strided(&cols, sub_rows, width, ld)
                };
                let grad = MatRef::strided(&dyc[n0 * len + r0 * g.out_w..], g.c_out, width, total);
                matmul(dst.reborrow(), !first, grad, patches.t(), false);
                first = false;
            }
        }
    });
    dw
}

/// `dW = Σ_bands dY_n[:, band] · patches(band)ᵀ` with the bands cut into one contiguous share
/// per thread, each summed into its own matrix, and the shares added in order, so the result
/// does not depend on scheduling. The products run into `dWᵀ` (C·k_h·k_w × C_out, transposed at
/// the end), which `gemm` runs faster for the few output channels of large planes; where the
/// products are short, the transpose's strided writes would cost more than that gains.
fn kernel_gradient_split(dy: &[f32], x: &[f32], g: Geometry) -> Vec<f32> {
    let (rows, len) = (g.rows(), g.len());
    let transposed = !short_products(g);
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
                let patches = band_patch_matrix(x, g, (n, r0, r1), &mut cols);
                let start = n * g.c_out * len + r0 * g.out_w;
                let grad = MatRef::strided(&dy[start..start + (g.c_out - 1) * len + width], g.c_out, width, len);
                let dst = if transposed {
                    Mat::rows(&mut dw, rows, g.c_out)
                } else {
                    Mat::rows(&mut dw, g.c_out, rows)
                };
                kernel_product(dst, i > 0, grad, patches, transposed);
            }
            dw
        })
        .collect();
    let mut partial = partial.into_iter();
    let mut dw = partial.next().unwrap_or_else(|| vec![0f32; g.c_out * rows]);
    for p in partial {
        dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    if transposed {
        untranspose(&dw, rows, g.c_out)
    } else {
        dw
    }
}
