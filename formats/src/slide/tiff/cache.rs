//! The chunk cache behind region reads: the chunks a region needs are decoded a row at a time
//! and kept, oldest dropped first, within a byte budget, for the overlapping windows that follow.

use std::collections::HashMap;
use std::sync::Arc;

use super::TiffRegions;
use crate::slide::error::SlideError;
use crate::slide::rgb::RgbImage;

impl TiffRegions {
    /// The `w × h` region at `(x, y)` from the chunks that cover it.
    pub fn region(&mut self, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        let mut out = RgbImage::new(w, h);
        if w == 0 || h == 0 {
            return Ok(out);
        }
        let (cx0, cx1) = (x / self.chunk_w, (x + w - 1) / self.chunk_w);
        let (cy0, cy1) = (y / self.chunk_h, (y + h - 1) / self.chunk_h);
        // A row of chunks at a time: their decoding runs in parallel, memory stays at one row.
        for cy in cy0..=cy1 {
            let needed: Vec<usize> = (cx0..=cx1).map(|cx| cy * self.across + cx).collect();
            let missing: Vec<usize> = needed.iter().copied().filter(|i| !self.cache.contains_key(i)).collect();
            let decoded = self.decode_chunks(&missing, |img, _, _| Arc::new(img))?;
            let mut fresh: HashMap<usize, Arc<RgbImage>> = missing.into_iter().zip(decoded).collect();
            for &i in &needed {
                let chunk = match fresh.remove(&i) {
                    Some(c) => {
                        self.remember(i, c.clone());
                        c
                    }
                    None => self.cache[&i].clone(),
                };
                let (ox, oy) = self.chunk_origin(i);
                // The overlap of the chunk and the region, in slide coordinates.
                let (ax, bx) = (x.max(ox), (x + w).min(ox + chunk.width));
                let (ay, by) = (y.max(oy), (y + h).min(oy + chunk.height));
                for sy in ay..by {
                    let src = ((sy - oy) * chunk.width + (ax - ox)) * 3;
                    let dst = ((sy - y) * w + (ax - x)) * 3;
                    out.data[dst..dst + (bx - ax) * 3].copy_from_slice(&chunk.data[src..src + (bx - ax) * 3]);
                }
            }
        }
        Ok(out)
    }

    /// Keeps a decoded chunk, dropping the oldest beyond the cache's budget.
    fn remember(&mut self, i: usize, chunk: Arc<RgbImage>) {
        let bytes = chunk.data.len();
        while self.cache_bytes + bytes > self.max_cache_bytes {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(c) = self.cache.remove(&old) {
                self.cache_bytes -= c.data.len();
            }
        }
        self.cache.insert(i, chunk);
        self.order.push_back(i);
        self.cache_bytes += bytes;
    }
}
