//! Masks: a binary mask in row-major order (and the blocked transpose that RLE's column-major
//! order needs), RLE in the competition's convention, row runs, mask images and GeoJSON.

pub mod geojson;
pub mod image;
pub mod rle;
pub mod runs;

/// Height × width binary mask, row-major, each byte 0 or 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    height: usize,
    width: usize,
    data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mask data has {len} bytes, expected height {height} × width {width} = {expected}")]
pub struct MaskSizeError {
    pub height: usize,
    pub width: usize,
    pub len: usize,
    pub expected: usize,
}

impl Mask {
    pub fn zeros(height: usize, width: usize) -> Mask {
        Mask {
            height,
            width,
            data: vec![0; height * width],
        }
    }

    /// Builds a mask from row-major bytes; any non-zero byte counts as foreground.
    pub fn from_row_major(height: usize, width: usize, mut data: Vec<u8>) -> Result<Mask, MaskSizeError> {
        let expected = height * width;
        if data.len() != expected {
            return Err(MaskSizeError {
                height,
                width,
                len: data.len(),
                expected,
            });
        }
        for v in &mut data {
            *v = (*v != 0) as u8;
        }
        Ok(Mask { height, width, data })
    }

    /// For callers whose bytes are already 0/1 (RLE decoding), skipping the normalising pass.
    pub(crate) fn from_row_major_normalised(height: usize, width: usize, data: Vec<u8>) -> Mask {
        debug_assert_eq!(data.len(), height * width);
        debug_assert!(data.iter().all(|&v| v <= 1));
        Mask { height, width, data }
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Row-major bytes, each 0 or 1.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn get(&self, y: usize, x: usize) -> bool {
        self.data[y * self.width + x] != 0
    }

    pub fn set(&mut self, y: usize, x: usize, value: bool) {
        self.data[y * self.width + x] = value as u8;
    }

    pub fn count(&self) -> usize {
        self.data.iter().map(|&v| v as usize).sum()
    }

    /// The mask as 0/255 bytes, for writing as a greyscale image.
    pub fn to_grey(&self) -> Vec<u8> {
        self.data.iter().map(|&v| v * 255).collect()
    }
}

/// Transposes a `rows × cols` byte matrix (row-major) into `cols × rows`.
/// Works in square blocks so both sides stay in cache: a naive strided walk over a 3000² mask
/// misses the cache on every byte.
pub fn transpose(src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    const B: usize = 64;
    assert_eq!(src.len(), rows * cols, "transpose: buffer is not rows × cols");
    let mut dst = vec![0u8; src.len()];
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        for c0 in (0..cols).step_by(B) {
            let c1 = (c0 + B).min(cols);
            for r in r0..r1 {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..c1 {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_each_element_to_its_mirror() {
        for (rows, cols) in [(1, 1), (3, 2), (70, 130), (129, 65)] {
            let src: Vec<u8> = (0..rows * cols).map(|i| (i * 7 % 251) as u8).collect();
            let t = transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], src[r * cols + c]);
                }
            }
            assert_eq!(transpose(&t, cols, rows), src);
        }
    }

    #[test]
    fn from_row_major_normalises_and_checks_size() {
        let m = Mask::from_row_major(2, 2, vec![0, 7, 255, 0]).unwrap();
        assert_eq!(m.data(), &[0, 1, 1, 0]);
        assert_eq!(m.count(), 2);
        let e = Mask::from_row_major(2, 3, vec![0; 5]).unwrap_err();
        assert_eq!(e.expected, 6);
    }
}
