//! Pretrained encoder files: a safetensors file with timm / Hugging Face names and shapes fills the
//! encoder; a missing key, a wrong shape or an unexpected classifier fails naming the key and
//! leaves the model as it was. Parameter names and counts are checked against timm's.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use ftu_models::weights::{load, Scope};
use ftu_models::{Arch, ArchConfig, Ctx, Segmenter};

/// Encoder tensors of a model built with another seed, as a pretrained file would hold them,
/// plus what a timm classification checkpoint adds.
fn pretrained_file(arch: Arch, path: &Path, edit: impl Fn(&mut HashMap<String, Tensor>)) -> Segmenter {
    let source = Segmenter::new(arch, ArchConfig::default(), 99).unwrap();
    jitter(&source, 98);
    let vars: HashMap<String, candle_core::Var> = source.store().named_vars().into_iter().collect();
    let mut tensors: HashMap<String, Tensor> = source
        .encoder_keys()
        .iter()
        .map(|k| (k.clone(), vars[k].as_tensor().clone()))
        .collect();
    for (name, bn) in [
        ("bn1.num_batches_tracked", true),
        ("fc.weight", false),
        ("fc.bias", false),
    ] {
        let t = if bn {
            Tensor::new(&[7i64], &Device::Cpu).unwrap().squeeze(0).unwrap()
        } else if name.ends_with("weight") {
            Tensor::zeros((1000, 512), DType::F32, &Device::Cpu).unwrap()
        } else {
            Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap()
        };
        tensors.insert(name.to_string(), t);
    }
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, path).unwrap();
    source
}

