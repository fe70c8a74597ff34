//! Depthwise convolution (groups = channels, one kernel per channel) as direct loops over each
//! plane's runs: a k² product per value is too little work for a matrix kernel, and candle runs
//! it as C separate convolutions (its backward as C naive transposed ones).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::geometry::Geometry;
use super::Spacing;
use crate::ops::cpu_values::{f32s, storage_f32s};
use crate::ops::simd;
use crate::{profile, Result};

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
                    simd::widest(
                        #[inline(always)]
                        || {
                            g.runs(
                                (0, g.out_h),
                                #[inline(always)]
                                |tap, o, i, count| {
                                    axpy(kernel[tap], src, i, g.s.stride, &mut out[o..o + count]);
                                },
                            )
                        },
                    )
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
        let s = g.s.stride;
        let grad_x = if x.track_op() {
            let mut dx = vec![0f32; planes * g.plane()];
            profile::scope("depthwise conv2d input gradient", dx.len() + dy.len(), || {
                dx.par_chunks_mut(g.plane())
                    .zip(dy.par_chunks(g.len()))
                    .enumerate()
                    .for_each(|(nc, (dst, src))| {
                        let kernel = &w[(nc % c) * taps..][..taps];
                        simd::widest(
                            #[inline(always)]
                            || {
                                g.runs(
                                    (0, g.out_h),
                                    #[inline(always)]
                                    |tap, o, i, count| {
                                        let k = kernel[tap];
                                        if s == 1 {
                                            for (d, &v) in dst[i..i + count].iter_mut().zip(&src[o..o + count]) {
                                                *d += k * v;
                                            }
                                        } else {
                                            for (j, &v) in src[o..o + count].iter().enumerate() {
                                                dst[i + j * s] += k * v;
                                            }
                                        }
                                    },
                                )
                            },
                        )
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
                    simd::widest(
                        #[inline(always)]
                        || {
                            g.runs(
                                (0, g.out_h),
                                #[inline(always)]
                                |tap, o, i, count| {
                                    dst[tap] += if s == 1 {
                                        simd::dot(&grad[o..o + count], &src[i..i + count])
                                    } else {
                                        simd::strided_dot(&grad[o..o + count], &src[i..], s)
                                    };
                                },
                            )
                        },
                    );
                }
            });
        });
        Ok((grad_x, Some(Tensor::from_vec(dw, weight.shape(), weight.device())?)))
    }
}

/// `out[j] += a·src[start + j·stride]` for every j.
#[inline(always)]
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
