//! Reading slides into RGB8: TIFF (strips or tiles; none, LZW, deflate, JPEG, PackBits; 8/16-bit;
//! grey, RGB, RGBA; BigTIFF; first page) with the `tiff` crate, PNG and JPEG with `image`.
//! A pixel-count guard rejects oversized headers before anything is allocated.

use crate::slide::write::YCBCR_SUBSAMPLING;
pub mod region;
pub mod write;

use rayon::prelude::*;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::{CompressionMethod, PlanarConfiguration, Tag};
use tiff::ColorType;

/// Interleaved RGB8, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Whole-image reads above this many pixels are refused: 2^28 ≈ 268 Mpx, 805 MB as RGB8.
/// Whole-slide images that large are for tiled reading.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlideLimits {
    pub max_pixels: u64,
}

impl Default for SlideLimits {
    fn default() -> Self {
        SlideLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    #[error("cannot read {path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: not a TIFF, PNG or JPEG file (first bytes {magic:02x?})")]
    UnknownFormat { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: {width}×{height} = {pixels} pixels is over the limit of {max_pixels} (raise it, or read the slide in tiles)")]
    TooLarge {
        path: PathBuf,
        width: u64,
        height: u64,
        pixels: u64,
        max_pixels: u64,
    },
    #[error("{path}: unsupported {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: corrupt or truncated TIFF: {cause}")]
    Tiff { path: PathBuf, cause: tiff::TiffError },
    #[error("{path}: corrupt or truncated image: {cause}")]
    Image { path: PathBuf, cause: image::ImageError },
    #[error("{path}: the decoder failed on this file ({message})")]
    DecoderPanic { path: PathBuf, message: String },
}

enum Format {
    Tiff,
    Other,
}

fn sniff(magic: &[u8]) -> Option<Format> {
    match magic {
        [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] | [b'I', b'I', 43, 0, ..] | [b'M', b'M', 0, 43, ..] => {
            Some(Format::Tiff)
        }
        [0x89, b'P', b'N', b'G', ..] | [0xFF, 0xD8, 0xFF, ..] => Some(Format::Other),
        _ => None,
    }
}

/// Reads a slide from a file into RGB8.
pub fn read_slide(path: &Path, limits: SlideLimits) -> Result<RgbImage, SlideError> {
    let io_err = |cause| SlideError::Io {
        path: path.to_owned(),
        cause,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut magic = Vec::with_capacity(8);
    file.by_ref().take(8).read_to_end(&mut magic).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    let reader = BufReader::with_capacity(1 << 20, file);
    match sniff(&magic) {
        Some(Format::Tiff) => guarded(path, || read_tiff(reader, path, limits)),
        Some(Format::Other) => guarded(path, || read_other(reader, path, limits)),
        None => Err(SlideError::UnknownFormat {
            path: path.to_owned(),
            magic,
        }),
    }
}

/// Reads a slide held in memory; `name` is used in errors.
pub fn decode_slide(bytes: &[u8], name: &Path, limits: SlideLimits) -> Result<RgbImage, SlideError> {
    let cursor = std::io::Cursor::new(bytes);
    match sniff(bytes) {
        Some(Format::Tiff) => guarded(name, || read_tiff(cursor, name, limits)),
        Some(Format::Other) => guarded(name, || read_other(cursor, name, limits)),
        None => Err(SlideError::UnknownFormat {
            path: name.to_owned(),
            magic: bytes[..bytes.len().min(8)].to_vec(),
        }),
    }
}

/// A decoder bug must not take down a batch of a thousand slides: a panic inside a third-party
/// decoder becomes this slide's error.
pub(crate) fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T, SlideError>) -> Result<T, SlideError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(SlideError::DecoderPanic {
            path: path.to_owned(),
            message,
        })
    })
}

