//! U-Net decoder as segmentation_models_pytorch builds it: from the deepest level, upsample ×2
//! (nearest), concatenate the encoder level of that stride if there is one, two conv-BN-ReLU; five
//! blocks from stride 32 to 1, then a 3×3 head. Optional deep-supervision heads on each block.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Decoder, DecoderOut, NEAREST_X2 as UP};
use crate::layers::{Activation, Conv2d, ConvBnAct, ConvCfg, Interpolation, Layer, Upsample};
use crate::{ArchConfig, Ctx, Exporter, Result};

struct Block {
    conv1: ConvBnAct,
    conv2: ConvBnAct,
    /// The encoder level concatenated after upsampling.
    skip: Option<usize>,
}

pub struct Unet {
    blocks: Vec<Block>,
    head: Conv2d,
    aux: Vec<(Conv2d, Upsample)>,
}

impl Unet {
    pub fn new(
        vb: VarBuilder,
        channels: &[usize],
        strides: &[usize],
        widths: &[usize],
        config: &ArchConfig,
    ) -> Result<Unet> {
        let deepest = super::blocks_undo_stride("unet", strides, widths)?;
        let d = vb.pp("decoder");
        let mut blocks = Vec::new();
        let mut aux = Vec::new();
        let mut c_in = *channels.last().expect("levels checked above");
        for (i, &width) in widths.iter().enumerate() {
            let stride = deepest >> (i + 1);
            let skip = strides[..strides.len() - 1].iter().position(|&s| s == stride);
            let skip_channels = skip.map_or(0, |k| channels[k]);
            let b = d.pp("blocks").pp(i);
            let cfg = ConvCfg::same(3);
            blocks.push(Block {
                conv1: ConvBnAct::new(b.pp("conv1"), c_in + skip_channels, width, 3, cfg, Activation::Relu)?,
                conv2: ConvBnAct::new(b.pp("conv2"), width, width, 3, cfg, Activation::Relu)?,
                skip,
            });
            if config.deep_supervision && i + 1 < widths.len() {
                let head = Conv2d::head(d.pp("aux").pp(i), width, 1, 1, ConvCfg::same(1).bias(true))?;
                let up = Upsample {
                    scale: stride,
                    mode: Interpolation::Bilinear,
                };
                aux.push((head, up));
            }
            c_in = width;
        }
        let head = Conv2d::head(
            vb.pp("segmentation_head").pp("0"),
            c_in,
            1,
            3,
            ConvCfg::same(3).bias(true),
        )?;
        Ok(Unet { blocks, head, aux })
    }
}

impl Decoder for Unet {
    fn forward(&self, levels: &[Tensor], ctx: &Ctx) -> Result<DecoderOut> {
        let mut x = levels.last().expect("encoder levels").clone();
        let mut aux = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = UP.forward_cat(&x, block.skip.map(|k| &levels[k]), ctx)?;
            x = block.conv2.forward(&block.conv1.forward(&x, ctx)?, ctx)?;
            if let Some((head, up)) = self.aux.get(i) {
                aux.push(up.forward(&head.forward(&x, ctx)?, ctx)?);
            }
        }
        Ok(DecoderOut {
            logits: self.head.forward(&x, ctx)?,
            aux,
        })
    }

    fn export(&self, e: &mut Exporter, levels: &[String]) -> Result<String> {
        let mut x = levels.last().expect("encoder levels").clone();
        for block in &self.blocks {
            x = UP.export(e, &x)?;
            if let Some(k) = block.skip {
                x = e.concat(&[&x, &levels[k]], 1);
            }
            x = block.conv1.export(e, &x)?;
            x = block.conv2.export(e, &x)?;
        }
        self.head.export(e, &x)
    }
}
