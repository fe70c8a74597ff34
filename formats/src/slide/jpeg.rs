//! What a JPEG stream's frame header says, read before a decoder allocates for it: the frame's
//! size and the size of its MCUs (minimum coded units). A decoder works on whole MCUs, so a
//! frame one pixel tall with 4× vertical sampling is decoded as 32 rows: the MCU-padded area,
//! not the nominal one, is what the pixel limit has to bound.

use std::io::Read;

use super::error::{SlideErrorKind, SlideLimits};

/// A JPEG frame header: its size, and its MCU's (8 × the largest sampling factors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JpegFrame {
    pub width: usize,
    pub height: usize,
    pub mcu_width: usize,
    pub mcu_height: usize,
}

impl JpegFrame {
    /// The pixels a decoder works on: the frame rounded up to whole MCUs.
    pub fn padded_pixels(&self) -> u64 {
        let w = self.width.next_multiple_of(self.mcu_width) as u64;
        let h = self.height.next_multiple_of(self.mcu_height) as u64;
        w.saturating_mul(h)
    }

    /// Refuses a frame whose MCU-padded area is past `limits`.
    pub fn check(&self, limits: SlideLimits) -> Result<(), SlideErrorKind> {
        let padded = self.padded_pixels();
        if padded > limits.max_pixels {
            return Err(SlideErrorKind::JpegWorkArea {
                width: self.width,
                height: self.height,
                mcu_width: self.mcu_width,
                mcu_height: self.mcu_height,
                padded,
                max_pixels: limits.max_pixels,
            });
        }
        Ok(())
    }
}

/// The first start-of-frame header of a JPEG stream, if one comes before its scan; `None` when
/// there is none (as in the tables of a TIFF's `JPEGTables`). Errors say what is wrong, for the
/// caller to put in context.
pub(crate) fn frame<R: Read>(mut reader: R) -> Result<Option<JpegFrame>, String> {
    let next = |r: &mut R| -> Result<u8, String> {
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte)
            .map_err(|_| "ends before its frame header".to_string())?;
        Ok(byte[0])
    };
    if (next(&mut reader)?, next(&mut reader)?) != (0xFF, 0xD8) {
        return Err("no start-of-image marker".into());
    }
    loop {
        if next(&mut reader)? != 0xFF {
            return Err("a segment without a marker".into());
        }
        let mut marker = next(&mut reader)?;
        while marker == 0xFF {
            marker = next(&mut reader)?;
        }
        if marker == 0xD9 || marker == 0xDA {
            return Ok(None); // end of image, or the scan: no frame header before it
        }
        let length = u16::from_be_bytes([next(&mut reader)?, next(&mut reader)?]) as u64;
        // SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC): precision, height, width,
        // components, then each component's id, sampling factors (H << 4 | V) and table.
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let mut header = [0u8; 6];
            reader
                .read_exact(&mut header)
                .map_err(|_| "ends inside its frame header".to_string())?;
            let height = u16::from_be_bytes([header[1], header[2]]) as usize;
            let width = u16::from_be_bytes([header[3], header[4]]) as usize;
            let mut components = vec![0u8; header[5] as usize * 3];
            reader
                .read_exact(&mut components)
                .map_err(|_| "ends inside its frame header's components".to_string())?;
            let (mut h_max, mut v_max) = (1, 1);
            for c in components.chunks_exact(3) {
                let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
                if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                    return Err(format!("component {} has sampling factors {h}×{v} (1 to 4 each)", c[0]));
                }
                h_max = h_max.max(h);
                v_max = v_max.max(v);
            }
            return Ok(Some(JpegFrame {
                width,
                height,
                mcu_width: 8 * h_max,
                mcu_height: 8 * v_max,
            }));
        }
        if length < 2 {
            return Err(format!("a segment of length {length}"));
        }
        std::io::copy(&mut (&mut reader).take(length - 2), &mut std::io::sink()).map_err(|e| e.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG from the `image` crate's encoder (4:2:0, so 16×16 MCUs).
    fn encoded(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&image)
            .expect("encoding to memory");
        out
    }

    #[test]
    fn reads_the_size_and_mcu_of_an_encoded_frame() {
        let f = frame(&encoded(37, 5)[..]).unwrap().unwrap();
        assert_eq!((f.width, f.height), (37, 5));
        assert!(
            [8, 16].contains(&f.mcu_width) && [8, 16].contains(&f.mcu_height),
            "{f:?}"
        );
        let (pw, ph) = (
            37usize.next_multiple_of(f.mcu_width),
            5usize.next_multiple_of(f.mcu_height),
        );
        assert_eq!(f.padded_pixels(), (pw * ph) as u64);
    }

    /// SOI, then a baseline frame header of `width`×`height` with the components' sampling bytes.
    fn header(width: u16, height: u16, sampling: &[u8]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0]; // SOI, a 2-byte APP0 to skip
        b.extend([0xFF, 0xC0]);
        b.extend((8 + 3 * sampling.len() as u16).to_be_bytes());
        b.push(8);
        b.extend(height.to_be_bytes());
        b.extend(width.to_be_bytes());
        b.push(sampling.len() as u8);
        for (i, s) in sampling.iter().enumerate() {
            b.extend([i as u8 + 1, *s, 0]);
        }
        b
    }

    #[test]
    fn one_row_with_tall_sampling_is_charged_as_whole_mcus() {
        // The fuzzer's input: 60436×1 with 1×3 sampling is decoded as 60440×24 pixels.
        let f = frame(&header(60436, 1, &[0x13, 0x11, 0x11])[..]).unwrap().unwrap();
        assert_eq!((f.mcu_width, f.mcu_height), (8, 24));
        assert_eq!(f.padded_pixels(), 60440 * 24);
        assert!(f.check(SlideLimits { max_pixels: 1 << 16 }).is_err());
        assert!(f.check(SlideLimits { max_pixels: 60440 * 24 }).is_ok());
        let message = f.check(SlideLimits { max_pixels: 1 << 16 }).unwrap_err().to_string();
        assert!(message.contains("60436×1") && message.contains("8×24"), "{message}");
    }

    #[test]
    fn bad_headers_are_said_not_guessed() {
        assert!(frame(&header(8, 8, &[0x51])[..])
            .unwrap_err()
            .contains("sampling factors 5×1"));
        assert!(frame(&header(8, 8, &[0x10])[..])
            .unwrap_err()
            .contains("sampling factors 1×0"));
        let mut cut = header(8, 8, &[0x22, 0x11, 0x11]);
        cut.truncate(cut.len() - 4);
        assert!(frame(&cut[..]).unwrap_err().contains("components"));
        assert_eq!(frame(&[0xFF, 0xD8, 0xFF, 0xDA][..]).unwrap(), None);
        assert!(frame(&[0x89, b'P'][..]).is_err());
    }
}
