//! U-Net++ decoder as segmentation_models_pytorch builds it (`UnetPlusPlusDecoder`): nested,
//! densely joined skip paths between the encoder levels, then the U-Net's top row up to the input
//! resolution and a 3×3 head.
//!
//! Let F₀ be the deepest level (stride s), F₁ the level at s/2, and so on while the encoder has
//! that stride. Node `x_d_l` (d ≤ l) sits at Fₗ₊₁'s resolution. It upsamples ×2 (nearest) its
//! input — Fₗ when d = l, else `x_d_(l-1)` — appends `x_(d+1)_l … x_l_l` and Fₗ₊₁ along the
//! channels, and applies two conv-BN-ReLU. Nodes with d = 0 are the top row and have the decoder
//! widths; the others have their level's width. After the dense layers the top row goes on without
//! skips until the input resolution: one block for encoders with a stride-2 level (ResNet,
//! EfficientNet: exactly smp's layout, `decoder.blocks.x_0_4` last), two for those whose first
//! level is at stride 4 (MiT, ConvNeXt), which smp does not build.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Decoder, DecoderOut, NEAREST_X2 as UP};
use crate::layers::{Activation, Conv2d, ConvBnAct, ConvCfg, Interpolation, Layer, Upsample};
use crate::{ArchConfig, Ctx, Exporter, Result};

struct Node {
    conv1: ConvBnAct,
    conv2: ConvBnAct,
}

impl Node {
    fn new(vb: VarBuilder, c_in: usize, c_skip: usize, c_out: usize) -> Result<Node> {
        let cfg = ConvCfg::same(3);
        Ok(Node {
            conv1: ConvBnAct::new(vb.pp("conv1"), c_in + c_skip, c_out, 3, cfg, Activation::Relu)?,
            conv2: ConvBnAct::new(vb.pp("conv2"), c_out, c_out, 3, cfg, Activation::Relu)?,
        })
    }

    fn forward(&self, x: &Tensor, skips: &[&Tensor], ctx: &Ctx) -> Result<Tensor> {
        let skip = match skips {
            [] => None,
            [one] => Some((*one).clone()),
            many => Some(Tensor::cat(many, 1)?),
        };
        let x = UP.forward_cat(x, skip.as_ref(), ctx)?;
        self.conv2.forward(&self.conv1.forward(&x, ctx)?, ctx)
    }

    fn export(&self, e: &mut Exporter, x: &str, skips: &[&str]) -> Result<String> {
        let mut x = UP.export(e, x)?;
        if !skips.is_empty() {
            let parts: Vec<&str> = std::iter::once(x.as_str()).chain(skips.iter().copied()).collect();
            x = e.concat(&parts, 1);
        }
        let x = self.conv1.export(e, &x)?;
        self.conv2.export(e, &x)
    }
}

pub struct UnetPlusPlus {
    /// The encoder level of F₀, F₁, …: deepest first, one per stride s, s/2, … the encoder has.
    features: Vec<usize>,
    /// `dense[l][d]` is node `x_d_l`, for the layers l whose output has an encoder level.
    dense: Vec<Vec<Node>>,
    /// The top row's nodes `x_0_l` after the dense layers, without skips.
    tail: Vec<Node>,
    head: Conv2d,
    /// Deep-supervision heads on the top row's nodes but the last, in order.
    aux: Vec<(Conv2d, Upsample)>,
}

