//! Each layer type alone, Candle against ONNX Runtime, including the shapes that once went wrong
//! (Candle's tiled conv2d when channels = height = width).

mod common;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use common::*;
use ftu_models::layers::*;
use ftu_models::{Ctx, Exporter, Store};
use ftu_onnx::{Dim, ModelMeta};

/// max |Candle − ORT| of one layer on an N×C×H×W input.
fn parity(build: impl Fn(VarBuilder) -> Box<dyn Layer>, dims: (usize, usize, usize, usize)) -> f32 {
    let (n, c, h, w) = dims;
    let store = Store::new(3);
    let layer = build(store.builder());
    jitter_store(&store);
    let x = random_tensor(&[n, c, h, w], 5);
    let y = layer.forward(&x, &Ctx::eval()).unwrap();
    let mut e = Exporter::new("layer");
    let dims_in = [Dim::named("n"), Dim::Fixed(c as i64), Dim::named("h"), Dim::named("w")];
    let input = e.graph().input("image", &dims_in);
    let out = layer.export(&mut e, &input).unwrap();
    e.graph().output(&out, "out", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.onnx");
    ftu_onnx::write(&e.into_graph().finish(&ModelMeta::default()), &path).unwrap();
    let theirs = run_onnx(&runtime(), &path, &x);
    max_diff("layer", &y, &theirs["out"])
}

fn random_tensor(dims: &[usize], seed: u64) -> Tensor {
    let count: usize = dims.iter().product();
    random_image(1, 1, count.div_ceil(3), seed)
        .flatten_all()
        .unwrap()
        .narrow(0, 0, count)
        .unwrap()
        .reshape(dims)
        .unwrap()
}

fn jitter_store(store: &Store) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for (name, var) in store.named_vars() {
        if var.rank() == 1 {
            let lo = if name.ends_with("running_var") || name.ends_with("weight") {
                0.5
            } else {
                -0.5
            };
            let v: Vec<f32> = (0..var.elem_count()).map(|_| rng.random_range(lo..lo + 1.0)).collect();
            var.set(&Tensor::new(v, &candle_core::Device::Cpu).unwrap()).unwrap();
        }
    }
}

const TOLERANCE: f32 = 1e-5;

#[test]
fn convolutions() {
    let cases: Vec<(&str, usize, usize, ConvCfg, (usize, usize, usize, usize))> = vec![
        ("3×3", 8, 3, ConvCfg::same(3).bias(true), (2, 8, 12, 10)),
        ("3×3 where C = H = W", 8, 3, ConvCfg::same(3), (2, 8, 8, 8)),
        (
            "k=2 s=2 p=0 where C = H = W",
            16,
            2,
            ConvCfg::same(1).stride(2).padding(0),
            (2, 16, 16, 16),
        ),
        ("7×7 stride 2", 4, 7, ConvCfg::same(7).stride(2), (2, 3, 32, 32)),
        ("1×1 stride 2", 8, 1, ConvCfg::same(1).stride(2), (2, 8, 9, 9)),
        (
            "dilation 2",
            8,
            3,
            ConvCfg::same(3).dilation(2).padding(2),
            (2, 8, 10, 10),
        ),
        (
            "depthwise 5×5 stride 2",
            8,
            5,
            ConvCfg::same(5).stride(2).groups(8),
            (2, 8, 16, 16),
        ),
        ("grouped", 8, 3, ConvCfg::same(3).groups(2).bias(true), (1, 4, 6, 6)),
    ];
    for (what, c_out, k, cfg, dims) in cases {
        let diff = parity(|vb| Box::new(Conv2d::new(vb, dims.1, c_out, k, cfg).unwrap()), dims);
        assert!(diff < TOLERANCE, "{what}: {diff}");
    }
}

#[test]
fn norms_activations_pools_and_resampling() {
    let d = (2, 6, 8, 12);
    let cases: Vec<(&str, Box<dyn Fn(VarBuilder) -> Box<dyn Layer>>)> = vec![
        ("batch norm", Box::new(|vb| Box::new(BatchNorm2d::new(vb, 6).unwrap()))),
        (
            "layer norm (over W)",
            Box::new(|vb| Box::new(LayerNorm::new(vb, 12, 1e-5).unwrap())),
        ),
        (
            "linear (over W)",
            Box::new(|vb| Box::new(Linear::new(vb, 12, 5, true).unwrap())),
        ),
        ("relu", Box::new(|_| Box::new(Activation::Relu))),
        ("silu", Box::new(|_| Box::new(Activation::Silu))),
        ("gelu", Box::new(|_| Box::new(Activation::Gelu))),
        ("sigmoid", Box::new(|_| Box::new(Activation::Sigmoid))),
        (
            "max pool",
            Box::new(|_| {
                Box::new(MaxPool2d {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                })
            }),
        ),
        ("avg pool", Box::new(|_| Box::new(AvgPool2d { kernel: 2, stride: 2 }))),
        ("global avg pool", Box::new(|_| Box::new(GlobalAvgPool))),
        (
            "nearest ×2",
            Box::new(|_| {
                Box::new(Upsample {
                    scale: 2,
                    mode: Interpolation::Nearest,
                })
            }),
        ),
        (
            "bilinear ×4",
            Box::new(|_| {
                Box::new(Upsample {
                    scale: 4,
                    mode: Interpolation::Bilinear,
                })
            }),
        ),
        (
            "squeeze-excite",
            Box::new(|vb| Box::new(SqueezeExcite::new(vb, 6, 2, Activation::Silu).unwrap())),
        ),
        ("dropout", Box::new(|_| Box::new(Dropout { p: 0.5 }))),
        ("drop path", Box::new(|_| Box::new(DropPath { p: 0.5 }))),
    ];
    for (what, build) in cases {
        let diff = parity(build, d);
        assert!(diff < TOLERANCE, "{what}: {diff}");
    }
}
