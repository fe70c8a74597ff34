//! Squeeze-excitation as timm's EfficientNet blocks have it: global pool, 1×1 reduce, activation,
//! 1×1 expand, sigmoid gate (`se.conv_reduce`, `se.conv_expand`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Activation, Conv2d, ConvCfg, GlobalAvgPool, Layer};
use crate::{Ctx, Exporter, Result};

pub struct SqueezeExcite {
    reduce: Conv2d,
    act: Activation,
    expand: Conv2d,
}

impl SqueezeExcite {
    pub fn new(vb: VarBuilder, channels: usize, reduced: usize, act: Activation) -> Result<Self> {
        let cfg = ConvCfg::same(1).bias(true);
        Ok(SqueezeExcite {
            reduce: Conv2d::new(vb.pp("conv_reduce"), channels, reduced, 1, cfg)?,
            act,
            expand: Conv2d::new(vb.pp("conv_expand"), reduced, channels, 1, cfg)?,
        })
    }
}

impl Layer for SqueezeExcite {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let gate = super::forward_all(
            &[
                &GlobalAvgPool,
                &self.reduce,
                &self.act,
                &self.expand,
                &Activation::Sigmoid,
            ],
            x,
            ctx,
        )?;
        Ok(x.broadcast_mul(&gate)?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let gate = super::export_all(
            &[
                &GlobalAvgPool,
                &self.reduce,
                &self.act,
                &self.expand,
                &Activation::Sigmoid,
            ],
            e,
            x,
        )?;
        Ok(e.mul(x, &gate))
    }
}
