//! Loading safetensors into a model: a pretrained encoder from a timm or Hugging Face file, or a
//! whole ftu checkpoint. Every missing, unexpected and mis-shaped key is reported by name, and
//! nothing is changed unless the file fits.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{ModelError, Result, Segmenter};

#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mis_shaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Classifier keys skipped because the caller allowed it, and `num_batches_tracked` counters.
    pub ignored: Vec<String>,
}

impl LoadReport {
    fn fits(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mis_shaped.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in &self.missing {
            writeln!(f, "  missing: {name}")?;
        }
        for name in &self.unexpected {
            writeln!(f, "  unexpected: {name}")?;
        }
        for (name, want, got) in &self.mis_shaped {
            writeln!(f, "  mis-shaped: {name}: the model has {want:?}, the file {got:?}")?;
        }
        write!(f, "  {} loaded, {} ignored", self.loaded, self.ignored.len())
    }
}

/// What part of the model a file fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The encoder, from a pretrained classification file; with `ignore_classifier` its
    /// classifier keys (`fc.*`, `classifier.*`, …) are skipped, otherwise they are refused.
    Encoder { ignore_classifier: bool },
    /// Every parameter and buffer, from an ftu checkpoint.
    Full,
}

fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|cause| ModelError::ReadWeights {
        path: path.to_path_buf(),
        cause,
    })
}

/// Fills `model` from the safetensors file at `path`.
pub fn load(model: &Segmenter, path: &Path, scope: Scope) -> Result<LoadReport> {
    let file = read(path)?;
    let vars: HashMap<String, candle_core::Var> = model.store().named_vars().into_iter().collect();
    let targets: Vec<String> = match scope {
        Scope::Encoder { .. } => model.encoder_keys().to_vec(),
        Scope::Full => {
            let mut all: Vec<String> = vars.keys().cloned().collect();
            all.sort();
            all
        }
    };
    let mut report = LoadReport::default();
    let mut updates = Vec::new();
    for name in &targets {
        let var = &vars[name];
        match file.get(name) {
            None => report.missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => {
                report
                    .mis_shaped
                    .push((name.clone(), var.dims().to_vec(), t.dims().to_vec()))
            }
            // Files are read on the host; each value goes to its variable's dtype and device.
            Some(t) => updates.push((var, t.to_dtype(var.dtype())?.to_device(var.device())?)),
        }
    }
    let wanted: std::collections::HashSet<&String> = targets.iter().collect();
    let classifier = model.arch().encoder.classifier_prefixes();
    let mut extra: Vec<&String> = file.keys().filter(|k| !wanted.contains(k)).collect();
    extra.sort();
    for name in extra {
        // BatchNorm's step counter, and buffers older timm files carry that follow from the
        // architecture (Swin's relative position index and shifted-window masks).
        let is_counter = ["num_batches_tracked", "relative_position_index", "attn_mask"]
            .iter()
            .any(|b| name.ends_with(b));
        let is_classifier = classifier.iter().any(|p| name.starts_with(p));
        match scope {
            _ if is_counter => report.ignored.push(name.clone()),
            Scope::Encoder {
                ignore_classifier: true,
            } if is_classifier => report.ignored.push(name.clone()),
            _ => report.unexpected.push(name.clone()),
        }
    }
    if !report.fits() {
        return Err(ModelError::WeightsMismatch {
            path: path.to_path_buf(),
            arch: model.arch().name(),
            report: report.to_string(),
        });
    }
    for (var, value) in updates {
        var.set(&value)?;
        report.loaded += 1;
    }
    Ok(report)
}
