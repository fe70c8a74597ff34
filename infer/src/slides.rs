//! Slides given as files, with no test.csv: `predict --slides PATH… --organ O`. Each file (or
//! each slide file in a folder) becomes a row: the id is its file name without the extension,
//! the size comes from the file, and the µm per pixel from the file's own metadata
//! ([`ftu_formats::slide::meta`]) unless `--pixel-size` gives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ftu_formats::schema::TestRow;
use ftu_formats::slide::meta::{read_meta, PixelSizeSource};
use ftu_formats::slide::sniff::sniff_file;
use ftu_formats::slide::SlideError;
use ftu_formats::{DataSource, Organ};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SlidesError {
    #[error("cannot list {path}: {cause}")]
    List { path: PathBuf, cause: std::io::Error },
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    #[error("no slide files (TIFF, SVS, PNG, JPEG) in {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Empty(Vec<PathBuf>),
    #[error("two slides would both have the id {id}: {first} and {second} (rename one)")]
    DuplicateId {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error(transparent)]
    Meta(#[from] SlideError),
    #[error("{path}: the file states no µm per pixel (no Aperio MPP, OME-XML PhysicalSizeX or TIFF resolution tags); give it with --pixel-size")]
    NoPixelSize { path: PathBuf },
}

/// `--pixel-size`: from each file, or one value for every slide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PixelSizeArg {
    Auto,
    Um(f64),
}

impl std::str::FromStr for PixelSizeArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(PixelSizeArg::Auto);
        }
        match s.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(PixelSizeArg::Um(v)),
            _ => Err(format!("auto or µm per pixel (> 0), got {s:?}")),
        }
    }
}

/// The slides to predict, in the order given (a folder's files sorted by name).
#[derive(Debug, Clone)]
pub struct SlideList {
    pub rows: Vec<TestRow>,
    pub paths: HashMap<String, PathBuf>,
    /// Where each slide's pixel size came from: "given", or the file's field.
    pub pixel_size_from: HashMap<String, String>,
}

/// A row of the CSV `predict --slides` writes: what each slide was taken to be, and its mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideResultRow {
    pub id: String,
    pub organ: Organ,
    pub pixel_size: f64,
    pub height: u32,
    pub width: u32,
    pub rle: String,
}

impl SlideList {
    /// Files as given; folders' slide files (by content, not extension), sorted by name.
    pub fn from_paths(
        paths: &[PathBuf],
        organ: Organ,
        data_source: DataSource,
        pixel_size: PixelSizeArg,
    ) -> Result<SlideList, SlidesError> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|cause| SlidesError::List { path: p.clone(), cause })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.is_file() && is_slide(f))
                    .collect();
                inside.sort();
                files.extend(inside);
            } else if p.is_file() {
                files.push(p.clone());
            } else {
                return Err(SlidesError::NotFound(p.clone()));
            }
        }
        if files.is_empty() {
            return Err(SlidesError::Empty(paths.to_vec()));
        }
        let mut list = SlideList {
            rows: Vec::new(),
            paths: HashMap::new(),
            pixel_size_from: HashMap::new(),
        };
        for file in files {
            let id = slide_id(&file);
            if let Some(first) = list.paths.get(&id) {
                return Err(SlidesError::DuplicateId {
                    id,
                    first: first.clone(),
                    second: file,
                });
            }
            let meta = read_meta(&file)?;
            let (um, from) = match (pixel_size, meta.pixel_size) {
                (PixelSizeArg::Um(v), _) => (v, "given".to_string()),
                (PixelSizeArg::Auto, Some((v, source))) => (v, source_name(source).to_string()),
                (PixelSizeArg::Auto, None) => return Err(SlidesError::NoPixelSize { path: file }),
            };
            list.rows.push(TestRow {
                id: id.clone(),
                organ,
                data_source,
                img_height: meta.height as u32,
                img_width: meta.width as u32,
                pixel_size: um,
                tissue_thickness: 4.0,
            });
            list.pixel_size_from.insert(id.clone(), from);
            list.paths.insert(id, file);
        }
        Ok(list)
    }

    pub fn path(&self, id: &str) -> Option<&Path> {
        self.paths.get(id).map(PathBuf::as_path)
    }
}

