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

/// The architectures the per-architecture tests check: those whose name contains `FTU_ARCH` when
/// it is set (`FTU_ARCH=-` matches every one), else a default set. It has every encoder with
/// U-Net, and with FPN and SegFormer every one but ConvNeXt-base and -large and EfficientNetV2,
/// and U-Net++ with one encoder of each kind of first level: ResNet-18 and EfficientNet-B0
/// (stride 2, smp's layout) and MiT-b0 (stride 4). ConvNeXt-base and -large run the tiny and small
/// ConvNeXt's code with wider and deeper stages (88 M and 198 M parameters), EfficientNetV2's
/// blocks are the same with every decoder, and U-Net++ runs the same nodes with every encoder;
/// with every decoder they would add about ten minutes each to the tests on two cores. No match
/// is an error, not a vacuous pass.
pub fn under_test() -> Vec<Arch> {
    use ftu_models::decoders::DecoderKind;
    use ftu_models::encoders::EncoderKind;
    let filter = std::env::var("FTU_ARCH").ok();
    let archs: Vec<Arch> = Arch::all()
        .into_iter()
        .filter(|arch| match filter.as_deref() {
            Some(f) => arch.name().contains(f),
            None => match (arch.decoder, arch.encoder) {
                (DecoderKind::Fpn | DecoderKind::Segformer, EncoderKind::ConvNext(2 | 3)) => false,
                (d, EncoderKind::EfficientNetV2(_)) => d == DecoderKind::Unet,
                (DecoderKind::UnetPlusPlus, e) => {
                    matches!(
                        e,
                        EncoderKind::ResNet(18) | EncoderKind::EfficientNet(0) | EncoderKind::Mit(0)
                    )
                }
                _ => true,
            },
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
        DecoderKind::Segformer => vec![32],
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
