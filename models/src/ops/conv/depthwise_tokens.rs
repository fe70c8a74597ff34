//! A depthwise k×k convolution (stride 1, "same" zero padding, odd k) with bias over tokens laid
//! out N×(h·w)×C, channels last, as MiT's Mix-FFN holds them.
//!
//! In NCHW the Mix-FFN turns its tokens into planes and back around the convolution: two copies
//! of the widest activation of the block (four times the block's channels) forward, two more in
//! the backward pass, and a bias gradient summed across planes. Channels last, each output pixel
//! is its bias plus k² products of contiguous channel vectors, vectorised over the channels
//! ([`simd`]); rows of output pixels run in parallel. Backward, the input gradient is the same
//! loop with the kernel flipped, and the kernel and bias gradients are row sums added in f64 in
//! a fixed order.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_values::{f32s, storage_f32s, zeros};
use crate::ops::simd;
use crate::{profile, Result};

const OP: &str = "ftu-depthwise-conv-tokens";

/// `x` (N, h·w, C) convolved per channel with `weight` (C, 1, k, k) over its h×w grid, plus `bias`
/// (C values): N×(h·w)×C.
pub(crate) fn depthwise_conv_tokens(x: &Tensor, weight: &Tensor, bias: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, DepthwiseTokens { h, w })?)
}

struct DepthwiseTokens {
    h: usize,
    w: usize,
}

/// The sizes of one call, checked.
#[derive(Clone, Copy)]
struct Grid {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
}

impl Grid {
    fn new(op: &DepthwiseTokens, x: &Shape, weight: &Shape, bias: &Shape) -> candle_core::Result<Grid> {
        let (Ok((n, l, c)), Ok((c_w, one, k, k_w)), Ok(c_b)) = (x.dims3(), weight.dims4(), bias.dims1()) else {
            candle_core::bail!(
                "{OP}: expected tokens N×L×C, a kernel C×1×k×k and a bias of C values, not {:?}, {:?} and {:?}",
                x.dims(),
                weight.dims(),
                bias.dims()
            )
        };
        if l != op.h * op.w {
            candle_core::bail!("{OP}: {l} tokens do not fill a {}×{} grid", op.h, op.w)
        }
        if c_w != c || one != 1 || k_w != k || k % 2 == 0 || c_b != c {
            candle_core::bail!(
                "{OP}: tokens of {c} channels need a kernel {c}×1×k×k with k odd and a bias of {c} values, not {:?} and {:?}",
                weight.dims(),
                bias.dims()
            )
        }
        Ok(Grid {
            n,
            h: op.h,
            w: op.w,
            c,
            k,
        })
    }

    fn row(&self) -> usize {
        self.w * self.c
    }

    fn image(&self) -> usize {
        self.h * self.row()
    }
}

/// The kernel tap-major (k² rows of C values), flipped for the input gradient.
fn taps(weight: &[f32], g: Grid, flip: bool) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut t = vec![0f32; kk * g.c];
    for ch in 0..g.c {
        for tap in 0..kk {
            let from = if flip { kk - 1 - tap } else { tap };
            t[tap * g.c + ch] = weight[ch * kk + from];
        }
    }
    t
}

/// For tap column `kx`, the output columns whose source column ox + kx − k/2 lies in the grid.
#[inline(always)]
fn columns(g: Grid, kx: usize) -> std::ops::Range<usize> {
    let p = g.k / 2;
    p.saturating_sub(kx)..(g.w + p - kx).min(g.w)
}

/// One output row `oy` of one image: `out` = bias + Σ taps ⊙ shifted input.
#[inline(always)]
fn forward_row(out: &mut [f32], image: &[f32], taps: &[f32], bias: Option<&[f32]>, oy: usize, g: Grid) {
    let (c, p) = (g.c, g.k / 2);
    match bias {
        Some(b) => out.chunks_exact_mut(c).for_each(|px| px.copy_from_slice(b)),
        None => out.fill(0.0),
    }
    for ky in 0..g.k {
        let Some(iy) = (oy + ky).checked_sub(p).filter(|&iy| iy < g.h) else {
            continue;
        };
        let src = &image[iy * g.row()..][..g.row()];
        for kx in 0..g.k {
            let t = &taps[(ky * g.k + kx) * c..][..c];
            for ox in columns(g, kx) {
                let (o, i) = (&mut out[ox * c..][..c], &src[(ox + kx - p) * c..][..c]);
                for ((o, &i), &t) in o.iter_mut().zip(i).zip(t) {
                    *o += t * i;
                }
            }
        }
    }
}

