//! Crops mode: training inputs are windows of `size`² cut from a slide at a fixed scale, so a
//! model can be trained for whole-slide images of any size at their own resolution. A slide is
//! kept decoded at full resolution when the cache budget allows; otherwise (a TIFF) every crop
//! reads its region from the file, chunk by chunk. The mask stays as the RLE's runs, so memory
//! follows the FTUs, not the slide's area. A crop is placed around an FTU pixel with probability
//! `p_ftu` (FTUs are a few percent of the tissue), else uniformly and redrawn while it is mostly
//! glass (the engine's tissue detector).

use std::path::{Path, PathBuf};

use ftu_formats::mask::rle::{self, Run};
use ftu_formats::resize::{resize_map, resize_rgb};
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::{RgbImage, SlideError};
use ftu_formats::tiles::{pad_edge, pad_samples};
use ftu_formats::tissue::{thumbnail_factor, TissueMap, THUMBNAIL_SIDE};
use ftu_formats::SlideLimits;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::augment::stain::StainBasis;
use crate::augment::Sample;
use crate::config::SamplingConfig;
use crate::error::DataError;

/// Placements tried for a random crop before the one with the most tissue is taken.
pub const TISSUE_TRIES: usize = 10;

/// The crop geometry of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropSpec {
    /// The model's input side.
    pub size: usize,
    pub scale: f64,
    pub pixel_size: Option<f64>,
    pub p_ftu: f64,
    pub min_tissue: f64,
    pub overlap: f64,
}

impl CropSpec {
    pub fn new(size: usize, cfg: &SamplingConfig) -> CropSpec {
        CropSpec {
            size,
            scale: cfg.scale,
            pixel_size: cfg.pixel_size,
            p_ftu: cfg.p_ftu,
            min_tissue: cfg.min_tissue,
            overlap: cfg.overlap,
        }
    }

    /// Model pixels per slide pixel for a slide of `slide_pixel_size` µm per pixel.
    pub fn factor(&self, slide_pixel_size: f64) -> f64 {
        match self.pixel_size {
            Some(target) => slide_pixel_size / target,
            None => self.scale,
        }
    }

    /// A crop's side in slide pixels, as `ftu-infer` sizes a tiled group's windows.
    pub fn side(&self, slide_pixel_size: f64) -> usize {
        ((self.size as f64 / self.factor(slide_pixel_size)).round() as usize).max(1)
    }
}

/// A slide's pixels: decoded, or read by region from its TIFF.
enum Pixels {
    Memory(RgbImage),
    File(PathBuf),
}

impl Pixels {
    /// Opens `path`: kept decoded when `keep` (or when it is a PNG or JPEG, which has no regions).
    fn open(path: &Path, keep: bool) -> Result<(Pixels, TissueMap, usize, usize), SlideError> {
        let mut src = SlideSource::open(path, SlideLimits::default())?;
        let (width, height) = (src.width(), src.height());
        let factor = thumbnail_factor(width, height, THUMBNAIL_SIDE);
        let tissue = TissueMap::detect(&src.thumbnail(factor)?, factor);
        let pixels = match src {
            SlideSource::Memory(img) => Pixels::Memory(img),
            SlideSource::Tiff(_) | SlideSource::OpenSlide(_) if keep => {
                Pixels::Memory(src.whole(SlideLimits::default())?)
            }
            SlideSource::Tiff(_) | SlideSource::OpenSlide(_) => Pixels::File(path.to_path_buf()),
        };
        Ok((pixels, tissue, width, height))
    }

    fn region(&self, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        match self {
            Pixels::Memory(img) => Ok(ftu_formats::slide::rgb::crop(img, x, y, w, h)),
            Pixels::File(path) => SlideSource::open(path, SlideLimits::default())?.region(x, y, w, h),
        }
    }

    fn kept(&self) -> bool {
        matches!(self, Pixels::Memory(_))
    }
}

/// What a slide is trained towards.
enum Label {
    /// The RLE's runs (column-major, the competition's order) and, per run, the FTU pixels of
    /// the runs before it.
    Runs { runs: Vec<Run>, before: Vec<usize> },
    /// A soft label image from `ftu-infer pseudo` (p·255 in its first channel).
    Soft(Pixels),
}

