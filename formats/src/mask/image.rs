//! Masks as image files: any slide format in (non-zero = foreground), 0/255 greyscale PNG out.

use crate::atomic::{write_atomic, WriteError};
use crate::blocks::BlockMap;
use crate::mask::runs::RunMask;
use crate::mask::Mask;
use crate::slide::write::{needs_bigtiff, write_tiff_pages_with, Chunking, Compression, Samples, TiffMeta, TiffSpec};
use crate::slide::{decode_slide, read_slide, RgbImage, SlideError, SlideLimits};
use image::ImageEncoder;
use std::io;
use std::path::Path;

/// Reads a mask image; a pixel is foreground when any channel is non-zero.
pub fn read_mask(path: &Path, limits: SlideLimits) -> Result<Mask, SlideError> {
    Ok(to_mask(read_slide(path, limits)?))
}

/// [`read_mask`] of a file's bytes already in memory; `name` is used in errors.
pub fn decode_mask(bytes: &[u8], name: &Path, limits: SlideLimits) -> Result<Mask, SlideError> {
    Ok(to_mask(decode_slide(bytes, name, limits)?))
}

fn to_mask(rgb: RgbImage) -> Mask {
    let data = rgb
        .data
        .chunks_exact(3)
        .map(|p| (p[0] | p[1] | p[2] != 0) as u8)
        .collect();
    Mask::from_row_major(rgb.height, rgb.width, data).expect("decoded size matches header")
}

/// Writes a mask as an 8-bit greyscale PNG with 0 and 255, atomically.
pub fn write_mask_png(path: &Path, mask: &Mask) -> Result<(), WriteError> {
    write_grey_png(path, mask.width(), mask.height(), &mask.to_grey())
}

/// Writes 8-bit greyscale pixels as PNG, atomically.
pub fn write_grey_png(path: &Path, width: usize, height: usize, grey: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, |w| {
        image::codecs::png::PngEncoder::new(w)
            .write_image(grey, width as u32, height as u32, image::ExtendedColorType::L8)
            .map_err(io::Error::other)
    })
}

/// Writes RGB8 pixels as PNG, atomically.
pub fn write_rgb_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, |w| {
        image::codecs::png::PngEncoder::new(w)
            .write_image(rgb, width as u32, height as u32, image::ExtendedColorType::Rgb8)
            .map_err(io::Error::other)
    })
}

/// Tiled, deflated, 8-bit grey: what whole-slide viewers open, at any size.
fn grey_tiff_spec(width: usize, height: usize) -> TiffSpec {
    TiffSpec {
        width: width as u32,
        height: height as u32,
        samples: Samples::Grey8,
        chunking: Chunking::Tiles { size: TILE },
        compression: Compression::Deflate,
        bigtiff: needs_bigtiff(width as u32, height as u32, Samples::Grey8),
    }
}

const TILE: u32 = 512;

/// The pages of a pyramid over a `width × height` image: the image, then each level half the
/// last (rounded up) until one tile holds it, as (width, height, factor to level 0).
fn pyramid(width: usize, height: usize) -> Vec<(usize, usize, usize)> {
    let mut levels = vec![(width, height, 1)];
    let tile = TILE as usize;
    while let Some(&(w, h, f)) = levels.last() {
        if w <= tile && h <= tile {
            break;
        }
        levels.push((w.div_ceil(2), h.div_ceil(2), 2 * f));
    }
    levels
}

/// The level-0 pixel a level pixel `i` of factor `f` shows: the centre of its `f × f` block,
/// inside an axis of `n` pixels.
fn source(i: u32, f: usize, n: usize) -> usize {
    (i as usize * f + f / 2).min(n - 1)
}

/// Writes `width × height` grey pixels as a pyramidal tiled TIFF (see [`write_mask_tiff`]):
/// `row(y, columns, buf)` appends the values of level-0 row `y` at `columns`, the pixels one
/// tile row of a page samples.
fn write_grey_pyramid(
    path: &Path,
    width: usize,
    height: usize,
    pixel_size: Option<f64>,
    mut row: impl FnMut(usize, &[usize], &mut Vec<u8>),
) -> Result<(), WriteError> {
    let levels = pyramid(width, height);
    let mut pages: Vec<TiffSpec> = levels.iter().map(|&(w, h, _)| grey_tiff_spec(w, h)).collect();
    // One container for all pages, BigTIFF when the whole file may need it: the reduced pages
    // hold at most a third of level 0's pixels.
    if levels.len() > 1 {
        let all = height + height.div_ceil(3);
        let big = needs_bigtiff(width as u32, all as u32, Samples::Grey8);
        for p in &mut pages {
            p.bigtiff = big;
        }
    }
    let meta = TiffMeta {
        description: None,
        pixel_size,
    };
    let mut columns = Vec::new();
    write_tiff_pages_with(path, &pages, &meta, |page, rect, buf| {
        let f = levels[page].2;
        columns.clear();
        columns.extend((rect.x..rect.x + rect.width).map(|x| source(x, f, width)));
        for y in rect.y..rect.y + rect.height {
            row(source(y, f, height), &columns, buf);
        }
        Ok(())
    })
}

