//! Pooling: max (with padding, as ResNet's stem), average, and global average (the 1×1 case of
//! adaptive average pooling, which is what heads, SE and ASPP use).

use candle_core::{Tensor, D};
use ftu_onnx::Attr;

use super::Layer;
use crate::{Ctx, Exporter, Result};

pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// Pads H and W with `value` on every side.
fn pad_spatial(x: &Tensor, pad: usize, value: f32) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let side = Tensor::full(value, (n, c, h, pad), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&side, x, &side], 3)?;
    let band = Tensor::full(value, (n, c, pad, w + 2 * pad), x.device())?.to_dtype(x.dtype())?;
    Ok(Tensor::cat(&[&band, &x, &band], 2)?)
}

/// Every `stride`-th row and column, starting at 0, keeping `rows`×`cols` of them.
fn subsample(x: &Tensor, stride: usize, rows: usize, cols: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.narrow(2, 0, rows)?.narrow(3, 0, cols)?);
    }
    let (n, c, h, w) = x.dims4()?;
    // Pad to whole strides (the padding is never kept), then keep offset 0 of each stride.
    let x = x.pad_with_zeros(2, 0, (rows * stride).saturating_sub(h))?;
    let x = x.pad_with_zeros(3, 0, (cols * stride).saturating_sub(w))?;
    let x = x.narrow(2, 0, rows * stride)?.narrow(3, 0, cols * stride)?;
    Ok(x.reshape((n, c, rows, stride, cols, stride))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, rows, cols))?)
}

impl Layer for MaxPool2d {
    /// Unlike Candle's own max pool, both paths have a backward pass when the kernel and stride
    /// differ (ResNet's 3×3, stride 2 stem).
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if ctx.cpu_ops(x) {
            return crate::ops::pool::max_pool2d(x, self.kernel, self.stride, self.padding);
        }
        self.max_pool(x)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        Ok(e.op(
            "MaxPool",
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![self.kernel as i64; 2])),
                ("strides", Attr::Ints(vec![self.stride as i64; 2])),
                ("pads", Attr::Ints(vec![self.padding as i64; 4])),
            ],
        ))
    }
}

impl MaxPool2d {
    /// The maximum of the k×k shifted views, then every stride-th, from candle ops: the path on
    /// other devices, and the reference the CPU op is tested against.
    fn max_pool(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.padding > 0 {
            pad_spatial(x, self.padding, f32::NEG_INFINITY)?
        } else {
            x.clone()
        };
        let (_, _, h, w) = x.dims4()?;
        let k = self.kernel;
        if h < k || w < k {
            return Err(crate::ModelError::Input {
                what: format!("max pool input of {h}×{w} (padded)"),
                expected: format!("at least the {k}×{k} kernel"),
            });
        }
        let (full_h, full_w) = (h - k + 1, w - k + 1);
        let mut max: Option<Tensor> = None;
        for dy in 0..k {
            for dx in 0..k {
                let view = x.narrow(2, dy, full_h)?.narrow(3, dx, full_w)?;
                max = Some(match max {
                    Some(m) => m.maximum(&view)?,
                    None => view,
                });
            }
        }
        let max = max.expect("kernel ≥ 1");
        let s = self.stride;
        subsample(&max, s, (h - k) / s + 1, (w - k) / s + 1)
    }
}

/// Average pooling without padding.
pub struct AvgPool2d {
    pub kernel: usize,
    pub stride: usize,
}

impl Layer for AvgPool2d {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<Tensor> {
        Ok(x.avg_pool2d_with_stride(self.kernel, self.stride)?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        Ok(e.op(
            "AveragePool",
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![self.kernel as i64; 2])),
                ("strides", Attr::Ints(vec![self.stride as i64; 2])),
            ],
        ))
    }
}

/// N×C×H×W → N×C×1×1.
pub struct GlobalAvgPool;

