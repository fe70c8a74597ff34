//! Normalisation: BatchNorm2d (batch statistics and running-statistic updates in training,
//! running statistics in eval and in ONNX), LayerNorm over the last axis, and LayerNorm over the
//! channels of N×C×H×W.

use candle_core::{Tensor, Var, D};
use candle_nn::{Init, VarBuilder};
use ftu_onnx::Attr;

use super::{Activation, Layer};
use crate::ops::batch_norm::Act;
use crate::{Ctx, Exporter, Result};

pub struct BatchNorm2d {
    name: String,
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            name: vb.prefix(),
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            running_mean: Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?,
            running_var: Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// The same with epsilon `eps` (timm's `tf_*` models have TensorFlow's 1e-3).
    pub fn with_eps(self, eps: f64) -> Self {
        BatchNorm2d { eps, ..self }
    }

    fn per_channel(t: &Tensor) -> Result<Tensor> {
        Ok(t.reshape((1, t.elem_count(), 1, 1))?)
    }
}

impl BatchNorm2d {
    /// `act(bn(x) [+ residual])`. In training on the CPU one fused op with its own backward;
    /// on other devices and dtypes one op of composed kernels with its own backward, then the
    /// residual and activation composed; in eval the composed ops.
    pub fn forward_act(&self, x: &Tensor, ctx: &Ctx, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        let Some(momentum) = ctx.batch_statistics() else {
            let mean = Self::per_channel(self.running_mean.as_tensor())?;
            let var = Self::per_channel(self.running_var.as_tensor())?;
            let normed = x.broadcast_sub(&mean)?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            let y = normed
                .broadcast_mul(&Self::per_channel(&self.weight)?)?
                .broadcast_add(&Self::per_channel(&self.bias)?)?;
            return finish(y, residual, act, ctx);
        };
        let (n, _, h, w) = x.dims4()?;
        let count = n * h * w;
        if count < 2 {
            return Err(crate::ModelError::Input {
                what: format!("{} in training", self.name),
                expected: "more than one value per channel (batch × height × width > 1)".into(),
            });
        }
        let fused = match act {
            Activation::Identity => Some(Act::Identity),
            Activation::Relu => Some(Act::Relu),
            Activation::Silu => Some(Act::Silu),
            Activation::Gelu | Activation::Sigmoid => None,
        };
        let (y, mean, var) = if ctx.cpu_ops(x) {
            // One fused op (two passes each way) instead of a dozen composed ones.
            let (y, stats) = crate::ops::batch_norm::batch_norm(
                x,
                &self.weight,
                &self.bias,
                self.eps,
                residual.filter(|_| fused.is_some()),
                fused.unwrap_or(Act::Identity),
            )?;
            let y = match fused {
                Some(_) => y,
                None => finish(y, residual, act, ctx)?,
            };
            let c = stats.mean.len();
            let dev = x.device();
            (
                y,
                Tensor::from_vec(stats.mean, c, dev)?,
                Tensor::from_vec(stats.var, c, dev)?,
            )
        } else {
            // One op whose backward keeps the input only (`ops/batch_norm/generic.rs`).
            let (y, mean, var) = crate::ops::batch_norm::generic::batch_norm(x, &self.weight, &self.bias, self.eps)?;
            (finish(y, residual, act, ctx)?, mean, var)
        };
        // Running variance is unbiased, as in PyTorch.
        let m = momentum.unwrap_or(self.momentum);
        let unbiased = (var * (count as f64 / (count - 1) as f64))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(y)
    }
}

/// The residual add and the activation, as composed ops.
fn finish(y: Tensor, residual: Option<&Tensor>, act: Activation, ctx: &Ctx) -> Result<Tensor> {
    let y = match residual {
        Some(r) => (y + r)?,
        None => y,
    };
    act.forward(&y, ctx)
}

