//! Slides given as files, with no test.csv: `predict --slides PATH… --organ O` (or
//! `--slides-meta CSV`). Each file (or each slide file in a folder) becomes a row: the id is its
//! file name without the extension, the size comes from the file, the organ (and µm per pixel)
//! from the slides-meta CSV's row for the id, else `--organ`; the µm per pixel from that row,
//! else the file's own metadata ([`ftu_formats::slide::meta`]), else `--pixel-size`.

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
    #[error(
        "{path}: the file states no µm per pixel (no Aperio MPP, OME-XML PhysicalSizeX or TIFF resolution tags); \
         give it in a --slides-meta row, or --pixel-size for every file that states none"
    )]
    NoPixelSize { path: PathBuf },
    #[error("{path}: no organ for slide {id}: give it a --slides-meta row, or --organ for every slide without one")]
    NoOrgan { id: String, path: PathBuf },
    #[error("{path}: {message}")]
    MetaCsv { path: PathBuf, message: String },
    #[error("{path}, row {row}: {message}")]
    MetaRow { path: PathBuf, row: usize, message: String },
}

/// `--pixel-size`: `auto` (none: a file that states none is an error), or the µm per pixel of
/// every file that states none.
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
    /// Where each slide's pixel size came from: `--slides-meta`, the file's field, `--pixel-size`.
    pub pixel_size_from: HashMap<String, String>,
    /// Files in the folders given that are not slides, left out (sorted by name).
    pub not_slides: Vec<PathBuf>,
    /// Ids of the slides-meta CSV that no slide file has.
    pub unmatched_meta: Vec<String>,
}

/// What each slide's row takes when the file does not say: `--slides-meta`'s rows by id, then
/// `--organ`, `--data-source` and `--pixel-size`.
#[derive(Debug, Clone)]
pub struct SlideDefaults {
    pub meta: Option<SlidesMeta>,
    pub organ: Option<Organ>,
    pub data_source: DataSource,
    pub pixel_size: PixelSizeArg,
}

/// `--slides-meta`: a CSV with columns `id` and `organ`, optionally `pixel_size` (µm; empty for
/// the file's own) and `data_source`; other columns are ignored, so a test.csv serves.
#[derive(Debug, Clone)]
pub struct SlidesMeta {
    pub path: PathBuf,
    /// In the file's order.
    rows: Vec<(String, MetaRow)>,
    index: HashMap<String, usize>,
}

#[derive(Debug, Clone, Copy)]
struct MetaRow {
    organ: Organ,
    pixel_size: Option<f64>,
    data_source: Option<DataSource>,
}

