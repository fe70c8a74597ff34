//! Training data: in resize mode, slides decoded once, resized to the training size and kept
//! (within a memory bound) as 0–1 RGB with their masks; in crops mode, slides at full resolution
//! that crops are cut from ([`crate::data::crops`]). Batches drawn, augmented and normalised in
//! parallel. Pseudo-labelled slides (soft labels from `ftu-infer pseudo`) come after the labelled
//! ones.

pub mod crops;
pub mod sampling;
pub mod split;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use ftu_formats::kaggle::Split;
use ftu_formats::manifest::{ChannelOrder, Normalisation};
use ftu_formats::mask::rle;
use ftu_formats::schema::{PseudoRow, TrainRow};
use ftu_formats::{read_slide, DataSource, SlideLimits};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::{self, stain::StainBasis, Sample, SlideScale};
use crate::config::AugmentConfig;
use crate::data::crops::{CropSpec, FullSlide};
pub use crate::error::DataError;

/// A slide at training scale.
#[derive(Debug, Clone)]
pub struct Slide {
    pub size: usize,
    /// HWC, 0–1.
    pub image: Vec<f32>,
    /// 0/1, or with `soft` a probability as round(p·255).
    pub mask: Vec<u8>,
    pub soft: bool,
}

impl Slide {
    pub fn bytes(&self) -> usize {
        self.image.len() * 4 + self.mask.len()
    }

    pub fn sample(&self) -> Sample {
        Sample::new(self.size, self.image.clone(), self.mask.clone())
    }
}

/// Decodes one training slide and its RLE mask and resizes both to `size`² (area for the image;
/// the mask by area then > ½, so thin structures do not alias).
pub fn load_slide(data: &Path, row: &TrainRow, size: usize, stain: Option<&StainBasis>) -> Result<Slide, DataError> {
    let id = &row.id;
    let path = Split::Train.find_image(data, id).ok_or_else(|| DataError::Missing {
        id: id.clone(),
        dir: data.to_path_buf(),
    })?;
    let img = read_image(&path, id, row.img_width, row.img_height)?;
    let mask =
        rle::decode(&row.rle, img.height, img.width).map_err(|cause| DataError::Rle { id: id.clone(), cause })?;
    let m: Vec<f32> = mask.data().iter().map(|&v| v as f32).collect();
    let m = ftu_formats::resize::resize_map(&m, img.width, img.height, size, size);
    let mask = m.iter().map(|&v| u8::from(v > 0.5)).collect();
    Ok(Slide {
        size,
        image: training_image(&img, size, stain),
        mask,
        soft: false,
    })
}

/// Decodes a pseudo-labelled slide and its soft label (an 8-bit probability image at the
/// slide's size) and resizes both to `size`² (the label by area, kept as round(p·255)).
pub fn load_pseudo(row: &PseudoRow, size: usize, stain: Option<&StainBasis>) -> Result<Slide, DataError> {
    let id = &row.id;
    let img = read_image(&row.image, id, row.img_width, row.img_height)?;
    let label =
        read_slide(&row.label, SlideLimits::default()).map_err(|cause| DataError::Slide { id: id.clone(), cause })?;
    if (label.width, label.height) != (img.width, img.height) {
        return Err(DataError::LabelSize {
            id: id.clone(),
            path: row.label.clone(),
            got_w: label.width,
            got_h: label.height,
            want_w: row.img_width,
            want_h: row.img_height,
        });
    }
    let p: Vec<f32> = label.data.chunks_exact(3).map(|px| px[0] as f32 / 255.0).collect();
    let p = ftu_formats::resize::resize_map(&p, img.width, img.height, size, size);
    Ok(Slide {
        size,
        image: training_image(&img, size, stain),
        mask: p.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect(),
        soft: true,
    })
}

/// A slide's image, which must be `width × height` as its CSV row says.
fn read_image(path: &Path, id: &str, width: u32, height: u32) -> Result<ftu_formats::RgbImage, DataError> {
    let img = read_slide(path, SlideLimits::default()).map_err(|cause| DataError::Slide {
        id: id.to_string(),
        cause,
    })?;
    DataError::check_size(id, (img.width, img.height), (width, height))?;
    Ok(img)
}

/// The image at `size`² (area), 0–1, stain-normalised towards `stain` when given.
fn training_image(img: &ftu_formats::RgbImage, size: usize, stain: Option<&StainBasis>) -> Vec<f32> {
    let small = ftu_formats::resize::resize_rgb(img, size, size);
    let mut image: Vec<f32> = small.data.iter().map(|&v| v as f32 / 255.0).collect();
    if let Some(target) = stain {
        if let Some(own) = StainBasis::fit(&image) {
            own.normalise_to(&mut image, target);
        }
    }
    image
}