impl Layer for BatchNorm2d {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.forward_act(x, ctx, None, Activation::Identity)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let n = &self.name;
        let scale = e.param(&format!("{n}.weight"), &self.weight)?;
        let bias = e.param(&format!("{n}.bias"), &self.bias)?;
        let mean = e.param(&format!("{n}.running_mean"), self.running_mean.as_tensor())?;
        let var = e.param(&format!("{n}.running_var"), self.running_var.as_tensor())?;
        Ok(e.op(
            "BatchNormalization",
            &[x, &scale, &bias, &mean, &var],
            &[("epsilon", Attr::Float(self.eps as f32))],
        ))
    }
}

pub struct LayerNorm {
    name: String,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            name: vb.prefix(),
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }
}

impl LayerNorm {
    /// From candle ops: the path on other devices and in other precisions, and the reference the
    /// CPU op is tested against.
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

impl Layer for LayerNorm {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if ctx.cpu_ops(x) && self.weight.dtype() == candle_core::DType::F32 {
            return crate::ops::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        self.composed(x)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let scale = e.param(&format!("{}.weight", self.name), &self.weight)?;
        let bias = e.param(&format!("{}.bias", self.name), &self.bias)?;
        Ok(e.op(
            "LayerNormalization",
            &[x, &scale, &bias],
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(self.eps as f32))],
        ))
    }
}

/// A LayerNorm over the channels of N×C×H×W (timm's and smp's `LayerNorm2d`), run on the
/// N×(H·W)×C token view, so that it is the same LayerNormalization node in ONNX as a
/// transformer's.
pub struct ChannelNorm {
    norm: LayerNorm,
    channels: usize,
}

impl ChannelNorm {
    pub fn new(vb: VarBuilder, channels: usize, eps: f64) -> Result<ChannelNorm> {
        Ok(ChannelNorm {
            norm: LayerNorm::new(vb, channels, eps)?,
            channels,
        })
    }
}

impl Layer for ChannelNorm {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let tokens = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let tokens = self.norm.forward(&tokens, ctx)?;
        Ok(tokens.transpose(1, 2)?.reshape((n, c, h, w))?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let tokens = e.to_tokens(x)?;
        let tokens = self.norm.export(e, &tokens)?;
        e.to_spatial(&tokens, self.channels, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// Recalibrating over batches k = 0, 1, 2 with momentum 1/(k + 1) leaves the running mean at
    /// the batches' average mean and the running variance at their average (unbiased) variance,
    /// whatever the statistics were before; the output is normalised by each batch's own.
    #[test]
    fn precise_recalibration_averages_the_batches_statistics() {
        let map = VarMap::new();
        let bn = BatchNorm2d::new(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu), 1).unwrap();
        bn.running_mean
            .set(&Tensor::new(&[7.0f32], &Device::Cpu).unwrap())
            .unwrap();
        let batches = [[1.0f32, 3.0], [2.0, 6.0], [0.0, 10.0]];
        for (k, b) in batches.iter().enumerate() {
            let x = Tensor::new(b, &Device::Cpu).unwrap().reshape((2, 1, 1, 1)).unwrap();
            let ctx = Ctx::recalibrate_with(1.0 / (k + 1) as f64);
            let y = bn.forward_act(&x, &ctx, None, Activation::Identity).unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                (y[0] + y[1]).abs() < 1e-4 && y[1] > 0.99,
                "batch {k} normalised by itself: {y:?}"
            );
        }
        let mean: f32 = bn.running_mean.as_tensor().to_vec1::<f32>().unwrap()[0];
        let var: f32 = bn.running_var.as_tensor().to_vec1::<f32>().unwrap()[0];
        // Means 2, 4, 5 → 11/3; unbiased variances 2, 8, 50 → 20.
        assert!((mean - 11.0 / 3.0).abs() < 1e-5, "{mean}");
        assert!((var - 20.0).abs() < 1e-4, "{var}");
    }
}
