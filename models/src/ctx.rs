//! How a forward pass runs: train or eval mode, the precision of convolutions and matmuls, and
//! the seeded randomness that dropout and drop-path draw from in training, so a run with a seed
//! repeats exactly.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Ctx {
    train: bool,
    /// BatchNorm's running-statistics momentum when recalibrating.
    recalibrate: Option<f64>,
    generic: bool,
    precision: Precision,
    rng: Mutex<ChaCha8Rng>,
}

/// The precision convolutions and matmuls run in (mixed precision): parameters, BatchNorm and
/// LayerNorm, activations between layers and losses stay float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// The low-precision type, or `None` for float32.
    pub fn low(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
            Precision::F16 => Some(DType::F16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            _ => Err(format!("`{s}`: expected f32, bf16 or f16")),
        }
    }
}

impl Ctx {
    /// Eval mode: BatchNorm uses running statistics, dropout and drop-path are the identity.
    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            recalibrate: None,
            generic: false,
            precision: Precision::F32,
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
            precision: Precision::F32,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// The same context, with every layer on its device-generic path (composed candle ops, as
    /// on a GPU) even on the CPU: the reference ftu's CPU ops are tested against.
    pub fn generic(self) -> Ctx {
        Ctx { generic: true, ..self }
    }

    /// The same context, with convolutions and matmuls in `precision`.
    pub fn with_precision(self, precision: Precision) -> Ctx {
        Ctx { precision, ..self }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `op` (a convolution or matmul) on `operands` in the context's precision, its result as
    /// float32. On a GPU the operands are cast down and the op runs in the low type (tensor
    /// cores). Candle's CPU backend has no bfloat16 matmul, so on the CPU the operands and the
    /// result are rounded to the low type and the op runs in float32 — the numbers tensor cores
    /// give (low-precision products, float32 sums, a low-precision result), gradients included:
    /// each rounding's gradient is the incoming one rounded the same way, as the GPU's backward
    /// kernels take and give low-precision gradients. This is how mixed precision is tested
    /// without a GPU.
    pub fn low_precision(
        &self,
        operands: &[&Tensor],
        op: impl FnOnce(&[Tensor]) -> crate::Result<Tensor>,
    ) -> crate::Result<Tensor> {
        let Some(low) = self.precision.low() else {
            let owned: Vec<Tensor> = operands.iter().map(|t| (*t).clone()).collect();
            return op(&owned);
        };
        let on_cpu = operands.first().is_some_and(|t| t.device().is_cpu());
        let cast: Vec<Tensor> = operands
            .iter()
            .map(|t| {
                let down = t.to_dtype(low)?;
                if on_cpu {
                    down.to_dtype(DType::F32)
                } else {
                    Ok(down)
                }
            })
            .collect::<candle_core::Result<_>>()?;
        let y = op(&cast)?;
        Ok(if on_cpu {
            y.to_dtype(low)?.to_dtype(DType::F32)?
        } else {
            y.to_dtype(DType::F32)?
        })
    }

    /// Whether `x` takes ftu's fused CPU ops: f32 on the CPU, unless the generic path is asked.
    pub fn cpu_ops(&self, x: &Tensor) -> bool {
        !self.generic && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
    }

    /// Whether `x` takes the CPU ops that run in float32 only (attention, Linear): [`Ctx::cpu_ops`]
    /// and no low precision; in bf16/f16 those layers take their composed path.
    pub fn cpu_ops_f32(&self, x: &Tensor) -> bool {
        self.cpu_ops(x) && self.precision.low().is_none()
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