/// Decoded slides, as many as fit in the byte budget; the rest are decoded when drawn. The
/// labelled slides (train.csv's rows) come first, then the pseudo-labelled ones.
pub struct SlideCache {
    data: PathBuf,
    /// Every slide's row; pseudo-labelled ones without an RLE.
    rows: Vec<TrainRow>,
    labelled: usize,
    pseudo: Vec<PseudoRow>,
    size: usize,
    stain: Option<StainBasis>,
    slides: Vec<Option<Arc<Slide>>>,
    /// Crops mode: the crop geometry and every slide at full resolution (`slides` is empty).
    crops: Option<(CropSpec, Vec<FullSlide>)>,
}

/// Every slide's result in row order, or the error of the first bad slide in train.csv's order:
/// the same slide is named run after run, where rayon's short-circuiting `collect` names
/// whichever failing slide a thread reached first. (The others keep loading when one fails, a
/// cost paid only on the way to an error.)
fn first_error_in_row_order<T>(results: Vec<Result<T, DataError>>) -> Result<Vec<T>, DataError> {
    results.into_iter().collect()
}

impl SlideCache {
    pub fn build(
        data: &Path,
        rows: Vec<TrainRow>,
        pseudo: Vec<PseudoRow>,
        size: usize,
        budget_bytes: usize,
        stain_target: Option<&str>,
        tick: impl Fn() + Sync,
    ) -> Result<SlideCache, DataError> {
        let mut cache = SlideCache::empty(data, rows, pseudo, size, stain_target)?;
        let per_slide = size * size * 13;
        let fits = (budget_bytes / per_slide.max(1)).min(cache.rows.len());
        let all: Vec<usize> = (0..cache.rows.len()).collect();
        let slides = first_error_in_row_order(
            all[..fits]
                .par_iter()
                .map(|&i| {
                    let s = cache.load(i).map(Arc::new);
                    tick();
                    s
                })
                .collect(),
        )?;
        // Those beyond the budget are still checked now, so a bad file fails before training.
        first_error_in_row_order(all[fits..].par_iter().map(|&i| cache.load(i).map(|_| tick())).collect())?;
        cache.slides = slides.into_iter().map(Some).collect();
        cache.slides.resize(cache.rows.len(), None);
        Ok(cache)
    }

    /// The cache's rows and stain target, no slide loaded yet.
    fn empty(
        data: &Path,
        rows: Vec<TrainRow>,
        pseudo: Vec<PseudoRow>,
        size: usize,
        stain_target: Option<&str>,
    ) -> Result<SlideCache, DataError> {
        let stain = match stain_target {
            Some(id) => {
                let row = rows
                    .iter()
                    .find(|r| r.id == id)
                    .ok_or_else(|| DataError::UnknownStainTarget { id: id.into() })?;
                let slide = load_slide(data, row, size, None)?;
                Some(StainBasis::fit(&slide.image).ok_or_else(|| DataError::NoStains { id: id.into() })?)
            }
            None => None,
        };
        if let Some(p) = pseudo.iter().find(|p| rows.iter().any(|r| r.id == p.id)) {
            return Err(DataError::PseudoIsLabelled { id: p.id.clone() });
        }
        let labelled = rows.len();
        Ok(SlideCache {
            data: data.to_path_buf(),
            rows: rows
                .into_iter()
                .chain(pseudo.iter().map(PseudoRow::as_train_row))
                .collect(),
            labelled,
            pseudo,
            size,
            stain,
            slides: Vec::new(),
            crops: None,
        })
    }

