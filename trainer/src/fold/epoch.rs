//! One epoch of a fold's training: batches drawn and augmented, losses and gradients,
//! optimiser steps.

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use ftu_models::{Ctx, Precision, Segmenter};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{seed_of, Fold, FoldProgress, Trained};
use crate::config::TrainConfig;
use crate::data::sampling;
use crate::data::{self, Batch};
use crate::error::{Result, TrainError};
use crate::losses;
use crate::optim;
use crate::optim::loss_scale::LossScale;

impl Fold<'_> {
    /// One pass over `samples` training slides in batches (the next batch drawn and augmented
    /// while the model works on this one), gradients accumulated, clipped, and stepped.
    pub(crate) fn train_epoch(&mut self, epoch: usize, progress: &mut dyn FoldProgress) -> Result<Trained> {
        let (cfg, k, cache, norm) = (self.cfg, self.k, self.cache, self.norm);
        let mut rng = ChaCha8Rng::seed_from_u64(seed_of(&[cfg.seed, k as u64, epoch as u64]));
        let rows = cache.rows();
        let order = sampling::epoch_order(
            &self.train_idx,
            |i| rows[i].organ,
            self.samples,
            cfg.sampling.weights().as_ref(),
            &mut rng,
        )
        .ok_or_else(|| {
            TrainError::Run(format!(
                "fold {k}: sampling.organ_weights gives weight 0 to every organ of the training slides"
            ))
        })?;
        // Per-image loss factors: the organ's, times pseudo_weight for pseudo-labelled slides.
        let factors = cfg.loss.organ_factors();
        let weighted = factors.is_some() || cache.labelled() < rows.len();
        let device = self.device.clone();
        let image_weights = |chunk: &[usize]| -> Result<Option<Tensor>> {
            if !weighted {
                return Ok(None);
            }
            let w: Vec<f32> = chunk
                .iter()
                .map(|&i| {
                    let organ = factors.map_or(1.0, |f| f[rows[i].organ.index()]);
                    let pseudo = if i >= cache.labelled() { cfg.pseudo_weight } else { 1.0 };
                    (organ * pseudo) as f32
                })
                .collect();
            Ok(Some(Tensor::from_vec(w, chunk.len(), &device)?))
        };
        let frozen = epoch <= cfg.freeze_encoder_epochs;
        let chunks: Vec<&[usize]> = order.chunks(cfg.batch).collect();
        progress.start(&format!("fold {k} epoch {epoch}/{}", cfg.epochs), chunks.len());
        let mut loss_sum = 0f64;
        let mut acc: Option<GradStore> = None;
        let mut in_acc = 0;
        let mut lr = 0.0;
        let seeds_for = |b: usize, n: usize| {
            (0..n)
                .map(|j| seed_of(&[cfg.seed, k as u64, epoch as u64, b as u64, j as u64]))
                .collect::<Vec<_>>()
        };
        // Batch b + 1 is drawn, augmented and uploaded to the device on a thread of its own while
        // batch b trains: on a GPU the host-to-device copy leaves the training thread too.
        let load = |b: usize| -> Result<Option<data::Batch>> {
            let Some(c) = chunks.get(b) else { return Ok(None) };
            let host = data::batch(
                cache,
                c,
                &seeds_for(b, c.len()),
                Some(&cfg.augment),
                norm,
                cfg.pseudo_unsure,
            )?;
            Ok(Some(host.to_device(&device)?))
        };
        let mut next = load(0)?;
        for b in 0..chunks.len() {
            let batch = next.take().expect("a batch is ready");
            let model = &self.model;
            let (loaded, step_result) = std::thread::scope(|scope| {
                let loader = scope.spawn(|| load(b + 1));
                let ctx = Ctx::train(seed_of(&[cfg.seed, k as u64, epoch as u64, b as u64, 99]))
                    .with_precision(self.precision);
                let loss_scale = &self.loss_scale;
                let result = image_weights(chunks[b])
                    .and_then(|weights| loss_and_gradients(cfg, model, &batch, weights.as_ref(), &ctx, loss_scale));
                let loaded = loader
                    .join()
                    .map_err(|_| TrainError::Run("the batch loader panicked".into()));
                (loaded, result)
            });
            next = loaded??;
            let (value, grads) = step_result?;
            if !value.is_finite() {
                let hint = match self.precision {
                    Precision::F16 => "; an activation may be beyond float16's ±65504: try --precision bf16",
                    _ => "",
                };
                return Err(TrainError::Run(format!(
                    "fold {k} epoch {epoch} batch {b}: the loss is {value}; lower optim.lr{hint}"
                )));
            }
            loss_sum += value;
            acc = Some(match acc.take() {
                None => grads,
                Some(mut a) => {
                    for (_, p) in &self.named {
                        if let Some(g) = grads.get(p) {
                            let sum = match a.get(p) {
                                Some(prev) => (prev + g)?,
                                None => g.clone(),
                            };
                            a.insert(p, sum);
                        }
                    }
                    a
                }
            });
            in_acc += 1;
            if in_acc == cfg.optim.accumulate || b + 1 == chunks.len() {
                let grads = acc.take().expect("gradients accumulated");
                lr = self.step(&grads, in_acc, frozen)?;
                in_acc = 0;
            }
            progress.tick(&format!("loss {:.4}", loss_sum / (b + 1) as f64));
        }
        Ok(Trained {
            train_loss: loss_sum / chunks.len() as f64,
            lr,
        })
    }

    /// One optimiser step on gradients summed over `batches` batches (averaged, divided by the
    /// loss scale, clipped to `clip_norm`), then the EMA; returns the step's learning rate. With
    /// float16's dynamic loss scale, gradients that are not finite skip the step (and the EMA).
    pub(super) fn step(&mut self, grads: &GradStore, batches: usize, frozen: bool) -> Result<f64> {
        let cfg = self.cfg;
        let scale = 1.0 / (batches as f64 * self.loss_scale.scale());
        let norm = self.opt.grad_norm(grads)? * scale;
        if !self.loss_scale.update(norm.is_finite()) {
            return Ok(optim::learning_rate(&cfg.optim, self.opt.step, self.total_steps));
        }
        let clip = if cfg.optim.clip_norm > 0.0 && norm > cfg.optim.clip_norm {
            cfg.optim.clip_norm / norm
        } else {
            1.0
        };
        let lr = optim::learning_rate(&cfg.optim, self.opt.step, self.total_steps);
        let encoder_prefix = &self.encoder_prefix;
        self.opt.step(grads, lr, scale * clip, |name| {
            frozen && name.starts_with(encoder_prefix)
        })?;
        if let Some(e) = self.ema.as_mut() {
            e.update()?;
        }
        Ok(lr)
    }
}