impl SlidesMeta {
    pub fn read(path: &Path) -> Result<SlidesMeta, SlidesError> {
        let csv_err = |message: String| SlidesError::MetaCsv {
            path: path.to_path_buf(),
            message,
        };
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| csv_err(e.to_string()))?;
        let headers = reader.headers().map_err(|e| csv_err(e.to_string()))?.clone();
        let column = |name: &str| headers.iter().position(|h| h == name);
        let (Some(id_at), Some(organ_at)) = (column("id"), column("organ")) else {
            return Err(csv_err(format!(
                "expected a header with id and organ (optionally pixel_size, data_source), found {}",
                headers.iter().collect::<Vec<_>>().join(",")
            )));
        };
        let (size_at, source_at) = (column("pixel_size"), column("data_source"));
        let mut rows: Vec<(String, MetaRow)> = Vec::new();
        let mut index = HashMap::new();
        for (i, record) in reader.records().enumerate() {
            let row = i + 2;
            let row_err = |message: String| SlidesError::MetaRow {
                path: path.to_path_buf(),
                row,
                message,
            };
            let record = record.map_err(|e| row_err(e.to_string()))?;
            let cell = |at: Option<usize>| at.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
            let id = cell(Some(id_at))
                .ok_or_else(|| row_err("the id is empty".into()))?
                .to_string();
            if let Some(first) = index.insert(id.clone(), rows.len()) {
                return Err(row_err(format!("id {id} is listed twice (first in row {})", first + 2)));
            }
            let organ = cell(Some(organ_at))
                .ok_or_else(|| row_err(format!("id {id} has no organ")))?
                .parse::<Organ>()
                .map_err(|e| row_err(e.to_string()))?;
            let pixel_size = match cell(size_at) {
                None => None,
                Some(v) => match v.parse::<f64>() {
                    Ok(um) if um > 0.0 && um.is_finite() => Some(um),
                    _ => {
                        return Err(row_err(format!(
                            "pixel_size `{v}`: expected µm per pixel (> 0) or empty"
                        )))
                    }
                },
            };
            let data_source = cell(source_at)
                .map(|v| v.parse::<DataSource>().map_err(|e| row_err(e.to_string())))
                .transpose()?;
            rows.push((
                id,
                MetaRow {
                    organ,
                    pixel_size,
                    data_source,
                },
            ));
        }
        Ok(SlidesMeta {
            path: path.to_path_buf(),
            rows,
            index,
        })
    }

    fn get(&self, id: &str) -> Option<&MetaRow> {
        self.index.get(id).map(|&i| &self.rows[i].1)
    }
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
    /// Files as given; folders' slide files (by content, not extension), sorted by name, their
    /// other files listed in `not_slides`.
    pub fn from_paths(paths: &[PathBuf], defaults: &SlideDefaults) -> Result<SlideList, SlidesError> {
        let mut files = Vec::new();
        let mut not_slides = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|cause| SlidesError::List { path: p.clone(), cause })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.is_file())
                    .collect();
                inside.sort();
                let (slides, others): (Vec<PathBuf>, Vec<PathBuf>) = inside.into_iter().partition(|f| is_slide(f));
                files.extend(slides);
                not_slides.extend(others);
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
            not_slides,
            unmatched_meta: Vec::new(),
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
            let listed = defaults.meta.as_ref().and_then(|m| m.get(&id));
            let Some(organ) = listed.map(|r| r.organ).or(defaults.organ) else {
                return Err(SlidesError::NoOrgan { id, path: file });
            };
            let meta = read_meta(&file)?;
            let (um, from) = match (listed.and_then(|r| r.pixel_size), meta.pixel_size, defaults.pixel_size) {
                (Some(v), _, _) => (v, "--slides-meta".to_string()),
                (None, Some((v, source)), _) => (v, source_name(source).to_string()),
                (None, None, PixelSizeArg::Um(v)) => (v, "--pixel-size".to_string()),
                (None, None, PixelSizeArg::Auto) => return Err(SlidesError::NoPixelSize { path: file }),
            };
            list.rows.push(TestRow {
                id: id.clone(),
                organ,
                data_source: listed.and_then(|r| r.data_source).unwrap_or(defaults.data_source),
                img_height: meta.height as u32,
                img_width: meta.width as u32,
                pixel_size: um,
                tissue_thickness: 4.0,
            });
            list.pixel_size_from.insert(id.clone(), from);
            list.paths.insert(id, file);
        }
        if let Some(meta) = &defaults.meta {
            list.unmatched_meta = meta
                .rows
                .iter()
                .filter(|(id, _)| !list.paths.contains_key(id))
                .map(|(id, _)| id.clone())
                .collect();
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
            SlideList::from_paths(&[d.to_path_buf()], &defaults(Some(Organ::Kidney), PixelSizeArg::Auto)).unwrap();
        let ids: Vec<&str> = list.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(list.not_slides, [d.join("notes.txt")], "listed, not silently dropped");
        assert_eq!(
            (list.rows[1].img_width, list.rows[1].img_height, list.rows[1].pixel_size),
            (40, 30, 0.25)
        );
        assert!((list.rows[0].pixel_size - 0.5).abs() < 1e-6);
        assert_eq!(list.pixel_size_from["b"], "Aperio MPP");
        assert_eq!(list.path("a"), Some(d.join("a.ome.tif").as_path()));

        // --pixel-size is only the fallback: the file's own wins.
        let list =
            SlideList::from_paths(&[d.join("b.svs")], &defaults(Some(Organ::Lung), PixelSizeArg::Um(0.8))).unwrap();
        assert_eq!((list.rows[0].pixel_size, list.rows[0].organ), (0.25, Organ::Lung));
    }

    fn defaults(organ: Option<Organ>, pixel_size: PixelSizeArg) -> SlideDefaults {
        SlideDefaults {
            meta: None,
            organ,
            data_source: DataSource::Hpa,
            pixel_size,
        }
    }

    #[test]
    fn a_slides_meta_csv_gives_organs_and_pixel_sizes_over_the_files_and_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let aperio = TiffMeta {
            description: Some("Aperio Image Library|MPP = 0.25|AppMag = 40".into()),
            pixel_size: None,
        };
        tiff(&d.join("a.svs"), 8, 8, aperio.clone());
        tiff(&d.join("b.svs"), 8, 8, aperio);
        tiff(&d.join("c.tif"), 8, 8, TiffMeta::default());
        let meta = d.join("meta.csv");
        std::fs::write(
            &meta,
            "id,organ,pixel_size,extra\na,lung,0.75,x\nc,spleen,,y\nz,kidney,,\n",
        )
        .unwrap();
        let with_meta = |organ: Option<Organ>, pixel_size| SlideDefaults {
            meta: Some(SlidesMeta::read(&meta).unwrap()),
            ..defaults(organ, pixel_size)
        };
        let list = SlideList::from_paths(
            &[d.to_path_buf()],
            &with_meta(Some(Organ::Prostate), PixelSizeArg::Um(0.5)),
        )
        .unwrap();
        let got: Vec<(&str, Organ, f64, &str)> = list
            .rows
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    r.organ,
                    r.pixel_size,
                    list.pixel_size_from[&r.id].as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", Organ::Lung, 0.75, "--slides-meta"),
                ("b", Organ::Prostate, 0.25, "Aperio MPP"),
                ("c", Organ::Spleen, 0.5, "--pixel-size"),
            ]
        );
        assert_eq!(list.unmatched_meta, ["z"]);
        // b has no row and there is no --organ: named.
        let err = SlideList::from_paths(&[d.to_path_buf()], &with_meta(None, PixelSizeArg::Um(0.5)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.svs") && err.contains("no organ") && err.contains("--organ"),
            "{err}"
        );

        for (text, want) in [
            ("name,organ\na,lung\n", "expected a header with id and organ"),
            ("id,organ\na,liver\n", "row 2"),
            ("id,organ,pixel_size\na,lung,-1\n", "pixel_size `-1`"),
            ("id,organ\na,lung\na,kidney\n", "id a is listed twice"),
        ] {
            std::fs::write(&meta, text).unwrap();
            let err = SlidesMeta::read(&meta).unwrap_err().to_string();
            assert!(err.contains("meta.csv") && err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_slide_without_a_pixel_size_or_a_clashing_id_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tiff(&d.join("plain.tif"), 8, 8, TiffMeta::default());
        let err = SlideList::from_paths(
            &[d.join("plain.tif")],
            &defaults(Some(Organ::Kidney), PixelSizeArg::Auto),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("plain.tif") && err.contains("--pixel-size"), "{err}");
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::copy(d.join("plain.tif"), sub.join("plain.tiff")).unwrap();
        let err = SlideList::from_paths(
            &[d.join("plain.tif"), sub],
            &defaults(Some(Organ::Kidney), PixelSizeArg::Um(0.4)),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("id plain"), "{err}");
        let err = SlideList::from_paths(
            &[d.join("missing.svs")],
            &defaults(Some(Organ::Kidney), PixelSizeArg::Auto),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("missing.svs"), "{err}");
        assert_eq!("auto".parse::<PixelSizeArg>(), Ok(PixelSizeArg::Auto));
        assert!("-1".parse::<PixelSizeArg>().is_err());
    }
}
