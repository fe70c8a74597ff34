//! Every registered architecture (see `common::under_test`), random weights, eval mode: Candle and ONNX Runtime (the real
//! PyPI library) agree within 1e-4 (2.5e-4 for the deepest encoders, see `DEEP_TOLERANCE`) on
//! every output at two input sizes (one for the larger sizes of an encoder family, see `sizes`),
//! batch 2.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

mod common;

use candle_core::Tensor;
use common::*;
use ftu_models::{Arch, Ctx, ExportMeta, Segmenter};

const TOLERANCE: f32 = 1e-4;

/// The deepest and widest encoders (EfficientNet-B6/B7: 45 and 55 blocks, 3840-wide; ResNet-50's
/// 2048-wide sums) accumulate more float32 rounding, which differs between Candle's and ONNX
/// Runtime's matrix kernels: measured up to 1.7e-4 on values near 1. Export mistakes show as
/// differences of 1e-2 and more.
const DEEP_TOLERANCE: f32 = 2.5e-4;

fn tolerance(arch: Arch) -> f32 {
    use ftu_models::encoders::EncoderKind;
    match arch.encoder {
        EncoderKind::EfficientNet(6 | 7) | EncoderKind::ResNet(50) => DEEP_TOLERANCE,
        _ => TOLERANCE,
    }
}

/// The input sizes and image seeds an architecture is checked at. Two sizes check that the export
/// reads its shapes at run time; by default an encoder's larger sizes, which run the same graph
/// code as their family's representative with other widths and depths, are checked at one.
fn sizes(arch: Arch) -> &'static [(usize, u64)] {
    if std::env::var_os("FTU_ARCH").is_some() || family_representative(arch.encoder) {
        &[(96, 1), (128, 2)]
    } else {
        &[(96, 1)]
    }
}

fn check(arch: Arch, dir: &std::path::Path) -> Vec<String> {
    let runtime = runtime();
    let model = Segmenter::new(arch, small_config(arch), 11).unwrap();
    jitter(&model, 12);
    // One file, overwritten per size and removed after: sixty architectures' exports would
    // otherwise pile up in the temporary folder.
    let path = dir.join("model.onnx");
    let mut report = Vec::new();
    for &(size, seed) in sizes(arch) {
        // Running statistics from a batch that holds the test images, as a trained model's fit
        // its inputs. Without that, channels with a tiny running variance turn deep random
        // networks chaotic (values in the hundreds), and f32 rounding, which differs between any
        // two runtimes, grows past 1e-4.
        let image = random_image(2, size, size, seed);
        let calibration = Tensor::cat(&[&image, &random_image(6, size, size, seed + 10)], 0).unwrap();
        model.forward(&calibration, &Ctx::recalibrate()).unwrap();
        ftu_onnx::write(&model.export(&ExportMeta::default()).unwrap(), &path).unwrap();
        let ours = model.forward(&image, &Ctx::eval()).unwrap();
        let theirs = run_onnx(&runtime, &path, &image);
        assert_eq!(theirs.len(), 3, "{arch}: logits, organ and pixel_size outputs");
        let organ = ours.organ.as_ref().unwrap();
        let pixel = ours.pixel_size.as_ref().unwrap();
        assert_eq!(
            ours.logits.dims(),
            &[2, 1, size, size],
            "{arch}: logits at the input resolution"
        );
        for (name, tensor) in [("logits", &ours.logits), ("organ", organ), ("pixel_size", pixel)] {
            let diff = max_diff(&format!("{arch} {name}"), tensor, &theirs[name]);
            let scale = tensor.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            println!("{arch:32} {size}² {name:10} max|Candle−ORT| {diff:.2e} (max |value| {scale:.2})");
            if !(diff <= tolerance(arch)) {
                report.push(format!("{arch} {size}² {name}: {diff:.3e}"));
            }
        }
    }
    std::fs::remove_file(&path).unwrap();
    report
}

#[test]
fn every_architecture_matches_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for arch in under_test(Scope::Forward) {
        failures.extend(check(arch, dir.path()));
    }
    assert!(failures.is_empty(), "parity above tolerance:\n{}", failures.join("\n"));
}
