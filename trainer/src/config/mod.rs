//! The training configuration: every option of `ftu-train train`, readable from a TOML file
//! (command-line flags win), saved resolved as RUN/config.toml.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ftu_formats::Organ;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config {path}: {cause}")]
    Parse { path: PathBuf, cause: toml::de::Error },
    #[error("config: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// One option that differs between two configs: its key, and the value in each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub key: String,
    pub ours: String,
    pub theirs: String,
}

/// A config as `key.sub = value` pairs (values as TOML writes them).
fn flatten(c: &TrainConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) if !t.is_empty() => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    let value = toml::Value::try_from(c).expect("the config serialises");
    walk("", &value, &mut out);
    out
}

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
    pub arch: String,
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
    pub norm: String,
    /// A timm / Hugging Face safetensors file for the encoder.
    pub pretrained: Option<PathBuf>,
    /// The encoder's parameters do not change for this many epochs.
    pub freeze_encoder_epochs: usize,
    pub organ_head: bool,
    pub pixel_size_head: bool,
    pub deep_supervision: bool,
    /// Validation overlays written each epoch (per fold).
    pub overlays: usize,
    pub device: String,
    /// Convolutions and matmuls in f32, bf16 or f16 (mixed precision: f32 weights, BatchNorm
    /// statistics and losses; f16 with dynamic loss scaling). Export stays f32.
    pub precision: String,
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
            arch: "unet-resnet34".into(),
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
            norm: "imagenet".into(),
            pretrained: None,
            freeze_encoder_epochs: 0,
            organ_head: false,
            pixel_size_head: false,
            deep_supervision: false,
            overlays: 4,
            device: "cpu".into(),
            precision: "f32".into(),
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

/// How a training slide becomes a model input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMode {
    /// The whole slide resized to `size`² (the competition's 3000² slides).
    #[default]
    Resize,
    /// Windows of `size`² cut at a fixed scale (whole-slide images of any size); validated by
    /// tiling each validation slide as `ftu-infer` does, and exported as a tiled group.
    Crops,
}

/// Which training slides an epoch draws, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub mode: SamplingMode,
    /// Draw an organ first (by `organ_weights`, equal for organs not listed), then the next
    /// slide of that organ; else (the default) every training slide once per shuffled pass.
    /// Setting `organ_weights` turns it on.
    pub by_organ: bool,
    /// Organ name → relative share of the draws.
    pub organ_weights: BTreeMap<String, f64>,
    /// Crops: model pixels per slide pixel (1 = the slide's own scale; 0.25 reads a window of
    /// 4·size slide pixels), unless `pixel_size` is set.
    pub scale: f64,
    /// Crops: the µm per model pixel to train at; each slide's scale is then its `pixel_size`
    /// over this.
    pub pixel_size: Option<f64>,
    /// Crops: the probability that a crop is placed around a pixel of an FTU (drawn uniformly
    /// from the slide's FTU pixels); else it is placed uniformly and redrawn (up to 10 times)
    /// while less than `min_tissue` of it is tissue.
    pub p_ftu: f64,
    /// Crops: the least tissue fraction (the engine's saturation detector) of a random crop.
    pub min_tissue: f64,
    /// Crops: window overlap of the validation tiling and of the exported tiled group.
    pub overlap: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            mode: SamplingMode::Resize,
            by_organ: false,
            organ_weights: BTreeMap::new(),
            scale: 1.0,
            pixel_size: None,
            p_ftu: 0.5,
            min_tissue: 0.2,
            overlap: 0.25,
        }
    }
}

impl SamplingConfig {
    /// Each organ's weight by [`Organ::index`], when sampling by organ.
    pub fn weights(&self) -> Option<[f64; 5]> {
        (self.by_organ || !self.organ_weights.is_empty()).then(|| per_organ(&self.organ_weights).expect("validated"))
    }
}

