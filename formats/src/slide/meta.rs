//! What a slide file says about itself: size, pyramid levels, µm per pixel and objective power.
//! The pixel size comes from the first of: an Aperio `ImageDescription` (`|MPP = 0.2520|`),
//! OME-XML in the description (`PhysicalSizeX` with its unit), the TIFF resolution tags
//! (`XResolution` with `ResolutionUnit` inch or centimetre). A resolution that is no
//! microscope's (outside 0.01–100 µm per pixel, e.g. the 72 dpi image writers put by default) is
//! reported as not stated. Files that are no TIFF, PNG or JPEG go to OpenSlide (when installed).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::Serialize;
use tiff::decoder::Decoder;
use tiff::tags::Tag;

use super::error::{guarded, SlideError, SlideErrorKind};
use super::ifd::checked_decoder;
use super::region::{pyramid_levels, PyramidLevel, SlideSource};
use super::sniff::{sniff_file, Format};

/// µm per pixel a microscope slide can have; a stated value outside is ignored.
pub const PLAUSIBLE_PIXEL_SIZE: std::ops::RangeInclusive<f64> = 0.01..=100.0;

/// Where a slide's pixel size was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelSizeSource {
    /// `MPP = …` in an Aperio description.
    Aperio,
    /// `PhysicalSizeX` in OME-XML.
    OmeXml,
    /// `XResolution` and `ResolutionUnit`.
    ResolutionTags,
    /// OpenSlide's `openslide.mpp-x` (a format only OpenSlide reads).
    OpenSlide,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlideMeta {
    pub format: &'static str,
    pub width: usize,
    pub height: usize,
    /// Reduced-resolution pages of a pyramidal TIFF.
    pub levels: Vec<PyramidLevel>,
    /// µm per pixel (across), and where it was read.
    pub pixel_size: Option<(f64, PixelSizeSource)>,
    /// The scanner's objective magnification (Aperio `AppMag`, OME `NominalMagnification`).
    pub objective_power: Option<f64>,
    /// The first page's `ImageDescription`, when it has one.
    pub description: Option<String>,
}

/// Reads `path`'s metadata (decoding no pixels of a TIFF; PNG and JPEG headers only). A decoder
/// crate's panic on a malformed header is this file's error.
pub fn read_meta(path: &Path) -> Result<SlideMeta, SlideError> {
    guarded(|| Ok(meta_of(path))).map_err(|kind| kind.at(path))?
}

fn meta_of(path: &Path) -> Result<SlideMeta, SlideError> {
    let (magic, format) = sniff_file(path).map_err(|e| SlideErrorKind::Io(e).at(path))?;
    match format {
        Some(Format::Tiff) => tiff_meta(path),
        Some(f) => {
            let (width, height) = image::image_dimensions(path).map_err(|e| SlideErrorKind::Image(e).at(path))?;
            Ok(SlideMeta {
                format: if f == Format::Png { "PNG" } else { "JPEG" },
                width: width as usize,
                height: height as usize,
                levels: Vec::new(),
                pixel_size: None,
                objective_power: None,
                description: None,
            })
        }
        None if super::openslide::vendor(path).is_some() => openslide_meta(path),
        None => Err(SlideErrorKind::UnknownFormat { magic }.at(path)),
    }
}

/// A file only OpenSlide reads: its levels and properties (`openslide.mpp-x`,
/// `openslide.objective-power`).
fn openslide_meta(path: &Path) -> Result<SlideMeta, SlideError> {
    let o = std::sync::Arc::new(super::openslide::OpenSlide::open(path)?);
    let levels = SlideSource::OpenSlide(o.clone()).levels();
    Ok(SlideMeta {
        format: "OpenSlide",
        width: o.width,
        height: o.height,
        levels,
        pixel_size: o
            .pixel_size()
            .map(|v| (v, PixelSizeSource::OpenSlide))
            .filter(|(v, _)| PLAUSIBLE_PIXEL_SIZE.contains(v)),
        objective_power: o.objective_power(),
        description: o.property("openslide.comment"),
    })
}

