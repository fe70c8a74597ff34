//! Slides read region by region: a TIFF is decoded one chunk at a time through a small cache
//! ([`TiffRegions`]), so memory does not grow with the slide's area; other files are read whole.
//! Also the slide's thumbnail, streamed chunk by chunk (from a pyramid level when one is fine
//! enough), for tissue detection and overviews.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::error::{check_size, guarded, SlideError, SlideErrorKind, SlideLimits};
use super::ifd::checked_decoder;
use super::openslide::OpenSlide;
use super::read::read_slide;
use super::rgb::{crop, RgbImage};
use super::sniff::{sniff_file, Format};
use super::tiff::{is_unsupported_codec, TiffRegions};

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

    /// The coarsest pyramid level that still has at least `per_pixel` slide pixels' resolution
    /// (a level pixel no larger than `per_pixel` slide pixels), when one saves at least half the
    /// pixels across; a slide without levels has none.
    pub fn level_for(&self, per_pixel: f64) -> Option<PyramidLevel> {
        let (width, height) = (self.width(), self.height());
        self.levels()
            .into_iter()
            .filter(|l| {
                let (dx, dy) = l.downsample(width, height);
                dx.max(dy) <= per_pixel * (1.0 + 1e-6) && dx.min(dy) >= 2.0
            })
            .min_by_key(|l| l.width * l.height)
    }

    /// The slide's reduced-resolution levels: a TIFF's pages, OpenSlide's levels (by index).
    pub fn levels(&self) -> Vec<PyramidLevel> {
        match self {
            SlideSource::Memory(_) => Vec::new(),
            SlideSource::Tiff(t) => pyramid_levels(&t.path, t.width, t.height),
            SlideSource::OpenSlide(o) => o
                .levels
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, l)| PyramidLevel {
                    page: i,
                    width: l.width,
                    height: l.height,
                })
                .collect(),
        }
    }

    /// A reader of `level` (one of [`SlideSource::levels`]) in slide coordinates.
    pub fn level_reader(&self, level: PyramidLevel) -> Result<LevelReader, SlideError> {
        let (width, height) = (self.width(), self.height());
        let pages = match self {
            SlideSource::OpenSlide(o) => Pages::OpenSlide(o.clone()),
            SlideSource::Tiff(t) => Pages::Tiff(TiffRegions::open_page(&t.path, level.page, DEFAULT_CACHE_BYTES)?),
            SlideSource::Memory(_) => unreachable!("a slide in memory has no levels"),
        };
        let (dx, dy) = level.downsample(width, height);
        Ok(LevelReader { level, dx, dy, pages })
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

    /// The slide shrunk by an integer `factor` (box average; partial edge cells average what
    /// they hold), streamed chunk by chunk for TIFFs, chunks decoded in parallel.
    pub fn thumbnail(&mut self, factor: usize) -> Result<RgbImage, SlideError> {
        Ok(self.thumbnail_with_level(factor)?.0)
    }

    /// The thumbnail, and the pyramid level it was made from. A pyramidal TIFF's smallest
    /// reduced-resolution page that is still at least as fine as the thumbnail is read instead
    /// of the full-resolution page, so only a fraction of the slide is decoded; each thumbnail
    /// cell then averages the level's pixels whose centres fall in it.
    pub fn thumbnail_with_level(&mut self, factor: usize) -> Result<(RgbImage, Option<PyramidLevel>), SlideError> {
        let factor = factor.max(1);
        let (width, height) = (self.width(), self.height());
        let (tw, th) = (width.div_ceil(factor), height.div_ceil(factor));
        let mut total = CellSums::zeros(0, 0, tw, th);
        let full = CellMap::new(1.0, 1.0, factor, tw, th);
        let level = match self {
            SlideSource::Memory(img) => {
                total.merge(&CellSums::of(img, 0, 0, &full));
                None
            }
            SlideSource::OpenSlide(o) => {
                // The smallest level still as fine as the thumbnail, read whole.
                let (index, l) = o
                    .levels
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.downsample <= factor as f64 + 1e-9)
                    .min_by_key(|(_, l)| l.width * l.height)
                    .expect("level 0 always fits");
                let img = o.read_level(index, 0, 0, l.width, l.height)?;
                let (dx, dy) = (width as f64 / l.width as f64, height as f64 / l.height as f64);
                total.merge(&CellSums::of(&img, 0, 0, &CellMap::new(dx, dy, factor, tw, th)));
                (index > 0).then_some(PyramidLevel {
                    page: index,
                    width: l.width,
                    height: l.height,
                })
            }
            SlideSource::Tiff(t) => {
                let level = pyramid_levels(&t.path, width, height)
                    .into_iter()
                    .filter(|l| l.fits(width, height, factor))
                    .min_by_key(|l| l.width * l.height);
                let mut page = match level {
                    Some(l) => Some(TiffRegions::open_page(&t.path, l.page, 0)?),
                    None => None,
                };
                let (source, map) = match (&mut page, level) {
                    (Some(p), Some(l)) => {
                        let (dx, dy) = l.downsample(width, height);
                        (p, CellMap::new(dx, dy, factor, tw, th))
                    }
                    _ => (&mut **t, full),
                };
                let indices: Vec<usize> = (0..source.chunks()).collect();
                // A band of chunks at a time: memory stays at the band's decoded pixels.
                for band in indices.chunks(rayon::current_num_threads().max(1) * 4) {
                    for part in source.decode_chunks(band, |img, x0, y0| CellSums::of(&img, x0, y0, &map))? {
                        total.merge(&part);
                    }
                }
                level
            }
        };
        Ok((total.average(), level))
    }
}