/// A training slide at full resolution, for crops.
pub struct FullSlide {
    pub id: String,
    pub width: usize,
    pub height: usize,
    pixels: Pixels,
    label: Label,
    /// Where the tissue is (the engine's detector on a thumbnail).
    pub tissue: TissueMap,
}

impl FullSlide {
    /// A labelled slide: its image at `path` (which must be `width × height`) and its RLE.
    pub fn labelled(
        path: &Path,
        id: &str,
        rle: &str,
        (width, height): (u32, u32),
        keep: bool,
    ) -> Result<FullSlide, DataError> {
        let (pixels, tissue, w, h) = open_checked(path, id, width, height, keep)?;
        let runs = rle::parse(rle, w * h).map_err(|cause| DataError::Rle { id: id.into(), cause })?;
        let mut before = Vec::with_capacity(runs.len());
        let mut total = 0;
        for r in &runs {
            before.push(total);
            total += r.len;
        }
        Ok(FullSlide {
            id: id.into(),
            width: w,
            height: h,
            pixels,
            label: Label::Runs { runs, before },
            tissue,
        })
    }

    /// A pseudo-labelled slide: its image and its soft label image, both `width × height`.
    pub fn pseudo(
        image: &Path,
        label: &Path,
        id: &str,
        (width, height): (u32, u32),
        keep: bool,
    ) -> Result<FullSlide, DataError> {
        let (pixels, tissue, w, h) = open_checked(image, id, width, height, keep)?;
        let (soft, _, lw, lh) = Pixels::open(label, keep).map_err(|cause| DataError::Slide { id: id.into(), cause })?;
        if (lw, lh) != (w, h) {
            return Err(DataError::LabelSize {
                id: id.into(),
                path: label.to_path_buf(),
                got_w: lw,
                got_h: lh,
                want_w: width,
                want_h: height,
            });
        }
        Ok(FullSlide {
            id: id.into(),
            width: w,
            height: h,
            pixels,
            label: Label::Soft(soft),
            tissue,
        })
    }

    /// Bytes a slide of this size holds when kept decoded (a soft label doubles it).
    pub fn kept_bytes(width: u32, height: u32, soft: bool) -> usize {
        width as usize * height as usize * 3 * (1 + soft as usize)
    }

    pub fn kept(&self) -> bool {
        self.pixels.kept()
    }

    pub fn soft(&self) -> bool {
        matches!(self.label, Label::Soft(_))
    }

    /// FTU pixels in the slide's mask (0 for a soft label: its crops are placed at random).
    pub fn ftu_pixels(&self) -> usize {
        match &self.label {
            Label::Runs { runs, before } => runs.last().map_or(0, |r| before[before.len() - 1] + r.len),
            Label::Soft(_) => 0,
        }
    }

    /// The label of a region, row-major: 0/1, or p·255 for a soft label.
    pub fn label_region(&self, x: usize, y: usize, w: usize, h: usize) -> Result<Vec<u8>, DataError> {
        let mut out = vec![0u8; w * h];
        match &self.label {
            Label::Runs { runs, .. } => {
                for cx in x..x + w {
                    let col = cx * self.height;
                    let (lo, hi) = (col + y, col + y + h);
                    let first = runs.partition_point(|r| r.end() <= lo);
                    for r in runs[first..].iter().take_while(|r| r.start < hi) {
                        for py in r.start.max(lo)..r.end().min(hi) {
                            out[(py - lo) * w + (cx - x)] = 1;
                        }
                    }
                }
            }
            Label::Soft(pixels) => {
                let img = pixels.region(x, y, w, h).map_err(|cause| self.slide_error(cause))?;
                out.iter_mut()
                    .zip(img.data.chunks_exact(3))
                    .for_each(|(o, px)| *o = px[0]);
            }
        }
        Ok(out)
    }

    fn slide_error(&self, cause: SlideError) -> DataError {
        DataError::Slide {
            id: self.id.clone(),
            cause,
        }
    }

