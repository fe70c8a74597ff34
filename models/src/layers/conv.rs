//! 2-D convolution (stride, padding, dilation, groups; depthwise is groups = channels), and the
//! conv → BatchNorm → activation unit that decoders stack (smp's `Conv2dReLU` names: `0`, `1`).

use candle_core::Tensor;
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};
use ftu_onnx::Attr;

use super::{Activation, BatchNorm2d, Layer};
use crate::ops::conv::Spacing;
use crate::{Ctx, Exporter, Result};

#[derive(Debug, Clone, Copy)]
pub struct ConvCfg {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
    /// TensorFlow's "SAME" padding (timm's `Conv2dSame`, ONNX's `SAME_UPPER`): the padding that
    /// keeps ceil(size / stride) outputs, the odd pixel at the end; `padding` is then unused.
    pub tf_same: bool,
}

impl ConvCfg {
    /// Stride 1, "same" padding for an odd kernel, one group, no bias.
    pub fn same(kernel: usize) -> ConvCfg {
        ConvCfg {
            stride: 1,
            padding: kernel / 2,
            dilation: 1,
            groups: 1,
            bias: false,
            tf_same: false,
        }
    }

    pub fn stride(self, stride: usize) -> ConvCfg {
        ConvCfg { stride, ..self }
    }

    pub fn padding(self, padding: usize) -> ConvCfg {
        ConvCfg { padding, ..self }
    }

    pub fn dilation(self, dilation: usize) -> ConvCfg {
        ConvCfg { dilation, ..self }
    }

    pub fn groups(self, groups: usize) -> ConvCfg {
        ConvCfg { groups, ..self }
    }

    pub fn bias(self, bias: bool) -> ConvCfg {
        ConvCfg { bias, ..self }
    }

    pub fn tf_same(self) -> ConvCfg {
        ConvCfg { tf_same: true, ..self }
    }
}

pub struct Conv2d {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: ConvCfg,
}

