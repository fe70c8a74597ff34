//! Swin's window attention, softmax(q·kᵀ·scale + bias + mask)·v per window and head, as one CPU
//! op with its own backward pass, on the qkv Linear's output as it lies.
//!
//! Composed from candle ops, the forward permutes qkv into heads (a copy of each of q, k, v),
//! copies the keys transposed, adds the relative-position bias and the shifted windows' mask by
//! broadcasts, and transposes the heads back; the backward walks all of that back, each step
//! a pass with an allocation and the broadcasts' gradients strided sums. Here each window is
//! one task: per head two `gemm` products on strided views of the window's qkv rows (row stride
//! 3·C) around one softmax pass per row, the result written into its heads' columns. Backward,
//! four products per head around one pass give dq, dk and dv into the same layout, and the
//! logits' gradients, kept per window, are summed over the windows in order for the bias's
//! gradient (so it does not depend on the thread count). The probabilities are kept from the
//! forward: windows·heads·L² values (Swin-T's first stage, batch 4 at 256²: 400·3·49², 11 MiB).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{softmax_gradient_rows, softmax_rows};
use super::conv::matmul::{matmul, Mat, MatRef};
use super::cpu_values::{f32s, storage_f32s};
use crate::{profile, Ctx, Result};

const OP: &str = "ftu-window-attention";

/// `qkv` (B, L, 3·C) as Swin's qkv Linear gives it (q, k, v side by side, each `heads` heads of
/// C/heads values), `bias` (heads, L, L) and, for shifted windows, `mask` (W, L, L) whose window
/// w applies to every batch entry b with b mod W = w: softmax(q·kᵀ·scale + bias + mask)·v per
/// window and head, as (B, L, C) with the heads side by side.
pub(crate) fn window_attention(
    qkv: &Tensor,
    bias: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let mask = match mask {
        Some(m) => {
            let (w, l, l2) = m.dims3()?;
            Some((
                m.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
                w,
                l * l2,
            ))
        }
        None => None,
    };
    let op = WindowAttention {
        heads,
        scale: scale as f32,
        mask,
        probs: Arc::new(Mutex::new(None)),
    };
    Ok(qkv.contiguous()?.apply_op2(&bias.contiguous()?, op)?)
}

