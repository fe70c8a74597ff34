//! A synthetic whole-slide image far larger than memory: glass with a few round tissue islands
//! holding FTU discs, written tile by tile as a tiled BigTIFF, with its truth as RLE computed
//! from the geometry row by row. For testing and benchmarking tiled inference at 40000².

use std::path::Path;

use ftu_formats::kaggle::Split;
use ftu_formats::mask::runs::RunMask;
use ftu_formats::schema::{self, SubmissionRow, TestRow};
use ftu_formats::slide::write::{
    needs_bigtiff, write_tiff_pages_with, Chunking, Compression, Samples, TiffMeta, TiffSpec,
};
use ftu_formats::{DataSource, Organ};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::synth::SynthError;

/// µm per pixel of a synthetic whole-slide image (in its TIFF and its test.csv row).
pub const WSI_PIXEL_SIZE: f64 = 0.4;

#[derive(Debug, Clone)]
pub struct WsiConfig {
    pub width: u32,
    pub height: u32,
    /// Tissue islands (their area is most of the slide's tissue).
    pub islands: usize,
    /// Radius of an island in pixels.
    pub island_radius: f64,
    pub ftus_per_island: usize,
    pub seed: u64,
    /// JPEG tiles (quality 90, YCbCr) as slide scanners write them, instead of deflate.
    pub jpeg: bool,
    /// Reduced-resolution pages after the full image, by downsample (e.g. 4, 16), as pyramidal
    /// slides carry them; each level pixel is the full-resolution pixel at its centre.
    pub pyramid: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disc {
    pub cx: f64,
    pub cy: f64,
    pub r: f64,
}

impl Disc {
    /// Whether pixel (x, y)'s centre is inside.
    fn holds(&self, x: u32, y: u32) -> bool {
        let (dx, dy) = (x as f64 + 0.5 - self.cx, y as f64 + 0.5 - self.cy);
        dx * dx + dy * dy <= self.r * self.r
    }

    /// The columns of row `y` whose centres are inside, as `[start, end)`.
    fn row_span(&self, y: u32, width: u32) -> Option<(u32, u32)> {
        let dy = y as f64 + 0.5 - self.cy;
        let h2 = self.r * self.r - dy * dy;
        if h2 < 0.0 {
            return None;
        }
        let h = h2.sqrt();
        // Centres x + 0.5 within [cx − h, cx + h].
        let start = (self.cx - h - 0.5).ceil().max(0.0) as u32;
        let end = ((self.cx + h - 0.5).floor() + 1.0).min(width as f64).max(0.0) as u32;
        (start < end).then_some((start, end))
    }

    fn meets(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> bool {
        let nx = self.cx.clamp(x0 as f64, x1 as f64);
        let ny = self.cy.clamp(y0 as f64, y1 as f64);
        (nx - self.cx).powi(2) + (ny - self.cy).powi(2) <= self.r * self.r
    }
}

/// Where the tissue and the FTUs are.
#[derive(Debug, Clone)]
pub struct WsiPlan {
    pub width: u32,
    pub height: u32,
    pub islands: Vec<Disc>,
    pub ftus: Vec<Disc>,
    seed: u64,
}

const GLASS: [u8; 3] = [242, 240, 243];

fn noise(seed: u64, x: u32, y: u32) -> i32 {
    let mut h = seed ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    (h % 21) as i32 - 10
}

pub fn plan(cfg: &WsiConfig) -> WsiPlan {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let (w, h) = (cfg.width as f64, cfg.height as f64);
    let r = cfg.island_radius.min(w / 4.0).min(h / 4.0);
    let mut islands: Vec<Disc> = Vec::new();
    let mut tries = 0;
    while islands.len() < cfg.islands && tries < 10_000 {
        tries += 1;
        let d = Disc {
            cx: rng.random_range(r..w - r),
            cy: rng.random_range(r..h - r),
            r: r * rng.random_range(0.7..1.0),
        };
        if islands
            .iter()
            .all(|o| (o.cx - d.cx).hypot(o.cy - d.cy) > o.r + d.r + 10.0)
        {
            islands.push(d);
        }
    }
    let mut ftus = Vec::new();
    for island in &islands {
        let mut placed = 0;
        let mut tries = 0;
        while placed < cfg.ftus_per_island && tries < 10_000 {
            tries += 1;
            let fr = island.r * rng.random_range(0.04..0.09);
            let (a, dist) = (
                rng.random_range(0.0..std::f64::consts::TAU),
                rng.random_range(0.0..island.r - 2.0 * fr),
            );
            let d = Disc {
                cx: island.cx + dist * a.cos(),
                cy: island.cy + dist * a.sin(),
                r: fr,
            };
            if ftus
                .iter()
                .all(|o: &Disc| (o.cx - d.cx).hypot(o.cy - d.cy) > o.r + d.r + 4.0)
            {
                ftus.push(d);
                placed += 1;
            }
        }
    }
    WsiPlan {
        width: cfg.width,
        height: cfg.height,
        islands,
        ftus,
        seed: cfg.seed,
    }
}

impl WsiPlan {
    /// Appends the pixels of the rectangle (row-major RGB8) to `buf`.
    pub fn fill(&self, x0: u32, y0: u32, w: u32, h: u32, buf: &mut Vec<u8>) {
        self.fill_level(1, x0, y0, w, h, buf)
    }

