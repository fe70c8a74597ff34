//! Shared by the models tests: ONNX Runtime sessions on exported models, and parameters moved
//! away from their initial values so that eval-mode BatchNorm and LayerNorm are exercised.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use ftu_infer::session::{Runtime, RuntimeOptions};
use ftu_models::{Arch, ArchConfig, Segmenter};
use rand::{Rng, SeedableRng};

pub fn runtime() -> Runtime {
    Runtime::load(RuntimeOptions::default())
        .expect("ONNX Runtime must be installed for these tests (see scripts/test.sh)")
}

/// Which per-architecture test asks: the forward parity test, or the training tests (a gradient
/// step, and every gradient against a float64 reference, the slowest checks per architecture).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Forward,
    Training,
}

/// One encoder of each family and block kind: ResNet's basic (18) and bottleneck (50) blocks,
/// EfficientNet, MiT, ConvNeXt, EfficientNetV2 and Swin at their smallest. The larger sizes of a family
/// run the same code with other widths and depths, and their parameter names and shapes are
/// checked against the pretrained files in `weights.rs`.
pub fn family_representative(encoder: ftu_models::encoders::EncoderKind) -> bool {
    use ftu_models::encoders::EncoderKind;
    matches!(
        encoder,
        EncoderKind::ResNet(18 | 50)
            | EncoderKind::EfficientNet(0)
            | EncoderKind::Mit(0)
            | EncoderKind::ConvNext(0)
            | EncoderKind::EfficientNetV2(0)
            | EncoderKind::Swin(0)
    )
}

/// The architectures a per-architecture test checks: those whose name contains `FTU_ARCH` when
/// it is set (`FTU_ARCH=-` matches every one), else a default set. By default every decoder runs
/// with each family's representative encoder, and the forward parity test also runs every other
/// encoder with U-Net, so that each size's export is compared with ONNX Runtime. A decoder sees
/// an encoder only through its levels' widths and strides, and an encoder's code is the same
/// under every decoder; the whole grid (`FTU_ARCH=-`) takes several times as long. No match
/// is an error, not a vacuous pass.
pub fn under_test(scope: Scope) -> Vec<Arch> {
    use ftu_models::decoders::DecoderKind;
    let filter = std::env::var("FTU_ARCH").ok();
    let archs: Vec<Arch> = Arch::all()
        .into_iter()
        .filter(|arch| match filter.as_deref() {
            Some(f) => arch.name().contains(f),
            None => {
                family_representative(arch.encoder) || (scope == Scope::Forward && arch.decoder == DecoderKind::Unet)
            }
        })
        .collect();
    assert!(!archs.is_empty(), "FTU_ARCH={filter:?} matches no architecture");
    archs
}

/// Small decoder widths keep the tests fast; the encoders are the real ones.
pub fn small_config(arch: Arch) -> ArchConfig {
    use ftu_models::decoders::DecoderKind;
    let channels = match arch.decoder {
        DecoderKind::Unet | DecoderKind::UnetPlusPlus => vec![32, 16, 16, 8, 8],
        DecoderKind::Fpn => vec![32, 16],
        DecoderKind::Segformer | DecoderKind::UperNet => vec![32],
    };
    ArchConfig {
        decoder_channels: Some(channels),
        organ_head: true,
        pixel_size_head: true,
        aspp: arch.decoder == DecoderKind::Fpn,
        ..ArchConfig::default()
    }
}

/// Random norm scales and shifts, biases and running statistics, as after some training.
/// Scales stay below 1 so that deep random networks are not chaotic: with gains above 1 per
/// block, float rounding (which differs between any two runtimes) grows exponentially with depth.
pub fn jitter(model: &Segmenter, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in model.store().named_vars() {
        let (lo, hi) = if name.ends_with("running_var") {
            (0.5, 1.5)
        } else if name.ends_with("running_mean") || name.ends_with("bias") {
            (-0.2, 0.2)
        } else if var.rank() == 1 {
            (0.2, 0.8) // norm scales
        } else {
            continue;
        };
        let values: Vec<f32> = (0..var.elem_count()).map(|_| rng.random_range(lo..hi)).collect();
        let t = Tensor::from_vec(values, var.dims(), &Device::Cpu).unwrap();
        var.set(&t.to_dtype(var.dtype()).unwrap()).unwrap();
    }
}

/// Noise images whose brightness and contrast differ from image to image, as slides' do; without
/// that, global averages (ASPP's pooling branch, the heads) are nearly equal across a batch.
pub fn random_image(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(n * 3 * h * w);
    for _ in 0..n {
        let (offset, scale) = (rng.random_range(-1.0..1.0), rng.random_range(0.5..1.5));
        values.extend((0..3 * h * w).map(|_| offset + scale * rng.random_range(-1.0f32..1.0)));
    }
    Tensor::from_vec(values, (n, 3, h, w), &Device::Cpu).unwrap()
}

/// Runs the model file on `image`; returns every output by name with its shape and values.
pub fn run_onnx(runtime: &Runtime, path: &Path, image: &Tensor) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let mut session = runtime.session(path).unwrap();
    let dims: Vec<usize> = image.dims().to_vec();
    let data = image.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let input = ort::value::Tensor::from_array((dims, data)).unwrap();
    let outputs = session.run(ort::inputs!["image" => input]).unwrap();
    let mut all = HashMap::new();
    for (name, value) in outputs.iter() {
        let (shape, data) = value.try_extract_tensor::<f32>().unwrap();
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        all.insert(name.to_string(), (shape, data.to_vec()));
    }
    all
}

/// max |a − b| between a Candle tensor and ONNX Runtime's output, after checking shapes agree.
pub fn max_diff(what: &str, candle: &Tensor, onnx: &(Vec<usize>, Vec<f32>)) -> f32 {
    assert_eq!(candle.dims(), onnx.0.as_slice(), "{what}: shapes differ");
    let c = candle.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    c.iter().zip(&onnx.1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}