/// The same attention from candle ops, in the context's precision: the path on other devices,
/// in other types and for `Ctx::generic` (the generic twin).
pub(crate) fn window_attention_generic(
    qkv: &Tensor,
    bias: &Tensor,
    mask: Option<&Tensor>,
    heads: usize,
    scale: f64,
    ctx: &Ctx,
) -> Result<Tensor> {
    let (b, l, c3) = qkv.dims3()?;
    let (c, d) = (c3 / 3, c3 / 3 / heads);
    let qkv = qkv.reshape((b, l, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?, qkv.get(2)?.contiguous()?);
    let q = (q * scale)?;
    let k_t = k.transpose(2, 3)?.contiguous()?;
    let scores = ctx.low_precision(&[&q, &k_t], |t| Ok(t[0].matmul(&t[1])?))?;
    let mut scores = scores.broadcast_add(&bias.to_dtype(scores.dtype())?)?;
    if let Some(mask) = mask {
        let (count, ml, mm) = mask.dims3()?;
        let mask = mask.reshape((1, count, 1, ml, mm))?.to_dtype(scores.dtype())?;
        scores = scores
            .reshape((b / count, count, heads, ml, mm))?
            .broadcast_add(&mask)?
            .reshape((b, heads, ml, mm))?;
    }
    let probs = crate::layers::softmax_last_dim(&scores, ctx)?;
    let out = ctx.low_precision(&[&probs, &v], |t| Ok(t[0].matmul(&t[1])?))?;
    Ok(out.transpose(1, 2)?.reshape((b, l, c))?)
}

/// Every window's probabilities, heads·L·L each (set by the forward).
type Probs = Option<Vec<f32>>;

struct WindowAttention {
    heads: usize,
    scale: f32,
    /// The mask's values, its window count and L·L.
    mask: Option<(Vec<f32>, usize, usize)>,
    probs: Arc<Mutex<Probs>>,
}

/// The sizes of one call.
#[derive(Clone, Copy)]
struct Sizes {
    b: usize,
    l: usize,
    c: usize,
    d: usize,
}

impl WindowAttention {
    fn sizes(&self, qkv: &Shape, bias: &Shape) -> candle_core::Result<Sizes> {
        let (Ok((b, l, c3)), Ok((bh, bl, bm))) = (qkv.dims3(), bias.dims3()) else {
            candle_core::bail!(
                "{OP}: expected qkv B×L×3C and a bias heads×L×L, not {:?} and {:?}",
                qkv.dims(),
                bias.dims()
            )
        };
        let h = self.heads;
        if h == 0 || c3 % (3 * h) != 0 || (bh, bl, bm) != (h, l, l) {
            candle_core::bail!(
                "{OP}: qkv {:?} for {h} heads needs 3·C columns with C a multiple of {h} and a bias {h}×{l}×{l}, not {:?}",
                qkv.dims(),
                bias.dims()
            )
        }
        if let Some((_, w, ll)) = &self.mask {
            if *ll != l * l || *w == 0 || b % w != 0 {
                candle_core::bail!("{OP}: a mask of {w} windows of {ll} values for {b} windows of {l} tokens")
            }
        }
        let c = c3 / 3;
        Ok(Sizes { b, l, c, d: c / h })
    }

    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Probs>> {
        self.probs
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{OP}: probabilities lock poisoned")))
    }

    /// The mask's L·L values for batch entry `b`, if any.
    fn mask_of(&self, b: usize) -> Option<&[f32]> {
        self.mask.as_ref().map(|(m, w, ll)| &m[(b % w) * ll..][..*ll])
    }
}

impl CustomOp2 for WindowAttention {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let z = self.sizes(ql.shape(), bl.shape())?;
        let (qkv, bias) = (f32s(qs, ql, OP, "qkv")?, f32s(bs, bl, OP, "bias")?);
        let (h, l, c, d) = (self.heads, z.l, z.c, z.d);
        let mut probs = vec![0f32; z.b * h * l * l];
        let mut out = vec![0f32; z.b * l * c];
        let work = z.b * h * (2 * l * l + 3 * l * d);
        profile::scope("window attention forward", work, || {
            out.par_chunks_mut(l * c)
                .zip(probs.par_chunks_mut(h * l * l))
                .enumerate()
                .for_each(|(b, (o, p))| {
                    let x = &qkv[b * l * 3 * c..][..l * 3 * c];
                    let mask = self.mask_of(b);
                    for head in 0..h {
                        let q = MatRef::strided(&x[head * d..], l, d, 3 * c);
                        let k = MatRef::strided(&x[c + head * d..], l, d, 3 * c);
                        let v = MatRef::strided(&x[2 * c + head * d..], l, d, 3 * c);
                        let p = &mut p[head * l * l..][..l * l];
                        matmul(Mat::rows(p, l, l), false, q, k.t(), false);
                        let bias = &bias[head * l * l..][..l * l];
                        for (i, row) in p.chunks_mut(l).enumerate() {
                            let (br, mr) = (&bias[i * l..][..l], mask.map(|m| &m[i * l..][..l]));
                            for (j, s) in row.iter_mut().enumerate() {
                                *s = *s * self.scale + br[j] + mr.map_or(0.0, |m| m[j]);
                            }
                        }
                        softmax_rows(p, l, 1.0);
                        let dst = Mat::strided(&mut o[head * d..], l, d, c);
                        matmul(dst, false, MatRef::rows(p, l, l), v, false);
                    }
                });
        });
        *self.lock()? = Some(probs);
        Ok((CpuStorage::F32(out), Shape::from((z.b, l, c))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let guard = self.lock()?;
        let Some(probs) = guard.as_ref() else {
            candle_core::bail!("{OP}: backward before forward")
        };
        let z = self.sizes(qkv.shape(), bias.shape())?;
        let (h, l, c, d) = (self.heads, z.l, z.c, z.d);
        let grad = grad.contiguous()?;
        let (xs, xl) = qkv.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (x_all, dy) = (
            storage_f32s(&xs, xl, OP, "qkv")?,
            storage_f32s(&gs, gl, OP, "gradient")?,
        );
        if dy.len() != z.b * l * c || probs.len() != z.b * h * l * l {
            candle_core::bail!(
                "{OP}: a gradient of {} values for an output of {}",
                dy.len(),
                z.b * l * c
            )
        }
        let mut dqkv = vec![0f32; x_all.len()];
        // The logits' gradient of every window and head, for the bias's gradient.
        let mut dz = vec![0f32; probs.len()];
        let scale = self.scale;
        let work = z.b * h * (3 * l * l + 8 * l * d);
        profile::scope("window attention backward", work, || {
            dqkv.par_chunks_mut(l * 3 * c)
                .zip(dz.par_chunks_mut(h * l * l))
                .enumerate()
                .for_each(|(b, (dx, dzb))| {
                    let x = &x_all[b * l * 3 * c..][..l * 3 * c];
                    let dyb = &dy[b * l * c..][..l * c];
                    let mut ds = vec![0f32; l * l];
                    for head in 0..h {
                        let p = &probs[(b * h + head) * l * l..][..l * l];
                        let q = MatRef::strided(&x[head * d..], l, d, 3 * c);
                        let k = MatRef::strided(&x[c + head * d..], l, d, 3 * c);
                        let v = MatRef::strided(&x[2 * c + head * d..], l, d, 3 * c);
                        let dyh = MatRef::strided(&dyb[head * d..], l, d, c);
                        let pm = MatRef::rows(p, l, l);
                        matmul(
                            Mat::strided(&mut dx[2 * c + head * d..], l, d, 3 * c),
                            false,
                            pm.t(),
                            dyh,
                            false,
                        );
                        // dz = p ⊙ (dp − Σ dp⊙p) from dp = dy·vᵀ, kept for the bias; ds = dz·scale.
                        matmul(Mat::rows(&mut ds, l, l), false, dyh, v.t(), false);
                        softmax_gradient_rows(&mut ds, p, l, 1.0);
                        dzb[head * l * l..][..l * l].copy_from_slice(&ds);
                        ds.iter_mut().for_each(|g| *g *= scale);
                        let dsm = MatRef::rows(&ds, l, l);
                        matmul(Mat::strided(&mut dx[head * d..], l, d, 3 * c), false, dsm, k, false);
                        matmul(
                            Mat::strided(&mut dx[c + head * d..], l, d, 3 * c),
                            false,
                            dsm.t(),
                            q,
                            false,
                        );
                    }
                });
        });
        // The bias's gradient: each entry summed over the windows in order, in f64.
        let hll = h * l * l;
        let mut dbias = vec![0f32; hll];
        dbias.par_chunks_mut(l).enumerate().for_each(|(r, out)| {
            for (j, o) in out.iter_mut().enumerate() {
                let at = r * l + j;
                *o = (0..z.b).map(|b| dz[b * hll + at] as f64).sum::<f64>() as f32;
            }
        });
        let dev = qkv.device();
        Ok((
            Some(Tensor::from_vec(dqkv, qkv.shape(), dev)?),
            Some(Tensor::from_vec(dbias, bias.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{assert_gradients_match, f64_vars, max_diff_f64};
    use candle_core::{DType, Device, Var};

    /// Values and the gradients of qkv and the bias against the composed ops in f64, with and
    /// without a mask, one head and several, windows fewer and more than the threads.
    #[test]
    fn values_and_gradients_match_the_composed_ops_in_f64() {
        let dev = Device::Cpu;
        for (b, l, heads, d, windows) in [(1, 5, 1, 4, None), (6, 9, 3, 8, Some(3)), (4, 49, 2, 16, Some(2))] {
            let c = heads * d;
            let var = |s: &[usize], std| Var::from_tensor(&Tensor::randn(0f32, std, s, &dev).unwrap()).unwrap();
            let (qkv, bias) = (var(&[b, l, 3 * c], 1.5), var(&[heads, l, l], 1.0));
            let mask = windows.map(|w| {
                let m: Vec<f32> = (0..w * l * l).map(|i| if i % 7 == 3 { -100.0 } else { 0.0 }).collect();
                Tensor::from_vec(m, (w, l, l), &dev).unwrap()
            });
            let scale = 1.0 / (d as f64).sqrt();
            let ours = window_attention(&qkv, &bias, mask.as_ref(), heads, scale).unwrap();
            assert_eq!(ours.dims(), &[b, l, c]);
            let f64s = f64_vars(&[&qkv, &bias]);
            let mask64 = mask.as_ref().map(|m| m.to_dtype(DType::F64).unwrap());
            let ctx = Ctx::eval().generic();
            let theirs = window_attention_generic(&f64s[0], &f64s[1], mask64.as_ref(), heads, scale, &ctx).unwrap();
            let what = format!("{b}×{l}, {heads} heads, mask {windows:?}");
            assert!(max_diff_f64(&ours, &theirs) < 1e-5, "{what}: values");
            let vars = [("qkv", &qkv, &f64s[0]), ("bias", &bias, &f64s[1])];
            assert_gradients_match(&ours, &theirs, &vars, &what);
        }
    }

    #[test]
    fn a_bias_of_the_wrong_size_is_refused() {
        let dev = Device::Cpu;
        let t = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
        let err = window_attention(&t(&[2, 4, 12]), &t(&[2, 4, 5]), None, 2, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a bias 2×4×4"), "{err}");
    }
}