    /// Appends the rectangle of the level downsampled by `d` (pixel `(x, y)` of the level is the
    /// slide's pixel at `(x·d + d/2, y·d + d/2)`).
    pub fn fill_level(&self, d: u32, x0: u32, y0: u32, w: u32, h: u32, buf: &mut Vec<u8>) {
        let at = |v: u32| v * d + d / 2;
        let (sx0, sy0, sx1, sy1) = (x0 * d, y0 * d, (x0 + w) * d, (y0 + h) * d);
        let islands: Vec<&Disc> = self.islands.iter().filter(|c| c.meets(sx0, sy0, sx1, sy1)).collect();
        if islands.is_empty() {
            for _ in 0..w * h {
                buf.extend_from_slice(&GLASS);
            }
            return;
        }
        let ftus: Vec<&Disc> = self.ftus.iter().filter(|c| c.meets(sx0, sy0, sx1, sy1)).collect();
        for y in (y0..y0 + h).map(at) {
            for x in (x0..x0 + w).map(at) {
                let base: Option<[i32; 3]> = if ftus.iter().any(|c| c.holds(x, y)) {
                    Some([115, 45, 140])
                } else if islands.iter().any(|c| c.holds(x, y)) {
                    Some([224, 132, 176])
                } else {
                    None
                };
                match base {
                    None => buf.extend_from_slice(&GLASS),
                    Some(c) => {
                        let n = noise(self.seed, x, y);
                        buf.extend(c.iter().map(|&v| (v + n).clamp(0, 255) as u8));
                    }
                }
            }
        }
    }

