//! Decoders: each takes any encoder's levels (channels and strides) and returns one-channel
//! logits at the input resolution. Deep-supervision maps are training-only and not exported.

mod fpn;
mod segformer;
mod unet;
mod unetpp;
mod upernet;

pub use fpn::Fpn;
pub use segformer::SegformerHead;
pub use unet::Unet;
pub use unetpp::UnetPlusPlus;
pub use upernet::UperNet;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::layers::{Interpolation, Upsample};
use crate::{ArchConfig, Ctx, Exporter, ModelError, Result};

pub struct DecoderOut {
    pub logits: Tensor,
    /// Deep-supervision logits, each at the input resolution, deepest first.
    pub aux: Vec<Tensor>,
}

pub trait Decoder {
    fn forward(&self, levels: &[Tensor], ctx: &Ctx) -> Result<DecoderOut>;
    fn export(&self, e: &mut Exporter, levels: &[String]) -> Result<String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    Unet,
    Fpn,
    Segformer,
    UnetPlusPlus,
    UperNet,
}

impl DecoderKind {
    pub fn all() -> [DecoderKind; 5] {
        [
            DecoderKind::Unet,
            DecoderKind::Fpn,
            DecoderKind::Segformer,
            DecoderKind::UnetPlusPlus,
            DecoderKind::UperNet,
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            DecoderKind::Unet => "unet",
            DecoderKind::Fpn => "fpn",
            DecoderKind::Segformer => "segformer",
            DecoderKind::UnetPlusPlus => "unetpp",
            DecoderKind::UperNet => "upernet",
        }
    }

    pub fn parse(name: &str) -> Option<DecoderKind> {
        DecoderKind::all().into_iter().find(|k| k.name() == name)
    }

    /// smp's defaults: U-Net and U-Net++ 256-128-64-32-16; FPN pyramid 256 and segmentation 128;
    /// SegFormer and UperNet 256.
    pub fn default_channels(self) -> Vec<usize> {
        match self {
            DecoderKind::Unet | DecoderKind::UnetPlusPlus => vec![256, 128, 64, 32, 16],
            DecoderKind::Fpn => vec![256, 128],
            DecoderKind::Segformer | DecoderKind::UperNet => vec![256],
        }
    }

    /// Builds the decoder at the model's root (`decoder.*`, `segmentation_head.*`, `decode_head.*`).
    pub fn build(
        self,
        vb: VarBuilder,
        channels: &[usize],
        strides: &[usize],
        config: &ArchConfig,
    ) -> Result<Box<dyn Decoder>> {
        let widths = config
            .decoder_channels
            .clone()
            .unwrap_or_else(|| self.default_channels());
        let expected = self.default_channels().len();
        if widths.len() != expected {
            return Err(ModelError::Config(format!(
                "decoder_channels for {}: {} values given, {expected} expected",
                self.name(),
                widths.len()
            )));
        }
        if config.aspp && self != DecoderKind::Fpn {
            return Err(ModelError::Config(format!(
                "aspp is an FPN option, not {}",
                self.name()
            )));
        }
        if config.deep_supervision && !matches!(self, DecoderKind::Unet | DecoderKind::UnetPlusPlus) {
            return Err(ModelError::Config(format!(
                "deep_supervision is a U-Net and U-Net++ option; {} has no heads on its levels",
                self.name()
            )));
        }
        // FPN, SegFormer and UperNet read the four levels at strides 4 to 32.
        let deepest4 = |v: &[usize]| v[v.len().saturating_sub(4)..].to_vec();
        Ok(match self {
            DecoderKind::Unet => Box::new(Unet::new(vb, channels, strides, &widths, config)?),
            DecoderKind::UnetPlusPlus => Box::new(UnetPlusPlus::new(vb, channels, strides, &widths, config)?),
            DecoderKind::Fpn => Box::new(Fpn::new(vb, &deepest4(channels), &deepest4(strides), &widths, config)?),
            DecoderKind::Segformer => Box::new(SegformerHead::new(
                vb,
                &deepest4(channels),
                &deepest4(strides),
                widths[0],
                config,
            )?),
            DecoderKind::UperNet => Box::new(UperNet::new(
                vb,
                &deepest4(channels),
                &deepest4(strides),
                widths[0],
                config,
            )?),
        })
    }
}

/// U-Net's and U-Net++'s upsampling between blocks.
pub(crate) const NEAREST_X2: Upsample = Upsample {
    scale: 2,
    mode: Interpolation::Nearest,
};

/// The encoder's deepest stride, when the U-Net-style decoder `name`'s blocks, each doubling the
/// resolution, bring it back to the input's.
pub(crate) fn blocks_undo_stride(name: &str, strides: &[usize], widths: &[usize]) -> Result<usize> {
    let deepest = *strides
        .last()
        .ok_or_else(|| ModelError::Config("encoder has no levels".into()))?;
    if 1 << widths.len() != deepest {
        return Err(ModelError::Config(format!(
            "{name}: {} decoder blocks cannot undo stride {deepest}",
            widths.len()
        )));
    }
    Ok(deepest)
}

/// The last `n` entries.
pub(crate) fn last<T>(v: &[T], n: usize) -> &[T] {
    &v[v.len().saturating_sub(n)..]
}

#[cfg(test)]
mod tests {
    use crate::{ArchConfig, Segmenter};

    fn build(arch: &str, config: ArchConfig) -> Result<Segmenter, String> {
        Segmenter::new(arch.parse().map_err(|e: crate::ModelError| e.to_string())?, config, 0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn options_a_decoder_lacks_are_refused_by_name() {
        let deep = ArchConfig {
            deep_supervision: true,
            ..ArchConfig::default()
        };
        for arch in ["fpn-resnet18", "segformer-mit_b0", "upernet-convnext_tiny"] {
            let err = build(arch, deep.clone()).err().unwrap_or_default();
            assert!(
                err.contains("deep_supervision") && err.contains(arch.split('-').next().unwrap()),
                "{arch}: {err}"
            );
        }
        let aspp = ArchConfig {
            aspp: true,
            ..ArchConfig::default()
        };
        for arch in ["unetpp-resnet18", "upernet-resnet18"] {
            let err = build(arch, aspp.clone()).err().unwrap_or_default();
            assert!(
                err.contains("aspp") && err.contains(arch.split('-').next().unwrap()),
                "{arch}: {err}"
            );
        }
        let wide = ArchConfig {
            decoder_channels: Some(vec![8, 8]),
            deep_supervision: true,
            ..ArchConfig::default()
        };
        let err = build("unetpp-resnet18", wide).err().unwrap_or_default();
        assert!(err.contains("2 values given, 5 expected"), "{err}");
    }
}