/// One output row's share of the kernel gradient (k² rows of C values) and the bias gradient
/// (the last C values), added into `acc`.
#[inline(always)]
fn gradient_row(acc: &mut [f32], image: &[f32], dy: &[f32], oy: usize, g: Grid) {
    let (c, p) = (g.c, g.k / 2);
    let (dw, db) = acc.split_at_mut(g.k * g.k * c);
    for px in dy.chunks_exact(c) {
        for (s, &v) in db.iter_mut().zip(px) {
            *s += v;
        }
    }
    for ky in 0..g.k {
        let Some(iy) = (oy + ky).checked_sub(p).filter(|&iy| iy < g.h) else {
            continue;
        };
        let src = &image[iy * g.row()..][..g.row()];
        for kx in 0..g.k {
            let t = &mut dw[(ky * g.k + kx) * c..][..c];
            for ox in columns(g, kx) {
                let (d, i) = (&dy[ox * c..][..c], &src[(ox + kx - p) * c..][..c]);
                for ((t, &d), &i) in t.iter_mut().zip(d).zip(i) {
                    *t += d * i;
                }
            }
        }
    }
}

/// The convolution of every image of `x` by `taps`, plus `bias`.
fn convolve(x: &[f32], taps: &[f32], bias: Option<&[f32]>, g: Grid) -> Vec<f32> {
    let mut y = zeros(x.len());
    if g.row() == 0 {
        return y;
    }
    y.par_chunks_mut(g.row()).enumerate().for_each(|(row, out)| {
        let (img, oy) = (row / g.h, row % g.h);
        let image = &x[img * g.image()..][..g.image()];
        simd::widest(
            #[inline(always)]
            || forward_row(out, image, taps, bias, oy, g),
        )
    });
    y
}

