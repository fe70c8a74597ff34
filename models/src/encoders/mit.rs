//! Mix Transformer (MiT-B0…B5), SegFormer's encoder, with Hugging Face's parameter names
//! (`patch_embeddings.0.proj`, `block.0.0.attention.self.query`, `layer_norm.0`) under
//! `segformer.encoder`, as in `nvidia/mit-b2`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{drop_path_rate, Encoder};
use crate::layers::{Conv2d, ConvCfg, DropPath, EfficientSelfAttention, Layer, LayerNorm, MixFfn};
use crate::{Ctx, Exporter, ModelError, Result};

const HEADS: [usize; 4] = [1, 2, 5, 8];
const SR_RATIOS: [usize; 4] = [8, 4, 2, 1];
const MLP_RATIO: usize = 4;

/// (hidden sizes, depths) of mit_b0 … b5.
fn variant(b: usize) -> Option<([usize; 4], [usize; 4])> {
    let wide = [64, 128, 320, 512];
    Some(match b {
        0 => ([32, 64, 160, 256], [2, 2, 2, 2]),
        1 => (wide, [2, 2, 2, 2]),
        2 => (wide, [3, 4, 6, 3]),
        3 => (wide, [3, 4, 18, 3]),
        4 => (wide, [3, 8, 27, 3]),
        5 => (wide, [3, 6, 40, 3]),
        _ => return None,
    })
}

struct Block {
    norm1: LayerNorm,
    attention: EfficientSelfAttention,
    norm2: LayerNorm,
    mlp: MixFfn,
    drop_path: DropPath,
}

impl Block {
    fn forward(&self, x: &Tensor, h: usize, w: usize, ctx: &Ctx) -> Result<Tensor> {
        let attended = self.attention.forward(&self.norm1.forward(x, ctx)?, h, w, ctx)?;
        let x = (x + self.drop_path.forward(&attended, ctx)?)?;
        let mixed = self.mlp.forward(&self.norm2.forward(&x, ctx)?, h, w, ctx)?;
        Ok((&x + self.drop_path.forward(&mixed, ctx)?)?)
    }

    fn export(&self, e: &mut Exporter, x: &str, spatial: &str) -> Result<String> {
        let normed = self.norm1.export(e, x)?;
        let attended = self.attention.export(e, &normed, spatial)?;
        let attended = self.drop_path.export(e, &attended)?;
        let x = e.add(x, &attended);
        let normed = self.norm2.export(e, &x)?;
        let mixed = self.mlp.export(e, &normed, spatial)?;
        let mixed = self.drop_path.export(e, &mixed)?;
        Ok(e.add(&x, &mixed))
    }
}

struct Stage {
    proj: Conv2d,
    embed_norm: LayerNorm,
    blocks: Vec<Block>,
    norm: LayerNorm,
    channels: usize,
}

pub struct Mit {
    stages: Vec<Stage>,
}

impl Mit {
    pub fn new(vb: VarBuilder, b: usize, drop_path: f64) -> Result<Mit> {
        let (hidden, depths) =
            variant(b).ok_or_else(|| ModelError::Config(format!("mit_b{b}: variant must be 0 to 5")))?;
        let total: usize = depths.iter().sum();
        let mut index = 0;
        let mut c_in = 3;
        let mut stages = Vec::new();
        for i in 0..4 {
            let c = hidden[i];
            let cfg = if i == 0 {
                ConvCfg::same(7).stride(4).bias(true)
            } else {
                ConvCfg::same(3).stride(2).bias(true)
            };
            let kernel = if i == 0 { 7 } else { 3 };
            let embed = vb.pp("patch_embeddings").pp(i);
            let proj = Conv2d::new(embed.pp("proj"), c_in, c, kernel, cfg)?;
            let embed_norm = LayerNorm::new(embed.pp("layer_norm"), c, 1e-5)?;
            let mut blocks = Vec::new();
            for j in 0..depths[i] {
                let vb_block = vb.pp("block").pp(i).pp(j);
                blocks.push(Block {
                    norm1: LayerNorm::new(vb_block.pp("layer_norm_1"), c, 1e-5)?,
                    attention: EfficientSelfAttention::new(vb_block.pp("attention"), c, HEADS[i], SR_RATIOS[i])?,
                    norm2: LayerNorm::new(vb_block.pp("layer_norm_2"), c, 1e-5)?,
                    mlp: MixFfn::new(vb_block.pp("mlp"), c, c * MLP_RATIO)?,
                    drop_path: DropPath {
                        p: drop_path_rate(drop_path, index, total),
                    },
                });
                index += 1;
            }
            let norm = LayerNorm::new(vb.pp("layer_norm").pp(i), c, 1e-5)?;
            stages.push(Stage {
                proj,
                embed_norm,
                blocks,
                norm,
                channels: c,
            });
            c_in = c;
        }
        Ok(Mit { stages })
    }
}

impl Encoder for Mit {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        let mut x = x.clone();
        let mut levels = Vec::new();
        for stage in &self.stages {
            let spatial = stage.proj.forward(&x, ctx)?;
            let (n, c, h, w) = spatial.dims4()?;
            let tokens = spatial.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
            let mut tokens = stage.embed_norm.forward(&tokens, ctx)?;
            for block in &stage.blocks {
                tokens = block.forward(&tokens, h, w, ctx)?;
            }
            let tokens = stage.norm.forward(&tokens, ctx)?;
            x = tokens.transpose(1, 2)?.reshape((n, c, h, w))?;
            levels.push(x.clone());
        }
        Ok(levels)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<Vec<String>> {
        let mut x = x.to_string();
        let mut levels = Vec::new();
        for stage in &self.stages {
            let spatial = stage.proj.export(e, &x)?;
            let tokens = e.to_tokens(&spatial)?;
            let mut tokens = stage.embed_norm.export(e, &tokens)?;
            for block in &stage.blocks {
                tokens = block.export(e, &tokens, &spatial)?;
            }
            let tokens = stage.norm.export(e, &tokens)?;
            x = e.to_spatial(&tokens, stage.channels, &spatial)?;
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
