//! Fully connected layer over the last axis (PyTorch layout: weight out×in), exported as MatMul
//! with the transposed weight plus Add, which serves both N×C and N×L×C inputs. On the CPU in
//! float32 a layer with bias is one op (`ops::linear`).

use candle_core::Tensor;
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use super::{Conv2d, ConvCfg, Layer};
use crate::{Ctx, Exporter, Result};

pub struct Linear {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize, bias: bool) -> Result<Linear> {
        let init = Init::Kaiming {
            dist: NormalOrUniform::Uniform,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::Linear,
        };
        let weight = vb.get_with_hints((c_out, c_in), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Linear {
            name: vb.prefix(),
            weight,
            bias,
        })
    }

    /// The same weights as a 1×1 convolution over N×C×H×W (SegFormer's per-level MLP).
    pub fn as_conv1x1(&self) -> Result<Conv2d> {
        let (c_out, c_in) = self.weight.dims2()?;
        let weight = self.weight.reshape((c_out, c_in, 1, 1))?;
        let cfg = ConvCfg::same(1).bias(self.bias.is_some());
        Ok(Conv2d::from_tensors(self.name.clone(), weight, self.bias.clone(), cfg))
    }
}

impl Layer for Linear {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let c_in = dims[dims.len() - 1];
        let rows = x.elem_count() / c_in;
        let x = x.reshape((rows, c_in))?;
        let y = match &self.bias {
            Some(b) if ctx.cpu_ops_f32(&x) => crate::ops::linear::linear(&x, &self.weight, b)?,
            bias => {
                let y = ctx.low_precision(&[&x, &self.weight], |t| Ok(t[0].matmul(&t[1].t()?)?))?;
                match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank ≥ 1") = self.weight.dims()[0];
        Ok(y.reshape(out_dims)?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let w = e.param(&format!("{}.weight.T", self.name), &self.weight.t()?.contiguous()?)?;
        let y = e.op("MatMul", &[x, &w], &[]);
        Ok(match &self.bias {
            Some(b) => {
                let b = e.param(&format!("{}.bias", self.name), b)?;
                e.add(&y, &b)
            }
            None => y,
        })
    }
}
