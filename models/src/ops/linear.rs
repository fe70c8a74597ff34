//! A fully connected layer with bias, x·wᵀ + b, as one CPU op with its own backward pass.
//!
//! Composed from candle ops, the forward is a matmul with the transposed weight and a broadcast
//! addition of the bias; the backward gives the weight its gradient through the transpose (a
//! strided view, copied before it is stored) and the bias its gradient through the broadcast's
//! reduction. Here the forward is one `gemm` product accumulated onto rows of the bias, and the
//! backward two products on the operands as they lie (dx = dy·w, dw = dyᵀ·x, its rows of pixels
//! cut into one share per thread: `gemm` alone keeps one thread busy on so small a result) and
//! one pass of column sums for db, in f64.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::matmul::{matmul, matmul_long_inner, Mat, MatRef};
use super::cpu_values::{f32s, storage_f32s, zeros};
use super::simd;
use crate::{profile, Result};

const OP: &str = "ftu-linear";

/// Rows per block of the bias gradient's sums.
const BIAS_ROWS: usize = 1024;

/// x·wᵀ + b for x of rows × in, w of out × in (PyTorch's layout) and b of out values.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp)?)
}

struct LinearOp;

/// (rows, in, out), checked.
fn sizes(x: &Shape, w: &Shape, b: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    let (Ok((rows, c_in)), Ok((c_out, w_in)), Ok(b_out)) = (x.dims2(), w.dims2(), b.dims1()) else {
        candle_core::bail!(
            "{OP}: expected inputs rows×in, a weight out×in and a bias of out values, not {:?}, {:?} and {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        )
    };
    if w_in != c_in || b_out != c_out {
        candle_core::bail!(
            "{OP}: inputs of {c_in} columns need a weight of {c_in} columns and a bias as long as its rows; weight {:?}, bias {:?}",
            w.dims(),
            b.dims()
        )
    }
    Ok((rows, c_in, c_out))
}

impl CustomOp3 for LinearOp {
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
        let (x, w, b) = (
            f32s(xs, xl, OP, "input")?,
            f32s(ws, wl, OP, "weight")?,
            f32s(bs, bl, OP, "bias")?,
        );
        let (rows, c_in, c_out) = sizes(xl.shape(), wl.shape(), bl.shape())?;
        let mut y = Vec::with_capacity(rows * c_out);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        profile::scope("linear forward", x.len() + w.len() + 2 * y.len(), || {
            let (xm, wm) = (MatRef::rows(x, rows, c_in), MatRef::rows(w, c_out, c_in));
            matmul(Mat::rows(&mut y, rows, c_out), true, xm, wm.t(), true);
        });
        Ok((CpuStorage::F32(y), Shape::from((rows, c_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, c_in, c_out) = sizes(x.shape(), weight.shape(), bias.shape())?;
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (xv, wv, dy) = (
            storage_f32s(&xs, xl, OP, "input")?,
            storage_f32s(&ws, wl, OP, "weight")?,
            storage_f32s(&gs, gl, OP, "gradient")?,
        );
        if dy.len() != rows * c_out {
            candle_core::bail!(
                "{OP}: a gradient of {} values for an output of {}",
                dy.len(),
                rows * c_out
            )
        }
        let (mut dx, mut dw) = (zeros(rows * c_in), vec![0f32; c_out * c_in]);
        let mut sums = vec![0f64; c_out];
        profile::scope("linear backward", 2 * (xv.len() + wv.len() + dy.len()), || {
            let dym = MatRef::rows(dy, rows, c_out);
            matmul(
                Mat::rows(&mut dx, rows, c_in),
                false,
                dym,
                MatRef::rows(wv, c_out, c_in),
                true,
            );
            matmul_long_inner(&mut dw, dym.t(), MatRef::rows(xv, rows, c_in));
            // The bias gradient: f64 column sums of blocks of rows on the pool, added in order.
            let blocks: Vec<Vec<f64>> = dy
                .par_chunks(BIAS_ROWS * c_out.max(1))
                .map(|block| {
                    let mut part = vec![0f64; c_out];
                    simd::widest(
                        #[inline(always)]
                        || {
                            for row in block.chunks(c_out) {
                                for (s, &g) in part.iter_mut().zip(row) {
                                    *s += g as f64;
                                }
                            }
                        },
                    );
                    part
                })
                .collect();
            for part in blocks {
                sums.iter_mut().zip(part).for_each(|(s, p)| *s += p);
            }
        });
        let db: Vec<f32> = sums.into_iter().map(|s| s as f32).collect();
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, weight.shape(), dev)?),
            Some(Tensor::from_vec(db, c_out, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{assert_gradients_match, f64_vars, max_diff_f64};
    use candle_core::{DType, Device, Var};

    /// Values and the three gradients against candle's matmul and broadcast addition in f64,
    /// for a few rows and for more than one product's worth of rows.
    #[test]
    fn values_and_gradients_match_the_composed_ops_in_f64() {
        let dev = Device::Cpu;
        for (rows, c_in, c_out) in [(3, 5, 4), (4096, 64, 96), (77, 130, 33)] {
            let var = |s: (usize, usize), std| Var::from_tensor(&Tensor::randn(0f32, std, s, &dev).unwrap()).unwrap();
            let (x, w) = (var((rows, c_in), 2.0), var((c_out, c_in), 0.3));
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, c_out, &dev).unwrap()).unwrap();
            let ours = linear(&x, &w, &b).unwrap();
            let f64s = f64_vars(&[&x, &w, &b]);
            let theirs = f64s[0]
                .matmul(&f64s[1].t().unwrap())
                .unwrap()
                .broadcast_add(&f64s[2])
                .unwrap();
            let top = theirs.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(
                max_diff_f64(&ours, &theirs) < 1e-5 * top.max(1.0),
                "{rows}×{c_in}→{c_out}: values"
            );
            let vars = [
                ("input", &x, &f64s[0]),
                ("weight", &w, &f64s[1]),
                ("bias", &b, &f64s[2]),
            ];
            assert_gradients_match(&ours, &theirs, &vars, &format!("{rows}×{c_in}→{c_out}"));
        }
    }

    #[test]
    fn a_weight_of_the_wrong_width_is_refused() {
        let dev = Device::Cpu;
        let t = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
        let err = linear(&t(&[2, 4]), &t(&[3, 5]), &t(&[3])).unwrap_err().to_string();
        assert!(err.contains("inputs of 4 columns need a weight of 4 columns"), "{err}");
    }
}
