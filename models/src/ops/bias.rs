//! A per-channel bias added to N×C×H×W values (a convolution's bias) as one CPU op.
//!
//! Composed from candle ops it is a broadcast addition, whose backward gives the bias its
//! gradient through candle's reduction over axes 0, 2 and 3: a strided walk on one thread (with
//! this op SegFormer-MiT-b0's training step went from 1240 to 950 ms). Here the forward is one
//! pass and the bias gradient one pass of contiguous plane sums (in f64, in parallel over the
//! planes).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_values::{f32s, storage_f32s};
use crate::{profile, Result};

const OP: &str = "ftu-channel-bias";

/// `x` (N, C, H, W) plus `bias` (C values) on every value of each channel.
pub(crate) fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&bias.contiguous()?, ChannelBias)?)
}

/// The composed twin for other devices and dtypes: a broadcast addition.
pub(crate) fn add_channel_bias_generic(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_add(&bias.reshape((1, bias.elem_count(), 1, 1))?)?)
}

struct ChannelBias;

/// (channels, values per plane), checked.
fn sizes(x: &Shape, b: &Shape) -> candle_core::Result<(usize, usize)> {
    let (Ok((_, c, h, w)), Ok(c_b)) = (x.dims4(), b.dims1()) else {
        candle_core::bail!(
            "{OP}: expected N×C×H×W values and a bias of C values, not {:?} and {:?}",
            x.dims(),
            b.dims()
        )
    };
    if c != c_b {
        candle_core::bail!("{OP}: values of {c} channels need a bias of {c} values, not {c_b}")
    }
    Ok((c, h * w))
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, b) = (f32s(xs, xl, OP, "input")?, f32s(bs, bl, OP, "bias")?);
        let (c, plane) = sizes(xl.shape(), bl.shape())?;
        let mut y = vec![0f32; x.len()];
        if plane > 0 {
            profile::scope("channel bias forward", 2 * x.len(), || {
                y.par_chunks_mut(plane)
                    .zip(x.par_chunks(plane))
                    .enumerate()
                    .for_each(|(nc, (y, x))| {
                        let v = b[nc % c];
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = x + v;
                        }
                    });
            });
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (c, plane) = sizes(x.shape(), bias.shape())?;
        let grad = grad.contiguous()?;
        let db = {
            let (gs, gl) = grad.storage_and_layout();
            let dy = storage_f32s(&gs, gl, OP, "gradient")?;
            if dy.len() != x.elem_count() {
                candle_core::bail!(
                    "{OP}: a gradient of {} values for an input of {}",
                    dy.len(),
                    x.elem_count()
                )
            }
            let mut sums = vec![0f64; c];
            if plane > 0 {
                let plane_sums: Vec<f64> = profile::scope("channel bias backward", dy.len(), || {
                    dy.par_chunks(plane)
                        .map(|p| p.iter().map(|&g| g as f64).sum::<f64>())
                        .collect()
                });
                for (nc, s) in plane_sums.into_iter().enumerate() {
                    sums[nc % c] += s;
                }
            }
            sums.into_iter().map(|s| s as f32).collect::<Vec<f32>>()
        };
        Ok((Some(grad), Some(Tensor::from_vec(db, c, bias.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{assert_gradients_match, f64_vars, max_diff_f64};
    use candle_core::{DType, Device, Var};

    /// Values and both gradients against the broadcast addition in f64, for one image and for a
    /// batch whose planes are larger than one chunk of work.
    #[test]
    fn values_and_gradients_match_the_broadcast_addition_in_f64() {
        let dev = Device::Cpu;
        for dims in [(1, 3, 2, 5), (4, 16, 64, 64), (2, 7, 1, 1)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, dims, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, dims.1, &dev).unwrap()).unwrap();
            let ours = add_channel_bias(&x, &b).unwrap();
            let f64s = f64_vars(&[&x, &b]);
            let theirs = add_channel_bias_generic(&f64s[0], &f64s[1]).unwrap();
            assert!(max_diff_f64(&ours, &theirs) < 1e-5, "{dims:?}: values");
            let vars = [("input", &x, &f64s[0]), ("bias", &b, &f64s[1])];
            assert_gradients_match(&ours, &theirs, &vars, &format!("{dims:?}"));
        }
    }

    #[test]
    fn a_bias_of_the_wrong_length_is_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let err = add_channel_bias(&x, &b).unwrap_err().to_string();
        assert!(
            err.contains("values of 4 channels need a bias of 4 values, not 3"),
            "{err}"
        );
    }
}
