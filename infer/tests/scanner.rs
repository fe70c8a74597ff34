//! Scanner files with no test.csv, made by `scripts/scanner-slides.py` (tifffile + imagecodecs):
//! an Aperio SVS with JPEG 2000 tiles (only OpenSlide decodes it), one with JPEG tiles and a
//! generic pyramidal TIFF (both readers), and an OME-TIFF. OpenSlide and ftu's reader return the same pixels where both
//! read a file, and the generated pixels; `predict --slides DIR --organ kidney` takes each
//! slide's µm per pixel from its file and writes GeoJSON and masks that match the truth; without
//! the OpenSlide library the SVS is an error saying how to install it and the rest still runs.
//! Needs libonnxruntime, OpenSlide (PyPI's openslide-bin in `.venv`, found through
//! VIRTUAL_ENV) and a Python with tifffile and imagecodecs (`.venv`, or FTU_PYTHON);
//! scripts/test.sh installs them.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ftu_formats::mask::rle;
use ftu_formats::schema;
use ftu_formats::slide::openslide::OpenSlide;
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::tiff::TiffRegions;
use ftu_formats::slide::{RgbImage, SlideLimits};
use ftu_infer::slides::SlideResultRow;
use ftu_onnx::samples::{self, InputShape};

use common::{ftu_infer, ftu_infer_with, text};