/// A table of organ name → weight as an array by [`Organ::index`]; organs not named weigh 1.
fn per_organ(table: &BTreeMap<String, f64>) -> Result<[f64; 5], String> {
    let mut out = [1.0; 5];
    for (name, &w) in table {
        let organ: Organ = name
            .parse()
            .map_err(|e: ftu_formats::organ::UnknownOrgan| e.to_string())?;
        if !(w >= 0.0 && w.is_finite()) {
            return Err(format!("{name}: a weight ≥ 0, got {w}"));
        }
        out[organ.index()] = w;
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warmup from 0, in optimiser steps; then cosine decay to `min_lr`.
    pub warmup_steps: usize,
    /// Batches whose gradients are summed before one optimiser step.
    pub accumulate: usize,
    /// Global gradient-norm clip; none when 0.
    pub clip_norm: f64,
    /// Exponential moving average of the weights (validated and exported); none when 0.
    pub ema: f64,
    /// Before each validation, BatchNorm's running statistics are set to the average over
    /// this many training batches ("precise BN"); none when 0.
    pub bn_recalibrate: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 3e-3,
            min_lr: 1e-5,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 10,
            accumulate: 1,
            clip_norm: 1.0,
            ema: 0.0,
            bn_recalibrate: 4,
        }
    }
}

/// Weights of the loss terms; a term with weight 0 is not computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub bce: f64,
    pub dice: f64,
    pub tversky: f64,
    pub tversky_alpha: f64,
    pub tversky_beta: f64,
    pub focal: f64,
    pub focal_gamma: f64,
    pub lovasz: f64,
    /// Weight of each deep-supervision head's loss (the same mix at its resolution).
    pub deep_supervision: f64,
    /// Organ-class cross-entropy (models with an organ head).
    pub organ: f64,
    /// Pixel-size mean squared error in µm (models with a pixel-size head).
    pub pixel_size: f64,
    /// Organ name → factor on the segmentation loss of its slides (1 for organs not listed).
    pub per_organ: BTreeMap<String, f64>,
}

impl LossConfig {
    /// Each organ's loss factor by [`Organ::index`], when any is set.
    pub fn organ_factors(&self) -> Option<[f64; 5]> {
        (!self.per_organ.is_empty()).then(|| per_organ(&self.per_organ).expect("validated"))
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            bce: 1.0,
            dice: 1.0,
            tversky: 0.0,
            tversky_alpha: 0.3,
            tversky_beta: 0.7,
            focal: 0.0,
            focal_gamma: 2.0,
            lovasz: 0.0,
            deep_supervision: 0.2,
            organ: 0.1,
            pixel_size: 0.1,
            per_organ: BTreeMap::new(),
        }
    }
}