impl Layer for GlobalAvgPool {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<Tensor> {
        Ok(x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        Ok(e.op("GlobalAveragePool", &[x], &[]))
    }
}

/// PyTorch's `AdaptiveAvgPool2d(bins)`: N×C×H×W → N×C×bins×bins, bin i of a side of n covering
/// [⌊i·n/bins⌋, ⌈(i+1)·n/bins⌉), so bins overlap where n is not a multiple and repeat where
/// n < bins. Both sides are an averaging matrix product, P_h · x · P_wᵀ; in ONNX the matrices
/// are built from the input's shape at run time, so any input size runs.
pub struct AdaptiveAvgPool2d {
    pub bins: usize,
}

/// The bins×n averaging matrix of one side.
fn pool_matrix(n: usize, bins: usize) -> Vec<f32> {
    let mut p = vec![0f32; bins * n];
    for i in 0..bins {
        let (start, end) = (i * n / bins, ((i + 1) * n).div_ceil(bins));
        for j in start..end {
            p[i * n + j] = 1.0 / (end - start) as f32;
        }
    }
    p
}

impl AdaptiveAvgPool2d {
    /// The averaging matrix of dimension `axis` of `x` in the graph: bins × n, float.
    fn export_matrix(&self, e: &mut Exporter, x: &str, axis: i64) -> Result<String> {
        let shape = e.op("Shape", &[x], &[]);
        let index = e.int_scalar(axis)?;
        let n = e.op("Gather", &[&shape, &index], &[("axis", Attr::Int(0))]);
        let b = self.bins as i64;
        let bins = e.int_scalar(b)?;
        let rows = e.graph().fresh("bins");
        let rows = e.graph().initializer_i64(&rows, &[b, 1], &(0..b).collect::<Vec<_>>())?;
        let start = e.mul(&rows, &n);
        let start = e.op("Div", &[&start, &bins], &[]);
        let one = e.int_scalar(1)?;
        let next = e.add(&rows, &one);
        let end = e.mul(&next, &n);
        let round_up = e.int_scalar(b - 1)?;
        let end = e.add(&end, &round_up);
        let end = e.op("Div", &[&end, &bins], &[]);
        let zero = e.int_scalar(0)?;
        let j = e.op("Range", &[&zero, &n, &one], &[]);
        let after_start = e.op("GreaterOrEqual", &[&j, &start], &[]);
        let before_end = e.op("Less", &[&j, &end], &[]);
        let inside = e.op("And", &[&after_start, &before_end], &[]);
        let float = [("to", Attr::Int(1))];
        let inside = e.op("Cast", &[&inside], &float);
        let count = e.op("Sub", &[&end, &start], &[]);
        let count = e.op("Cast", &[&count], &float);
        Ok(e.op("Div", &[&inside, &count], &[]))
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let dev = x.device();
        let p_h = Tensor::from_vec(pool_matrix(h, self.bins), (self.bins, h), dev)?.to_dtype(x.dtype())?;
        let p_w = Tensor::from_vec(pool_matrix(w, self.bins), (self.bins, w), dev)?.to_dtype(x.dtype())?;
        let rows = x.contiguous()?.broadcast_matmul(&p_w.t()?)?;
        Ok(p_h.broadcast_matmul(&rows)?)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        if self.bins == 1 {
            return GlobalAvgPool.export(e, x);
        }
        let p_h = self.export_matrix(e, x, 2)?;
        let p_w = self.export_matrix(e, x, 3)?;
        let p_w_t = e.op("Transpose", &[&p_w], &[("perm", Attr::Ints(vec![1, 0]))]);
        let rows = e.op("MatMul", &[x, &p_w_t], &[]);
        Ok(e.op("MatMul", &[&p_h, &rows], &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padded_max_pool_ignores_the_padding_even_for_negative_inputs() {
        let x = Tensor::new(&[[[[-1f32, -2.0], [-3.0, -4.0]]]], &Device::Cpu).unwrap();
        let pool = MaxPool2d {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let y = pool.forward(&x, &Ctx::eval()).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-1.0]);
    }

    /// The CPU op equals the composed ops (the device-generic path) in values and gradients,
    /// padded or not, on odd and even sides.
    #[test]
    fn the_cpu_op_matches_the_composed_pool() {
        for (h, w, kernel, stride, padding) in [(9, 7, 3, 2, 1), (8, 8, 3, 2, 1), (9, 7, 2, 2, 0), (6, 5, 3, 1, 1)] {
            // Distinct values, so that both paths pick the same maximum.
            let values: Vec<f32> = (0..2 * 3 * h * w).map(|i| ((i * 7919) % 1009) as f32 - 500.0).collect();
            let x =
                candle_core::Var::from_tensor(&Tensor::from_vec(values, (2, 3, h, w), &Device::Cpu).unwrap()).unwrap();
            let pool = MaxPool2d {
                kernel,
                stride,
                padding,
            };
            let ours = pool.forward(x.as_tensor(), &Ctx::train(0)).unwrap();
            let reference = pool.max_pool(x.as_tensor()).unwrap();
            let what = format!("{h}×{w} k {kernel} s {stride} p {padding}");
            assert_eq!(ours.dims(), reference.dims(), "{what}");
            let diff = (&ours - &reference).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{what}: values");
            let weights = Tensor::randn(0f32, 1.0, ours.dims(), &Device::Cpu).unwrap();
            let g_ours = (&ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (g_ours.get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap());
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "{what}: gradients");
        }
    }

    #[test]
    fn max_pool_matches_candles_own_and_trains() {
        let values: Vec<f32> = (0..2 * 3 * 9 * 7).map(|i| ((i * 37) % 101) as f32).collect();
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(values, (2, 3, 9, 7), &Device::Cpu).unwrap()).unwrap();
        for (kernel, stride) in [(3, 2), (2, 2), (3, 1), (3, 3)] {
            let pool = MaxPool2d {
                kernel,
                stride,
                padding: 0,
            };
            let ours = pool.forward(x.as_tensor(), &Ctx::eval()).unwrap();
            let candle = x.as_tensor().max_pool2d_with_stride(kernel, stride).unwrap();
            assert_eq!(ours.dims(), candle.dims(), "k {kernel} s {stride}");
            let diff = (ours.clone() - candle).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "k {kernel} s {stride}");
            let grads = ours.sum_all().unwrap().backward().unwrap();
            let g = grads
                .get(x.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(
                g as usize,
                ours.elem_count(),
                "each output passes its gradient to one input"
            );
        }
    }

    /// Values from PyTorch 2.15: `F.adaptive_avg_pool1d(torch.arange(n), bins)`, on each side.
    #[test]
    fn adaptive_pooling_matches_pytorch_where_bins_overlap_and_repeat() {
        let x = Tensor::arange(0f32, 5.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 5))
            .unwrap();
        let x = x.broadcast_as((1, 1, 4, 5)).unwrap().contiguous().unwrap();
        let y = AdaptiveAvgPool2d { bins: 3 }.forward(&x, &Ctx::eval()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 3]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..3], [0.5, 2.0, 3.5]);
        let y = AdaptiveAvgPool2d { bins: 6 }
            .forward(&x.t().unwrap(), &Ctx::eval())
            .unwrap();
        let column: Vec<f32> = y
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .step_by(6)
            .collect();
        assert_eq!(column, [0.0, 0.5, 1.5, 2.5, 3.5, 4.0]);
    }
}