fn tiff_meta(path: &Path) -> Result<SlideMeta, SlideError> {
    let err = |e: tiff::TiffError| SlideErrorKind::Tiff(e).at(path);
    let file = File::open(path).map_err(|e| SlideErrorKind::Io(e).at(path))?;
    let len = file.metadata().map_err(|e| SlideErrorKind::Io(e).at(path))?.len();
    let mut decoder = checked_decoder(BufReader::new(file), len).map_err(|kind| kind.at(path))?;
    let (width, height) = decoder.dimensions().map_err(err)?;
    let (width, height) = (width as usize, height as usize);
    let description = decoder
        .find_tag(Tag::ImageDescription)
        .ok()
        .flatten()
        .and_then(|v| v.into_string().ok());
    let from_tags = resolution_tags(&mut decoder);
    let text = description.as_deref().unwrap_or("");
    let pixel_size = aperio_field(text, "MPP")
        .map(|v| (v, PixelSizeSource::Aperio))
        .or_else(|| ome_pixel_size(text).map(|v| (v, PixelSizeSource::OmeXml)))
        .or_else(|| from_tags.map(|v| (v, PixelSizeSource::ResolutionTags)))
        .filter(|(v, _)| PLAUSIBLE_PIXEL_SIZE.contains(v));
    let objective_power = aperio_field(text, "AppMag").or_else(|| xml_attribute(text, "NominalMagnification"));
    Ok(SlideMeta {
        format: "TIFF",
        width,
        height,
        levels: pyramid_levels(path, width, height),
        pixel_size,
        objective_power,
        description,
    })
}

/// µm per pixel from `XResolution` (pixels per unit) and `ResolutionUnit` (2 inch, 3 cm); none
/// without a unit.
fn resolution_tags<R: std::io::Read + std::io::Seek>(decoder: &mut Decoder<R>) -> Option<f64> {
    use tiff::decoder::ifd::Value;
    let per_unit = match decoder.find_tag(Tag::XResolution).ok()?? {
        Value::Rational(n, d) if d > 0 => n as f64 / d as f64,
        Value::RationalBig(n, d) if d > 0 => n as f64 / d as f64,
        Value::Double(v) => v,
        Value::Float(v) => v as f64,
        _ => return None,
    };
    let unit_um = match decoder.find_tag_unsigned::<u16>(Tag::ResolutionUnit).ok()? {
        Some(2) | None => 25_400.0, // the TIFF default unit is the inch
        Some(3) => 10_000.0,
        _ => return None,
    };
    (per_unit > 0.0).then(|| unit_um / per_unit)
}