    /// Crops mode: every slide opened at full resolution (and checked), kept decoded in
    /// train.csv's order while `budget_bytes` lasts; TIFFs beyond it are read by region per crop.
    pub fn build_crops(
        data: &Path,
        rows: Vec<TrainRow>,
        pseudo: Vec<PseudoRow>,
        spec: CropSpec,
        budget_bytes: usize,
        stain_target: Option<&str>,
        tick: impl Fn() + Sync,
    ) -> Result<SlideCache, DataError> {
        let mut cache = SlideCache::empty(data, rows, pseudo, spec.size, stain_target)?;
        let mut left = budget_bytes;
        let keep: Vec<bool> = cache
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let bytes = FullSlide::kept_bytes(r.img_width, r.img_height, i >= cache.labelled);
                let fits = bytes <= left;
                if fits {
                    left -= bytes;
                }
                fits
            })
            .collect();
        let full = first_error_in_row_order(
            (0..cache.rows.len())
                .into_par_iter()
                .map(|i| {
                    let row = &cache.rows[i];
                    let size = (row.img_width, row.img_height);
                    let slide = match i.checked_sub(cache.labelled) {
                        None => {
                            let path = Split::Train
                                .find_image(data, &row.id)
                                .ok_or_else(|| DataError::Missing {
                                    id: row.id.clone(),
                                    dir: data.to_path_buf(),
                                })?;
                            FullSlide::labelled(&path, &row.id, &row.rle, size, keep[i])
                        }
                        Some(p) => {
                            let p = &cache.pseudo[p];
                            FullSlide::pseudo(&p.image, &p.label, &p.id, size, keep[i])
                        }
                    };
                    tick();
                    slide
                })
                .collect(),
        )?;
        cache.crops = Some((spec, full));
        Ok(cache)
    }

    /// Crops mode's geometry and slides.
    pub fn crops(&self) -> Option<(&CropSpec, &[FullSlide])> {
        self.crops.as_ref().map(|(spec, full)| (spec, full.as_slice()))
    }

    /// The stain basis every slide is normalised towards, if any.
    pub fn stain(&self) -> Option<&StainBasis> {
        self.stain.as_ref()
    }

    /// Training sample `i` drawn with `seed`: the slide (resize mode) or a crop placed by
    /// [`FullSlide::draw_origin`] (crops mode), augmented when `augment` is given; and whether
    /// its label is soft.
    pub fn draw(&self, i: usize, seed: u64, augment: Option<&AugmentConfig>) -> Result<(Sample, bool), DataError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut sample, soft) = match &self.crops {
            None => {
                let slide = self.get(i)?;
                (slide.sample(), slide.soft)
            }
            Some((spec, full)) => {
                let slide = &full[i];
                let side = spec.side(self.rows[i].pixel_size);
                let (x, y) = slide.draw_origin(side, spec, &mut rng);
                (slide.crop(x, y, side, spec.size, self.stain.as_ref())?, slide.soft())
            }
        };
        if let Some(cfg) = augment {
            augment::augment(&mut sample, self.scale(i), cfg, &mut rng);
        }
        Ok((sample, soft))
    }

    fn load(&self, i: usize) -> Result<Slide, DataError> {
        match i.checked_sub(self.labelled) {
            None => load_slide(&self.data, &self.rows[i], self.size, self.stain.as_ref()),
            Some(p) => load_pseudo(&self.pseudo[p], self.size, self.stain.as_ref()),
        }
    }

    /// Slides `0..labelled()` are train.csv's; the rest are pseudo-labelled.
    pub fn labelled(&self) -> usize {
        self.labelled
    }

    pub fn rows(&self) -> &[TrainRow] {
        &self.rows
    }

    /// Slides kept decoded.
    pub fn cached(&self) -> usize {
        match &self.crops {
            None => self.slides.iter().filter(|s| s.is_some()).count(),
            Some((_, full)) => full.iter().filter(|s| s.kept()).count(),
        }
    }

    pub fn get(&self, i: usize) -> Result<Arc<Slide>, DataError> {
        match &self.slides[i] {
            Some(s) => Ok(s.clone()),
            None => Ok(Arc::new(self.load(i)?)),
        }
    }

    /// Slide `i`'s pixel-size factor for the rescale augmentation.
    pub fn scale(&self, i: usize) -> SlideScale {
        let row = &self.rows[i];
        let physical = matches!(&self.crops, Some((spec, _)) if spec.pixel_size.is_some());
        SlideScale {
            hpa_to_hubmap: (row.data_source == DataSource::Hpa && !physical)
                .then(|| 0.4 / row.organ.hubmap_pixel_size()),
        }
    }
}

/// Per channel `(x·255 − mean) / std`, as ftu-infer feeds the exported model.
pub fn normaliser(name: &str) -> Result<Normalisation, DataError> {
    Normalisation::named(name, ChannelOrder::Rgb).ok_or_else(|| DataError::Norm(name.into()))
}

/// A batch: images N×3×S×S (normalised), masks N×1×S×S (0/1, or 0–1 for soft labels), organ
/// indices, pixel sizes, and which pixels count in the loss (when some do not).
pub struct Batch {
    pub images: Tensor,
    pub masks: Tensor,
    /// N×1×S×S, 1 where a pixel counts: absent when all do.
    pub keep: Option<Tensor>,
    pub organs: Tensor,
    pub pixel_sizes: Tensor,
}

impl Batch {
    /// The batch on `device` (the same tensors, shared, when it is already there).
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Batch> {
        Ok(Batch {
            images: self.images.to_device(device)?,
            masks: self.masks.to_device(device)?,
            keep: self.keep.as_ref().map(|k| k.to_device(device)).transpose()?,
            organs: self.organs.to_device(device)?,
            pixel_sizes: self.pixel_sizes.to_device(device)?,
        })
    }
}

