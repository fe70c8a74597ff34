//! ftu's networks against the Python libraries they follow, on the same weights: every tensor set
//! by one formula from the library's own name for it, the outputs stored in `fixtures/` by
//! `fixtures/make_pytorch_fixtures.py` (so these tests need no Python).
//!
//! - `unetpp-resnet34` and `upernet-resnet34` against segmentation_models_pytorch's
//!   `UnetPlusPlus("resnet34")` and `UPerNet("resnet34")`: the same names and shapes (ftu's encoder
//!   keys are smp's without `encoder.`, the decoder's smp's own), BatchNorm's running statistics
//!   included, and the same eval logits from Candle and from the exported model through ONNX
//!   Runtime.
//! - ConvNeXt-T's, EfficientNetV2-S's and Swin-T's encoders against timm's `convnext_tiny`,
//!   `tf_efficientnetv2_s` and `swin_tiny_patch4_window7_224` with `features_only`: a `model.safetensors` with timm's names
//!   (classifier included) loads with `ignore_classifier`, and the encoder's levels, from Candle
//!   and from the encoder-only export through ONNX Runtime, are timm's feature maps.

mod common;

use std::collections::BTreeMap;
use std::f64::consts::PI;

use candle_core::{Device, Tensor};
use common::*;
use ftu_models::weights::{self, Scope};
use ftu_models::{Arch, ArchConfig, Ctx, ExportMeta, Segmenter};

const GOLDEN: f64 = 0.618_033_988_749_894_9;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fnv1a(name: &str) -> u32 {
    name.bytes()
        .fold(0x811C_9DC5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// sin(phase + 2π·φ·i), as the fixture script's `wave`.
fn wave(n: usize, phase: f64) -> Vec<f64> {
    (0..n).map(|i| (phase + i as f64 * (2.0 * PI * GOLDEN)).sin()).collect()
}

/// The fixture script's `value`: the tensor smp calls `name`.
fn value(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let u = wave(n, (fnv1a(name) % 10000) as f64 / 10000.0 * 2.0 * PI);
    let v: Vec<f32> = u
        .iter()
        .map(|&u| {
            let v = if name.ends_with("running_var") {
                1.0 + 0.2 * u
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                0.1 * u
            } else if shape.len() == 1 {
                0.5 + 0.25 * u
            } else {
                u * (3.0 / (n / shape[0]) as f64).sqrt()
            };
            v as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn image(h: usize, w: usize, phase: f64) -> Tensor {
    let v: Vec<f32> = wave(3 * h * w, phase).iter().map(|&v| v as f32).collect();
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
}

/// A fixture's `.names`: every tensor's name and shape, in the library's order.
fn names(fixture: &str) -> Vec<(String, Vec<usize>)> {
    std::fs::read_to_string(format!("{FIXTURES}/{fixture}.names"))
        .unwrap()
        .lines()
        .map(|l| {
            let (name, shape) = l.split_once(' ').unwrap();
            (name.to_string(), shape.split('x').map(|d| d.parse().unwrap()).collect())
        })
        .collect()
}

/// A fixture's `.bin` cut into tensors of these shapes.
fn outputs(fixture: &str, shapes: &[Vec<usize>]) -> Vec<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(format!("{FIXTURES}/{fixture}.bin")).unwrap();
    let all: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut at = 0;
    let cut = shapes
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            at += n;
            (s.clone(), all[at - n..at].to_vec())
        })
        .collect();
    assert_eq!(
        at,
        all.len(),
        "{fixture}.bin holds {} values, the shapes {at}",
        all.len()
    );
    cut
}

/// `arch` with smp's default widths and the fixture's weights by smp's names gives the fixture's
/// logits on an h×w image, from Candle and through ONNX Runtime.
fn matches_smp(fixture: &str, arch: &str, (h, w): (usize, usize)) {
    let arch: Arch = arch.parse().unwrap();
    let model = Segmenter::new(arch, ArchConfig::default(), 0).unwrap();
    let encoder: std::collections::HashSet<String> = model.encoder_keys().iter().cloned().collect();
    let smp_name = |k: &str| match encoder.contains(k) {
        true => format!("encoder.{k}"),
        false => k.to_string(),
    };

    // Same names and shapes as smp's state dict.
    let ours: BTreeMap<String, Vec<usize>> = model
        .store()
        .named_vars()
        .into_iter()
        .map(|(k, v)| (smp_name(&k), v.dims().to_vec()))
        .collect();
    let theirs: BTreeMap<String, Vec<usize>> = names(fixture).into_iter().collect();
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only in ftu: {only_ours:?}\nonly in smp: {only_theirs:?}"
    );
    assert_eq!(ours, theirs, "shapes differ");

    for (k, var) in model.store().named_vars() {
        var.set(&value(&smp_name(&k), var.dims())).unwrap();
    }
    let x = image(h, w, 0.25);
    let logits = model.forward(&x, &Ctx::eval()).unwrap().logits;

    assert_eq!(logits.dims(), &[1, 1, h, w]);
    let expected = outputs(fixture, &[vec![1, 1, h, w]]).remove(0);
    let scale = expected.1.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.05, "the fixture's logits are all near 0 (max {scale})");
    let candle = max_diff("Candle vs smp", &logits, &expected);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    ftu_onnx::write(&model.export(&ExportMeta::default()).unwrap(), &path).unwrap();
    let onnx = run_onnx(&runtime(), &path, &x);
    let ort = Tensor::from_vec(onnx["logits"].1.clone(), onnx["logits"].0.as_slice(), &Device::Cpu).unwrap();
    let ort = max_diff("ONNX Runtime vs smp", &ort, &expected);
    println!("{arch}: max |logit| {scale:.3}; max |Candle − smp| {candle:.2e}, max |ORT − smp| {ort:.2e}");
    assert!(
        candle <= 1e-5 && ort <= 1e-5,
        "{arch}: Candle {candle:.3e}, ONNX Runtime {ort:.3e} from smp"
    );
}

