//! Scaled dot-product attention, softmax(q·kᵀ·scale)·v, as one CPU op with its own backward pass,
//! on the query, key and value Linears' outputs as they lie (each head's columns read in place).
//!
//! Composed from candle ops, the forward copies the keys transposed, multiplies, scales, takes the
//! softmax op and multiplies again; the backward walks the five back, each matmul's gradient
//! through transposed copies of its operands, and the heads are split out and merged back by
//! copies. Here each slice (one image's head) is two `gemm` products on strided views around one
//! softmax pass per row, the result written into its head's columns, and the backward is
//! four products around one pass: dv = pᵀ·dy, dp = dy·vᵀ, ds = p ⊙ (dp − Σ dp⊙p)·scale,
//! dq = ds·k, dk = dsᵀ·q. The forward keeps the probabilities p for the backward instead of
//! recomputing them: batch·heads·L·M values (at MiT-b0's first stage, batch 4 at 256²: 4·4096·64,
//! 4 MiB), which the composed ops keep too.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::matmul::{matmul, Mat, MatRef};
use super::cpu_values::{f32s, storage_f32s, zeros};
use crate::{profile, Ctx, Result};

const OP: &str = "ftu-attention";

/// softmax(q·kᵀ·scale)·v per head: q is …×L×(heads·d), k …×M×(heads·d) and v …×M×(heads·e),
/// with the same leading axes and each head's columns side by side (as the query, key and value
/// Linears give them); the result is …×L×(heads·e), heads side by side. With one head this is
/// attention over the last two axes of any batch of slices.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let op = AttentionOp {
        heads,
        scale: scale as f32,
        probs: Arc::new(Mutex::new(None)),
    };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The softmax probabilities of every slice, L×M each (set by the forward).
type Probs = Option<Vec<f32>>;

struct AttentionOp {
    heads: usize,
    scale: f32,
    probs: Arc<Mutex<Probs>>,
}

/// The sizes of one call: `batch` entries of `heads` heads, each L×d queries, M×d keys and M×e
/// values.
#[derive(Clone, Copy)]
struct Sizes {
    batch: usize,
    heads: usize,
    l: usize,
    m: usize,
    d: usize,
    e: usize,
}

impl Sizes {
    /// Query, key and value columns of a batch entry (all heads).
    fn widths(&self) -> (usize, usize) {
        (self.heads * self.d, self.heads * self.e)
    }
}

/// (leading product, rows, columns) of a shape of rank ≥ 3.
fn split(shape: &Shape, what: &str) -> candle_core::Result<(Vec<usize>, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 3 {
        candle_core::bail!("{OP}: the {what} must have a batch axis and rows and columns, not shape {dims:?}")
    }
    let (lead, last) = dims.split_at(dims.len() - 2);
    Ok((lead.to_vec(), last[0], last[1]))
}

