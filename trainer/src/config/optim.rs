//! `[optim]`: AdamW, its schedule, gradient accumulation and clipping, the weight EMA and
//! BatchNorm recalibration.

use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear warmup from 0, in optimiser steps; then cosine decay to `min_lr`.
    pub warmup_steps: usize,
    /// Batches whose gradients are summed before one optimiser step.
    pub accumulate: usize,
    /// Global gradient-norm clip; none when 0.
    pub clip_norm: f64,
    /// Exponential moving average of the weights (validated and exported); none when 0.
    pub ema: f64,
    /// Before each validation, BatchNorm's running statistics are set to the average over
    /// this many training batches ("precise BN"); none when 0.
    pub bn_recalibrate: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 3e-3,
            min_lr: 1e-5,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 10,
            accumulate: 1,
            clip_norm: 1.0,
            ema: 0.0,
            bn_recalibrate: 4,
        }
    }
}

impl OptimConfig {
    /// Its own ranges: at least one batch a step, an EMA decay below 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.accumulate == 0 {
            return Err(invalid("optim.accumulate", "at least 1"));
        }
        if !(0.0..1.0).contains(&self.ema) {
            return Err(invalid("optim.ema", format!("a decay in [0, 1), got {}", self.ema)));
        }
        Ok(())
    }
}