    /// The crop whose top-left slide pixel is `(x, y)`: the `side × side` region (its part
    /// inside the slide, padded by repeating the last row and column, as the engine pads its
    /// windows) resized to `size²` by area; the mask the same way, then > ½ (soft labels kept
    /// as p·255). Stain-normalised towards `stain` when given.
    pub fn crop(
        &self,
        x: usize,
        y: usize,
        side: usize,
        size: usize,
        stain: Option<&StainBasis>,
    ) -> Result<Sample, DataError> {
        let (w, h) = (side.min(self.width - x), side.min(self.height - y));
        let region = self
            .pixels
            .region(x, y, w, h)
            .map_err(|cause| self.slide_error(cause))?;
        let padded = pad_edge(region, side);
        let small = if side == size {
            padded
        } else {
            resize_rgb(&padded, size, size)
        };
        let mut image: Vec<f32> = small.data.iter().map(|&v| v as f32 / 255.0).collect();
        if let Some(target) = stain {
            if let Some(own) = StainBasis::fit(&image) {
                own.normalise_to(&mut image, target);
            }
        }
        let label = pad_samples(&self.label_region(x, y, w, h)?, w, h, 1, side);
        let scale = if self.soft() { 1.0 / 255.0 } else { 1.0 };
        let values: Vec<f32> = label.iter().map(|&v| v as f32 * scale).collect();
        let values = if side == size {
            values
        } else {
            resize_map(&values, side, side, size, size)
        };
        let mask = if self.soft() {
            values
                .iter()
                .map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect()
        } else {
            values.iter().map(|&v| u8::from(v > 0.5)).collect()
        };
        Ok(Sample::new(size, image, mask))
    }

    /// Where a training crop of `side` slide pixels starts: with probability `p_ftu` (and an
    /// FTU in the mask) around an FTU pixel drawn uniformly, the pixel at a uniform position in
    /// the crop's middle half; else uniformly, redrawn up to [`TISSUE_TRIES`] times while less
    /// than `min_tissue` of it is tissue (the try with the most tissue when none has enough).
    pub fn draw_origin(&self, side: usize, spec: &CropSpec, rng: &mut ChaCha8Rng) -> (usize, usize) {
        let (max_x, max_y) = (self.width.saturating_sub(side), self.height.saturating_sub(side));
        let total = self.ftu_pixels();
        if total > 0 && rng.random::<f64>() < spec.p_ftu {
            let (px, py) = self.ftu_pixel(rng.random_range(0..total));
            let mut offset = || {
                if side >= 4 {
                    rng.random_range(side / 4..=3 * side / 4)
                } else {
                    0
                }
            };
            let (ox, oy) = (offset(), offset());
            return (px.saturating_sub(ox).min(max_x), py.saturating_sub(oy).min(max_y));
        }
        let mut best = (0, 0, -1.0);
        for _ in 0..TISSUE_TRIES {
            let (x, y) = (rng.random_range(0..=max_x), rng.random_range(0..=max_y));
            let f = self
                .tissue
                .fraction(x, y, side.min(self.width - x), side.min(self.height - y));
            if f >= spec.min_tissue {
                return (x, y);
            }
            if f > best.2 {
                best = (x, y, f);
            }
        }
        (best.0, best.1)
    }

    /// The `k`-th FTU pixel (in the RLE's column-major order) as (x, y).
    fn ftu_pixel(&self, k: usize) -> (usize, usize) {
        let Label::Runs { runs, before } = &self.label else {
            unreachable!("soft labels have no FTU pixels to draw");
        };
        let j = before.partition_point(|&b| b <= k) - 1;
        let index = runs[j].start + (k - before[j]);
        (index / self.height, index % self.height)
    }

