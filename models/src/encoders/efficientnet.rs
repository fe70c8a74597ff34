//! EfficientNet-B0…B7 as timm's `efficientnet_bN` builds them (symmetric padding, SiLU,
//! squeeze-excitation, width and depth scaling), with timm's parameter names
//! (`conv_stem`, `blocks.1.0.conv_pw`, `blocks.1.0.se.conv_reduce`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{drop_path_rate, Encoder};
use crate::layers::{Activation, BatchNorm2d, Conv2d, ConvCfg, DropPath, Layer, SqueezeExcite};
use crate::{Ctx, Exporter, ModelError, Result};

/// One stage of the B0 definition: inverted residual (else depthwise separable), repeats,
/// kernel, stride, expansion, output channels.
struct StageDef {
    inverted: bool,
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    channels: usize,
}

const B0: [StageDef; 7] = [
    StageDef {
        inverted: false,
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 1,
        channels: 16,
    },
    StageDef {
        inverted: true,
        repeats: 2,
        kernel: 3,
        stride: 2,
        expand: 6,
        channels: 24,
    },
    StageDef {
        inverted: true,
        repeats: 2,
        kernel: 5,
        stride: 2,
        expand: 6,
        channels: 40,
    },
    StageDef {
        inverted: true,
        repeats: 3,
        kernel: 3,
        stride: 2,
        expand: 6,
        channels: 80,
    },
    StageDef {
        inverted: true,
        repeats: 3,
        kernel: 5,
        stride: 1,
        expand: 6,
        channels: 112,
    },
    StageDef {
        inverted: true,
        repeats: 4,
        kernel: 5,
        stride: 2,
        expand: 6,
        channels: 192,
    },
    StageDef {
        inverted: true,
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 6,
        channels: 320,
    },
];

/// The stages whose outputs are the feature levels (strides 2, 4, 8, 16, 32).
const LEVEL_STAGES: [usize; 5] = [0, 1, 2, 4, 6];

/// (width, depth) multipliers of efficientnet_b0 … b7.
const SCALING: [(f64, f64); 8] = [
    (1.0, 1.0),
    (1.0, 1.1),
    (1.1, 1.2),
    (1.2, 1.4),
    (1.4, 1.8),
    (1.6, 2.2),
    (1.8, 2.6),
    (2.0, 3.1),
];

/// timm's `round_channels`: the nearest multiple of 8, never more than 10% below.
pub(crate) fn round_channels(channels: usize, multiplier: f64) -> usize {
    let v = channels as f64 * multiplier;
    let mut rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded += 8;
    }
    rounded
}

/// timm's `_scale_stage_depth` with ceil truncation.
pub(crate) fn scale_depth(repeats: usize, multiplier: f64) -> usize {
    (repeats as f64 * multiplier).ceil() as usize
}

struct Block {
    /// Inverted residual only: 1×1 expansion.
    expand: Option<(Conv2d, BatchNorm2d)>,
    conv_dw: Conv2d,
    bn_dw: BatchNorm2d,
    se: SqueezeExcite,
    project: Conv2d,
    bn_project: BatchNorm2d,
    skip: bool,
    drop_path: DropPath,
}

impl Block {
    fn new(vb: VarBuilder, def: &StageDef, c_in: usize, c_out: usize, stride: usize, drop: f64) -> Result<Block> {
        let act = Activation::Silu;
        let k = def.kernel;
        let dw_cfg = |ch: usize| ConvCfg::same(k).stride(stride).groups(ch);
        let block = if def.inverted {
            let mid = c_in * def.expand;
            let reduced = (mid as f64 * 0.25 / def.expand as f64).round() as usize;
            Block {
                expand: Some((
                    Conv2d::new(vb.pp("conv_pw"), c_in, mid, 1, ConvCfg::same(1))?,
                    BatchNorm2d::new(vb.pp("bn1"), mid)?,
                )),
                conv_dw: Conv2d::new(vb.pp("conv_dw"), mid, mid, k, dw_cfg(mid))?,
                bn_dw: BatchNorm2d::new(vb.pp("bn2"), mid)?,
                se: SqueezeExcite::new(vb.pp("se"), mid, reduced, act)?,
                project: Conv2d::new(vb.pp("conv_pwl"), mid, c_out, 1, ConvCfg::same(1))?,
                bn_project: BatchNorm2d::new(vb.pp("bn3"), c_out)?,
                skip: false,
                drop_path: DropPath { p: drop },
            }
        } else {
            let reduced = (c_in as f64 * 0.25).round() as usize;
            Block {
                expand: None,
                conv_dw: Conv2d::new(vb.pp("conv_dw"), c_in, c_in, k, dw_cfg(c_in))?,
                bn_dw: BatchNorm2d::new(vb.pp("bn1"), c_in)?,
                se: SqueezeExcite::new(vb.pp("se"), c_in, reduced, act)?,
                project: Conv2d::new(vb.pp("conv_pw"), c_in, c_out, 1, ConvCfg::same(1))?,
                bn_project: BatchNorm2d::new(vb.pp("bn2"), c_out)?,
                skip: false,
                drop_path: DropPath { p: drop },
            }
        };
        Ok(Block {
            skip: stride == 1 && c_in == c_out,
            ..block
        })
    }

