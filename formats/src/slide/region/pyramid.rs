//! A slide's pyramid: the reduced-resolution pages of a TIFF (or OpenSlide's levels), and a
//! reader of one level in slide coordinates.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::{SlideSource, DEFAULT_CACHE_BYTES};
use crate::slide::error::{guarded, SlideError};
use crate::slide::ifd::checked_decoder;
use crate::slide::openslide::OpenSlide;
use crate::slide::rgb::RgbImage;
use crate::slide::tiff::TiffRegions;

impl SlideSource {
    /// The coarsest pyramid level that still has at least `per_pixel` slide pixels' resolution
    /// (a level pixel no larger than `per_pixel` slide pixels), when one saves at least half the
    /// pixels across; a slide without levels has none.
    pub fn level_for(&self, per_pixel: f64) -> Option<PyramidLevel> {
        let (width, height) = (self.width(), self.height());
        self.levels()
            .into_iter()
            .filter(|l| {
                let (dx, dy) = l.downsample(width, height);
                dx.max(dy) <= per_pixel * (1.0 + 1e-6) && dx.min(dy) >= 2.0
            })
            .min_by_key(|l| l.width * l.height)
    }

    /// The slide's reduced-resolution levels: a TIFF's pages, OpenSlide's levels (by index).
    pub fn levels(&self) -> Vec<PyramidLevel> {
        match self {
            SlideSource::Memory(_) => Vec::new(),
            SlideSource::Tiff(t) => pyramid_levels(&t.path, t.width, t.height),
            SlideSource::OpenSlide(o) => o
                .levels
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, l)| PyramidLevel {
                    page: i,
                    width: l.width,
                    height: l.height,
                })
                .collect(),
        }
    }

    /// A reader of `level` (one of [`SlideSource::levels`]) in slide coordinates.
    pub fn level_reader(&self, level: PyramidLevel) -> Result<LevelReader, SlideError> {
        let (width, height) = (self.width(), self.height());
        let pages = match self {
            SlideSource::OpenSlide(o) => Pages::OpenSlide(o.clone()),
            SlideSource::Tiff(t) => Pages::Tiff(TiffRegions::open_page(&t.path, level.page, DEFAULT_CACHE_BYTES)?),
            SlideSource::Memory(_) => unreachable!("a slide in memory has no levels"),
        };
        let (dx, dy) = level.downsample(width, height);
        Ok(LevelReader { level, dx, dy, pages })
    }
}

/// A reduced-resolution page of a pyramidal TIFF (as whole-slide scanners write: SVS, NDPI-like
/// and generic tiled pyramids keep each level as a later page of the same file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PyramidLevel {
    /// The page's index in the file (0 is the full-resolution image).
    pub page: usize,
    pub width: usize,
    pub height: usize,
}

impl PyramidLevel {
    /// Slide pixels per level pixel, across and down.
    pub fn downsample(&self, width: usize, height: usize) -> (f64, f64) {
        (width as f64 / self.width as f64, height as f64 / self.height as f64)
    }

    /// Whether a thumbnail at `factor` can be made from this level: each thumbnail cell then
    /// holds at least one of the level's pixels.
    pub(super) fn fits(&self, width: usize, height: usize, factor: usize) -> bool {
        let (dx, dy) = self.downsample(width, height);
        dx <= factor as f64 + 1e-9 && dy <= factor as f64 + 1e-9
    }
}

/// The pages after the first that hold the same image at a lower resolution: smaller, and with
/// the same aspect ratio (the height within a pixel of height / (width / level width)). Label and
/// macro photographs, which have other shapes, are left out, and so is anything past a page that
/// cannot be read: the levels only ever save time, the full-resolution page is always there.
pub fn pyramid_levels(path: &Path, width: usize, height: usize) -> Vec<PyramidLevel> {
    // A decoder crate's panic on a malformed page is a page that cannot be read: no levels.
    guarded(|| Ok(levels_of(path, width, height))).unwrap_or_default()
}

