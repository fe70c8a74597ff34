//! Layer types. Each holds its Candle forward pass (train and eval) and its ONNX export next to
//! each other; composite modules export by calling their parts' exports in forward order.

mod activation;
mod attention;
mod conv;
mod drop;
mod linear;
mod mix_ffn;
mod norm;
mod pool;
mod resample;
mod se;

pub use activation::{softmax_last_dim, Activation};
pub use attention::EfficientSelfAttention;
pub use conv::{Conv2d, ConvBnAct, ConvCfg};
pub use drop::{DropPath, Dropout};
pub use linear::Linear;
pub use mix_ffn::MixFfn;
pub use norm::{BatchNorm2d, ChannelNorm, LayerNorm};
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool, MaxPool2d};
pub use resample::{Interpolation, ResizeLike, Upsample};
pub use se::SqueezeExcite;

use candle_core::Tensor;

use crate::{Ctx, Exporter, Result};

/// A layer with one input and one output.
pub trait Layer {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor>;
    /// Appends this layer's nodes reading value `x`; returns the name of its output value.
    fn export(&self, e: &mut Exporter, x: &str) -> Result<String>;
}

/// Layers in sequence.
pub fn forward_all(layers: &[&dyn Layer], x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
    let mut x = x.clone();
    for layer in layers {
        x = layer.forward(&x, ctx)?;
    }
    Ok(x)
}

pub fn export_all(layers: &[&dyn Layer], e: &mut Exporter, x: &str) -> Result<String> {
    let mut x = x.to_string();
    for layer in layers {
        x = layer.export(e, &x)?;
    }
    Ok(x)
}
