//! The training configuration: every option of `ftu-train train`, readable from a TOML file
//! (command-line flags win), saved resolved as RUN/config.toml.

mod augment;
mod diff;
mod ensemble;
mod error;
pub mod fields;
mod loss;
mod optim;
mod sampling;

use std::path::{Path, PathBuf};

use ftu_formats::Organ;
use ftu_models::{Arch, Precision};
use serde::{Deserialize, Serialize};

pub use augment::AugmentConfig;
pub use diff::Difference;
pub use ensemble::EnsembleConfig;
use error::invalid;
pub use error::ConfigError;
pub use fields::Norm;
pub use loss::LossConfig;
pub use optim::OptimConfig;
pub use sampling::{SamplingConfig, SamplingMode};

use crate::device::DeviceSpec;

/// With `samples_per_epoch = 0` in resize mode, an epoch has at least this many batches.
pub const MIN_STEPS_PER_EPOCH: usize = 8;

/// Everything a run needs. Unknown keys in a TOML file are refused as typos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A Kaggle-layout folder (train.csv, train_images/).
    pub data: PathBuf,
    pub out: PathBuf,
    /// DECODER-ENCODER, e.g. unet-resnet34.
    #[serde(with = "fields::arch")]
    pub arch: Arch,
    /// Decoder widths (U-Net 5, FPN 2, SegFormer 1 value); the architecture's default if absent.
    pub decoder_channels: Option<Vec<usize>>,
    /// Side of the square training input (slides are resized to it); a multiple of 32.
    pub size: usize,
    /// Several training sizes instead of `size`: the folds are trained at each, in RUN/sizeS/,
    /// and RUN/manifest.toml serves them as one group per size.
    pub sizes: Vec<usize>,
    pub folds: usize,
    /// Train only this fold (0-based); all folds when absent.
    pub fold: Option<usize>,
    pub epochs: usize,
    pub batch: usize,
    /// Random samples per epoch. When 0: in resize mode the number of training slides, but at
    /// least [`MIN_STEPS_PER_EPOCH`] batches (a small folder otherwise gives an epoch of two or
    /// three optimiser steps); in crops mode as many crops as tile the training slides once.
    pub samples_per_epoch: usize,
    pub seed: u64,
    /// Slides kept decoded at training scale, in MiB; slides beyond it are decoded when drawn.
    pub cache_mb: usize,
    /// Threads for loading and augmentation (rayon); all cores when 0.
    pub workers: usize,
    /// Input normalisation the model is trained with and that its manifest names.
    #[serde(with = "fields::norm")]
    pub norm: Norm,
    /// A timm / Hugging Face safetensors file for the encoder, or a Hub name in the local Hugging
    /// Face cache (`timm/resnet34.a1_in1k`), resolved to its file when the run starts.
    pub pretrained: Option<PathBuf>,
    /// The encoder's parameters do not change for this many epochs.
    pub freeze_encoder_epochs: usize,
    pub organ_head: bool,
    pub pixel_size_head: bool,
    pub deep_supervision: bool,
    /// Validation overlays written each epoch (per fold).
    pub overlays: usize,
    #[serde(with = "fields::device")]
    pub device: DeviceSpec,
    /// Convolutions and matmuls in f32, bf16 or f16 (mixed precision: f32 weights, BatchNorm
    /// statistics and losses; f16 with dynamic loss scaling). Export stays f32.
    #[serde(with = "fields::precision")]
    pub precision: Precision,
    /// A pseudo.csv from `ftu-infer pseudo`: its slides join every fold's training set (never
    /// validation) with their soft labels.
    pub pseudo: Option<PathBuf>,
    /// Factor on a pseudo-labelled slide's segmentation loss.
    pub pseudo_weight: f64,
    /// [lo, hi]: a pseudo-label's pixels with lo < p < hi (the ensemble unsure) count in no
    /// loss term.
    pub pseudo_unsure: Option<[f64; 2]>,
    /// Train and validate on these organs' slides only (every organ when empty); each slide keeps
    /// the fold it has in a run of every organ with the same `folds` and `seed`, so the run's
    /// out-of-fold predictions line up with such a run's, and its manifest serves these organs.
    pub organs: Vec<Organ>,
    /// With `folds = 1` (a full-data fit, which has no out-of-fold predictions): the run folder
    /// (or manifest.toml) whose thresholds and postprocessing the manifest takes; 0.5 when absent.
    pub thresholds_from: Option<PathBuf>,
    pub sampling: SamplingConfig,
    pub optim: OptimConfig,
    pub loss: LossConfig,
    pub augment: AugmentConfig,
    pub ensemble: EnsembleConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            out: PathBuf::new(),
            arch: "unet-resnet34".parse().expect("a registered architecture"),
            decoder_channels: None,
            size: 512,
            sizes: Vec::new(),
            folds: 5,
            fold: None,
            epochs: 20,
            batch: 8,
            samples_per_epoch: 0,
            seed: 0,
            cache_mb: 4096,
            workers: 0,
            norm: Norm::Imagenet,
            pretrained: None,
            freeze_encoder_epochs: 0,
            organ_head: false,
            pixel_size_head: false,
            deep_supervision: false,
            overlays: 4,
            device: DeviceSpec::Cpu,
            precision: Precision::F32,
            pseudo: None,
            pseudo_weight: 0.5,
            pseudo_unsure: None,
            organs: Vec::new(),
            thresholds_from: None,
            sampling: SamplingConfig::default(),
            optim: OptimConfig::default(),
            loss: LossConfig::default(),
            augment: AugmentConfig::default(),
            ensemble: EnsembleConfig::default(),
        }
    }
}

