//! What a model says about itself in its ONNX metadata (`ftu.arch`, `ftu.norm`,
//! `ftu.train_size`, as ftu's exports write them), held against what the manifest says: a
//! missing `norm` is taken from the model, a contradiction is a warning (an error when strict).

use std::path::Path;

use ftu_formats::manifest::{ChannelOrder, ModelSpec, Normalisation};

/// A group size further than this factor from the model's training size (either way) is
/// warned about: the model sees its structures at a scale it never learnt.
pub const SIZE_FACTOR: usize = 2;

/// The `ftu.*` metadata a model carries; each is `None` when absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Described {
    pub arch: Option<String>,
    pub norm: Option<String>,
    pub train_size: Option<usize>,
}

impl Described {
    /// From a model's `metadata_props`. A `ftu.train_size` that is not a positive integer counts
    /// as absent (it can say nothing about the group size).
    pub fn from_metadata(metadata: &[(String, String)]) -> Described {
        let get = |key: &str| {
            metadata
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Described {
            arch: get("ftu.arch"),
            norm: get("ftu.norm").map(|n| n.to_ascii_lowercase()),
            train_size: get("ftu.train_size").and_then(|s| s.parse().ok()).filter(|&s| s > 0),
        }
    }

    /// `unet-resnet18, trained at 512 px`: what a user reads next to the model's path.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.arch {
            parts.push(a.clone());
        }
        if let Some(s) = self.train_size {
            parts.push(format!("trained at {s} px"));
        }
        if parts.is_empty() {
            "no ftu metadata".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// A model's manifest entry checked against its metadata: the normalisation to feed it, and
/// what did not agree (each a sentence naming the field, the model and both values).
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub norm: Normalisation,
    pub warnings: Vec<String>,
}

/// Why a model cannot be fed at all: neither the manifest nor the model gives its normalisation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Undescribed(pub String);

/// Holds `spec` (in a group of input size `size`) against what the model `described`.
pub fn check(spec: &ModelSpec, described: &Described, size: usize) -> Result<Checked, Undescribed> {
    let model = model_name(&spec.path, described);
    let stated = described
        .norm
        .as_deref()
        .map(|name| (name, Normalisation::named(name, spec.channels)));
    let mut warnings = Vec::new();
    let norm = match (spec.norm, stated) {
        (Some(given), Some((name, Some(own)))) => {
            if !same(&given, &own) {
                warnings.push(format!(
                    "{}.norm is {}, but {model} states ftu.norm = {name}; it runs with the manifest's",
                    spec.field,
                    norm_name(&given, spec.channels)
                ));
            }
            given
        }
        (Some(given), Some((name, None))) => {
            warnings.push(format!(
                "{model} states ftu.norm = {name}, which ftu does not know (imagenet, unit, pm1); \
                 it runs with {}.norm = {}",
                spec.field,
                norm_name(&given, spec.channels)
            ));
            given
        }
        (Some(given), None) => given,
        (None, Some((_, Some(own)))) => own,
        (None, Some((name, None))) => {
            return Err(Undescribed(format!(
                "{}.norm is not given and {model} states ftu.norm = {name}, which ftu does not know; \
                 give norm = \"imagenet\", \"unit\" (x/255) or \"pm1\" (x/127 − 1), or mean and std",
                spec.field
            )))
        }
        (None, None) => {
            return Err(Undescribed(format!(
                "{}.norm is not given and {model} states none (no ftu.norm metadata); \
                 give norm = \"imagenet\", \"unit\" (x/255) or \"pm1\" (x/127 − 1), or mean and std",
                spec.field
            )))
        }
    };
    if let Some(trained) = described.train_size {
        if size > trained * SIZE_FACTOR || size * SIZE_FACTOR < trained {
            warnings.push(format!(
                "the group of {}, size {size}, is more than {SIZE_FACTOR}× from the {trained} px {model} \
                 was trained at (ftu.train_size); it sees structures at a scale it did not learn",
                spec.field
            ));
        }
    }
    Ok(Checked { norm, warnings })
}

/// `model m.onnx (unet-resnet18)`.
fn model_name(path: &Path, described: &Described) -> String {
    let file = path
        .file_name()
        .map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned());
    match &described.arch {
        Some(arch) => format!("model {file} ({arch})"),
        None => format!("model {file}"),
    }
}

