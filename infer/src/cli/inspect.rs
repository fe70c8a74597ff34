//! `ftu-infer inspect`: what ONNX Runtime sees in a model, what ftu reads in a slide.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use crate::cli::runtime::RuntimeArgs;
use crate::session::{ModelInfo, Runtime, ThreadPool};

#[derive(Args)]
pub struct InspectArgs {
    /// ONNX models (inputs, outputs, opset, metadata), or slides (TIFF/SVS/OME-TIFF, PNG, JPEG,
    /// OpenSlide's formats: size, pyramid levels, µm per pixel and where that was read,
    /// objective power); each in turn.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

impl InspectArgs {
    /// Each file in turn; one that cannot be inspected is reported and the rest go on (the
    /// command then fails).
    pub fn run(&self) -> Result<()> {
        let files = &self.files[..];
        if let [file] = files {
            return inspect_one(file, &mut None);
        }
        let mut runtime = None;
        let mut failed = 0;
        for (i, file) in files.iter().enumerate() {
            if i > 0 {
                println!();
            }
            if let Err(e) = inspect_one(file, &mut runtime) {
                failed += 1;
                let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                eprintln!("error: {}", causes.join(": "));
            }
        }
        if failed > 0 {
            bail!("{failed} of {} files could not be inspected", files.len());
        }
        Ok(())
    }
}

/// One file: a slide, an ONNX model (through `runtime`, loaded on first use), or an error
/// saying it is neither.
fn inspect_one(path: &Path, runtime: &mut Option<Runtime>) -> Result<()> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    if path.is_dir() {
        bail!(
            "{} is a folder; inspect takes files (a model or a slide)",
            path.display()
        );
    }
    if crate::slides::is_slide(path) {
        return inspect_slide(path);
    }
    // An ONNX model is a protobuf that imports an opset; anything else never reaches ONNX Runtime.
    if !matches!(crate::session::default_opset(path), Ok(Some(_))) {
        bail!(
            "{}: not a model or a slide (neither ONNX nor TIFF, SVS, PNG, JPEG or a format OpenSlide reads)",
            path.display()
        );
    }
    if runtime.is_none() {
        *runtime = Some(
            RuntimeArgs {
                device: "cpu".into(),
                allow_cpu_fallback: false,
                threads: Some(1),
                spin: None,
                thread_pool: ThreadPool::PerSession,
                cuda_conv_search: None,
                cuda_memory_limit_mib: None,
                cuda_tf32: None,
            }
            .load()?,
        );
    }
    let session = runtime.as_ref().expect("loaded above").session(path)?;
    println!("{}", path.display());
    print!("{}", ModelInfo::of(&session, path).report());
    Ok(())
}

fn inspect_slide(path: &Path) -> Result<()> {
    let meta = ftu_formats::slide::meta::read_meta(path)?;
    println!("{}", path.display());
    println!("format: {}, {}×{} pixels", meta.format, meta.width, meta.height);
    match meta.pixel_size {
        Some((um, from)) => println!(
            "pixel size: {um} µm ({})",
            serde_json::to_value(from)?.as_str().unwrap_or("")
        ),
        None => println!("pixel size: not stated (give it with predict --slides-meta or --pixel-size)"),
    }
    if let Some(mag) = meta.objective_power {
        println!("objective power: {mag}×");
    }
    for l in &meta.levels {
        let (dx, _) = l.downsample(meta.width, meta.height);
        println!("level (page {}): {}×{}, downsample {dx:.2}", l.page, l.width, l.height);
    }
    if let Some(d) = &meta.description {
        let short: String = d.chars().take(200).collect();
        println!("description: {}", short.replace(['\r', '\n'], " "));
    }
    // Which OpenSlide reads the formats ftu's reader does not (loaded now if not yet).
    match ftu_formats::slide::openslide::loaded() {
        Ok(l) => println!("openslide: {} from {} ({})", l.version, l.path.display(), l.origin),
        Err(e) => println!("openslide: none ({e})"),
    }
    Ok(())
}