impl TrainConfig {
    /// The run at one of `sizes`: in RUN/sizeS/, with everything else the same.
    pub fn at_size(&self, size: usize) -> TrainConfig {
        let mut c = self.clone();
        c.size = size;
        c.sizes = Vec::new();
        c.ensemble.size_weights = Vec::new();
        c.out = self.out.join(format!("size{size}"));
        c
    }

    pub fn from_toml_file(path: &Path) -> Result<TrainConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        toml::from_str(&text).map_err(|cause| ConfigError::Parse {
            path: path.to_path_buf(),
            cause,
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }

    /// The options of the run as a whole, what RUN/config.toml holds: `fold` picks a job's
    /// share of a run, not the run, so fold jobs of one run save the same file.
    pub fn run_options(&self) -> TrainConfig {
        TrainConfig {
            fold: None,
            ..self.clone()
        }
    }

    /// `data`, `out`, `pretrained`, `pseudo` and `thresholds_from` made absolute (against the working directory), so
    /// a saved config means the same files from anywhere; a `pretrained` Hugging Face name
    /// (`timm/resnet34.a1_in1k`) becomes the cached file it names ([`crate::hub`]).
    pub fn with_absolute_paths(mut self) -> Result<TrainConfig, ConfigError> {
        let absolute = |field: &str, p: &Path| {
            std::path::absolute(p).map_err(|e| invalid(field, format!("cannot make {} absolute: {e}", p.display())))
        };
        self.data = absolute("data", &self.data)?;
        self.out = absolute("out", &self.out)?;
        if let Some(p) = &self.pretrained {
            let file = crate::hub::resolve(p).map_err(|e| invalid("pretrained", e.to_string()))?;
            self.pretrained = Some(absolute("pretrained", &file)?);
        }
        if let Some(p) = &self.pseudo {
            self.pseudo = Some(absolute("pseudo", p)?);
        }
        if let Some(p) = &self.thresholds_from {
            self.thresholds_from = Some(absolute("thresholds_from", p)?);
        }
        Ok(self)
    }

    /// Checks what serde cannot: the top-level ranges, each section's own (its `validate`), and
    /// the rules between options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data.as_os_str().is_empty() {
            return Err(invalid("data", "required (a Kaggle-layout folder)"));
        }
        if self.out.as_os_str().is_empty() {
            return Err(invalid("out", "required (the run folder)"));
        }
        for (field, size) in std::iter::once(("size", self.size)).chain(self.sizes.iter().map(|&s| ("sizes", s))) {
            if size == 0 || size % 32 != 0 {
                return Err(invalid(field, format!("must be a positive multiple of 32, got {size}")));
            }
        }
        let mut distinct = self.sizes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != self.sizes.len() {
            return Err(invalid("sizes", format!("each size once, got {:?}", self.sizes)));
        }
        let w = &self.ensemble.size_weights;
        if !w.is_empty() && (w.len() != self.sizes.len() || w.iter().any(|&x| !(x > 0.0 && x.is_finite()))) {
            return Err(invalid(
                "ensemble.size_weights",
                format!("one positive weight per size of {:?}, got {w:?}", self.sizes),
            ));
        }
        if self.folds < 1 {
            return Err(invalid("folds", "at least 1 (1: a full-data fit, no validation)"));
        }
        if self.thresholds_from.is_some() && self.folds != 1 {
            return Err(invalid(
                "thresholds_from",
                "only for a full-data fit (folds = 1); a k-fold run searches its thresholds on its out-of-fold predictions",
            ));
        }
        if let Some(f) = self.fold {
            if f >= self.folds {
                return Err(invalid(
                    "fold",
                    format!("must be below folds ({}), got {f}", self.folds),
                ));
            }
        }
        if self.epochs == 0 {
            return Err(invalid("epochs", "at least 1"));
        }
        let mut organs = self.organs.clone();
        organs.sort_unstable();
        organs.dedup();
        if organs.len() != self.organs.len() {
            return Err(invalid("organs", "each organ once"));
        }
        if self.batch == 0 {
            return Err(invalid("batch", "at least 1"));
        }
        self.optim.validate()?;
        self.ensemble.validate()?;
        if !(self.pseudo_weight >= 0.0 && self.pseudo_weight.is_finite()) {
            return Err(invalid(
                "pseudo_weight",
                format!("a weight ≥ 0, got {}", self.pseudo_weight),
            ));
        }
        if let Some([lo, hi]) = self.pseudo_unsure {
            if !(0.0 <= lo && lo < hi && hi <= 1.0) {
                return Err(invalid(
                    "pseudo_unsure",
                    format!("[lo, hi] with 0 ≤ lo < hi ≤ 1, got [{lo}, {hi}]"),
                ));
            }
        }
        self.sampling.validate()?;
        if self.sampling.pixel_size.is_some() && !self.sizes.is_empty() && self.sampling.mode == SamplingMode::Crops {
            return Err(invalid(
                "sampling.pixel_size",
                "not with several sizes (the manifest scales every group by one reference size); use sampling.scale",
            ));
        }
        self.loss.validate()?;
        self.augment.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_partial_files_take_defaults() {
        let mut c = TrainConfig {
            data: "d".into(),
            out: "o".into(),
            ..TrainConfig::default()
        };
        c.loss.lovasz = 0.5;
        c.augment.stain_normalize_to = Some("slide1".into());
        c.sampling.organ_weights.insert("lung".into(), 2.0);
        c.loss.per_organ.insert("spleen".into(), 0.5);
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.sampling.weights().unwrap()[Organ::Lung.index()], 2.0);
        assert_eq!(back.sampling.weights().unwrap()[Organ::Kidney.index()], 1.0);
        assert_eq!(back.loss.organ_factors().unwrap()[Organ::Spleen.index()], 0.5);
        let partial: TrainConfig = toml::from_str("epochs = 3\n[optim]\nlr = 0.01\n").unwrap();
        assert_eq!(partial.sampling.weights(), None, "every slide once per pass by default");
        assert_eq!(partial.loss.organ_factors(), None);
        assert_eq!(partial.epochs, 3);
        assert_eq!(partial.optim.lr, 0.01);
        assert_eq!(partial.optim.warmup_steps, OptimConfig::default().warmup_steps);
    }

    #[test]
    fn typos_and_bad_values_are_refused_by_name() {
        let err = toml::from_str::<TrainConfig>("epoch = 3").unwrap_err().to_string();
        assert!(err.contains("epoch"), "{err}");
        let base = TrainConfig {
            data: "d".into(),
            out: "o".into(),
            ..TrainConfig::default()
        };
        assert!(base.validate().is_ok());
        let bad = [
            TrainConfig {
                size: 100,
                ..base.clone()
            },
            TrainConfig {
                folds: 0,
                ..base.clone()
            },
            TrainConfig {
                fold: Some(5),
                ..base.clone()
            },
            TrainConfig {
                sizes: vec![256, 300],
                ..base.clone()
            },
            TrainConfig {
                sizes: vec![256, 256],
                ..base.clone()
            },
            TrainConfig {
                sizes: vec![256, 512],
                ensemble: EnsembleConfig {
                    size_weights: vec![1.0],
                    ..EnsembleConfig::default()
                },
                ..base.clone()
            },
        ];
        let mut liver = base.clone();
        liver.sampling.organ_weights.insert("liver".into(), 1.0);
        let mut negative = base.clone();
        negative.loss.per_organ.insert("lung".into(), -1.0);
        let range = |lo, hi| {
            let mut c = base.clone();
            c.augment.pixel_size_range = [lo, hi];
            c
        };
        let bad = [bad.as_slice(), &[liver, negative, range(0.0, 2.0), range(2.0, 0.5)]].concat();
        let fields = [
            "size",
            "folds",
            "fold",
            "sizes",
            "sizes",
            "ensemble.size_weights",
            "sampling.organ_weights",
            "loss.per_organ",
            "augment.pixel_size_range",
            "augment.pixel_size_range",
        ];
        assert_eq!(bad.len(), fields.len());
        for (c, field) in bad.iter().zip(fields) {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn names_are_read_into_their_types_and_written_back_as_given() {
        let text = "arch = \"fpn-resnet18\"\nnorm = \"pm1\"\ndevice = \"cuda\"\nprecision = \"bf16\"\n[ensemble]\ntta = \"d4\"\n";
        let c: TrainConfig = toml::from_str(text).unwrap();
        assert_eq!(c.arch.to_string(), "fpn-resnet18");
        assert_eq!(c.norm, Norm::Pm1);
        assert_eq!(c.device, DeviceSpec::Cuda(None));
        assert_eq!(c.precision, Precision::Bf16);
        assert_eq!(c.ensemble.tta, ftu_formats::tta::TtaMode::D4);
        let saved = c.to_toml();
        for line in [
            "arch = \"fpn-resnet18\"",
            "norm = \"pm1\"",
            "device = \"cuda\"",
            "precision = \"bf16\"",
            "tta = \"d4\"",
        ] {
            assert!(saved.contains(line), "{line} in\n{saved}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_their_key_and_line() {
        for (text, key, expected) in [
            ("norm = \"zscore\"", "norm", "imagenet, unit or pm1"),
            ("device = \"gpu\"", "device", "cpu, cuda or cuda:N"),
            ("device = \"cuda:x\"", "device", "cpu, cuda or cuda:N"),
            ("precision = \"f8\"", "precision", "expected f32, bf16 or f16"),
            ("arch = \"unet-resnet99\"", "arch", "resnet99"),
            (
                "[ensemble]\ntta = \"FLIPS\"",
                "ensemble.tta",
                "none, hflip, flips or d4",
            ),
        ] {
            let err = toml::from_str::<TrainConfig>(&format!("epochs = 2\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{key}: ")) && err.contains(expected),
                "{text}: {err}"
            );
            assert!(err.contains("line 2") || err.contains("line 3"), "{text}: {err}");
        }
    }
}
