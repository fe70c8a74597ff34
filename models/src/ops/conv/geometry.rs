//! The geometry of one convolution: output sizes, the runs of outputs that read each input
//! row, bands of output rows, and im2col / col2im over them.

use candle_core::Shape;

use super::Spacing;

/// The geometry of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) k_h: usize,
    pub(super) k_w: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
    pub(super) s: Spacing,
}

impl Geometry {
    pub(super) fn new(input: &Shape, kernel: &Shape, s: Spacing) -> candle_core::Result<Geometry> {
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

    pub(super) fn output_shape(&self) -> Shape {
        (self.n, self.c_out, self.out_h, self.out_w).into()
    }

    pub(super) fn check_output(&self, shape: &Shape, op: &str) -> candle_core::Result<()> {
        if shape != &self.output_shape() {
            candle_core::bail!("{op}: output gradient {shape:?}, expected {:?}", self.output_shape())
        }
        Ok(())
    }

    /// Values one pass reads and writes: input, kernel and output, and the patches written and
    /// read once (from cache, for the most part).
    pub(super) fn traffic(&self) -> usize {
        let patches = 2 * self.n * self.rows() * self.len();
        self.n * (self.c * self.plane() + self.c_out * self.len()) + self.c_out * self.rows() + patches
    }

    /// A 1×1 kernel at stride 1 without padding: its patches are the image's own rows.
    pub(super) fn pointwise(&self) -> bool {
        (self.k_h, self.k_w, self.s.stride, self.s.padding) == (1, 1, 1, 0)
    }

    /// Rows of the patch matrix: C·k_h·k_w.
    pub(super) fn rows(&self) -> usize {
        self.c * self.k_h * self.k_w
    }

    /// Output positions per image.
    pub(super) fn len(&self) -> usize {
        self.out_h * self.out_w
    }

    pub(super) fn plane(&self) -> usize {
        self.h * self.w
    }

    /// The outputs `u` whose input index `u·stride + offset` lies in `0..size`.
    pub(super) fn valid(&self, out: usize, size: usize, offset: isize) -> std::ops::Range<usize> {
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
    pub(super) fn offset(&self, i: usize) -> isize {
        (i * self.s.dilation) as isize - self.s.padding as isize
    }

    /// Calls `f(tap, out_start, in_start, count)` for every run of outputs of rows `band` that
    /// read an input plane: `count` outputs from `out_start` (counted from the band's first
    /// output) read `in_start`, `in_start + stride`, …
    #[inline(always)]
    pub(super) fn runs(&self, band: (usize, usize), mut f: impl FnMut(usize, usize, usize, usize)) {
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

    /// Output rows per band: few enough that a band's patches (C·k_h·k_w × rows·out_w) stay in
    /// a core's L2 cache between im2col writing them and the product reading them, but at least
    /// [`MIN_BAND_COLUMNS`] outputs, so that the deep layers' products do not stream their whole
    /// kernel through the core for a handful of columns.
    pub(super) fn band_rows(&self, patch_values: usize) -> usize {
        let w = self.out_w.max(1);
        (patch_values / (self.rows() * w).max(1))
            .max(MIN_BAND_COLUMNS.div_ceil(w))
            .clamp(1, self.out_h.max(1))
    }

    /// Every (image, first row, end row) band of about `patch_values` patch entries, images in
    /// order.
    pub(super) fn bands(&self, patch_values: usize) -> Vec<(usize, usize, usize)> {
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
pub(super) const FORWARD_BAND: usize = 96 * 1024;

/// Outputs per band at the least, whatever the patches' size: a product of a 256 × 6912 kernel
/// (UNet's decoder at 16²) with 16 columns ran at 133 GFLOP/s on 2 cores of an Intel Xeon, with
/// 128 columns at 256 GFLOP/s, while 64 to 128 columns change little for the shallow layers.
pub(super) const MIN_BAND_COLUMNS: usize = 128;

/// Patch entries per band for the kernel gradient, whose product sums over the band's width:
/// wider bands mean fewer read-modify-writes of the kernel-sized result.
pub(super) const KERNEL_GRADIENT_BAND: usize = 768 * 1024;

/// Row stride of a band's patch matrix of `width` columns: a little more than the width and
/// never a multiple of 64 values, so that the product's strided walk down the rows does not
/// map every row to the same cache sets.
pub(super) fn patch_stride(width: usize) -> usize {
    let ld = width.next_multiple_of(16) + 16;
    if ld % 64 == 0 {
        ld + 16
    } else {
        ld
    }
}

/// im2col of output rows `band` of one image (C, H, W) into `cols`, row `c·k_h·k_w + tap` at
/// `row·ld`; entries that read padding are zero.
pub(super) fn im2col(image: &[f32], g: Geometry, band: (usize, usize), cols: &mut [f32], ld: usize) {
    if g.s.padding > 0 {
        cols.fill(0.0);
    }
    im2col_over(image, g, band, cols, ld);
}

/// [`im2col`] that leaves the entries reading padding as they are: zeroed beforehand by the
/// caller, which fills several images' patches side by side in one matrix.
pub(super) fn im2col_over(image: &[f32], g: Geometry, band: (usize, usize), cols: &mut [f32], ld: usize) {
    let (plane, taps, s) = (g.plane(), g.k_h * g.k_w, g.s.stride);
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
pub(super) fn col2im(cols: &[f32], g: Geometry, image: &mut [f32]) {
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
