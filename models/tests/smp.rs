//! ftu's `unetpp-resnet34` against segmentation_models_pytorch's `UnetPlusPlus("resnet34")` on the
//! same weights: every tensor set by one formula from smp's name for it (ftu's encoder keys are
//! smp's without `encoder.`; the decoder's are smp's own), BatchNorm's running statistics
//! included, then the eval logits of Candle and of the exported model through ONNX
//! Runtime against smp's, stored in `fixtures/` by `fixtures/make_smp_unetpp.py`.

mod common;

use std::collections::BTreeMap;
use std::f64::consts::PI;

use candle_core::{Device, Tensor};
use common::*;
use ftu_models::{Arch, ArchConfig, Ctx, ExportMeta, Segmenter};

const GOLDEN: f64 = 0.618_033_988_749_894_9;
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smp_unetpp_resnet34");

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

fn image(n: usize, phase: f64) -> Tensor {
    let v: Vec<f32> = wave(n * 3 * 64 * 96, phase).iter().map(|&v| v as f32).collect();
    Tensor::from_vec(v, (n, 3, 64, 96), &Device::Cpu).unwrap()
}

#[test]
fn unetpp_resnet34_matches_segmentation_models_pytorch() {
    let arch: Arch = "unetpp-resnet34".parse().unwrap();
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
    let theirs: BTreeMap<String, Vec<usize>> = std::fs::read_to_string(format!("{FIXTURE}.names"))
        .unwrap()
        .lines()
        .map(|line| {
            let (name, shape) = line.split_once(' ').unwrap();
            (name.to_string(), shape.split('x').map(|d| d.parse().unwrap()).collect())
        })
        .collect();
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
    let x = image(1, 0.25);
    let logits = model.forward(&x, &Ctx::eval()).unwrap().logits;

    let bytes = std::fs::read(format!("{FIXTURE}.bin")).unwrap();
    let expected: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(logits.dims(), &[1, 1, 64, 96]);
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.05, "the fixture's logits are all near 0 (max {scale})");
    let expected = (vec![1, 1, 64, 96], expected);
    let candle = max_diff("Candle vs smp", &logits, &expected);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unetpp.onnx");
    ftu_onnx::write(&model.export(&ExportMeta::default()).unwrap(), &path).unwrap();
    let onnx = run_onnx(&runtime(), &path, &x);
    let ort = Tensor::from_vec(onnx["logits"].1.clone(), onnx["logits"].0.as_slice(), &Device::Cpu).unwrap();
    let ort = max_diff("ONNX Runtime vs smp", &ort, &expected);
    println!("max |logit| {scale:.3}; max |Candle − smp| {candle:.2e}, max |ORT − smp| {ort:.2e}");
    assert!(
        candle <= 1e-5 && ort <= 1e-5,
        "Candle {candle:.3e}, ONNX Runtime {ort:.3e} from smp"
    );
}
