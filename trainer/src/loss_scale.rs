//! Dynamic loss scaling for float16 training, as PyTorch's `GradScaler`: the loss is multiplied
//! by the scale before the backward pass so that small gradients survive float16 (whose smallest
//! subnormal is about 6e-8); the optimiser sees the gradients divided by it again. A step whose
//! gradients are not finite is skipped and the scale halved; after `GROWTH_INTERVAL` finite steps
//! in a row the scale doubles. bfloat16 has float32's range and float32 needs none: scale 1.

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use ftu_models::Precision;

/// PyTorch's defaults.
const INITIAL: f64 = 65536.0;
const GROWTH_INTERVAL: usize = 2000;
/// Below this the scale stops halving (gradients that are not finite even so are a model
/// problem, not a scaling one; the steps keep being skipped and counted).
const MIN_SCALE: f64 = 1.0 / 65536.0;

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

    /// Resumes at a saved scale (ignored when the scale is not dynamic).
    pub fn resume_at(&mut self, scale: f64) {
        if self.dynamic && scale.is_finite() && scale > 0.0 {
            self.scale = scale;
        }
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
        s.resume_at(8.0);
        assert_eq!(s.scale(), 8.0);
    }

    #[test]
    fn float32_and_bfloat16_never_scale_or_skip() {
        for p in [Precision::F32, Precision::Bf16] {
            let mut s = LossScale::for_precision(p);
            assert!(s.update(false));
            s.resume_at(8.0);
            assert_eq!((s.scale(), s.skipped, s.is_dynamic()), (1.0, 0, false));
        }
    }
}
