//! MiT's Mix-FFN: Linear → 3×3 depthwise conv over the token grid → GELU → Linear. The depthwise
//! conv gives the encoder its positional information (Hugging Face names `mlp.dense1`,
//! `mlp.dwconv.dwconv`, `mlp.dense2`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Activation, Conv2d, ConvCfg, Layer, Linear};
use crate::{Ctx, Exporter, Result};

pub struct MixFfn {
    hidden: usize,
    dense1: Linear,
    dwconv: Conv2d,
    dense2: Linear,
}

impl MixFfn {
    pub fn new(vb: VarBuilder, channels: usize, hidden: usize) -> Result<Self> {
        Ok(MixFfn {
            hidden,
            dense1: Linear::new(vb.pp("dense1"), channels, hidden, true)?,
            dwconv: Conv2d::new(
                vb.pp("dwconv").pp("dwconv"),
                hidden,
                hidden,
                3,
                ConvCfg::same(3).groups(hidden).bias(true),
            )?,
            dense2: Linear::new(vb.pp("dense2"), hidden, channels, true)?,
        })
    }

    pub fn forward(&self, tokens: &Tensor, h: usize, w: usize, ctx: &Ctx) -> Result<Tensor> {
        let x = self.dense1.forward(tokens, ctx)?;
        let x = self.dwconv.forward_tokens(&x, h, w, ctx)?;
        let x = Activation::Gelu.forward(&x, ctx)?;
        self.dense2.forward(&x, ctx)
    }

    pub fn export(&self, e: &mut Exporter, tokens: &str, spatial: &str) -> Result<String> {
        let x = self.dense1.export(e, tokens)?;
        let x = e.to_spatial(&x, self.hidden, spatial)?;
        let x = self.dwconv.export(e, &x)?;
        let x = e.to_tokens(&x)?;
        let x = Activation::Gelu.export(e, &x)?;
        self.dense2.export(e, &x)
    }
}