    /// The slide and its label at `width × height` (the out-of-fold map's scale), for overlays.
    pub fn overview(&self, width: usize, height: usize) -> Result<(RgbImage, Vec<u8>), DataError> {
        let whole = match &self.pixels {
            Pixels::Memory(img) => resize_rgb(img, width, height),
            Pixels::File(path) => {
                let mut src =
                    SlideSource::open(path, SlideLimits::default()).map_err(|cause| self.slide_error(cause))?;
                let factor = (self.width / width).max(1);
                let thumb = src.thumbnail(factor).map_err(|cause| self.slide_error(cause))?;
                resize_rgb(&thumb, width, height)
            }
        };
        let label = self.label_region(0, 0, self.width, self.height)?;
        let values: Vec<f32> = label.iter().map(|&v| v as f32).collect();
        let cut = if self.soft() { 127.5 } else { 0.5 };
        let small = resize_map(&values, self.width, self.height, width, height);
        Ok((whole, small.iter().map(|&v| u8::from(v > cut)).collect()))
    }
}

/// Opens a slide for crops and checks its size against its CSV row.
fn open_checked(
    path: &Path,
    id: &str,
    width: u32,
    height: u32,
    keep: bool,
) -> Result<(Pixels, TissueMap, usize, usize), DataError> {
    let (pixels, tissue, w, h) = Pixels::open(path, keep).map_err(|cause| DataError::Slide { id: id.into(), cause })?;
    DataError::check_size(id, (w, h), (width, height))?;
    Ok((pixels, tissue, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
    use ftu_formats::Mask;
    use rand::SeedableRng;

    /// A `width × height` slide: white glass on the left third, stained tissue (noisy pink)
    /// elsewhere, written as a tiled deflate TIFF; and a mask with FTU squares.
    fn slide(
        dir: &Path,
        width: usize,
        height: usize,
        squares: &[(usize, usize, usize)],
    ) -> (PathBuf, RgbImage, String) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut img = RgbImage::new(width, height);
        for (i, px) in img.data.chunks_exact_mut(3).enumerate() {
            let x = i % width;
            let base: [u8; 3] = if x < width / 3 {
                [242, 241, 243]
            } else {
                [214, 120, 170]
            };
            for (p, b) in px.iter_mut().zip(base) {
                *p = b.saturating_add(rng.random_range(0..24));
            }
        }
        let mut mask = Mask::zeros(height, width);
        for &(x0, y0, side) in squares {
            for y in y0..y0 + side {
                for x in x0..x0 + side {
                    mask.set(y, x, true);
                }
            }
        }
        let path = dir.join("slide.tiff");
        let spec = TiffSpec {
            width: width as u32,
            height: height as u32,
            samples: Samples::Rgb8,
            chunking: Chunking::Tiles { size: 64 },
            compression: Compression::Deflate,
            bigtiff: false,
        };
        write_tiff_image(&path, &spec, &img.data).unwrap();
        (path, img, rle::encode(&mask))
    }

    fn spec(p_ftu: f64, min_tissue: f64) -> CropSpec {
        CropSpec {
            size: 48,
            scale: 0.5,
            pixel_size: None,
            p_ftu,
            min_tissue,
            overlap: 0.25,
        }
    }

    /// A crop at scale s is the slide's region resized to `size²` (the same resize the engine
    /// uses), whether the slide is kept decoded or read by region from its TIFF; its mask is the
    /// region of the RLE's mask resized and cut at ½. A crop over the slide's edge is padded as
    /// the engine pads windows.
    #[test]
    fn a_crop_at_a_scale_is_the_resized_region_kept_or_read_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, img, rle_text) = slide(dir.path(), 250, 170, &[(120, 40, 30), (10, 150, 20)]);
        let truth = rle::decode(&rle_text, 170, 250).unwrap();
        let kept = FullSlide::labelled(&path, "s", &rle_text, (250, 170), true).unwrap();
        let read = FullSlide::labelled(&path, "s", &rle_text, (250, 170), false).unwrap();
        assert!(kept.kept() && !read.kept());
        assert_eq!(kept.ftu_pixels(), 30 * 30 + 20 * 20);
        let s = spec(0.5, 0.0);
        let side = s.side(0.4);
        assert_eq!(side, 96);
        for (x, y) in [(100, 20), (0, 0), (200, 120)] {
            let (w, h) = (side.min(250 - x), side.min(170 - y));
            let region = pad_edge(ftu_formats::slide::rgb::crop(&img, x, y, w, h), side);
            let want: Vec<f32> = resize_rgb(&region, 48, 48)
                .data
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect();
            let mut plane = vec![0u8; w * h];
            for r in 0..h {
                for c in 0..w {
                    plane[r * w + c] = u8::from(truth.get(y + r, x + c));
                }
            }
            let m: Vec<f32> = pad_samples(&plane, w, h, 1, side).iter().map(|&v| v as f32).collect();
            let want_mask: Vec<u8> = resize_map(&m, side, side, 48, 48)
                .iter()
                .map(|&v| u8::from(v > 0.5))
                .collect();
            for slide in [&kept, &read] {
                let c = slide.crop(x, y, side, 48, None).unwrap();
                assert_eq!(c.image, want, "crop at {x},{y}");
                assert_eq!(c.mask, want_mask, "mask at {x},{y}");
            }
        }
        // The crop over the FTU square holds it.
        assert!(kept.crop(100, 20, side, 48, None).unwrap().mask.iter().any(|&m| m == 1));
    }

    #[test]
    fn a_label_region_is_the_decoded_masks_region() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, rle_text) = slide(dir.path(), 90, 70, &[(5, 5, 20), (50, 30, 33), (0, 60, 10)]);
        let truth = rle::decode(&rle_text, 70, 90).unwrap();
        let s = FullSlide::labelled(&path, "s", &rle_text, (90, 70), true).unwrap();
        for (x, y, w, h) in [(0, 0, 90, 70), (3, 4, 30, 29), (60, 50, 30, 20), (49, 29, 1, 1)] {
            let got = s.label_region(x, y, w, h).unwrap();
            for r in 0..h {
                for c in 0..w {
                    assert_eq!(got[r * w + c] == 1, truth.get(y + r, x + c), "({x},{y}) +({c},{r})");
                }
            }
        }
    }

    /// Of 400 seeded draws on a slide whose FTU is one 24² square (under 1 % of it), the crops
    /// holding FTU pixels are about p_ftu + (1 − p_ftu)·(the rate of a random crop).
    #[test]
    fn crops_centred_on_ftus_hold_ftu_pixels_at_the_requested_rate() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, rle_text) = slide(dir.path(), 600, 400, &[(400, 200, 24)]);
        let s = FullSlide::labelled(&path, "s", &rle_text, (600, 400), true).unwrap();
        let rate = |p_ftu: f64| {
            let spec = spec(p_ftu, 0.0);
            let side = spec.side(0.4);
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let hits = (0..400)
                .filter(|_| {
                    let (x, y) = s.draw_origin(side, &spec, &mut rng);
                    assert!(x + side <= 600 && y + side <= 400);
                    s.label_region(x, y, side, side).unwrap().contains(&1)
                })
                .count();
            hits as f64 / 400.0
        };
        let base = rate(0.0);
        assert!(base < 0.15, "random crops hit the FTU {base}");
        assert_eq!(rate(1.0), 1.0);
        for p in [0.3, 0.6] {
            let want = p + (1.0 - p) * base;
            let got = rate(p);
            assert!((got - want).abs() < 0.07, "p_ftu {p}: {got}, expected about {want}");
        }
    }

    /// With min_tissue 0.9, random crops avoid the glass (the slide's left third): every crop is
    /// mostly tissue; with 0 they land on the glass too.
    #[test]
    fn random_crops_are_redrawn_off_the_glass() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, rle_text) = slide(dir.path(), 600, 300, &[]);
        let s = FullSlide::labelled(&path, "s", &rle_text, (600, 300), true).unwrap();
        let on_glass = |min_tissue: f64| {
            let spec = spec(1.0, min_tissue);
            let side = spec.side(0.4);
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            (0..200)
                .filter(|_| {
                    let (x, y) = s.draw_origin(side, &spec, &mut rng);
                    s.tissue.fraction(x, y, side, side) < 0.9
                })
                .count()
        };
        assert_eq!(on_glass(0.9), 0);
        assert!(on_glass(0.0) > 40, "{}", on_glass(0.0));
    }
}