/// Draws the samples of `indices` (augmented with per-sample seeds when `augment` is given) in
/// parallel and stacks them, on the host ([`Batch::to_device`] uploads them). With `unsure`
/// (lo, hi), a soft label's pixels strictly between the two are left out of the loss.
pub fn batch(
    cache: &SlideCache,
    indices: &[usize],
    seeds: &[u64],
    augment: Option<&AugmentConfig>,
    norm: &Normalisation,
    unsure: Option<[f64; 2]>,
) -> Result<Batch, DataError> {
    let samples = indices
        .par_iter()
        .zip(seeds)
        .map(|(&i, &seed)| cache.draw(i, seed, augment))
        .collect::<Result<Vec<_>, DataError>>()?;
    let rows: Vec<&TrainRow> = indices.iter().map(|&i| &cache.rows[i]).collect();
    Ok(stack(&samples, &rows, norm, unsure))
}

/// Samples (each with whether its label is soft) of the slides of `rows` stacked into a batch.
pub fn stack(samples: &[(Sample, bool)], rows: &[&TrainRow], norm: &Normalisation, unsure: Option<[f64; 2]>) -> Batch {
    let n = samples.len();
    let size = samples.first().map_or(0, |(s, _)| s.size);
    let plane = size * size;
    let mut images = vec![0f32; n * 3 * plane];
    let mut masks = vec![0f32; n * plane];
    for (k, (s, soft)) in samples.iter().enumerate() {
        for c in 0..3 {
            let dst = &mut images[(k * 3 + c) * plane..(k * 3 + c + 1) * plane];
            for (d, px) in dst.iter_mut().zip(s.image.chunks_exact(3)) {
                *d = (px[c] * 255.0 - norm.mean[c]) / norm.std[c];
            }
        }
        let scale = if *soft { 1.0 / 255.0 } else { 1.0 };
        for (d, &m) in masks[k * plane..(k + 1) * plane].iter_mut().zip(&s.mask) {
            *d = m as f32 * scale;
        }
    }
    // 1 where a pixel counts; only built when some soft label has unsure pixels.
    let keep = unsure
        .filter(|_| samples.iter().any(|(_, soft)| *soft))
        .map(|[lo, hi]| {
            let mut keep = vec![1f32; n * plane];
            for (k, (s, _)) in samples.iter().enumerate().filter(|(_, (_, soft))| *soft) {
                for (d, &m) in keep[k * plane..(k + 1) * plane].iter_mut().zip(&s.mask) {
                    let p = m as f64 / 255.0;
                    if p > lo && p < hi {
                        *d = 0.0;
                    }
                }
            }
            keep
        });
    let dev = Device::Cpu;
    let organs: Vec<u32> = rows.iter().map(|r| r.organ.index() as u32).collect();
    let pixel: Vec<f32> = rows.iter().map(|r| r.pixel_size as f32).collect();
    Batch {
        images: Tensor::from_vec(images, (n, 3, size, size), &dev).expect("sizes agree"),
        masks: Tensor::from_vec(masks, (n, 1, size, size), &dev).expect("sizes agree"),
        keep: keep.map(|k| Tensor::from_vec(k, (n, 1, size, size), &dev).expect("sizes agree")),
        organs: Tensor::from_vec(organs, n, &dev).expect("sizes agree"),
        pixel_sizes: Tensor::from_vec(pixel, (n, 1), &dev).expect("sizes agree"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SamplingConfig;
    use crate::synth::{self, SynthConfig};

    /// Six slides, of which the 3rd and 5th in train.csv's order are not images.
    fn two_bad_slides(dir: &Path) -> (Vec<TrainRow>, String) {
        let cfg = SynthConfig {
            train: 6,
            test: 0,
            size: 64,
            seed: 3,
            mixed_formats: false,
        };
        synth::generate(dir, &cfg, || {}).unwrap();
        let rows = ftu_formats::schema::read_train(&dir.join("train.csv")).unwrap();
        for row in [&rows[2], &rows[4]] {
            let path = Split::Train.find_image(dir, &row.id).unwrap();
            std::fs::write(path, b"not a TIFF").unwrap();
        }
        let first_bad = rows[2].id.clone();
        (rows, first_bad)
    }

    #[test]
    fn the_first_bad_slide_in_row_order_is_named_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, first_bad) = two_bad_slides(dir.path());
        let named = |r: Result<SlideCache, DataError>| match r {
            Ok(_) => panic!("two slides are not images"),
            Err(e) => match e {
                DataError::Slide { id, .. } => id,
                other => panic!("{other}"),
            },
        };
        for _ in 0..4 {
            // Cached (a budget for all), checked only (no budget), and crops mode.
            for budget in [1 << 30, 0] {
                let r = SlideCache::build(dir.path(), rows.clone(), vec![], 32, budget, None, || {});
                assert_eq!(named(r), first_bad, "budget {budget}");
            }
            let spec = CropSpec::new(32, &SamplingConfig::default());
            let r = SlideCache::build_crops(dir.path(), rows.clone(), vec![], spec, 1 << 30, None, || {});
            assert_eq!(named(r), first_bad, "crops");
        }
    }
}
