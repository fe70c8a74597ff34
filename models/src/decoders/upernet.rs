//! UperNet decoder (the unified perceptual parsing head, mmseg's `UPerHead`), in smp 0.6's `UPerNetDecoder` layout
//! and names (`decoder.feature_norms`, `decoder.psp`, `decoder.fpn_lateral_blocks`,
//! `decoder.fpn_conv_blocks`, `decoder.fusion_block`, `segmentation_head.0`), so an smp `UPerNet`
//! state dict loads as it is.
//!
//! The four levels at strides 4 to 32 are each LayerNorm-ed over their channels. A pyramid pooling
//! module runs on the deepest: adaptive average pooling to 1, 2, 3 and 6 bins a side, a 1×1
//! conv-BN-ReLU on each, bilinear back to the level's size, concatenated with the level and fused
//! by a 3×3 conv-BN-ReLU. A top-down FPN adds 1×1 laterals of the other levels to the sums above
//! them, a 3×3 conv-BN-ReLU smooths each sum for the fusion, every map is resized to stride 4 and concatenated (stride 4 first), a 3×3
//! conv-BN-ReLU fuses them, and a 1×1 head is upsampled ×4 (corner-aligned, as smp's head).
//! One width, `decoder_channels` (smp's default 256), runs through all of it.
//!
//! The 1×1 pooled map has one value per channel and image, so its BatchNorm needs a training
//! batch of two or more images: a batch of one is refused, by name, as PyTorch refuses it. In
//! training, `dropout` (ftu's 0.1 by default; smp's `UPerNet` has none) runs before the head.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Decoder, DecoderOut};
use crate::layers::{
    Activation, AdaptiveAvgPool2d, ChannelNorm, Conv2d, ConvBnAct, ConvCfg, Dropout, Interpolation, Layer, ResizeLike,
    Upsample,
};
use crate::{ArchConfig, Ctx, Exporter, ModelError, Result};

/// The pyramid pooling module's bins a side.
const BINS: [usize; 4] = [1, 2, 3, 6];
/// smp's LayerNorm2d on the encoder levels.
const NORM_EPS: f64 = 1e-6;

pub struct UperNet {
    norms: Vec<ChannelNorm>,
    pools: Vec<(AdaptiveAvgPool2d, ConvBnAct)>,
    psp_out: ConvBnAct,
    /// 1×1 laterals of the levels at strides 16, 8 and 4, in that order.
    laterals: Vec<ConvBnAct>,
    /// 3×3 smoothing after each lateral sum, same order.
    smooth: Vec<ConvBnAct>,
    fusion: ConvBnAct,
    dropout: Dropout,
    head: Conv2d,
    head_up: Upsample,
}

impl UperNet {
    pub fn new(
        vb: VarBuilder,
        channels: &[usize],
        strides: &[usize],
        width: usize,
        config: &ArchConfig,
    ) -> Result<UperNet> {
        if strides != [4, 8, 16, 32] {
            return Err(ModelError::Config(format!(
                "upernet needs levels at strides 4-32, got {strides:?}"
            )));
        }
        let d = vb.pp("decoder");
        let relu = Activation::Relu;
        let mut norms = Vec::new();
        for (i, &c) in channels.iter().enumerate() {
            norms.push(ChannelNorm::new(d.pp("feature_norms").pp(i), c, NORM_EPS)?);
        }
        let deep = channels[3];
        let p = d.pp("psp");
        let mut pools = Vec::new();
        for (i, bins) in BINS.into_iter().enumerate() {
            let conv = ConvBnAct::new(p.pp("blocks").pp(i).pp(1), deep, width, 1, ConvCfg::same(1), relu)?;
            pools.push((AdaptiveAvgPool2d { bins }, conv));
        }
        let psp_in = deep + BINS.len() * width;
        let psp_out = ConvBnAct::new(p.pp("out_conv"), psp_in, width, 3, ConvCfg::same(3), relu)?;
        let (mut laterals, mut smooth) = (Vec::new(), Vec::new());
        for (i, level) in [2, 1, 0].into_iter().enumerate() {
            let lateral = d.pp("fpn_lateral_blocks").pp(i).pp("conv_norm_relu");
            laterals.push(ConvBnAct::new(
                lateral,
                channels[level],
                width,
                1,
                ConvCfg::same(1),
                relu,
            )?);
            let conv = d.pp("fpn_conv_blocks").pp(i);
            smooth.push(ConvBnAct::new(conv, width, width, 3, ConvCfg::same(3), relu)?);
        }
        let fusion = ConvBnAct::new(d.pp("fusion_block"), 4 * width, width, 3, ConvCfg::same(3), relu)?;
        Ok(UperNet {
            norms,
            pools,
            psp_out,
            laterals,
            smooth,
            fusion,
            dropout: Dropout { p: config.dropout },
            head: Conv2d::head(
                vb.pp("segmentation_head").pp("0"),
                width,
                1,
                1,
                ConvCfg::same(1).bias(true),
            )?,
            head_up: Upsample {
                scale: 4,
                mode: Interpolation::BilinearAlignCorners,
            },
        })
    }
}

