//! A probability map of a whole-slide image held as blocks that exist only where a window wrote:
//! memory follows the tissue, not the slide's area. Missing blocks read as 0.

/// Side of a block in pixels.
pub const BLOCK: usize = 256;

#[derive(Debug, Clone)]
pub struct BlockMap {
    pub width: usize,
    pub height: usize,
    across: usize,
    blocks: Vec<Option<Box<[f32]>>>,
    live: usize,
    peak: usize,
}

impl BlockMap {
    pub fn new(width: usize, height: usize) -> BlockMap {
        let across = width.div_ceil(BLOCK);
        let down = height.div_ceil(BLOCK);
        BlockMap {
            width,
            height,
            across,
            blocks: vec![None; across * down],
            live: 0,
            peak: 0,
        }
    }

    /// Adds `k · values[r][c] · row_w[r] · col_w[c]` at `(x0 + c, y0 + r)` for the `w × h` window.
    pub fn add_window(
        &mut self,
        (x0, y0, w, h): (usize, usize, usize, usize),
        values: &[f32],
        row_w: &[f32],
        col_w: &[f32],
        k: f32,
    ) {
        debug_assert!(values.len() == w * h && row_w.len() == h && col_w.len() == w);
        debug_assert!(x0 + w <= self.width && y0 + h <= self.height);
        for r in 0..h {
            let y = y0 + r;
            let (by, iy) = (y / BLOCK, y % BLOCK);
            let kr = k * row_w[r];
            let row = &values[r * w..(r + 1) * w];
            let mut c = 0;
            while c < w {
                let x = x0 + c;
                let (bx, ix) = (x / BLOCK, x % BLOCK);
                let n = (BLOCK - ix).min(w - c);
                let slot = &mut self.blocks[by * self.across + bx];
                if slot.is_none() {
                    self.live += 1;
                    self.peak = self.peak.max(self.live);
                }
                let block = slot.get_or_insert_with(|| vec![0f32; BLOCK * BLOCK].into());
                let dst = &mut block[iy * BLOCK + ix..iy * BLOCK + ix + n];
                for ((d, v), cw) in dst.iter_mut().zip(&row[c..c + n]).zip(&col_w[c..c + n]) {
                    *d += kr * v * cw;
                }
                c += n;
            }
        }
    }

    pub fn get(&self, y: usize, x: usize) -> f32 {
        match &self.blocks[(y / BLOCK) * self.across + x / BLOCK] {
            Some(b) => b[(y % BLOCK) * BLOCK + x % BLOCK],
            None => 0.0,
        }
    }

    /// Row `y` into `out` (`width` values).
    pub fn row(&self, y: usize, out: &mut [f32]) {
        let (by, iy) = (y / BLOCK, y % BLOCK);
        for bx in 0..self.across {
            let x0 = bx * BLOCK;
            let n = BLOCK.min(self.width - x0);
            match &self.blocks[by * self.across + bx] {
                Some(b) => out[x0..x0 + n].copy_from_slice(&b[iy * BLOCK..iy * BLOCK + n]),
                None => out[x0..x0 + n].fill(0.0),
            }
        }
    }

    /// Row `y`'s values in block column `bx`, if that block exists.
    pub fn block_row(&self, y: usize, bx: usize) -> Option<&[f32]> {
        let n = BLOCK.min(self.width - bx * BLOCK);
        let iy = y % BLOCK;
        self.blocks[(y / BLOCK) * self.across + bx]
            .as_deref()
            .map(|b| &b[iy * BLOCK..iy * BLOCK + n])
    }

    /// Frees every block whose rows all lie above `y` (rows no window will write again).
    pub fn free_rows_above(&mut self, y: usize) {
        for slot in &mut self.blocks[..(y / BLOCK) * self.across] {
            if slot.take().is_some() {
                self.live -= 1;
            }
        }
    }

    /// The most bytes the blocks held at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak * BLOCK * BLOCK * 4
    }

    /// For row `y`, the column ranges of the blocks that exist (missing ones are all 0).
    pub fn present_spans(&self, y: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let by = y / BLOCK;
        (0..self.across)
            .filter(move |bx| self.blocks[by * self.across + bx].is_some())
            .map(move |bx| (bx * BLOCK, (bx * BLOCK + BLOCK).min(self.width)))
    }

    /// Adds this map to a dense row-major buffer of the same size.
    pub fn add_into(&self, dense: &mut [f32]) {
        let mut row = vec![0f32; self.width];
        for y in 0..self.height {
            self.row(y, &mut row);
            dense[y * self.width..(y + 1) * self.width]
                .iter_mut()
                .zip(&row)
                .for_each(|(d, v)| *d += v);
        }
    }

    /// Bytes held by the blocks that exist.
    pub fn allocated_bytes(&self) -> usize {
        self.live * BLOCK * BLOCK * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_add_with_their_weights_and_only_touched_blocks_exist() {
        let mut m = BlockMap::new(1000, 600);
        let values: Vec<f32> = (0..300 * 20).map(|i| i as f32).collect();
        let rows = vec![2.0; 20];
        let cols: Vec<f32> = (0..300).map(|c| if c % 2 == 0 { 1.0 } else { 0.5 }).collect();
        m.add_window((200, 250, 300, 20), &values, &rows, &cols, 0.5);
        m.add_window((200, 250, 300, 20), &values, &rows, &cols, 0.5);
        for (y, x) in [(250, 200), (255, 201), (269, 499), (260, 256)] {
            let (r, c) = (y - 250, x - 200);
            assert_eq!(m.get(y, x), 2.0 * values[r * 300 + c] * cols[c], "({y},{x})");
        }
        assert_eq!(m.get(249, 200), 0.0);
        assert_eq!(m.get(250, 500), 0.0);
        // Rows 250..270 straddle block rows 0 and 1; columns 200..500 blocks 0..=1.
        assert_eq!(m.allocated_bytes(), 4 * BLOCK * BLOCK * 4);
        let mut row = vec![1.0; 1000];
        m.row(260, &mut row);
        assert_eq!(row[199], 0.0);
        assert_eq!(row[210], m.get(260, 210));
        let spans: Vec<_> = m.present_spans(260).collect();
        assert_eq!(spans, [(0, 256), (256, 512)]);
        let mut dense = vec![0f32; 1000 * 600];
        m.add_into(&mut dense);
        assert_eq!(dense[260 * 1000 + 300], m.get(260, 300));
        assert_eq!(
            dense.iter().filter(|&&v| v != 0.0).count(),
            300 * 20 - 1,
            "value 0 at (0,0)"
        );
    }
}
