//! Writing TIFF files chunk by chunk — strips or tiles, classic or BigTIFF, uncompressed, LZW,
//! deflate or JPEG — on the `tiff` crate's container code. Its own image encoder writes strips
//! only; tiled (Big)TIFF is how whole-slide images arrive, so tests and synthetic data need it.
//! Pixels are pulled from a callback one chunk at a time, so memory does not grow with the image.

use crate::atomic::{write_atomic, WriteError};
use std::io::{self, Seek, Write};
use std::path::Path;
use tiff::encoder::{TiffEncoder, TiffKind};
use tiff::tags::{CompressionMethod, PhotometricInterpretation, PlanarConfiguration, SampleFormat, Tag};

/// TIFF tag 530, which the `tiff` crate has no name for.
pub(crate) const YCBCR_SUBSAMPLING: Tag = Tag::Unknown(530);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Samples {
    Grey8,
    Rgb8,
    Rgba8,
    Grey16,
    Rgb16,
}

impl Samples {
    pub fn channels(self) -> usize {
        match self {
            Samples::Grey8 | Samples::Grey16 => 1,
            Samples::Rgb8 | Samples::Rgb16 => 3,
            Samples::Rgba8 => 4,
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            Samples::Grey16 | Samples::Rgb16 => 2,
            _ => 1,
        }
    }

