//! The five organs and two data sources of the competition, parsed once at the CSV boundary.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// An organ as spelled in the competition's CSV files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Organ {
    Kidney,
    Prostate,
    LargeIntestine,
    Spleen,
    Lung,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown organ `{0}` (expected one of kidney, prostate, largeintestine, spleen, lung)")]
pub struct UnknownOrgan(pub String);

impl Organ {
    pub const ALL: [Organ; 5] = [
        Organ::Kidney,
        Organ::Prostate,
        Organ::LargeIntestine,
        Organ::Spleen,
        Organ::Lung,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Organ::Kidney => "kidney",
            Organ::Prostate => "prostate",
            Organ::LargeIntestine => "largeintestine",
            Organ::Spleen => "spleen",
            Organ::Lung => "lung",
        }
    }

    /// Position in [`Organ::ALL`]; the class index of organ heads.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Pixel size (µm) of this organ's Hubmap slides in the hidden test set.
    pub fn hubmap_pixel_size(self) -> f64 {
        match self {
            Organ::Kidney => 0.5,
            Organ::Prostate => 6.263,
            Organ::LargeIntestine => 0.229,
            Organ::Spleen => 0.4945,
            Organ::Lung => 0.7562,
        }
    }
}

impl fmt::Display for Organ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Organ {
    type Err = UnknownOrgan;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Organ::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOrgan(s.to_string()))
    }
}

/// Where a slide comes from; the test set's domain shift is between these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataSource {
    Hpa,
    Hubmap,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown data_source `{0}` (expected HPA or Hubmap)")]
pub struct UnknownDataSource(pub String);

impl DataSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DataSource::Hpa => "HPA",
            DataSource::Hubmap => "Hubmap",
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataSource {
    type Err = UnknownDataSource;
    /// Case-insensitive: manifests and hand-written CSVs spell `HuBMAP` several ways.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "hpa" => Ok(DataSource::Hpa),
            "hubmap" => Ok(DataSource::Hubmap),
            _ => Err(UnknownDataSource(s.to_string())),
        }
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(Organ);
serde_via_str!(DataSource);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organ_names_round_trip_and_index_matches_all() {
        for (i, o) in Organ::ALL.into_iter().enumerate() {
            assert_eq!(o.as_str().parse::<Organ>().unwrap(), o);
            assert_eq!(o.index(), i);
        }
    }

    #[test]
    fn unknown_organ_is_named_in_the_error() {
        let e = "large_intestine".parse::<Organ>().unwrap_err();
        assert!(e.to_string().contains("`large_intestine`"), "{e}");
        assert!("Kidney".parse::<Organ>().is_err(), "organ names are exact");
    }

    #[test]
    fn data_source_is_case_insensitive() {
        assert_eq!("HuBMAP".parse::<DataSource>().unwrap(), DataSource::Hubmap);
        assert_eq!("hpa".parse::<DataSource>().unwrap(), DataSource::Hpa);
        assert!("GTEx".parse::<DataSource>().is_err());
    }
}
