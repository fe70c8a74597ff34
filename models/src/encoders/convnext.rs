//! ConvNeXt (tiny, small, base, large) with timm's parameter names (`stem.0`, `stem.1`,
//! `stages.1.downsample.{0,1}`, `stages.0.blocks.0.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}`), so a
//! timm `convnext_*` file loads as it is. Its levels are the four stages' outputs at strides 4 to
//! 32, as timm's `features_only` returns them.
//!
//! A block is a 7×7 depthwise convolution, a LayerNorm over channels, an MLP (4× wide, exact
//! GELU) and a per-channel layer scale on the residual branch. The channel LayerNorms (of the
//! blocks, the stem and the downsampling steps) run on the N×(H·W)×C token view, as MiT's do,
//! so they are the same LayerNormalization node in ONNX.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::{drop_path_rate, Encoder};
use crate::layers::{Activation, ChannelNorm, Conv2d, ConvCfg, DropPath, Layer, LayerNorm, Linear};
use crate::{Ctx, Exporter, ModelError, Result};

const EPS: f64 = 1e-6;
/// timm's layer-scale start: the residual branches begin almost closed.
const LAYER_SCALE_INIT: f64 = 1e-6;

/// The sizes on offer, by timm's name, with (stage widths, stage depths).
pub const SIZES: [(&str, [usize; 4], [usize; 4]); 4] = [
    ("tiny", [96, 192, 384, 768], [3, 3, 9, 3]),
    ("small", [96, 192, 384, 768], [3, 3, 27, 3]),
    ("base", [128, 256, 512, 1024], [3, 3, 27, 3]),
    ("large", [192, 384, 768, 1536], [3, 3, 27, 3]),
];

struct Block {
    name: String,
    conv_dw: Conv2d,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    gamma: Tensor,
    drop_path: DropPath,
    channels: usize,
}

impl Block {
    fn new(vb: VarBuilder, channels: usize, drop_path: f64) -> Result<Block> {
        Ok(Block {
            name: vb.prefix(),
            conv_dw: Conv2d::new(
                vb.pp("conv_dw"),
                channels,
                channels,
                7,
                ConvCfg::same(7).groups(channels).bias(true),
            )?,
            norm: LayerNorm::new(vb.pp("norm"), channels, EPS)?,
            fc1: Linear::new(vb.pp("mlp").pp("fc1"), channels, 4 * channels, true)?,
            fc2: Linear::new(vb.pp("mlp").pp("fc2"), 4 * channels, channels, true)?,
            gamma: vb.get_with_hints(channels, "gamma", Init::Const(LAYER_SCALE_INIT))?,
            drop_path: DropPath { p: drop_path },
            channels,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = self.conv_dw.forward(x, ctx)?;
        let (n, c, h, w) = y.dims4()?;
        let tokens = y.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let tokens = self.norm.forward(&tokens, ctx)?;
        let tokens = self.fc1.forward(&tokens, ctx)?;
        let tokens = Activation::Gelu.forward(&tokens, ctx)?;
        let tokens = self.fc2.forward(&tokens, ctx)?.broadcast_mul(&self.gamma)?;
        let branch = tokens.transpose(1, 2)?.reshape((n, c, h, w))?;
        Ok((x + self.drop_path.forward(&branch, ctx)?)?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let y = self.conv_dw.export(e, x)?;
        let tokens = e.to_tokens(&y)?;
        let tokens = self.norm.export(e, &tokens)?;
        let tokens = self.fc1.export(e, &tokens)?;
        let tokens = Activation::Gelu.export(e, &tokens)?;
        let tokens = self.fc2.export(e, &tokens)?;
        let gamma = e.param(&format!("{}.gamma", self.name), &self.gamma)?;
        let tokens = e.mul(&tokens, &gamma);
        let branch = e.to_spatial(&tokens, self.channels, &y)?;
        let branch = self.drop_path.export(e, &branch)?;
        Ok(e.add(x, &branch))
    }
}

struct Stage {
    /// LayerNorm2d then a 2×2 stride-2 convolution; the first stage has none (the stem is its).
    downsample: Option<(ChannelNorm, Conv2d)>,
    blocks: Vec<Block>,
    channels: usize,
}

pub struct ConvNext {
    stem: Conv2d,
    stem_norm: ChannelNorm,
    stages: Vec<Stage>,
}

impl ConvNext {
    /// `size` is one of `SIZES`' names.
    pub fn new(vb: VarBuilder, size: &str, drop_path: f64) -> Result<ConvNext> {
        let &(_, widths, depths) = SIZES.iter().find(|s| s.0 == size).ok_or_else(|| {
            ModelError::Config(format!(
                "convnext_{size}: the size must be one of {}",
                SIZES.map(|s| s.0).join(", ")
            ))
        })?;
        let total: usize = depths.iter().sum();
        let stem = Conv2d::new(
            vb.pp("stem").pp(0),
            3,
            widths[0],
            4,
            ConvCfg::same(4).padding(0).stride(4).bias(true),
        )?;
        let stem_norm = ChannelNorm::new(vb.pp("stem").pp(1), widths[0], EPS)?;
        let mut index = 0;
        let mut stages = Vec::new();
        for i in 0..4 {
            let vb_stage = vb.pp("stages").pp(i);
            let downsample = if i == 0 {
                None
            } else {
                let down = vb_stage.pp("downsample");
                Some((
                    ChannelNorm::new(down.pp(0), widths[i - 1], EPS)?,
                    Conv2d::new(
                        down.pp(1),
                        widths[i - 1],
                        widths[i],
                        2,
                        ConvCfg::same(2).padding(0).stride(2).bias(true),
                    )?,
                ))
            };
            let mut blocks = Vec::new();
            for j in 0..depths[i] {
                let rate = drop_path_rate(drop_path, index, total);
                blocks.push(Block::new(vb_stage.pp("blocks").pp(j), widths[i], rate)?);
                index += 1;
            }
            stages.push(Stage {
                downsample,
                blocks,
                channels: widths[i],
            });
        }
        Ok(ConvNext {
            stem,
            stem_norm,
            stages,
        })
    }
}

impl Encoder for ConvNext {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        let mut x = self.stem_norm.forward(&self.stem.forward(x, ctx)?, ctx)?;
        let mut levels = Vec::new();
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward(&norm.forward(&x, ctx)?, ctx)?;
            }
            for block in &stage.blocks {
                x = block.forward(&x, ctx)?;
            }
            levels.push(x.clone());
        }
        Ok(levels)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<Vec<String>> {
        let stem = self.stem.export(e, x)?;
        let mut x = self.stem_norm.export(e, &stem)?;
        let mut levels = Vec::new();
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                let normed = norm.export(e, &x)?;
                x = conv.export(e, &normed)?;
            }
            for block in &stage.blocks {
                x = block.export(e, &x)?;
            }
            levels.push(x.clone());
        }
        Ok(levels)
    }

    fn channels(&self) -> Vec<usize> {
        self.stages.iter().map(|s| s.channels).collect()
    }

    fn strides(&self) -> Vec<usize> {
        vec![4, 8, 16, 32]
    }
}