impl CustomOp3 for DepthwiseTokens {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Grid::new(self, xl.shape(), wl.shape(), bl.shape())?;
        let (x, w, b) = (
            f32s(xs, xl, OP, "input")?,
            f32s(ws, wl, OP, "kernel")?,
            f32s(bs, bl, OP, "bias")?,
        );
        let taps = taps(w, g, false);
        let y = profile::scope("depthwise conv (tokens) forward", 2 * x.len(), || {
            convolve(x, &taps, Some(b), g)
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Grid::new(self, x.shape(), weight.shape(), bias.shape())?;
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (xv, w, dy) = (
            storage_f32s(&xs, xl, OP, "input")?,
            storage_f32s(&ws, wl, OP, "kernel")?,
            storage_f32s(&gs, gl, OP, "gradient")?,
        );
        if dy.len() != xv.len() {
            candle_core::bail!("{OP}: a gradient of {} values for an input of {}", dy.len(), xv.len())
        }
        let dx = if x.track_op() {
            let flipped = taps(w, g, true);
            let dx = profile::scope("depthwise conv (tokens) input gradient", 2 * dy.len(), || {
                convolve(dy, &flipped, None, g)
            });
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        // One contiguous share of output rows per thread, each summed in order into its own
        // f64 accumulators, the shares added in order: the result does not depend on scheduling.
        let len = (g.k * g.k + 1) * g.c;
        let rows = g.n * g.h;
        let shares = rayon::current_num_threads().min(rows).max(1);
        let sums = profile::scope("depthwise conv (tokens) kernel gradient", xv.len() + dy.len(), || {
            let partial: Vec<Vec<f64>> = (0..shares)
                .into_par_iter()
                .map(|t| {
                    let (mut total, mut part) = (vec![0f64; len], vec![0f32; len]);
                    for row in t * rows / shares..(t + 1) * rows / shares {
                        let (img, oy) = (row / g.h, row % g.h);
                        let image = &xv[img * g.image()..][..g.image()];
                        let dy_row = &dy[row * g.row()..][..g.row()];
                        part.fill(0.0);
                        simd::widest(
                            #[inline(always)]
                            || gradient_row(&mut part, image, dy_row, oy, g),
                        );
                        for (t, &p) in total.iter_mut().zip(&part) {
                            *t += p as f64;
                        }
                    }
                    total
                })
                .collect();
            let mut sums = vec![0f64; len];
            for p in &partial {
                sums.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
            sums
        });
        // Tap-major back to the kernel's C×1×k×k.
        let kk = g.k * g.k;
        let mut dw = vec![0f32; g.c * kk];
        for tap in 0..kk {
            for ch in 0..g.c {
                dw[ch * kk + tap] = sums[tap * g.c + ch] as f32;
            }
        }
        let db: Vec<f32> = sums[kk * g.c..].iter().map(|&s| s as f32).collect();
        Ok((
            dx,
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
            Some(Tensor::from_vec(db, g.c, bias.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{assert_gradients_match, f64_vars, max_diff_f64};
    use candle_core::{DType, Device, Var};

    /// The reference: tokens to planes, candle's grouped conv2d with the bias broadcast, and back.
    fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, h: usize, w: usize) -> Tensor {
        let (n, _, c) = x.dims3().unwrap();
        let k = weight.dim(2).unwrap();
        let planes = x.transpose(1, 2).unwrap().reshape((n, c, h, w)).unwrap();
        let y = planes.conv2d(weight, k / 2, 1, 1, c).unwrap();
        let y = y.broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap()).unwrap();
        y.flatten_from(2).unwrap().transpose(1, 2).unwrap()
    }

    /// Values and the three gradients against the composed ops in f64, on grids with borders of
    /// every kind (one row, one column, wider than tall), 3×3 and 5×5 kernels, and channel counts
    /// that do not fill a vector.
    #[test]
    fn values_and_gradients_match_the_composed_ops_in_f64() {
        let dev = Device::Cpu;
        for (n, h, w, c, k) in [
            (2, 5, 7, 3, 3),
            (1, 1, 4, 5, 3),
            (1, 6, 1, 2, 3),
            (2, 9, 8, 37, 3),
            (1, 7, 6, 20, 5),
        ] {
            let var = |s: &[usize], std| Var::from_tensor(&Tensor::randn(0f32, std, s, &dev).unwrap()).unwrap();
            let (x, wt, b) = (var(&[n, h * w, c], 1.0), var(&[c, 1, k, k], 0.5), var(&[c], 1.0));
            let ours = depthwise_conv_tokens(&x, &wt, &b, h, w).unwrap();
            let f64s = f64_vars(&[&x, &wt, &b]);
            let theirs = composed(&f64s[0], &f64s[1], &f64s[2], h, w);
            let what = format!("{n}×{h}×{w}×{c}, k {k}");
            assert!(max_diff_f64(&ours, &theirs) < 1e-5, "{what}: values");
            let vars = [
                ("input", &x, &f64s[0]),
                ("kernel", &wt, &f64s[1]),
                ("bias", &b, &f64s[2]),
            ];
            assert_gradients_match(&ours, &theirs, &vars, &what);
        }
    }

    /// Each instruction-set level gives the same rows as the baseline, to rounding.
    #[test]
    fn every_level_gives_the_baseline_rows() {
        let g = Grid {
            n: 1,
            h: 4,
            w: 9,
            c: 40,
            k: 3,
        };
        let image: Vec<f32> = (0..g.image()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let taps: Vec<f32> = (0..9 * g.c).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
        let bias: Vec<f32> = (0..g.c).map(|i| i as f32 / 10.0).collect();
        let run = |level| {
            let (mut out, mut acc) = (vec![0f32; g.row()], vec![0f32; 10 * g.c]);
            simd::at(
                level,
                #[inline(always)]
                || {
                    forward_row(&mut out, &image, &taps, Some(&bias), 1, g);
                    gradient_row(&mut acc, &image, &image[g.row()..2 * g.row()], 2, g);
                },
            );
            (out, acc)
        };
        let baseline = run(simd::SimdLevel::Baseline);
        for level in simd::SimdLevel::available() {
            let (out, acc) = run(level);
            for (a, b) in out.iter().chain(&acc).zip(baseline.0.iter().chain(&baseline.1)) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{}: {a} against {b}",
                    level.name()
                );
            }
        }
    }

    #[test]
    fn tokens_that_do_not_fill_the_grid_are_refused() {
        let dev = Device::Cpu;
        let t = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
        let err = depthwise_conv_tokens(&t(&[1, 10, 4]), &t(&[4, 1, 3, 3]), &t(&[4]), 3, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("10 tokens do not fill a 3×3 grid"), "{err}");
        let err = depthwise_conv_tokens(&t(&[1, 9, 4]), &t(&[4, 1, 2, 2]), &t(&[4]), 3, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("k odd"), "{err}");
    }
}
