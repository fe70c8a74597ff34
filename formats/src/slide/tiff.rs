//! The one TIFF reader: a (Big)TIFF page decoded chunk by chunk (tiles, or strips as wide as the
//! image), for a region through a small cache or for the whole page in parallel bands.
//! Uncompressed, LZW and deflate chunks are decompressed here, in parallel (tiff 0.10.3's own LZW
//! reader panics on some valid edge tiles); other codecs (JPEG, PackBits, …) go through the
//! `tiff` crate with one decoder per thread. 8/16-bit grey, grey+alpha, RGB, RGBA and YCbCr
//! become RGB8.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rayon::prelude::*;
use tiff::decoder::{ChunkType, Decoder, DecodingResult};
use tiff::tags::{CompressionMethod, PlanarConfiguration, Tag};
use tiff::ColorType;

use super::error::{check_size, guarded, SlideError, SlideErrorKind, SlideLimits};
use super::ifd::checked_decoder;
use super::jpeg::{self, JpegFrame};
use super::rgb::RgbImage;
use super::write::YCBCR_SUBSAMPLING;

/// Where a TIFF's bytes come from: a file, or bytes already in memory.
#[derive(Clone)]
enum Origin {
    File(PathBuf),
    Memory(Arc<[u8]>),
}

impl Origin {
    fn open(&self) -> std::io::Result<Reader> {
        Ok(match self {
            Origin::File(path) => Reader::File(BufReader::with_capacity(1 << 16, File::open(path)?)),
            Origin::Memory(bytes) => Reader::Memory(Cursor::new(bytes.clone())),
        })
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(match self {
            Origin::File(path) => std::fs::metadata(path)?.len(),
            Origin::Memory(bytes) => bytes.len() as u64,
        })
    }
}

enum Reader {
    File(BufReader<File>),
    Memory(Cursor<Arc<[u8]>>),
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::File(r) => r.read(buf),
            Reader::Memory(r) => r.read(buf),
        }
    }
}

impl Seek for Reader {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            Reader::File(r) => r.seek(pos),
            Reader::Memory(r) => r.seek(pos),
        }
    }
}

/// Tiles this large are taken whatever the image's size (a small image in one big tile).
const MAX_TILE_PIXELS: usize = 1 << 20;

/// A TIFF page, decoded chunk by chunk on demand.
pub struct TiffRegions {
    /// The file (or, for bytes in memory, the name errors give).
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
    /// One decoder per thread for chunks the tiff crate decodes (JPEG, PackBits, …), so those
    /// decode in parallel too; the first also reads stored chunk bytes.
    decoders: Vec<Mutex<Decoder<Reader>>>,
    /// The file's length: no stored chunk reaches past it.
    len: u64,
    /// Where each chunk is stored: (offset, byte count) as the file says, checked against `len`
    /// before anything is read or allocated for the chunk, whatever its codec.
    extents: Vec<(u64, u64)>,
    color: ColorType,
    channels: usize,
    chunk_w: usize,
    chunk_h: usize,
    across: usize,
    /// Uncompressed, LZW and deflate chunks are decompressed here, in parallel; other codecs go
    /// through the crate.
    raw: Option<RawLayout>,
    /// For JPEG chunks (through the crate), the frame size `JPEGTables` states, if any: each
    /// chunk's frame header, and this one, are checked against the chunk first.
    jpeg: Option<Option<JpegFrame>>,
    cache: HashMap<usize, Arc<RgbImage>>,
    order: VecDeque<usize>,
    cache_bytes: usize,
    max_cache_bytes: usize,
    /// Pixels decoded so far (each chunk each time it was decoded).
    decoded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawCodec {
    None,
    Lzw,
    Deflate,
}

struct RawLayout {
    codec: RawCodec,
    predictor: u16,
    little_endian: bool,
    white_is_zero: bool,
    bytes_per_sample: usize,
}

impl TiffRegions {
    /// The first page (the full-resolution image).
    pub fn open(path: &Path, max_cache_bytes: usize) -> Result<TiffRegions, SlideError> {
        TiffRegions::open_page(path, 0, max_cache_bytes)
    }