/// Each augmentation's probability `p_*` and strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    pub p_hflip: f64,
    pub p_vflip: f64,
    pub p_rot90: f64,
    pub p_affine: f64,
    /// Scale factor drawn from [1 − scale, 1 + scale].
    pub scale: f64,
    /// Rotation in degrees, from [−rotate, rotate].
    pub rotate: f64,
    /// Shift as a fraction of the side, from [−shift, shift].
    pub shift: f64,
    pub p_hsv: f64,
    /// Hue shift in degrees; saturation and value factors from [1 − s, 1 + s].
    pub hue: f64,
    pub saturation: f64,
    pub value: f64,
    pub p_brightness_contrast: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub p_gamma: f64,
    /// Gamma from [1 − gamma, 1 + gamma].
    pub gamma: f64,
    pub p_noise: f64,
    /// Noise standard deviation on the 0–1 scale.
    pub noise: f64,
    pub p_blur: f64,
    /// Largest Gaussian blur sigma in pixels.
    pub blur: f64,
    pub p_stain: f64,
    /// HED stain jitter (colour deconvolution): each stain's optical density c becomes c·α + β,
    /// α from [1 − stain, 1 + stain], β from [−stain, stain].
    pub stain: f64,
    /// Macenko stain normalisation towards this training slide id (every slide, always).
    pub stain_normalize_to: Option<String>,
    /// HPA slides rescaled by 0.4 / hubmap_pixel_size[organ] with this probability, so the
    /// model sees the scale of HuBMAP's scans (the competition's test set). Not applied in crops
    /// mode with a target `pixel_size`: those crops are already at one physical scale.
    pub p_pixel_size: f64,
    /// The pixel-size factor is clamped to [lo, hi]: prostate's 6.263 µm would shrink HPA tissue
    /// 16-fold, and a slide resized whole to `size`² keeps no FTU at that factor.
    pub pixel_size_range: [f64; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            p_hflip: 0.5,
            p_vflip: 0.5,
            p_rot90: 0.5,
            p_affine: 0.5,
            scale: 0.2,
            rotate: 30.0,
            shift: 0.1,
            p_hsv: 0.5,
            hue: 10.0,
            saturation: 0.3,
            value: 0.2,
            p_brightness_contrast: 0.5,
            brightness: 0.2,
            contrast: 0.2,
            p_gamma: 0.2,
            gamma: 0.2,
            p_noise: 0.1,
            noise: 0.02,
            p_blur: 0.1,
            blur: 1.0,
            p_stain: 0.5,
            stain: 0.15,
            stain_normalize_to: None,
            p_pixel_size: 0.5,
            pixel_size_range: [0.5, 2.0],
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all (validation, tests).
    pub fn none() -> AugmentConfig {
        AugmentConfig {
            p_hflip: 0.0,
            p_vflip: 0.0,
            p_rot90: 0.0,
            p_affine: 0.0,
            p_hsv: 0.0,
            p_brightness_contrast: 0.0,
            p_gamma: 0.0,
            p_noise: 0.0,
            p_blur: 0.0,
            p_stain: 0.0,
            p_pixel_size: 0.0,
            stain_normalize_to: None,
            ..AugmentConfig::default()
        }
    }
}

/// What goes into RUN/manifest.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnsembleConfig {
    /// Fold weights, and with several sizes the sizes' group weights, proportional to their
    /// full-resolution out-of-fold Dice (else equal).
    pub weight_by_dice: bool,
    /// With several sizes: each size's group weight, in the order of `sizes` (overrides
    /// `weight_by_dice` for the groups).
    pub size_weights: Vec<f64>,
    /// ftu-infer's TTA mode for the manifest (none, hflip, flips, d4).
    pub tta: String,
    /// Threshold search grid: from, to (inclusive), step.
    pub threshold_from: f64,
    pub threshold_to: f64,
    pub threshold_step: f64,
}

