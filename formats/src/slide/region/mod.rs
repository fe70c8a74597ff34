//! Slides read region by region: a TIFF is decoded one chunk at a time through a small cache
//! ([`TiffRegions`]), so memory does not grow with the slide's area; other files are read whole.
//! A slide's pyramid levels are in `pyramid.rs`, its thumbnail in `thumbnail.rs`.

use std::path::Path;
use std::sync::Arc;

use super::error::{check_size, SlideError, SlideErrorKind, SlideLimits};
use super::openslide::OpenSlide;
use super::read::read_slide;
use super::rgb::{crop, RgbImage};
use super::sniff::{sniff_file, Format};
use super::tiff::{is_unsupported_codec, TiffRegions};

mod pyramid;
mod thumbnail;

pub use pyramid::{pyramid_levels, LevelReader, PyramidLevel};

/// Decoded chunks kept for neighbouring windows (overlapping windows read the same chunks).
pub const DEFAULT_CACHE_BYTES: usize = 192 << 20;

/// A slide to read regions from.
pub enum SlideSource {
    /// Decoded whole (PNG, JPEG, or a TIFF small enough).
    Memory(RgbImage),
    /// A TIFF decoded chunk by chunk.
    Tiff(Box<TiffRegions>),
    /// A scanner format ftu's reader does not decode, through OpenSlide.
    OpenSlide(Arc<OpenSlide>),
}

impl SlideSource {
    /// Opens a slide for region reads: TIFFs chunk by chunk, PNG and JPEG whole (within
    /// `limits`), and through OpenSlide a TIFF whose codec ftu lacks (JPEG 2000 SVS) or a file
    /// that is no TIFF, PNG or JPEG but a format OpenSlide knows (MRXS, …).
    pub fn open(path: &Path, limits: SlideLimits) -> Result<SlideSource, SlideError> {
        let (magic, format) = sniff_file(path).map_err(|e| SlideErrorKind::Io(e).at(path))?;
        match format {
            Some(Format::Tiff) => match TiffRegions::open(path, DEFAULT_CACHE_BYTES) {
                Ok(t) => Ok(SlideSource::Tiff(Box::new(t))),
                Err(e) if is_unsupported_codec(&e) => open_with_openslide(path, e),
                Err(e) => Err(e),
            },
            Some(_) => Ok(SlideSource::Memory(read_slide(path, limits)?)),
            None => open_with_openslide(path, SlideErrorKind::UnknownFormat { magic }.at(path)),
        }
    }

    pub fn width(&self) -> usize {
        match self {
            SlideSource::Memory(img) => img.width,
            SlideSource::Tiff(t) => t.width,
            SlideSource::OpenSlide(o) => o.width,
        }
    }

    pub fn height(&self) -> usize {
        match self {
            SlideSource::Memory(img) => img.height,
            SlideSource::Tiff(t) => t.height,
            SlideSource::OpenSlide(o) => o.height,
        }
    }

    /// The `w × h` region at `(x, y)`, which must lie inside the slide.
    pub fn region(&mut self, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        assert!(
            x + w <= self.width() && y + h <= self.height(),
            "region inside the slide"
        );
        match self {
            SlideSource::Memory(img) => Ok(crop(img, x, y, w, h)),
            SlideSource::Tiff(t) => t.region(x, y, w, h),
            SlideSource::OpenSlide(o) => o.region(x, y, w, h),
        }
    }

    /// Pixels decoded so far: a TIFF's chunks as they were read; a slide decoded whole, all of
    /// them.
    pub fn decoded_pixels(&self) -> u64 {
        match self {
            SlideSource::Memory(img) => (img.width * img.height) as u64,
            SlideSource::Tiff(t) => t.decoded_pixels(),
            SlideSource::OpenSlide(o) => o.decoded_pixels(),
        }
    }

    /// The whole slide in memory, refused past `limits` (resize-mode groups need it).
    pub fn whole(&mut self, limits: SlideLimits) -> Result<RgbImage, SlideError> {
        match self {
            SlideSource::Memory(img) => Ok(img.clone()),
            SlideSource::Tiff(t) => t.whole(limits),
            SlideSource::OpenSlide(o) => {
                check_size(o.width as u64, o.height as u64, limits).map_err(|kind| kind.at(&o.path))?;
                o.region(0, 0, o.width, o.height)
            }
        }
    }
}

