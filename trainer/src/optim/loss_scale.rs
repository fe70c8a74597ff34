//! Dynamic loss scaling for float16 training, as PyTorch's `GradScaler`: the loss is multiplied
//! by the scale before the backward pass so that small gradients survive float16 (whose smallest
//! subnormal is about 6e-8); the optimiser sees the gradients divided by it again. A step whose
//! gradients are not finite is skipped and the scale halved; after `GROWTH_INTERVAL` finite steps
//! in a row the scale doubles. bfloat16 has float32's range and float32 needs none: scale 1.

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use ftu_models::Precision;
use serde::{Deserialize, Serialize};

/// PyTorch's defaults.
const INITIAL: f64 = 65536.0;
const GROWTH_INTERVAL: usize = 2000;
/// Below this the scale stops halving (gradients that are not finite even so are a model
/// problem, not a scaling one; the steps keep being skipped and counted).
const MIN_SCALE: f64 = 1.0 / 65536.0;

/// A dynamic loss scale as `state.json` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SavedLossScale {
    pub scale: f64,
    /// Finite steps since the scale last changed (it doubles at `GROWTH_INTERVAL`).
    pub good_steps: usize,
    /// Steps skipped since the run began.
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossScale {
    scale: f64,
    dynamic: bool,
    /// Finite steps since the last change of scale.
    good: usize,
    /// Steps skipped so far.
    pub skipped: usize,
}

impl LossScale {
    /// Dynamic from 65536 for float16, a constant 1 otherwise.
    pub fn for_precision(precision: Precision) -> LossScale {
        let dynamic = precision == Precision::F16;
        LossScale {
            scale: if dynamic { INITIAL } else { 1.0 },
            dynamic,
            good: 0,
            skipped: 0,
        }
    }

    /// What `--resume` needs to go on exactly where this run stands (as PyTorch's
    /// `GradScaler.state_dict`): nothing when the scale is not dynamic.
    pub fn saved(&self) -> Option<SavedLossScale> {
        self.dynamic.then_some(SavedLossScale {
            scale: self.scale,
            good_steps: self.good,
            skipped: self.skipped,
        })
    }

    /// Goes on from a saved state (ignored when the scale is not dynamic; a scale that is not a
    /// positive number, as a hand-edited file may hold, keeps the current one).
    pub fn resume(&mut self, saved: &SavedLossScale) {
        if !self.dynamic {
            return;
        }
        if saved.scale.is_finite() && saved.scale > 0.0 {
            self.scale = saved.scale.max(MIN_SCALE);
        }
        self.good = saved.good_steps.min(GROWTH_INTERVAL - 1);
        self.skipped = saved.skipped;
    }

    /// What the loss is multiplied by before the backward pass.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The gradients of `loss` times the scale (of `loss` itself at scale 1).
    pub fn backward(&self, loss: &Tensor) -> candle_core::Result<GradStore> {
        if self.scale == 1.0 {
            loss.backward()
        } else {
            (loss * self.scale)?.backward()
        }
    }

    /// Whether the scale changes and steps can be skipped.
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    /// After a step's gradients were measured: whether to apply the step. Non-finite gradients
    /// skip it (and halve the scale) only when the scale is dynamic.
    pub fn update(&mut self, gradients_finite: bool) -> bool {
        if !self.dynamic {
            return true;
        }
        if gradients_finite {
            self.good += 1;
            if self.good == GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good = 0;
            }
            true
        } else {
            self.scale = (self.scale / 2.0).max(MIN_SCALE);
            self.good = 0;
            self.skipped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float16_skips_and_halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
        let mut s = LossScale::for_precision(Precision::F16);
        assert_eq!(s.scale(), 65536.0);
        assert!(!s.update(false));
        assert!(!s.update(false));
        assert_eq!((s.scale(), s.skipped), (16384.0, 2));
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale(), 16384.0);
        assert!(s.update(true));
        assert_eq!(s.scale(), 32768.0);
        // A skipped step restarts the count.
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        s.update(false);
        s.update(true);
        assert_eq!(s.scale(), 16384.0);
        for _ in 0..100 {
            s.update(false);
        }
        assert_eq!(s.scale(), MIN_SCALE);
    }

    #[test]
    fn a_resumed_scale_goes_on_as_if_never_stopped() {
        // A run of mixed steps, stopped after each prefix, saved through JSON and resumed into a
        // fresh scale, ends in the same state as the uninterrupted run: scale, growth count and
        // skips.
        let steps: Vec<bool> = (0..3 * GROWTH_INTERVAL).map(|i| i % 1500 != 7).collect();
        let mut whole = LossScale::for_precision(Precision::F16);
        for &finite in &steps {
            whole.update(finite);
        }
        assert_eq!(whole.skipped, 4);
        assert_ne!(whole.scale(), INITIAL, "the run both halved and grew the scale");
        for stop in [1, 8, GROWTH_INTERVAL - 1, GROWTH_INTERVAL + 1500, steps.len() - 1] {
            let mut first = LossScale::for_precision(Precision::F16);
            for &finite in &steps[..stop] {
                first.update(finite);
            }
            let json = serde_json::to_string(&first.saved().unwrap()).unwrap();
            let mut second = LossScale::for_precision(Precision::F16);
            second.resume(&serde_json::from_str(&json).unwrap());
            for &finite in &steps[stop..] {
                second.update(finite);
            }
            assert_eq!(second, whole, "stopped after {stop} steps");
        }
    }

    #[test]
    fn a_saved_scale_that_is_not_a_positive_number_is_not_taken() {
        let mut s = LossScale::for_precision(Precision::F16);
        for scale in [0.0, -4.0, f64::NAN, f64::INFINITY] {
            s.resume(&SavedLossScale {
                scale,
                good_steps: 3,
                skipped: 1,
            });
            assert_eq!((s.scale(), s.good, s.skipped), (INITIAL, 3, 1), "{scale}");
        }
    }

    #[test]
    fn float32_and_bfloat16_never_scale_or_skip() {
        for p in [Precision::F32, Precision::Bf16] {
            let mut s = LossScale::for_precision(p);
            assert!(s.update(false));
            assert_eq!(s.saved(), None);
            s.resume(&SavedLossScale {
                scale: 8.0,
                good_steps: 3,
                skipped: 1,
            });
            assert_eq!((s.scale(), s.skipped, s.is_dynamic()), (1.0, 0, false));
        }
    }
}
