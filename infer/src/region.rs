//! Slides read region by region: a tiled or striped (Big)TIFF is decoded one chunk at a time
//! through a small cache, so memory does not grow with the slide's area; other files are read
//! whole. Also the slide's thumbnail, streamed chunk by chunk, for tissue detection and overviews.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tiff::decoder::{ChunkType, Decoder, DecodingResult};
use tiff::tags::{CompressionMethod, PlanarConfiguration, Tag};
use tiff::ColorType;

use crate::slide::{self, read_slide, RgbImage, SlideError, SlideLimits};

/// Decoded chunks kept for neighbouring windows (overlapping windows read the same chunks).
pub const DEFAULT_CACHE_BYTES: usize = 192 << 20;

/// A slide to read regions from.
pub enum SlideSource {
    /// Decoded whole (PNG, JPEG, or a TIFF small enough).
    Memory(RgbImage),
    /// A TIFF decoded chunk by chunk.
    Tiff(Box<TiffRegions>),
}

impl SlideSource {
    /// Opens a slide for region reads: TIFFs chunk by chunk, anything else whole (within `limits`).
    pub fn open(path: &Path, limits: SlideLimits) -> Result<SlideSource, SlideError> {
        let mut magic = [0u8; 4];
        let read_magic = File::open(path).and_then(|mut f| f.read_exact(&mut magic));
        if read_magic.is_ok() && matches!(&magic, [b'I', b'I', 42 | 43, 0] | [b'M', b'M', 0, 42 | 43]) {
            return Ok(SlideSource::Tiff(Box::new(TiffRegions::open(
                path,
                DEFAULT_CACHE_BYTES,
            )?)));
        }
        Ok(SlideSource::Memory(read_slide(path, limits)?))
    }

    pub fn width(&self) -> usize {
        match self {
            SlideSource::Memory(img) => img.width,
            SlideSource::Tiff(t) => t.width,
        }
    }

    pub fn height(&self) -> usize {
        match self {
            SlideSource::Memory(img) => img.height,
            SlideSource::Tiff(t) => t.height,
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
        }
    }

    /// The whole slide in memory, refused past `limits` (resize-mode groups need it).
    pub fn whole(&mut self, limits: SlideLimits) -> Result<RgbImage, SlideError> {
        match self {
            SlideSource::Memory(img) => Ok(img.clone()),
            SlideSource::Tiff(t) => {
                slide::check_size(&t.path, t.width as u64, t.height as u64, limits)?;
                let (w, h) = (t.width, t.height);
                t.region(0, 0, w, h)
            }
        }
    }

    /// The slide shrunk by an integer `factor` (box average; partial edge cells average what
    /// they hold), streamed chunk by chunk for TIFFs, chunks decoded in parallel.
    pub fn thumbnail(&mut self, factor: usize) -> Result<RgbImage, SlideError> {
        let factor = factor.max(1);
        let (tw, th) = (self.width().div_ceil(factor), self.height().div_ceil(factor));
        let mut total = CellSums::zeros(0, 0, tw, th);
        match self {
            SlideSource::Memory(img) => total.merge(&CellSums::of(img, 0, 0, factor)),
            SlideSource::Tiff(t) => {
                let indices: Vec<usize> = (0..t.chunks()).collect();
                // A band of chunks at a time: memory stays at the band's decoded pixels.
                for band in indices.chunks(rayon::current_num_threads().max(1) * 4) {
                    for part in t.decode_chunks(band, |img, x0, y0| CellSums::of(img, x0, y0, factor))? {
                        total.merge(&part);
                    }
                }
            }
        }
        Ok(total.average())
    }
}

/// Per thumbnail cell, the sums of R, G, B and the pixel count, over a rectangle of cells.
struct CellSums {
    x0: usize,
    y0: usize,
    width: usize,
    height: usize,
    sums: Vec<u32>,
    counts: Vec<u32>,
}

impl CellSums {
    fn zeros(x0: usize, y0: usize, width: usize, height: usize) -> CellSums {
        CellSums {
            x0,
            y0,
            width,
            height,
            sums: vec![0; width * height * 3],
            counts: vec![0; width * height],
        }
    }

