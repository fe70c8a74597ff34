//! MiT's efficient self-attention: keys and values come from a spatially reduced copy of the
//! tokens (a stride-`sr` conv and LayerNorm), so attention costs L·L/sr² instead of L².
//! Parameter names are Hugging Face SegFormer's (`attention.self.query`, `attention.output.dense`).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use ftu_onnx::Attr;

use super::{Conv2d, ConvCfg, Layer, LayerNorm, Linear};
use crate::{Ctx, Exporter, Result};

pub struct EfficientSelfAttention {
    channels: usize,
    heads: usize,
    query: Linear,
    key: Linear,
    value: Linear,
    reduction: Option<(Conv2d, LayerNorm)>,
    dense: Linear,
}

impl EfficientSelfAttention {
    pub fn new(vb: VarBuilder, channels: usize, heads: usize, sr_ratio: usize) -> Result<Self> {
        if channels % heads != 0 {
            return Err(crate::ModelError::Config(format!(
                "{}: {channels} channels do not split into {heads} heads",
                vb.prefix()
            )));
        }
        let s = vb.pp("self");
        let reduction = if sr_ratio > 1 {
            let cfg = ConvCfg::same(1).stride(sr_ratio).padding(0).bias(true);
            Some((
                Conv2d::new(s.pp("sr"), channels, channels, sr_ratio, cfg)?,
                LayerNorm::new(s.pp("layer_norm"), channels, 1e-5)?,
            ))
        } else {
            None
        };
        Ok(EfficientSelfAttention {
            channels,
            heads,
            query: Linear::new(s.pp("query"), channels, channels, true)?,
            key: Linear::new(s.pp("key"), channels, channels, true)?,
            value: Linear::new(s.pp("value"), channels, channels, true)?,
            reduction,
            dense: Linear::new(vb.pp("output").pp("dense"), channels, channels, true)?,
        })
    }

    /// N×L×C → N×heads×L×d.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (n, l, c) = x.dims3()?;
        Ok(x.reshape((n, l, self.heads, c / self.heads))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `tokens` is N×(h·w)×C.
    pub fn forward(&self, tokens: &Tensor, h: usize, w: usize, ctx: &Ctx) -> Result<Tensor> {
        let (n, l, c) = tokens.dims3()?;
        let kv_source = match &self.reduction {
            Some((sr, norm)) => {
                let spatial = tokens.transpose(1, 2)?.reshape((n, c, h, w))?;
                let reduced = sr.forward(&spatial, ctx)?.flatten_from(2)?.transpose(1, 2)?;
                norm.forward(&reduced.contiguous()?, ctx)?
            }
            None => tokens.clone(),
        };
        let q = self.query.forward(tokens, ctx)?;
        let k = self.key.forward(&kv_source, ctx)?;
        let v = self.value.forward(&kv_source, ctx)?;
        let scale = 1.0 / ((c / self.heads) as f64).sqrt();
        // On the CPU the op reads each head's columns where the Linears put them; the composed
        // path splits the heads out and merges them back.
        let out = if ctx.cpu_ops_f32(&q) {
            crate::ops::attention::attention(&q, &k, &v, self.heads, scale)?
        } else {
            let (q, k, v) = (self.split_heads(&q)?, self.split_heads(&k)?, self.split_heads(&v)?);
            let out = crate::ops::attention::attention_generic(&q, &k, &v, scale, ctx)?;
            out.transpose(1, 2)?.reshape((n, l, c))?
        };
        self.dense.forward(&out, ctx)
    }

    /// `spatial` is any N×?×h×w value of the same resolution, for the reduction's reshape.
    pub fn export(&self, e: &mut Exporter, tokens: &str, spatial: &str) -> Result<String> {
        let kv_source = match &self.reduction {
            Some((sr, norm)) => {
                let x = e.to_spatial(tokens, self.channels, spatial)?;
                let reduced = sr.export(e, &x)?;
                let reduced = e.to_tokens(&reduced)?;
                norm.export(e, &reduced)?
            }
            None => tokens.to_string(),
        };
        let d = (self.channels / self.heads) as i64;
        let head_shape = e.ints(&[0, 0, self.heads as i64, d])?;
        let heads = |e: &mut Exporter, x: &str, perm: Vec<i64>| {
            let split = e.op("Reshape", &[x, &head_shape], &[]);
            e.op("Transpose", &[&split], &[("perm", Attr::Ints(perm))])
        };
        let q = self.query.export(e, tokens)?;
        let q = heads(e, &q, vec![0, 2, 1, 3]);
        let k = self.key.export(e, &kv_source)?;
        let k_t = heads(e, &k, vec![0, 2, 3, 1]);
        let v = self.value.export(e, &kv_source)?;
        let v = heads(e, &v, vec![0, 2, 1, 3]);
        let scores = e.op("MatMul", &[&q, &k_t], &[]);
        let scale = e.scalar(1.0 / (d as f32).sqrt())?;
        let scores = e.mul(&scores, &scale);
        let probs = e.op("Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
        let out = e.op("MatMul", &[&probs, &v], &[]);
        let out = e.op("Transpose", &[&out], &[("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
        let merged = e.ints(&[0, 0, self.channels as i64])?;
        let out = e.op("Reshape", &[&out, &merged], &[]);
        self.dense.export(e, &out)
    }
}
