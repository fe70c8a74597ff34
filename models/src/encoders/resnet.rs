//! ResNet-18/34/50 with timm's parameter names (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer1.0.downsample.0`), so a timm `model.safetensors` loads as it is.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{drop_path_rate, Encoder};
use crate::layers::{Activation, BatchNorm2d, Conv2d, ConvCfg, DropPath, Layer, MaxPool2d};
use crate::{Ctx, Exporter, ModelError, Result};

enum Body {
    Basic {
        conv1: Conv2d,
        bn1: BatchNorm2d,
        conv2: Conv2d,
        bn2: BatchNorm2d,
    },
    Bottleneck {
        conv1: Conv2d,
        bn1: BatchNorm2d,
        conv2: Conv2d,
        bn2: BatchNorm2d,
        conv3: Conv2d,
        bn3: BatchNorm2d,
    },
}

struct Block {
    body: Body,
    downsample: Option<(Conv2d, BatchNorm2d)>,
    drop_path: DropPath,
}

impl Block {
    fn new(vb: VarBuilder, c_in: usize, width: usize, stride: usize, bottleneck: bool, drop: f64) -> Result<Block> {
        let relu_free = ConvCfg::same(3);
        let (body, c_out) = if bottleneck {
            let c_out = width * 4;
            let body = Body::Bottleneck {
                conv1: Conv2d::new(vb.pp("conv1"), c_in, width, 1, ConvCfg::same(1))?,
                bn1: BatchNorm2d::new(vb.pp("bn1"), width)?,
                conv2: Conv2d::new(vb.pp("conv2"), width, width, 3, relu_free.stride(stride))?,
                bn2: BatchNorm2d::new(vb.pp("bn2"), width)?,
                conv3: Conv2d::new(vb.pp("conv3"), width, c_out, 1, ConvCfg::same(1))?,
                bn3: BatchNorm2d::new(vb.pp("bn3"), c_out)?,
            };
            (body, c_out)
        } else {
            let body = Body::Basic {
                conv1: Conv2d::new(vb.pp("conv1"), c_in, width, 3, relu_free.stride(stride))?,
                bn1: BatchNorm2d::new(vb.pp("bn1"), width)?,
                conv2: Conv2d::new(vb.pp("conv2"), width, width, 3, relu_free)?,
                bn2: BatchNorm2d::new(vb.pp("bn2"), width)?,
            };
            (body, width)
        };
        let downsample = if stride != 1 || c_in != c_out {
            let d = vb.pp("downsample");
            Some((
                Conv2d::new(d.pp("0"), c_in, c_out, 1, ConvCfg::same(1).stride(stride))?,
                BatchNorm2d::new(d.pp("1"), c_out)?,
            ))
        } else {
            None
        };
        Ok(Block {
            body,
            downsample,
            drop_path: DropPath { p: drop },
        })
    }

    fn layers(&self) -> Vec<&dyn Layer> {
        let relu = &Activation::Relu;
        match &self.body {
            Body::Basic { conv1, bn1, conv2, bn2 } => vec![conv1, bn1, relu, conv2, bn2, &self.drop_path],
            Body::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
            } => vec![conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, &self.drop_path],
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x, ctx)?, ctx)?,
            None => x.clone(),
        };
        let relu = Activation::Relu;
        // Each BatchNorm takes its ReLU, and the last one the shortcut, in one op; drop-path
        // scales the branch before the add, so with it the add stays apart.
        let (last_conv, last_bn, h) = match &self.body {
            Body::Basic { conv1, bn1, conv2, bn2 } => {
                let h = bn1.forward_act(&conv1.forward(x, ctx)?, ctx, None, relu)?;
                (conv2, bn2, h)
            }
            Body::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
            } => {
                let h = bn1.forward_act(&conv1.forward(x, ctx)?, ctx, None, relu)?;
                let h = bn2.forward_act(&conv2.forward(&h, ctx)?, ctx, None, relu)?;
                (conv3, bn3, h)
            }
        };
        let h = last_conv.forward(&h, ctx)?;
        if self.drop_path.is_active(ctx) {
            let branch = self.drop_path.forward(&last_bn.forward(&h, ctx)?, ctx)?;
            Ok((branch + shortcut)?.relu()?)
        } else {
            last_bn.forward_act(&h, ctx, Some(&shortcut), relu)
        }
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let branch = crate::layers::export_all(&self.layers(), e, x)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => {
                let c = conv.export(e, x)?;
                bn.export(e, &c)?
            }
            None => x.to_string(),
        };
        let sum = e.add(&branch, &shortcut);
        Activation::Relu.export(e, &sum)
    }
}

pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    maxpool: MaxPool2d,
    stages: Vec<Vec<Block>>,
    channels: Vec<usize>,
}

impl ResNet {
    pub fn new(vb: VarBuilder, depth: usize, drop_path: f64) -> Result<ResNet> {
        let (repeats, bottleneck) = match depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            _ => return Err(ModelError::Config(format!("resnet{depth}: depth must be 18, 34 or 50"))),
        };
        let conv1 = Conv2d::new(vb.pp("conv1"), 3, 64, 7, ConvCfg::same(7).stride(2))?;
        let bn1 = BatchNorm2d::new(vb.pp("bn1"), 64)?;
        let total: usize = repeats.iter().sum();
        let mut index = 0;
        let mut c_in = 64;
        let mut stages = Vec::new();
        let mut channels = vec![64];
        for (stage, &count) in repeats.iter().enumerate() {
            let width = 64 << stage;
            let mut blocks = Vec::new();
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let vb_block = vb.pp(format!("layer{}", stage + 1)).pp(i);
                let rate = drop_path_rate(drop_path, index, total);
                blocks.push(Block::new(vb_block, c_in, width, stride, bottleneck, rate)?);
                c_in = if bottleneck { width * 4 } else { width };
                index += 1;
            }
            stages.push(blocks);
            channels.push(c_in);
        }
        Ok(ResNet {
            conv1,
            bn1,
            maxpool: MaxPool2d {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            stages,
            channels,
        })
    }
}

impl Encoder for ResNet {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        let stem = self
            .bn1
            .forward_act(&self.conv1.forward(x, ctx)?, ctx, None, Activation::Relu)?;
        let mut x = self.maxpool.forward(&stem, ctx)?;
        let mut levels = vec![stem];
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x, ctx)?;
            }
            levels.push(x.clone());
        }
        Ok(levels)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<Vec<String>> {
        let stem = crate::layers::export_all(&[&self.conv1, &self.bn1, &Activation::Relu], e, x)?;
        let mut x = self.maxpool.export(e, &stem)?;
        let mut levels = vec![stem];
        for stage in &self.stages {
            for block in stage {
                x = block.export(e, &x)?;
            }
            levels.push(x.clone());
        }
        Ok(levels)
    }

    fn channels(&self) -> Vec<usize> {
        self.channels.clone()
    }

    fn strides(&self) -> Vec<usize> {
        vec![2, 4, 8, 16, 32]
    }
}