    /// The cells an image at slide position `(x0, y0)` touches, with its pixels summed in.
    fn of(img: &RgbImage, x0: usize, y0: usize, factor: usize) -> CellSums {
        let (cx0, cy0) = (x0 / factor, y0 / factor);
        let cx1 = (x0 + img.width).div_ceil(factor);
        let cy1 = (y0 + img.height).div_ceil(factor);
        let mut c = CellSums::zeros(cx0, cy0, cx1 - cx0, cy1 - cy0);
        for y in 0..img.height {
            let row = ((y0 + y) / factor - cy0) * c.width;
            for x in 0..img.width {
                let t = row + (x0 + x) / factor - cx0;
                let p = (y * img.width + x) * 3;
                c.sums[t * 3] += img.data[p] as u32;
                c.sums[t * 3 + 1] += img.data[p + 1] as u32;
                c.sums[t * 3 + 2] += img.data[p + 2] as u32;
                c.counts[t] += 1;
            }
        }
        c
    }

    fn merge(&mut self, part: &CellSums) {
        for y in 0..part.height {
            for x in 0..part.width {
                let (src, dst) = (
                    y * part.width + x,
                    (part.y0 + y - self.y0) * self.width + part.x0 + x - self.x0,
                );
                self.counts[dst] += part.counts[src];
                for k in 0..3 {
                    self.sums[dst * 3 + k] += part.sums[src * 3 + k];
                }
            }
        }
    }

    fn average(&self) -> RgbImage {
        let data = self
            .sums
            .chunks_exact(3)
            .zip(&self.counts)
            .flat_map(|(s, &n)| s.iter().map(move |&v| (v + n / 2).checked_div(n).unwrap_or(0) as u8))
            .collect();
        RgbImage {
            width: self.width,
            height: self.height,
            data,
        }
    }
}