pub(crate) fn check_size(path: &Path, width: u64, height: u64, limits: SlideLimits) -> Result<(), SlideError> {
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(SlideError::TooLarge {
            path: path.to_owned(),
            width,
            height,
            pixels,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

fn read_tiff<R: Read + Seek>(mut reader: R, path: &Path, limits: SlideLimits) -> Result<RgbImage, SlideError> {
    let tiff_err = |cause| SlideError::Tiff {
        path: path.to_owned(),
        cause,
    };
    let unsupported = |what: String| SlideError::Unsupported {
        path: path.to_owned(),
        what,
    };
    let io_err = |cause| SlideError::Io {
        path: path.to_owned(),
        cause,
    };
    let mut order = [0u8; 2];
    reader.read_exact(&mut order).map_err(io_err)?;
    reader.rewind().map_err(io_err)?;
    let little_endian = &order == b"II";
    let mut decoder = Decoder::new(reader).map_err(tiff_err)?;
    let (width, height) = decoder.dimensions().map_err(tiff_err)?;
    check_size(path, width as u64, height as u64, limits)?;

    let planar = decoder
        .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
        .map_err(tiff_err)?;
    if planar == Some(PlanarConfiguration::Planar.to_u16()) {
        // The tiff crate reads only the first plane of planar files: refuse rather than return red.
        return Err(unsupported("planar (separate-plane) TIFF".into()));
    }
    let compression = decoder.find_tag_unsigned::<u16>(Tag::Compression).map_err(tiff_err)?;
    let color = decoder.colortype().map_err(tiff_err)?;
    let channels = match color {
        ColorType::Gray(8 | 16) => 1,
        ColorType::GrayA(8 | 16) => 2,
        ColorType::RGB(8 | 16) | ColorType::YCbCr(8) => 3,
        ColorType::RGBA(8 | 16) => 4,
        other => {
            return Err(unsupported(format!(
                "TIFF colour type {other:?} (expected 8- or 16-bit grey, RGB or RGBA)"
            )))
        }
    };
    if let ColorType::YCbCr(_) = color {
        let jpeg = compression == Some(CompressionMethod::ModernJPEG.to_u16());
        let subsampling = decoder
            .find_tag_unsigned_vec::<u16>(YCBCR_SUBSAMPLING)
            .map_err(tiff_err)?;
        // Outside JPEG the crate does not upsample chroma; only unsubsampled YCbCr decodes right.
        if !jpeg && subsampling.as_deref() != Some(&[1, 1]) {
            return Err(unsupported(
                "chroma-subsampled YCbCr TIFF without JPEG compression".into(),
            ));
        }
    }
    // The crate's own buffer limit, set to what this image legitimately needs.
    let mut tiff_limits = tiff::decoder::Limits::default();
    let needed = (width as usize)
        .saturating_mul(height as usize)
        .saturating_mul(channels * 2);
    tiff_limits.decoding_buffer_size = tiff_limits.decoding_buffer_size.max(needed);
    tiff_limits.intermediate_buffer_size = tiff_limits.intermediate_buffer_size.max(needed);
    let mut decoder = decoder.with_limits(tiff_limits);

    let pixels = width as usize * height as usize;
    let decoded = if compression == Some(CompressionMethod::LZW.to_u16()) {
        read_lzw_image(&mut decoder, path, color, channels, little_endian)?
    } else {
        decoder.read_image().map_err(tiff_err)?
    };
    let data = match decoded {
        DecodingResult::U8(v) => v,
        DecodingResult::U16(v) => v
            .into_iter()
            .map(|s| ((s as u32 * 255 + 32767) / 65535) as u8)
            .collect(),
        _ => return Err(unsupported(format!("TIFF sample format for {color:?}"))),
    };
    if data.len() != pixels * channels {
        return Err(unsupported(format!(
            "TIFF layout: decoded {} samples for {width}×{height}×{channels}",
            data.len()
        )));
    }
    let rgb = match color {
        ColorType::RGB(_) => data,
        ColorType::YCbCr(_) => ycbcr_to_rgb(data),
        _ => to_rgb(&data, channels),
    };
    Ok(RgbImage {
        width: width as usize,
        height: height as usize,
        data: rgb,
    })
}

/// Reads an LZW-compressed image chunk by chunk, each chunk decompressed by one bounded weezl
/// call. tiff 0.10.3's own LZW reader panics on some valid streams when it reads edge tiles row
/// by row (an assertion in its `LZWReader`), which would make ordinary LZW-tiled slides unreadable.
fn read_lzw_image<R: Read + Seek>(
    decoder: &mut Decoder<R>,
    path: &Path,
    color: ColorType,
    channels: usize,
    little_endian: bool,
) -> Result<DecodingResult, SlideError> {
    let tiff_err = |cause| SlideError::Tiff {
        path: path.to_owned(),
        cause,
    };
    let corrupt = |what: String| SlideError::Tiff {
        path: path.to_owned(),
        cause: tiff::TiffError::IoError(std::io::Error::new(std::io::ErrorKind::InvalidData, what)),
    };
    let (width, height) = decoder.dimensions().map_err(tiff_err)?;
    let (width, height) = (width as usize, height as usize);
    let bytes_per_sample = match color {
        ColorType::Gray(16) | ColorType::GrayA(16) | ColorType::RGB(16) | ColorType::RGBA(16) => 2,
        _ => 1,
    };
    let pixel_bytes = channels * bytes_per_sample;
    let predictor = decoder
        .find_tag_unsigned::<u16>(Tag::Predictor)
        .map_err(tiff_err)?
        .unwrap_or(1);
    if predictor != 1 && predictor != 2 {
        return Err(SlideError::Unsupported {
            path: path.to_owned(),
            what: format!("TIFF predictor {predictor} with LZW"),
        });
    }
    let white_is_zero = decoder
        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
        .map_err(tiff_err)?
        == Some(0);
    let (offsets_tag, counts_tag) = match decoder.get_chunk_type() {
        tiff::decoder::ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
        tiff::decoder::ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
    };
    let offsets = decoder.get_tag_u64_vec(offsets_tag).map_err(tiff_err)?;
    let counts = decoder.get_tag_u64_vec(counts_tag).map_err(tiff_err)?;
    let (cw, ch) = decoder.chunk_dimensions();
    let (cw, ch) = (cw as usize, ch as usize);
    if cw == 0 || ch == 0 {
        return Err(corrupt("chunk size 0".into()));
    }
    let across = width.div_ceil(cw);
    let chunks = across * height.div_ceil(ch);
    if offsets.len() < chunks || counts.len() < chunks {
        return Err(corrupt(format!(
            "{} chunk offsets for {chunks} chunks",
            offsets.len().min(counts.len())
        )));
    }
    let row_bytes = width * pixel_bytes;
    // Sequential reads, then decompression of bands of chunk rows in parallel: chunks are
    // independent and LZW decoding, not I/O, is what a 3000² slide waits for.
    let mut compressed = Vec::with_capacity(chunks);
    for i in 0..chunks {
        let reader = decoder.inner();
        let mut bytes = vec![0u8; counts[i] as usize];
        reader
            .seek(std::io::SeekFrom::Start(offsets[i]))
            .map_err(|cause| SlideError::Io {
                path: path.to_owned(),
                cause,
            })?;
        reader
            .read_exact(&mut bytes)
            .map_err(|_| corrupt(format!("chunk {i} runs past the end of the file")))?;
        compressed.push(bytes);
    }
    let mut out = vec![0u8; height * row_bytes];
    out.par_chunks_mut(ch * row_bytes)
        .enumerate()
        .try_for_each(|(band, out_band)| {
            let mut chunk = vec![0u8; cw * ch * pixel_bytes];
            for col in 0..across {
                let i = band * across + col;
                let (x0, y0) = (col * cw, band * ch);
                let (data_w, data_h) = (cw.min(width - x0), ch.min(height - y0));
                // Strips hold only their data rows; tiles are stored padded to full size.
                let needed = if cw == width {
                    data_h * row_bytes
                } else {
                    cw * ch * pixel_bytes
                };
                lzw_decompress(&compressed[i], &mut chunk[..needed]).map_err(|e| corrupt(format!("chunk {i}: {e}")))?;
                let chunk_row = cw * pixel_bytes;
                for y in 0..data_h {
                    let row = &mut chunk[y * chunk_row..(y + 1) * chunk_row];
                    if predictor == 2 {
                        undo_horizontal_predictor(row, channels, bytes_per_sample, little_endian);
                    }
                    let dst = y * row_bytes + x0 * pixel_bytes;
                    out_band[dst..dst + data_w * pixel_bytes].copy_from_slice(&row[..data_w * pixel_bytes]);
                }
            }
            Ok::<(), SlideError>(())
        })?;
    let result = if bytes_per_sample == 2 {
        let from = if little_endian {
            u16::from_le_bytes
        } else {
            u16::from_be_bytes
        };
        DecodingResult::U16(out.chunks_exact(2).map(|b| from([b[0], b[1]])).collect())
    } else {
        DecodingResult::U8(out)
    };
    Ok(match (result, white_is_zero) {
        (DecodingResult::U8(v), true) => DecodingResult::U8(v.into_iter().map(|s| 255 - s).collect()),
        (DecodingResult::U16(v), true) => DecodingResult::U16(v.into_iter().map(|s| u16::MAX - s).collect()),
        (r, _) => r,
    })
}

/// Fills `out` from a TIFF LZW stream; a stream that ends early is an error.
pub(crate) fn lzw_decompress(compressed: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut lzw = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    let (mut consumed, mut filled) = (0, 0);
    while filled < out.len() {
        let step = lzw.decode_bytes(&compressed[consumed..], &mut out[filled..]);
        consumed += step.consumed_in;
        filled += step.consumed_out;
        match step.status {
            Err(e) => return Err(e.to_string()),
            Ok(weezl::LzwStatus::Ok) if step.consumed_in + step.consumed_out > 0 => {}
            Ok(_) => break, // end code, or no input left
        }
    }
    if filled < out.len() {
        return Err(format!("decompresses to {filled} bytes, expected {}", out.len()));
    }
    Ok(())
}

/// TIFF predictor 2: each sample was stored as the difference from the same channel one pixel left.
pub(crate) fn undo_horizontal_predictor(row: &mut [u8], channels: usize, bytes_per_sample: usize, little_endian: bool) {
    if bytes_per_sample == 1 {
        for i in channels..row.len() {
            row[i] = row[i].wrapping_add(row[i - channels]);
        }
        return;
    }
    let (read, write): (fn([u8; 2]) -> u16, fn(u16) -> [u8; 2]) = if little_endian {
        (u16::from_le_bytes, u16::to_le_bytes)
    } else {
        (u16::from_be_bytes, u16::to_be_bytes)
    };
    let stride = channels * 2;
    for i in (stride..row.len()).step_by(2) {
        let value = read([row[i], row[i + 1]]).wrapping_add(read([row[i - stride], row[i - stride + 1]]));
        row[i..i + 2].copy_from_slice(&write(value));
    }
}

/// Grey, grey+alpha and RGBA to RGB; alpha is dropped (slides are opaque).
pub(crate) fn to_rgb(data: &[u8], channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / channels * 3);
    for px in data.chunks_exact(channels) {
        match channels {
            1 | 2 => out.extend_from_slice(&[px[0]; 3]),
            _ => out.extend_from_slice(&px[..3]),
        }
    }
    out
}

/// JPEG's full-range BT.601 YCbCr to RGB.
pub(crate) fn ycbcr_to_rgb(mut data: Vec<u8>) -> Vec<u8> {
    for px in data.chunks_exact_mut(3) {
        let (y, cb, cr) = (px[0] as f32, px[1] as f32 - 128.0, px[2] as f32 - 128.0);
        let c = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        px[0] = c(y + 1.402 * cr);
        px[1] = c(y - 0.344_136 * cb - 0.714_136 * cr);
        px[2] = c(y + 1.772 * cb);
    }
    data
}

fn read_other<R: Read + Seek + std::io::BufRead>(
    reader: R,
    path: &Path,
    limits: SlideLimits,
) -> Result<RgbImage, SlideError> {
    let image_err = |cause| SlideError::Image {
        path: path.to_owned(),
        cause,
    };
    let io_err = |cause| SlideError::Io {
        path: path.to_owned(),
        cause,
    };
    let mut reader = image::ImageReader::new(reader).with_guessed_format().map_err(io_err)?;
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(image_limits);
    // Decoding checks the header's dimensions against the allocation limit before allocating,
    // but the pixel guard is ours to keep: read the header first.
    let decoder = reader.into_decoder().map_err(image_err)?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    check_size(path, width as u64, height as u64, limits)?;
    let image = image::DynamicImage::from_decoder(decoder)
        .map_err(image_err)?
        .into_rgb8();
    Ok(RgbImage {
        width: width as usize,
        height: height as usize,
        data: image.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
    use proptest::prelude::*;
    use tiff::encoder::{colortype, TiffEncoder};

    const W: usize = 70;
    const H: usize = 45;

    /// A pattern where every channel of every pixel differs, so a transposed, shifted or
    /// channel-swapped read cannot pass.
    fn pattern() -> Vec<u8> {
        (0..H)
            .flat_map(|y| (0..W).flat_map(move |x| [(x * 3) as u8, (y * 5) as u8, (x * 7 + y * 11) as u8]))
            .collect()
    }

    fn spec(samples: Samples, chunking: Chunking, compression: Compression, bigtiff: bool) -> TiffSpec {
        TiffSpec {
            width: W as u32,
            height: H as u32,
            samples,
            chunking,
            compression,
            bigtiff,
        }
    }

    fn read(path: &Path) -> RgbImage {
        read_slide(path, SlideLimits::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rgb8_in_every_layout_and_lossless_compression() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let mut n = 0;
        for chunking in [
            Chunking::Strips { rows: 8 },
            Chunking::Strips { rows: 1000 },
            Chunking::Tiles { size: 32 },
        ] {
            for compression in [Compression::None, Compression::Lzw, Compression::Deflate] {
                for bigtiff in [false, true] {
                    let p = dir.path().join(format!("{n}.tiff"));
                    n += 1;
                    write_tiff_image(&p, &spec(Samples::Rgb8, chunking, compression, bigtiff), &rgb).unwrap();
                    let img = read(&p);
                    assert_eq!(
                        (img.width, img.height),
                        (W, H),
                        "{chunking:?} {compression:?} big={bigtiff}"
                    );
                    assert_eq!(img.data, rgb, "{chunking:?} {compression:?} big={bigtiff}");
                }
            }
        }
    }

    #[test]
    fn packbits_and_predictor_through_the_crates_own_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let p = dir.path().join("packbits.tiff");
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap())
            .unwrap()
            .with_compression(tiff::encoder::Compression::Packbits);
        e.write_image::<colortype::RGB8>(W as u32, H as u32, &rgb).unwrap();
        drop(e);
        assert_eq!(read(&p).data, rgb);

        let p = dir.path().join("predictor.tiff");
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap())
            .unwrap()
            .with_compression(tiff::encoder::Compression::Lzw)
            .with_predictor(tiff::tags::Predictor::Horizontal);
        e.write_image::<colortype::RGB8>(W as u32, H as u32, &rgb).unwrap();
        drop(e);
        assert_eq!(read(&p).data, rgb);

        let p = dir.path().join("predictor16.tiff");
        let rgb16: Vec<u16> = rgb.iter().map(|&v| v as u16 * 257).collect();
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap())
            .unwrap()
            .with_compression(tiff::encoder::Compression::Lzw)
            .with_predictor(tiff::tags::Predictor::Horizontal);
        e.write_image::<colortype::RGB16>(W as u32, H as u32, &rgb16).unwrap();
        drop(e);
        assert_eq!(read(&p).data, rgb);
    }

    #[test]
    fn sixteen_bit_grey_and_rgba_become_rgb8() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let tiles = Chunking::Tiles { size: 16 };

        let rgb16: Vec<u8> = rgb.iter().flat_map(|&v| (v as u16 * 257).to_ne_bytes()).collect();
        let p = dir.path().join("rgb16.tiff");
        write_tiff_image(&p, &spec(Samples::Rgb16, tiles, Compression::Lzw, false), &rgb16).unwrap();
        assert_eq!(read(&p).data, rgb);

        let grey: Vec<u8> = rgb.chunks(3).map(|p| p[2]).collect();
        let expected: Vec<u8> = grey.iter().flat_map(|&g| [g; 3]).collect();
        let p = dir.path().join("grey8.tiff");
        write_tiff_image(
            &p,
            &spec(
                Samples::Grey8,
                Chunking::Strips { rows: 7 },
                Compression::Deflate,
                false,
            ),
            &grey,
        )
        .unwrap();
        assert_eq!(read(&p).data, expected);

        let grey16: Vec<u8> = grey.iter().flat_map(|&v| (v as u16 * 257).to_ne_bytes()).collect();
        let p = dir.path().join("grey16.tiff");
        write_tiff_image(&p, &spec(Samples::Grey16, tiles, Compression::None, true), &grey16).unwrap();
        assert_eq!(read(&p).data, expected);

        let rgba: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[0], p[1], p[2], 128]).collect();
        let p = dir.path().join("rgba.tiff");
        write_tiff_image(&p, &spec(Samples::Rgba8, tiles, Compression::None, false), &rgba).unwrap();
        assert_eq!(read(&p).data, rgb);
    }

    #[test]
    fn jpeg_tiles_decode_close_to_the_original() {
        let dir = tempfile::tempdir().unwrap();
        // A smooth image, as JPEG is meant for; the tolerance is JPEG's loss, not a colour swap.
        let smooth: Vec<u8> = (0..H)
            .flat_map(|y| (0..W).flat_map(move |x| [(150 + x) as u8, (60 + y) as u8, (200 - x) as u8]))
            .collect();
        for chunking in [Chunking::Tiles { size: 32 }, Chunking::Strips { rows: 16 }] {
            let p = dir.path().join("jpeg.tiff");
            write_tiff_image(
                &p,
                &spec(Samples::Rgb8, chunking, Compression::Jpeg { quality: 95 }, false),
                &smooth,
            )
            .unwrap();
            let img = read(&p);
            let mean_err = img
                .data
                .iter()
                .zip(&smooth)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>()
                / smooth.len() as f64;
            assert!(mean_err < 2.0, "{chunking:?}: mean abs error {mean_err}");
        }
    }

    #[test]
    fn first_page_of_a_multi_page_file() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let p = dir.path().join("pages.tiff");
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap()).unwrap();
        e.write_image::<colortype::RGB8>(W as u32, H as u32, &rgb).unwrap();
        e.write_image::<colortype::RGB8>(10, 10, &[7u8; 300]).unwrap();
        drop(e);
        let img = read(&p);
        assert_eq!((img.width, img.height, img.data), (W, H, rgb));
    }

    #[test]
    fn png_and_jpeg_through_image() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let p = dir.path().join("a.png");
        crate::mask::image::write_rgb_png(&p, W, H, &rgb).unwrap();
        assert_eq!(read(&p).data, rgb);
        let p = dir.path().join("a.jpg");
        image::RgbImage::from_raw(W as u32, H as u32, vec![120; W * H * 3])
            .unwrap()
            .save(&p)
            .unwrap();
        let img = read(&p);
        assert_eq!((img.width, img.height), (W, H));
        assert!(img.data.iter().all(|&v| v.abs_diff(120) <= 2));
    }

    /// A TIFF whose header claims `w × h` RGB8 but holds ten bytes of data.
    fn bomb_tiff(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        let mut e = TiffEncoder::new(&mut bytes).unwrap();
        let mut dir = e.image_directory().unwrap();
        let data = dir.write_data(&[0u8; 10][..]).unwrap();
        dir.write_tag(Tag::ImageWidth, w).unwrap();
        dir.write_tag(Tag::ImageLength, h).unwrap();
        dir.write_tag(Tag::BitsPerSample, &[8u16, 8, 8][..]).unwrap();
        dir.write_tag(Tag::SamplesPerPixel, 3u16).unwrap();
        dir.write_tag(Tag::PhotometricInterpretation, 2u16).unwrap();
        dir.write_tag(Tag::RowsPerStrip, h).unwrap();
        dir.write_tag(Tag::StripOffsets, data as u32).unwrap();
        dir.write_tag(Tag::StripByteCounts, 10u32).unwrap();
        dir.finish().unwrap();
        drop(e);
        bytes.into_inner()
    }

    /// A PNG whose header claims `w × h` followed by a few bytes of pixel data.
    fn bomb_png(w: u32, h: u32) -> Vec<u8> {
        fn chunk(png: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
            png.extend((body.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(body);
            png.extend(kind);
            png.extend(body);
            png.extend(crc.sum().to_be_bytes());
        }
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[test]
    fn size_guard_rejects_bomb_headers_before_allocating() {
        let name = Path::new("bomb.tiff");
        let e = decode_slide(&bomb_tiff(100_000, 100_000), name, SlideLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                SlideError::TooLarge {
                    pixels: 10_000_000_000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("bomb.tiff"));
        let e = decode_slide(&bomb_png(60_000, 60_000), Path::new("bomb.png"), SlideLimits::default()).unwrap_err();
        assert!(matches!(e, SlideError::TooLarge { .. }), "{e}");
        // The limit is configurable both ways.
        let small = SlideLimits { max_pixels: 100 };
        let e = decode_slide(&bomb_tiff(20, 20), name, small).unwrap_err();
        assert!(matches!(e, SlideError::TooLarge { .. }), "{e}");
        // Within the limit, a header that lies about its data is a decode error, not a panic.
        let e = decode_slide(&bomb_tiff(200, 200), name, SlideLimits::default()).unwrap_err();
        assert!(matches!(e, SlideError::Tiff { .. }), "{e}");
    }

    #[test]
    fn truncated_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        for (name, chunking, compression) in [
            ("lzw.tiff", Chunking::Strips { rows: 8 }, Compression::Lzw),
            ("tiles.tiff", Chunking::Tiles { size: 16 }, Compression::None),
            ("deflate.tiff", Chunking::Tiles { size: 16 }, Compression::Deflate),
        ] {
            let p = dir.path().join(name);
            write_tiff_image(&p, &spec(Samples::Rgb8, chunking, compression, false), &rgb).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            // Cut inside the pixel data, inside the IFD at the end, and inside the header.
            for cut in [bytes.len() / 2, bytes.len() - 20, 6] {
                let e = decode_slide(&bytes[..cut], Path::new(name), SlideLimits::default())
                    .expect_err(&format!("{name} cut at {cut} decoded"));
                assert!(e.to_string().contains(name), "{e}");
                assert!(
                    !matches!(e, SlideError::DecoderPanic { .. }),
                    "{name} cut at {cut}: {e}"
                );
            }
        }
        let p = dir.path().join("text.tiff");
        std::fs::write(&p, "not an image").unwrap();
        assert!(matches!(
            read_slide(&p, SlideLimits::default()),
            Err(SlideError::UnknownFormat { .. })
        ));
        assert!(matches!(
            read_slide(&dir.path().join("absent.tiff"), SlideLimits::default()),
            Err(SlideError::Io { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Corrupt bytes anywhere: the reader returns an image of the stated size or an error,
        /// and no panic escapes.
        #[test]
        fn corrupt_tiffs_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), tiled in any::<bool>()) {
            let rgb = pattern();
            let chunking = if tiled { Chunking::Tiles { size: 16 } } else { Chunking::Strips { rows: 8 } };
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.tiff");
            write_tiff_image(&p, &spec(Samples::Rgb8, chunking, Compression::Lzw, false), &rgb).unwrap();
            let mut bytes = std::fs::read(&p).unwrap();
            let n = bytes.len();
            for (at, v) in flips {
                bytes[at % n] ^= v | 1;
            }
            if let Ok(img) = decode_slide(&bytes, Path::new("c.tiff"), SlideLimits { max_pixels: 1 << 20 }) {
                prop_assert_eq!(img.data.len(), img.width * img.height * 3);
            }
        }
    }
}