/// A reduced-resolution page of a pyramidal TIFF (as whole-slide scanners write: SVS, NDPI-like
/// and generic tiled pyramids keep each level as a later page of the same file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PyramidLevel {
    /// The page's index in the file (0 is the full-resolution image).
    pub page: usize,
    pub width: usize,
    pub height: usize,
}

impl PyramidLevel {
    /// Slide pixels per level pixel, across and down.
    pub fn downsample(&self, width: usize, height: usize) -> (f64, f64) {
        (width as f64 / self.width as f64, height as f64 / self.height as f64)
    }

    /// Whether a thumbnail at `factor` can be made from this level: each thumbnail cell then
    /// holds at least one of the level's pixels.
    fn fits(&self, width: usize, height: usize, factor: usize) -> bool {
        let (dx, dy) = self.downsample(width, height);
        dx <= factor as f64 + 1e-9 && dy <= factor as f64 + 1e-9
    }
}

/// The pages after the first that hold the same image at a lower resolution: smaller, and with
/// the same aspect ratio (the height within a pixel of height / (width / level width)). Label and
/// macro photographs, which have other shapes, are left out, and so is anything past a page that
/// cannot be read: the levels only ever save time, the full-resolution page is always there.
pub fn pyramid_levels(path: &Path, width: usize, height: usize) -> Vec<PyramidLevel> {
    // A decoder crate's panic on a malformed page is a page that cannot be read: no levels.
    guarded(|| Ok(levels_of(path, width, height))).unwrap_or_default()
}

