//! FPN decoder (smp's layout: `decoder.p5`, `decoder.p4.skip_conv`, `decoder.seg_blocks`) with an
//! optional ASPP on the deepest level. Top-down pyramid at strides 32…4, each level brought to
//! stride 4 by conv-BN-ReLU + bilinear ×2 steps, summed, a 1×1 head, then ×4 to the input.
//! smp uses GroupNorm in the segmentation blocks; ftu uses BatchNorm, which it already exports.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Decoder, DecoderOut};
use crate::layers::{Activation, Conv2d, ConvBnAct, ConvCfg, Dropout, GlobalAvgPool, Interpolation, Layer, Upsample};
use crate::{ArchConfig, Ctx, Exporter, ModelError, Result};

const RATES: [usize; 3] = [6, 12, 18];

/// Atrous spatial pyramid pooling: 1×1, three dilated 3×3 and an image-pooling branch.
struct Aspp {
    branches: Vec<ConvBnAct>,
    pooled: ConvBnAct,
    project: ConvBnAct,
}

impl Aspp {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Aspp> {
        let a = vb.pp("aspp");
        let relu = Activation::Relu;
        let mut branches = vec![ConvBnAct::new(a.pp(0), c_in, c_out, 1, ConvCfg::same(1), relu)?];
        for (i, rate) in RATES.into_iter().enumerate() {
            let cfg = ConvCfg::same(3).dilation(rate).padding(rate);
            branches.push(ConvBnAct::new(a.pp(i + 1), c_in, c_out, 3, cfg, relu)?);
        }
        Ok(Aspp {
            branches,
            pooled: ConvBnAct::new(a.pp(4), c_in, c_out, 1, ConvCfg::same(1), relu)?,
            project: ConvBnAct::new(vb.pp("aspp_project"), c_out * 5, c_out, 1, ConvCfg::same(1), relu)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut outs = Vec::new();
        for branch in &self.branches {
            outs.push(branch.forward(x, ctx)?);
        }
        let pooled = self.pooled.forward(&GlobalAvgPool.forward(x, ctx)?, ctx)?;
        let (n, c, h, w) = (pooled.dims()[0], pooled.dims()[1], x.dims()[2], x.dims()[3]);
        outs.push(pooled.broadcast_as((n, c, h, w))?.contiguous()?);
        self.project.forward(&Tensor::cat(&outs, 1)?, ctx)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let mut outs = Vec::new();
        for branch in &self.branches {
            outs.push(branch.export(e, x)?);
        }
        let pooled = GlobalAvgPool.export(e, x)?;
        let pooled = self.pooled.export(e, &pooled)?;
        let target = e.shape_with_spatial_of(&pooled, x)?;
        outs.push(e.op("Expand", &[&pooled, &target], &[]));
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let cat = e.concat(&refs, 1);
        self.project.export(e, &cat)
    }
}

pub struct Fpn {
    aspp: Option<Aspp>,
    /// 1×1 lateral convs, deepest first (`p5`, `p4.skip_conv`, …).
    laterals: Vec<Conv2d>,
    /// Per pyramid level, deepest first: conv-BN-ReLU steps, each followed by ×2 when upsampling.
    seg_blocks: Vec<Vec<(ConvBnAct, Upsample)>>,
    dropout: Dropout,
    head: Conv2d,
    head_up: Upsample,
}

const UP2: Upsample = Upsample {
    scale: 2,
    mode: Interpolation::Nearest,
};

impl Fpn {
    pub fn new(
        vb: VarBuilder,
        channels: &[usize],
        strides: &[usize],
        widths: &[usize],
        config: &ArchConfig,
    ) -> Result<Fpn> {
        if strides != [4, 8, 16, 32] {
            return Err(ModelError::Config(format!(
                "fpn needs levels at strides 4-32, got {strides:?}"
            )));
        }
        let (pyramid, segmentation) = (widths[0], widths[1]);
        let d = vb.pp("decoder");
        let deep = channels[3];
        let aspp = if config.aspp {
            Some(Aspp::new(d.clone(), deep, pyramid)?)
        } else {
            None
        };
        let bias = ConvCfg::same(1).bias(true);
        let mut laterals = vec![Conv2d::head(
            d.pp("p5"),
            if config.aspp { pyramid } else { deep },
            pyramid,
            1,
            bias,
        )?];
        for (name, level) in [("p4", 2), ("p3", 1), ("p2", 0)] {
            laterals.push(Conv2d::head(
                d.pp(name).pp("skip_conv"),
                channels[level],
                pyramid,
                1,
                bias,
            )?);
        }
        let mut seg_blocks = Vec::new();
        for (i, upsamples) in [3usize, 2, 1, 0].into_iter().enumerate() {
            let steps = upsamples.max(1);
            let mut block = Vec::new();
            for j in 0..steps {
                let c_in = if j == 0 { pyramid } else { segmentation };
                let conv = ConvBnAct::new(
                    d.pp("seg_blocks").pp(i).pp(j),
                    c_in,
                    segmentation,
                    3,
                    ConvCfg::same(3),
                    Activation::Relu,
                )?;
                let up = Upsample {
                    scale: if upsamples > 0 { 2 } else { 1 },
                    mode: Interpolation::Bilinear,
                };
                block.push((conv, up));
            }
            seg_blocks.push(block);
        }
        Ok(Fpn {
            aspp,
            laterals,
            seg_blocks,
            dropout: Dropout { p: config.dropout },
            head: Conv2d::head(vb.pp("segmentation_head").pp("0"), segmentation, 1, 1, bias)?,
            head_up: Upsample {
                scale: 4,
                mode: Interpolation::Bilinear,
            },
        })
    }
}

impl Decoder for Fpn {
    fn forward(&self, levels: &[Tensor], ctx: &Ctx) -> Result<DecoderOut> {
        let levels = super::last(levels, 4);
        let mut deep = levels[3].clone();
        if let Some(aspp) = &self.aspp {
            deep = aspp.forward(&deep, ctx)?;
        }
        let mut p = self.laterals[0].forward(&deep, ctx)?;
        let mut pyramid = vec![p.clone()];
        for (lateral, level) in self.laterals[1..].iter().zip([2, 1, 0]) {
            p = (UP2.forward(&p, ctx)? + lateral.forward(&levels[level], ctx)?)?;
            pyramid.push(p.clone());
        }
        let mut sum: Option<Tensor> = None;
        for (p, block) in pyramid.iter().zip(&self.seg_blocks) {
            let mut x = p.clone();
            for (conv, up) in block {
                x = up.forward(&conv.forward(&x, ctx)?, ctx)?;
            }
            sum = Some(match sum {
                Some(s) => (s + x)?,
                None => x,
            });
        }
        let x = self.dropout.forward(&sum.expect("four pyramid levels"), ctx)?;
        let logits = self.head_up.forward(&self.head.forward(&x, ctx)?, ctx)?;
        Ok(DecoderOut {
            logits,
            aux: Vec::new(),
        })
    }

    fn export(&self, e: &mut Exporter, levels: &[String]) -> Result<String> {
        let levels = super::last(levels, 4);
        let mut deep = levels[3].clone();
        if let Some(aspp) = &self.aspp {
            deep = aspp.export(e, &deep)?;
        }
        let mut p = self.laterals[0].export(e, &deep)?;
        let mut pyramid = vec![p.clone()];
        for (lateral, level) in self.laterals[1..].iter().zip([2, 1, 0]) {
            let up = UP2.export(e, &p)?;
            let side = lateral.export(e, &levels[level])?;
            p = e.add(&up, &side);
            pyramid.push(p.clone());
        }
        let mut sum: Option<String> = None;
        for (p, block) in pyramid.iter().zip(&self.seg_blocks) {
            let mut x = p.clone();
            for (conv, up) in block {
                let c = conv.export(e, &x)?;
                x = up.export(e, &c)?;
            }
            sum = Some(match sum {
                Some(s) => e.add(&s, &x),
                None => x,
            });
        }
        let x = self.dropout.export(e, &sum.expect("four pyramid levels"))?;
        let logits = self.head.export(e, &x)?;
        self.head_up.export(e, &logits)
    }
}
