//! The ensemble manifest: TOML parsed and checked (models resolved in a folder that holds a few
//! model files), and a parsed file written back and parsed again unchanged.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use ftu_formats::manifest::file::ManifestFile;
use ftu_formats::manifest::Manifest;
use ftu_fuzz::{audited, budget, name};
use libfuzzer_sys::fuzz_target;

/// A folder with the model files the seeds name (`a.onnx`, `b.onnx`, `fold0/model.onnx`).
fn models_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ftu-fuzz-manifest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fold0")).expect("temp folder");
        for file in ["a.onnx", "b.onnx", "fold0/model.onnx"] {
            std::fs::write(dir.join(file), b"model").expect("temp file");
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = models_dir();
    audited(budget(data.len(), 0), || {
        let Ok(file) = ManifestFile::parse(text, name()) else {
            assert!(Manifest::parse(text, name(), dir).is_err());
            return;
        };
        if let Ok(toml) = file.to_toml("fuzzed") {
            let again = ManifestFile::parse(&toml, name()).expect("its own TOML parses");
            assert_eq!(again, file);
        }
        if let Ok(manifest) = Manifest::check(file, name(), dir) {
            assert!(!manifest.groups.is_empty(), "a checked manifest serves something");
        }
    })
});
