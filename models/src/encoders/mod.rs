//! Encoders: each returns its feature levels shallow to deep (the levels timm's `features_only`
//! returns) with their channel counts and strides. Parameter names are the pretrained files' own.

mod convnext;
mod efficientnet;
mod efficientnetv2;
mod mit;
mod resnet;
mod swin;

pub use convnext::ConvNext;
pub use efficientnet::EfficientNet;
pub use efficientnetv2::EfficientNetV2;
pub use mit::Mit;
pub use resnet::ResNet;
pub use swin::Swin;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::{Ctx, Exporter, Result};

pub trait Encoder {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>>;
    fn export(&self, e: &mut Exporter, x: &str) -> Result<Vec<String>>;
    /// Channels of each level, shallow to deep.
    fn channels(&self) -> Vec<usize>;
    /// Stride of each level relative to the input.
    fn strides(&self) -> Vec<usize>;
}

/// The encoders on offer, by timm / Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    ResNet(usize),
    EfficientNet(usize),
    Mit(usize),
    /// An index into `convnext::SIZES`: tiny, small, base, large.
    ConvNext(usize),
    /// An index into `efficientnetv2::VARIANTS`: s, m, l (timm's `tf_efficientnetv2_*`).
    EfficientNetV2(usize),
    /// An index into `swin::SIZES`: tiny, small, base (timm's `swin_*_patch4_window7_224`).
    Swin(usize),
}

impl EncoderKind {
    pub fn all() -> Vec<EncoderKind> {
        let mut all: Vec<EncoderKind> = [18, 34, 50].into_iter().map(EncoderKind::ResNet).collect();
        all.extend((0..=7).map(EncoderKind::EfficientNet));
        all.extend((0..=5).map(EncoderKind::Mit));
        all.extend((0..convnext::SIZES.len()).map(EncoderKind::ConvNext));
        all.extend((0..efficientnetv2::VARIANTS.len()).map(EncoderKind::EfficientNetV2));
        all.extend((0..swin::SIZES.len()).map(EncoderKind::Swin));
        all
    }

    pub fn name(self) -> String {
        match self {
            EncoderKind::ResNet(depth) => format!("resnet{depth}"),
            EncoderKind::EfficientNet(b) => format!("efficientnet_b{b}"),
            EncoderKind::Mit(b) => format!("mit_b{b}"),
            EncoderKind::ConvNext(i) => format!("convnext_{}", convnext::SIZES[i].0),
            EncoderKind::EfficientNetV2(i) => format!("efficientnetv2_{}", efficientnetv2::VARIANTS[i].0),
            EncoderKind::Swin(i) => format!("swin_{}_patch4_window7", swin::SIZES[i].0),
        }
    }

    pub fn parse(name: &str) -> Option<EncoderKind> {
        EncoderKind::all().into_iter().find(|k| k.name() == name)
    }

    /// Where the encoder's parameters live in a model's checkpoint: timm files have them at the
    /// root, Hugging Face SegFormer files under `segformer.encoder`.
    pub fn prefix(self) -> &'static str {
        match self {
            EncoderKind::Mit(_) => "segformer.encoder",
            _ => "",
        }
    }

    /// Parameters a pretrained classification file carries that the encoder does not use.
    pub fn classifier_prefixes(self) -> &'static [&'static str] {
        match self {
            EncoderKind::ResNet(_) => &["fc."],
            EncoderKind::EfficientNet(_) | EncoderKind::EfficientNetV2(_) => &["conv_head.", "bn2.", "classifier."],
            EncoderKind::Mit(_) => &["classifier.", "decode_head."],
            EncoderKind::ConvNext(_) => &["head."],
            EncoderKind::Swin(_) => &["head.", "norm."],
        }
    }

    /// Stochastic depth rate used in training when the config does not say.
    pub fn default_drop_path(self) -> f64 {
        match self {
            EncoderKind::ResNet(_) => 0.0,
            EncoderKind::EfficientNet(_) | EncoderKind::EfficientNetV2(_) => 0.2,
            EncoderKind::Mit(_) | EncoderKind::ConvNext(_) | EncoderKind::Swin(_) => 0.1,
        }
    }

    /// Builds the encoder under `vb` (already at the encoder's prefix).
    pub fn build(self, vb: VarBuilder, drop_path: f64) -> Result<Box<dyn Encoder>> {
        Ok(match self {
            EncoderKind::ResNet(depth) => Box::new(ResNet::new(vb, depth, drop_path)?),
            EncoderKind::EfficientNet(b) => Box::new(EfficientNet::new(vb, b, drop_path)?),
            EncoderKind::Mit(b) => Box::new(Mit::new(vb, b, drop_path)?),
            EncoderKind::ConvNext(i) => Box::new(ConvNext::new(vb, convnext::SIZES[i].0, drop_path)?),
            EncoderKind::EfficientNetV2(i) => {
                Box::new(EfficientNetV2::new(vb, efficientnetv2::VARIANTS[i].0, drop_path)?)
            }
            EncoderKind::Swin(i) => Box::new(Swin::new(vb, swin::SIZES[i].0, drop_path)?),
        })
    }
}

/// `stages` of blocks run in order from `x` by `block` (a forward pass or an export), with the
/// outputs of the stages listed in `levels`.
pub(crate) fn run_stages<B, T: Clone>(
    stages: &[Vec<B>],
    levels: &[usize],
    mut x: T,
    mut block: impl FnMut(&B, &T) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (s, stage) in stages.iter().enumerate() {
        for b in stage {
            x = block(b, &x)?;
        }
        if levels.contains(&s) {
            out.push(x.clone());
        }
    }
    Ok(out)
}

/// The drop-path rate of block `index` of `count`, rising linearly to `max` as timm does.
pub(crate) fn drop_path_rate(max: f64, index: usize, count: usize) -> f64 {
    if count <= 1 {
        0.0
    } else {
        max * index as f64 / (count - 1) as f64
    }
}