    /// The FTU mask as row runs, from the geometry.
    pub fn truth(&self) -> RunMask {
        let mut mask = RunMask::empty(self.height as usize, self.width as usize);
        for d in &self.ftus {
            let y0 = (d.cy - d.r).floor().max(0.0) as u32;
            let y1 = ((d.cy + d.r).ceil() as u32).min(self.height);
            for y in y0..y1 {
                if let Some((s, e)) = d.row_span(y, self.width) {
                    mask.rows[y as usize].push((s, e));
                }
            }
        }
        for row in &mut mask.rows {
            *row = ftu_formats::mask::runs::normalised(std::mem::take(row));
        }
        mask
    }
}

/// Writes `out/test_images/wsi0.tiff` (tiled, deflate, BigTIFF when needed), test.csv and
/// truth.csv. Memory stays at one tile row of the writer plus the truth's runs.
pub fn generate(out: &Path, cfg: &WsiConfig, on_tile: impl Fn(u64, u64)) -> Result<WsiPlan, SynthError> {
    let images = Split::Test.images(out);
    std::fs::create_dir_all(&images).map_err(|cause| SynthError::CreateDir {
        path: images.clone(),
        cause,
    })?;
    let plan = plan(cfg);
    let compression = if cfg.jpeg {
        Compression::Jpeg { quality: 90 }
    } else {
        Compression::Deflate
    };
    let bigtiff = needs_bigtiff(cfg.width, cfg.height, Samples::Rgb8);
    let mut downsamples = vec![1];
    for &d in &cfg.pyramid {
        if d < 2 || cfg.width / d == 0 || cfg.height / d == 0 {
            return Err(SynthError::Pyramid {
                downsample: d,
                width: cfg.width,
                height: cfg.height,
            });
        }
        downsamples.push(d);
    }
    let pages: Vec<TiffSpec> = downsamples
        .iter()
        .map(|&d| TiffSpec {
            width: cfg.width / d,
            height: cfg.height / d,
            samples: Samples::Rgb8,
            chunking: Chunking::Tiles { size: 512 },
            compression,
            bigtiff,
        })
        .collect();
    let total: u64 = pages
        .iter()
        .map(|p| p.width.div_ceil(512) as u64 * p.height.div_ceil(512) as u64)
        .sum();
    let mut done = 0;
    // What a scanner states: an Aperio-style header with the µm per pixel test.csv gives, and the
    // same as resolution tags, so `predict --slides` needs no test.csv.
    let meta = TiffMeta {
        description: Some(format!(
            "Aperio Image Library (ftu synth-wsi)\n{}x{} (512x512) {}|AppMag = 20|MPP = {WSI_PIXEL_SIZE}",
            cfg.width,
            cfg.height,
            if cfg.jpeg { "JPEG/YCbCr Q=90" } else { "Deflate/RGB" }
        )),
        pixel_size: Some(WSI_PIXEL_SIZE),
    };
    write_tiff_pages_with(&images.join("wsi0.tiff"), &pages, &meta, |page, rect, buf| {
        plan.fill_level(downsamples[page], rect.x, rect.y, rect.width, rect.height, buf);
        done += 1;
        on_tile(done, total);
        Ok(())
    })?;
    let row = TestRow {
        id: "wsi0".into(),
        organ: Organ::Kidney,
        data_source: DataSource::Hpa,
        img_height: cfg.height,
        img_width: cfg.width,
        pixel_size: WSI_PIXEL_SIZE,
        tissue_thickness: 4.0,
    };
    schema::write_rows(&Split::Test.csv(out), &[row])?;
    let truth = SubmissionRow {
        id: "wsi0".into(),
        rle: plan.truth().rle(),
    };
    schema::write_rows(&out.join("truth.csv"), &[truth])?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::slide::{read_slide, SlideLimits};

    #[test]
    fn the_slide_and_its_truth_agree_pixel_for_pixel() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WsiConfig {
            width: 1500,
            height: 1100,
            islands: 3,
            island_radius: 200.0,
            ftus_per_island: 4,
            seed: 7,
            jpeg: false,
            pyramid: vec![4, 16],
        };
        let plan = generate(dir.path(), &cfg, |_, _| {}).unwrap();
        assert_eq!((plan.islands.len(), plan.ftus.len()), (3, 12));
        let img = read_slide(&dir.path().join("test_images/wsi0.tiff"), SlideLimits::default()).unwrap();
        let truth = plan.truth();
        let mut ftu_pixels = 0;
        for y in 0..1100 {
            for x in 0..1500 {
                let p = img.pixel(x, y);
                // FTUs are the only pixels with green below 60.
                assert_eq!(p[1] < 60, truth.get(y, x), "({y},{x})");
                ftu_pixels += usize::from(p[1] < 60);
            }
        }
        assert!(ftu_pixels > 1000);
        let rows = schema::read_submission(&dir.path().join("truth.csv")).unwrap();
        assert_eq!(rows[0].rle, truth.rle());
        // Glass outside the islands.
        let outside = (0..1500)
            .find(|&x| plan.islands.iter().all(|d| !d.holds(x, 0)))
            .unwrap();
        assert_eq!(img.pixel(outside as usize, 0), GLASS);

        // The pyramid's pages are the slide's pixels at each level pixel's centre.
        let path = dir.path().join("test_images/wsi0.tiff");
        let levels = ftu_formats::slide::region::pyramid_levels(&path, 1500, 1100);
        let sizes: Vec<(usize, usize)> = levels.iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(sizes, [(375, 275), (93, 68)]);
        for (level, d) in levels.iter().zip([4, 16]) {
            let mut page = ftu_formats::slide::tiff::TiffRegions::open_page(&path, level.page, 0).unwrap();
            let small = page.region(0, 0, level.width, level.height).unwrap();
            for y in 0..level.height {
                for x in 0..level.width {
                    assert_eq!(
                        small.pixel(x, y),
                        img.pixel(x * d + d / 2, y * d + d / 2),
                        "level {d} ({y},{x})"
                    );
                }
            }
        }
    }
}
