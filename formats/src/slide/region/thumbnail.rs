//! The slide's thumbnail, streamed chunk by chunk (from a pyramid level when one is fine
//! enough), for tissue detection and overviews.

use super::pyramid::{pyramid_levels, PyramidLevel};
use super::SlideSource;
use crate::slide::error::SlideError;
use crate::slide::rgb::RgbImage;
use crate::slide::tiff::TiffRegions;

impl SlideSource {
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
    use crate::slide::error::SlideLimits;
    use crate::slide::rgb::crop;
    use crate::slide::write::{Chunking, Compression, Samples, TiffSpec};

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
