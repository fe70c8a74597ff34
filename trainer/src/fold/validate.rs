//! Validation after an epoch: whole slides (resize mode) or tiled windows (crops mode), scored
//! at full resolution; the best checkpoint, out-of-fold probabilities and overlays.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use ftu_formats::blocks::BlockMap;
use ftu_formats::manifest::Normalisation;
use ftu_formats::resize::resize_map;
use ftu_formats::{tiles, Organ};
use ftu_models::{Ctx, Segmenter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{seed_of, Fold, Validated, OVERLAY_SIDE};
use crate::config::TrainConfig;
use crate::data::{self, SlideCache};
use crate::error::{Result, TrainError};
use crate::eval::full_res;
use crate::losses;
use crate::optim;

/// A validation pass: mean loss, per-slide Dice at 0.5 at the training size and at full
/// resolution, and probabilities at the training scale with their width and height (`size²` in
/// resize mode; the slide's size times the crop scale in crops mode).
struct Validation {
    loss: f64,
    dice: Vec<f64>,
    dice_full: Vec<f64>,
    probs: Vec<Vec<f32>>,
    shapes: Vec<(usize, usize)>,
}

fn evaluate(
    cfg: &TrainConfig,
    model: &Segmenter,
    cache: &SlideCache,
    idx: &[usize],
    norm: &Normalisation,
    device: &Device,
) -> Result<Validation> {
    if cache.crops().is_some() {
        return evaluate_tiled(cfg, model, cache, idx, norm, device);
    }
    let ctx = Ctx::eval();
    let (mut loss, mut dice_all, mut probs) = (0f64, Vec::new(), Vec::new());
    for chunk in idx.chunks(cfg.batch) {
        let seeds = vec![0; chunk.len()];
        let b = data::batch(cache, chunk, &seeds, None, norm, None)?.to_device(device)?;
        let out = model.forward(&b.images, &ctx)?;
        loss += losses::segmentation(&out.logits, &b.masks, &cfg.loss, None, None)?.to_scalar::<f32>()? as f64
            * chunk.len() as f64;
        // The whole batch's probabilities come to the host at once.
        let p = candle_nn::ops::sigmoid(&out.logits)?.to_device(&Device::Cpu)?;
        for (j, &i) in chunk.iter().enumerate() {
            let prob = p.get(j)?.flatten_all()?.to_vec1::<f32>()?;
            dice_all.push(ftu_formats::dice::dice_thresholded(&prob, 0.5, &cache.get(i)?.mask));
            probs.push(prob);
        }
    }
    // Each slide resized back to its own size and scored there, a few slides at a time.
    let rows = cache.rows();
    let dice_full = idx
        .par_iter()
        .zip(&probs)
        .map(|(&i, p)| Ok(full_res::score(p, cfg.size, &rows[i], &[0.5], None)?.counts.dice(0)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Validation {
        loss: loss / idx.len().max(1) as f64,
        dice: dice_all,
        dice_full,
        shapes: vec![(cfg.size, cfg.size); probs.len()],
        probs,
    })
}

/// Crops-mode validation: each validation slide covered with the windows `ftu-infer` runs on
/// a tiled group (the same [`tiles::TilePlan`]: windows at the crop scale, background windows
/// skipped by the same tissue detector, Gaussian blending), scored at full resolution. The loss
/// and the training-size Dice are over the windows that ran (Dice pooled per slide); the map
/// kept for out-of-fold use is the blend resized to the slide's size times the crop scale.
fn evaluate_tiled(
    cfg: &TrainConfig,
    model: &Segmenter,
    cache: &SlideCache,
    idx: &[usize],
    norm: &Normalisation,
    device: &Device,
) -> Result<Validation> {
    let (spec, full) = cache.crops().expect("crops mode");
    let min_fraction = ftu_formats::manifest::TissueDetection::default().min_fraction;
    let ctx = Ctx::eval();
    let rows = cache.rows();
    let (mut loss, mut windows) = (0f64, 0usize);
    let mut out = Validation {
        loss: 0.0,
        dice: Vec::new(),
        dice_full: Vec::new(),
        probs: Vec::new(),
        shapes: Vec::new(),
    };
    for &i in idx {
        let (slide, row) = (&full[i], &rows[i]);
        let side = spec.side(row.pixel_size);
        let plan = tiles::TilePlan::new(slide.width, slide.height, side, spec.overlap, |w| {
            slide.tissue.fraction(w.x, w.y, w.width, w.height) >= min_fraction
        });
        let mut map = BlockMap::new(slide.width, slide.height);
        let (mut inter, mut sum) = (0usize, 0usize);
        for chunk in plan.to_run.chunks(cfg.batch) {
            let samples = chunk
                .par_iter()
                .map(|w| Ok((slide.crop(w.x, w.y, side, spec.size, cache.stain())?, false)))
                .collect::<Result<Vec<_>>>()?;
            let b = data::stack(&samples, &vec![row; chunk.len()], norm, None).to_device(device)?;
            let logits = model.forward(&b.images, &ctx)?.logits;
            loss += losses::segmentation(&logits, &b.masks, &cfg.loss, None, None)?.to_scalar::<f32>()? as f64
                * chunk.len() as f64;
            windows += chunk.len();
            let p = candle_nn::ops::sigmoid(&logits)?.to_device(&Device::Cpu)?;
            for (j, (w, (sample, _))) in chunk.iter().zip(&samples).enumerate() {
                let prob = p.get(j)?.flatten_all()?.to_vec1::<f32>()?;
                for (&q, &m) in prob.iter().zip(&sample.mask) {
                    let pred = usize::from(q > 0.5);
                    inter += pred * m as usize;
                    sum += pred + m as usize;
                }
                plan.blend(&mut map, w, prob, spec.size, 1.0);
            }
        }
        out.dice
            .push(if sum == 0 { 1.0 } else { 2.0 * inter as f64 / sum as f64 });
        let mut dense = vec![0f32; slide.width * slide.height];
        for (y, line) in dense.chunks_exact_mut(slide.width).enumerate() {
            map.row(y, line);
        }
        out.dice_full
            .push(full_res::score_full(&dense, row, &[0.5], None)?.counts.dice(0));
        let factor = spec.factor(row.pixel_size);
        let shape = (
            ((slide.width as f64 * factor).round() as usize).max(1),
            ((slide.height as f64 * factor).round() as usize).max(1),
        );
        out.probs
            .push(resize_map(&dense, slide.width, slide.height, shape.0, shape.1));
        out.shapes.push(shape);
    }
    out.loss = loss / windows.max(1) as f64;
    Ok(out)
}

impl Fold<'_> {
    /// Validation on the EMA weights when there are some: Dice overall and per organ; a new best
    /// saves its checkpoint and out-of-fold probabilities; overlays of the first slides.
    pub(crate) fn validate(&mut self, epoch: usize) -> Result<Validated> {
        let (cfg, cache) = (self.cfg, self.cache);
        if let Some(e) = self.ema.as_mut() {
            e.swap()?;
        }
        if cfg.optim.bn_recalibrate > 0 {
            self.recalibrate_batch_norm(epoch)?;
        }
        if self.val_idx.is_empty() {
            // A full-data fit: no validation, and every epoch is the one exported.
            self.model.store().save(&self.path("best.safetensors"))?;
            if let Some(e) = self.ema.as_mut() {
                e.swap()?;
            }
            return Ok(Validated {
                loss: f64::NAN,
                dice: f64::NAN,
                dice_full: f64::NAN,
                organ_dice: BTreeMap::new(),
                improved: true,
            });
        }
        let rows = cache.rows();
        let val = evaluate(cfg, &self.model, cache, &self.val_idx, self.norm, &self.device)?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (dice, dice_full) = (mean(&val.dice), mean(&val.dice_full));
        let mut per_organ: BTreeMap<Organ, Vec<f64>> = BTreeMap::new();
        for (&i, &d) in self.val_idx.iter().zip(&val.dice_full) {
            per_organ.entry(rows[i].organ).or_default().push(d);
        }
        let organ_dice = per_organ
            .into_iter()
            .map(|(o, v)| (o, v.iter().sum::<f64>() / v.len() as f64))
            .collect();
        let improved = dice_full > self.state.best_dice;
        if improved {
            self.model.store().save(&self.path("best.safetensors"))?;
            let oof: HashMap<String, Tensor> = self
                .val_idx
                .iter()
                .zip(val.probs.iter().zip(&val.shapes))
                .map(|(&i, (p, &(w, h)))| {
                    Ok((
                        rows[i].id.clone(),
                        Tensor::from_slice(p, (h, w), &candle_core::Device::Cpu)?,
                    ))
                })
                .collect::<Result<_>>()?;
            optim::save_atomic(&oof, &self.path("oof.safetensors"))?;
            // The overlays show the epoch that is exported: the best.
            for ((&i, p), &shape) in self.val_idx.iter().zip(&val.probs).zip(&val.shapes).take(cfg.overlays) {
                self.overlay(i, p, shape)?;
            }
        }
        if let Some(e) = self.ema.as_mut() {
            e.swap()?;
        }
        Ok(Validated {
            loss: val.loss,
            dice,
            dice_full,
            organ_dice,
            improved,
        })
    }

    /// "Precise BN": BatchNorm's running statistics set to the average of `bn_recalibrate`
    /// batches' statistics, on training samples drawn (and augmented) with seeds of the fold
    /// and epoch, so validation and the checkpoint see statistics of the current weights rather
    /// than a momentum average that lags them while the weights move fast (few steps an epoch,
    /// or EMA weights).
    pub(super) fn recalibrate_batch_norm(&mut self, epoch: usize) -> Result<()> {
        let (cfg, k) = (self.cfg, self.k);
        let mut rng = ChaCha8Rng::seed_from_u64(seed_of(&[cfg.seed, k as u64, epoch as u64, 77]));
        let order: Vec<usize> = (0..cfg.optim.bn_recalibrate * cfg.batch)
            .map(|_| self.train_idx[rng.random_range(0..self.train_idx.len())])
            .collect();
        for (b, chunk) in order.chunks(cfg.batch).enumerate() {
            let seeds: Vec<u64> = (0..chunk.len())
                .map(|j| seed_of(&[cfg.seed, k as u64, epoch as u64, 78, b as u64, j as u64]))
                .collect();
            let batch =
                data::batch(self.cache, chunk, &seeds, Some(&cfg.augment), self.norm, None)?.to_device(&self.device)?;
            self.model
                .forward(&batch.images, &Ctx::recalibrate_with(1.0 / (b + 1) as f64))?;
        }
        Ok(())
    }

    /// foldK/overlays/ID.png: validation slide `i` with its prediction (`prob`, `width × height`
    /// at the training scale, resized up) and truth outlined, at [`OVERLAY_SIDE`] pixels a side or
    /// the slide's own size if smaller.
    pub(super) fn overlay(&self, i: usize, prob: &[f32], (width, height): (usize, usize)) -> Result<()> {
        let row = &self.cache.rows()[i];
        let (full_w, full_h) = (row.img_width as usize, row.img_height as usize);
        let scale = (OVERLAY_SIDE as f64 / full_w.max(full_h) as f64).min(1.0);
        let side = |v: usize| ((v as f64 * scale).round() as usize).max(1);
        let (ow, oh) = (side(full_w), side(full_h));
        let (rgb, truth) = match self.cache.crops() {
            None => {
                let path = ftu_formats::kaggle::Split::Train
                    .find_image(&self.cfg.data, &row.id)
                    .ok_or_else(|| {
                        TrainError::Run(format!("slide {}: its image is gone from train_images/", row.id))
                    })?;
                let slide = ftu_formats::read_slide(&path, ftu_formats::SlideLimits::default())
                    .map_err(|e| TrainError::Run(e.to_string()))?;
                let truth = ftu_formats::mask::rle::decode(&row.rle, full_h, full_w)
                    .map_err(|e| TrainError::Run(format!("train.csv, slide {}: {e}", row.id)))?;
                let small: Vec<u8> = (0..oh * ow)
                    .map(|j| {
                        let (y, x) = ((j / ow) * full_h / oh, (j % ow) * full_w / ow);
                        truth.data()[y * full_w + x]
                    })
                    .collect();
                (ftu_formats::resize::resize_rgb(&slide, ow, oh), small)
            }
            Some((_, full)) => full[i].overview(ow, oh)?,
        };
        let prob = resize_map(prob, width, height, ow, oh);
        let mask =
            |data: Vec<u8>| ftu_formats::Mask::from_row_major(oh, ow, data).map_err(|e| TrainError::Run(e.to_string()));
        let pred = mask(prob.iter().map(|&v| u8::from(v > 0.5)).collect())?;
        let truth = mask(truth)?;
        let (w, h, px) = ftu_formats::draw::overlay(&rgb, &pred, Some(&truth), ow.max(oh));
        let id = &row.id;
        ftu_formats::mask::image::write_rgb_png(&self.dir.join("overlays").join(format!("{id}.png")), w, h, &px)?;
        Ok(())
    }
}
