//! How a forward pass runs: train or eval mode, and the seeded randomness that dropout and
//! drop-path draw from in training, so a run with a seed repeats exactly.

use std::sync::Mutex;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Ctx {
    train: bool,
    /// BatchNorm's running-statistics momentum when recalibrating.
    recalibrate: Option<f64>,
    generic: bool,
    rng: Mutex<ChaCha8Rng>,
}

impl Ctx {
    /// Eval mode: BatchNorm uses running statistics, dropout and drop-path are the identity.
    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            recalibrate: None,
            generic: false,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(0)),
        }
    }

    /// Eval mode except that BatchNorm sets its running statistics to this batch's statistics,
    /// as after averaging weights (EMA, SWA), whose running statistics no longer fit them.
    pub fn recalibrate() -> Ctx {
        Ctx::recalibrate_with(1.0)
    }

    /// Eval mode except that BatchNorm normalises with this batch's statistics and moves its
    /// running ones towards them by `momentum`: over batches k = 0, 1, … with momentum
    /// 1/(k + 1), the running statistics become the batches' average ("precise BN").
    pub fn recalibrate_with(momentum: f64) -> Ctx {
        Ctx {
            recalibrate: Some(momentum),
            ..Ctx::eval()
        }
    }

    /// Train mode: BatchNorm uses and updates batch statistics; dropout draws from `seed`.
    pub fn train(seed: u64) -> Ctx {
        Ctx {
            train: true,
            recalibrate: None,
            generic: false,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// The same context, with every layer on its device-generic path (composed candle ops, as
    /// on a GPU) even on the CPU: the reference ftu's CPU ops are tested against.
    pub fn generic(self) -> Ctx {
        Ctx { generic: true, ..self }
    }

    /// Whether `x` takes ftu's fused CPU ops: f32 on the CPU, unless the generic path is asked.
    pub fn cpu_ops(&self, x: &Tensor) -> bool {
        !self.generic && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
    }

    /// Dropout and drop-path are active.
    pub fn is_train(&self) -> bool {
        self.train
    }

    /// BatchNorm normalises with the batch's statistics and updates its running ones; with the
    /// recalibration momentum when recalibrating.
    pub fn batch_statistics(&self) -> Option<Option<f64>> {
        if let Some(m) = self.recalibrate {
            Some(Some(m))
        } else if self.train {
            Some(None)
        } else {
            None
        }
    }

    /// A tensor of `dims` whose entries are 1/keep with probability `keep`, else 0.
    pub fn keep_mask(&self, dims: &[usize], keep: f64, device: &Device) -> candle_core::Result<Tensor> {
        let count: usize = dims.iter().product();
        let mut rng = self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let scale = (1.0 / keep) as f32;
        let values: Vec<f32> = (0..count)
            .map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 })
            .collect();
        Tensor::from_vec(values, dims, device)
    }
}
