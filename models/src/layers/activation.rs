//! Pointwise activations. ONNX opset 17 has no SiLU or GELU op, so they are written as PyTorch
//! exports them: x·σ(x) and 0.5·x·(1 + erf(x/√2)).

use candle_core::{Tensor, D};

use super::Layer;
use crate::{Ctx, Exporter, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Silu,
    /// The exact (erf) GELU, as nn.GELU() and Hugging Face SegFormer use.
    Gelu,
    Sigmoid,
}

impl Layer for Activation {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if *self == Activation::Identity {
            return Ok(x.clone());
        }
        if *self == Activation::Gelu && ctx.cpu_ops(x) {
            return crate::ops::pointwise::gelu(x);
        }
        crate::profile::scope("activation (candle op)", 2 * x.elem_count(), || self.apply(x))
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        Ok(match self {
            Activation::Identity => x.to_string(),
            Activation::Relu => e.op("Relu", &[x], &[]),
            Activation::Sigmoid => e.op("Sigmoid", &[x], &[]),
            Activation::Silu => {
                let gate = e.op("Sigmoid", &[x], &[]);
                e.mul(x, &gate)
            }
            Activation::Gelu => {
                let root2 = e.scalar(std::f32::consts::SQRT_2)?;
                let one = e.scalar(1.0)?;
                let half = e.scalar(0.5)?;
                let scaled = e.op("Div", &[x, &root2], &[]);
                let erf = e.op("Erf", &[&scaled], &[]);
                let plus = e.add(&erf, &one);
                let xhalf = e.mul(x, &half);
                e.mul(&xhalf, &plus)
            }
        })
    }
}

impl Activation {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Identity => x.clone(),
            Activation::Relu => x.relu()?,
            Activation::Silu => x.silu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
        })
    }
}

/// The softmax over the last axis (attention's): on the CPU one op with its own backward.
pub fn softmax_last_dim(x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    if ctx.cpu_ops(x) {
        return crate::ops::pointwise::softmax_last_dim(x);
    }
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}
