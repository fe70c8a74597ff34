//! `[[group.model]]`: one ONNX model, how to feed it (normalisation, channel order) and how to
//! read it (output, activation, channel).

use std::path::PathBuf;

use super::file::OutputRef;
use crate::organ::Organ;

/// One ONNX model and how to feed it and read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Where in the manifest it was declared, e.g. `group[0].model[1]`, for error messages.
    pub field: String,
    pub path: PathBuf,
    pub weight: f32,
    /// `None` when the manifest leaves it out: the engine then takes the one the model states in
    /// its metadata (`ftu.norm`), and refuses a model that states none.
    pub norm: Option<Normalisation>,
    pub channels: ChannelOrder,
    pub output: OutputRef,
    pub activation: Activation,
    /// The output channel that holds the mask.
    pub channel: usize,
    /// Only used for slides of these organs; `None` means every organ.
    pub organs: Option<Vec<Organ>>,
}

impl ModelSpec {
    pub fn serves(&self, organ: Organ) -> bool {
        self.organs.as_ref().is_none_or(|o| o.contains(&organ))
    }
}

/// Per input channel, in the model's channel order: `(x − mean) / std` on 0–255 pixel values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalisation {
    const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

    /// A named normalisation, given in RGB and permuted to the model's channel order.
    pub fn named(name: &str, channels: ChannelOrder) -> Option<Normalisation> {
        let rgb = match name {
            "imagenet" => Normalisation {
                mean: Self::IMAGENET_MEAN.map(|m| m * 255.0),
                std: Self::IMAGENET_STD.map(|s| s * 255.0),
            },
            "unit" => Normalisation {
                mean: [0.0; 3],
                std: [255.0; 3],
            },
            "pm1" => Normalisation {
                mean: [127.0; 3],
                std: [127.0; 3],
            },
            _ => return None,
        };
        Some(match channels {
            ChannelOrder::Rgb => rgb,
            ChannelOrder::Bgr => Normalisation {
                mean: reversed(rgb.mean),
                std: reversed(rgb.std),
            },
        })
    }
}

fn reversed(v: [f32; 3]) -> [f32; 3] {
    [v[2], v[1], v[0]]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    /// OpenCV's order: the model's channel 0 is blue.
    Bgr,
}

impl std::fmt::Display for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputRef::Index(i) => write!(f, "output #{i}"),
            OutputRef::Name(n) => write!(f, "output `{n}`"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Sigmoid,
    /// Softmax over the output's channels, then the configured channel.
    Softmax,
    /// The output is already a probability.
    None,
}
