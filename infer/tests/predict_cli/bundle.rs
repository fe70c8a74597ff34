//! A bundle copied elsewhere predicts on the library it carries; ORT_DYLIB_PATH may name a
//! folder instead of the library file.

use super::*;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A bundle copied elsewhere runs with ORT_DYLIB_PATH unset and no virtualenv, loads the library
/// it carries, and writes the same submission as the build tree.
#[test]
fn a_bundle_copied_elsewhere_predicts_the_same_submission() {
    let f = Folder::new(&[
        ("9", Organ::Lung, DataSource::Hubmap),
        ("2", Organ::Kidney, DataSource::Hpa),
        ("5", Organ::Prostate, DataSource::Hpa),
    ]);
    // A manifest in its own folder, reaching its model through `..`, two groups sharing it.
    std::fs::create_dir(f.path("ens")).unwrap();
    let manifest = f.path("ens/ensemble.toml");
    std::fs::write(
        &manifest,
        format!(
            "[tta]\nmode = \"flips\"\n{THRESHOLDS}\n[[group]]\nsize = {SIDE}\n[[group.model]]\npath = \"../red.onnx\"\nnorm = \"unit\"\nactivation = \"none\"\n[[group]]\nsize = 32\nweight = 0.5\n[[group.model]]\npath = \"../red.onnx\"\nnorm = \"unit\"\nactivation = \"none\"\n"
        ),
    )
    .unwrap();
    let built = f.predict(&manifest, &[]);
    assert!(built.status.success(), "{}", text(&built));
    let expected = std::fs::read(f.path("sub.csv")).unwrap();

    let bundle = f.path("bundle");
    let o = ftu_infer(&[
        "bundle",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout);
    for part in [
        "ftu-infer",
        "manifest.toml",
        "README.md",
        "lib/libonnxruntime",
        "models/g0m0_red.onnx",
    ] {
        assert!(listed.contains(part), "{part} in {listed}");
    }
    assert_eq!(
        std::fs::read_dir(bundle.join("models")).unwrap().count(),
        1,
        "a shared model is copied once"
    );
    let readme = std::fs::read_to_string(bundle.join("README.md")).unwrap();
    assert!(
        readme.contains("/kaggle/input/") && readme.contains("chmod +x"),
        "{readme}"
    );
    // The test build needs this machine's glibc and has symbols: the bundle ships it and says
    // what it needs and how to make a portable one (scripts/portable.sh's build, when newer
    // than this binary, would have been taken instead, with no warning).
    let stderr = String::from_utf8_lossy(&o.stderr);
    let shipped = stderr
        .lines()
        .find_map(|l| l.strip_prefix("binary: "))
        .unwrap_or_default();
    if shipped.contains("/portable/") {
        assert!(
            shipped.contains("glibc ≥ 2.") && shipped.contains("stripped") && !stderr.contains("warning"),
            "{stderr}"
        );
    } else {
        assert!(
            shipped.starts_with(env!("CARGO_BIN_EXE_ftu-infer"))
                && stderr.contains("warning: the bundle's ftu-infer")
                && stderr.contains("scripts/portable.sh"),
            "{stderr}"
        );
    }
    assert!(readme.contains("(needs glibc ≥ 2."), "{readme}");

    // Elsewhere, with nothing else: no ORT_DYLIB_PATH, no virtualenv, a bare PATH.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("ftu");
    copy_tree(&bundle, &copy);
    let out = elsewhere.path().join("sub.csv");
    let o = Command::new(copy.join("ftu-infer"))
        .args(predict_args(&copy.join("manifest.toml"), f.dir.path(), &out))
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("VIRTUAL_ENV")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lib_dir = copy.join("lib");
    assert!(
        stderr.contains(lib_dir.to_str().unwrap()),
        "the bundled library is used: {stderr}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        expected,
        "same submission as the build tree"
    );

    // Bundling into a folder that is not empty is refused and leaves it alone.
    let o = ftu_infer(&[
        "bundle",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    // --gpu without the CUDA provider beside the CPU library says what to install.
    let o = ftu_infer(&[
        "bundle",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        f.path("gpu").to_str().unwrap(),
        "--gpu",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        assert!(stderr.contains("onnxruntime-gpu"), "{stderr}");
        assert!(
            !f.path("gpu").exists() && !f.path("gpu.tmp").exists(),
            "no half bundle is left"
        );
    }
}

#[test]
fn ort_dylib_path_may_name_the_folder_that_holds_the_library() {
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let model = f.path("red.onnx");
    if let Some(file) = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        // The pip wheel's capi/ holds only libonnxruntime.so.1.x.y.
        let folder = file.parent().unwrap();
        let o = ftu_infer_command(&["inspect", model.to_str().unwrap()])
            .env_clear()
            .env("PATH", f.path("empty"))
            .env("ORT_DYLIB_PATH", folder)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let empty = f.path("empty-folder");
    std::fs::create_dir(&empty).unwrap();
    let o = ftu_infer_command(&["inspect", model.to_str().unwrap()])
        .env_clear()
        .env("PATH", f.path("empty"))
        .env("ORT_DYLIB_PATH", &empty)
        .output()
        .unwrap();
    let err = failure(&o);
    assert!(
        err.contains("empty-folder (a folder without libonnxruntime.so or libonnxruntime.so.1.*)"),
        "{err}"
    );
}