/// Equal to a thousandth of a grey level: named norms written out as numbers still match.
fn same(a: &Normalisation, b: &Normalisation) -> bool {
    let close = |x: f32, y: f32| (x - y).abs() <= 1e-3 * x.abs().max(y.abs()).max(1.0);
    a.mean.iter().zip(&b.mean).all(|(x, y)| close(*x, *y)) && a.std.iter().zip(&b.std).all(|(x, y)| close(*x, *y))
}

/// The name a normalisation goes by (`imagenet`), or its numbers in the model's channel order.
pub fn norm_name(n: &Normalisation, channels: ChannelOrder) -> String {
    for name in ["imagenet", "unit", "pm1"] {
        if Normalisation::named(name, channels).is_some_and(|named| same(n, &named)) {
            return name.to_string();
        }
    }
    format!("mean {:?} std {:?}", n.mean, n.std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::manifest::{Activation, OutputRef};

    fn spec(norm: Option<&str>) -> ModelSpec {
        ModelSpec {
            field: "group[0].model[0]".into(),
            path: "/runs/a/fold0.onnx".into(),
            weight: 1.0,
            norm: norm.map(|n| Normalisation::named(n, ChannelOrder::Rgb).unwrap()),
            channels: ChannelOrder::Rgb,
            output: OutputRef::Index(0),
            activation: Activation::Sigmoid,
            channel: 0,
            organs: None,
        }
    }

    fn described(norm: Option<&str>, train_size: Option<&str>) -> Described {
        let mut meta = vec![("ftu.arch".to_string(), "unet-resnet18".to_string())];
        meta.extend(norm.map(|n| ("ftu.norm".to_string(), n.to_string())));
        meta.extend(train_size.map(|s| ("ftu.train_size".to_string(), s.to_string())));
        Described::from_metadata(&meta)
    }

    #[test]
    fn a_missing_norm_is_the_models_and_a_contradiction_names_both() {
        let c = check(&spec(None), &described(Some("imagenet"), None), 512).unwrap();
        assert_eq!(c.norm, Normalisation::named("imagenet", ChannelOrder::Rgb).unwrap());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let c = check(&spec(Some("unit")), &described(Some("imagenet"), None), 512).unwrap();
        assert_eq!(c.norm, Normalisation::named("unit", ChannelOrder::Rgb).unwrap());
        let [w] = c.warnings.as_slice() else {
            panic!("{:?}", c.warnings)
        };
        assert!(
            w.contains("group[0].model[0].norm is unit")
                && w.contains("fold0.onnx (unet-resnet18)")
                && w.contains("ftu.norm = imagenet"),
            "{w}"
        );

        let agree = check(&spec(Some("imagenet")), &described(Some("IMAGENET"), None), 512).unwrap();
        assert!(agree.warnings.is_empty(), "{:?}", agree.warnings);
    }

    #[test]
    fn neither_saying_is_an_error_naming_the_field_and_the_model() {
        let e = check(&spec(None), &described(None, None), 512).unwrap_err().0;
        assert!(
            e.contains("group[0].model[0].norm") && e.contains("fold0.onnx") && e.contains("no ftu.norm"),
            "{e}"
        );
        let e = check(&spec(None), &described(Some("zscore"), None), 512).unwrap_err().0;
        assert!(e.contains("zscore"), "{e}");
        // An unknown stated norm beside a given one only warns.
        let c = check(&spec(Some("pm1")), &described(Some("zscore"), None), 512).unwrap();
        assert!(
            c.warnings[0].contains("zscore") && c.warnings[0].contains("pm1"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn group_sizes_beyond_twice_the_training_size_either_way_warn() {
        let warns = |size: usize| {
            !check(&spec(Some("unit")), &described(None, Some("256")), size)
                .unwrap()
                .warnings
                .is_empty()
        };
        assert!(!warns(128) && !warns(256) && !warns(512));
        assert!(warns(96) && warns(544));
        // A size that is not a number says nothing.
        let c = check(&spec(Some("unit")), &described(None, Some("big")), 4096).unwrap();
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn norms_are_named_when_they_match_a_named_one() {
        let bgr = Normalisation::named("imagenet", ChannelOrder::Bgr).unwrap();
        assert_eq!(norm_name(&bgr, ChannelOrder::Bgr), "imagenet");
        assert!(norm_name(&bgr, ChannelOrder::Rgb).starts_with("mean ["));
        assert_eq!(
            described(Some("unit"), Some("64")).summary(),
            "unet-resnet18, trained at 64 px"
        );
    }
}
