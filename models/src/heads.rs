//! Optional heads on the deepest features, as the 2nd-place model had: organ class (5 logits) and
//! pixel size (1 value), each a global average pool and a Linear.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::layers::{GlobalAvgPool, Layer, Linear};
use crate::{Ctx, Exporter, Result};

/// Number of organ classes (prostate, spleen, lung, kidney, largeintestine).
pub const ORGANS: usize = 5;

pub struct PooledHead {
    fc: Linear,
}

impl PooledHead {
    pub fn new(vb: VarBuilder, channels: usize, outputs: usize) -> Result<Self> {
        Ok(PooledHead {
            fc: Linear::new(vb.pp("fc"), channels, outputs, true)?,
        })
    }

    /// N×C×H×W → N×outputs.
    pub fn forward(&self, deepest: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let pooled = GlobalAvgPool.forward(deepest, ctx)?.flatten_from(1)?;
        self.fc.forward(&pooled, ctx)
    }

    pub fn export(&self, e: &mut Exporter, deepest: &str) -> Result<String> {
        let pooled = GlobalAvgPool.export(e, deepest)?;
        let flat = e.op("Flatten", &[&pooled], &[("axis", ftu_onnx::Attr::Int(1))]);
        self.fc.export(e, &flat)
    }
}
