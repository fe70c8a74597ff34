//! LayerNorm over the last axis as one CPU op with its own backward pass.
//!
//! Composed from candle ops (mean, subtract, square, mean, add, sqrt, divide, scale, shift), the
//! forward makes about nine passes over the activation and keeps several full-size intermediates
//! for the backward, which walks each op back and accumulates every gradient as `zeros + grad`.
//! Here the forward is one pass per row that keeps only each row's mean and 1/σ, and the backward
//! one pass per row for the input gradient plus per-block partial sums for the scale's and
//! shift's. Blocks of rows have a fixed size and their partial sums are added in order, so results
//! do not depend on the thread count.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_values::{f32s, storage_f32s};
use crate::{profile, Result};

const OP: &str = "ftu-layer-norm";
/// Rows per block of the scale and shift gradients' partial sums.
const BLOCK_ROWS: usize = 64;

/// `weight · (x − mean) / √(var + eps) + bias` over the last axis of `x`, whose size is the
/// length of `weight` and `bias`.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNormOp {
        eps: eps as f32,
        stats: Arc::new(Mutex::new(None)),
    };
    Ok(x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?)
}

/// Per row, its mean and 1/σ (set by the forward).
type RowStats = Option<Vec<(f32, f32)>>;

struct LayerNormOp {
    eps: f32,
    stats: Arc<Mutex<RowStats>>,
}

impl LayerNormOp {
    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, RowStats>> {
        self.stats
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{OP}: statistics lock poisoned")))
    }
}

/// The width of the normalised axis, checked against the parameters.
fn width(shape: &Shape, params: usize) -> candle_core::Result<usize> {
    let c = shape.dims().last().copied().unwrap_or(0);
    if c == 0 || c != params {
        candle_core::bail!("{OP}: the last axis has {c} values, the scale and shift {params}")
    }
    Ok(c)
}

impl CustomOp3 for LayerNormOp {
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
        let x = f32s(xs, xl, OP, "input")?;
        let (w, b) = (f32s(ws, wl, OP, "scale")?, f32s(bs, bl, OP, "shift")?);
        let c = width(xl.shape(), w.len())?;
        if b.len() != c {
            candle_core::bail!("{OP}: the shift has {} values, the scale {c}", b.len())
        }
        let rows = x.len() / c;
        let mut y = vec![0f32; x.len()];
        let mut stats = vec![(0f32, 0f32); rows];
        let eps = self.eps;
        profile::scope("layer norm forward", 2 * x.len(), || {
            y.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .zip(stats.par_iter_mut())
                .for_each(|((out, row), stat)| {
                    // Sums in f64: over the widest rows (1536), an f32 sum drifts by 1e-5.
                    let mean = (row.iter().map(|&v| v as f64).sum::<f64>() / c as f64) as f32;
                    let var = row.iter().map(|&v| ((v - mean) as f64).powi(2)).sum::<f64>() / c as f64;
                    let var = var as f32;
                    let rstd = 1.0 / (var + eps).sqrt();
                    for (((o, &v), &g), &s) in out.iter_mut().zip(row).zip(w).zip(b) {
                        *o = (v - mean) * rstd * g + s;
                    }
                    *stat = (mean, rstd);
                });
        });
        *self.lock()? = Some(stats);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.lock()?;
        let Some(stats) = guard.as_ref() else {
            candle_core::bail!("{OP}: backward before forward")
        };
        let (xs, xl) = x.storage_and_layout();
        let xv = storage_f32s(&xs, xl, OP, "input")?;
        let (ws, wl) = weight.storage_and_layout();
        let w = storage_f32s(&ws, wl, OP, "scale")?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let dy = storage_f32s(&gs, gl, OP, "gradient")?;
        let c = w.len();
        if dy.len() != xv.len() || stats.len() * c != xv.len() {
            candle_core::bail!("{OP}: a gradient of {} values for an input of {}", dy.len(), xv.len())
        }
        let mut dx = vec![0f32; xv.len()];
        let block = BLOCK_ROWS * c;
        let partials: Vec<(Vec<f32>, Vec<f32>)> = profile::scope("layer norm backward", 3 * xv.len(), || {
            dx.par_chunks_mut(block)
                .zip(xv.par_chunks(block))
                .zip(dy.par_chunks(block))
                .zip(stats.par_chunks(BLOCK_ROWS))
                .map(|(((dx, x), dy), stats)| {
                    let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
                    for (((dx, x), dy), &(mean, rstd)) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)).zip(stats)
                    {
                        // With x̂ = (x − mean)/σ and g = dy·weight:
                        // dx = (g − mean(g) − x̂·mean(g·x̂)) / σ.
                        let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                        for i in 0..c {
                            let xhat = (x[i] - mean) * rstd;
                            let g = dy[i] * w[i];
                            sum_g += g as f64;
                            sum_gx += (g * xhat) as f64;
                            dw[i] += dy[i] * xhat;
                            db[i] += dy[i];
                        }
                        let (mean_g, mean_gx) = ((sum_g / c as f64) as f32, (sum_gx / c as f64) as f32);
                        for i in 0..c {
                            let xhat = (x[i] - mean) * rstd;
                            dx[i] = (dy[i] * w[i] - mean_g - xhat * mean_gx) * rstd;
                        }
                    }
                    (dw, db)
                })
                .collect()
        });
        let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
        for (pw, pb) in &partials {
            for i in 0..c {
                dw[i] += pw[i];
                db[i] += pb[i];
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{assert_gradients_match, f64_vars, max_diff_f64};
    use candle_core::{DType, Device, Var, D};

    /// The composed candle ops in f64: the reference.
    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap()).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centred.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
        normed.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
    }

    /// Values and the three gradients against the composed ops in f64, for rows fewer and more
    /// than a block, with an offset and a spread far from 0 and 1.
    #[test]
    fn values_and_gradients_match_the_composed_ops_in_f64() {
        let dev = Device::Cpu;
        for (rows, c) in [(3, 5), (2 * BLOCK_ROWS + 7, 96)] {
            let x = (Tensor::randn(0f32, 3.0, (rows, c), &dev).unwrap() + 2.0).unwrap();
            let (x, w, b) = (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&Tensor::randn(1f32, 0.5, c, &dev).unwrap()).unwrap(),
                Var::from_tensor(&Tensor::randn(0f32, 0.5, c, &dev).unwrap()).unwrap(),
            );
            let eps = 1e-5;
            let ours = layer_norm(&x, &w, &b, eps).unwrap();
            let f64s = f64_vars(&[&x, &w, &b]);
            let reference = composed(&f64s[0], &f64s[1], &f64s[2], eps);
            assert!(max_diff_f64(&ours, &reference) < 1e-5, "{rows}×{c}: values");
            let vars = [
                ("input", &x, &f64s[0]),
                ("scale", &w, &f64s[1]),
                ("shift", &b, &f64s[2]),
            ];
            assert_gradients_match(&ours, &reference, &vars, &format!("{rows}×{c}"));
        }
    }

    #[test]
    fn a_scale_of_the_wrong_width_is_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let w = Tensor::ones(3, DType::F32, &dev).unwrap();
        let err = layer_norm(&x, &w, &w, 1e-5).unwrap_err().to_string();
        assert!(err.contains("last axis has 4 values, the scale and shift 3"), "{err}");
    }
}
