//! Dropout and drop-path (stochastic depth): random in training, the identity in eval and in ONNX.

use candle_core::Tensor;

use super::Layer;
use crate::{Ctx, Exporter, Result};

pub struct Dropout {
    pub p: f64,
}

impl Layer for Dropout {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if !ctx.is_train() || self.p == 0.0 {
            return Ok(x.clone());
        }
        let mask = ctx.keep_mask(x.dims(), 1.0 - self.p, x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }

    fn export(&self, _e: &mut Exporter, x: &str) -> Result<String> {
        Ok(x.to_string())
    }
}

/// Drops a whole residual branch per sample; applied to the branch before the skip is added.
pub struct DropPath {
    pub p: f64,
}

impl DropPath {
    /// Whether this forward pass drops anything (training with p > 0).
    pub fn is_active(&self, ctx: &Ctx) -> bool {
        ctx.is_train() && self.p > 0.0
    }
}

impl Layer for DropPath {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if !self.is_active(ctx) {
            return Ok(x.clone());
        }
        let mut dims = vec![1; x.rank()];
        dims[0] = x.dims()[0];
        let mask = ctx.keep_mask(&dims, 1.0 - self.p, x.device())?.to_dtype(x.dtype())?;
        Ok(x.broadcast_mul(&mask)?)
    }

    fn export(&self, _e: &mut Exporter, x: &str) -> Result<String> {
        Ok(x.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn drop_path_zeroes_whole_samples_and_keeps_the_mean() {
        let x = Tensor::ones((2000, 3, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = DropPath { p: 0.25 }.forward(&x, &Ctx::train(3)).unwrap();
        let per_sample = y.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        for s in &per_sample {
            assert!(s.iter().all(|v| *v == s[0]), "a sample is dropped whole or kept whole");
        }
        let mean = per_sample.iter().map(|s| s[0]).sum::<f32>() / per_sample.len() as f32;
        assert!((mean - 1.0).abs() < 0.06, "mean {mean}");
        let eval = DropPath { p: 0.25 }.forward(&x, &Ctx::eval()).unwrap();
        assert_eq!(eval.sum_all().unwrap().to_scalar::<f32>().unwrap(), 2000.0 * 12.0);
    }
}
