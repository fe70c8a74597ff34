//! A TIFF page's header: its size, chunk layout, sample layout and codec, checked before any
//! chunk is read, and the per-thread decoders for the codecs the crate decodes.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Mutex;

use tiff::decoder::{ChunkType, Decoder};
use tiff::tags::{CompressionMethod, PlanarConfiguration, Tag};
use tiff::ColorType;

use super::codec::{colour_name, RawCodec, RawLayout};
use super::{Origin, TiffRegions, MAX_TILE_PIXELS};
use crate::slide::error::SlideErrorKind;
use crate::slide::ifd::checked_decoder;
use crate::slide::jpeg;
use crate::slide::write::YCBCR_SUBSAMPLING;

impl TiffRegions {
    pub(super) fn read_header(
        origin: &Origin,
        path: &Path,
        page: usize,
        max_cache_bytes: usize,
    ) -> Result<TiffRegions, SlideErrorKind> {
        let unsupported = SlideErrorKind::Unsupported;
        let len = origin.len()?;
        let mut reader = origin.open()?;
        let mut order = [0u8; 2];
        reader.read_exact(&mut order)?;
        reader.rewind()?;
        let mut decoder = checked_decoder(reader, len)?;
        if page > 0 {
            decoder.seek_to_image(page)?;
        }
        let (width, height) = decoder.dimensions()?;
        let (color, channels, bytes_per_sample, compression) = sample_layout(&mut decoder)?;
        let (cw, ch) = decoder.chunk_dimensions();
        let (chunk_w, chunk_h) = (cw as usize, ch as usize);
        if chunk_w == 0 || chunk_h == 0 {
            return Err(unsupported("chunks of size 0".into()));
        }
        // A tile larger than the image (in whole 16-pixel steps) and than 1024² claims memory
        // no image needs: refused before any is read. (Strips hold only their image rows.)
        let padded = (width as usize).next_multiple_of(16) * (height as usize).next_multiple_of(16);
        if decoder.get_chunk_type() == ChunkType::Tile && chunk_w.saturating_mul(chunk_h) > padded.max(MAX_TILE_PIXELS)
        {
            return Err(SlideErrorKind::Corrupt(format!(
                "tiles of {chunk_w}×{chunk_h} for a {width}×{height} image"
            )));
        }
        // Codecs neither ftu nor the tiff crate decodes are refused here, before any chunk is
        // read (a slide that needs them goes to OpenSlide, see `super::openslide`).
        if let Some(c) = compression.filter(|c| !DECODED_COMPRESSIONS.contains(c)) {
            return Err(unsupported(format!("TIFF compression {c}{}", compression_name(c))));
        }
        // The crate's own buffer limits, set to what one chunk legitimately needs.
        let mut limits = tiff::decoder::Limits::default();
        let chunk_bytes = chunk_w
            .saturating_mul(chunk_h)
            .saturating_mul(channels * bytes_per_sample);
        limits.decoding_buffer_size = limits.decoding_buffer_size.max(chunk_bytes.saturating_mul(2));
        limits.intermediate_buffer_size = limits.intermediate_buffer_size.max(chunk_bytes.saturating_mul(2));
        let mut decoder = decoder.with_limits(limits.clone());
        let codec = match compression {
            None | Some(1) => Some(RawCodec::None),
            Some(5) => Some(RawCodec::Lzw),
            Some(8) | Some(32946) => Some(RawCodec::Deflate),
            _ => None,
        };
        let raw = match codec {
            Some(codec) => Some(raw_layout(&mut decoder, codec, &order == b"II", bytes_per_sample)?),
            None => None,
        };
        let extents = chunk_extents(&mut decoder)?;
        let jpeg = match compression {
            Some(6) | Some(7) => Some(match decoder.find_tag(Tag::JPEGTables)? {
                Some(tables) => jpeg::frame(&tables.into_u8_vec()?[..])
                    .map_err(|e| SlideErrorKind::Corrupt(format!("JPEGTables: {e}")))?,
                None => None,
            }),
            _ => None,
        };
        let (width, height) = (width as usize, height as usize);
        let mut decoders = vec![Mutex::new(decoder)];
        if raw.is_none() {
            for _ in 1..rayon::current_num_threads() {
                let mut d = Decoder::new(origin.open()?)?.with_limits(limits.clone());
                if page > 0 {
                    d.seek_to_image(page)?;
                }
                decoders.push(Mutex::new(d));
            }
        }
        let regions = TiffRegions {
            path: path.to_owned(),
            width,
            height,
            decoders,
            len,
            extents,
            color,
            channels,
            chunk_w,
            chunk_h,
            across: width.div_ceil(chunk_w),
            raw,
            jpeg,
            cache: HashMap::new(),
            order: VecDeque::new(),
            cache_bytes: 0,
            decoded: 0,
            max_cache_bytes,
        };
        if regions.extents.len() < regions.chunks() {
            return Err(SlideErrorKind::Corrupt(format!(
                "{} chunk offsets for {} chunks",
                regions.extents.len(),
                regions.chunks()
            )));
        }
        Ok(regions)
    }
}

