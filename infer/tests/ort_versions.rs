//! ftu-infer on the oldest ONNX Runtime it is meant to run on, next to the one it ships with:
//! a Kaggle GPU whose driver predates CUDA 13 needs an older onnxruntime-gpu build (CUDA 12),
//! and a bundle takes whatever libonnxruntime it is given. The same predict, on both, must give
//! the same submission byte for byte.
//!
//! Needs two libraries: ORT_DYLIB_PATH (or the `.venv` onnxruntime 1.31.1) and FTU_ORT_OLDEST,
//! libonnxruntime from the onnxruntime 1.22.0 wheel. scripts/test.sh sets both.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use ftu_formats::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
use ftu_onnx::samples;

use common::{ftu_infer_with, text};

fn oldest() -> PathBuf {
    let path = std::env::var_os("FTU_ORT_OLDEST")
        .map(PathBuf::from)
        .expect("FTU_ORT_OLDEST: the onnxruntime 1.22.0 library (scripts/test.sh downloads it and sets this)");
    assert!(path.is_file(), "FTU_ORT_OLDEST={} is not a file", path.display());
    path
}

/// ORT_DYLIB_PATH naming `library`, or nothing (the default library) when `None`.
fn library_env(library: Option<&Path>) -> Option<(&'static str, &OsStr)> {
    library.map(|lib| ("ORT_DYLIB_PATH", lib.as_os_str()))
}

#[test]
fn the_oldest_supported_onnx_runtime_predicts_the_same_submission() {
    let old = oldest();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two conv-nets in one group, flips TTA, three slides of different sizes.
    for (name, seed) in [("a.onnx", 1), ("b.onnx", 2)] {
        ftu_onnx::graph::write(&samples::conv_net(8, 2, seed).unwrap(), &d.join(name)).unwrap();
    }
    std::fs::write(
        d.join("ensemble.toml"),
        "[tta]\nmode = \"flips\"\n[thresholds]\ndefault = 0.5\n[[group]]\nsize = 64\n\
         [[group.model]]\npath = \"a.onnx\"\nnorm = \"imagenet\"\n\
         [[group.model]]\npath = \"b.onnx\"\nnorm = \"imagenet\"\n",
    )
    .unwrap();
    std::fs::create_dir(d.join("test_images")).unwrap();
    let mut csv = String::from("id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n");
    for (i, (w, h)) in [(96u32, 80u32), (120, 120), (70, 100)].into_iter().enumerate() {
        let data: Vec<u8> = (0..w * h * 3)
            .map(|k| ((k * 37 + i as u32 * 101) % 251) as u8)
            .collect();
        let spec = TiffSpec {
            width: w,
            height: h,
            samples: Samples::Rgb8,
            chunking: Chunking::Strips { rows: 16 },
            compression: Compression::Lzw,
            bigtiff: false,
        };
        write_tiff_image(&d.join(format!("test_images/s{i}.tiff")), &spec, &data).unwrap();
        csv.push_str(&format!("s{i},kidney,HPA,{h},{w},0.4,4\n"));
    }
    std::fs::write(d.join("test.csv"), csv).unwrap();

    let run = |library: Option<&Path>, out: &str| {
        let o = ftu_infer_with(
            &[
                "predict",
                "--manifest",
                d.join("ensemble.toml").to_str().unwrap(),
                "--data",
                d.to_str().unwrap(),
                "--out",
                d.join(out).to_str().unwrap(),
                "--threads",
                "1",
            ],
            library_env(library).as_slice(),
        );
        assert!(o.status.success(), "{}", text(&o));
        (text(&o), std::fs::read(d.join(out)).unwrap())
    };
    let (new_log, new_sub) = run(None, "new.csv");
    let (old_log, old_sub) = run(Some(&old), "old.csv");
    assert!(
        old_log.contains(&old.display().to_string()),
        "the run says which library: {old_log}"
    );
    assert!(!new_log.contains(&old.display().to_string()), "{new_log}");
    assert_eq!(
        String::from_utf8_lossy(&old_sub).lines().count(),
        4,
        "a header and three rows"
    );
    // Not a run of empty masks: the conv-nets give some foreground somewhere.
    assert!(String::from_utf8_lossy(&new_sub)
        .lines()
        .skip(1)
        .any(|l| !l.ends_with(',')));
    assert_eq!(old_sub, new_sub, "the submissions differ between the two libraries");

    // `inspect` reads the opset from the file, the same on both.
    for library in [None, Some(old.as_path())] {
        let o = ftu_infer_with(
            &["inspect", d.join("a.onnx").to_str().unwrap()],
            library_env(library).as_slice(),
        );
        assert!(o.status.success(), "{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("opset: 17"), "{}", text(&o));
    }
}
