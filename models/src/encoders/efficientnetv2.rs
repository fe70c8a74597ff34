//! EfficientNetV2-S, -M and -L as timm's `tf_efficientnetv2_{s,m,l}` build them (the layout of
//! Google's weights: TensorFlow "SAME" padding on the stride-2 convolutions, BatchNorm epsilon
//! 1e-3, SiLU), with timm's parameter names: conv-BN-act blocks (`blocks.0.0.conv`), fused
//! MBConv (`blocks.1.0.conv_exp`, `conv_pwl`), then MBConv with squeeze-excitation
//! (`blocks.3.0.conv_pw`, `conv_dw`, `se.conv_reduce`, `conv_pwl`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{drop_path_rate, Encoder};
use crate::layers::{Activation, BatchNorm2d, Conv2d, ConvCfg, DropPath, Layer, SqueezeExcite};
use crate::{Ctx, Exporter, ModelError, Result};

/// timm's BatchNorm epsilon for the `tf_` models.
const TF_EPS: f64 = 1e-3;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    /// Conv 3×3 → BN → SiLU (`cn`).
    ConvBnAct,
    /// Fused MBConv (`er`): conv 3×3 expanding → BN → SiLU → conv 1×1 → BN.
    Fused,
    /// MBConv (`ir`): conv 1×1 expanding, depthwise 3×3, squeeze-excitation, conv 1×1.
    Inverted,
}

/// One stage: kind, repeats, stride, expansion, output channels (every kernel is 3×3).
pub(super) type StageDef = (Kind, usize, usize, usize, usize);

/// timm's `_gen_efficientnetv2_{s,m,l}`: size, stem width and stages, in `EncoderKind` order.
pub(super) const VARIANTS: [(&str, usize, &[StageDef]); 3] = [
    (
        "s",
        24,
        &[
            (Kind::ConvBnAct, 2, 1, 1, 24),
            (Kind::Fused, 4, 2, 4, 48),
            (Kind::Fused, 4, 2, 4, 64),
            (Kind::Inverted, 6, 2, 4, 128),
            (Kind::Inverted, 9, 1, 6, 160),
            (Kind::Inverted, 15, 2, 6, 256),
        ],
    ),
    (
        "m",
        24,
        &[
            (Kind::ConvBnAct, 3, 1, 1, 24),
            (Kind::Fused, 5, 2, 4, 48),
            (Kind::Fused, 5, 2, 4, 80),
            (Kind::Inverted, 7, 2, 4, 160),
            (Kind::Inverted, 14, 1, 6, 176),
            (Kind::Inverted, 18, 2, 6, 304),
            (Kind::Inverted, 5, 1, 6, 512),
        ],
    ),
    (
        "l",
        32,
        &[
            (Kind::ConvBnAct, 4, 1, 1, 32),
            (Kind::Fused, 7, 2, 4, 64),
            (Kind::Fused, 7, 2, 4, 96),
            (Kind::Inverted, 10, 2, 4, 192),
            (Kind::Inverted, 19, 1, 6, 224),
            (Kind::Inverted, 25, 2, 6, 384),
            (Kind::Inverted, 7, 1, 6, 640),
        ],
    ),
];

/// A 3×3 convolution: TensorFlow "SAME" padding where it strides (timm's `Conv2dSame`),
/// symmetric otherwise (the same numbers at stride 1).
fn conv3(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize, groups: usize) -> Result<Conv2d> {
    let cfg = ConvCfg::same(3).stride(stride).groups(groups);
    Conv2d::new(vb, c_in, c_out, 3, if stride > 1 { cfg.tf_same() } else { cfg })
}

fn bn(vb: VarBuilder, channels: usize) -> Result<BatchNorm2d> {
    Ok(BatchNorm2d::new(vb, channels)?.with_eps(TF_EPS))
}

struct Block {
    /// `cn`: the block's only conv; `er`: `conv_exp`; `ir`: `conv_pw` (1×1).
    first: (Conv2d, BatchNorm2d),
    /// `ir` only: the depthwise conv and the squeeze-excitation.
    depthwise: Option<(Conv2d, BatchNorm2d, SqueezeExcite)>,
    /// `er` and `ir`: the 1×1 projection (no activation).
    project: Option<(Conv2d, BatchNorm2d)>,
    skip: bool,
    drop_path: DropPath,
}

impl Block {
    fn new(
        vb: VarBuilder,
        kind: Kind,
        c_in: usize,
        c_out: usize,
        stride: usize,
        expand: usize,
        drop: f64,
    ) -> Result<Block> {
        let mid = c_in * expand;
        let skip = stride == 1 && c_in == c_out;
        let drop_path = DropPath { p: drop };
        Ok(match kind {
            Kind::ConvBnAct => Block {
                first: (conv3(vb.pp("conv"), c_in, c_out, stride, 1)?, bn(vb.pp("bn1"), c_out)?),
                depthwise: None,
                project: None,
                skip,
                drop_path,
            },
            Kind::Fused => Block {
                first: (conv3(vb.pp("conv_exp"), c_in, mid, stride, 1)?, bn(vb.pp("bn1"), mid)?),
                depthwise: None,
                project: Some((
                    Conv2d::new(vb.pp("conv_pwl"), mid, c_out, 1, ConvCfg::same(1))?,
                    bn(vb.pp("bn2"), c_out)?,
                )),
                skip,
                drop_path,
            },
            Kind::Inverted => {
                // timm's squeeze-excitation width: a quarter of the block's input channels.
                let reduced = (c_in as f64 * 0.25).round() as usize;
                Block {
                    first: (
                        Conv2d::new(vb.pp("conv_pw"), c_in, mid, 1, ConvCfg::same(1))?,
                        bn(vb.pp("bn1"), mid)?,
                    ),
                    depthwise: Some((
                        conv3(vb.pp("conv_dw"), mid, mid, stride, mid)?,
                        bn(vb.pp("bn2"), mid)?,
                        SqueezeExcite::new(vb.pp("se"), mid, reduced, Activation::Silu)?,
                    )),
                    project: Some((
                        Conv2d::new(vb.pp("conv_pwl"), mid, c_out, 1, ConvCfg::same(1))?,
                        bn(vb.pp("bn3"), c_out)?,
                    )),
                    skip,
                    drop_path,
                }
            }
        })
    }