/// The page's colour type, samples per pixel, bytes per sample and compression, refusing what ftu cannot
/// turn into RGB8 faithfully (planar files, other sample types, subsampled YCbCr outside JPEG).
fn sample_layout<R: Read + Seek>(
    decoder: &mut Decoder<R>,
) -> Result<(ColorType, usize, usize, Option<u16>), SlideErrorKind> {
    let unsupported = SlideErrorKind::Unsupported;
    let planar = decoder.find_tag_unsigned::<u16>(Tag::PlanarConfiguration)?;
    if planar == Some(PlanarConfiguration::Planar.to_u16()) {
        // The tiff crate reads only the first plane of planar files: refuse rather than return red.
        return Err(unsupported("planar (separate-plane) TIFF".into()));
    }
    let color = decoder.colortype()?;
    let (channels, bytes_per_sample) = match color {
        ColorType::Gray(b) if b == 8 || b == 16 => (1, b as usize / 8),
        ColorType::GrayA(b) if b == 8 || b == 16 => (2, b as usize / 8),
        ColorType::RGB(b) if b == 8 || b == 16 => (3, b as usize / 8),
        ColorType::YCbCr(8) => (3, 1),
        ColorType::RGBA(b) if b == 8 || b == 16 => (4, b as usize / 8),
        other => {
            return Err(unsupported(format!(
                "TIFF colour type {} (expected 8- or 16-bit grey, RGB or RGBA)",
                colour_name(other)
            )))
        }
    };
    let compression = decoder.find_tag_unsigned::<u16>(Tag::Compression)?;
    if let ColorType::YCbCr(_) = color {
        let subsampling = decoder.find_tag_unsigned_vec::<u16>(YCBCR_SUBSAMPLING)?;
        // Outside JPEG the crate does not upsample chroma; only unsubsampled YCbCr decodes right.
        if compression != Some(CompressionMethod::ModernJPEG.to_u16()) && subsampling.as_deref() != Some(&[1, 1]) {
            return Err(unsupported(
                "chroma-subsampled YCbCr TIFF without JPEG compression".into(),
            ));
        }
    }
    Ok((color, channels, bytes_per_sample, compression))
}

/// Each chunk's (offset, byte count), from the strip or tile tags.
fn chunk_extents<R: Read + Seek>(decoder: &mut Decoder<R>) -> Result<Vec<(u64, u64)>, SlideErrorKind> {
    let (offsets_tag, counts_tag) = match decoder.get_chunk_type() {
        ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
        ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
    };
    let offsets = decoder.get_tag_u64_vec(offsets_tag)?;
    let counts = decoder.get_tag_u64_vec(counts_tag)?;
    Ok(offsets.into_iter().zip(counts).collect())
}

/// How to decode the chunks of the codecs ftu decompresses itself.
fn raw_layout<R: Read + Seek>(
    decoder: &mut Decoder<R>,
    codec: RawCodec,
    little_endian: bool,
    bytes_per_sample: usize,
) -> Result<RawLayout, SlideErrorKind> {
    let predictor = decoder.find_tag_unsigned::<u16>(Tag::Predictor)?.unwrap_or(1);
    if predictor != 1 && predictor != 2 {
        return Err(SlideErrorKind::Unsupported(format!("TIFF predictor {predictor}")));
    }
    let white_is_zero = decoder.find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)? == Some(0);
    Ok(RawLayout {
        codec,
        predictor,
        little_endian,
        white_is_zero,
        bytes_per_sample,
    })
}

/// TIFF compression codes ftu decodes: none, CCITT group 4, LZW, JPEG, deflate (both codes),
/// PackBits.
const DECODED_COMPRESSIONS: [u16; 7] = [1, 4, 5, 7, 8, 32773, 32946];

/// What a compression code ftu does not decode is, for the error.
fn compression_name(code: u16) -> &'static str {
    match code {
        33003 | 33005 | 34712 => " (JPEG 2000, as Aperio SVS; read through OpenSlide)",
        6 => " (old-style JPEG)",
        34887..=34889 | 34925 => " (LERC / LZMA)",
        _ => "",
    }
}
