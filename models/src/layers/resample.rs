//! Resampling: upsampling by an integer factor, nearest (ONNX Resize, asymmetric + floor, as
//! PyTorch's `nearest`) or bilinear (half-pixel, as `align_corners=False`, or corner-aligned, as
//! `nn.UpsamplingBilinear2d`), and bilinear resizing to another value's size. All are built from
//! ops whose gradients Candle gets right: nearest as a broadcast, bilinear as two small
//! interpolation matrices (Candle has no backward for its bilinear op).

use candle_core::Tensor;
use ftu_onnx::Attr;

use super::Layer;
use crate::{Ctx, Exporter, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    /// Half-pixel centres: PyTorch's `interpolate(mode="bilinear", align_corners=False)`.
    Bilinear,
    /// Corner pixels map to corner pixels: `align_corners=True`, smp's segmentation-head upsampling.
    BilinearAlignCorners,
}

pub struct Upsample {
    pub scale: usize,
    pub mode: Interpolation,
}

/// The m×n matrix that maps n samples to m by linear interpolation, half-pixel or corner-aligned,
/// with PyTorch's indexing (the source clamped at 0, the right neighbour at n − 1; no antialiasing
/// when m < n).
fn linear_matrix(n: usize, m: usize, align_corners: bool) -> Vec<f32> {
    let mut a = vec![0f32; m * n];
    for i in 0..m {
        let src = if align_corners {
            if m > 1 {
                i as f64 * (n - 1) as f64 / (m - 1) as f64
            } else {
                0.0
            }
        } else {
            ((i as f64 + 0.5) * n as f64 / m as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        let frac = (src - i0 as f64) as f32;
        a[i * n + i0] += 1.0 - frac;
        a[i * n + i1] += frac;
    }
    a
}

/// `x` (N×C×H×W) bilinearly resized to h×w: A_h · x · A_wᵀ.
fn resize_linear(x: &Tensor, h: usize, w: usize, align_corners: bool) -> Result<Tensor> {
    let (_, _, h0, w0) = x.dims4()?;
    if (h0, w0) == (h, w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let a_w = Tensor::from_vec(linear_matrix(w0, w, align_corners), (w, w0), dev)?.to_dtype(x.dtype())?;
    let a_h = Tensor::from_vec(linear_matrix(h0, h, align_corners), (h, h0), dev)?.to_dtype(x.dtype())?;
    let rows = x.contiguous()?.broadcast_matmul(&a_w.t()?)?;
    Ok(a_h.broadcast_matmul(&rows)?)
}

/// Bilinear resizing (half-pixel, `align_corners=False`) to another value's height and width, as
/// `F.interpolate(x, size=like.shape[2:], mode="bilinear")`.
pub struct ResizeLike;

impl ResizeLike {
    pub fn forward(&self, x: &Tensor, like: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = like.dims4()?;
        resize_linear(x, h, w, false)
    }

    /// The ONNX Resize to `like`'s H×W; the sizes are read from the graph, so any input size runs.
    pub fn export(&self, e: &mut Exporter, x: &str, like: &str) -> Result<String> {
        let sizes = e.shape_with_spatial_of(x, like)?;
        Ok(e.op(
            "Resize",
            &[x, "", "", &sizes],
            &[
                ("mode", Attr::Str("linear".into())),
                ("coordinate_transformation_mode", Attr::Str("half_pixel".into())),
            ],
        ))
    }
}

impl Upsample {
    /// The upsampled `x` with `skip` appended along the channels, as the U-Net decoder joins
    /// levels; on the CPU one op for nearest upsampling (no upsampled copy is materialised).
    pub fn forward_cat(&self, x: &Tensor, skip: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        if self.mode == Interpolation::Nearest && ctx.cpu_ops(x) {
            return crate::ops::upsample::upsample_nearest(x, self.scale, skip);
        }
        let up = self.composed(x, ctx)?;
        Ok(match skip {
            Some(skip) => Tensor::cat(&[&up, skip], 1)?,
            None => up,
        })
    }

    /// From candle ops: the path on other devices and for bilinear, and the reference the CPU op
    /// is tested against.
    fn composed(&self, x: &Tensor, _ctx: &Ctx) -> Result<Tensor> {
        if self.scale == 1 {
            return Ok(x.clone());
        }
        let (_, _, h, w) = x.dims4()?;
        let s = self.scale;
        Ok(match self.mode {
            // Not `upsample_nearest2d`: its backward in candle 0.9.2 overwrites the gradient
            // other consumers of `x` have already added (`*sum_grad = conv_sum`).
            Interpolation::Nearest => {
                let n_c = &x.dims()[..2];
                x.reshape((n_c[0], n_c[1], h, 1, w, 1))?
                    .broadcast_as((n_c[0], n_c[1], h, s, w, s))?
                    .reshape((n_c[0], n_c[1], h * s, w * s))?
            }
            Interpolation::Bilinear | Interpolation::BilinearAlignCorners => {
                let align = self.mode == Interpolation::BilinearAlignCorners;
                resize_linear(x, h * s, w * s, align)?
            }
        })
    }
}

impl Layer for Upsample {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.scale == 1 {
            return Ok(x.clone());
        }
        self.forward_cat(x, None, ctx)
    }

    fn export(&self, e: &mut Exporter, x: &str) -> Result<String> {
        if self.scale == 1 {
            return Ok(x.to_string());
        }
        let s = self.scale as f32;
        let scales = e.floats(&[4], vec![1.0, 1.0, s, s])?;
        let attrs: Vec<(&str, Attr)> = match self.mode {
            Interpolation::Nearest => vec![
                ("mode", Attr::Str("nearest".into())),
                ("coordinate_transformation_mode", Attr::Str("asymmetric".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
            Interpolation::Bilinear => vec![
                ("mode", Attr::Str("linear".into())),
                ("coordinate_transformation_mode", Attr::Str("half_pixel".into())),
            ],
            Interpolation::BilinearAlignCorners => vec![
                ("mode", Attr::Str("linear".into())),
                ("coordinate_transformation_mode", Attr::Str("align_corners".into())),
            ],
        };
        Ok(e.op("Resize", &[x, "", &scales], &attrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bilinear_doubling_matches_pytorch_align_corners_false() {
        // torch.nn.functional.interpolate([[0, 1, 2]], scale_factor=2, mode="linear")
        let x = Tensor::new(&[[[[0f32, 1.0, 2.0]]]], &Device::Cpu).unwrap();
        let up = Upsample {
            scale: 2,
            mode: Interpolation::Bilinear,
        };
        let y = up.forward(&x, &Ctx::eval()).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = [0.0, 0.25, 0.75, 1.25, 1.75, 2.0, 0.0, 0.25, 0.75, 1.25, 1.75, 2.0];
        assert_eq!(y.dims(), &[1, 1, 2, 6]);
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }

    /// A tensor used by the upsample and by another op gets both gradients.
    #[test]
    fn nearest_gradient_adds_to_other_uses() {
        let x = candle_core::Var::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap();
        let up = Upsample {
            scale: 2,
            mode: Interpolation::Nearest,
        };
        let y = up.forward(x.as_tensor(), &Ctx::eval()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 4]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..4],
            [1.0, 1.0, 2.0, 2.0]
        );
        for order in [true, false] {
            let (a, b) = (y.sum_all().unwrap(), (x.as_tensor() * 10.0).unwrap().sum_all().unwrap());
            let total = if order { (a + b).unwrap() } else { (b + a).unwrap() };
            let grads = total.backward().unwrap();
            let g = grads
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(g, vec![14.0; 4], "4 copies each plus 10");
        }
    }

    /// The CPU op equals the composed ops (the device-generic path) in values and in the
    /// gradients of both inputs, with and without a skip tensor.
    #[test]
    fn the_cpu_op_matches_upsample_then_concat() {
        let dev = Device::Cpu;
        for scale in [2, 4] {
            for with_skip in [false, true] {
                let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &dev).unwrap()).unwrap();
                let skip = candle_core::Var::from_tensor(
                    &Tensor::randn(0f32, 1.0, (2, 2, 5 * scale, 4 * scale), &dev).unwrap(),
                )
                .unwrap();
                let up = Upsample {
                    scale,
                    mode: Interpolation::Nearest,
                };
                let skip_arg = with_skip.then_some(skip.as_tensor());
                let ours = up.forward_cat(&x, skip_arg, &Ctx::train(0)).unwrap();
                let composed = up.composed(&x, &Ctx::train(0)).unwrap();
                let reference = match skip_arg {
                    Some(s) => Tensor::cat(&[&composed, s], 1).unwrap(),
                    None => composed,
                };
                let what = format!("scale {scale}, skip {with_skip}");
                assert_eq!(ours.dims(), reference.dims(), "{what}");
                let diff = (&ours - &reference).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{what}: values");
                let weights = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
                let g_ours = (&ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g_ref = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let mut vars = vec![("input", &x)];
                if with_skip {
                    vars.push(("skip", &skip));
                }
                for (name, v) in vars {
                    let (a, b) = (g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
                    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "{what}: {name} gradient");
                }
            }
        }
    }

    #[test]
    fn a_skip_of_the_wrong_size_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let skip = Tensor::zeros((1, 2, 7, 8), candle_core::DType::F32, &dev).unwrap();
        let up = Upsample {
            scale: 2,
            mode: Interpolation::Nearest,
        };
        let err = up.forward_cat(&x, Some(&skip), &Ctx::eval()).unwrap_err().to_string();
        assert!(err.contains("skip tensor"), "{err}");
    }

    #[test]
    fn every_row_of_the_interpolation_matrix_sums_to_one() {
        for (n, m) in [(1, 2), (3, 12), (7, 56), (6, 3), (2, 5), (5, 1)] {
            for align in [false, true] {
                let a = linear_matrix(n, m, align);
                for row in a.chunks(n) {
                    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{n} → {m}, {align}");
                }
            }
        }
    }

    fn line(values: &[f32]) -> Tensor {
        Tensor::from_vec(values.to_vec(), (1, 1, 1, values.len()), &Device::Cpu).unwrap()
    }

    fn assert_values(y: &Tensor, expected: &[f32]) {
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v.len(), expected.len(), "{v:?}");
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{v:?} against {expected:?}");
        }
    }

    /// Values from PyTorch 2.15: `F.interpolate(x, size=…, mode="linear", align_corners=…)`.
    #[test]
    fn resizing_matches_pytorch_up_down_and_corner_aligned() {
        let x = line(&[0.0, 1.0, 2.0]);
        let up = Upsample {
            scale: 2,
            mode: Interpolation::BilinearAlignCorners,
        };
        let line_up = [0.0, 0.4, 0.8, 1.2, 1.6, 2.0];
        assert_values(&up.forward(&x, &Ctx::eval()).unwrap(), &[line_up, line_up].concat());
        let like = Tensor::zeros((1, 1, 1, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_values(&ResizeLike.forward(&x, &like).unwrap(), &[0.0, 0.4, 1.0, 1.6, 2.0]);
        let like = Tensor::zeros((1, 1, 1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let six = line(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_values(&ResizeLike.forward(&six, &like).unwrap(), &[0.5, 2.5, 4.5]);
    }
}
