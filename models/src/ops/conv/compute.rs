//! The three computations of a convolution over bands of output rows: forward, input gradient,
//! kernel gradient.

use rayon::prelude::*;

use super::geometry::{col2im, im2col, patch_stride, Geometry, FORWARD_BAND, KERNEL_GRADIENT_BAND};
use super::matmul::{matmul, Mat, MatRef};
use super::Spacing;

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
    if (g.k_h, g.k_w, g.s.stride, g.s.padding) == (1, 1, 1, 0) {
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
    let mut y = vec![0f32; g.n * g.c_out * len];
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
pub(super) fn kernel_gradient(dy: &[f32], x: &[f32], g: Geometry) -> Vec<f32> {
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
                let patches = band_patch_matrix(x, g, (n, r0, r1), &mut cols);
                let start = n * g.c_out * len + r0 * g.out_w;
                let grad = &dy[start..start + (g.c_out - 1) * len + width];
                matmul(
                    Mat::rows(&mut dw, rows, g.c_out),
                    i > 0,
                    patches,
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
