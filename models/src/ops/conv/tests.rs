use candle_core::{Device, Tensor, Var};

use super::geometry::{Geometry, FORWARD_BAND};
use super::matmul::{matmul, Mat, MatRef};
use super::*;

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn spacing(stride: usize, padding: usize, dilation: usize) -> Spacing {
    Spacing {
        stride,
        padding,
        dilation,
    }
}

fn cases() -> Vec<(usize, usize, usize, Spacing)> {
    // (c_in, c_out, kernel, spacing): the stem, 3×3 and 1×1 convs at strides 1 and 2, a
    // dilated conv (ASPP), a patch embedding (kernel = stride, no padding), MiT's first one.
    vec![
        (3, 8, 7, spacing(2, 3, 1)),
        (4, 6, 3, spacing(1, 1, 1)),
        (4, 6, 3, spacing(2, 1, 1)),
        (5, 7, 1, spacing(1, 0, 1)),
        (5, 7, 1, spacing(2, 0, 1)),
        (4, 4, 3, spacing(1, 2, 2)),
        (3, 4, 4, spacing(4, 0, 1)),
        (3, 5, 7, spacing(4, 3, 1)),
    ]
}

#[test]
fn matmul_of_transposed_views_matches_a_direct_sum() {
    let a: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 2.0).collect();
    let b: Vec<f32> = (0..20).map(|v| (v % 7) as f32 - 3.0).collect();
    // a is 3×4 and b 5×4, both row-major: a · bᵀ is 3×5, added to a matrix of ones.
    let mut out = vec![1f32; 15];
    matmul(
        Mat::rows(&mut out, 3, 5),
        true,
        MatRef::rows(&a, 3, 4),
        MatRef::rows(&b, 5, 4).t(),
        false,
    );
    for r in 0..3 {
        for c in 0..5 {
            let direct: f32 = (0..4).map(|k| a[r * 4 + k] * b[c * 4 + k]).sum();
            assert_eq!(out[r * 5 + c], 1.0 + direct, "({r}, {c})");
        }
    }
}

/// `ours`, computed from `x` and `w`, equals candle's conv2d (the device-generic path, which the
/// GPU runs) in values and in both gradients, within 1e-5 of the largest entry or of `floor`.
fn assert_matches_candle(x: &Var, w: &Var, s: Spacing, groups: usize, ours: &Tensor, floor: f32, what: &str) {
    let reference = x.conv2d(w, s.padding, s.stride, s.dilation, groups).unwrap();
    assert_same(x, w, &reference, ours, floor, what);
}

/// `ours` equals `reference` (both computed from `x` and `w`) in shape, values and the gradients
/// for `x` and `w`, within 1e-5 of the largest entry or of `floor`.
fn assert_same(x: &Var, w: &Var, reference: &Tensor, ours: &Tensor, floor: f32, what: &str) {
    assert_eq!(reference.dims(), ours.dims(), "{what}: shape");
    let d = max_abs(&(reference - ours).unwrap());
    assert!(d <= 1e-5 * max_abs(reference).max(floor), "{what}: values off by {d}");
    // A loss weighing every output differently checks every gradient entry.
    let weights = Tensor::randn(0f32, 1.0, reference.dims(), x.device()).unwrap();
    let g_ref = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let g_new = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("input", x), ("kernel", w)] {
        let (a, b) = (g_ref.get(v).unwrap(), g_new.get(v).unwrap());
        assert_eq!(a.dims(), b.dims(), "{what}: {name} gradient shape");
        let d = max_abs(&(a - b).unwrap());
        assert!(
            d <= 1e-5 * max_abs(a).max(floor),
            "{what}: {name} gradient off by {d} of {}",
            max_abs(a)
        );
    }
}

/// Values and both gradients equal candle's own conv2d (the device-generic path, which the
/// GPU runs) on square inputs of odd and even sides.
#[test]
fn values_and_gradients_match_candles_conv2d() {
    let dev = Device::Cpu;
    for (case, (c_in, c_out, k, s)) in cases().into_iter().enumerate() {
        for size in [16, 17] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c_in, size, size), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
            let fast = conv2d(&x, &w, s).unwrap();
            assert_matches_candle(&x, &w, s, 1, &fast, 1.0, &format!("case {case} size {size}"));
        }
    }
}