    pub fn bytes_per_pixel(self) -> usize {
        self.channels() * self.bytes_per_sample()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lzw,
    Deflate,
    /// Baseline JPEG per chunk, stored as YCbCr as slide scanners do; RGB8 and Grey8 only.
    Jpeg {
        quality: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    Strips {
        rows: u32,
    },
    /// Square tiles; TIFF requires the side to be a multiple of 16.
    Tiles {
        size: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TiffSpec {
    pub width: u32,
    pub height: u32,
    pub samples: Samples,
    pub chunking: Chunking,
    pub compression: Compression,
    pub bigtiff: bool,
}

/// The part of the image a chunk covers (clipped to the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl TiffSpec {
    /// The chunk grid in file order (row-major), with each chunk's nominal size.
    fn chunks(&self) -> (Vec<ChunkRect>, u32, u32) {
        let (cw, ch) = match self.chunking {
            Chunking::Strips { rows } => (self.width, rows.clamp(1, self.height)),
            Chunking::Tiles { size } => (size, size),
        };
        let mut rects = Vec::new();
        for y in (0..self.height).step_by(ch as usize) {
            for x in (0..self.width).step_by(cw as usize) {
                rects.push(ChunkRect {
                    x,
                    y,
                    width: cw.min(self.width - x),
                    height: ch.min(self.height - y),
                });
            }
        }
        (rects, cw, ch)
    }
}

/// Writes a TIFF atomically. `fill(rect, buf)` must append the chunk's pixels to `buf`
/// (row-major, interleaved, 16-bit samples in native byte order).
pub fn write_tiff(
    path: &Path,
    spec: &TiffSpec,
    mut fill: impl FnMut(ChunkRect, &mut Vec<u8>) -> io::Result<()>,
) -> Result<(), WriteError> {
    write_tiff_pages(path, std::slice::from_ref(spec), |_, rect, buf| fill(rect, buf))
}

/// Writes a multi-page TIFF atomically: the first page is the image, each later one a
/// reduced-resolution copy of it (`NewSubfileType` = 1), as whole-slide pyramids are stored.
/// `fill(page, rect, buf)` appends a chunk of page `page`. The container (classic or BigTIFF)
/// is the first page's `bigtiff`.
pub fn write_tiff_pages(
    path: &Path,
    pages: &[TiffSpec],
    fill: impl FnMut(usize, ChunkRect, &mut Vec<u8>) -> io::Result<()>,
) -> Result<(), WriteError> {
    write_tiff_pages_with(path, pages, &TiffMeta::default(), fill)
}

/// What a scanner states about a slide, written on the first page: `ImageDescription` (e.g. an
/// Aperio header with `MPP = …`, or OME-XML) and the pixel size as `XResolution`/`YResolution`
/// in pixels per centimetre (`ResolutionUnit` 3).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TiffMeta {
    pub description: Option<String>,
    /// µm per pixel.
    pub pixel_size: Option<f64>,
}

/// [`write_tiff_pages`] with `meta` on the first page.
pub fn write_tiff_pages_with(
    path: &Path,
    pages: &[TiffSpec],
    meta: &TiffMeta,
    mut fill: impl FnMut(usize, ChunkRect, &mut Vec<u8>) -> io::Result<()>,
) -> Result<(), WriteError> {
    let invalid = |msg: &str| invalid_input(path, msg);
    let Some(first) = pages.first() else {
        return Err(invalid("a TIFF needs at least one page"));
    };
    for spec in pages {
        if spec.width == 0 || spec.height == 0 {
            return Err(invalid("image has zero width or height"));
        }
        if let Chunking::Tiles { size } = spec.chunking {
            if size == 0 || size % 16 != 0 {
                return Err(invalid("tile size must be a positive multiple of 16"));
            }
        }
        if matches!(spec.compression, Compression::Jpeg { .. })
            && !matches!(spec.samples, Samples::Rgb8 | Samples::Grey8)
        {
            return Err(invalid("JPEG compression needs 8-bit grey or RGB samples"));
        }
    }
    write_atomic(path, |w| {
        if first.bigtiff {
            let mut encoder = TiffEncoder::new_big(w).map_err(io::Error::other)?;
            for (i, spec) in pages.iter().enumerate() {
                let meta = (i == 0).then_some(meta);
                write_page(&mut encoder, spec, meta, |rect, buf| fill(i, rect, buf))?;
            }
        } else {
            let mut encoder = TiffEncoder::new(w).map_err(io::Error::other)?;
            for (i, spec) in pages.iter().enumerate() {
                let meta = (i == 0).then_some(meta);
                write_page(&mut encoder, spec, meta, |rect, buf| fill(i, rect, buf))?;
            }
        }
        Ok(())
    })
}

/// Writes a whole in-memory image (row-major, interleaved, `spec.samples` layout).
pub fn write_tiff_image(path: &Path, spec: &TiffSpec, data: &[u8]) -> Result<(), WriteError> {
    let bpp = spec.samples.bytes_per_pixel();
    let row_bytes = spec.width as usize * bpp;
    if data.len() != row_bytes * spec.height as usize {
        return Err(invalid_input(
            path,
            "image buffer does not match width × height × pixel size",
        ));
    }
    write_tiff(path, spec, |rect, buf| {
        for y in rect.y..rect.y + rect.height {
            let start = y as usize * row_bytes + rect.x as usize * bpp;
            buf.extend_from_slice(&data[start..start + rect.width as usize * bpp]);
        }
        Ok(())
    })
}

/// A caller's mistake about what to write, reported against the target file.
fn invalid_input(path: &Path, msg: &str) -> WriteError {
    WriteError {
        path: path.to_owned(),
        cause: io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()),
    }
}

fn tiff_err(e: tiff::TiffError) -> io::Error {
    io::Error::other(e)
}

/// One page; the first carries `meta` (`None` marks a reduced-resolution page).
fn write_page<W: Write + Seek, K: TiffKind>(
    encoder: &mut TiffEncoder<W, K>,
    spec: &TiffSpec,
    meta: Option<&TiffMeta>,
    mut fill: impl FnMut(ChunkRect, &mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let (rects, cw, ch) = spec.chunks();
    let bpp = spec.samples.bytes_per_pixel();
    let mut dir = encoder.image_directory().map_err(tiff_err)?;
    let mut offsets = Vec::with_capacity(rects.len());
    let mut counts = Vec::with_capacity(rects.len());
    let mut raw = Vec::new();
    for rect in rects {
        raw.clear();
        fill(rect, &mut raw)?;
        let expected = rect.width as usize * rect.height as usize * bpp;
        if raw.len() != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "chunk at ({}, {}) has {} bytes, expected {expected}",
                    rect.x,
                    rect.y,
                    raw.len()
                ),
            ));
        }
        // Tiles are stored at full size even at the right and bottom edges.
        if let Chunking::Tiles { .. } = spec.chunking {
            if rect.width != cw || rect.height != ch {
                raw = pad_tile(&raw, rect, cw, ch, bpp);
            }
        }
        let encoded = compress(&raw, spec, rect, cw)?;
        offsets.push(K::convert_offset(dir.write_data(encoded.as_slice()).map_err(tiff_err)?).map_err(tiff_err)?);
        counts.push(K::convert_offset(encoded.len() as u64).map_err(tiff_err)?);
    }

    let t = |r: tiff::TiffResult<()>| r.map_err(tiff_err);
    match meta {
        None => t(dir.write_tag(Tag::NewSubfileType, 1u32))?, // a reduced-resolution copy
        Some(meta) => {
            if let Some(text) = &meta.description {
                t(dir.write_tag(Tag::ImageDescription, text.as_str()))?;
            }
            if let Some(um) = meta.pixel_size {
                let per_cm = tiff::encoder::Rational {
                    n: (10_000.0 / um * 1000.0).round() as u32,
                    d: 1000,
                };
                t(dir.write_tag(Tag::XResolution, per_cm.clone()))?;
                t(dir.write_tag(Tag::YResolution, per_cm))?;
                t(dir.write_tag(Tag::ResolutionUnit, 3u16))?;
            }
        }
    }
    t(dir.write_tag(Tag::ImageWidth, spec.width))?;
    t(dir.write_tag(Tag::ImageLength, spec.height))?;
    let channels = spec.samples.channels();
    let bits = (spec.samples.bytes_per_sample() * 8) as u16;
    t(dir.write_tag(Tag::BitsPerSample, &vec![bits; channels][..]))?;
    t(dir.write_tag(Tag::SamplesPerPixel, channels as u16))?;
    t(dir.write_tag(Tag::SampleFormat, &vec![SampleFormat::Uint.to_u16(); channels][..]))?;
    let jpeg = matches!(spec.compression, Compression::Jpeg { .. });
    let photometric = match spec.samples {
        Samples::Grey8 | Samples::Grey16 => PhotometricInterpretation::BlackIsZero,
        _ if jpeg => PhotometricInterpretation::YCbCr,
        _ => PhotometricInterpretation::RGB,
    };
    t(dir.write_tag(Tag::PhotometricInterpretation, photometric.to_u16()))?;
    if photometric == PhotometricInterpretation::YCbCr {
        t(dir.write_tag(YCBCR_SUBSAMPLING, &[1u16, 1][..]))?;
    }
    if spec.samples == Samples::Rgba8 {
        t(dir.write_tag(Tag::ExtraSamples, 2u16))?; // unassociated alpha
    }
    t(dir.write_tag(Tag::PlanarConfiguration, PlanarConfiguration::Chunky.to_u16()))?;
    let method = match spec.compression {
        Compression::None => CompressionMethod::None,
        Compression::Lzw => CompressionMethod::LZW,
        Compression::Deflate => CompressionMethod::Deflate,
        Compression::Jpeg { .. } => CompressionMethod::ModernJPEG,
    };
    t(dir.write_tag(Tag::Compression, method.to_u16()))?;
    match spec.chunking {
        Chunking::Strips { .. } => {
            t(dir.write_tag(Tag::RowsPerStrip, ch))?;
            t(dir.write_tag(Tag::StripOffsets, K::convert_slice(&offsets)))?;
            t(dir.write_tag(Tag::StripByteCounts, K::convert_slice(&counts)))?;
        }
        Chunking::Tiles { .. } => {
            t(dir.write_tag(Tag::TileWidth, cw))?;
            t(dir.write_tag(Tag::TileLength, ch))?;
            t(dir.write_tag(Tag::TileOffsets, K::convert_slice(&offsets)))?;
            t(dir.write_tag(Tag::TileByteCounts, K::convert_slice(&counts)))?;
        }
    }
    dir.finish().map_err(tiff_err)
}