impl Decoder for UperNet {
    fn forward(&self, levels: &[Tensor], ctx: &Ctx) -> Result<DecoderOut> {
        let levels = super::last(levels, 4);
        let mut normed = Vec::new();
        for (norm, level) in self.norms.iter().zip(levels) {
            normed.push(norm.forward(level, ctx)?);
        }
        let deep = &normed[3];
        let mut pyramid = vec![deep.clone()];
        for (pool, conv) in &self.pools {
            let pooled = conv.forward(&pool.forward(deep, ctx)?, ctx)?;
            pyramid.push(ResizeLike.forward(&pooled, deep)?);
        }
        let mut state = self.psp_out.forward(&Tensor::cat(&pyramid, 1)?, ctx)?;
        let mut maps = vec![state.clone()];
        // Top-down on the sums; each is smoothed only for the fusion.
        for ((lateral, smooth), level) in self.laterals.iter().zip(&self.smooth).zip([2, 1, 0]) {
            let side = lateral.forward(&normed[level], ctx)?;
            state = (ResizeLike.forward(&state, &side)? + side)?;
            maps.push(smooth.forward(&state, ctx)?);
        }
        let finest = maps[3].clone();
        let mut resized = Vec::new();
        for map in maps.iter().rev() {
            resized.push(ResizeLike.forward(map, &finest)?);
        }
        let x = self.fusion.forward(&Tensor::cat(&resized, 1)?, ctx)?;
        let x = self.dropout.forward(&x, ctx)?;
        Ok(DecoderOut {
            logits: self.head_up.forward(&self.head.forward(&x, ctx)?, ctx)?,
            aux: Vec::new(),
        })
    }

    fn export(&self, e: &mut Exporter, levels: &[String]) -> Result<String> {
        let levels = super::last(levels, 4);
        let mut normed = Vec::new();
        for (norm, level) in self.norms.iter().zip(levels) {
            normed.push(norm.export(e, level)?);
        }
        let deep = normed[3].clone();
        let mut pyramid = vec![deep.clone()];
        for (pool, conv) in &self.pools {
            let pooled = pool.export(e, &deep)?;
            let pooled = conv.export(e, &pooled)?;
            pyramid.push(ResizeLike.export(e, &pooled, &deep)?);
        }
        let refs: Vec<&str> = pyramid.iter().map(String::as_str).collect();
        let cat = e.concat(&refs, 1);
        let mut state = self.psp_out.export(e, &cat)?;
        let mut maps = vec![state.clone()];
        for ((lateral, smooth), level) in self.laterals.iter().zip(&self.smooth).zip([2, 1, 0]) {
            let side = lateral.export(e, &normed[level])?;
            let up = ResizeLike.export(e, &state, &side)?;
            state = e.add(&up, &side);
            maps.push(smooth.export(e, &state)?);
        }
        let finest = maps[3].clone();
        let mut resized = Vec::new();
        for map in maps.iter().rev() {
            // Resizing the stride-4 map to its own size is the identity; Candle skips it too.
            resized.push(if *map == finest {
                map.clone()
            } else {
                ResizeLike.export(e, map, &finest)?
            });
        }
        let refs: Vec<&str> = resized.iter().map(String::as_str).collect();
        let cat = e.concat(&refs, 1);
        let x = self.fusion.export(e, &cat)?;
        let x = self.dropout.export(e, &x)?;
        let logits = self.head.export(e, &x)?;
        self.head_up.export(e, &logits)
    }
}
