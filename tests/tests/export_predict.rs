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
    export_with(dir, arch, organ_head, false, file);
}

fn export_with(dir: &Path, arch: &str, organ_head: bool, fp16: bool, file: &str) {
    let request = ExportRequest {
        arch: arch.parse().unwrap(),
        config: config(arch, organ_head),
        weights: None,
        ignore_classifier: false,
        checkpoint: None,
        encoder_only: false,
        fp16,
        seed: 3,
        meta: ExportMeta::default(),
        out: dir.join(file),
    };
    let summary = export(&request).unwrap();
    assert_eq!(summary.fp16.is_some(), fp16);
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
    use ftu_infer::engine::Timings;

    let dir = tempfile::tempdir().unwrap();
    export_to(dir.path(), "unet-resnet18", true, "unet.onnx");
    let manifest_path = dir.path().join("one.toml");
    let toml =
        "[tta]\nmode = \"none\"\n[[group]]\nsize = 64\n[[group.model]]\npath = \"unet.onnx\"\nnorm = \"imagenet\"\n";
    std::fs::write(&manifest_path, toml).unwrap();
    let mut engine = ftu_tests::engine(&manifest_path);

    let (h, w) = (64, 64);
    let (slide, info) = noise_slide(64, 1);
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

/// A random 3-channel slide and the facts predict needs about it.
fn noise_slide(size: usize, seed: u64) -> (ftu_formats::slide::RgbImage, ftu_infer::engine::SlideContext) {
    use ftu_formats::organ::{DataSource, Organ};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let slide = ftu_formats::slide::RgbImage {
        width: size,
        height: size,
        data: (0..size * size * 3).map(|_| rng.random::<u8>()).collect(),
    };
    let info = ftu_infer::engine::SlideContext {
        organ: Organ::Kidney,
        source: DataSource::Hpa,
        pixel_size: 0.4,
    };
    (slide, info)
}

/// `ftu-train export --fp16` writes a model that takes and gives float32 like the float32 export
/// (same outputs, several of them for the organ head) and whose probabilities stay close to it.
/// On ONNX Runtime's CPU provider this measures the weights' rounding to float16 and the float16
/// kernels the CPU has (others run in float32 behind casts ONNX Runtime inserts); a GPU runs every
/// op in float16, so there the difference can only be larger.
#[test]
fn fp16_exports_agree_with_float32() {
    use ftu_infer::engine::Timings;
    let dir = tempfile::tempdir().unwrap();
    let (slide, info) = noise_slide(128, 5);
    for (arch, organ_head) in [("unet-resnet18", true), ("segformer-mit_b0", false)] {
        let mut probs = Vec::new();
        for fp16 in [false, true] {
            let file = format!("{arch}-{fp16}.onnx");
            export_with(dir.path(), arch, organ_head, fp16, &file);
            let manifest = dir.path().join(format!("{arch}-{fp16}.toml"));
            let toml = format!(
                "[tta]\nmode = \"none\"\n[[group]]\nsize = 128\n[[group.model]]\npath = \"{file}\"\nnorm = \"imagenet\"\n"
            );
            std::fs::write(&manifest, toml).unwrap();
            let mut engine = ftu_tests::engine(&manifest);
            probs.push(engine.predict(&slide, &info, &mut Timings::default()).unwrap().data);
        }
        let f32_size = std::fs::metadata(dir.path().join(format!("{arch}-false.onnx")))
            .unwrap()
            .len();
        let f16_size = std::fs::metadata(dir.path().join(format!("{arch}-true.onnx")))
            .unwrap()
            .len();
        assert!(
            (f16_size as f64) < 0.6 * f32_size as f64,
            "{arch}: the float16 file is {f16_size} bytes, the float32 one {f32_size}"
        );
        let (full, half) = (&probs[0], &probs[1]);
        assert_eq!(full.len(), half.len());
        let worst = full.iter().zip(half).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let (mut both, mut either) = (0usize, 0usize);
        for (a, b) in full.iter().zip(half) {
            both += usize::from(*a > 0.5 && *b > 0.5);
            either += usize::from(*a > 0.5) + usize::from(*b > 0.5);
        }
        let dice = if either == 0 {
            1.0
        } else {
            2.0 * both as f64 / either as f64
        };
        eprintln!("{arch}: float16 against float32: worst probability difference {worst:.2e}, mask Dice {dice:.4}");
        assert!(
            worst < 2e-2,
            "{arch}: float16 probabilities differ from float32's by up to {worst}"
        );
        assert!(dice > 0.98, "{arch}: float16 masks agree with float32's at Dice {dice}");
    }
}
