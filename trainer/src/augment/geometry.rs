//! Geometric transforms: each moves the mask with the image exactly, both sampled through the
//! same inverse map (the image bilinearly, the mask at the nearest pixel).

use super::Sample;

impl Sample {
    /// Applies `f(x, y) -> (src_x, src_y)` (integer pixel permutation) to image and mask.
    fn permute(&mut self, f: impl Fn(usize, usize) -> (usize, usize)) {
        let n = self.size;
        let mut image = vec![0f32; self.image.len()];
        let mut mask = vec![0u8; self.mask.len()];
        for y in 0..n {
            for x in 0..n {
                let (sx, sy) = f(x, y);
                let (d, s) = (y * n + x, sy * n + sx);
                image[d * 3..d * 3 + 3].copy_from_slice(&self.image[s * 3..s * 3 + 3]);
                mask[d] = self.mask[s];
            }
        }
        self.image = image;
        self.mask = mask;
    }

    pub fn hflip(&mut self) {
        let n = self.size;
        self.permute(|x, y| (n - 1 - x, y));
    }

    pub fn vflip(&mut self) {
        let n = self.size;
        self.permute(|x, y| (x, n - 1 - y));
    }

    /// `k` quarter turns counter-clockwise (as NumPy's rot90).
    pub fn rot90(&mut self, k: usize) {
        let n = self.size;
        match k % 4 {
            0 => {}
            1 => self.permute(|x, y| (n - 1 - y, x)),
            2 => self.permute(|x, y| (n - 1 - x, n - 1 - y)),
            _ => self.permute(|x, y| (y, n - 1 - x)),
        }
    }

    /// Scale (> 1 zooms in), rotation (degrees, counter-clockwise) and shift (fraction of the
    /// side) about the centre; the outside is mirrored in (reflect-101) so no blank corners.
    pub fn affine(&mut self, scale: f64, degrees: f64, shift_x: f64, shift_y: f64) {
        let n = self.size;
        let c = (n as f64 - 1.0) / 2.0;
        let (sin, cos) = degrees.to_radians().sin_cos();
        let (tx, ty) = (shift_x * n as f64, shift_y * n as f64);
        let mut image = vec![0f32; self.image.len()];
        let mut mask = vec![0u8; self.mask.len()];
        for y in 0..n {
            for x in 0..n {
                // Inverse map: output → source.
                let (dx, dy) = (x as f64 - c - tx, y as f64 - c - ty);
                let sx = (cos * dx - sin * dy) / scale + c;
                let sy = (sin * dx + cos * dy) / scale + c;
                let d = y * n + x;
                let (mx, my) = (reflect(sx.round() as i64, n), reflect(sy.round() as i64, n));
                mask[d] = self.mask[my * n + mx];
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let (xa, xb, ya, yb) = (reflect(x0, n), reflect(x0 + 1, n), reflect(y0, n), reflect(y0 + 1, n));
                for ch in 0..3 {
                    let p = |xx: usize, yy: usize| self.image[(yy * n + xx) * 3 + ch];
                    let top = p(xa, ya) * (1.0 - fx) + p(xb, ya) * fx;
                    let bottom = p(xa, yb) * (1.0 - fx) + p(xb, yb) * fx;
                    image[d * 3 + ch] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        self.image = image;
        self.mask = mask;
    }
}

/// Mirror an index into 0..n without repeating the edge (OpenCV's BORDER_REFLECT_101).
pub(super) fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}