    fn layers(&self) -> Vec<&dyn Layer> {
        let act = &Activation::Silu;
        let mut layers: Vec<&dyn Layer> = Vec::new();
        if let Some((conv, bn)) = &self.expand {
            layers.extend([conv as &dyn Layer, bn, act]);
        }
        layers.extend([
            &self.conv_dw as &dyn Layer,
            &self.bn_dw,
            act,
            &self.se,
            &self.project,
            &self.bn_project,
        ]);
        if self.skip {
            layers.push(&self.drop_path);
        }
        layers
    }

    /// As `layers()` in order, with each BatchNorm taking its SiLU, and the last one the skip,
    /// in one op (drop-path scales the branch before the add, so with it the add stays apart).
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let silu = Activation::Silu;
        let mut h = x.clone();
        if let Some((conv, bn)) = &self.expand {
            h = bn.forward_act(&conv.forward(&h, ctx)?, ctx, None, silu)?;
        }
        h = self
            .bn_dw
            .forward_act(&self.conv_dw.forward(&h, ctx)?, ctx, None, silu)?;
        h = self.project.forward(&self.se.forward(&h, ctx)?, ctx)?;
        if !self.skip {
            return self.bn_project.forward(&h, ctx);
        }
        if self.drop_path.is_active(ctx) {
            let branch = self.drop_path.forward(&self.bn_project.forward(&h, ctx)?, ctx)?;
            return Ok((branch + x)?);
        }
        self.bn_project.forward_act(&h, ctx, Some(x), Activation::Identity)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let y = crate::layers::export_all(&self.layers(), e, x)?;
        Ok(if self.skip { e.add(&y, x) } else { y })
    }
}

pub struct EfficientNet {
    conv_stem: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    stage_channels: Vec<usize>,
}

impl EfficientNet {
    pub fn new(vb: VarBuilder, variant: usize, drop_path: f64) -> Result<EfficientNet> {
        let &(width, depth) = SCALING
            .get(variant)
            .ok_or_else(|| ModelError::Config(format!("efficientnet_b{variant}: variant must be 0 to 7")))?;
        let stem = round_channels(32, width);
        let conv_stem = Conv2d::new(vb.pp("conv_stem"), 3, stem, 3, ConvCfg::same(3).stride(2))?;
        let bn1 = BatchNorm2d::new(vb.pp("bn1"), stem)?;
        let repeats: Vec<usize> = B0.iter().map(|d| scale_depth(d.repeats, depth)).collect();
        let total: usize = repeats.iter().sum();
        let mut index = 0;
        let mut c_in = stem;
        let mut stages = Vec::new();
        let mut stage_channels = Vec::new();
        for (s, def) in B0.iter().enumerate() {
            let c_out = round_channels(def.channels, width);
            let mut blocks = Vec::new();
            for i in 0..repeats[s] {
                let stride = if i == 0 { def.stride } else { 1 };
                let vb_block = vb.pp("blocks").pp(s).pp(i);
                let rate = drop_path_rate(drop_path, index, total);
                blocks.push(Block::new(vb_block, def, c_in, c_out, stride, rate)?);
                c_in = c_out;
                index += 1;
            }
            stages.push(blocks);
            stage_channels.push(c_out);
        }
        Ok(EfficientNet {
            conv_stem,
            bn1,
            stages,
            stage_channels,
        })
    }
}

impl Encoder for EfficientNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        let x = self
            .bn1
            .forward_act(&self.conv_stem.forward(x, ctx)?, ctx, None, Activation::Silu)?;
        super::run_stages(&self.stages, &LEVEL_STAGES, x, |block, x| block.forward(x, ctx))
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<Vec<String>> {
        let x = crate::layers::export_all(&[&self.conv_stem, &self.bn1, &Activation::Silu], e, x)?;
        super::run_stages(&self.stages, &LEVEL_STAGES, x, |block, x| block.export(e, x))
    }

    fn channels(&self) -> Vec<usize> {
        LEVEL_STAGES.iter().map(|&s| self.stage_channels[s]).collect()
    }

    fn strides(&self) -> Vec<usize> {
        vec![2, 4, 8, 16, 32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_matches_timm() {
        // efficientnet_b3: stem 40, stage channels 24 32 48 96 136 232 384, depths 2 3 3 5 5 6 2.
        assert_eq!(round_channels(32, 1.2), 40);
        let b3: Vec<usize> = B0.iter().map(|d| round_channels(d.channels, 1.2)).collect();
        assert_eq!(b3, vec![24, 32, 48, 96, 136, 232, 384]);
        let depths: Vec<usize> = B0.iter().map(|d| scale_depth(d.repeats, 1.4)).collect();
        assert_eq!(depths, vec![2, 3, 3, 5, 5, 6, 2]);
        // efficientnet_b7: stem 64, last stage 640.
        assert_eq!(round_channels(32, 2.0), 64);
        assert_eq!(round_channels(320, 2.0), 640);
    }
}
