//! The one TIFF reader: a (Big)TIFF page decoded chunk by chunk (tiles, or strips as wide as the
//! image), for a region through a small cache or for the whole page in parallel bands.
//! Uncompressed, LZW and deflate chunks are decompressed here, in parallel (tiff 0.10.3's own LZW
//! reader panics on some valid edge tiles); other codecs (JPEG, PackBits, …) go through the
//! `tiff` crate with one decoder per thread. 8/16-bit grey, grey+alpha, RGB, RGBA and YCbCr
//! become RGB8.
//!
//! The header and page checks are in `header.rs`, the chunk cache behind [`TiffRegions::region`]
//! in `cache.rs`, and chunk decoding (ftu's own codecs and the crate's) in `codec.rs`.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use tiff::decoder::Decoder;
use tiff::ColorType;

use super::error::{check_size, guarded, SlideError, SlideErrorKind, SlideLimits};
use super::jpeg::JpegFrame;
use super::rgb::RgbImage;

mod cache;
mod codec;
mod header;

use codec::RawLayout;

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
}

/// Copies `chunk` into `out` with its top-left corner at `(x0, y0)`.
fn paste(out: &mut RgbImage, chunk: &RgbImage, x0: usize, y0: usize) {
    let row = chunk.width * 3;
    for (y, src) in chunk.data.chunks_exact(row).enumerate() {
        let dst = ((y0 + y) * out.width + x0) * 3;
        out.data[dst..dst + row].copy_from_slice(src);
    }
}

/// Whether `err` is a TIFF ftu opened but cannot decode (a codec it lacks): OpenSlide may.
pub fn is_unsupported_codec(err: &SlideError) -> bool {
    matches!(&err.kind, SlideErrorKind::Unsupported(m) if m.starts_with("TIFF compression"))
}
