//! Chunk decoding: uncompressed, LZW and deflate chunks decompressed by ftu (predictor, padding,
//! byte order, white-is-zero), other codecs through the `tiff` crate (JPEG frames checked
//! first), and every sample layout to RGB8.

use std::io::{Read, Seek, SeekFrom};
use std::sync::PoisonError;

use tiff::decoder::DecodingResult;
use tiff::ColorType;

use super::TiffRegions;
use crate::slide::error::{guarded, SlideErrorKind};
use crate::slide::jpeg::{self, JpegFrame};
use crate::slide::rgb::RgbImage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RawCodec {
    None,
    Lzw,
    Deflate,
}

pub(super) struct RawLayout {
    pub(super) codec: RawCodec,
    pub(super) predictor: u16,
    pub(super) little_endian: bool,
    pub(super) white_is_zero: bool,
    pub(super) bytes_per_sample: usize,
}

impl TiffRegions {
    /// Samples of chunk `i`, cropped to the image, to RGB8.
    pub(super) fn to_rgb_image(&self, i: usize, samples: Vec<u8>) -> Result<RgbImage, SlideErrorKind> {
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
    pub(super) fn extent(&self, i: usize) -> Result<(u64, u64), SlideErrorKind> {
        let (offset, count) = self.extents[i];
        if offset.checked_add(count).is_none_or(|end| end > self.len) {
            return Err(SlideErrorKind::Corrupt(format!(
                "chunk {i} ({count} bytes at {offset}) runs past the end of the file ({} bytes)",
                self.len
            )));
        }
        Ok((offset, count))
    }

    pub(super) fn decode_with_crate(&self, i: usize) -> Result<RgbImage, SlideErrorKind> {
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
    pub(super) fn raw_bytes(&mut self, i: usize) -> Result<Vec<u8>, SlideErrorKind> {
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
    pub(super) fn decode_raw(&self, i: usize, stored: Vec<u8>) -> Result<RgbImage, SlideErrorKind> {
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

/// A TIFF colour type as a person names it: `8-bit CMYK`, `4-channel 16-bit multiband`.
pub(super) fn colour_name(colour: ColorType) -> String {
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