impl Conv2d {
    /// He-normal (fan-out) weights, as timm and torchvision initialise convolutions before ReLU.
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize, cfg: ConvCfg) -> Result<Conv2d> {
        let init = Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        };
        Self::with_init(vb, c_in, c_out, kernel, cfg, init)
    }

    /// PyTorch's default weights (uniform, ±1/√fan-in), for output heads and projections whose
    /// values are not followed by a normalisation.
    pub fn head(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize, cfg: ConvCfg) -> Result<Conv2d> {
        let bound = 1.0 / ((c_in / cfg.groups * kernel * kernel) as f64).sqrt();
        Self::with_init(vb, c_in, c_out, kernel, cfg, Init::Uniform { lo: -bound, up: bound })
    }

    fn with_init(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize, cfg: ConvCfg, init: Init) -> Result<Conv2d> {
        let weight = vb.get_with_hints((c_out, c_in / cfg.groups, kernel, kernel), "weight", init)?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(c_out, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Conv2d {
            name: vb.prefix(),
            weight,
            bias,
            cfg,
        })
    }

    /// A convolution over given tensors (a Linear applied as 1×1 conv reuses this).
    pub(crate) fn from_tensors(name: String, weight: Tensor, bias: Option<Tensor>, cfg: ConvCfg) -> Conv2d {
        Conv2d {
            name,
            weight,
            bias,
            cfg,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// This convolution over tokens N×(h·w)×C (channels last), giving tokens. A depthwise
    /// convolution with bias, stride 1 and "same" padding runs on the CPU in float32 as one op
    /// on the tokens as they lie; anything else goes through planes N×C×h×w and back.
    pub(crate) fn forward_tokens(&self, tokens: &Tensor, h: usize, w: usize, ctx: &Ctx) -> Result<Tensor> {
        let c = self.cfg;
        let (n, _, channels) = tokens.dims3()?;
        let k = self.weight.dim(2)?;
        let tokens_op = c.groups == channels
            && self.weight.dims()[..2] == [channels, 1]
            && self.weight.dim(3)? == k
            && k % 2 == 1
            && (c.stride, c.padding, c.dilation, c.tf_same) == (1, k / 2, 1, false);
        match &self.bias {
            Some(b) if tokens_op && ctx.cpu_ops_f32(tokens) => {
                crate::ops::conv::depthwise_conv_tokens(tokens, &self.weight, b, h, w)
            }
            _ => {
                let planes = tokens.transpose(1, 2)?.reshape((n, channels, h, w))?;
                let y = self.forward(&planes, ctx)?;
                Ok(y.flatten_from(2)?.transpose(1, 2)?.contiguous()?)
            }
        }
    }
}

impl Conv2d {
    /// The convolution of `x` by `weight` (this layer's, or a low-precision copy of it).
    fn convolve(&self, x: &Tensor, weight: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let c = self.cfg;
        let padded;
        let x = if c.tf_same {
            let (k_h, k_w) = (weight.dim(2)?, weight.dim(3)?);
            let mut t = x.clone();
            for (axis, k) in [(2, k_h), (3, k_w)] {
                let size = t.dim(axis)?;
                let total = ((size.div_ceil(c.stride) - 1) * c.stride + (k - 1) * c.dilation + 1).saturating_sub(size);
                if total > 0 {
                    t = t.pad_with_zeros(axis, total / 2, total - total / 2)?;
                }
            }
            padded = t;
            &padded
        } else {
            x
        };
        let padding = if c.tf_same { 0 } else { c.padding };
        let c_in = x.dim(1)?;
        // On the CPU, ftu's own ops (forward and gradients): im2col + gemm for ordinary
        // convolutions, direct loops for depthwise ones. Elsewhere (`ops/conv/generic.rs`)
        // candle's forward with gradients made of forward convolutions for ordinary ones,
        // shifted views times per-channel weights for depthwise ones, and candle's grouped
        // conv2d for the rest.
        let on_cpu = ctx.cpu_ops(x);
        let spacing = Spacing {
            stride: c.stride,
            padding,
            dilation: c.dilation,
        };
        Ok(if on_cpu && c.groups == 1 {
            crate::ops::conv::conv2d(x, weight, spacing)?
        } else if on_cpu && c.groups == c_in && weight.dim(1)? == 1 {
            crate::ops::conv::depthwise_conv2d(x, weight, spacing)?
        } else if c.groups == 1 {
            crate::ops::conv::generic::conv2d(x, weight, spacing)?
        } else if c.groups == c_in && weight.dim(1)? == 1 {
            crate::ops::conv::generic::depthwise_conv2d(x, weight, spacing)?
        } else {
            crate::ops::conv::generic::candle_conv2d(x, weight, spacing, c.groups)?
        })
    }
}

impl Layer for Conv2d {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = ctx.low_precision(&[x, &self.weight], |t| self.convolve(&t[0], &t[1], ctx))?;
        Ok(match &self.bias {
            Some(b) if ctx.cpu_ops(&y) && b.dtype() == y.dtype() => crate::ops::bias::add_channel_bias(&y, b)?,
            Some(b) => crate::ops::bias::add_channel_bias_generic(&y, b)?,
            None => y,
        })
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        let w = e.param(&format!("{}.weight", self.name), &self.weight)?;
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = &self.bias {
            inputs.push(e.param(&format!("{}.bias", self.name), b)?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let (k_h, k_w) = (self.weight.dims()[2] as i64, self.weight.dims()[3] as i64);
        let c = self.cfg;
        let p = c.padding as i64;
        let padding = match c.tf_same {
            true => ("auto_pad", Attr::Str("SAME_UPPER".into())),
            false => ("pads", Attr::Ints(vec![p; 4])),
        };
        Ok(e.op(
            "Conv",
            &inputs,
            &[
                ("kernel_shape", Attr::Ints(vec![k_h, k_w])),
                ("strides", Attr::Ints(vec![c.stride as i64; 2])),
                padding,
                ("dilations", Attr::Ints(vec![c.dilation as i64; 2])),
                ("group", Attr::Int(c.groups as i64)),
            ],
        ))
    }
}

/// Conv (no bias) → BatchNorm → activation, named `0` and `1` like smp's `Conv2dReLU`.
pub struct ConvBnAct {
    conv: Conv2d,
    bn: BatchNorm2d,
    act: Activation,
}

impl ConvBnAct {
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        cfg: ConvCfg,
        act: Activation,
    ) -> Result<Self> {
        Ok(ConvBnAct {
            conv: Conv2d::new(vb.pp("0"), c_in, c_out, kernel, cfg.bias(false))?,
            bn: BatchNorm2d::new(vb.pp("1"), c_out)?,
            act,
        })
    }
}

impl Layer for ConvBnAct {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.bn.forward_act(&self.conv.forward(x, ctx)?, ctx, None, self.act)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        super::export_all(&[&self.conv, &self.bn, &self.act], e, x)
    }
}