fn sizes(q: &Shape, k: &Shape, v: &Shape, heads: usize) -> candle_core::Result<Sizes> {
    let (lead, l, qc) = split(q, "queries")?;
    let (k_lead, m, kc) = split(k, "keys")?;
    let (v_lead, mv, vc) = split(v, "values")?;
    if heads == 0 || qc % heads != 0 || vc % heads != 0 {
        candle_core::bail!(
            "{OP}: queries {:?} and values {:?} do not split into {heads} heads",
            q.dims(),
            v.dims()
        )
    }
    let (d, e) = (qc / heads, vc / heads);
    if k_lead != lead || v_lead != lead {
        candle_core::bail!(
            "{OP}: queries {:?}, keys {:?} and values {:?} must share their leading axes",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if kc != qc || mv != m {
        candle_core::bail!(
            "{OP}: queries {:?} need keys of {qc} columns and as many values as keys; keys {:?}, values {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    Ok(Sizes {
        batch: lead.iter().product(),
        heads,
        l,
        m,
        d,
        e,
    })
}

impl AttentionOp {
    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Probs>> {
        self.probs
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{OP}: probabilities lock poisoned")))
    }
}

/// In place over each row of `ds` (M values), from dp in it and the row's probabilities p:
/// ds = p ⊙ (dp − Σ dp⊙p) · scale, the softmax's gradient (the dot product in f64).
pub(super) fn softmax_gradient_rows(ds: &mut [f32], p: &[f32], m: usize, scale: f32) {
    for (dsr, pr) in ds.chunks_mut(m).zip(p.chunks(m)) {
        let dot = dsr.iter().zip(pr).map(|(&g, &p)| (g * p) as f64).sum::<f64>() as f32;
        for (g, &p) in dsr.iter_mut().zip(pr) {
            *g = p * (*g - dot) * scale;
        }
    }
}

/// Runs `f` on every batch entry: entries in parallel with single-threaded products when there
/// are at least as many as threads, else one at a time with parallel products.
fn each_entry<T: Send>(items: Vec<T>, f: impl Fn(T, bool) + Sync) {
    if items.len() >= rayon::current_num_threads() {
        items.into_par_iter().for_each(|t| f(t, false));
    } else {
        items.into_iter().for_each(|t| f(t, true));
    }
}

/// In place over each row of `s` (M values): p = softmax(scale·s), the sum in f64.
pub(super) fn softmax_rows(s: &mut [f32], m: usize, scale: f32) {
    for row in s.chunks_mut(m) {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * scale;
        let mut sum = 0f64;
        for x in row.iter_mut() {
            *x = (*x * scale - max).exp();
            sum += *x as f64;
        }
        let inv = (1.0 / sum) as f32;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32s(qs, ql, OP, "queries")?,
            f32s(ks, kl, OP, "keys")?,
            f32s(vs, vl, OP, "values")?,
        );
        let z = sizes(ql.shape(), kl.shape(), vl.shape(), self.heads)?;
        if self.scale <= 0.0 {
            candle_core::bail!("{OP}: the scale must be positive, not {}", self.scale)
        }
        let (qc, vc) = z.widths();
        let (h, l, m, d, e) = (z.heads, z.l, z.m, z.d, z.e);
        let mut probs = zeros(z.batch * h * l * m);
        let mut out = zeros(z.batch * l * vc);
        let work = z.batch * h * (2 * l * m + l * d + m * (d + e) + l * e);
        profile::scope("attention forward", work, || {
            let items: Vec<_> = probs
                .chunks_mut(h * l * m)
                .zip(out.chunks_mut(l * vc))
                .enumerate()
                .collect();
            each_entry(items, |(b, (p, o)), parallel| {
                let (qb, kb, vb) = (
                    &q[b * l * qc..][..l * qc],
                    &k[b * m * qc..][..m * qc],
                    &v[b * m * vc..][..m * vc],
                );
                for head in 0..h {
                    let qi = MatRef::strided(&qb[head * d..], l, d, qc);
                    let ki = MatRef::strided(&kb[head * d..], m, d, qc);
                    let vi = MatRef::strided(&vb[head * e..], m, e, vc);
                    let p = &mut p[head * l * m..][..l * m];
                    matmul(Mat::rows(p, l, m), false, qi, ki.t(), parallel);
                    softmax_rows(p, m, self.scale);
                    let dst = Mat::strided(&mut o[head * e..], l, e, vc);
                    matmul(dst, false, MatRef::rows(p, l, m), vi, parallel);
                }
            });
        });
        *self.lock()? = Some(probs);
        let mut shape = ql.shape().dims().to_vec();
        *shape.last_mut().expect("rank ≥ 3") = vc;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.lock()?;
        let Some(probs) = guard.as_ref() else {
            candle_core::bail!("{OP}: backward before forward")
        };
        let z = sizes(q.shape(), k.shape(), v.shape(), self.heads)?;
        let grad = grad.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (qv, kv, vv, dy) = (
            storage_f32s(&qs, ql, OP, "queries")?,
            storage_f32s(&ks, kl, OP, "keys")?,
            storage_f32s(&vs, vl, OP, "values")?,
            storage_f32s(&gs, gl, OP, "gradient")?,
        );
        let (qc, vc) = z.widths();
        let (h, l, m, d, e) = (z.heads, z.l, z.m, z.d, z.e);
        if dy.len() != z.batch * l * vc || probs.len() != z.batch * h * l * m {
            candle_core::bail!(
                "{OP}: a gradient of {} values for an output of {}",
                dy.len(),
                z.batch * l * vc
            )
        }
        let (mut dq, mut dk, mut dv) = (zeros(qv.len()), zeros(kv.len()), zeros(vv.len()));
        let scale = self.scale;
        let work = z.batch * h * (3 * l * m + 2 * l * (d + e) + 2 * m * (d + e));
        profile::scope("attention backward", work, || {
            let items: Vec<_> = dq
                .chunks_mut(l * qc)
                .zip(dk.chunks_mut(m * qc))
                .zip(dv.chunks_mut(m * vc))
                .enumerate()
                .collect();
            each_entry(items, |(b, ((dqb, dkb), dvb)), parallel| {
                let (qb, kb, vb) = (
                    &qv[b * l * qc..][..l * qc],
                    &kv[b * m * qc..][..m * qc],
                    &vv[b * m * vc..][..m * vc],
                );
                let dyb = &dy[b * l * vc..][..l * vc];
                let mut ds = vec![0f32; l * m];
                for head in 0..h {
                    let p = &probs[(b * h + head) * l * m..][..l * m];
                    let pi = MatRef::rows(p, l, m);
                    let qi = MatRef::strided(&qb[head * d..], l, d, qc);
                    let ki = MatRef::strided(&kb[head * d..], m, d, qc);
                    let vi = MatRef::strided(&vb[head * e..], m, e, vc);
                    let dyi = MatRef::strided(&dyb[head * e..], l, e, vc);
                    matmul(
                        Mat::strided(&mut dvb[head * e..], m, e, vc),
                        false,
                        pi.t(),
                        dyi,
                        parallel,
                    );
                    // ds = p ⊙ (dp − Σ dp⊙p) · scale, row by row, from dp = dy·vᵀ.
                    matmul(Mat::rows(&mut ds, l, m), false, dyi, vi.t(), parallel);
                    softmax_gradient_rows(&mut ds, p, m, scale);
                    let dsi = MatRef::rows(&ds, l, m);
                    matmul(Mat::strided(&mut dqb[head * d..], l, d, qc), false, dsi, ki, parallel);
                    matmul(
                        Mat::strided(&mut dkb[head * d..], m, d, qc),
                        false,
                        dsi.t(),
                        qi,
                        parallel,
                    );
                }
            });
        });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// The same attention from candle ops, in the context's precision: the path on other devices,
/// in other types and for `Ctx::generic` (the generic twin).
pub(crate) fn attention_generic(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, ctx: &Ctx) -> Result<Tensor> {
    let k_t = k.t()?.contiguous()?;
    let scores = (ctx.low_precision(&[q, &k_t], |t| Ok(t[0].matmul(&t[1])?))? * scale)?;
    let probs = crate::layers::softmax_last_dim(&scores, ctx)?;
    ctx.low_precision(&[&probs, v], |t| Ok(t[0].matmul(&t[1])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{assert_gradients_match, f64_vars, max_diff_f64};
    use candle_core::{DType, Device, Var, D};

    /// The composed candle ops in f64 (softmax with its gradient): the reference.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * scale).unwrap();
        let e = s
            .broadcast_sub(&s.max_keepdim(D::Minus1).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(v).unwrap()
    }

    /// Values and the three gradients against the composed ops in f64: one slice (parallel
    /// products) and many (parallel slices), keys fewer and more than queries, values of another
    /// width than the keys, scores far from 0.
    #[test]
    fn values_and_gradients_match_the_composed_ops_in_f64() {
        let dev = Device::Cpu;
        for (lead, l, m, d, e) in [
            (vec![1, 1], 37, 5, 8, 8),
            (vec![3, 2], 64, 64, 16, 24),
            (vec![2, 3], 9, 130, 32, 7),
        ] {
            let shape = |r: usize, c: usize| [lead.clone(), vec![r, c]].concat();
            let var = |r, c, std| Var::from_tensor(&Tensor::randn(0f32, std, shape(r, c), &dev).unwrap()).unwrap();
            let (q, k, v) = (var(l, d, 2.0), var(m, d, 2.0), var(m, e, 1.0));
            let scale = 1.0 / (d as f64).sqrt();
            let ours = attention(&q, &k, &v, 1, scale).unwrap();
            assert_eq!(ours.dims(), shape(l, e).as_slice());
            let f64s = f64_vars(&[&q, &k, &v]);
            let theirs = reference(&f64s[0], &f64s[1], &f64s[2], scale);
            assert!(max_diff_f64(&ours, &theirs) < 1e-5, "{lead:?}×{l}×{m}: values");
            let composed = attention_generic(&q, &k, &v, scale, &Ctx::eval().generic()).unwrap();
            assert!(
                max_diff_f64(&composed, &theirs) < 1e-5,
                "{lead:?}×{l}×{m}: the generic twin"
            );
            let vars = [
                ("queries", &q, &f64s[0]),
                ("keys", &k, &f64s[1]),
                ("values", &v, &f64s[2]),
            ];
            assert_gradients_match(&ours, &theirs, &vars, &format!("{lead:?}×{l}×{m}"));
        }
    }

    /// Heads side by side (the Linears' layout) against the composed ops on heads split out, in
    /// f64: values and the three gradients, few entries (parallel products) and many.
    #[test]
    fn heads_side_by_side_match_the_composed_ops_in_f64() {
        let dev = Device::Cpu;
        for (n, l, m, heads, d, e) in [(1, 37, 20, 3, 8, 5), (4, 16, 9, 2, 4, 4)] {
            let var = |r: usize, c: usize, std| {
                Var::from_tensor(&Tensor::randn(0f32, std, (n, r, c), &dev).unwrap()).unwrap()
            };
            let (q, k, v) = (var(l, heads * d, 2.0), var(m, heads * d, 2.0), var(m, heads * e, 1.0));
            let scale = 1.0 / (d as f64).sqrt();
            let ours = attention(&q, &k, &v, heads, scale).unwrap();
            let f64s = f64_vars(&[&q, &k, &v]);
            let split = |t: &Tensor| {
                let (n, r, c) = t.dims3().unwrap();
                t.reshape((n, r, heads, c / heads))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let theirs = reference(&split(&f64s[0]), &split(&f64s[1]), &split(&f64s[2]), scale)
                .transpose(1, 2)
                .unwrap()
                .reshape((n, l, heads * e))
                .unwrap();
            let what = format!("{n}×{l}×{m}, {heads} heads");
            assert!(max_diff_f64(&ours, &theirs) < 1e-5, "{what}: values");
            let vars = [
                ("queries", &q, &f64s[0]),
                ("keys", &k, &f64s[1]),
                ("values", &v, &f64s[2]),
            ];
            assert_gradients_match(&ours, &theirs, &vars, &what);
        }
    }

    #[test]
    fn mismatched_operands_are_refused() {
        let dev = Device::Cpu;
        let t = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
        let err = attention(&t(&[2, 4, 8]), &t(&[2, 5, 6]), &t(&[2, 5, 3]), 1, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("need keys of 8 columns"), "{err}");
        let err = attention(&t(&[2, 4, 8]), &t(&[3, 5, 8]), &t(&[3, 5, 3]), 1, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("share their leading axes"), "{err}");
        let err = attention(&t(&[4, 8]), &t(&[5, 8]), &t(&[5, 3]), 1, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a batch axis"), "{err}");
    }
}