/// Inputs large enough to be cut into many bands (forward and kernel gradient) give the same
/// values and gradients as candle's conv2d.
#[test]
fn many_bands_match_candles_conv2d() {
    let dev = Device::Cpu;
    for (c_in, c_out, k, s, side) in [
        (64, 16, 3, spacing(1, 1, 1), 40),
        (48, 24, 3, spacing(2, 1, 1), 41),
        (96, 8, 1, spacing(1, 0, 1), 64),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, c_in, side, side), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
        let g = Geometry::new(x.shape(), w.shape(), s).unwrap();
        assert!(
            g.bands(FORWARD_BAND).len() > 3 * 2,
            "{c_in}→{c_out}: several bands per image"
        );
        let fast = conv2d(&x, &w, s).unwrap();
        assert_matches_candle(&x, &w, s, 1, &fast, 0.0, &format!("{c_in}→{c_out}"));
    }
}

/// The kernel gradient of the deep layers, each thread summing a share of the input channels
/// over the whole batch: several whole images per product (with and without padding, a 1×1
/// kernel among them), and images cut into bands of rows where one image's patches are too
/// many; channel counts that the threads do not divide.
#[test]
fn kernel_gradients_by_channel_shares_match_candles_conv2d() {
    let dev = Device::Cpu;
    for (n, c_in, c_out, k, s, side) in [
        (4, 33, 12, 3, spacing(1, 1, 1), 8),
        (3, 40, 16, 3, spacing(2, 1, 1), 17),
        (4, 64, 24, 1, spacing(1, 0, 1), 16),
        (3, 7, 5, 3, spacing(1, 0, 1), 12),
        (2, 193, 8, 3, spacing(1, 1, 1), 32),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c_in, side, side), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
        let g = Geometry::new(x.shape(), w.shape(), s).unwrap();
        assert!(g.n * g.len() <= 2048, "{c_in}→{c_out}: few output positions");
        let fast = conv2d(&x, &w, s).unwrap();
        assert_matches_candle(&x, &w, s, 1, &fast, 0.0, &format!("{n}×{c_in}→{c_out}, {side}²"));
    }
}

/// On non-square inputs (where candle's own backward fails on strided convs) the gradients
/// predict the change of a loss that is linear in the input and in the kernel exactly.
#[test]
fn gradients_are_exact_directional_derivatives_on_non_square_inputs() {
    let dev = Device::Cpu;
    for (case, (c_in, c_out, k, s)) in cases().into_iter().enumerate() {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c_in, 19, 26), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
        let y = conv2d(&x, &w, s).unwrap();
        let weights = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
        let loss = |x: &Tensor, w: &Tensor| -> f32 {
            let y = x.conv2d(w, s.padding, s.stride, s.dilation, 1).unwrap();
            (&y * &weights).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let base = loss(&x, &w);
        let dx = Tensor::randn(0f32, 1.0, x.dims(), &dev).unwrap();
        let dw = Tensor::randn(0f32, 1.0, w.dims(), &dev).unwrap();
        let along_x = loss(&(x.as_tensor() + &dx).unwrap(), &w) - base;
        let along_w = loss(&x, &(w.as_tensor() + &dw).unwrap()) - base;
        let predicted = |v: &Var, d: &Tensor| -> f32 {
            (grads.get(v).unwrap() * d)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let (px, pw) = (predicted(&x, &dx), predicted(&w, &dw));
        assert!(
            (along_x - px).abs() <= 1e-3 * along_x.abs().max(1.0),
            "case {case}: input {along_x} vs {px}"
        );
        assert!(
            (along_w - pw).abs() <= 1e-3 * along_w.abs().max(1.0),
            "case {case}: kernel {along_w} vs {pw}"
        );
    }
}

/// The depthwise op equals candle's grouped conv2d in values and both gradients, at the
/// kernels and strides EfficientNet, MiT and ConvNeXt use, on odd and even sides (square: candle's own
/// backward fails on non-square strided inputs).
#[test]
fn depthwise_matches_candles_grouped_conv2d() {
    let dev = Device::Cpu;
    let cases = [
        (3, spacing(1, 1, 1)),
        (3, spacing(2, 1, 1)),
        (5, spacing(1, 2, 1)),
        (5, spacing(2, 2, 1)),
        (7, spacing(1, 3, 1)),
    ];
    for ((k, s), side) in cases
        .into_iter()
        .flat_map(|case| [2, 3, 4, 11, 12].map(|side| (case, side)))
    {
        let c = 4;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, side, side), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c, 1, k, k), &dev).unwrap()).unwrap();
        let ours = depthwise_conv2d(&x, &w, s).unwrap();
        assert_matches_candle(&x, &w, s, c, &ours, 1.0, &format!("k {k} {s:?} side {side}"));
        let generic = generic::depthwise_conv2d(&x, &w, s).unwrap();
        assert_matches_candle(
            &x,
            &w,
            s,
            c,
            &generic,
            1.0,
            &format!("generic: k {k} {s:?} side {side}"),
        );
    }
    // Non-square, dilated, and rows wide enough for every chunk of outputs the op sums at once
    // (candle's own backward fails on non-square strided inputs, so the generic path is held to
    // ftu's CPU op there).
    for (k, s, (rows, cols)) in [
        (3, spacing(2, 1, 1), (13, 20)),
        (5, spacing(2, 2, 1), (13, 20)),
        (3, spacing(1, 2, 2), (13, 20)),
        (3, spacing(1, 1, 1), (5, 128)),
        (5, spacing(2, 2, 1), (6, 64)),
        (7, spacing(1, 3, 1), (9, 70)),
        (3, spacing(1, 3, 1), (13, 20)),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 6, rows, cols), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (6, 1, k, k), &dev).unwrap()).unwrap();
        let (fast, generic) = (
            depthwise_conv2d(&x, &w, s).unwrap(),
            generic::depthwise_conv2d(&x, &w, s).unwrap(),
        );
        assert_same(&x, &w, &fast, &generic, 1.0, &format!("k {k} {s:?} {rows}×{cols}"));
    }
}

