//! A network exported by ftu-train runs in ftu-infer as it is: two architectures (one with an
//! organ head, so `logits` is one of several outputs) in a two-group manifest with flips TTA, on a
//! synthetic Kaggle folder, every test id gets a row, in order; and ftu-infer's probabilities
//! (manifest `norm = "imagenet"`, as the export's metadata says) are Candle's for the same network.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

use std::path::Path;

use ftu_infer::predict::PredictOptions;
use ftu_models::{ArchConfig, ExportMeta};
use ftu_tests::synth_data;
use ftu_trainer::export::{export, ExportRequest};

fn config(arch: &str, organ_head: bool) -> ArchConfig {
    ArchConfig {
        decoder_channels: Some(if arch.starts_with("unet") {
            vec![16, 16, 8, 8, 8]
        } else {
            vec![16]
        }),
        organ_head,
        ..ArchConfig::default()
    }
}

fn export_to(dir: &Path, arch: &str, organ_head: bool, file: &str) {
    let request = ExportRequest {
        arch: arch.parse().unwrap(),
        config: config(arch, organ_head),
        weights: None,
        ignore_classifier: false,
        checkpoint: None,
        encoder_only: false,
        seed: 3,
        meta: ExportMeta::default(),
        out: dir.join(file),
    };
    let summary = export(&request).unwrap();
    let expected: Vec<&str> = if organ_head {
        vec!["logits", "organ"]
    } else {
        vec!["logits"]
    };
    assert_eq!(summary.outputs, expected);
}

#[test]
fn exported_models_serve_in_ftu_infer() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path(), 0, 5, 160, 4);
    export_to(dir.path(), "unet-resnet18", true, "unet.onnx");
    export_to(dir.path(), "segformer-mit_b0", false, "segformer.onnx");
    let manifest_path = dir.path().join("ensemble.toml");
    std::fs::write(
        &manifest_path,
        r#"
[tta]
mode = "flips"
[thresholds]
default = 0.5
[[group]]
size = 128
[[group.model]]
path = "unet.onnx"
norm = "imagenet"
output = "logits"
[[group]]
size = 96
[[group.model]]
path = "segformer.onnx"
norm = "imagenet"
"#,
    )
    .unwrap();
    let mut engine = ftu_tests::engine(&manifest_path);
    let predicted = ftu_tests::predict(
        &mut engine,
        &PredictOptions::new(&data, dir.path().join("submission.csv")),
    );
    assert_eq!(predicted.report.predicted, 5);
    assert_eq!(predicted.ids, predicted.test_ids);
}

#[test]
fn ftu_infer_probabilities_are_candles() {
    use candle_core::{Device, Tensor};
    use ftu_formats::organ::{DataSource, Organ};
    use ftu_formats::slide::RgbImage;
    use ftu_infer::engine::{SlideInfo, Timings};
    use rand::{Rng, SeedableRng};

    let dir = tempfile::tempdir().unwrap();
    export_to(dir.path(), "unet-resnet18", true, "unet.onnx");
    let manifest_path = dir.path().join("one.toml");
    let toml =
        "[tta]\nmode = \"none\"\n[[group]]\nsize = 64\n[[group.model]]\npath = \"unet.onnx\"\nnorm = \"imagenet\"\n";
    std::fs::write(&manifest_path, toml).unwrap();
    let mut engine = ftu_tests::engine(&manifest_path);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (h, w) = (64, 64);
    let slide = RgbImage {
        width: w,
        height: h,
        data: (0..h * w * 3).map(|_| rng.random::<u8>()).collect(),
    };
    let info = SlideInfo {
        organ: Organ::Kidney,
        source: DataSource::Hpa,
        pixel_size: 0.4,
    };
    let served = engine.predict(&slide, &info, &mut Timings::default()).unwrap();

    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut planes = vec![0f32; 3 * h * w];
    for (p, px) in slide.data.chunks(3).enumerate() {
        for c in 0..3 {
            planes[c * h * w + p] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    let image = Tensor::from_vec(planes, (1, 3, h, w), &Device::Cpu).unwrap();
    let model = ftu_models::Segmenter::new("unet-resnet18".parse().unwrap(), config("unet-resnet18", true), 3).unwrap();
    let logits = model.forward(&image, &ftu_models::Ctx::eval()).unwrap().logits;
    let probs = candle_nn::ops::sigmoid(&logits)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let worst = probs
        .iter()
        .zip(&served.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-4, "ftu-infer and Candle differ by {worst}");
}
