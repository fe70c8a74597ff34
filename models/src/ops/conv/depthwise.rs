//! Depthwise convolution (groups = channels, one kernel per channel) as direct loops over each
//! plane, all taps of a run of outputs summed in registers: a k² product per value is too little
//! work for a matrix kernel, and candle runs it as C separate convolutions (its backward as C
//! naive transposed ones).
//!
//! Each plane is first copied into a zero-padded layout whose columns are dealt into `stride`
//! phases ([`Padded`]), so that every tap of every output row reads one contiguous run, whatever
//! the stride, with no bounds to test: the forward sums all k_h·k_w taps of a chunk of outputs
//! (8 to 64, by the plane's width) in an array LLVM keeps in vector registers, and stores it
//! once. The input gradient at stride 1 is the same forward of the output gradient with the
//! kernel flipped; strided, its adjoint (each tap's products added into the padded layout, then
//! gathered back). The kernel gradient is one chunk-wide dot product per tap.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::geometry::Geometry;
use super::Spacing;
use crate::ops::cpu_values::{f32s, storage_f32s};
use crate::ops::simd;
use crate::{profile, Result};

/// `x` (N, C, H, W) convolved per channel with `weight` (C, 1, k_h, k_w): a depthwise
/// convolution (groups = channels), no bias; f32 on the CPU, with gradients for both.
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

/// Outputs summed together in registers: 8 for rows of at most 8, else the chunk among 64, 32
/// and 16 (one AVX-512 register and more) that pads a row of `out_w` outputs least, the wider
/// on a tie.
fn chunk(out_w: usize) -> usize {
    if out_w <= 8 {
        return 8;
    }
    [64, 32, 16]
        .into_iter()
        .min_by_key(|&ch| (out_w.next_multiple_of(ch), usize::MAX - ch))
        .unwrap_or(16)
}