    /// Page `page` of the file (0 is the first image; pyramids keep reduced levels after it).
    pub fn open_page(path: &Path, page: usize, max_cache_bytes: usize) -> Result<TiffRegions, SlideError> {
        TiffRegions::from_origin(Origin::File(path.to_path_buf()), path, page, max_cache_bytes)
    }

    /// The first page of a TIFF held in memory; `name` is used in errors.
    pub fn from_bytes(bytes: Arc<[u8]>, name: &Path, max_cache_bytes: usize) -> Result<TiffRegions, SlideError> {
        TiffRegions::from_origin(Origin::Memory(bytes), name, 0, max_cache_bytes)
    }

    fn from_origin(
        origin: Origin,
        path: &Path,
        page: usize,
        max_cache_bytes: usize,
    ) -> Result<TiffRegions, SlideError> {
        guarded(|| TiffRegions::read_header(&origin, path, page, max_cache_bytes)).map_err(|kind| kind.at(path))
    }

    fn read_header(
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

    pub fn chunks(&self) -> usize {
        self.across * self.height.div_ceil(self.chunk_h)
    }

    /// Chunk size (width, height): tiles, or strips as wide as the image.
    pub fn chunk_size(&self) -> (usize, usize) {
        (self.chunk_w, self.chunk_h)
    }

    fn chunk_origin(&self, i: usize) -> (usize, usize) {
        ((i % self.across) * self.chunk_w, (i / self.across) * self.chunk_h)
    }

    /// The whole page, refused past `limits` before anything is allocated; chunks decode in
    /// parallel, a band at a time, without going through the cache.
    pub fn whole(&mut self, limits: SlideLimits) -> Result<RgbImage, SlideError> {
        check_size(self.width as u64, self.height as u64, limits).map_err(|kind| kind.at(&self.path))?;
        let mut out = RgbImage::new(self.width, self.height);
        let indices: Vec<usize> = (0..self.chunks()).collect();
        for band in indices.chunks(rayon::current_num_threads().max(1) * 4) {
            for (chunk, x0, y0) in self.decode_chunks(band, |img, x0, y0| (img, x0, y0))? {
                paste(&mut out, &chunk, x0, y0);
            }
        }
        Ok(out)
    }

    /// The `w × h` region at `(x, y)` from the chunks that cover it.
    pub fn region(&mut self, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        let mut out = RgbImage::new(w, h);
        if w == 0 || h == 0 {
            return Ok(out);
        }
        let (cx0, cx1) = (x / self.chunk_w, (x + w - 1) / self.chunk_w);
        let (cy0, cy1) = (y / self.chunk_h, (y + h - 1) / self.chunk_h);
        // A row of chunks at a time: their decoding runs in parallel, memory stays at one row.
        for cy in cy0..=cy1 {
            let needed: Vec<usize> = (cx0..=cx1).map(|cx| cy * self.across + cx).collect();
            let missing: Vec<usize> = needed.iter().copied().filter(|i| !self.cache.contains_key(i)).collect();
            let decoded = self.decode_chunks(&missing, |img, _, _| Arc::new(img))?;
            let mut fresh: HashMap<usize, Arc<RgbImage>> = missing.into_iter().zip(decoded).collect();
            for &i in &needed {
                let chunk = match fresh.remove(&i) {
                    Some(c) => {
                        self.remember(i, c.clone());
                        c
                    }
                    None => self.cache[&i].clone(),
                };
                let (ox, oy) = self.chunk_origin(i);
                // The overlap of the chunk and the region, in slide coordinates.
                let (ax, bx) = (x.max(ox), (x + w).min(ox + chunk.width));
                let (ay, by) = (y.max(oy), (y + h).min(oy + chunk.height));
                for sy in ay..by {
                    let src = ((sy - oy) * chunk.width + (ax - ox)) * 3;
                    let dst = ((sy - y) * w + (ax - x)) * 3;
                    out.data[dst..dst + (bx - ax) * 3].copy_from_slice(&chunk.data[src..src + (bx - ax) * 3]);
                }
            }
        }
        Ok(out)
    }

    /// Keeps a decoded chunk, dropping the oldest beyond the cache's budget.
    fn remember(&mut self, i: usize, chunk: Arc<RgbImage>) {
        let bytes = chunk.data.len();
        while self.cache_bytes + bytes > self.max_cache_bytes {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(c) = self.cache.remove(&old) {
                self.cache_bytes -= c.data.len();
            }
        }
        self.cache.insert(i, chunk);
        self.order.push_back(i);
        self.cache_bytes += bytes;
    }

    /// Chunk `i` as RGB8, cropped to the image (edge tiles carry padding in the file).
    pub fn decode_chunk(&mut self, i: usize) -> Result<RgbImage, SlideError> {
        Ok(self.decode_chunks(&[i], |img, _, _| img)?.remove(0))
    }

    /// Decodes chunks and maps each (with its slide origin) through `f`. Uncompressed, LZW and
    /// deflate chunks are read in turn and decompressed in parallel; other codecs one per thread.
    pub(crate) fn decode_chunks<T: Send>(
        &mut self,
        indices: &[usize],
        f: impl Fn(RgbImage, usize, usize) -> T + Sync,
    ) -> Result<Vec<T>, SlideError> {
        self.decoded += indices
            .iter()
            .map(|&i| {
                let (w, h) = self.chunk_data_size(i);
                (w * h) as u64
            })
            .sum::<u64>();
        // Every chunk's result is kept and the first error in chunk order is reported, so a file
        // with several bad chunks gets the same message whatever the thread count or timing.
        let results: Vec<Result<T, SlideErrorKind>> = if self.raw.is_some() {
            let mut compressed = Vec::with_capacity(indices.len());
            for &i in indices {
                compressed.push(self.raw_bytes(i).map_err(|kind| kind.at(&self.path))?);
            }
            let this = &*self;
            indices
                .par_iter()
                .zip(compressed)
                .map(|(&i, bytes)| {
                    let img = guarded(|| this.decode_raw(i, bytes))?;
                    let (x0, y0) = this.chunk_origin(i);
                    Ok(f(img, x0, y0))
                })
                .collect()
        } else {
            let this = &*self;
            indices
                .par_iter()
                .map(|&i| {
                    let img = this.decode_with_crate(i)?;
                    let (x0, y0) = this.chunk_origin(i);
                    Ok(f(img, x0, y0))
                })
                .collect()
        };
        results
            .into_iter()
            .collect::<Result<Vec<T>, _>>()
            .map_err(|kind| kind.at(&self.path))
    }

    /// Pixels decoded so far: each chunk's, each time it was decoded (the cache saves repeats).
    pub fn decoded_pixels(&self) -> u64 {
        self.decoded
    }

    fn chunk_data_size(&self, i: usize) -> (usize, usize) {
        let (ox, oy) = self.chunk_origin(i);
        (self.chunk_w.min(self.width - ox), self.chunk_h.min(self.height - oy))
    }

    /// Samples of chunk `i`, cropped to the image, to RGB8.
    fn to_rgb_image(&self, i: usize, samples: Vec<u8>) -> Result<RgbImage, SlideErrorKind> {
        let (dw, dh) = self.chunk_data_size(i);
        if samples.len() != dw * dh * self.channels {
            return Err(SlideErrorKind::Corrupt(format!(
                "chunk {i} decoded to {} samples, expected {dw}×{dh}×{}",
                samples.len(),
                self.channels
            )));
        }
        let data = match self.color {
            ColorType::RGB(_) => samples,
            ColorType::YCbCr(_) => ycbcr_to_rgb(samples),
            _ => to_rgb(&samples, self.channels),
        };
        Ok(RgbImage {
            width: dw,
            height: dh,
            data,
        })
    }

    /// Chunk `i`'s offset and byte count; a chunk said to reach past the end of the file is
    /// corrupt, before anything is read or allocated for it.
    fn extent(&self, i: usize) -> Result<(u64, u64), SlideErrorKind> {
        let (offset, count) = self.extents[i];
        if offset.checked_add(count).is_none_or(|end| end > self.len) {
            return Err(SlideErrorKind::Corrupt(format!(
                "chunk {i} ({count} bytes at {offset}) runs past the end of the file ({} bytes)",
                self.len
            )));
        }
        Ok((offset, count))
    }

    fn decode_with_crate(&self, i: usize) -> Result<RgbImage, SlideErrorKind> {
        let (offset, count) = self.extent(i)?;
        let slot = rayon::current_thread_index().unwrap_or(0) % self.decoders.len();
        // A decoder that panicked is still usable for other chunks: seeks start afresh.
        let mut decoder = self.decoders[slot].lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tables_frame) = self.jpeg {
            // The JPEG decoder sizes its output from the stream's own frame header (the chunk's,
            // or one in `JPEGTables`): one larger than the chunk it fills is refused before it
            // allocates.
            let reader = decoder.inner();
            reader.seek(SeekFrom::Start(offset))?;
            let frame =
                jpeg::frame(reader.take(count)).map_err(|e| SlideErrorKind::Corrupt(format!("chunk {i}: JPEG {e}")))?;
            let (cw, ch) = (self.chunk_w.next_multiple_of(16), self.chunk_h.next_multiple_of(16));
            for JpegFrame {
                width: w, height: h, ..
            } in [frame, tables_frame].into_iter().flatten()
            {
                if w > cw || h > ch {
                    return Err(SlideErrorKind::Corrupt(format!(
                        "chunk {i}: a JPEG of {w}×{h} in a {}×{} chunk",
                        self.chunk_w, self.chunk_h
                    )));
                }
            }
        }
        let samples = guarded(|| match decoder.read_chunk(i as u32)? {
            DecodingResult::U8(v) => Ok(v),
            DecodingResult::U16(v) => Ok(v.into_iter().map(to_u8).collect()),
            _ => Err(SlideErrorKind::Unsupported(format!(
                "TIFF samples that are not 8- or 16-bit unsigned integers ({})",
                colour_name(self.color)
            ))),
        })?;
        self.to_rgb_image(i, samples)
    }

