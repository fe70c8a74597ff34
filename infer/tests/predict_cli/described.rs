//! What a model states in its metadata (`ftu.norm`, `ftu.train_size`) against what the manifest
//! says: warnings naming both, `--strict` refusing them.

use super::*;

/// red.onnx again as `name`, stating `props` in its metadata as ftu's exports do (`ftu.norm`,
/// `ftu.train_size`, `ftu.arch`).
fn described_model(f: &Folder, name: &str, props: &[(&str, &str)]) {
    let mut model = samples::pixel_linear([1.0, 0.0, 0.0], 0.0, InputShape::default(), "logits").unwrap();
    model
        .metadata_props
        .extend(props.iter().map(|(k, v)| ftu_onnx::proto::StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v.to_string()),
        }));
    ftu_onnx::write(&model, &f.path(name)).unwrap();
}

/// A one-model manifest for `model` with `norm` (left out when `None`), the group at `size`.
fn manifest_for(f: &Folder, model: &str, norm: Option<&str>, size: usize) -> PathBuf {
    let norm = norm.map(|n| format!("norm = \"{n}\"\n")).unwrap_or_default();
    let path = f.path(&format!("{model}.toml"));
    std::fs::write(
        &path,
        format!("[[group]]\nsize = {size}\n[[group.model]]\npath = \"{model}\"\n{norm}activation = \"none\"\n"),
    )
    .unwrap();
    path
}

#[test]
fn a_norm_that_contradicts_the_models_warns_naming_both_and_strict_refuses_it() {
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let o = f.predict(&f.manifest(""), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let plain = std::fs::read(f.path("sub.csv")).unwrap();
    described_model(
        &f,
        "imagenet.onnx",
        &[("ftu.arch", "unet-resnet18"), ("ftu.norm", "imagenet")],
    );
    let manifest = manifest_for(&f, "imagenet.onnx", Some("unit"), SIDE);
    let o = f.predict(&manifest, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let warning = err.lines().find(|l| l.starts_with("warning:")).unwrap_or_default();
    assert!(
        warning.contains("group[0].model[0].norm is unit")
            && warning.contains("imagenet.onnx (unet-resnet18)")
            && warning.contains("ftu.norm = imagenet"),
        "{}",
        text(&o)
    );
    // The manifest's norm is the one used.
    assert_eq!(std::fs::read(f.path("sub.csv")).unwrap(), plain);

    std::fs::remove_file(f.path("sub.csv")).unwrap();
    let o = f.predict(&manifest, &["--strict"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("norm is unit") && err.contains("ftu.norm = imagenet") && err.contains("--strict"),
        "{err}"
    );
    assert!(!f.path("sub.csv").exists(), "a refused run writes nothing");
}

#[test]
fn a_manifest_without_norm_takes_the_models_and_neither_is_an_error_naming_the_model() {
    let f = Folder::new(&[
        ("1", Organ::Kidney, DataSource::Hpa),
        ("2", Organ::Lung, DataSource::Hpa),
    ]);
    let o = f.predict(&f.manifest(""), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let explicit = std::fs::read(f.path("sub.csv")).unwrap();
    described_model(&f, "unit.onnx", &[("ftu.norm", "unit")]);
    let o = f.predict(&manifest_for(&f, "unit.onnx", None, SIDE), &["--strict"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("norm unit (the model's ftu.norm)"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(f.path("sub.csv")).unwrap(), explicit);
    // A model whose stated norm differs gives another submission: the stated one is used.
    described_model(&f, "pm1.onnx", &[("ftu.norm", "pm1")]);
    let o = f.predict(&manifest_for(&f, "pm1.onnx", None, SIDE), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(std::fs::read(f.path("sub.csv")).unwrap(), explicit);

    // red.onnx states no norm.
    let o = f.predict(&manifest_for(&f, "red.onnx", None, SIDE), &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("group[0].model[0].norm is not given") && err.contains("red.onnx") && err.contains("ftu.norm"),
        "{err}"
    );
}

#[test]
fn a_group_size_beyond_twice_the_models_training_size_warns() {
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    described_model(&f, "small.onnx", &[("ftu.norm", "unit"), ("ftu.train_size", "16")]);
    described_model(&f, "near.onnx", &[("ftu.norm", "unit"), ("ftu.train_size", "128")]);
    let o = f.predict(&manifest_for(&f, "small.onnx", None, SIDE), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("warning:")
            && l.contains("size 64")
            && l.contains("16 px")
            && l.contains("ftu.train_size")),
        "{err}"
    );
    let o = f.predict(&manifest_for(&f, "small.onnx", None, SIDE), &["--strict"]);
    assert!(!o.status.success(), "{}", text(&o));
    let o = f.predict(&manifest_for(&f, "near.onnx", None, SIDE), &["--strict"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning:"), "{}", text(&o));
}