fn levels_of(path: &Path, width: usize, height: usize) -> Vec<PyramidLevel> {
    let mut levels = Vec::new();
    let Ok(file) = File::open(path) else {
        return levels;
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let Ok(mut decoder) = checked_decoder(BufReader::new(file), len) else {
        return levels;
    };
    let mut page = 0;
    while decoder.more_images() {
        page += 1;
        // A page the crate cannot describe is skipped; a broken chain of pages ends the walk.
        if decoder.next_image().is_err() {
            continue;
        }
        let Ok((w, h)) = decoder.dimensions() else { continue };
        let (w, h) = (w as usize, h as usize);
        if w == 0 || h == 0 || w >= width || h >= height {
            continue;
        }
        let expected_h = height as f64 * w as f64 / width as f64;
        if (h as f64 - expected_h).abs() <= 1.0 {
            levels.push(PyramidLevel {
                page,
                width: w,
                height: h,
            });
        }
    }
    levels
}

/// Which thumbnail cell each pixel of a (possibly reduced) page falls in: the one holding its
/// centre, clamped to the thumbnail.
#[derive(Debug, Clone, Copy)]
struct CellMap {
    /// Thumbnail cells per page pixel, across and down.
    sx: f64,
    sy: f64,
    width: usize,
    height: usize,
}

impl CellMap {
    fn new(downsample_x: f64, downsample_y: f64, factor: usize, width: usize, height: usize) -> CellMap {
        CellMap {
            sx: downsample_x / factor as f64,
            sy: downsample_y / factor as f64,
            width,
            height,
        }
    }

    fn cell_x(&self, x: usize) -> usize {
        (((x as f64 + 0.5) * self.sx) as usize).min(self.width - 1)
    }

    fn cell_y(&self, y: usize) -> usize {
        (((y as f64 + 0.5) * self.sy) as usize).min(self.height - 1)
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

    /// The cells an image at page position `(x0, y0)` touches, with its pixels summed in.
    fn of(img: &RgbImage, x0: usize, y0: usize, map: &CellMap) -> CellSums {
        if img.width == 0 || img.height == 0 {
            return CellSums::zeros(0, 0, 0, 0);
        }
        let xs: Vec<usize> = (x0..x0 + img.width).map(|x| map.cell_x(x)).collect();
        let (cx0, cx1) = (xs[0], xs[xs.len() - 1] + 1);
        let (cy0, cy1) = (map.cell_y(y0), map.cell_y(y0 + img.height - 1) + 1);
        let mut c = CellSums::zeros(cx0, cy0, cx1 - cx0, cy1 - cy0);
        for y in 0..img.height {
            let row = (map.cell_y(y0 + y) - cy0) * c.width;
            for (x, &cx) in xs.iter().enumerate() {
                let t = row + cx - cx0;
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

    /// Each cell's mean colour. A pixel's cell depends on its column and row alone, so cells no
    /// pixel fell in (possible at the far edges when a pyramid level was rounded down) form
    /// whole columns and rows; each takes the colour of the nearest column and row that have
    /// pixels.
    fn average(&self) -> RgbImage {
        let mut data: Vec<u8> = self
            .sums
            .chunks_exact(3)
            .zip(&self.counts)
            .flat_map(|(s, &n)| s.iter().map(move |&v| (v + n / 2).checked_div(n).unwrap_or(0) as u8))
            .collect();
        let w = self.width;
        let cols = nearest_filled((0..w).map(|x| (0..self.height).any(|y| self.counts[y * w + x] > 0)));
        let rows = nearest_filled((0..self.height).map(|y| self.counts[y * w..(y + 1) * w].iter().any(|&n| n > 0)));
        for (y, &sy) in rows.iter().enumerate() {
            for (x, &sx) in cols.iter().enumerate() {
                if (sx, sy) != (x, y) {
                    let j = sy * w + sx;
                    data.copy_within(j * 3..j * 3 + 3, (y * w + x) * 3);
                }
            }
        }
        RgbImage {
            width: self.width,
            height: self.height,
            data,
        }
    }
}

/// For each index, the nearest index that is filled (itself when it is; the left side first).
fn nearest_filled(filled: impl Iterator<Item = bool>) -> Vec<usize> {
    let filled: Vec<bool> = filled.collect();
    (0..filled.len())
        .map(|i| {
            if filled[i] {
                return i;
            }
            let left = (0..i).rev().find(|&j| filled[j]);
            let right = (i + 1..filled.len()).find(|&j| filled[j]);
            match (left, right) {
                (Some(l), Some(r)) if r - i < i - l => r,
                (Some(l), _) => l,
                (None, Some(r)) => r,
                (None, None) => i,
            }
        })
        .collect()
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

    /// A smooth picture (gradients), so box averages at different scales agree.
    fn smooth(w: usize, h: usize) -> RgbImage {
        let mut img = RgbImage::new(w, h);
        for (i, px) in img.data.chunks_exact_mut(3).enumerate() {
            let (y, x) = (i / w, i % w);
            px.copy_from_slice(&[
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) * 255 / (w + h)) as u8,
            ]);
        }
        img
    }

    /// `img` box-averaged by `d`, rounded down in size as scanners do.
    fn shrink(img: &RgbImage, d: usize) -> RgbImage {
        let (w, h) = (img.width / d, img.height / d);
        let mut out = RgbImage::new(w, h);
        for y in 0..h {
            for x in 0..w {
                for k in 0..3 {
                    let mut sum = 0usize;
                    for dy in 0..d {
                        for dx in 0..d {
                            sum += img.data[((y * d + dy) * img.width + x * d + dx) * 3 + k] as usize;
                        }
                    }
                    out.data[(y * w + x) * 3 + k] = ((sum + d * d / 2) / (d * d)) as u8;
                }
            }
        }
        out
    }

    #[test]
    fn a_pyramid_level_makes_the_thumbnail_when_one_is_fine_enough() {
        use crate::slide::write::write_tiff_pages;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyramid.tiff");
        let full = smooth(300, 170);
        // Levels at 2× and 4× (150×85, 75×42), then a square "label" photograph.
        let mut label = RgbImage::new(60, 60);
        label.data.fill(255);
        let pages = [full.clone(), shrink(&full, 2), shrink(&full, 4), label];
        let specs: Vec<TiffSpec> = pages
            .iter()
            .map(|p| TiffSpec {
                width: p.width as u32,
                height: p.height as u32,
                samples: Samples::Rgb8,
                chunking: Chunking::Tiles { size: 32 },
                compression: Compression::Deflate,
                bigtiff: false,
            })
            .collect();
        write_tiff_pages(&path, &specs, |page, rect, buf| {
            let p = &pages[page];
            for y in rect.y as usize..(rect.y + rect.height) as usize {
                buf.extend_from_slice(&p.data[(y * p.width + rect.x as usize) * 3..][..rect.width as usize * 3]);
            }
            Ok(())
        })
        .unwrap();

        let levels = pyramid_levels(&path, 300, 170);
        let want = |page: usize| {
            Some(PyramidLevel {
                page,
                width: pages[page].width,
                height: pages[page].height,
            })
        };
        assert_eq!(levels.len(), 2, "the label is not a level: {levels:?}");
        assert_eq!((Some(levels[0]), Some(levels[1])), (want(1), want(2)));

        let mut src = SlideSource::open(&path, SlideLimits::default()).unwrap();
        // The page itself is still the full-resolution image.
        assert_eq!(src.region(0, 0, 300, 170).unwrap(), full);
        for (factor, level) in [(1, None), (2, want(1)), (3, want(1)), (5, want(2)), (8, want(2))] {
            let (thumb, used) = src.thumbnail_with_level(factor).unwrap();
            assert_eq!(used, level, "factor {factor}");
            let reference = SlideSource::Memory(full.clone()).thumbnail(factor).unwrap();
            assert_eq!((thumb.width, thumb.height), (reference.width, reference.height));
            // Gradients of at most 255 over 170 px: where a level pixel's centre falls shifts the
            // mean by under one level pixel's worth (6 at 4×). The last row and column may lie
            // beyond a level rounded down in size and take their neighbours' colour (one cell).
            let (tw, th) = (thumb.width, thumb.height);
            for (i, (a, b)) in thumb
                .data
                .chunks_exact(3)
                .zip(reference.data.chunks_exact(3))
                .enumerate()
            {
                let edge = i % tw == tw - 1 || i / tw == th - 1;
                let bound = if edge { (2 * factor * 255 / 170) as u8 } else { 6 };
                let worst = a.iter().zip(b).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
                assert!(worst <= bound, "factor {factor} cell {i}: {a:?} vs {b:?}");
            }
            if level.is_none() {
                assert_eq!(thumb, reference);
            }
        }
        // A level that is exactly the thumbnail's scale gives the level's own pixels.
        let (thumb, used) = src.thumbnail_with_level(2).unwrap();
        assert_eq!(used, want(1));
        assert_eq!(crop(&thumb, 0, 0, 150, 85), pages[1]);
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

/// A pyramid level read in slide coordinates: a window of the slide comes from the level's
/// pixels that cover it, so a model working at the level's scale (or coarser) decodes the
/// level's pixels, not the full resolution's.
pub struct LevelReader {
    pub level: PyramidLevel,
    /// Slide pixels per level pixel, across and down.
    dx: f64,
    dy: f64,
    pages: Pages,
}

enum Pages {
    Tiff(TiffRegions),
    /// OpenSlide's level `level.page`, read in level-0 coordinates.
    OpenSlide(Arc<OpenSlide>),
}

impl LevelReader {
    /// The level's `w × h` pixels at `(x, y)` (level pixels).
    fn level_region(&mut self, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        match &mut self.pages {
            Pages::Tiff(t) => t.region(x, y, w, h),
            Pages::OpenSlide(o) => o.read_level(
                self.level.page,
                (x as f64 * self.dx).round() as usize,
                (y as f64 * self.dy).round() as usize,
                w,
                h,
            ),
        }
    }

    /// The slide window at `(x, y)` of `w × h` slide pixels (a window of side `side`, cut by the
    /// slide's edge when smaller) at the level's scale, `side / downsample` pixels a side: each
    /// output pixel is the level sampled bilinearly at the slide point its centre stands for, so
    /// the window lines up with the slide to a fraction of a pixel whatever the level's grid;
    /// points past the slide's edge take the edge's value, as level-0 windows are padded.
    pub fn window(&mut self, x: usize, y: usize, w: usize, h: usize, side: usize) -> Result<RgbImage, SlideError> {
        let (lw, lh) = (self.level.width, self.level.height);
        let n = ((side as f64 / self.dx.max(self.dy)).round() as usize).max(1);
        let step = side as f64 / n as f64;
        // Level coordinates of output pixel i's centre, along one axis.
        let coord = |origin: usize, len: usize, d: f64, i: usize| {
            let slide = (origin as f64 + (i as f64 + 0.5) * step).min((origin + len) as f64 - 0.5);
            slide / d - 0.5
        };
        let us: Vec<f64> = (0..n).map(|i| coord(x, w, self.dx, i)).collect();
        let vs: Vec<f64> = (0..n).map(|i| coord(y, h, self.dy, i)).collect();
        let clamp = |v: f64, len: usize| v.floor().clamp(0.0, (len - 1) as f64) as usize;
        let (x0, x1) = (clamp(us[0], lw), (clamp(us[n - 1], lw) + 1).min(lw - 1));
        let (y0, y1) = (clamp(vs[0], lh), (clamp(vs[n - 1], lh) + 1).min(lh - 1));
        let region = self.level_region(x0, y0, x1 - x0 + 1, y1 - y0 + 1)?;
        let (rw, rh) = (region.width, region.height);
        let mut out = RgbImage::new(n, n);
        for (r, &v) in vs.iter().enumerate() {
            let v = (v - y0 as f64).clamp(0.0, (rh - 1) as f64);
            let (ya, fy) = (v.floor() as usize, (v - v.floor()) as f32);
            let yb = (ya + 1).min(rh - 1);
            for (c, &u) in us.iter().enumerate() {
                let u = (u - x0 as f64).clamp(0.0, (rw - 1) as f64);
                let (xa, fx) = (u.floor() as usize, (u - u.floor()) as f32);
                let xb = (xa + 1).min(rw - 1);
                let px = |yy: usize, xx: usize| &region.data[(yy * rw + xx) * 3..(yy * rw + xx) * 3 + 3];
                let (a, b, cc, d) = (px(ya, xa), px(ya, xb), px(yb, xa), px(yb, xb));
                for k in 0..3 {
                    let top = a[k] as f32 * (1.0 - fx) + b[k] as f32 * fx;
                    let bottom = cc[k] as f32 * (1.0 - fx) + d[k] as f32 * fx;
                    out.data[(r * n + c) * 3 + k] = (top * (1.0 - fy) + bottom * fy).round() as u8;
                }
            }
        }
        Ok(out)
    }

    pub fn decoded_pixels(&self) -> u64 {
        match &self.pages {
            Pages::Tiff(t) => t.decoded_pixels(),
            // Counted by the slide the reader shares (`SlideSource::decoded_pixels`).
            Pages::OpenSlide(_) => 0,
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