impl Default for EnsembleConfig {
    fn default() -> Self {
        EnsembleConfig {
            weight_by_dice: false,
            size_weights: Vec::new(),
            tta: "flips".into(),
            threshold_from: 0.05,
            threshold_to: 0.95,
            threshold_step: 0.05,
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
    /// a saved config means the same files from anywhere.
    pub fn with_absolute_paths(mut self) -> Result<TrainConfig, ConfigError> {
        let absolute = |field: &str, p: &Path| {
            std::path::absolute(p).map_err(|e| invalid(field, format!("cannot make {} absolute: {e}", p.display())))
        };
        self.data = absolute("data", &self.data)?;
        self.out = absolute("out", &self.out)?;
        if let Some(p) = &self.pretrained {
            self.pretrained = Some(absolute("pretrained", p)?);
        }
        if let Some(p) = &self.pseudo {
            self.pseudo = Some(absolute("pseudo", p)?);
        }
        if let Some(p) = &self.thresholds_from {
            self.thresholds_from = Some(absolute("thresholds_from", p)?);
        }
        Ok(self)
    }

    /// The config as `key.sub = value` pairs, values as TOML writes them (`optim.lr` → `0.003`).
    pub fn flattened(&self) -> BTreeMap<String, String> {
        flatten(self)
    }

    /// Every option whose value differs between `self` and `other`, by its key in config.toml
    /// (`optim.lr`), with both values as TOML writes them; in key order.
    pub fn differences(&self, other: &TrainConfig) -> Vec<Difference> {
        let (a, b) = (flatten(self), flatten(other));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| Difference {
                key: k.clone(),
                ours: a.get(k).cloned().unwrap_or_else(|| "(unset)".into()),
                theirs: b.get(k).cloned().unwrap_or_else(|| "(unset)".into()),
            })
            .collect()
    }

    /// Checks what serde cannot: ranges and combinations.
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
        if self.optim.accumulate == 0 {
            return Err(invalid("optim.accumulate", "at least 1"));
        }
        if !(0.0..1.0).contains(&self.optim.ema) {
            return Err(invalid(
                "optim.ema",
                format!("a decay in [0, 1), got {}", self.optim.ema),
            ));
        }
        if !["imagenet", "unit", "pm1"].contains(&self.norm.as_str()) {
            return Err(invalid("norm", format!("imagenet, unit or pm1, got {:?}", self.norm)));
        }
        if !["none", "hflip", "flips", "d4"].contains(&self.ensemble.tta.as_str()) {
            return Err(invalid(
                "ensemble.tta",
                format!("none, hflip, flips or d4, got {:?}", self.ensemble.tta),
            ));
        }
        let e = &self.ensemble;
        if !(e.threshold_step > 0.0
            && e.threshold_from <= e.threshold_to
            && e.threshold_from >= 0.0
            && e.threshold_to <= 1.0)
        {
            return Err(invalid("ensemble.threshold_*", "need 0 ≤ from ≤ to ≤ 1 and step > 0"));
        }
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
        per_organ(&self.sampling.organ_weights).map_err(|e| invalid("sampling.organ_weights", e))?;
        let c = &self.sampling;
        if !(c.scale > 0.0 && c.scale <= 16.0) {
            return Err(invalid(
                "sampling.scale",
                format!("a factor in (0, 16], got {}", c.scale),
            ));
        }
        if let Some(p) = c.pixel_size {
            if !(p > 0.0 && p.is_finite()) {
                return Err(invalid("sampling.pixel_size", format!("µm per pixel > 0, got {p}")));
            }
            if !self.sizes.is_empty() && c.mode == SamplingMode::Crops {
                return Err(invalid(
                    "sampling.pixel_size",
                    "not with several sizes (the manifest scales every group by one reference size); use sampling.scale",
                ));
            }
        }
        for (name, p) in [("p_ftu", c.p_ftu), ("min_tissue", c.min_tissue)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(&format!("sampling.{name}"), format!("in [0, 1], got {p}")));
            }
        }
        if !(0.0..=0.95).contains(&c.overlap) {
            return Err(invalid("sampling.overlap", format!("in [0, 0.95], got {}", c.overlap)));
        }
        per_organ(&self.loss.per_organ).map_err(|e| invalid("loss.per_organ", e))?;
        let l = &self.loss;
        if l.bce + l.dice + l.tversky + l.focal + l.lovasz <= 0.0 {
            return Err(invalid(
                "loss",
                "at least one of bce, dice, tversky, focal, lovasz must be > 0",
            ));
        }
        for (name, p) in [
            ("p_hflip", self.augment.p_hflip),
            ("p_vflip", self.augment.p_vflip),
            ("p_rot90", self.augment.p_rot90),
            ("p_affine", self.augment.p_affine),
            ("p_hsv", self.augment.p_hsv),
            ("p_brightness_contrast", self.augment.p_brightness_contrast),
            ("p_gamma", self.augment.p_gamma),
            ("p_noise", self.augment.p_noise),
            ("p_blur", self.augment.p_blur),
            ("p_stain", self.augment.p_stain),
            ("p_pixel_size", self.augment.p_pixel_size),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(&format!("augment.{name}"), format!("a probability, got {p}")));
            }
        }
        let [lo, hi] = self.augment.pixel_size_range;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(invalid(
                "augment.pixel_size_range",
                format!("[lo, hi] with 0 < lo <= hi, got [{lo}, {hi}]"),
            ));
        }
        if !["cpu", "cuda"].contains(&self.device.as_str()) && !self.device.starts_with("cuda:") {
            return Err(invalid("device", format!("cpu, cuda or cuda:N, got {:?}", self.device)));
        }
        self.precision
            .parse::<ftu_models::Precision>()
            .map_err(|m| invalid("precision", m))?;
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
                norm: "zscore".into(),
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
            "norm",
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
}
