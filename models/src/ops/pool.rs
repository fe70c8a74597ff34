//! Max pooling on the CPU as one op that remembers where each maximum came from.
//!
//! Composed from candle ops (pad, k² shifted views, `maximum`, subsample), a 3×3 stride-2 pool
//! costs about 9 full passes forward and, backward, a `maximum` gradient (masks, divisions) and a
//! zero-filled accumulation per view. Here the forward is one pass that also records each
//! output's source index, and the backward one scatter of the output gradient to those indices.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_values::{f32s, storage_f32s};
use crate::{profile, Result};

/// Max pooling of `x` (N, C, H, W), `kernel`² windows every `stride`, padded by `padding` on each
/// side with values that never win (−∞).
pub(crate) fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let op = MaxPoolOp {
        kernel,
        stride,
        padding,
        argmax: Arc::new(Mutex::new(None)),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

struct MaxPoolOp {
    kernel: usize,
    stride: usize,
    padding: usize,
    /// Per output, the index in its input plane of the value it took (set by the forward).
    argmax: Arc<Mutex<Option<Vec<u32>>>>,
}

impl MaxPoolOp {
    fn output_size(&self, size: usize) -> candle_core::Result<usize> {
        let padded = size + 2 * self.padding;
        if padded < self.kernel || self.stride == 0 {
            candle_core::bail!(
                "ftu-max-pool: input side {size} padded by {} is smaller than the {}×{} kernel",
                self.padding,
                self.kernel,
                self.kernel
            )
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Option<Vec<u32>>>> {
        self.argmax
            .lock()
            .map_err(|_| candle_core::Error::Msg("max-pool indices lock poisoned".into()))
    }
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "ftu-max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name(), "input")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        if h * w > u32::MAX as usize {
            candle_core::bail!("ftu-max-pool: a {h}×{w} plane is too large")
        }
        let (oh, ow) = (self.output_size(h)?, self.output_size(w)?);
        let (k, s, p) = (self.kernel as isize, self.stride as isize, self.padding as isize);
        let mut y = vec![0f32; n * c * oh * ow];
        let mut argmax = vec![0u32; y.len()];
        profile::scope("max pool forward", x.len() + 2 * y.len(), || {
            y.par_chunks_mut(oh * ow)
                .zip(argmax.par_chunks_mut(oh * ow))
                .zip(x.par_chunks(h * w))
                .for_each(|((out, arg), plane)| {
                    for oy in 0..oh {
                        let y0 = oy as isize * s - p;
                        let rows = y0.max(0)..(y0 + k).min(h as isize);
                        for ox in 0..ow {
                            let x0 = ox as isize * s - p;
                            let cols = x0.max(0)..(x0 + k).min(w as isize);
                            let (mut best, mut at) = (f32::NEG_INFINITY, usize::MAX);
                            for yy in rows.clone() {
                                for xx in cols.clone() {
                                    let i = yy as usize * w + xx as usize;
                                    let v = plane[i];
                                    // The first maximum wins, as in PyTorch; a NaN wins and stays.
                                    if at == usize::MAX || v > best || (v.is_nan() && !best.is_nan()) {
                                        best = v;
                                        at = i;
                                    }
                                }
                            }
                            out[oy * ow + ox] = best;
                            arg[oy * ow + ox] = at as u32;
                        }
                    }
                });
        });
        *self.lock()? = Some(argmax);
        Ok((CpuStorage::F32(y), (n, c, oh, ow).into()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        let guard = self.lock()?;
        let Some(argmax) = guard.as_ref() else {
            candle_core::bail!("ftu-max-pool: backward before forward")
        };
        let grad = grad.contiguous()?;
        let (storage, layout) = grad.storage_and_layout();
        let dy = storage_f32s(&storage, layout, self.name(), "gradient")?;
        if dy.len() != argmax.len() {
            candle_core::bail!(
                "ftu-max-pool: gradient of {} values for {} outputs",
                dy.len(),
                argmax.len()
            )
        }
        let out_plane = dy.len() / (n * c).max(1);
        let mut dx = vec![0f32; n * c * h * w];
        profile::scope("max pool backward", dx.len() + 2 * dy.len(), || {
            dx.par_chunks_mut(h * w)
                .zip(dy.par_chunks(out_plane))
                .zip(argmax.par_chunks(out_plane))
                .for_each(|((plane, g), at)| {
                    for (&g, &i) in g.iter().zip(at) {
                        plane[i as usize] += g;
                    }
                });
        });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}
