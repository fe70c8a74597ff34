//! Architectures by name: `DECODER-ENCODER`, e.g. `unet-resnet34`, `fpn-efficientnet_b3`,
//! `segformer-mit_b2`, `unetpp-resnet34`, `upernet-convnext_tiny`. Every decoder goes with every encoder; `Arch::all()`
//! lists them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::decoders::DecoderKind;
use crate::encoders::EncoderKind;
use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    pub decoder: DecoderKind,
    pub encoder: EncoderKind,
}

impl Arch {
    pub fn all() -> Vec<Arch> {
        let mut all = Vec::new();
        for decoder in DecoderKind::all() {
            for encoder in EncoderKind::all() {
                all.push(Arch { decoder, encoder });
            }
        }
        all
    }

    pub fn name(&self) -> String {
        format!("{}-{}", self.decoder.name(), self.encoder.name())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;

    fn from_str(name: &str) -> Result<Arch, ModelError> {
        let unknown = || ModelError::UnknownArch {
            name: name.to_string(),
            decoders: DecoderKind::all().map(|d| d.name()).join(", "),
            encoders: EncoderKind::all()
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let (decoder, encoder) = name.split_once('-').ok_or_else(unknown)?;
        Ok(Arch {
            decoder: DecoderKind::parse(decoder).ok_or_else(unknown)?,
            encoder: EncoderKind::parse(encoder).ok_or_else(unknown)?,
        })
    }
}

/// The knobs an architecture takes besides its name. Every field has a default, so a config
/// file names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchConfig {
    /// U-Net and U-Net++: 5 block widths (U-Net++'s top row); FPN: pyramid and segmentation widths; SegFormer: the MLP width; UperNet: its one width.
    pub decoder_channels: Option<Vec<usize>>,
    /// FPN only: ASPP on the deepest level (UperNet has its pyramid pooling module there).
    pub aspp: bool,
    /// U-Net and U-Net++: a logits head on every decoder block (U-Net++: every top-row node)
    /// but the last, for auxiliary losses.
    pub deep_supervision: bool,
    /// An `organ` output (N×5 logits) from the deepest level.
    pub organ_head: bool,
    /// A `pixel_size` output (N×1) from the deepest level.
    pub pixel_size_head: bool,
    /// Dropout before the FPN, SegFormer and UperNet heads, in training.
    pub dropout: f64,
    /// Stochastic depth in the encoder, in training; the encoder's usual rate when unset.
    pub drop_path: Option<f64>,
}

impl Default for ArchConfig {
    fn default() -> Self {
        ArchConfig {
            decoder_channels: None,
            aspp: false,
            deep_supervision: false,
            organ_head: false,
            pixel_size_head: false,
            dropout: 0.1,
            drop_path: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::all() {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
        }
        assert_eq!(Arch::all().len(), 5 * 27);
        let a: Arch = "segformer-mit_b2".parse().unwrap();
        assert_eq!((a.decoder, a.encoder), (DecoderKind::Segformer, EncoderKind::Mit(2)));
    }

    #[test]
    fn unknown_names_list_the_choices() {
        for bad in ["unet", "unet-resnet99", "pspnet-resnet34", "unet_resnet34"] {
            let err = bad.parse::<Arch>().unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.contains("efficientnet_b3") && err.contains("fpn"),
                "{err}"
            );
        }
    }
}
