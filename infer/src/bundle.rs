//! `ftu-infer bundle`: one folder that predicts with no other files — the binary, libonnxruntime
//! (and its CUDA provider with `--gpu`), the ensemble's ONNX files and its manifest rewritten to
//! relative paths, plus a README with the Kaggle notebook cell. Uploaded as a Kaggle dataset, it
//! runs with internet off: the binary finds the library beside itself (`lib/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ftu_formats::manifest::{Manifest, ManifestError, ManifestFile};
use object::elf::FileHeader64;
use object::read::elf::FileHeader;
use object::Endianness;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{out} exists and is not empty: bundle into a new folder")]
    NotEmpty { out: PathBuf },
    #[error(
        "--gpu: no {name} beside {library}; install the GPU build (pip install onnxruntime-gpu==1.31.1, \
         or FTU_ORT_PACKAGE=onnxruntime-gpu with scripts/ort.sh) and point ORT_DYLIB_PATH at its libonnxruntime"
    )]
    NoCudaProvider { name: String, library: PathBuf },
    #[error("{path}: not a 64-bit ELF executable ftu can read ({cause})")]
    NotElf { path: PathBuf, cause: object::read::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |cause| BundleError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

pub struct BundleRequest {
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub gpu: bool,
    /// The ftu-infer binary to ship (the running one, from the CLI).
    pub binary: PathBuf,
    /// The libonnxruntime to ship (the one this machine loads).
    pub library: PathBuf,
}

#[derive(Debug)]
pub struct BundleSummary {
    /// Files written, relative to the bundle folder.
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

/// The CUDA provider libraries ONNX Runtime loads beside libonnxruntime.
pub const CUDA_PROVIDER_LIBRARIES: [&str; 2] =
    ["libonnxruntime_providers_cuda.so", "libonnxruntime_providers_shared.so"];

fn copy(from: &Path, to: &Path, summary: &mut BundleSummary, root: &Path) -> Result<(), BundleError> {
    let bytes = std::fs::copy(from, to).map_err(io(from))?;
    summary.bytes += bytes;
    summary.files.push(to.strip_prefix(root).unwrap_or(to).to_path_buf());
    Ok(())
}

/// Builds the bundle in `out.tmp` and renames it to `out`, so a failure leaves no half bundle.
pub fn bundle(req: &BundleRequest) -> Result<BundleSummary, BundleError> {
    // The manifest must load (every model file exists, every field is valid) before anything.
    Manifest::load(&req.manifest)?;
    if req.out.exists() && std::fs::read_dir(&req.out).map_err(io(&req.out))?.next().is_some() {
        return Err(BundleError::NotEmpty { out: req.out.clone() });
    }
    let mut file = ManifestFile::read(&req.manifest)?;
    let dir = req.manifest.parent().map(Path::to_path_buf).unwrap_or_default();

    let tmp = ftu_formats::atomic::tmp_path(&req.out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let result = build(req, &tmp, &mut file, &dir);
    if result.is_err() {
        // A failed bundle leaves nothing behind.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let mut summary = result?;
    if req.out.exists() {
        std::fs::remove_dir(&req.out).map_err(io(&req.out))?;
    }
    std::fs::rename(&tmp, &req.out).map_err(io(&req.out))?;
    summary.files.sort();
    Ok(summary)
}

fn build(req: &BundleRequest, tmp: &Path, file: &mut ManifestFile, dir: &Path) -> Result<BundleSummary, BundleError> {
    for sub in ["", "lib", "models"] {
        let d = tmp.join(sub);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    let mut summary = BundleSummary {
        files: Vec::new(),
        bytes: 0,
    };

    // Models: copied once each into models/, named group/model position + file name.
    let mut copied: HashMap<PathBuf, String> = HashMap::new();
    for (gi, group) in file.group.iter_mut().enumerate() {
        for (mi, model) in group.model.iter_mut().enumerate() {
            let source = dir.join(&model.path);
            let source = source.canonicalize().map_err(io(&source))?;
            let rel = match copied.get(&source) {
                Some(rel) => rel.clone(),
                None => {
                    let name = source
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let rel = format!("models/g{gi}m{mi}_{name}");
                    copy(&source, &tmp.join(&rel), &mut summary, tmp)?;
                    copied.insert(source.clone(), rel.clone());
                    rel
                }
            };
            model.path = rel.into();
        }
    }
    let manifest_out = tmp.join("manifest.toml");
    file.write(
        &manifest_out,
        &format!(
            "Bundled by ftu-infer from {}; model paths are relative to this file.",
            req.manifest.display()
        ),
    )?;
    summary.files.push("manifest.toml".into());

    // The binary and the runtime.
    let binary = tmp.join("ftu-infer");
    copy(&req.binary, &binary, &mut summary, tmp)?;
    let lib_name = req
        .library
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| "libonnxruntime.so".into());
    copy(&req.library, &tmp.join("lib").join(&lib_name), &mut summary, tmp)?;
    if req.gpu {
        let lib_dir = req.library.parent().unwrap_or(Path::new("."));
        for name in CUDA_PROVIDER_LIBRARIES {
            let from = lib_dir.join(name);
            if !from.is_file() {
                return Err(BundleError::NoCudaProvider {
                    name: name.into(),
                    library: req.library.clone(),
                });
            }
            copy(&from, &tmp.join("lib").join(name), &mut summary, tmp)?;
        }
    }
    let readme = tmp.join("README.md");
    let binary_info = inspect_binary(&req.binary)?.describe();
    std::fs::write(&readme, readme_text(req.gpu, &binary_info)).map_err(io(&readme))?;
    summary.files.push("README.md".into());

    // The bundle's own manifest must load where it is.
    Manifest::load(&manifest_out)?;
    Ok(summary)
}

fn readme_text(gpu: bool, binary_info: &str) -> String {
    let device = if gpu { " --device cuda" } else { "" };
    format!(
        r#"# ftu-infer bundle

Everything needed to predict with this ensemble, with no internet and no other files:

- `ftu-infer` — the binary ({binary_info}); it loads `lib/libonnxruntime*` from beside itself{gpu_line}
- `manifest.toml` — the ensemble (models in `models/`, paths relative to the manifest)

## On Kaggle

1. Upload this folder as a dataset (e.g. `ftu-bundle`).
2. In the notebook (internet off{accel}), add the dataset and the competition data, then run:

```
!cp -r /kaggle/input/ftu-bundle /kaggle/working/ftu && chmod +x /kaggle/working/ftu/ftu-infer
!/kaggle/working/ftu/ftu-infer predict --manifest /kaggle/working/ftu/manifest.toml \
    --data /kaggle/input/hubmap-organ-segmentation --out /kaggle/working/submission.csv{device}
```

Datasets are mounted read-only and may lose the executable bit, hence the copy and `chmod`.
`submission.csv` gets one row per row of the data's `test.csv`, in order.

## Anywhere else

```
./ftu-infer predict --manifest manifest.toml --data DATA --out submission.csv{device}
```
"#,
        gpu_line = if gpu {
            ", with the CUDA provider (`libonnxruntime_providers_cuda.so`; needs CUDA 13 and cuDNN on the machine)"
        } else {
            " (CPU)"
        },
        accel = if gpu { ", GPU accelerator on" } else { "" },
    )
}

// Which ftu-infer a bundle ships: one that runs on old Linux (it asks glibc for no version newer
// than 2.28, manylinux_2_28's floor and that of the onnxruntime and openslide-bin wheels) and
// carries no debug info, as `scripts/portable.sh` builds it; read from the ELF file's version
// requirements (`.gnu.version_r`), as `objdump -T` shows them.

/// The newest glibc a portable binary may ask for.
pub const GLIBC_FLOOR: GlibcVersion = GlibcVersion(2, 28);

/// Where `scripts/portable.sh` puts its ftu-infer, relative to the cargo target folder.
pub const PORTABLE_BUILD: &str = "portable/x86_64-unknown-linux-gnu/dist/ftu-infer";

/// A glibc symbol version, `GLIBC_2.28` as (2, 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32);

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl GlibcVersion {
    /// `GLIBC_2.28` → (2, 28), `GLIBC_2.2.5` → (2, 2); `None` for other names (`GLIBC_PRIVATE`,
    /// `GCC_3.0`).
    pub fn parse(name: &str) -> Option<GlibcVersion> {
        let mut parts = name.strip_prefix("GLIBC_")?.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
        Some(GlibcVersion(major, minor))
    }
}

/// What a binary needs to run and how big it is.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryInfo {
    pub path: PathBuf,
    /// The newest `GLIBC_x.y` it asks for (`None`: none, as for a static binary).
    pub newest_glibc: Option<GlibcVersion>,
    /// Whether it has debug sections or a symbol table.
    pub debug_info: bool,
    pub bytes: u64,
}

impl BinaryInfo {
    /// Runs where glibc 2.28 or newer is, and carries no debug info.
    pub fn portable(&self) -> bool {
        self.newest_glibc.is_none_or(|v| v <= GLIBC_FLOOR) && !self.debug_info
    }

    /// `needs glibc ≥ 2.34, with debug info, 82.1 MB`.
    pub fn describe(&self) -> String {
        format!(
            "{}, {}, {:.1} MB",
            self.newest_glibc
                .map_or("no glibc version needed".to_string(), |v| format!("needs glibc ≥ {v}")),
            if self.debug_info { "with debug info" } else { "stripped" },
            self.bytes as f64 / 1e6
        )
    }
}

/// Reads the glibc versions `path` asks for and whether it carries debug info.
pub fn inspect_binary(path: &Path) -> Result<BinaryInfo, BundleError> {
    let data = std::fs::read(path).map_err(|cause| BundleError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let not_elf = |cause| BundleError::NotElf {
        path: path.to_path_buf(),
        cause,
    };
    let data = &data[..];
    let header = FileHeader64::<Endianness>::parse(data).map_err(not_elf)?;
    let endian = header.endian().map_err(not_elf)?;
    let sections = header.sections(endian, data).map_err(not_elf)?;
    let mut newest = None;
    if let Some((mut needs, link)) = sections.gnu_verneed(endian, data).map_err(not_elf)? {
        let strings = sections.strings(endian, data, link).map_err(not_elf)?;
        while let Some((_, mut aux)) = needs.next().map_err(not_elf)? {
            while let Some(version) = aux.next().map_err(not_elf)? {
                let name = version.name(endian, strings).map_err(not_elf)?;
                if let Some(v) = std::str::from_utf8(name).ok().and_then(GlibcVersion::parse) {
                    newest = newest.max(Some(v));
                }
            }
        }
    }
    let debug_info = sections.iter().any(|s| {
        sections
            .section_name(endian, s)
            .is_ok_and(|n| n.starts_with(b".debug_") || n == b".symtab")
    });
    Ok(BinaryInfo {
        path: path.to_path_buf(),
        newest_glibc: newest,
        debug_info,
        bytes: data.len() as u64,
    })
}

/// The ftu-infer a bundle ships, and a warning when it is not portable.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryChoice {
    pub binary: BinaryInfo,
    pub warning: Option<String>,
}

/// The ftu-infer a bundle ships: `running` when it is portable; else the portable build
/// `scripts/portable.sh` leaves in the cargo target folder `running` was built in
/// (`target/portable/…` for `target/release/ftu-infer`); else `running`, with a warning saying
/// what it needs and how to make a portable one. `inspect` reads a file (the real one:
/// [`inspect_binary`]).
pub fn choose_binary(
    running: &Path,
    inspect: impl Fn(&Path) -> Result<BinaryInfo, BundleError>,
) -> Result<BinaryChoice, BundleError> {
    let here = inspect(running)?;
    if here.portable() {
        return Ok(BinaryChoice {
            binary: here,
            warning: None,
        });
    }
    let portable_build = running
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("target"))
        .join(PORTABLE_BUILD);
    // A portable build older than the running binary may lack what was built since: not taken.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = matches!((modified(&portable_build), modified(running)), (Some(p), Some(r)) if p < r);
    if portable_build.is_file() && !stale {
        let candidate = inspect(&portable_build)?;
        if candidate.portable() {
            return Ok(BinaryChoice {
                binary: candidate,
                warning: None,
            });
        }
    }
    let warning = format!(
        "the bundle's ftu-infer ({}) is this machine's build, {}: it runs only on Linux with glibc {} \
         or newer{}; {} scripts/portable.sh (found then as {}), or run `bundle` with a portable ftu-infer",
        here.path.display(),
        here.describe(),
        here.newest_glibc.unwrap_or(GLIBC_FLOOR),
        if here.newest_glibc.is_some_and(|v| v > GlibcVersion(2, 35)) {
            " (not on Kaggle's notebooks: glibc 2.35)"
        } else {
            ""
        },
        if stale {
            "the portable build there is older than this binary: rerun"
        } else {
            "build a portable one with"
        },
        portable_build.display()
    );
    Ok(BinaryChoice {
        warning: Some(warning),
        binary: here,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_parse_and_order() {
        assert_eq!(GlibcVersion::parse("GLIBC_2.28"), Some(GlibcVersion(2, 28)));
        assert_eq!(GlibcVersion::parse("GLIBC_2.2.5"), Some(GlibcVersion(2, 2)));
        assert_eq!(GlibcVersion::parse("GLIBC_PRIVATE"), None);
        assert_eq!(GlibcVersion::parse("GCC_3.0"), None);
        assert!(GlibcVersion(2, 34) > GLIBC_FLOOR && GlibcVersion(2, 3) < GLIBC_FLOOR);
        assert!(GlibcVersion(2, 9) < GlibcVersion(2, 10), "numeric, not text, order");
    }

    fn info(path: &str, glibc: GlibcVersion, debug_info: bool) -> BinaryInfo {
        BinaryInfo {
            path: path.into(),
            newest_glibc: Some(glibc),
            debug_info,
            bytes: 1,
        }
    }

    /// The running binary when portable > the portable build beside it > the running binary with
    /// a warning naming what it needs and scripts/portable.sh.
    #[test]
    fn the_portable_binary_is_preferred_and_a_local_build_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("target/release/ftu-infer");
        let portable = dir.path().join("target").join(PORTABLE_BUILD);
        let fake = |p: &Path| {
            Ok(if p == portable {
                info("portable", GlibcVersion(2, 28), false)
            } else {
                info("release", GlibcVersion(2, 36), true)
            })
        };
        // No portable build yet: the running one, with the warning.
        let c = choose_binary(&release, fake).unwrap();
        assert_eq!(c.binary.path, PathBuf::from("release"));
        let w = c.warning.unwrap();
        assert!(
            w.contains("glibc 2.36 or newer") && w.contains("not on Kaggle's") && w.contains("scripts/portable.sh"),
            "{w}"
        );
        assert!(w.contains(&portable.display().to_string()), "{w}");
        // The portable build exists: it is taken; a portable running one is shipped as it is.
        std::fs::create_dir_all(portable.parent().unwrap()).unwrap();
        std::fs::write(&portable, b"").unwrap();
        let c = choose_binary(&release, fake).unwrap();
        assert_eq!((c.binary.path, c.warning), (PathBuf::from("portable"), None));
        let c = choose_binary(&portable, fake).unwrap();
        assert_eq!((c.binary.path, c.warning), (PathBuf::from("portable"), None));
        // A portable build older than the running binary is not taken, and the warning says so.
        std::fs::create_dir_all(release.parent().unwrap()).unwrap();
        std::fs::write(&release, b"").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&portable)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let c = choose_binary(&release, fake).unwrap();
        assert_eq!(c.binary.path, PathBuf::from("release"));
        assert!(c
            .warning
            .unwrap()
            .contains("older than this binary: rerun scripts/portable.sh"));
    }

    /// The parser agrees with objdump on this test binary (built on this machine, so it asks for
    /// some GLIBC_2.x), where objdump is installed.
    #[test]
    fn the_newest_glibc_is_what_objdump_shows() {
        let exe = std::env::current_exe().unwrap();
        let got = inspect_binary(&exe).unwrap();
        let newest = got.newest_glibc.expect("a dynamically linked test binary");
        assert!(newest >= GlibcVersion(2, 2), "{newest}");
        let Ok(out) = std::process::Command::new("objdump").arg("-T").arg(&exe).output() else {
            eprintln!("no objdump: the parser's result is not cross-checked");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let want = text
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .filter_map(GlibcVersion::parse)
            .max();
        assert_eq!(Some(newest), want);
        let text_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(text_file.path(), b"#!/bin/sh\n").unwrap();
        assert!(matches!(
            inspect_binary(text_file.path()),
            Err(BundleError::NotElf { .. })
        ));
    }
}