    /// The block's layers in order, the skip's add aside.
    fn layers(&self) -> Vec<&dyn Layer> {
        let act = &Activation::Silu;
        let mut layers: Vec<&dyn Layer> = vec![&self.first.0, &self.first.1, act];
        if let Some((conv, bn, se)) = &self.depthwise {
            layers.extend([conv as &dyn Layer, bn, act, se]);
        }
        if let Some((conv, bn)) = &self.project {
            layers.extend([conv as &dyn Layer, bn]);
        }
        if self.skip {
            layers.push(&self.drop_path);
        }
        layers
    }

    /// As `layers()`, each BatchNorm with its activation (and the last with the skip, when no
    /// drop-path scales the branch) in one op.
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let silu = Activation::Silu;
        let (conv, bn) = &self.first;
        let mut h = bn.forward_act(&conv.forward(x, ctx)?, ctx, None, silu)?;
        if let Some((conv, bn, se)) = &self.depthwise {
            h = se.forward(&bn.forward_act(&conv.forward(&h, ctx)?, ctx, None, silu)?, ctx)?;
        }
        let Some((conv, bn)) = &self.project else {
            // Conv-BN-act blocks add the skip after the activation.
            return match self.skip {
                true => Ok((self.drop_path.forward(&h, ctx)? + x)?),
                false => Ok(h),
            };
        };
        let h = conv.forward(&h, ctx)?;
        if !self.skip {
            return bn.forward(&h, ctx);
        }
        if !self.drop_path.is_active(ctx) {
            return bn.forward_act(&h, ctx, Some(x), Activation::Identity);
        }
        Ok((self.drop_path.forward(&bn.forward(&h, ctx)?, ctx)? + x)?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let y = crate::layers::export_all(&self.layers(), e, x)?;
        Ok(if self.skip { e.add(&y, x) } else { y })
    }
}

pub struct EfficientNetV2 {
    conv_stem: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    stage_channels: Vec<usize>,
    /// The stages whose outputs are the levels: the last stage of each stride (2 to 32).
    level_stages: Vec<usize>,
}

impl EfficientNetV2 {
    /// The size `"s"`, `"m"` or `"l"`.
    pub fn new(vb: VarBuilder, size: &str, drop_path: f64) -> Result<EfficientNetV2> {
        let &(_, stem, defs) = VARIANTS
            .iter()
            .find(|v| v.0 == size)
            .ok_or_else(|| ModelError::Config(format!("efficientnetv2_{size}: the sizes are s, m and l")))?;
        let conv_stem = conv3(vb.pp("conv_stem"), 3, stem, 2, 1)?;
        let bn1 = bn(vb.pp("bn1"), stem)?;
        let total: usize = defs.iter().map(|d| d.1).sum();
        let (mut index, mut c_in) = (0, stem);
        let (mut stages, mut stage_channels) = (Vec::new(), Vec::new());
        for (s, &(kind, repeats, stride, expand, c_out)) in defs.iter().enumerate() {
            let mut blocks = Vec::new();
            for i in 0..repeats {
                let stride = if i == 0 { stride } else { 1 };
                let rate = drop_path_rate(drop_path, index, total);
                let vb_block = vb.pp("blocks").pp(s).pp(i);
                blocks.push(Block::new(vb_block, kind, c_in, c_out, stride, expand, rate)?);
                c_in = c_out;
                index += 1;
            }
            stages.push(blocks);
            stage_channels.push(c_out);
        }
        // A stage is a level when the next one strides (or it is the last).
        let level_stages = (0..defs.len())
            .filter(|&s| s + 1 == defs.len() || defs[s + 1].2 > 1)
            .collect();
        Ok(EfficientNetV2 {
            conv_stem,
            bn1,
            stages,
            stage_channels,
            level_stages,
        })
    }
}

impl Encoder for EfficientNetV2 {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        let x = self
            .bn1
            .forward_act(&self.conv_stem.forward(x, ctx)?, ctx, None, Activation::Silu)?;
        super::run_stages(&self.stages, &self.level_stages, x, |block, x| block.forward(x, ctx))
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<Vec<String>> {
        let x = crate::layers::export_all(&[&self.conv_stem, &self.bn1, &Activation::Silu], e, x)?;
        super::run_stages(&self.stages, &self.level_stages, x, |block, x| block.export(e, x))
    }

    fn channels(&self) -> Vec<usize> {
        self.level_stages.iter().map(|&s| self.stage_channels[s]).collect()
    }

    fn strides(&self) -> Vec<usize> {
        vec![2, 4, 8, 16, 32]
    }
}