/// A copy of the `w × h` region at `(x, y)`.
pub fn crop(img: &RgbImage, x: usize, y: usize, w: usize, h: usize) -> RgbImage {
    let mut data = Vec::with_capacity(w * h * 3);
    for row in y..y + h {
        let start = (row * img.width + x) * 3;
        data.extend_from_slice(&img.data[start..start + w * 3]);
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

/// A TIFF's first image, decoded chunk by chunk on demand.
pub struct TiffRegions {
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
    /// One decoder per thread for chunks the tiff crate decodes (JPEG, PackBits, …), so those
    /// decode in parallel too; the first also reads stored chunk bytes.
    decoders: Vec<Mutex<Decoder<BufReader<File>>>>,
    color: ColorType,
    channels: usize,
    chunk_w: usize,
    chunk_h: usize,
    across: usize,
    /// Uncompressed, LZW and deflate chunks are decompressed here, in parallel (and the tiff
    /// crate's LZW reader can panic on edge tiles); other codecs go through the crate.
    raw: Option<RawLayout>,
    cache: HashMap<usize, Arc<RgbImage>>,
    order: VecDeque<usize>,
    cache_bytes: usize,
    max_cache_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawCodec {
    None,
    Lzw,
    Deflate,
}

struct RawLayout {
    codec: RawCodec,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    predictor: u16,
    little_endian: bool,
    white_is_zero: bool,
    bytes_per_sample: usize,
}

impl TiffRegions {
    pub fn open(path: &Path, max_cache_bytes: usize) -> Result<TiffRegions, SlideError> {
        let io_err = |cause| SlideError::Io {
            path: path.to_owned(),
            cause,
        };
        let tiff_err = |cause| SlideError::Tiff {
            path: path.to_owned(),
            cause,
        };
        let unsupported = |what: String| SlideError::Unsupported {
            path: path.to_owned(),
            what,
        };
        slide::guarded(path, || {
            let mut file = File::open(path).map_err(io_err)?;
            let mut order = [0u8; 2];
            file.read_exact(&mut order).map_err(io_err)?;
            file.rewind().map_err(io_err)?;
            let mut decoder = Decoder::new(BufReader::with_capacity(1 << 16, file)).map_err(tiff_err)?;
            let (width, height) = decoder.dimensions().map_err(tiff_err)?;
            let planar = decoder
                .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
                .map_err(tiff_err)?;
            if planar == Some(PlanarConfiguration::Planar.to_u16()) {
                return Err(unsupported("planar (separate-plane) TIFF".into()));
            }
            let color = decoder.colortype().map_err(tiff_err)?;
            let (channels, bytes_per_sample) = match color {
                ColorType::Gray(b) if b == 8 || b == 16 => (1, b as usize / 8),
                ColorType::GrayA(b) if b == 8 || b == 16 => (2, b as usize / 8),
                ColorType::RGB(b) if b == 8 || b == 16 => (3, b as usize / 8),
                ColorType::YCbCr(8) => (3, 1),
                ColorType::RGBA(b) if b == 8 || b == 16 => (4, b as usize / 8),
                other => {
                    return Err(unsupported(format!(
                        "TIFF colour type {other:?} (expected 8- or 16-bit grey, RGB or RGBA)"
                    )))
                }
            };
            let compression = decoder.find_tag_unsigned::<u16>(Tag::Compression).map_err(tiff_err)?;
            if let ColorType::YCbCr(_) = color {
                let subsampling = decoder
                    .find_tag_unsigned_vec::<u16>(crate::tiff_write::YCBCR_SUBSAMPLING)
                    .map_err(tiff_err)?;
                if compression != Some(CompressionMethod::ModernJPEG.to_u16())
                    && subsampling.as_deref() != Some(&[1, 1])
                {
                    return Err(unsupported(
                        "chroma-subsampled YCbCr TIFF without JPEG compression".into(),
                    ));
                }
            }
            let (cw, ch) = decoder.chunk_dimensions();
            let (chunk_w, chunk_h) = (cw as usize, ch as usize);
            if chunk_w == 0 || chunk_h == 0 {
                return Err(unsupported("chunks of size 0".into()));
            }
            let mut limits = tiff::decoder::Limits::default();
            let chunk_bytes = chunk_w * chunk_h * channels * bytes_per_sample;
            limits.decoding_buffer_size = limits.decoding_buffer_size.max(chunk_bytes * 2);
            limits.intermediate_buffer_size = limits.intermediate_buffer_size.max(chunk_bytes * 2);
            let mut decoder = decoder.with_limits(limits.clone());
            let codec = match compression {
                None | Some(1) => Some(RawCodec::None),
                Some(5) => Some(RawCodec::Lzw),
                Some(8) | Some(32946) => Some(RawCodec::Deflate),
                _ => None,
            };
            let raw = if let Some(codec) = codec {
                let (offsets_tag, counts_tag) = match decoder.get_chunk_type() {
                    ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
                    ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
                };
                let offsets = decoder.get_tag_u64_vec(offsets_tag).map_err(tiff_err)?;
                let counts = decoder.get_tag_u64_vec(counts_tag).map_err(tiff_err)?;
                let predictor = decoder
                    .find_tag_unsigned::<u16>(Tag::Predictor)
                    .map_err(tiff_err)?
                    .unwrap_or(1);
                if predictor != 1 && predictor != 2 {
                    return Err(unsupported(format!("TIFF predictor {predictor}")));
                }
                let white_is_zero = decoder
                    .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
                    .map_err(tiff_err)?
                    == Some(0);
                Some(RawLayout {
                    codec,
                    offsets,
                    counts,
                    predictor,
                    little_endian: &order == b"II",
                    white_is_zero,
                    bytes_per_sample,
                })
            } else {
                None
            };
            let (width, height) = (width as usize, height as usize);
            let mut decoders = vec![Mutex::new(decoder)];
            if raw.is_none() {
                for _ in 1..rayon::current_num_threads() {
                    let file = File::open(path).map_err(io_err)?;
                    let d = Decoder::new(BufReader::with_capacity(1 << 16, file)).map_err(tiff_err)?;
                    decoders.push(Mutex::new(d.with_limits(limits.clone())));
                }
            }
            let regions = TiffRegions {
                path: path.to_owned(),
                width,
                height,
                decoders,
                color,
                channels,
                chunk_w,
                chunk_h,
                across: width.div_ceil(chunk_w),
                raw,
                cache: HashMap::new(),
                order: VecDeque::new(),
                cache_bytes: 0,
                max_cache_bytes,
            };
            if let Some(l) = &regions.raw {
                if l.offsets.len() < regions.chunks() || l.counts.len() < regions.chunks() {
                    return Err(regions.corrupt(format!(
                        "{} chunk offsets for {} chunks",
                        l.offsets.len(),
                        regions.chunks()
                    )));
                }
            }
            Ok(regions)
        })
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

    fn corrupt(&self, what: String) -> SlideError {
        SlideError::Tiff {
            path: self.path.clone(),
            cause: tiff::TiffError::IoError(std::io::Error::new(std::io::ErrorKind::InvalidData, what)),
        }
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
            let decoded = self.decode_chunks(&missing, |img, _, _| Arc::new(img.clone()))?;
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
        Ok(self.decode_chunks(&[i], |img, _, _| img.clone())?.remove(0))
    }

    /// Decodes chunks and maps each (with its slide origin) through `f`. Uncompressed, LZW and
    /// deflate chunks are read in turn and decompressed in parallel; other codecs one by one.
    fn decode_chunks<T: Send>(
        &mut self,
        indices: &[usize],
        f: impl Fn(&RgbImage, usize, usize) -> T + Sync,
    ) -> Result<Vec<T>, SlideError> {
        use rayon::prelude::*;
        if self.raw.is_some() {
            let mut compressed = Vec::with_capacity(indices.len());
            for &i in indices {
                compressed.push(self.raw_bytes(i)?);
            }
            let this = &*self;
            return indices
                .par_iter()
                .zip(compressed)
                .map(|(&i, bytes)| {
                    let img = slide::guarded(&this.path, || this.decode_raw(i, &bytes))?;
                    let (x0, y0) = this.chunk_origin(i);
                    Ok(f(&img, x0, y0))
                })
                .collect();
        }
        let this = &*self;
        indices
            .par_iter()
            .map(|&i| {
                let img = this.decode_with_crate(i)?;
                let (x0, y0) = this.chunk_origin(i);
                Ok(f(&img, x0, y0))
            })
            .collect()
    }

    fn chunk_data_size(&self, i: usize) -> (usize, usize) {
        let (ox, oy) = self.chunk_origin(i);
        (self.chunk_w.min(self.width - ox), self.chunk_h.min(self.height - oy))
    }

    /// Samples to RGB8 as the whole-slide reader converts them.
    fn to_rgb_image(&self, i: usize, samples: Vec<u8>) -> Result<RgbImage, SlideError> {
        let (dw, dh) = self.chunk_data_size(i);
        if samples.len() != dw * dh * self.channels {
            return Err(self.corrupt(format!(
                "chunk {i} decoded to {} samples, expected {dw}×{dh}×{}",
                samples.len(),
                self.channels
            )));
        }
        let data = match self.color {
            ColorType::RGB(_) => samples,
            ColorType::YCbCr(_) => slide::ycbcr_to_rgb(samples),
            _ => slide::to_rgb(&samples, self.channels),
        };
        Ok(RgbImage {
            width: dw,
            height: dh,
            data,
        })
    }

    fn decode_with_crate(&self, i: usize) -> Result<RgbImage, SlideError> {
        let path = self.path.clone();
        let slot = rayon::current_thread_index().unwrap_or(0) % self.decoders.len();
        // A decoder that panicked is still usable for other chunks: seeks start afresh.
        let mut decoder = self.decoders[slot].lock().unwrap_or_else(PoisonError::into_inner);
        let samples = slide::guarded(&path, || {
            let tiff_err = |cause| SlideError::Tiff {
                path: path.clone(),
                cause,
            };
            match decoder.read_chunk(i as u32).map_err(tiff_err)? {
                DecodingResult::U8(v) => Ok(v),
                DecodingResult::U16(v) => Ok(v.into_iter().map(to_u8).collect()),
                _ => Err(SlideError::Unsupported {
                    path: path.clone(),
                    what: format!("TIFF sample format for {:?}", self.color),
                }),
            }
        })?;
        self.to_rgb_image(i, samples)
    }

    /// Chunk `i`'s bytes as stored.
    fn raw_bytes(&mut self, i: usize) -> Result<Vec<u8>, SlideError> {
        let l = self.raw.as_ref().expect("a raw layout");
        let (offset, count) = (l.offsets[i], l.counts[i] as usize);
        let mut bytes = vec![0u8; count];
        let reader = self.decoders[0]
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .inner();
        reader.seek(SeekFrom::Start(offset)).map_err(|cause| SlideError::Io {
            path: self.path.clone(),
            cause,
        })?;
        if reader.read_exact(&mut bytes).is_err() {
            return Err(self.corrupt(format!("chunk {i} runs past the end of the file")));
        }
        Ok(bytes)
    }

    /// Decompresses a stored chunk, undoes the predictor, crops the padding, converts to RGB8.
    fn decode_raw(&self, i: usize, stored: &[u8]) -> Result<RgbImage, SlideError> {
        let l = self.raw.as_ref().expect("a raw layout");
        let (dw, dh) = self.chunk_data_size(i);
        let pixel_bytes = self.channels * l.bytes_per_sample;
        // Strips hold only their data rows; tiles are stored padded to full size.
        let (cw, rows) = if self.chunk_w == self.width {
            (self.width, dh)
        } else {
            (self.chunk_w, self.chunk_h)
        };
        let needed = cw * rows * pixel_bytes;
        let mut raw = vec![0u8; needed];
        match l.codec {
            RawCodec::None => {
                if stored.len() < needed {
                    return Err(self.corrupt(format!("chunk {i} holds {} bytes, expected {needed}", stored.len())));
                }
                raw.copy_from_slice(&stored[..needed]);
            }
            RawCodec::Lzw => {
                slide::lzw_decompress(stored, &mut raw).map_err(|e| self.corrupt(format!("chunk {i}: {e}")))?
            }
            RawCodec::Deflate => flate2::read::ZlibDecoder::new(stored)
                .read_exact(&mut raw)
                .map_err(|e| self.corrupt(format!("chunk {i}: deflate: {e}")))?,
        }
        let mut out = Vec::with_capacity(dw * dh * pixel_bytes);
        for row in raw.chunks_exact_mut(cw * pixel_bytes).take(dh) {
            if l.predictor == 2 {
                slide::undo_horizontal_predictor(row, self.channels, l.bytes_per_sample, l.little_endian);
            }
            out.extend_from_slice(&row[..dw * pixel_bytes]);
        }
        let mut samples: Vec<u8> = if l.bytes_per_sample == 2 {
            let from = if l.little_endian {
                u16::from_le_bytes
            } else {
                u16::from_be_bytes
            };
            out.chunks_exact(2).map(|b| to_u8(from([b[0], b[1]]))).collect()
        } else {
            out
        };
        if l.white_is_zero {
            samples.iter_mut().for_each(|s| *s = 255 - *s);
        }
        self.to_rgb_image(i, samples)
    }
}

fn to_u8(s: u16) -> u8 {
    ((s as u32 * 255 + 32767) / 65535) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiff_write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};

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

    #[test]
    fn the_thumbnail_averages_each_cell() {
        let mut img = RgbImage::new(3, 2);
        img.data = vec![0, 0, 0, 10, 10, 10, 100, 0, 0, 20, 20, 20, 30, 30, 30, 200, 0, 0];
        let t = SlideSource::Memory(img).thumbnail(2).unwrap();
        assert_eq!((t.width, t.height), (2, 1));
        assert_eq!(t.data, [15, 15, 15, 150, 0, 0]);
    }
}