impl UnetPlusPlus {
    pub fn new(
        vb: VarBuilder,
        channels: &[usize],
        strides: &[usize],
        widths: &[usize],
        config: &ArchConfig,
    ) -> Result<UnetPlusPlus> {
        let deepest = super::blocks_undo_stride("unetpp", strides, widths)?;
        let mut features = vec![strides.len() - 1];
        let mut stride = deepest;
        while let Some(k) = strides.iter().position(|&s| 2 * s == stride) {
            features.push(k);
            stride /= 2;
        }
        let ch = |i: usize| channels[features[i]];
        let d = vb.pp("decoder").pp("blocks");
        let node = |depth: usize, layer: usize| d.pp(format!("x_{depth}_{layer}"));
        let layers = features.len() - 1;
        let mut dense = Vec::new();
        for l in 0..layers {
            let mut row = Vec::new();
            for depth in 0..=l {
                let c_in = match (depth, l) {
                    (0, 0) => ch(0),
                    (0, _) => widths[l - 1],
                    _ => ch(l),
                };
                let c_out = if depth == 0 { widths[l] } else { ch(l + 1) };
                row.push(Node::new(node(depth, l), c_in, ch(l + 1) * (l + 1 - depth), c_out)?);
            }
            dense.push(row);
        }
        let mut tail = Vec::new();
        for l in layers..widths.len() {
            let c_in = if l == 0 { ch(0) } else { widths[l - 1] };
            tail.push(Node::new(node(0, l), c_in, 0, widths[l])?);
        }
        let mut aux = Vec::new();
        if config.deep_supervision {
            let a = vb.pp("decoder").pp("aux");
            for (l, &width) in widths[..widths.len() - 1].iter().enumerate() {
                let head = Conv2d::head(a.pp(l), width, 1, 1, ConvCfg::same(1).bias(true))?;
                let up = Upsample {
                    scale: deepest >> (l + 1),
                    mode: Interpolation::Bilinear,
                };
                aux.push((head, up));
            }
        }
        let head = Conv2d::head(
            vb.pp("segmentation_head").pp("0"),
            *widths.last().expect("widths checked above"),
            1,
            3,
            ConvCfg::same(3).bias(true),
        )?;
        Ok(UnetPlusPlus {
            features,
            dense,
            tail,
            head,
            aux,
        })
    }

    /// Walks the nodes in an order that has every input ready: layer by layer, and within a
    /// layer from the deepest node `x_l_l` to the top row's `x_0_l`. `node(n, input, skips)` runs
    /// node `n` on its input and skips (encoder levels or earlier nodes' outputs) and returns its
    /// output; `top(l, x)` sees the top row's output `x` of layer `l`, tail blocks included.
    fn walk<T: Clone>(
        &self,
        levels: &[T],
        mut node: impl FnMut(&Node, &T, &[&T]) -> Result<T>,
        mut top: impl FnMut(usize, &T) -> Result<()>,
    ) -> Result<T> {
        let f = |i: usize| &levels[self.features[i]];
        let mut out: HashMap<(usize, usize), T> = HashMap::new();
        for (l, row) in self.dense.iter().enumerate() {
            for depth in (0..=l).rev() {
                let input = if depth == l { f(l) } else { &out[&(depth, l - 1)] };
                let mut skips: Vec<&T> = (depth + 1..=l).map(|i| &out[&(i, l)]).collect();
                skips.push(f(l + 1));
                let y = node(&row[depth], input, &skips)?;
                out.insert((depth, l), y);
            }
            top(l, &out[&(0, l)])?;
        }
        let layers = self.dense.len();
        let mut x = match layers {
            0 => f(0).clone(),
            _ => out[&(0, layers - 1)].clone(),
        };
        for (i, n) in self.tail.iter().enumerate() {
            x = node(n, &x, &[])?;
            top(layers + i, &x)?;
        }
        Ok(x)
    }
}

impl Decoder for UnetPlusPlus {
    fn forward(&self, levels: &[Tensor], ctx: &Ctx) -> Result<DecoderOut> {
        let mut aux = Vec::new();
        let x = self.walk(
            levels,
            |n, x, skips| n.forward(x, skips, ctx),
            |l, x| {
                if let Some((head, up)) = self.aux.get(l) {
                    aux.push(up.forward(&head.forward(x, ctx)?, ctx)?);
                }
                Ok(())
            },
        )?;
        Ok(DecoderOut {
            logits: self.head.forward(&x, ctx)?,
            aux,
        })
    }

    fn export(&self, e: &mut Exporter, levels: &[String]) -> Result<String> {
        let x = self.walk(
            levels,
            |n, x: &String, skips| {
                let skips: Vec<&str> = skips.iter().map(|s| s.as_str()).collect();
                n.export(e, x, &skips)
            },
            |_, _| Ok(()),
        )?;
        self.head.export(e, &x)
    }
}