/// Opens `path` through OpenSlide, or returns `ftu_error` (what ftu's own reader said) with
/// OpenSlide's reason appended.
fn open_with_openslide(path: &Path, ftu_error: SlideError) -> Result<SlideSource, SlideError> {
    match OpenSlide::open(path) {
        Ok(o) => Ok(SlideSource::OpenSlide(Arc::new(o))),
        Err(e) => Err(SlideErrorKind::NoReader {
            ftu: Box::new(ftu_error.kind),
            openslide: Box::new(e.kind),
        }
        .at(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};

    fn pattern(w: usize, h: usize) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for (i, px) in img.data.chunks_exact_mut(3).enumerate() {
            let (y, x) = (i / w, i % w);
            px.copy_from_slice(&[(x * 7 + y) as u8, (y * 5) as u8, (x ^ y) as u8]);
        }
        img
    }

    #[test]
    fn regions_of_tiled_and_striped_tiffs_equal_crops_of_the_whole_slide() {
        let dir = tempfile::tempdir().unwrap();
        let img = pattern(300, 170);
        let cases = [
            (Samples::Rgb8, Chunking::Tiles { size: 64 }, Compression::Lzw, false),
            (Samples::Rgb8, Chunking::Tiles { size: 48 }, Compression::Deflate, true),
            (Samples::Rgb8, Chunking::Strips { rows: 7 }, Compression::None, false),
            (Samples::Rgb8, Chunking::Strips { rows: 16 }, Compression::Lzw, false),
            (
                Samples::Rgb8,
                Chunking::Tiles { size: 64 },
                Compression::Jpeg { quality: 90 },
                false,
            ),
            (
                Samples::Rgba8,
                Chunking::Tiles { size: 32 },
                Compression::Deflate,
                false,
            ),
            (Samples::Rgb16, Chunking::Tiles { size: 64 }, Compression::Lzw, true),
            (
                Samples::Grey8,
                Chunking::Strips { rows: 5 },
                Compression::Deflate,
                false,
            ),
        ];
        for (k, (samples, chunking, compression, bigtiff)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{k}.tiff"));
            let spec = TiffSpec {
                width: 300,
                height: 170,
                samples,
                compression,
                chunking,
                bigtiff,
            };
            let raw: Vec<u8> = match samples {
                Samples::Rgb8 => img.data.clone(),
                Samples::Rgba8 => img.data.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
                Samples::Rgb16 => img.data.iter().flat_map(|&v| (v as u16 * 257).to_ne_bytes()).collect(),
                Samples::Grey8 => img.data.chunks_exact(3).map(|p| p[1]).collect(),
                Samples::Grey16 => unreachable!(),
            };
            write_tiff_image(&path, &spec, &raw).unwrap();
            // The whole-slide reader is the reference (JPEG decodes alike through both).
            let whole = read_slide(&path, SlideLimits::default()).unwrap();
            let mut src = SlideSource::open(&path, SlideLimits::default()).unwrap();
            assert!(matches!(src, SlideSource::Tiff(_)), "case {k}");
            assert_eq!((src.width(), src.height()), (300, 170));
            for (x, y, w, h) in [(0, 0, 300, 170), (63, 47, 70, 60), (250, 100, 50, 70), (5, 160, 1, 10)] {
                assert_eq!(
                    src.region(x, y, w, h).unwrap(),
                    crop(&whole, x, y, w, h),
                    "case {k} region {x},{y}"
                );
            }
            let thumb = src.thumbnail(4).unwrap();
            let mem = SlideSource::Memory(whole.clone()).thumbnail(4).unwrap();
            assert_eq!(thumb, mem, "case {k}");
            assert_eq!((thumb.width, thumb.height), (75, 43));
            if !matches!(compression, Compression::Jpeg { .. }) && samples != Samples::Grey8 {
                assert_eq!(whole, img, "case {k} is lossless");
            }
        }
    }

    #[test]
    fn damaged_tiles_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = pattern(200, 150);
        for compression in [Compression::Deflate, Compression::Jpeg { quality: 80 }] {
            let path = dir.path().join("t.tiff");
            let spec = TiffSpec {
                width: 200,
                height: 150,
                samples: Samples::Rgb8,
                compression,
                chunking: Chunking::Tiles { size: 32 },
                bigtiff: false,
            };
            write_tiff_image(&path, &spec, &img.data).unwrap();
            // Tiles come before the directory: overwriting the middle damages tiles, keeps the header.
            let bytes = std::fs::read(&path).unwrap();
            let mut cut = bytes.clone();
            let n = bytes.len();
            cut[n / 4..n / 2].fill(0xA5);
            std::fs::write(&path, &cut).unwrap();
            let mut src = SlideSource::open(&path, SlideLimits::default()).unwrap();
            let whole = src.region(0, 0, 200, 150);
            let thumb = src.thumbnail(8);
            for result in [whole.map(|_| ()), thumb.map(|_| ())] {
                let e = result.expect_err("garbage tiles are an error");
                assert!(
                    e.to_string().contains("t.tiff") && e.to_string().contains("corrupt"),
                    "{e}"
                );
            }
            // Regions away from the damage still read (JPEG within its loss).
            let intact = src.region(0, 140, 10, 10).unwrap();
            let want = crop(&img, 0, 140, 10, 10);
            let worst = intact
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(
                worst <= if compression == Compression::Deflate { 0 } else { 32 },
                "{worst}"
            );
        }
    }
}