/// Writes a mask as a tiled 0/255 TIFF, tile by tile from its runs (no dense copy), with
/// reduced-resolution pages (each half the last, sampled, down to one tile) and the pixel size
/// in µm when known, so whole-slide viewers (QuPath, OpenSlide) open and overlay it at scale.
pub fn write_mask_tiff(path: &Path, mask: &RunMask, pixel_size: Option<f64>) -> Result<(), WriteError> {
    write_grey_pyramid(path, mask.width, mask.height, pixel_size, |y, columns, buf| {
        let runs = &mask.rows[y];
        let mut k = 0;
        // Columns rise, so one pass over the row's runs serves the whole span.
        for &x in columns {
            let x = x as u32;
            while k < runs.len() && runs[k].1 <= x {
                k += 1;
            }
            let on = k < runs.len() && runs[k].0 <= x;
            buf.push(if on { 255 } else { 0 });
        }
    })
}

/// Writes a probability map as a tiled 8-bit TIFF of round(p·255), block by block, with the
/// reduced-resolution pages and pixel size of [`write_mask_tiff`].
pub fn write_prob_tiff(path: &Path, map: &BlockMap, pixel_size: Option<f64>) -> Result<(), WriteError> {
    write_grey_pyramid(path, map.width, map.height, pixel_size, |y, columns, buf| {
        for &x in columns {
            let p = map.get(y, x);
            buf.push((p.clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_keeps_every_pixel() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        let data: Vec<u8> = (0..7 * 5).map(|i| (i % 3 == 0) as u8).collect();
        let m = Mask::from_row_major(7, 5, data).unwrap();
        write_mask_png(&p, &m).unwrap();
        let back = read_mask(&p, SlideLimits::default()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn tiff_masks_and_maps_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..700 * 530).map(|i| ((i / 7) % 3 == 0) as u8).collect();
        let m = Mask::from_row_major(530, 700, data).unwrap();
        let p = dir.path().join("m.tiff");
        write_mask_tiff(&p, &RunMask::from_mask(&m), None).unwrap();
        assert_eq!(read_mask(&p, SlideLimits::default()).unwrap(), m);
        let mut map = BlockMap::new(700, 530);
        map.add_window((600, 500, 2, 1), &[0.5, 1.0], &[1.0], &[1.0, 1.0], 1.0);
        write_prob_tiff(&p, &map, None).unwrap();
        let grey = read_slide(&p, SlideLimits::default()).unwrap();
        assert_eq!(grey.pixel(600, 500), [128; 3]);
        assert_eq!(grey.pixel(601, 500), [255; 3]);
        assert_eq!(grey.data.iter().filter(|&&v| v != 0).count(), 6);
    }

    /// Over one tile, a mask TIFF is a pyramid: pages halving down to one tile, each pixel the
    /// centre of its block, and the pixel size on the first page in pixels per centimetre.
    #[test]
    fn large_tiff_masks_are_pyramids_with_the_pixel_size() {
        use tiff::decoder::{Decoder, DecodingResult};
        use tiff::tags::Tag;
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (1300, 1100);
        let data: Vec<u8> = (0..w * h).map(|i| ((i % w) / 5 + (i / w) / 3) as u8 % 2).collect();
        let m = Mask::from_row_major(h, w, data).unwrap();
        let p = dir.path().join("m.tiff");
        write_mask_tiff(&p, &RunMask::from_mask(&m), Some(0.5)).unwrap();
        assert_eq!(read_mask(&p, SlideLimits::default()).unwrap(), m, "level 0 is the mask");
        let mut d = Decoder::new(std::fs::File::open(&p).unwrap()).unwrap();
        let tiff::decoder::ifd::Value::Rational(n, q) = d.get_tag(Tag::XResolution).unwrap() else {
            panic!("XResolution is a rational");
        };
        let resolution = n as f64 / q as f64;
        assert!((resolution - 20_000.0).abs() < 1e-6, "{resolution} px/cm");
        assert_eq!(d.get_tag_u32(Tag::ResolutionUnit).unwrap(), 3);
        let mut sizes = vec![d.dimensions().unwrap()];
        while d.more_images() {
            d.next_image().unwrap();
            let (pw, ph) = d.dimensions().unwrap();
            sizes.push((pw, ph));
            let f = w / pw as usize;
            let DecodingResult::U8(pixels) = d.read_image().unwrap() else {
                panic!("8-bit pages");
            };
            for y in 0..ph as usize {
                for x in 0..pw as usize {
                    let want = m.get((y * f + f / 2).min(h - 1), (x * f + f / 2).min(w - 1));
                    assert_eq!(pixels[y * pw as usize + x] == 255, want, "page of 1/{f} at ({x}, {y})");
                }
            }
        }
        assert_eq!(sizes, [(1300, 1100), (650, 550), (325, 275)]);
    }
}