fn pad_tile(raw: &[u8], rect: ChunkRect, cw: u32, ch: u32, bpp: usize) -> Vec<u8> {
    let mut out = vec![0u8; cw as usize * ch as usize * bpp];
    let row = rect.width as usize * bpp;
    for y in 0..rect.height as usize {
        out[y * cw as usize * bpp..][..row].copy_from_slice(&raw[y * row..][..row]);
    }
    out
}

fn compress(raw: &[u8], spec: &TiffSpec, rect: ChunkRect, cw: u32) -> io::Result<Vec<u8>> {
    match spec.compression {
        Compression::None => Ok(raw.to_vec()),
        Compression::Lzw => weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
            .encode(raw)
            .map_err(io::Error::other),
        Compression::Deflate => {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(raw)?;
            z.finish()
        }
        Compression::Jpeg { quality } => {
            let (w, h) = match spec.chunking {
                Chunking::Tiles { size } => (size, size),
                Chunking::Strips { .. } => (cw, rect.height),
            };
            let color = match spec.samples {
                Samples::Grey8 => image::ExtendedColorType::L8,
                _ => image::ExtendedColorType::Rgb8,
            };
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .encode(raw, w, h, color)
                .map_err(io::Error::other)?;
            Ok(out)
        }
    }
}

/// Classic TIFF for small images, BigTIFF past what 32-bit offsets can address.
pub fn needs_bigtiff(width: u32, height: u32, samples: Samples) -> bool {
    width as u64 * height as u64 * samples.bytes_per_pixel() as u64 > (u32::MAX as u64) * 9 / 10
}