    /// Chunk `i`'s bytes as stored.
    fn raw_bytes(&mut self, i: usize) -> Result<Vec<u8>, SlideErrorKind> {
        let (offset, count) = self.extent(i)?;
        let mut bytes = vec![0u8; count as usize];
        let reader = self.decoders[0]
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .inner();
        reader.seek(SeekFrom::Start(offset))?;
        reader
            .read_exact(&mut bytes)
            .map_err(|_| SlideErrorKind::Corrupt(format!("chunk {i} runs past the end of the file")))?;
        Ok(bytes)
    }

    /// Decompresses a stored chunk, undoes the predictor, crops the padding, converts to RGB8.
    fn decode_raw(&self, i: usize, stored: Vec<u8>) -> Result<RgbImage, SlideErrorKind> {
        let l = self.raw.as_ref().expect("a raw layout");
        let corrupt = |what: String| SlideErrorKind::Corrupt(format!("chunk {i}: {what}"));
        let (dw, dh) = self.chunk_data_size(i);
        let pixel_bytes = self.channels * l.bytes_per_sample;
        // Strips hold only their data rows; tiles are stored padded to full size.
        let (cw, rows) = if self.chunk_w == self.width {
            (self.width, dh)
        } else {
            (self.chunk_w, self.chunk_h)
        };
        let needed = cw * rows * pixel_bytes;
        let mut raw = match l.codec {
            RawCodec::None => {
                if stored.len() < needed {
                    return Err(corrupt(format!("holds {} bytes, expected {needed}", stored.len())));
                }
                let mut raw = stored;
                raw.truncate(needed);
                raw
            }
            RawCodec::Lzw => lzw_decompress(&stored, needed).map_err(corrupt)?,
            // The output grows as the stream yields it, as LZW's does.
            RawCodec::Deflate => {
                let mut raw = Vec::new();
                flate2::read::ZlibDecoder::new(&stored[..])
                    .take(needed as u64)
                    .read_to_end(&mut raw)
                    .map_err(|e| corrupt(format!("deflate: {e}")))?;
                if raw.len() < needed {
                    return Err(corrupt(format!(
                        "deflate: decompresses to {} bytes, expected {needed}",
                        raw.len()
                    )));
                }
                raw
            }
        };
        if l.predictor == 2 {
            for row in raw.chunks_exact_mut(cw * pixel_bytes).take(dh) {
                undo_horizontal_predictor(row, self.channels, l.bytes_per_sample, l.little_endian);
            }
        }
        // Padding rows and columns cropped (nothing to do for strips and inner tiles).
        let out = if (cw, rows) == (dw, dh) {
            raw
        } else {
            let mut out = Vec::with_capacity(dw * dh * pixel_bytes);
            for row in raw.chunks_exact(cw * pixel_bytes).take(dh) {
                out.extend_from_slice(&row[..dw * pixel_bytes]);
            }
            out
        };
        // One loop per byte order: chosen per sample through a function pointer, the
        // conversion took a fifth of a 16-bit slide's decoding.
        let mut samples: Vec<u8> = if l.bytes_per_sample == 2 {
            let pairs = out.chunks_exact(2);
            if l.little_endian {
                pairs.map(|b| to_u8(u16::from_le_bytes([b[0], b[1]]))).collect()
            } else {
                pairs.map(|b| to_u8(u16::from_be_bytes([b[0], b[1]]))).collect()
            }
        } else {
            out
        };
        if l.white_is_zero {
            samples.iter_mut().for_each(|s| *s = 255 - *s);
        }
        self.to_rgb_image(i, samples)
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

/// Copies `chunk` into `out` with its top-left corner at `(x0, y0)`.
fn paste(out: &mut RgbImage, chunk: &RgbImage, x0: usize, y0: usize) {
    let row = chunk.width * 3;
    for (y, src) in chunk.data.chunks_exact(row).enumerate() {
        let dst = ((y0 + y) * out.width + x0) * 3;
        out.data[dst..dst + row].copy_from_slice(src);
    }
}

/// 16-bit samples to 8, rounded.
fn to_u8(s: u16) -> u8 {
    ((s as u32 * 255 + 32767) / 65535) as u8
}

/// Decompresses a TIFF LZW stream of `needed` bytes; a stream that ends early is an error. The
/// output grows as the stream yields it (never sized from `needed` before the data is seen).
fn lzw_decompress(compressed: &[u8], needed: usize) -> Result<Vec<u8>, String> {
    let mut lzw = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    let mut out = Vec::new();
    let (mut consumed, mut filled) = (0, 0);
    while filled < needed {
        if filled == out.len() {
            out.resize(needed.min((2 * out.len()).max(1 << 16)), 0);
        }
        let step = lzw.decode_bytes(&compressed[consumed..], &mut out[filled..]);
        consumed += step.consumed_in;
        filled += step.consumed_out;
        match step.status {
            Err(e) => return Err(e.to_string()),
            Ok(weezl::LzwStatus::Ok) if step.consumed_in + step.consumed_out > 0 => {}
            Ok(_) => break, // end code, or no input left
        }
    }
    if filled < needed {
        return Err(format!("decompresses to {filled} bytes, expected {needed}"));
    }
    Ok(out)
}

/// TIFF predictor 2: each sample was stored as the difference from the same channel one pixel left.
fn undo_horizontal_predictor(row: &mut [u8], channels: usize, bytes_per_sample: usize, little_endian: bool) {
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
fn to_rgb(data: &[u8], channels: usize) -> Vec<u8> {
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
fn ycbcr_to_rgb(mut data: Vec<u8>) -> Vec<u8> {
    for px in data.chunks_exact_mut(3) {
        let (y, cb, cr) = (px[0] as f32, px[1] as f32 - 128.0, px[2] as f32 - 128.0);
        let c = round_to_u8;
        px[0] = c(y + 1.402 * cr);
        px[1] = c(y - 0.344_136 * cb - 0.714_136 * cr);
        px[2] = c(y + 1.772 * cb);
    }
    data
}

/// `v.round().clamp(0.0, 255.0) as u8` (halves away from zero) for every finite `v`, without
/// the libm call `round` becomes on baseline x86-64, which took a quarter of a JPEG slide's
/// decoding. Adding the largest f32 below one half and truncating is exact: where the sum is
/// inexact it rounds up to the next integer, just as a half does (LLVM lowers `round` so with
/// SSE4.1). The cast truncates toward zero and saturates at 0 and 255.
fn round_to_u8(v: f32) -> u8 {
    const JUST_BELOW_HALF: f32 = f32::from_bits(0x3EFF_FFFF);
    (v + JUST_BELOW_HALF) as u8
}

/// TIFF compression codes ftu decodes: none, CCITT group 4, LZW, JPEG, deflate (both codes),
/// PackBits.
const DECODED_COMPRESSIONS: [u16; 7] = [1, 4, 5, 7, 8, 32773, 32946];

/// What a compression code ftu does not decode is, for the error.
/// A TIFF colour type as a person names it: `8-bit CMYK`, `4-channel 16-bit multiband`.
fn colour_name(colour: ColorType) -> String {
    let (name, bits) = match colour {
        ColorType::Gray(b) => ("grey", b),
        ColorType::RGB(b) => ("RGB", b),
        ColorType::Palette(b) => ("palette", b),
        ColorType::GrayA(b) => ("grey with alpha", b),
        ColorType::RGBA(b) => ("RGBA", b),
        ColorType::CMYK(b) => ("CMYK", b),
        ColorType::CMYKA(b) => ("CMYK with alpha", b),
        ColorType::YCbCr(b) => ("YCbCr", b),
        ColorType::Multiband { bit_depth, num_samples } => {
            return format!("{num_samples}-channel {bit_depth}-bit multiband")
        }
        _ => return "an unknown colour type".to_string(),
    };
    format!("{bits}-bit {name}")
}

fn compression_name(code: u16) -> &'static str {
    match code {
        33003 | 33005 | 34712 => " (JPEG 2000, as Aperio SVS; read through OpenSlide)",
        6 => " (old-style JPEG)",
        34887..=34889 | 34925 => " (LERC / LZMA)",
        _ => "",
    }
}

/// Whether `err` is a TIFF ftu opened but cannot decode (a codec it lacks): OpenSlide may.
pub fn is_unsupported_codec(err: &SlideError) -> bool {
    matches!(&err.kind, SlideErrorKind::Unsupported(m) if m.starts_with("TIFF compression"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast rounding agrees with `round` + clamp on a dense grid over and past 0–255, on
    /// every half and on the floats either side of each half.
    #[test]
    fn round_to_u8_is_round_then_clamp() {
        let slow = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        let mut checked = 0;
        for k in -400_000..400_000 {
            let v = k as f32 / 1024.0;
            let half = (k / 1024) as f32 + 0.5;
            for x in [v, half, half.next_up(), half.next_down(), -half, (-half).next_up()] {
                assert_eq!(round_to_u8(x), slow(x), "{x:e}");
                checked += 1;
            }
        }
        for x in [0.0, -0.0, f32::MIN_POSITIVE, 254.5, 255.49998, 255.5, 1e9, -1e9] {
            assert_eq!(round_to_u8(x), slow(x), "{x:e}");
        }
        assert_eq!(checked, 4_800_000);
    }

    /// Grey, white and black stay; red and blue, as 8-bit YCbCr (76, 85, 255) and
    /// (29, 255, 107), come back as BT.601 says: R = 76 + 1.402·127 = 254.05, B = 29 + 1.772·127
    /// = 254.04, the other channels within half a level of 0.
    #[test]
    fn ycbcr_known_values() {
        let rgb = ycbcr_to_rgb(vec![
            128, 128, 128, 255, 128, 128, 0, 128, 128, 76, 85, 255, 29, 255, 107,
        ]);
        assert_eq!(rgb, vec![128, 128, 128, 255, 255, 255, 0, 0, 0, 254, 0, 0, 0, 0, 254]);
    }
}
