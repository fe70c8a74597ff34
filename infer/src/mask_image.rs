//! Masks as image files: any slide format in (non-zero = foreground), 0/255 greyscale PNG out.

use crate::atomic::{write_atomic, WriteError};
use crate::mask::Mask;
use crate::slide::{read_slide, SlideError, SlideLimits};
use image::ImageEncoder;
use std::io;
use std::path::Path;

/// Reads a mask image; a pixel is foreground when any channel is non-zero.
pub fn read_mask(path: &Path, limits: SlideLimits) -> Result<Mask, SlideError> {
    let rgb = read_slide(path, limits)?;
    let data = rgb
        .data
        .chunks_exact(3)
        .map(|p| (p[0] | p[1] | p[2] != 0) as u8)
        .collect();
    Ok(Mask::from_row_major(rgb.height, rgb.width, data).expect("decoded size matches header"))
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
}