fn levels_of(path: &Path, width: usize, height: usize) -> Vec<PyramidLevel> {
    let mut levels = Vec::new();
    let Ok(file) = File::open(path) else {
        return levels;
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let Ok(mut decoder) = checked_decoder(BufReader::new(file), len) else {
        return levels;
    };
    let mut page = 0;
    while decoder.more_images() {
        page += 1;
        // A page the crate cannot describe is skipped; a broken chain of pages ends the walk.
        if decoder.next_image().is_err() {
            continue;
        }
        let Ok((w, h)) = decoder.dimensions() else { continue };
        let (w, h) = (w as usize, h as usize);
        if w == 0 || h == 0 || w >= width || h >= height {
            continue;
        }
        let expected_h = height as f64 * w as f64 / width as f64;
        if (h as f64 - expected_h).abs() <= 1.0 {
            levels.push(PyramidLevel {
                page,
                width: w,
                height: h,
            });
        }
    }
    levels
}

/// A pyramid level read in slide coordinates: a window of the slide comes from the level's
/// pixels that cover it, so a model working at the level's scale (or coarser) decodes the
/// level's pixels, not the full resolution's.
pub struct LevelReader {
    pub level: PyramidLevel,
    /// Slide pixels per level pixel, across and down.
    dx: f64,
    dy: f64,
    pages: Pages,
}

enum Pages {
    Tiff(TiffRegions),
    /// OpenSlide's level `level.page`, read in level-0 coordinates.
    OpenSlide(Arc<OpenSlide>),
}

impl LevelReader {
    /// The level's `w × h` pixels at `(x, y)` (level pixels).
    fn level_region(&mut self, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        match &mut self.pages {
            Pages::Tiff(t) => t.region(x, y, w, h),
            Pages::OpenSlide(o) => o.read_level(
                self.level.page,
                (x as f64 * self.dx).round() as usize,
                (y as f64 * self.dy).round() as usize,
                w,
                h,
            ),
        }
    }

    /// The slide window at `(x, y)` of `w × h` slide pixels (a window of side `side`, cut by the
    /// slide's edge when smaller) at the level's scale, `side / downsample` pixels a side: each
    /// output pixel is the level sampled bilinearly at the slide point its centre stands for, so
    /// the window lines up with the slide to a fraction of a pixel whatever the level's grid;
    /// points past the slide's edge take the edge's value, as level-0 windows are padded.
    pub fn window(&mut self, x: usize, y: usize, w: usize, h: usize, side: usize) -> Result<RgbImage, SlideError> {
        let (lw, lh) = (self.level.width, self.level.height);
        let n = ((side as f64 / self.dx.max(self.dy)).round() as usize).max(1);
        let step = side as f64 / n as f64;
        // Level coordinates of output pixel i's centre, along one axis.
        let coord = |origin: usize, len: usize, d: f64, i: usize| {
            let slide = (origin as f64 + (i as f64 + 0.5) * step).min((origin + len) as f64 - 0.5);
            slide / d - 0.5
        };
        let us: Vec<f64> = (0..n).map(|i| coord(x, w, self.dx, i)).collect();
        let vs: Vec<f64> = (0..n).map(|i| coord(y, h, self.dy, i)).collect();
        let clamp = |v: f64, len: usize| v.floor().clamp(0.0, (len - 1) as f64) as usize;
        let (x0, x1) = (clamp(us[0], lw), (clamp(us[n - 1], lw) + 1).min(lw - 1));
        let (y0, y1) = (clamp(vs[0], lh), (clamp(vs[n - 1], lh) + 1).min(lh - 1));
        let region = self.level_region(x0, y0, x1 - x0 + 1, y1 - y0 + 1)?;
        let (rw, rh) = (region.width, region.height);
        let mut out = RgbImage::new(n, n);
        for (r, &v) in vs.iter().enumerate() {
            let v = (v - y0 as f64).clamp(0.0, (rh - 1) as f64);
            let (ya, fy) = (v.floor() as usize, (v - v.floor()) as f32);
            let yb = (ya + 1).min(rh - 1);
            for (c, &u) in us.iter().enumerate() {
                let u = (u - x0 as f64).clamp(0.0, (rw - 1) as f64);
                let (xa, fx) = (u.floor() as usize, (u - u.floor()) as f32);
                let xb = (xa + 1).min(rw - 1);
                let px = |yy: usize, xx: usize| &region.data[(yy * rw + xx) * 3..(yy * rw + xx) * 3 + 3];
                let (a, b, cc, d) = (px(ya, xa), px(ya, xb), px(yb, xa), px(yb, xb));
                for k in 0..3 {
                    let top = a[k] as f32 * (1.0 - fx) + b[k] as f32 * fx;
                    let bottom = cc[k] as f32 * (1.0 - fx) + d[k] as f32 * fx;
                    out.data[(r * n + c) * 3 + k] = (top * (1.0 - fy) + bottom * fy).round() as u8;
                }
            }
        }
        Ok(out)
    }

    pub fn decoded_pixels(&self) -> u64 {
        match &self.pages {
            Pages::Tiff(t) => t.decoded_pixels(),
            // Counted by the slide the reader shares (`SlideSource::decoded_pixels`).
            Pages::OpenSlide(_) => 0,
        }
    }
}
