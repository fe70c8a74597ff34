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
    let side = Tensor::full(value, (n, c, h, pad), x.device())?;
    let x = Tensor::cat(&[&side, x, &side], 3)?;
    let band = Tensor::full(value, (n, c, pad, w + 2 * pad), x.device())?;
    Ok(Tensor::cat(&[&band, &x, &band], 2)?)
}

impl Layer for MaxPool2d {
    fn forward(&self, x: &Tensor, _ctx: &Ctx) -> Result<Tensor> {
        let x = if self.padding > 0 {
            pad_spatial(x, self.padding, f32::NEG_INFINITY)?
        } else {
            x.clone()
        };
        Ok(x.max_pool2d_with_stride(self.kernel, self.stride)?)
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
}
