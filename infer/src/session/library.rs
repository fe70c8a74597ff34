//! Where libonnxruntime is found: `ORT_DYLIB_PATH`, beside the binary, or in a Python's
//! `onnxruntime` package.

use std::path::{Path, PathBuf};

use ftu_formats::dylib::{self, PythonShipped};

use super::RuntimeError;

/// PyPI's `onnxruntime` and `onnxruntime-gpu`: `onnxruntime/capi/libonnxruntime.so.1.x.y`.
pub const PYPI: PythonShipped = PythonShipped {
    package: "onnxruntime",
    subdir: "capi",
};

/// The candidates for libonnxruntime, in order: `ORT_DYLIB_PATH`; the folder of the running
/// binary (and its `lib/`), as in a Kaggle bundle; the `onnxruntime` package of the Python beside
/// the binary (a wheel's install), of the active virtualenv's, then of `python3` on PATH (see
/// [`ftu_formats::dylib`]).
pub fn find_library() -> Result<PathBuf, RuntimeError> {
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        // A folder (onnxruntime's capi/, which holds only libonnxruntime.so.1.x.y): the library in it.
        if let Some(found) = path.is_dir().then(|| library_in(&path)).flatten() {
            return Ok(found);
        }
        looked.push(match path.is_dir() {
            true => format!(
                "ORT_DYLIB_PATH={} (a folder without libonnxruntime.so or libonnxruntime.so.1.*)",
                path.display()
            ),
            false => format!("ORT_DYLIB_PATH={}", path.display()),
        });
    }
    dylib::search(
        &dylib::binary_folders(),
        &dylib::pythons(),
        PYPI,
        library_in,
        &mut looked,
    )
    .map(|found| found.path)
    .ok_or_else(|| RuntimeError::NotFound {
        looked: looked.join(", "),
    })
}

/// `libonnxruntime.so`, or the newest versioned `libonnxruntime.so.1.x.y`, in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let names: &[&str] = if cfg!(target_os = "macos") {
        &["libonnxruntime.dylib"]
    } else if cfg!(windows) {
        &["onnxruntime.dll"]
    } else {
        &["libonnxruntime.so"]
    };
    for name in names {
        let path = dir.join(name);
        if path.is_file() {
            return Some(path);
        }
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so.") || n.starts_with("libonnxruntime.1."))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versioned_library_is_found_when_the_plain_name_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so.1.30.0"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"").unwrap();
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(
            library_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.31.1"))
        );
        std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(library_in(dir.path()), Some(dir.path().join("libonnxruntime.so")));
    }
}