/// The network's input image gets no gradient (it is the costliest one), a variable does.
#[test]
fn a_plain_input_gets_no_gradient() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &dev).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev).unwrap()).unwrap();
    let grads = conv2d(&x, &w, spacing(1, 1, 1))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(&w).is_some());
}

#[test]
fn a_kernel_larger_than_the_padded_input_is_an_error() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let w = Tensor::zeros((1, 2, 7, 7), candle_core::DType::F32, &dev).unwrap();
    let err = conv2d(&x, &w, spacing(1, 1, 1)).unwrap_err().to_string();
    assert!(err.contains("smaller than kernel"), "{err}");
}

/// The device-generic convolution (candle's forward, gradients made of forward convolutions:
/// what CUDA runs) equals ftu's CPU op in values and both gradients, on square and non-square
/// inputs of odd and even sides, where strides skip the last rows and where the padding
/// reaches past the kernel.
#[test]
fn the_generic_path_matches_the_cpu_op_in_values_and_gradients() {
    let dev = Device::Cpu;
    let mut all = cases();
    all.push((3, 4, 1, spacing(1, 1, 1)));
    all.push((3, 4, 3, spacing(3, 2, 2)));
    for (case, (c_in, c_out, k, s)) in all.into_iter().enumerate() {
        for (h, w) in [(16, 16), (17, 17), (19, 26), (26, 19)] {
            let what = format!("case {case} ({c_in}→{c_out}, k {k}, {s:?}) at {h}×{w}");
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c_in, h, w), &dev).unwrap()).unwrap();
            let kernel = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &dev).unwrap()).unwrap();
            let fast = conv2d(&x, &kernel, s).unwrap();
            let generic = generic::conv2d(&x, &kernel, s).unwrap();
            assert_same(&x, &kernel, &fast, &generic, 1.0, &what);
        }
    }
}

/// The generic path takes any dtype (f64 here, as the reference of models/tests/training.rs),
/// and the network's input image gets no gradient there either.
#[test]
fn the_generic_path_runs_in_f64_and_skips_a_plain_inputs_gradient() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f64, 1.0, (1, 3, 9, 12), &dev).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f64, 0.3, (4, 3, 3, 3), &dev).unwrap()).unwrap();
    let s = spacing(2, 1, 1);
    let y = generic::conv2d(&x, &w, s).unwrap();
    assert_eq!(y.dtype(), candle_core::DType::F64);
    let reference = x.conv2d(&w, 1, 2, 1, 1).unwrap();
    assert_eq!(
        max_abs(&(&y - &reference).unwrap().to_dtype(candle_core::DType::F32).unwrap()),
        0.0
    );
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    assert_eq!(grads.get(&w).unwrap().dims(), &[4, 3, 3, 3]);
}
