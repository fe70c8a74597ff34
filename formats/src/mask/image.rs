//! Masks as image files: any slide format in (non-zero = foreground), 0/255 greyscale PNG out.

use crate::atomic::{write_atomic, WriteError};
use crate::blocks::BlockMap;
use crate::mask::runs::RunMask;
use crate::mask::Mask;
use crate::slide::write::{needs_bigtiff, write_tiff, Chunking, Compression, Samples, TiffSpec};
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
        chunking: Chunking::Tiles { size: 512 },
        compression: Compression::Deflate,
        bigtiff: needs_bigtiff(width as u32, height as u32, Samples::Grey8),
    }
}

/// Writes a mask as a tiled 0/255 TIFF, tile by tile from its runs (no dense copy).
pub fn write_mask_tiff(path: &Path, mask: &RunMask) -> Result<(), WriteError> {
    write_tiff(path, &grey_tiff_spec(mask.width, mask.height), |rect, buf| {
        let (x0, x1) = (rect.x, rect.x + rect.width);
        for y in rect.y..rect.y + rect.height {
            let start = buf.len();
            buf.resize(start + rect.width as usize, 0);
            for &(s, e) in &mask.rows[y as usize] {
                let (s, e) = (s.max(x0), e.min(x1));
                if s < e {
                    buf[start + (s - x0) as usize..start + (e - x0) as usize].fill(255);
                }
            }
        }
        Ok(())
    })
}

/// Writes a probability map as a tiled 8-bit TIFF of round(p·255), block by block.
pub fn write_prob_tiff(path: &Path, map: &BlockMap) -> Result<(), WriteError> {
    write_tiff(path, &grey_tiff_spec(map.width, map.height), |rect, buf| {
        for y in rect.y..rect.y + rect.height {
            for x in rect.x..rect.x + rect.width {
                let p = map.get(y as usize, x as usize);
                buf.push((p.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        Ok(())
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
        write_mask_tiff(&p, &RunMask::from_mask(&m)).unwrap();
        assert_eq!(read_mask(&p, SlideLimits::default()).unwrap(), m);
        let mut map = BlockMap::new(700, 530);
        map.add_window((600, 500, 2, 1), &[0.5, 1.0], &[1.0], &[1.0, 1.0], 1.0);
        write_prob_tiff(&p, &map).unwrap();
        let grey = read_slide(&p, SlideLimits::default()).unwrap();
        assert_eq!(grey.pixel(600, 500), [128; 3]);
        assert_eq!(grey.pixel(601, 500), [255; 3]);
        assert_eq!(grey.data.iter().filter(|&&v| v != 0).count(), 6);
    }
}