fn encoder_output(model: &Segmenter) -> Vec<f32> {
    let image = random_image(1, 64, 64, 1);
    let levels = model.encode(&image, &Ctx::eval()).unwrap();
    levels.last().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn a_timm_file_fills_the_encoder() {
    let arch: Arch = "unet-resnet18".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let source = pretrained_file(arch, &path, |_| {});
    let model = Segmenter::new(arch, ArchConfig::default(), 1).unwrap();
    assert_ne!(encoder_output(&model), encoder_output(&source));
    let report = load(
        &model,
        &path,
        Scope::Encoder {
            ignore_classifier: true,
        },
    )
    .unwrap();
    assert_eq!(report.loaded, model.encoder_keys().len());
    assert_eq!(report.ignored, vec!["bn1.num_batches_tracked", "fc.bias", "fc.weight"]);
    assert_eq!(encoder_output(&model), encoder_output(&source));
}

fn refused(arch: &str, edit: impl Fn(&mut HashMap<String, Tensor>), ignore_classifier: bool) -> String {
    let arch: Arch = arch.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    pretrained_file(arch, &path, edit);
    let model = Segmenter::new(arch, ArchConfig::default(), 1).unwrap();
    let before = encoder_output(&model);
    let err = load(&model, &path, Scope::Encoder { ignore_classifier })
        .unwrap_err()
        .to_string();
    assert_eq!(encoder_output(&model), before, "a refused file must change nothing");
    assert!(err.contains("model.safetensors"), "{err}");
    err
}

#[test]
fn mismatches_are_refused_by_key() {
    let err = refused("unet-resnet34", |t| drop(t.remove("layer3.2.bn1.running_var")), true);
    assert!(err.contains("missing: layer3.2.bn1.running_var"), "{err}");

    let wrong = Tensor::zeros((64, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let err = refused(
        "unet-resnet34",
        move |t| drop(t.insert("conv1.weight".into(), wrong.clone())),
        true,
    );
    assert!(
        err.contains("mis-shaped: conv1.weight: the model has [64, 3, 7, 7], the file [64, 3, 3, 3]"),
        "{err}"
    );

    let err = refused("unet-resnet34", |_| {}, false);
    assert!(
        err.contains("unexpected: fc.weight") && err.contains("unexpected: fc.bias"),
        "{err}"
    );
    assert!(!err.contains("num_batches_tracked"), "{err}");
}

#[test]
fn a_hugging_face_mit_file_fills_the_encoder() {
    let arch: Arch = "segformer-mit_b0".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let source = pretrained_file(arch, &path, |t| {
        t.retain(|k, _| k.starts_with("segformer."));
        t.insert(
            "classifier.weight".into(),
            Tensor::zeros((1000, 256), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let model = Segmenter::new(arch, ArchConfig::default(), 1).unwrap();
    let report = load(
        &model,
        &path,
        Scope::Encoder {
            ignore_classifier: true,
        },
    )
    .unwrap();
    assert_eq!(report.ignored, vec!["classifier.weight"]);
    assert_eq!(encoder_output(&model), encoder_output(&source));
}

/// Names and shapes as they are in timm's and Hugging Face's files.
#[test]
fn parameter_names_and_shapes_are_the_pretrained_files() {
    let expect: [(&str, &[(&str, &[usize])]); 5] = [
        (
            "unet-resnet34",
            &[
                ("conv1.weight", &[64, 3, 7, 7]),
                ("layer2.0.downsample.0.weight", &[128, 64, 1, 1]),
                ("layer4.2.bn2.running_var", &[512]),
            ],
        ),
        (
            "unet-resnet50",
            &[
                ("layer1.0.conv3.weight", &[256, 64, 1, 1]),
                ("layer4.0.downsample.1.bias", &[2048]),
            ],
        ),
        (
            "unet-efficientnet_b0",
            &[
                ("conv_stem.weight", &[32, 3, 3, 3]),
                ("blocks.0.0.conv_dw.weight", &[32, 1, 3, 3]),
                ("blocks.0.0.se.conv_reduce.weight", &[8, 32, 1, 1]),
                ("blocks.1.0.conv_pw.weight", &[96, 16, 1, 1]),
                ("blocks.1.0.se.conv_reduce.weight", &[4, 96, 1, 1]),
                ("blocks.5.3.conv_dw.weight", &[1152, 1, 5, 5]),
                ("blocks.6.0.conv_pwl.weight", &[320, 1152, 1, 1]),
                ("blocks.6.0.bn3.running_mean", &[320]),
            ],
        ),
        (
            "segformer-mit_b2",
            &[
                ("segformer.encoder.patch_embeddings.0.proj.weight", &[64, 3, 7, 7]),
                ("segformer.encoder.block.0.0.attention.self.sr.weight", &[64, 64, 8, 8]),
                ("segformer.encoder.block.2.5.attention.output.dense.weight", &[320, 320]),
                ("segformer.encoder.block.3.2.mlp.dwconv.dwconv.weight", &[2048, 1, 3, 3]),
                ("segformer.encoder.layer_norm.3.weight", &[512]),
                ("decode_head.linear_c.3.proj.weight", &[256, 512]),
                ("decode_head.linear_fuse.weight", &[256, 1024, 1, 1]),
            ],
        ),
        (
            "unet-convnext_tiny",
            &[
                ("stem.0.weight", &[96, 3, 4, 4]),
                ("stem.1.weight", &[96]),
                ("stages.0.blocks.0.conv_dw.weight", &[96, 1, 7, 7]),
                ("stages.0.blocks.2.mlp.fc1.weight", &[384, 96]),
                ("stages.1.downsample.0.bias", &[96]),
                ("stages.1.downsample.1.weight", &[192, 96, 2, 2]),
                ("stages.2.blocks.8.gamma", &[384]),
                ("stages.3.blocks.2.mlp.fc2.weight", &[768, 3072]),
            ],
        ),
    ];
    for (arch, keys) in expect {
        let model = Segmenter::new(arch.parse().unwrap(), ArchConfig::default(), 0).unwrap();
        let vars: HashMap<String, candle_core::Var> = model.store().named_vars().into_iter().collect();
        for (key, shape) in keys {
            let var = vars.get(*key).unwrap_or_else(|| panic!("{arch}: no {key}"));
            assert_eq!(var.dims(), *shape, "{arch}: {key}");
        }
    }
}

/// timm's totals (classifier included) minus the classifier give the encoders' sizes.
#[test]
fn encoder_sizes_match_timm() {
    let classifier = |c: usize| c * 1000 + 1000;
    // efficientnet: conv_head (320·k → 1280·k), bn2, classifier; here for b0 only.
    let effnet_head = 320 * 1280 + 2 * 1280 + classifier(1280);
    for (encoder, timm_total, head) in [
        ("resnet18", 11_689_512, classifier(512)),
        ("resnet34", 21_797_672, classifier(512)),
        ("resnet50", 25_557_032, classifier(2048)),
        ("efficientnet_b0", 5_288_548, effnet_head),
        // convnext: head.norm (LayerNorm2d over 768) and head.fc.
        ("convnext_tiny", 28_589_128, 2 * 768 + classifier(768)),
        // swin: the final LayerNorm (`norm`) and head.fc.
        ("swin_tiny_patch4_window7", 28_288_354, 2 * 768 + classifier(768)),
        ("swin_small_patch4_window7", 49_606_258, 2 * 768 + classifier(768)),
        ("swin_base_patch4_window7", 87_768_224, 2 * 1024 + classifier(1024)),
    ] {
        let model = Segmenter::new(format!("unet-{encoder}").parse().unwrap(), ArchConfig::default(), 0).unwrap();
        let vars: HashMap<String, candle_core::Var> = model.store().named_vars().into_iter().collect();
        let count: usize = model
            .encoder_keys()
            .iter()
            .filter(|k| !ftu_models::store::is_buffer(k))
            .map(|k| vars[k].elem_count())
            .sum();
        assert_eq!(count + head, timm_total, "{encoder}");
    }
}

/// An ftu checkpoint (every parameter and buffer) round-trips: another seed's model, loaded from
/// it, computes the same outputs; a checkpoint of another architecture is refused.
#[test]
fn checkpoints_round_trip() {
    let arch: Arch = "fpn-efficientnet_b0".parse().unwrap();
    let config = ArchConfig {
        aspp: true,
        organ_head: true,
        ..ArchConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("best.safetensors");
    let trained = Segmenter::new(arch, config.clone(), 1).unwrap();
    jitter(&trained, 2);
    trained.store().save(&path).unwrap();
    let fresh = Segmenter::new(arch, config.clone(), 3).unwrap();
    let report = load(&fresh, &path, Scope::Full).unwrap();
    assert_eq!(report.loaded, trained.store().named_vars().len());
    let image = random_image(1, 64, 64, 4);
    let a = trained.forward(&image, &Ctx::eval()).unwrap();
    let b = fresh.forward(&image, &Ctx::eval()).unwrap();
    let same = |x: &Tensor, y: &Tensor| {
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap() == y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert!(same(&a.logits, &b.logits) && same(a.organ.as_ref().unwrap(), b.organ.as_ref().unwrap()));

    let other = Segmenter::new("fpn-efficientnet_b1".parse().unwrap(), config, 3).unwrap();
    let err = load(&other, &path, Scope::Full).unwrap_err().to_string();
    assert!(
        err.contains("fpn-efficientnet_b1") && err.contains("missing: blocks.0.1."),
        "{err}"
    );
}