/// The batch's loss (segmentation, deep supervision, organ and pixel-size heads) and gradients;
/// `image_weights` scale each image's segmentation loss.
fn loss_and_gradients(
    cfg: &TrainConfig,
    model: &Segmenter,
    batch: &Batch,
    image_weights: Option<&Tensor>,
    ctx: &Ctx,
    loss_scale: &LossScale,
) -> Result<(f64, GradStore)> {
    let out = model.forward(&batch.images, ctx)?;
    let keep = batch.keep.as_ref();
    let mut loss = losses::segmentation(&out.logits, &batch.masks, &cfg.loss, image_weights, keep)?;
    for aux in &out.aux {
        let aux_loss = losses::segmentation(aux, &batch.masks, &cfg.loss, image_weights, keep)?;
        loss = (loss + (aux_loss * cfg.loss.deep_supervision)?)?;
    }
    if let Some(organ) = &out.organ {
        let ce = candle_nn::loss::cross_entropy(organ, &batch.organs)?;
        loss = (loss + (ce * cfg.loss.organ)?)?;
    }
    if let Some(px) = &out.pixel_size {
        let mse = candle_nn::loss::mse(px, &batch.pixel_sizes)?;
        loss = (loss + (mse * cfg.loss.pixel_size)?)?;
    }
    let value = loss.to_scalar::<f32>()? as f64;
    Ok((value, loss_scale.backward(&loss)?))
}