/// Calls `$f::<CH>($args)` with the chunk `$ch` as a constant.
macro_rules! with_chunk {
    ($ch:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $ch {
            64 => $f::<64>($($arg),*),
            32 => $f::<32>($($arg),*),
            16 => $f::<16>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
}

/// One plane zero-padded, its columns dealt into `stride` phases: padded row `y` holds phase
/// `φ` (the columns `x` with `x % stride == φ`, at `x / stride`) from `(y·stride + φ)·phase`.
/// Output `(oy, ox)`'s tap `(i, j)` reads padded `(oy·s + i·d, ox·s + j·d)`, at
/// `oy·row_step + taps[i·k_w + j] + ox`: for each tap, a row of outputs reads one contiguous run.
/// Each phase has room for `width` outputs (out_w rounded up to the chunk), so a chunk never
/// reads past the layout; the values past out_w that it computes are dropped.
struct Padded {
    g: Geometry,
    width: usize,
    phase: usize,
    rows: usize,
    cols: usize,
    taps: Vec<usize>,
}

impl Padded {
    fn new(g: Geometry, chunk: usize) -> Padded {
        let (s, d) = (g.s.stride, g.s.dilation);
        let width = g.out_w.next_multiple_of(chunk);
        let taps = (0..g.k_h)
            .flat_map(|i| (0..g.k_w).map(move |j| (i * d, j * d)))
            .map(|(di, dj)| (di * s + dj % s) * (width + (g.k_w - 1) * d / s) + dj / s)
            .collect();
        Padded {
            g,
            width,
            phase: width + (g.k_w - 1) * d / s,
            rows: (g.out_h - 1) * s + (g.k_h - 1) * d + 1,
            cols: (g.out_w - 1) * s + (g.k_w - 1) * d + 1,
            taps,
        }
    }

    fn len(&self) -> usize {
        self.rows * self.g.s.stride * self.phase
    }

    /// From one output row's first read to the next's.
    fn row_step(&self) -> usize {
        self.g.s.stride * self.g.s.stride * self.phase
    }

    /// Where padded `(y, x)` lives.
    fn entry(&self, y: usize, x: usize) -> usize {
        let s = self.g.s.stride;
        (y * s + x % s) * self.phase + x / s
    }

    /// The input rows and columns that outputs read: `(first, end)` of each, in input indices.
    fn read(&self) -> ((usize, usize), (usize, usize)) {
        let p = self.g.s.padding;
        let span = |size: usize, padded: usize| (0, padded.saturating_sub(p).min(size));
        (span(self.g.h, self.rows), span(self.g.w, self.cols))
    }

    /// `plane` (H × W) into `buf` (`len()` values), zeros where outputs read padding.
    #[inline(always)]
    fn fill(&self, plane: &[f32], buf: &mut [f32]) {
        let (p, s, w) = (self.g.s.padding, self.g.s.stride, self.g.w);
        let ((y0, y1), (x0, x1)) = self.read();
        buf.fill(0.0);
        for y in y0..y1 {
            let src = &plane[y * w..][x0..x1];
            if s == 1 {
                let at = self.entry(y + p, x0 + p);
                buf[at..at + src.len()].copy_from_slice(src);
            } else {
                for (x, &v) in (x0..x1).zip(src) {
                    buf[self.entry(y + p, x + p)] = v;
                }
            }
        }
    }

    /// The adjoint of [`Padded::fill`]: each input value's entry of `buf` into `plane`, zero for
    /// the values no output reads.
    #[inline(always)]
    fn gather(&self, buf: &[f32], plane: &mut [f32]) {
        let (p, s, w) = (self.g.s.padding, self.g.s.stride, self.g.w);
        let ((y0, y1), (x0, x1)) = self.read();
        plane.fill(0.0);
        for y in y0..y1 {
            let dst = &mut plane[y * w..][x0..x1];
            if s == 1 {
                let at = self.entry(y + p, x0 + p);
                dst.copy_from_slice(&buf[at..at + dst.len()]);
            } else {
                for (x, d) in (x0..x1).zip(dst) {
                    *d = buf[self.entry(y + p, x + p)];
                }
            }
        }
    }
}

/// At stride 1, `dx[y][x] = Σ k[i][j]·dy[y + p − i·d][x + p − j·d]`: the forward of `dy` (out_h ×
/// out_w) with the kernel flipped, padded by (k − 1)·d − p, whose output is the input's plane.
/// The geometry of that forward where it exists: stride 1, a square kernel (one padding serves
/// both axes), and a padding of at most (k − 1)·d.
fn flipped_geometry(g: Geometry) -> candle_core::Result<Option<Geometry>> {
    let reach = (g.k_w - 1) * g.s.dilation;
    if g.s.stride != 1 || g.k_h != g.k_w || g.s.padding > reach {
        return Ok(None);
    }
    let s = Spacing {
        stride: 1,
        padding: reach - g.s.padding,
        dilation: g.s.dilation,
    };
    let flipped = Geometry::new(&(1, 1, g.out_h, g.out_w).into(), &(1, 1, g.k_h, g.k_w).into(), s)?;
    Ok((flipped.out_h == g.h && flipped.out_w == g.w).then_some(flipped))
}

/// `CH` values of `buf` from `at`.
#[inline(always)]
fn lanes<const CH: usize>(buf: &[f32], at: usize) -> &[f32; CH] {
    buf[at..at + CH].try_into().expect("a chunk is CH values")
}

#[inline(always)]
fn lanes_mut<const CH: usize>(buf: &mut [f32], at: usize) -> &mut [f32; CH] {
    (&mut buf[at..at + CH]).try_into().expect("a chunk is CH values")
}

/// One plane's outputs (out_h × out_w) from its padded input: per chunk of `CH` outputs, every
/// tap summed in order into registers, then stored.
#[inline(always)]
fn forward_plane<const CH: usize>(pad: &Padded, buf: &[f32], kernel: &[f32], out: &mut [f32]) {
    let (out_w, step) = (pad.g.out_w, pad.row_step());
    for (oy, row) in out.chunks_exact_mut(out_w).enumerate() {
        for c0 in (0..out_w).step_by(CH) {
            let mut acc = [0f32; CH];
            for (&tap, &k) in pad.taps.iter().zip(kernel) {
                let src = lanes::<CH>(buf, oy * step + tap + c0);
                for l in 0..CH {
                    acc[l] += k * src[l];
                }
            }
            let n = CH.min(out_w - c0);
            row[c0..c0 + n].copy_from_slice(&acc[..n]);
        }
    }
}

/// The adjoint of [`forward_plane`]: each chunk of `dy` (out_h × out_w) times each tap added
/// into the padded layout `dbuf`, which starts at zero.
#[inline(always)]
fn input_gradient_plane<const CH: usize>(pad: &Padded, dy: &[f32], kernel: &[f32], dbuf: &mut [f32]) {
    let (out_w, step) = (pad.g.out_w, pad.row_step());
    dbuf.fill(0.0);
    for (oy, row) in dy.chunks_exact(out_w).enumerate() {
        for c0 in (0..out_w).step_by(CH) {
            let n = CH.min(out_w - c0);
            let mut g = [0f32; CH];
            g[..n].copy_from_slice(&row[c0..c0 + n]);
            for (&tap, &k) in pad.taps.iter().zip(kernel) {
                let dst = lanes_mut::<CH>(dbuf, oy * step + tap + c0);
                for l in 0..CH {
                    dst[l] += k * g[l];
                }
            }
        }
    }
}

/// Each tap's products of one plane's `dy` (out_h × out_w) with its padded input, added into
/// that tap's `CH` partial sums (`sums`, taps × CH). `row` is scratch of `width` values whose
/// tail past out_w is zero.
#[inline(always)]
fn kernel_gradient_plane<const CH: usize>(pad: &Padded, buf: &[f32], dy: &[f32], row: &mut [f32], sums: &mut [f32]) {
    let (out_w, step) = (pad.g.out_w, pad.row_step());
    for (oy, src) in dy.chunks_exact(out_w).enumerate() {
        row[..out_w].copy_from_slice(src);
        for (&tap, sum) in pad.taps.iter().zip(sums.chunks_exact_mut(CH)) {
            let mut acc = *lanes::<CH>(sum, 0);
            for c0 in (0..pad.width).step_by(CH) {
                let (g, x) = (lanes::<CH>(row, c0), lanes::<CH>(buf, oy * step + tap + c0));
                for l in 0..CH {
                    acc[l] += g[l] * x[l];
                }
            }
            sum.copy_from_slice(&acc);
        }
    }
}

/// The forward over every plane of `x` (planes of `pad`'s input, channel `nc % c` taking its
/// kernel from `kernels`) into `out`, in parallel over planes.
fn forward_planes(pad: &Padded, ch: usize, x: &[f32], kernels: &[f32], c: usize, out: &mut [f32]) {
    let taps = pad.g.k_h * pad.g.k_w;
    out.par_chunks_mut(pad.g.len())
        .zip(x.par_chunks(pad.g.plane()))
        .enumerate()
        .for_each_init(
            || vec![0f32; pad.len()],
            |buf, (nc, (dst, src))| {
                let kernel = &kernels[(nc % c) * taps..][..taps];
                simd::widest(
                    #[inline(always)]
                    || {
                        pad.fill(src, buf);
                        with_chunk!(ch, forward_plane(pad, buf, kernel, dst))
                    },
                )
            },
        );
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
        let ch = chunk(g.out_w);
        let pad = Padded::new(g, ch);
        let mut y = vec![0f32; planes * g.len()];
        profile::scope("depthwise conv2d forward", x.len() + y.len(), || {
            forward_planes(&pad, ch, x, w, c, &mut y)
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
        let dy = storage_f32s(&gs, gl, self.name(), "output gradient")?;
        let xv = storage_f32s(&xs, xl, self.name(), "input")?;
        let w = storage_f32s(&ws, wl, self.name(), "kernel")?;
        if dy.len() != planes * g.len() {
            candle_core::bail!(
                "ftu-depthwise-conv2d: output gradient of {} values, expected {}",
                dy.len(),
                planes * g.len()
            )
        }
        let n = planes / c.max(1);
        let ch = chunk(g.out_w);
        let pad = Padded::new(g, ch);
        let grad_x = if !x.track_op() {
            None
        } else if let Some(flipped) = flipped_geometry(g)? {
            // At stride 1 the input gradient is the forward of `dy` with the kernel flipped,
            // summed in registers like it; the adjoint scatter below adds into memory per tap.
            let flipped_w: Vec<f32> = w.chunks_exact(taps).flat_map(|k| k.iter().rev().copied()).collect();
            let flipped_ch = chunk(flipped.out_w);
            let flipped_pad = Padded::new(flipped, flipped_ch);
            let mut dx = vec![0f32; planes * g.plane()];
            profile::scope("depthwise conv2d input gradient", dx.len() + dy.len(), || {
                forward_planes(&flipped_pad, flipped_ch, dy, &flipped_w, c, &mut dx)
            });
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            let mut dx = vec![0f32; planes * g.plane()];
            profile::scope("depthwise conv2d input gradient", dx.len() + dy.len(), || {
                dx.par_chunks_mut(g.plane())
                    .zip(dy.par_chunks(g.len()))
                    .enumerate()
                    .for_each_init(
                        || vec![0f32; pad.len()],
                        |dbuf, (nc, (dst, src))| {
                            let kernel = &w[(nc % c) * taps..][..taps];
                            simd::widest(
                                #[inline(always)]
                                || {
                                    with_chunk!(ch, input_gradient_plane(&pad, src, kernel, dbuf));
                                    pad.gather(dbuf, dst)
                                },
                            )
                        },
                    );
            });
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        };
        // Per channel, its taps' partial sums over the images in order, then summed.
        let mut dw = vec![0f32; c * taps];
        profile::scope("depthwise conv2d kernel gradient", xv.len() + dy.len(), || {
            dw.par_chunks_mut(taps).enumerate().for_each_init(
                || (vec![0f32; pad.len()], vec![0f32; pad.width], vec![0f32; taps * ch]),
                |(buf, row, sums), (channel, dst)| {
                    sums.fill(0.0);
                    for img in 0..n {
                        let nc = img * c + channel;
                        let (src, grad) = (&xv[nc * g.plane()..][..g.plane()], &dy[nc * g.len()..][..g.len()]);
                        simd::widest(
                            #[inline(always)]
                            || {
                                pad.fill(src, buf);
                                with_chunk!(ch, kernel_gradient_plane(&pad, buf, grad, row, sums))
                            },
                        );
                    }
                    for (d, lane) in dst.iter_mut().zip(sums.chunks_exact(ch)) {
                        *d = lane.iter().sum();
                    }
                },
            );
        });
        Ok((grad_x, Some(Tensor::from_vec(dw, weight.shape(), weight.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(h: usize, w: usize, k: usize, stride: usize, padding: usize, dilation: usize) -> Padded {
        let s = Spacing {
            stride,
            padding,
            dilation,
        };
        let g = Geometry::new(&(1, 1, h, w).into(), &(1, 1, k, k).into(), s).expect("a valid geometry");
        Padded::new(g, chunk(g.out_w))
    }

    /// Every output's every tap finds, in the padded layout, the input value it reads (or zero
    /// where it reads padding), and the chunks never read past the layout.
    #[test]
    fn every_tap_reads_its_input() {
        for (h, w, k, s, p, d) in [
            (7, 9, 3, 1, 1, 1),
            (8, 8, 3, 2, 1, 1),
            (11, 6, 5, 2, 2, 1),
            (13, 20, 7, 1, 3, 1),
            (9, 9, 3, 1, 2, 2),
            (10, 12, 3, 2, 0, 1),
            (40, 70, 5, 1, 2, 1),
        ] {
            let pad = layout(h, w, k, s, p, d);
            let plane: Vec<f32> = (0..h * w).map(|v| v as f32 + 1.0).collect();
            let mut buf = vec![f32::NAN; pad.len()];
            pad.fill(&plane, &mut buf);
            let g = pad.g;
            for oy in 0..g.out_h {
                for ox in 0..pad.width {
                    for (t, &tap) in pad.taps.iter().enumerate() {
                        let at = oy * pad.row_step() + tap + ox;
                        assert!(
                            at < buf.len(),
                            "{h}×{w} k {k} s {s}: output ({oy}, {ox}) tap {t} reads past the layout"
                        );
                        if ox >= g.out_w {
                            continue;
                        }
                        let (y, x) = (
                            (oy * s + t / k * d) as isize - p as isize,
                            (ox * s + t % k * d) as isize - p as isize,
                        );
                        let want = if (0..h as isize).contains(&y) && (0..w as isize).contains(&x) {
                            plane[y as usize * w + x as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            buf[at], want,
                            "{h}×{w} k {k} s {s} p {p} d {d}: output ({oy}, {ox}) tap {t}"
                        );
                    }
                }
            }
        }
    }

    /// `gather` is the adjoint of `fill`: ⟨fill(x), b⟩ = ⟨x, gather(b)⟩.
    #[test]
    fn gather_is_the_adjoint_of_fill() {
        for (h, w, k, s, p, d) in [
            (7, 9, 3, 1, 1, 1),
            (11, 6, 5, 2, 2, 1),
            (10, 12, 3, 2, 0, 1),
            (9, 9, 3, 1, 2, 2),
        ] {
            let pad = layout(h, w, k, s, p, d);
            let x: Vec<f32> = (0..h * w).map(|v| ((v * 7919) % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..pad.len()).map(|v| ((v * 104729) % 11) as f32 - 5.0).collect();
            let (mut fx, mut gb) = (vec![0f32; pad.len()], vec![0f32; h * w]);
            pad.fill(&x, &mut fx);
            pad.gather(&b, &mut gb);
            let left: f32 = fx.iter().zip(&b).map(|(a, b)| a * b).sum();
            let right: f32 = x.iter().zip(&gb).map(|(a, b)| a * b).sum();
            assert_eq!(left, right, "{h}×{w} k {k} s {s} p {p} d {d}");
        }
    }

    /// The three plane kernels, at every instruction-set level this CPU has and every chunk,
    /// equal direct f64 sums over the taps: the output, the input gradient and the kernel
    /// gradient of one plane.
    #[test]
    fn plane_kernels_match_direct_sums_at_every_level_and_chunk() {
        for (h, w, k, s, p, d) in [
            (9, 21, 3, 1, 1, 1),
            (12, 35, 5, 2, 2, 1),
            (10, 18, 7, 1, 3, 1),
            (9, 9, 3, 1, 2, 2),
        ] {
            let g = layout(h, w, k, s, p, d).g;
            let x: Vec<f32> = (0..h * w).map(|v| ((v * 37 % 23) as f32 - 11.0) / 5.0).collect();
            let kernel: Vec<f32> = (0..k * k).map(|v| ((v * 13 % 7) as f32 - 3.0) / 4.0).collect();
            let dy: Vec<f32> = (0..g.len()).map(|v| ((v * 17 % 19) as f32 - 9.0) / 6.0).collect();
            // Direct sums: every (output, tap) pair that reads an input value.
            let (mut y_want, mut dx_want, mut dw_want) = (vec![0f64; g.len()], vec![0f64; h * w], vec![0f64; k * k]);
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    for t in 0..k * k {
                        let (yi, xi) = (
                            (oy * s + t / k * d) as isize - p as isize,
                            (ox * s + t % k * d) as isize - p as isize,
                        );
                        if (0..h as isize).contains(&yi) && (0..w as isize).contains(&xi) {
                            let (o, i) = (oy * g.out_w + ox, yi as usize * w + xi as usize);
                            y_want[o] += kernel[t] as f64 * x[i] as f64;
                            dx_want[i] += kernel[t] as f64 * dy[o] as f64;
                            dw_want[t] += dy[o] as f64 * x[i] as f64;
                        }
                    }
                }
            }
            let close = |got: &[f32], want: &[f64], what: &str| {
                for (j, (&a, &b)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{what} {j}: {a} against {b}"
                    );
                }
            };
            for level in simd::SimdLevel::available() {
                for ch in [8, 16, 32, 64] {
                    let pad = Padded::new(g, ch);
                    let what = format!("{h}×{w} k {k} s {s} p {p} d {d}, {}, chunk {ch}", level.name());
                    let (mut buf, mut y) = (vec![0f32; pad.len()], vec![0f32; g.len()]);
                    let (mut dbuf, mut dx) = (vec![0f32; pad.len()], vec![0f32; h * w]);
                    let (mut row, mut sums) = (vec![0f32; pad.width], vec![0f32; k * k * ch]);
                    simd::at(
                        level,
                        #[inline(always)]
                        || {
                            pad.fill(&x, &mut buf);
                            with_chunk!(ch, forward_plane(&pad, &buf, &kernel, &mut y));
                            with_chunk!(ch, input_gradient_plane(&pad, &dy, &kernel, &mut dbuf));
                            pad.gather(&dbuf, &mut dx);
                            with_chunk!(ch, kernel_gradient_plane(&pad, &buf, &dy, &mut row, &mut sums));
                        },
                    );
                    let dw: Vec<f32> = sums.chunks_exact(ch).map(|l| l.iter().sum()).collect();
                    close(&y, &y_want, &format!("{what}: output"));
                    close(&dx, &dx_want, &format!("{what}: input gradient"));
                    close(&dw, &dw_want, &format!("{what}: kernel gradient"));
                }
            }
        }
    }

    #[test]
    fn the_chunk_pads_rows_least() {
        assert_eq!(chunk(128), 64);
        assert_eq!(chunk(64), 64);
        assert_eq!(chunk(32), 32);
        assert_eq!(chunk(8), 8);
        assert_eq!(chunk(3), 8);
        assert_eq!(chunk(100), 16);
        assert_eq!(chunk(200), 16);
        assert_eq!(chunk(96), 32);
    }
}
