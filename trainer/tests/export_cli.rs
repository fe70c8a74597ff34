//! `ftu-train export`: the ONNX it writes has the heads' outputs and the `ftu.arch` and `ftu.norm`
//! metadata, the encoder-only export has one output per level, and bad names or weights are
//! refused by name.

use std::path::Path;

mod common;

use common::ftu_train;

fn outputs_and_meta(path: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let model = ftu_onnx::read(path).unwrap();
    let graph = model.graph.unwrap();
    let outputs = graph.output.iter().map(|o| o.name.clone().unwrap()).collect();
    let meta = model
        .metadata_props
        .iter()
        .map(|p| (p.key.clone().unwrap(), p.value.clone().unwrap()))
        .collect();
    (outputs, meta)
}

#[test]
fn export_writes_the_named_outputs_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let o = ftu_train(&[
        "export",
        "--arch",
        "unet-resnet18",
        "--decoder-channels",
        "16,16,8,8,8",
        "--organ-head",
        "--pixel-size-head",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (outputs, meta) = outputs_and_meta(&out);
    assert_eq!(outputs, ["logits", "organ", "pixel_size"]);
    assert!(meta.contains(&("ftu.arch".into(), "unet-resnet18".into())), "{meta:?}");
    assert!(meta.contains(&("ftu.norm".into(), "imagenet".into())), "{meta:?}");

    let enc = dir.path().join("enc.onnx");
    let o = ftu_train(&[
        "export",
        "--arch",
        "segformer-mit_b0",
        "--encoder-only",
        "--out",
        enc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(outputs_and_meta(&enc).0, ["feat0", "feat1", "feat2", "feat3"]);
}

#[test]
fn bad_names_and_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let o = ftu_train(&["export", "--arch", "unet-resnet99", "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("resnet34") && err.contains("mit_b2"),
        "{err}"
    );

    let weights = dir.path().join("w.safetensors");
    let wrong = candle_core::Tensor::zeros((64, 3, 3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("conv1.weight".to_string(), wrong)].into_iter().collect(), &weights).unwrap();
    let o = ftu_train(&[
        "export",
        "--arch",
        "unet-resnet18",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("mis-shaped: conv1.weight") && err.contains("missing: layer1.0.conv1.weight"),
        "{err}"
    );
    assert!(!out.exists(), "no model is written when the weights do not fit");
}
