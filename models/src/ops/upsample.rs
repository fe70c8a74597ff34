//! Nearest upsampling by an integer factor on the CPU, optionally concatenated with a skip
//! tensor along the channels (the U-Net decoder's `cat([up(x), skip])`), as one op.
//!
//! From candle ops the pair is a broadcast, a reshape copy and a concatenation forwards, and a
//! strided sum, a copy and two zero-filled accumulations backwards. Here each is one pass: the
//! forward writes the output planes once, the backward sums each factor² block of the gradient
//! into the input and copies the skip channels out.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_values::{f32s, storage_f32s};
use crate::{profile, Result};

/// The name errors give.
const OP: &str = "ftu-upsample";

/// `x` (N, C, H, W) upsampled by `scale` (nearest: each value repeated in a scale² block), then
/// `skip` (N, C_skip, H·scale, W·scale) appended after its channels when given.
pub(crate) fn upsample_nearest(x: &Tensor, scale: usize, skip: Option<&Tensor>) -> Result<Tensor> {
    let op = NearestUpsampleCat { scale };
    let x = x.contiguous()?;
    Ok(match skip {
        Some(skip) => {
            let (n, _, h, w) = x.dims4()?;
            let (sn, _, sh, sw) = skip.dims4()?;
            if (sn, sh, sw) != (n, h * scale, w * scale) {
                return Err(crate::ModelError::Input {
                    what: format!("skip tensor of {:?}", skip.dims()),
                    expected: format!(
                        "{n} images of {}×{} to join {:?} upsampled ×{scale}",
                        h * scale,
                        w * scale,
                        x.dims()
                    ),
                });
            }
            x.apply_op2(&skip.contiguous()?, op)?
        }
        None => x.apply_op1(op)?,
    })
}

struct NearestUpsampleCat {
    scale: usize,
}

impl NearestUpsampleCat {
    /// Output planes of `c_x` upsampled channels then `c_skip` copied ones, per image.
    fn forward(
        &self,
        x: &[f32],
        xs: &Shape,
        skip: Option<(&[f32], usize)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c_x, h, w) = xs.dims4()?;
        let s = self.scale;
        let (oh, ow) = (h * s, w * s);
        let c_skip = skip.map_or(0, |(_, c)| c);
        let c_out = c_x + c_skip;
        let mut y = vec![0f32; n * c_out * oh * ow];
        profile::scope(
            "upsample+concat forward",
            x.len() + skip.map_or(0, |(v, _)| 2 * v.len()) + y.len(),
            || {
                y.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, out)| {
                    let (img, ch) = (plane / c_out, plane % c_out);
                    if ch < c_x {
                        let src = &x[(img * c_x + ch) * h * w..][..h * w];
                        for (row, src_row) in out.chunks_exact_mut(ow * s).zip(src.chunks_exact(w)) {
                            let (first, rest) = row.split_at_mut(ow);
                            for (d, &v) in first.chunks_exact_mut(s).zip(src_row) {
                                d.fill(v);
                            }
                            for copy in rest.chunks_exact_mut(ow) {
                                copy.copy_from_slice(first);
                            }
                        }
                    } else if let Some((skip, _)) = skip {
                        out.copy_from_slice(&skip[(img * c_skip + ch - c_x) * oh * ow..][..oh * ow]);
                    }
                });
            },
        );
        Ok((CpuStorage::F32(y), (n, c_out, oh, ow).into()))
    }

    /// The gradients for `x` (block sums) and for the skip tensor (its channels' planes).
    fn backward(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let (n, c_x, h, w) = x.dims4()?;
        let s = self.scale;
        let (oh, ow) = (h * s, w * s);
        let c_skip = match skip {
            Some(t) => t.dim(1)?,
            None => 0,
        };
        let c_out = c_x + c_skip;
        let grad = grad.contiguous()?;
        let (storage, layout) = grad.storage_and_layout();
        let dy = storage_f32s(&storage, layout, OP, "gradient")?;
        if dy.len() != n * c_out * oh * ow {
            candle_core::bail!(
                "ftu-upsample: gradient of {} values, expected {n}×{c_out}×{oh}×{ow}",
                dy.len()
            )
        }
        let mut dx = vec![0f32; n * c_x * h * w];
        let mut dskip = vec![0f32; n * c_skip * oh * ow];
        profile::scope(
            "upsample+concat backward",
            dy.len() + dx.len() + 2 * dskip.len(),
            || {
                dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, dst)| {
                    let (img, ch) = (plane / c_x, plane % c_x);
                    let src = &dy[(img * c_out + ch) * oh * ow..][..oh * ow];
                    for (dst_row, rows) in dst.chunks_exact_mut(w).zip(src.chunks_exact(ow * s)) {
                        for row in rows.chunks_exact(ow) {
                            for (d, block) in dst_row.iter_mut().zip(row.chunks_exact(s)) {
                                *d += block.iter().sum::<f32>();
                            }
                        }
                    }
                });
                if c_skip > 0 {
                    dskip.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
                        let (img, ch) = (plane / c_skip, plane % c_skip);
                        dst.copy_from_slice(&dy[(img * c_out + c_x + ch) * oh * ow..][..oh * ow]);
                    });
                }
            },
        );
        let dev = x.device();
        let dskip = match skip {
            Some(t) => Some(Tensor::from_vec(dskip, t.shape(), dev)?),
            None => None,
        };
        Ok((Tensor::from_vec(dx, x.shape(), dev)?, dskip))
    }
}

impl CustomOp1 for NearestUpsampleCat {
    fn name(&self) -> &'static str {
        "ftu-upsample-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(f32s(s, l, OP, "input")?, l.shape(), None)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.backward(x, None, grad)?.0))
    }
}

impl CustomOp2 for NearestUpsampleCat {
    fn name(&self) -> &'static str {
        "ftu-upsample-nearest-concat"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c_skip = l2.shape().dims4()?.1;
        self.forward(
            f32s(s1, l1, OP, "input")?,
            l1.shape(),
            Some((f32s(s2, l2, OP, "skip")?, c_skip)),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        skip: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dskip) = self.backward(x, Some(skip), grad)?;
        Ok((Some(dx), dskip))
    }
}
