//! The manifest file as written: one serde type that reads and writes `manifest.toml`. The
//! trainer writes it, the bundle rewrites its model paths, and [`super::Manifest`] checks it.
//! Every field the file may hold is here, unchecked; absent optional fields stay absent when
//! written back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("manifest {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("manifest {path}, {field}: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("cannot write manifest {path}: {message}")]
    Write { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pixel_size: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_size: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tta: Option<TtaFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<toml::Table>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tissue: Option<TissueFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postprocess: Option<BTreeMap<String, PostprocessFile>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaFile>,
    #[serde(default)]
    pub group: Vec<GroupFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_search: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tf32: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TissueFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_fraction: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostprocessFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_area_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_area_um2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_hole_px: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_hole_um2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dilate_px: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erode_px: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtaFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scales: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
    #[serde(default)]
    pub model: Vec<ModelFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub norm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organs: Option<Vec<String>>,
}

/// Which model output holds the mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutputRef {
    Index(usize),
    Name(String),
}

impl ManifestFile {
    /// Reads `path` (unchecked: see [`super::Manifest::load`]).
    pub fn read(path: &Path) -> Result<ManifestFile, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ManifestError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        ManifestFile::parse(&text, path)
    }

    /// Parses manifest text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ManifestFile, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The TOML text, with `comment` (any number of lines) on top as `#` lines.
    pub fn to_toml(&self, comment: &str) -> Result<String, toml::ser::Error> {
        let mut text: String = comment.lines().map(|l| format!("# {l}\n")).collect();
        text.push_str(&toml::to_string_pretty(self)?);
        Ok(text)
    }

    /// Writes the manifest to `path` atomically (a temp file renamed over it).
    pub fn write(&self, path: &Path, comment: &str) -> Result<(), ManifestError> {
        let write_error = |message: String| ManifestError::Write {
            path: path.to_path_buf(),
            message,
        };
        let text = self.to_toml(comment).map_err(|e| write_error(e.to_string()))?;
        write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes())).map_err(|e| write_error(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> ManifestFile {
        let mut thresholds = toml::Table::new();
        thresholds.insert("default".into(), toml::Value::Float(0.4));
        thresholds.insert("kidney".into(), toml::Value::Float(0.55));
        let mut hpa = toml::Table::new();
        hpa.insert("lung".into(), toml::Value::Float(0.2));
        thresholds.insert("hpa".into(), toml::Value::Table(hpa));
        ManifestFile {
            target_pixel_size: Some(0.4),
            reference_size: Some(3000.0),
            tta: Some(TtaFile {
                mode: Some("flips".into()),
                scales: Some(vec![1.0, 1.25]),
            }),
            thresholds: Some(thresholds),
            tissue: Some(TissueFile {
                detect: Some(true),
                min_fraction: Some(0.05),
            }),
            postprocess: Some(BTreeMap::from([(
                "kidney".to_string(),
                PostprocessFile {
                    min_area_um2: Some(100.0),
                    dilate_px: Some(2),
                    ..Default::default()
                },
            )])),
            cuda: Some(CudaFile {
                conv_search: Some("heuristic".into()),
                memory_limit_mib: Some(4096),
                tf32: Some(false),
            }),
            group: vec![
                GroupFile {
                    size: 512,
                    weight: Some(2.0),
                    mode: Some("tiles".into()),
                    overlap: Some(0.25),
                    batch: Some(8),
                    model: vec![ModelFile {
                        path: "a.onnx".into(),
                        norm: Some("imagenet".into()),
                        output: Some(OutputRef::Name("logits".into())),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                GroupFile {
                    size: 256,
                    model: vec![ModelFile {
                        path: "sub/b.onnx".into(),
                        weight: Some(0.5),
                        mean: Some(vec![1.0, 2.0, 3.0]),
                        std: Some(vec![4.0, 5.0, 6.0]),
                        channels: Some("bgr".into()),
                        output: Some(OutputRef::Index(1)),
                        activation: Some("softmax".into()),
                        channel: Some(1),
                        organs: Some(vec!["lung".into(), "spleen".into()]),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn a_written_manifest_reads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.toml");
        let manifest = full();
        manifest.write(&path, "first line\nsecond line").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# first line\n# second line\n"), "{text}");
        assert!(!text.contains("scale ="), "absent fields stay absent:\n{text}");
        assert_eq!(ManifestFile::read(&path).unwrap(), manifest);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = ManifestFile::parse("[[group]]\nsize = 256\nsizes = 3\n", Path::new("m.toml")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("m.toml") && message.contains("sizes"), "{message}");
    }
}