fn source_name(source: PixelSizeSource) -> &'static str {
    match source {
        PixelSizeSource::Aperio => "Aperio MPP",
        PixelSizeSource::OmeXml => "OME-XML PhysicalSizeX",
        PixelSizeSource::ResolutionTags => "TIFF resolution tags",
        PixelSizeSource::OpenSlide => "OpenSlide openslide.mpp-x",
    }
}

/// A file ftu can read as a slide: TIFF, PNG or JPEG by its first bytes, or a format OpenSlide
/// recognises (when it is installed).
pub fn is_slide(path: &Path) -> bool {
    matches!(sniff_file(path), Ok((_, Some(_)))) || ftu_formats::slide::openslide::vendor(path).is_some()
}

/// The file name without its extension(s): `a.ome.tif` → `a`, `b.svs` → `b`.
fn slide_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    for ext in [".ome.tiff", ".ome.tif"] {
        if lower.ends_with(ext) {
            return name[..name.len() - ext.len()].to_string();
        }
    }
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_string(),
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::slide::write::{write_tiff_pages_with, Chunking, Compression, Samples, TiffMeta, TiffSpec};

    fn tiff(path: &Path, w: u32, h: u32, meta: TiffMeta) {
        let spec = TiffSpec {
            width: w,
            height: h,
            samples: Samples::Rgb8,
            chunking: Chunking::Strips { rows: 16 },
            compression: Compression::None,
            bigtiff: false,
        };
        write_tiff_pages_with(path, &[spec], &meta, |_, r, buf| {
            buf.resize(buf.len() + r.width as usize * r.height as usize * 3, 90);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn ids_sizes_and_pixel_sizes_come_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tiff(
            &d.join("b.svs"),
            40,
            30,
            TiffMeta {
                description: Some("Aperio Image Library|MPP = 0.25|AppMag = 40".into()),
                pixel_size: None,
            },
        );
        tiff(
            &d.join("a.ome.tif"),
            20,
            10,
            TiffMeta {
                description: None,
                pixel_size: Some(0.5),
            },
        );
        std::fs::write(d.join("notes.txt"), "not a slide").unwrap();
        let list =
            SlideList::from_paths(&[d.to_path_buf()], Organ::Kidney, DataSource::Hpa, PixelSizeArg::Auto).unwrap();
        let ids: Vec<&str> = list.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            (list.rows[1].img_width, list.rows[1].img_height, list.rows[1].pixel_size),
            (40, 30, 0.25)
        );
        assert!((list.rows[0].pixel_size - 0.5).abs() < 1e-6);
        assert_eq!(list.pixel_size_from["b"], "Aperio MPP");
        assert_eq!(list.path("a"), Some(d.join("a.ome.tif").as_path()));

        // Given, it wins over the file.
        let list = SlideList::from_paths(
            &[d.join("b.svs")],
            Organ::Lung,
            DataSource::Hubmap,
            PixelSizeArg::Um(0.8),
        )
        .unwrap();
        assert_eq!((list.rows[0].pixel_size, list.rows[0].organ), (0.8, Organ::Lung));
    }

    #[test]
    fn a_slide_without_a_pixel_size_or_a_clashing_id_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tiff(&d.join("plain.tif"), 8, 8, TiffMeta::default());
        let err = SlideList::from_paths(
            &[d.join("plain.tif")],
            Organ::Kidney,
            DataSource::Hpa,
            PixelSizeArg::Auto,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("plain.tif") && err.contains("--pixel-size"), "{err}");
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::copy(d.join("plain.tif"), sub.join("plain.tiff")).unwrap();
        let err = SlideList::from_paths(
            &[d.join("plain.tif"), sub],
            Organ::Kidney,
            DataSource::Hpa,
            PixelSizeArg::Um(0.4),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("id plain"), "{err}");
        let err = SlideList::from_paths(
            &[d.join("missing.svs")],
            Organ::Kidney,
            DataSource::Hpa,
            PixelSizeArg::Auto,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.svs"), "{err}");
        assert_eq!("auto".parse::<PixelSizeArg>(), Ok(PixelSizeArg::Auto));
        assert!("-1".parse::<PixelSizeArg>().is_err());
    }
}
