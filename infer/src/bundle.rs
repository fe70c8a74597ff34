//! `ftu-infer bundle`: one folder that predicts with no other files — the binary, libonnxruntime
//! (and its CUDA provider with `--gpu`), the ensemble's ONNX files and its manifest rewritten to
//! relative paths, plus a README with the Kaggle notebook cell. Uploaded as a Kaggle dataset, it
//! runs with internet off: the binary finds the library beside itself (`lib/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ftu_formats::manifest::{Manifest, ManifestError, ManifestFile};

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
    std::fs::write(&readme, readme_text(req.gpu)).map_err(io(&readme))?;
    summary.files.push("README.md".into());

    // The bundle's own manifest must load where it is.
    Manifest::load(&manifest_out)?;
    Ok(summary)
}

fn readme_text(gpu: bool) -> String {
    let device = if gpu { " --device cuda" } else { "" };
    format!(
        r#"# ftu-infer bundle

Everything needed to predict with this ensemble, with no internet and no other files:

- `ftu-infer` — the binary; it loads `lib/libonnxruntime*` from beside itself{gpu_line}
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