/// A number after `|KEY = ` in an Aperio description (`Aperio Image Library …|MPP = 0.2520|…`).
fn aperio_field(text: &str, key: &str) -> Option<f64> {
    if !text.starts_with("Aperio") {
        return None;
    }
    text.split('|').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `PhysicalSizeX` of OME-XML's first `Pixels`, in µm (its `PhysicalSizeXUnit`, µm by default).
fn ome_pixel_size(text: &str) -> Option<f64> {
    if !text.contains("<OME") {
        return None;
    }
    let value = xml_attribute(text, "PhysicalSizeX")?;
    let factor = match xml_attribute_text(text, "PhysicalSizeXUnit").as_deref() {
        None | Some("µm") | Some("um") | Some("\u{3bc}m") => 1.0,
        Some("nm") => 1e-3,
        Some("mm") => 1e3,
        Some("cm") => 1e4,
        Some(_) => return None,
    };
    Some(value * factor)
}

fn xml_attribute(text: &str, name: &str) -> Option<f64> {
    xml_attribute_text(text, name)?.parse().ok()
}

/// The value of the first `name="…"` attribute (exact name, not a longer one ending in it).
fn xml_attribute_text(text: &str, name: &str) -> Option<String> {
    let pattern = format!("{name}=\"");
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let before = rest[..at].chars().last();
        let after = &rest[at + pattern.len()..];
        if before.is_none_or(|c| c.is_whitespace()) {
            return after.split('"').next().map(str::to_string);
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slide::write::{write_tiff_pages_with, Chunking, Compression, Samples, TiffMeta, TiffSpec};

    fn write(dir: &Path, name: &str, meta: TiffMeta, pyramid: bool) -> std::path::PathBuf {
        let path = dir.join(name);
        let page = |w: u32, h: u32| TiffSpec {
            width: w,
            height: h,
            samples: Samples::Rgb8,
            chunking: Chunking::Tiles { size: 64 },
            compression: Compression::Deflate,
            bigtiff: false,
        };
        let mut pages = vec![page(256, 192)];
        if pyramid {
            pages.push(page(64, 48));
        }
        write_tiff_pages_with(&path, &pages, &meta, |_, r, buf| {
            buf.resize(buf.len() + r.width as usize * r.height as usize * 3, 200);
            Ok(())
        })
        .unwrap();
        path
    }

    #[test]
    fn the_pixel_size_comes_from_aperio_ome_or_the_resolution_tags() {
        let dir = tempfile::tempdir().unwrap();
        let aperio = TiffMeta {
            description: Some("Aperio Image Library v12.0.15\r\n46000x32914 [0,100 46000x32814] (240x240) JPEG/RGB Q=70|AppMag = 20|StripeWidth = 2040|MPP = 0.4990|Filename = CMU-1".into()),
            pixel_size: Some(0.25),
        };
        let m = read_meta(&write(dir.path(), "a.svs", aperio, true)).unwrap();
        assert_eq!((m.width, m.height, m.levels.len()), (256, 192, 1));
        assert_eq!(m.pixel_size, Some((0.499, PixelSizeSource::Aperio)));
        assert_eq!(m.objective_power, Some(20.0));

        let ome = TiffMeta {
            description: Some(r#"<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Instrument><Objective NominalMagnification="40.0"/></Instrument><Image><Pixels DimensionOrder="XYCZT" PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="250" SizeX="256"/></Image></OME>"#.into()),
            pixel_size: None,
        };
        let m = read_meta(&write(dir.path(), "o.ome.tif", ome, false)).unwrap();
        assert_eq!(m.pixel_size, Some((0.25, PixelSizeSource::OmeXml)));
        assert_eq!(m.objective_power, Some(40.0));

        let tags = TiffMeta {
            description: None,
            pixel_size: Some(0.5),
        };
        let m = read_meta(&write(dir.path(), "t.tif", tags, true)).unwrap();
        let (um, from) = m.pixel_size.unwrap();
        assert!(
            (um - 0.5).abs() < 1e-6 && from == PixelSizeSource::ResolutionTags,
            "{um}"
        );

        // No statement at all, and 72 dpi (352.8 µm per pixel, image writers' default): neither
        // is a microscope's pixel size.
        let m = read_meta(&write(dir.path(), "n.tif", TiffMeta::default(), false)).unwrap();
        assert_eq!(m.pixel_size, None);
        let dpi72 = TiffMeta {
            description: None,
            pixel_size: Some(25_400.0 / 72.0),
        };
        assert_eq!(
            read_meta(&write(dir.path(), "d.tif", dpi72, false)).unwrap().pixel_size,
            None
        );
    }

    #[test]
    fn descriptions_are_parsed_strictly() {
        assert_eq!(aperio_field("Aperio x|MPP = 0.25|AppMag = 40", "MPP"), Some(0.25));
        assert_eq!(aperio_field("Aperio x|MPP = n/a", "MPP"), None);
        assert_eq!(aperio_field("Some other|MPP = 0.25", "MPP"), None);
        // PhysicalSizeXUnit is not PhysicalSizeX; a longer name ending in it is not it either.
        let xml = r#"<OME><Pixels PhysicalSizeXUnit="mm" MyPhysicalSizeX="9" PhysicalSizeX="0.0005"/></OME>"#;
        assert_eq!(ome_pixel_size(xml), Some(0.5));
        assert_eq!(
            ome_pixel_size(r#"<OME><Pixels PhysicalSizeX="1" PhysicalSizeXUnit="pc"/></OME>"#),
            None
        );
    }
}