#[test]
fn unetpp_resnet34_matches_segmentation_models_pytorch() {
    matches_smp("smp_unetpp_resnet34", "unetpp-resnet34", (64, 96));
}

#[test]
fn upernet_resnet34_matches_segmentation_models_pytorch() {
    matches_smp("smp_upernet_resnet34", "upernet-resnet34", (160, 224));
}

/// A timm `model.safetensors` by the formula, classifier and all, loads into `arch`'s encoder
/// with `ignore_classifier` (and is refused without), and the encoder's levels from Candle and
/// from its encoder-only export through ONNX Runtime are timm's `features_only` outputs.
fn matches_timms_features_only(fixture: &str, arch: &str, (h, w): (usize, usize), levels: &[(usize, usize)]) {
    let names = names(fixture);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    let tensors: std::collections::HashMap<String, Tensor> =
        names.iter().map(|(k, shape)| (k.clone(), value(k, shape))).collect();
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let model = Segmenter::new(arch.parse().unwrap(), ArchConfig::default(), 0).unwrap();
    let refused = weights::load(
        &model,
        &file,
        Scope::Encoder {
            ignore_classifier: false,
        },
    )
    .unwrap_err();
    assert!(
        refused.to_string().contains("classifier") || refused.to_string().contains("head."),
        "{refused}"
    );
    let report = weights::load(
        &model,
        &file,
        Scope::Encoder {
            ignore_classifier: true,
        },
    )
    .unwrap();
    assert_eq!(report.loaded, model.encoder_keys().len(), "{report}");
    assert_eq!(report.loaded + report.ignored.len(), names.len(), "{report}");

    let x = image(h, w, 0.25);
    let shapes: Vec<Vec<usize>> = levels.iter().map(|&(c, s)| vec![1, c, h / s, w / s]).collect();
    let expected = outputs(fixture, &shapes);
    let candle = model.encode(&x, &Ctx::eval()).unwrap();
    let path = dir.path().join("encoder.onnx");
    ftu_onnx::write(&model.export_encoder(&ExportMeta::default()).unwrap(), &path).unwrap();
    let onnx = run_onnx(&runtime(), &path, &x);
    assert_eq!(candle.len(), levels.len());
    for (i, want) in expected.iter().enumerate() {
        let scale = want.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.1, "feat{i} of the fixture is all near 0 (max {scale})");
        let c = max_diff(&format!("{arch} feat{i}: Candle vs timm"), &candle[i], want);
        let got = &onnx[&format!("feat{i}")];
        let o = max_diff(
            &format!("{arch} feat{i}: ONNX Runtime vs timm"),
            &Tensor::from_vec(got.1.clone(), got.0.as_slice(), &Device::Cpu).unwrap(),
            want,
        );
        println!("{arch} feat{i}: max |v| {scale:.3}; max |Candle − timm| {c:.2e}, max |ORT − timm| {o:.2e}");
        assert!(
            c <= 1e-4 && o <= 1e-4,
            "{arch} feat{i}: Candle {c:.3e}, ONNX Runtime {o:.3e} from timm"
        );
    }
}

#[test]
fn convnext_tiny_encoder_matches_timms_features_only() {
    let levels = [(96, 4), (192, 8), (384, 16), (768, 32)];
    matches_timms_features_only("timm_convnext_tiny", "unet-convnext_tiny", (64, 64), &levels);
}

#[test]
fn efficientnetv2_s_encoder_matches_timms_tf_efficientnetv2_s_features_only() {
    let levels = [(24, 2), (48, 4), (64, 8), (160, 16), (256, 32)];
    matches_timms_features_only("timm_tf_efficientnetv2_s", "unet-efficientnetv2_s", (64, 64), &levels);
}

/// timm with `always_partition=True, strict_img_size=False`, on 96×128: stages of 24×32, 12×16,
/// 6×8 and 3×4 tokens, each padded to whole 7×7 windows, the 3×4 one rolled by 3 mod its side.
#[test]
fn swin_tiny_encoder_matches_timms_features_only() {
    let levels = [(96, 4), (192, 8), (384, 16), (768, 32)];
    let fixture = "timm_swin_tiny_patch4_window7_224";
    matches_timms_features_only(fixture, "upernet-swin_tiny_patch4_window7", (96, 128), &levels);
}
