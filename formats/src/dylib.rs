//! Where ftu looks for the shared libraries it loads at run time without linking them (ONNX
//! Runtime, OpenSlide): the running binary's folder and its `lib/` (a bundle), then the Python
//! package pip installs the library with (`onnxruntime`, `openslide-bin`) in the active
//! virtualenv's Python, then in `python3` and `python` on PATH. Before the virtualenv's, the
//! Python beside the binary is asked: a wheel installs the binary in an environment's `bin/`,
//! next to that environment's `python`, activated or not. Each caller puts its own variable
//! (`ORT_DYLIB_PATH`, `FTU_OPENSLIDE`) before these places and the system's loader after them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A library that pip installs inside a Python package.
#[derive(Debug, Clone, Copy)]
pub struct PythonShipped {
    /// The import name of the package: `onnxruntime`, `openslide_bin`.
    pub package: &'static str,
    /// The folder within the package that holds the library (`capi`), or `""`.
    pub subdir: &'static str,
}

/// Where a library was found, said the way a person would look for it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// In the running binary's folder, or its `lib/`.
    BesideBinary,
    /// In a Python package, found by asking this Python.
    Python { package: &'static str, python: PathBuf },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BesideBinary => write!(f, "beside the binary"),
            Origin::Python { package, python } => write!(f, "the {package} package of {}", python.display()),
        }
    }
}

/// A library file and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub origin: Origin,
}

/// The folders beside the running binary that hold a bundle's libraries: its own and its `lib/`.
pub fn binary_folders() -> Vec<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .map(|dir| vec![dir.clone(), dir.join("lib")])
        .unwrap_or_default()
}

/// The Pythons asked, in order: the one beside the running binary (`pip install ftu-infer` puts
/// the binary in the environment's `bin/`, next to its `python`, whether or not the environment
/// is activated), the active virtualenv's (`$VIRTUAL_ENV/bin/python`), then `python3` and
/// `python` on PATH.
pub fn pythons() -> Vec<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("python")))
        .filter(|p| p.is_file());
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin").join("python"));
    beside
        .into_iter()
        .chain(venv)
        .chain(["python3", "python"].map(PathBuf::from))
        .collect()
}

/// The first library `file_in` finds in `folders` (as [`Origin::BesideBinary`]), then in the
/// package folder of each of `pythons` that has the package. Every place looked at without
/// success is added to `looked`.
pub fn search(
    folders: &[PathBuf],
    pythons: &[PathBuf],
    shipped: PythonShipped,
    file_in: impl Fn(&Path) -> Option<PathBuf>,
    looked: &mut Vec<String>,
) -> Option<Found> {
    for dir in folders {
        if let Some(path) = file_in(dir) {
            return Some(Found {
                path,
                origin: Origin::BesideBinary,
            });
        }
        looked.push(dir.display().to_string());
    }
    let mut asked = false;
    for python in pythons {
        let Some(dir) = package_folder(python, shipped.package) else {
            continue;
        };
        asked = true;
        let dir = if shipped.subdir.is_empty() {
            dir
        } else {
            dir.join(shipped.subdir)
        };
        if let Some(path) = file_in(&dir) {
            return Some(Found {
                path,
                origin: Origin::Python {
                    package: shipped.package,
                    python: python.clone(),
                },
            });
        }
        looked.push(dir.display().to_string());
    }
    if !asked {
        looked.push(format!(
            "the {} package of {}",
            shipped.package,
            pythons
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

/// The folder of `package` as `python` imports it, without importing it (so neither ONNX
/// Runtime nor OpenSlide is loaded into Python to answer); `None` when `python` cannot be run
/// or has no such package.
pub fn package_folder(python: &Path, package: &str) -> Option<PathBuf> {
    let code = format!(
        "import importlib.util as u; s = u.find_spec({package:?}); \
         print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"
    );
    let out = Command::new(python)
        .args(["-c", &code])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The first of `names` that is a file in `dir`.
pub fn first_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn fake_python(dir: &Path, prints: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("python");
        std::fs::write(&path, format!("#!/bin/sh\necho '{}'\n", prints.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    const SHIPPED: PythonShipped = PythonShipped {
        package: "openslide_bin",
        subdir: "",
    };

    fn openslide_in(dir: &Path) -> Option<PathBuf> {
        first_file(dir, &["libopenslide.so.1", "libopenslide.so.0"])
    }

    #[test]
    fn so_1_is_taken_before_so_0() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(openslide_in(dir.path()), None);
        std::fs::write(dir.path().join("libopenslide.so.0"), b"").unwrap();
        assert_eq!(openslide_in(dir.path()), Some(dir.path().join("libopenslide.so.0")));
        std::fs::write(dir.path().join("libopenslide.so.1"), b"").unwrap();
        assert_eq!(openslide_in(dir.path()), Some(dir.path().join("libopenslide.so.1")));
    }

    /// The binary's folders come first; then the package folder a Python names; a Python that
    /// cannot run is passed over; every miss is listed.
    #[cfg(unix)]
    #[test]
    fn folders_then_the_package_of_the_first_python_that_has_it() {
        let root = tempfile::tempdir().unwrap();
        let (bin, package, tools) = (
            root.path().join("bin"),
            root.path().join("pkg"),
            root.path().join("tools"),
        );
        for d in [&bin, &package, &tools] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(package.join("libopenslide.so.1"), b"").unwrap();
        let python = fake_python(&tools, &package);
        let missing = root.path().join("no-python");
        let folders = [bin.clone(), bin.join("lib")];

        let mut looked = Vec::new();
        let found = search(
            &folders,
            &[missing.clone(), python.clone()],
            SHIPPED,
            openslide_in,
            &mut looked,
        );
        assert_eq!(
            found,
            Some(Found {
                path: package.join("libopenslide.so.1"),
                origin: Origin::Python {
                    package: "openslide_bin",
                    python: python.clone()
                },
            })
        );
        assert_eq!(
            looked,
            [bin.display().to_string(), bin.join("lib").display().to_string()]
        );

        std::fs::create_dir_all(bin.join("lib")).unwrap();
        std::fs::write(bin.join("lib/libopenslide.so.1"), b"").unwrap();
        let found = search(&folders, &[python], SHIPPED, openslide_in, &mut Vec::new()).unwrap();
        assert_eq!(
            (found.path, found.origin),
            (bin.join("lib/libopenslide.so.1"), Origin::BesideBinary)
        );

        let mut looked = Vec::new();
        assert_eq!(search(&[], &[missing], SHIPPED, openslide_in, &mut looked), None);
        assert!(looked[0].contains("the openslide_bin package of"), "{looked:?}");
    }
}