const W: usize = 1536;
const H: usize = 1024;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FTU_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// The three files, the truth and the generated pixels, in a temporary folder.
fn scanner_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/scanner-slides.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(dir.path().join("scans"))
        .args(["--width", &W.to_string(), "--height", &H.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "scripts/scanner-slides.py needs tifffile and imagecodecs (pip install tifffile imagecodecs; scripts/test.sh does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pixels and truth live beside the slides, not among them.
    for f in ["pixels.npy", "truth.csv"] {
        std::fs::rename(dir.path().join("scans").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// A `.npy` of H×W×3 u8 (numpy's version 1 header) as an image.
fn read_npy(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data = bytes[10 + header..].to_vec();
    assert_eq!(data.len(), W * H * 3);
    RgbImage {
        width: W,
        height: H,
        data,
    }
}

#[test]
fn scanner_files_read_alike_and_predict_without_test_csv() {
    ftu_formats::slide::openslide::available()
        .expect("OpenSlide (pip install openslide-bin into .venv, with VIRTUAL_ENV set; scripts/test.sh does)");
    let dir = scanner_files();
    let scans = dir.path().join("scans");
    let pixels = read_npy(&dir.path().join("pixels.npy"));

    // The SVS: ftu's reader refuses its codec by name; OpenSlide reads the generated pixels
    // (JPEG 2000 here is lossless), and SlideSource goes to OpenSlide by itself.
    let svs = scans.join("aperio.svs");
    let refused = TiffRegions::open(&svs, 0).err().expect("JPEG 2000 is not ftu's");
    assert!(refused.to_string().contains("33005 (JPEG 2000"), "{refused}");
    let o = OpenSlide::open(&svs).unwrap();
    assert_eq!((o.width, o.height, o.levels.len()), (W, H, 2));
    assert_eq!(o.pixel_size(), Some(0.499));
    assert_eq!(o.region(0, 0, W, H).unwrap(), pixels);
    let mut source = SlideSource::open(&svs, SlideLimits::default()).unwrap();
    assert!(matches!(source, SlideSource::OpenSlide(_)));
    assert_eq!(
        source.region(300, 200, 64, 48).unwrap(),
        o.region(300, 200, 64, 48).unwrap()
    );

    // The generic pyramid: both readers, the same pixels at both levels.
    let generic = scans.join("generic.tif");
    let mut mine = TiffRegions::open(&generic, 0).unwrap();
    let theirs = OpenSlide::open(&generic).unwrap();
    assert_eq!(mine.whole(SlideLimits::default()).unwrap(), pixels);
    assert_eq!(theirs.region(0, 0, W, H).unwrap(), pixels);
    let mut level = TiffRegions::open_page(&generic, 1, 0).unwrap();
    assert_eq!(
        level.region(10, 20, 100, 80).unwrap(),
        theirs.read_level(1, 40, 80, 100, 80).unwrap()
    );
    // The JPEG SVS: both readers, within JPEG decoders' rounding of each other (libjpeg's and
    // zune-jpeg's IDCT and upsampling differ by a level here and there).
    let jpeg = scans.join("aperio-jpeg.svs");
    let mine = TiffRegions::open(&jpeg, 0)
        .unwrap()
        .whole(SlideLimits::default())
        .unwrap();
    let theirs = OpenSlide::open(&jpeg).unwrap().region(0, 0, W, H).unwrap();
    let diffs: Vec<u8> = mine
        .data
        .iter()
        .zip(&theirs.data)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().copied().max().unwrap_or(0);
    let far = diffs.iter().filter(|&&d| d > 2).count();
    assert!(
        mean < 0.5 && far * 10_000 < diffs.len(),
        "JPEG SVS: mean difference {mean}, largest {max}, {far} samples more than 2 apart"
    );
    // The OME-TIFF: ftu's reader.
    let ome = ftu_formats::read_slide(&scans.join("ome.ome.tif"), SlideLimits::default()).unwrap();
    assert_eq!(ome, pixels);

    // predict --slides: a tiled model at a quarter of the resolution (low green marks the
    // FTUs), pixel sizes from the files, GeoJSON and masks.
    let model = samples::pixel_linear([0.0, -20.0, 0.0], 8.0, InputShape::default(), "o").unwrap();
    ftu_onnx::write(&model, &dir.path().join("green.onnx")).unwrap();
    let manifest = dir.path().join("m.toml");
    std::fs::write(
        &manifest,
        "[thresholds]\ndefault = 0.5\n[[group]]\nsize = 64\nmode = \"tiles\"\noverlap = 0.5\nscale = 0.25\nbatch = 4\n\
         [[group.model]]\npath = \"green.onnx\"\nnorm = \"unit\"\n",
    )
    .unwrap();
    let out = dir.path().join("slides.csv");
    let (geojson, masks) = (dir.path().join("gj"), dir.path().join("masks"));
    let args = |out: &Path| -> Vec<String> {
        [
            "predict",
            "--manifest",
            manifest.to_str().unwrap(),
            "--slides",
            scans.to_str().unwrap(),
            "--organ",
            "kidney",
            "--out",
            out.to_str().unwrap(),
            "--geojson",
            geojson.to_str().unwrap(),
            "--masks",
            masks.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let a = args(&out);
    let o = ftu_infer(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let rows: Vec<SlideResultRow> = csv::Reader::from_path(&out)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    let got: Vec<(&str, f64)> = rows.iter().map(|r| (r.id.as_str(), r.pixel_size)).collect();
    assert_eq!(
        got,
        [
            ("aperio-jpeg", 0.499),
            ("aperio", 0.499),
            ("generic", 0.25),
            ("ome", 0.5)
        ]
    );
    let truth = schema::read_submission(&dir.path().join("truth.csv")).unwrap();
    let truth = rle::decode(&truth[0].rle, H, W).unwrap();
    for r in &rows {
        let mask = rle::decode(&r.rle, H, W).unwrap();
        let dice = ftu_formats::dice::dice_masks(&mask, &truth);
        assert!(dice > 0.95, "{}: Dice {dice}", r.id);
        assert!(geojson.join(format!("{}.geojson", r.id)).is_file(), "{} GeoJSON", r.id);
        // The mask TIFF is a pyramid OpenSlide opens at scale: the slide's pixel size, and
        // level 1 (half size) samples the mask at each 2×2 block's centre.
        let tiff = OpenSlide::open(&masks.join(format!("{}.tiff", r.id))).unwrap();
        let sizes: Vec<(usize, usize)> = tiff.levels.iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(sizes, [(W, H), (W / 2, H / 2), (W / 4, H / 4)], "{} mask levels", r.id);
        let mpp: f64 = tiff
            .property("openslide.mpp-x")
            .expect("openslide.mpp-x")
            .parse()
            .unwrap();
        assert!(
            (mpp - r.pixel_size).abs() < 1e-3,
            "{}: mask at {mpp} µm per pixel",
            r.id
        );
        let half = tiff.read_level(1, 0, 0, W / 2, H / 2).unwrap();
        let mut differ = 0;
        for y in 0..H / 2 {
            for x in 0..W / 2 {
                let on = mask.get(2 * y + 1, 2 * x + 1);
                differ += usize::from(half.pixel(x, y) != if on { [255; 3] } else { [0; 3] });
            }
        }
        assert_eq!(differ, 0, "{}: level 1 of the mask TIFF", r.id);
    }
    // The pyramidal files' windows came from their 4× level; the OME-TIFF's SubIFDs are not used.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("slides.report.json")).unwrap()).unwrap();
    let levels: Vec<usize> = report["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["read_levels"].as_array().unwrap().len())
        .collect();
    assert_eq!(levels, [1, 1, 1, 0]);

    // Without OpenSlide: the SVS is an error naming the library and how to install it; the
    // others still predict, and inspect reads every file's header.
    let o = ftu_infer_with(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("FTU_OPENSLIDE", OsStr::new("/nonexistent/libopenslide.so"))],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("aperio") && err.contains("FTU_OPENSLIDE") && err.contains("pip install openslide-bin"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(&svs).unwrap();
    let o = ftu_infer_with(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("FTU_OPENSLIDE", OsStr::new("/nonexistent/libopenslide.so"))],
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// `inspect` of a slide says which OpenSlide it loaded: PyPI's openslide-bin (`libopenslide.so.1`)
/// found through the virtualenv's Python with nothing else set, and the same file found in
/// `lib/` beside a copied binary (a bundle's layout) with no Python at all.
#[test]
fn openslide_is_found_in_the_virtualenv_and_beside_the_binary() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = repo.join(".venv");
    let dir = tempfile::tempdir().unwrap();
    let slide = dir.path().join("s.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]))
        .save(&slide)
        .unwrap();
    let inspect = |exe: &Path, env: &[(&str, &std::ffi::OsStr)]| {
        let out = Command::new(exe)
            .args(["inspect", slide.to_str().unwrap()])
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let empty = dir.path().join("empty");
    let out = inspect(
        Path::new(env!("CARGO_BIN_EXE_ftu-infer")),
        &[("VIRTUAL_ENV", venv.as_os_str()), ("PATH", empty.as_os_str())],
    );
    let line = out.lines().find(|l| l.starts_with("openslide: ")).unwrap_or_default();
    assert!(
        line.starts_with("openslide: 4.")
            && line.contains("openslide_bin/libopenslide.so.1")
            && line.contains("(the openslide_bin package of ")
            && line.contains(".venv/bin/python)"),
        "{out}"
    );
    let library = line.split(" from ").nth(1).unwrap().split(" (").next().unwrap();

    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("lib")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_ftu-infer"), bundle.join("ftu-infer")).unwrap();
    std::fs::copy(library, bundle.join("lib/libopenslide.so.1")).unwrap();
    let out = inspect(&bundle.join("ftu-infer"), &[("PATH", empty.as_os_str())]);
    let want = format!(
        "from {} (beside the binary)",
        bundle.join("lib/libopenslide.so.1").display()
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("openslide: 4.") && l.ends_with(&want)),
        "{out}"
    );

    // Nowhere ftu looks (unless the system has Debian's libopenslide0): inspect still reads the
    // PNG and says how to install OpenSlide.
    let out = inspect(
        Path::new(env!("CARGO_BIN_EXE_ftu-infer")),
        &[("PATH", empty.as_os_str())],
    );
    assert!(
        out.contains("(the system's library path)")
            || (out.contains("openslide: none (OpenSlide is not installed")
                && out.contains("pip install openslide-bin")),
        "{out}"
    );
}
