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

#[test]
fn weights_by_hub_name_come_from_the_local_hugging_face_cache() {
    let dir = tempfile::tempdir().unwrap();
    // A cache laid out as `huggingface-cli download timm/resnet18.a1_in1k` leaves it.
    let model = dir.path().join("hf/hub/models--timm--resnet18.a1_in1k");
    let snapshot = model.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(model.join("refs")).unwrap();
    std::fs::write(model.join("refs/main"), "0123abcd").unwrap();
    let file = snapshot.join("model.safetensors");
    let source = ftu_models::Segmenter::new("unet-resnet18".parse().unwrap(), Default::default(), 11).unwrap();
    let vars: std::collections::HashMap<_, _> = source.store().named_vars().into_iter().collect();
    let encoder: std::collections::HashMap<String, candle_core::Tensor> = source
        .encoder_keys()
        .iter()
        .map(|k| (k.clone(), vars[k].as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&encoder, &file).unwrap();

    let export = |weights: Option<&str>, out: &str| {
        let out = dir.path().join(out);
        let mut args = vec!["export", "--arch", "unet-resnet18", "--encoder-only", "--seed", "3"];
        if let Some(w) = weights {
            args.extend(["--weights", w]);
        }
        args.extend(["--out", out.to_str().unwrap()]);
        let o = common::command(&args)
            .env("HF_HOME", dir.path().join("hf"))
            .env_remove("HF_HUB_CACHE")
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned(), out)
    };
    let (ok, err, by_name) = export(Some("timm/resnet18.a1_in1k"), "name.onnx");
    assert!(ok, "{err}");
    assert!(
        err.contains("snapshots/0123abcd/model.safetensors"),
        "says which file it loaded: {err}"
    );
    let (ok, err, by_path) = export(Some(file.to_str().unwrap()), "path.onnx");
    assert!(ok, "{err}");
    let (ok, err, random) = export(None, "random.onnx");
    assert!(ok, "{err}");
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert!(bytes(&by_name) == bytes(&by_path), "the name loads the cached file");
    assert!(
        bytes(&by_name) != bytes(&random),
        "the cached weights replace the random ones"
    );

    let (ok, err, _) = export(Some("nvidia/mit-b2"), "missing.onnx");
    assert!(
        !ok && err.contains("huggingface-cli download nvidia/mit-b2 model.safetensors"),
        "{err}"
    );
}
