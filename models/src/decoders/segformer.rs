//! SegFormer's all-MLP head with Hugging Face's names (`decode_head.linear_c.0.proj`,
//! `decode_head.linear_fuse`, `decode_head.batch_norm`, `decode_head.classifier`): each level
//! projected to one width, brought to stride 4 (bilinear), concatenated deepest first, fused,
//! classified, then ×4 to the input.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Decoder, DecoderOut};
use crate::layers::{Activation, BatchNorm2d, Conv2d, ConvCfg, Dropout, Interpolation, Layer, Linear, Upsample};
use crate::{ArchConfig, Ctx, Exporter, ModelError, Result};

pub struct SegformerHead {
    /// Per level, shallow to deep: the projection (a Linear applied as 1×1 conv) and its upsample.
    projections: Vec<(Conv2d, Upsample)>,
    fuse: Conv2d,
    norm: BatchNorm2d,
    dropout: Dropout,
    classifier: Conv2d,
    up: Upsample,
}

impl SegformerHead {
    pub fn new(
        vb: VarBuilder,
        channels: &[usize],
        strides: &[usize],
        width: usize,
        config: &ArchConfig,
    ) -> Result<Self> {
        if strides.len() != 4 || strides[0] != 4 {
            return Err(ModelError::Config(format!(
                "segformer head needs 4 levels from stride 4, got {strides:?}"
            )));
        }
        let h = vb.pp("decode_head");
        let mut projections = Vec::new();
        for (i, (&c, &s)) in channels.iter().zip(strides).enumerate() {
            let linear = Linear::new(h.pp("linear_c").pp(i).pp("proj"), c, width, true)?;
            let up = Upsample {
                scale: s / strides[0],
                mode: Interpolation::Bilinear,
            };
            projections.push((linear.as_conv1x1()?, up));
        }
        Ok(SegformerHead {
            projections,
            fuse: Conv2d::new(h.pp("linear_fuse"), width * 4, width, 1, ConvCfg::same(1))?,
            norm: BatchNorm2d::new(h.pp("batch_norm"), width)?,
            dropout: Dropout { p: config.dropout },
            classifier: Conv2d::head(h.pp("classifier"), width, 1, 1, ConvCfg::same(1).bias(true))?,
            up: Upsample {
                scale: strides[0],
                mode: Interpolation::Bilinear,
            },
        })
    }
}

impl Decoder for SegformerHead {
    fn forward(&self, levels: &[Tensor], ctx: &Ctx) -> Result<DecoderOut> {
        let levels = super::last(levels, 4);
        let mut projected = Vec::new();
        for ((proj, up), level) in self.projections.iter().zip(levels).rev() {
            projected.push(up.forward(&proj.forward(level, ctx)?, ctx)?);
        }
        let x = Tensor::cat(&projected, 1)?;
        let x = crate::layers::forward_all(
            &[
                &self.fuse,
                &self.norm,
                &Activation::Relu,
                &self.dropout,
                &self.classifier,
                &self.up,
            ],
            &x,
            ctx,
        )?;
        Ok(DecoderOut {
            logits: x,
            aux: Vec::new(),
        })
    }

    fn export(&self, e: &mut Exporter, levels: &[String]) -> Result<String> {
        let levels = super::last(levels, 4);
        let mut projected = Vec::new();
        for ((proj, up), level) in self.projections.iter().zip(levels).rev() {
            let p = proj.export(e, level)?;
            projected.push(up.export(e, &p)?);
        }
        let refs: Vec<&str> = projected.iter().map(String::as_str).collect();
        let x = e.concat(&refs, 1);
        crate::layers::export_all(
            &[
                &self.fuse,
                &self.norm,
                &Activation::Relu,
                &self.dropout,
                &self.classifier,
                &self.up,
            ],
            e,
            &x,
        )
    }
}
