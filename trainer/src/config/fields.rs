//! The options that name a thing — `arch`, `norm`, `device`, `precision`, `ensemble.tta` — read
//! from config.toml and from flags into their types, and written back as the names they were
//! read from. A name that is not one is refused with its key and the names expected.

use ftu_formats::manifest::{ChannelOrder, Normalisation};
use serde::{Deserialize, Deserializer, Serializer};

use super::error::{invalid, ConfigError};

/// The input normalisations a model can be trained with (ftu-infer's named presets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// ImageNet's mean and standard deviation.
    Imagenet,
    /// 0–255 to 0–1.
    Unit,
    /// 0–255 to −1–1.
    Pm1,
}

impl Norm {
    pub fn name(self) -> &'static str {
        match self {
            Norm::Imagenet => "imagenet",
            Norm::Unit => "unit",
            Norm::Pm1 => "pm1",
        }
    }

    /// The preset's mean and standard deviation, in RGB order.
    pub fn preset(self) -> Normalisation {
        Normalisation::named(self.name(), ChannelOrder::Rgb).expect("every Norm is a preset")
    }
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A TOML string read as a `T` by `parse`, whose error becomes serde's (toml adds the key's
/// line and column).
fn deserialize_with<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Result<T, ConfigError>,
) -> Result<T, D::Error> {
    let name = String::deserialize(d)?;
    parse(&name).map_err(|e| match e {
        ConfigError::Invalid { field, problem } => serde::de::Error::custom(format!("{field}: {problem}")),
        other => serde::de::Error::custom(other),
    })
}

macro_rules! named_field {
    ($module:ident, $ty:ty, $name:expr, $parse:expr) => {
        pub mod $module {
            use super::*;

            /// The option's value from its name; the error names the option's key.
            pub fn parse(name: &str) -> Result<$ty, ConfigError> {
                #[allow(clippy::redundant_closure_call)]
                ($parse)(name)
            }

            pub fn serialize<S: Serializer>(value: &$ty, s: S) -> Result<S::Ok, S::Error> {
                #[allow(clippy::redundant_closure_call)]
                s.serialize_str(&($name)(value))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                deserialize_with(d, parse)
            }
        }
    };
}

named_field!(
    arch,
    ftu_models::Arch,
    |v: &ftu_models::Arch| v.to_string(),
    |name: &str| name
        .parse::<ftu_models::Arch>()
        .map_err(|e| invalid("arch", e.to_string()))
);

named_field!(norm, Norm, |v: &Norm| v.to_string(), |name: &str| match name {
    "imagenet" => Ok(Norm::Imagenet),
    "unit" => Ok(Norm::Unit),
    "pm1" => Ok(Norm::Pm1),
    _ => Err(invalid("norm", format!("imagenet, unit or pm1, got {name:?}"))),
});

named_field!(
    device,
    crate::device::DeviceSpec,
    |v: &crate::device::DeviceSpec| v.to_string(),
    |name: &str| name
        .parse::<crate::device::DeviceSpec>()
        .map_err(|_| invalid("device", format!("cpu, cuda or cuda:N, got {name:?}")))
);

named_field!(
    precision,
    ftu_models::Precision,
    |v: &ftu_models::Precision| v.to_string(),
    |name: &str| name
        .parse::<ftu_models::Precision>()
        .map_err(|m| invalid("precision", m))
);

named_field!(
    tta,
    ftu_formats::tta::TtaMode,
    |v: &ftu_formats::tta::TtaMode| v.as_str().to_string(),
    |name: &str| name
        .parse::<ftu_formats::tta::TtaMode>()
        .ok()
        .filter(|m| m.as_str() == name)
        .ok_or_else(|| invalid("ensemble.tta", format!("none, hflip, flips or d4, got {name:?}")))
);
