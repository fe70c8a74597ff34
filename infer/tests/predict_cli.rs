//! `ftu-infer predict` and `inspect` as a user runs them, on a small hand-made Kaggle folder and a
//! model whose output is the red channel, so every expected mask is known.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ftu_formats::mask::rle;
use ftu_formats::mask::Mask;
use ftu_formats::organ::{DataSource, Organ};
use ftu_formats::schema::{self, SubmissionRow, TestRow};
use ftu_formats::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
use ftu_formats::slide::RgbImage;
use ftu_onnx::samples::{self, InputShape};

use common::{failure, ftu_infer, ftu_infer_command, predict_args, text};

const SIDE: usize = 64;

/// Red rises left to right by 4 per column; green and blue vary so nothing else can pass for red.
fn gradient_slide(seed: u8) -> RgbImage {
    let mut img = RgbImage::new(SIDE, SIDE);
    for (i, p) in img.data.chunks_exact_mut(3).enumerate() {
        let (y, x) = (i / SIDE, i % SIDE);
        p.copy_from_slice(&[(x * 4) as u8, (y * 3) as u8 ^ seed, 255 - (x + y) as u8]);
    }
    img
}

struct Folder {
    dir: tempfile::TempDir,
    rows: Vec<TestRow>,
}

impl Folder {
    fn new(ids: &[(&str, Organ, DataSource)]) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("test_images")).unwrap();
        let mut rows = Vec::new();
        let mut truth = Vec::new();
        for (i, (id, organ, source)) in ids.iter().enumerate() {
            let img = gradient_slide(i as u8);
            let spec = TiffSpec {
                width: SIDE as u32,
                height: SIDE as u32,
                samples: Samples::Rgb8,
                chunking: Chunking::Strips { rows: 16 },
                compression: Compression::Lzw,
                bigtiff: false,
            };
            write_tiff_image(
                &dir.path().join("test_images").join(format!("{id}.tiff")),
                &spec,
                &img.data,
            )
            .unwrap();
            rows.push(TestRow {
                id: id.to_string(),
                organ: *organ,
                data_source: *source,
                img_height: SIDE as u32,
                img_width: SIDE as u32,
                pixel_size: 0.4,
                tissue_thickness: 4.0,
            });
            truth.push(SubmissionRow {
                id: id.to_string(),
                rle: "1 100".into(),
            });
        }
        schema::write_rows(&dir.path().join("test.csv"), &rows).unwrap();
        schema::write_rows(&dir.path().join("truth.csv"), &truth).unwrap();
        let model = samples::pixel_linear([1.0, 0.0, 0.0], 0.0, InputShape::default(), "logits").unwrap();
        ftu_onnx::write(&model, &dir.path().join("red.onnx")).unwrap();
        Folder { dir, rows }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn manifest(&self, extra: &str) -> PathBuf {
        let path = self.path("ensemble.toml");
        let text = format!(
            "{extra}\n[[group]]\nsize = {SIDE}\n[[group.model]]\npath = \"red.onnx\"\nnorm = \"unit\"\nactivation = \"none\"\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn predict(&self, manifest: &Path, extra: &[&str]) -> Output {
        let out = self.path("sub.csv");
        let mut args = predict_args(manifest, self.dir.path(), &out);
        args.extend_from_slice(extra);
        ftu_infer(&args)
    }
}

/// The mask of red/255 > t on a gradient slide: columns whose red exceeds t·255.
fn expected_mask(t: f32) -> Mask {
    let img = gradient_slide(0);
    let data = img
        .data
        .chunks_exact(3)
        .map(|p| u8::from(p[0] as f32 / 255.0 > t))
        .collect();
    Mask::from_row_major(SIDE, SIDE, data).unwrap()
}

const THRESHOLDS: &str = "[thresholds]\ndefault = 0.5\nkidney = 0.3\nlung = 0.6\n[thresholds.hubmap]\nlung = 0.1\n";

#[test]
fn predict_writes_one_row_per_id_in_order_with_per_organ_and_source_thresholds() {
    let f = Folder::new(&[
        ("9", Organ::Lung, DataSource::Hubmap),
        ("2", Organ::Kidney, DataSource::Hpa),
        ("5", Organ::Lung, DataSource::Hpa),
        ("1", Organ::Spleen, DataSource::Hubmap),
    ]);
    let manifest = f.manifest(&format!("[tta]\nmode = \"d4\"\n{THRESHOLDS}"));
    let probs = f.path("probs");
    let overlays = f.path("overlays");
    let o = f.predict(
        &manifest,
        &[
            "--probs",
            probs.to_str().unwrap(),
            "--overlays",
            overlays.to_str().unwrap(),
            "--threads",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("4 rows, 4 predicted, 0 failed with empty masks"),
        "{stdout}"
    );
    for stage in ["read", "resize", "model", "resize back", "threshold+rle"] {
        assert!(stdout.contains(stage), "stage {stage} in {stdout}");
    }
    let sub = schema::read_submission(&f.path("sub.csv")).unwrap();
    let ids: Vec<&str> = sub.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["9", "2", "5", "1"], "test.csv order");
    let thresholds = [0.1, 0.3, 0.6, 0.5];
    for (row, t) in sub.iter().zip(thresholds) {
        let got = rle::decode(&row.rle, SIDE, SIDE).unwrap();
        assert_eq!(got, expected_mask(t), "id {} at threshold {t}", row.id);
    }
    // The probability PNG is round(p·255): the red channel itself.
    let png = image::open(probs.join("2.png")).unwrap().to_luma8();
    assert_eq!(png.dimensions(), (SIDE as u32, SIDE as u32));
    assert!(png.enumerate_pixels().all(|(x, _, v)| v.0[0] as u32 == x * 4));
    for row in &f.rows {
        assert!(overlays.join(format!("{}.png", row.id)).is_file());
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("sub.report.json")).unwrap()).unwrap();
    assert_eq!(report["slides"], 4);
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0);

    // ONNX Runtime's threads not spinning changes when they run, not what they compute.
    let spun = std::fs::read(f.path("sub.csv")).unwrap();
    let o = f.predict(&manifest, &["--spin", "off"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(f.path("sub.csv")).unwrap(), spun);
    // Nor does one thread pool for all sessions instead of one each.
    let o = f.predict(&manifest, &["--thread-pool", "shared", "--threads", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(f.path("sub.csv")).unwrap(), spun);
    let o = f.predict(&manifest, &["--thread-pool", "global"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected per-session or shared"),
        "{}",
        text(&o)
    );
    let o = f.predict(&manifest, &["--spin", "sometimes"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected on or off"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_bad_slide_fails_the_run_and_writes_nothing_unless_skipped() {
    let f = Folder::new(&[
        ("1", Organ::Kidney, DataSource::Hpa),
        ("2", Organ::Kidney, DataSource::Hpa),
        ("3", Organ::Kidney, DataSource::Hpa),
    ]);
    std::fs::write(f.path("test_images/2.tiff"), b"II*\0 truncated").unwrap();
    std::fs::remove_file(f.path("test_images/3.tiff")).unwrap();
    let manifest = f.manifest(THRESHOLDS);
    let o = f.predict(&manifest, &[]);
    let err = failure(&o);
    assert!(err.contains("slide 2") && err.contains("--on-error skip"), "{err}");
    assert!(!f.path("sub.csv").exists(), "no partial submission");

    let o = f.predict(&manifest, &["--on-error", "skip"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("3 rows, 1 predicted, 2 failed with empty masks"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed 2:") && stdout.contains("failed 3: no image"),
        "{stdout}"
    );
    let sub = schema::read_submission(&f.path("sub.csv")).unwrap();
    assert_eq!(sub.len(), 3);
    assert_eq!(rle::decode(&sub[0].rle, SIDE, SIDE).unwrap(), expected_mask(0.3));
    assert_eq!((sub[1].rle.as_str(), sub[2].rle.as_str()), ("", ""));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("sub.report.json")).unwrap()).unwrap();
    let skipped: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["2", "3"]);
}

#[test]
fn a_slide_whose_size_disagrees_with_test_csv_is_an_error() {
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let mut rows = f.rows.clone();
    rows[0].img_width = 65;
    schema::write_rows(&f.path("test.csv"), &rows).unwrap();
    let o = f.predict(&f.manifest(""), &[]);
    let err = failure(&o);
    assert!(err.contains("is 64×64, but test.csv says 65×64"), "{err}");
}

#[test]
fn bad_manifests_and_devices_are_refused_with_the_field() {
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let manifest = f.path("bad.toml");
    std::fs::write(
        &manifest,
        "[[group]]\nsize = 64\n[[group.model]]\npath = \"red.onnx\"\nnorm = \"zscore\"\n",
    )
    .unwrap();
    let o = f.predict(&manifest, &[]);
    let err = failure(&o);
    assert!(
        err.contains("group[0].model[0].norm") && err.contains("zscore"),
        "{err}"
    );

    let o = f.predict(&f.manifest(""), &["--device", "tpu"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected cpu, cuda or cuda:N"),
        "{}",
        text(&o)
    );
}

#[test]
fn inspect_shows_inputs_outputs_opset_and_metadata() {
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let o = ftu_infer(&["inspect", f.path("red.onnx").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "opset: 17",
        "[0] image: float32 N×3×H×W",
        "[0] logits: float32 N×1×Ho×Wo",
        "ftu.arch = pixel_linear",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    let o = ftu_infer(&["inspect", f.path("test.csv").to_str().unwrap()]);
    let err = failure(&o);
    assert!(err.contains("test.csv: not a model or a slide"), "{}", text(&o));
    assert!(!err.contains("ONNX Runtime") && !err.contains("rotobuf"), "{err}");
    let o = ftu_infer(&["inspect", f.path("nothing.onnx").to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing.onnx: no such file"),
        "{}",
        text(&o)
    );

    // Many files: each in turn; a bad one is named and the others still shown.
    let o = ftu_infer(&[
        "inspect",
        f.path("red.onnx").to_str().unwrap(),
        f.path("missing.svs").to_str().unwrap(),
        f.path("test_images/1.tiff").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("ftu.arch = pixel_linear") && out.contains("64×64 pixels"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("missing.svs: no such file") && err.contains("1 of 3 files"),
        "{err}"
    );
}

#[test]
fn a_folder_of_the_other_kind_gets_a_hint_and_stale_temp_files_go() {
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let manifest = f.manifest("");
    let images = f.path("test_images");
    let o = ftu_infer(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--data",
        images.to_str().unwrap(),
    ]);
    let err = failure(&o);
    assert!(
        err.contains("has no test.csv but holds slide files") && err.contains("--slides"),
        "{err}"
    );
    let o = ftu_infer(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--slides",
        f.dir.path().to_str().unwrap(),
        "--organ",
        "kidney",
    ]);
    let err = failure(&o);
    assert!(
        err.contains("is a Kaggle-layout folder") && err.contains("--data"),
        "{err}"
    );

    // A killed run's temp files (its process gone) are removed by the next run; others stay.
    let stale = f.path("sub.csv.4294967295.0.tmp");
    let other = f.path("sub.csv.notes.tmp");
    std::fs::write(&stale, "id,rle\n").unwrap();
    std::fs::write(&other, "x").unwrap();
    let o = f.predict(&manifest, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!stale.exists() && other.exists());
}

#[test]
fn every_predict_option_has_a_description_and_says_its_default() {
    let o = ftu_infer(&["predict", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout).to_string();
    let mut options: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") && line.starts_with("      --") {
            options.push((t.to_string(), String::new()));
        } else if let Some((_, body)) = options.last_mut() {
            body.push_str(t);
            body.push(' ');
        }
    }
    assert!(options.len() > 25, "{help}");
    // Required, or one of a required pair: no default to state.
    let required = ["--manifest <", "--data <", "--slides <"];
    for (head, body) in &options {
        assert!(!body.trim().is_empty(), "{head} has no description");
        if head.contains('<') && !required.iter().any(|r| head.starts_with(r)) {
            assert!(
                body.to_lowercase().contains("default"),
                "{head} does not say its default: {body}"
            );
        }
    }
}

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
fn a_model_that_outputs_nan_or_inf_fails_the_slide_instead_of_an_empty_or_full_mask() {
    for (bias, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "+Inf")] {
        let f = Folder::new(&[
            ("1", Organ::Kidney, DataSource::Hpa),
            ("2", Organ::Lung, DataSource::Hpa),
        ]);
        // Every output value is red·1 + bias: all NaN, or all +Inf (which would threshold to a
        // full mask).
        let model = samples::pixel_linear([1.0, 0.0, 0.0], bias, InputShape::default(), "logits").unwrap();
        ftu_onnx::write(&model, &f.path("red.onnx")).unwrap();
        let manifest = f.manifest("");
        let o = f.predict(&manifest, &[]);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let values = SIDE * SIDE;
        assert!(
            err.contains("slide 1")
                && err.contains("group[0].model[0]")
                && err.contains("red.onnx")
                && err.contains(&format!(
                    "{values} of {values} values of output `logits` are NaN or infinite"
                )),
            "{what}: {err}"
        );
        assert!(!f.path("sub.csv").exists(), "{what}: no submission");

        // Skipped, every slide fails: the run fails too, with the reasons in its report.
        let o = f.predict(&manifest, &["--on-error", "skip"]);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        assert!(!f.path("sub.csv").exists(), "{what}: no submission of empty masks");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.path("sub.report.json")).unwrap()).unwrap();
        let reasons: Vec<&str> = report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons.len(), 2, "{what}");
        assert!(
            reasons.iter().all(|r| r.contains("NaN or infinite")),
            "{what}: {reasons:?}"
        );
    }
}

/// Scanner-style files with no test.csv: an Aperio-style SVS header (MPP), an OME-TIFF
/// (PhysicalSizeX in nm) with a pyramid level, and a TIFF with only resolution tags, in one
/// folder. `predict --slides DIR --organ kidney` takes ids from the names, sizes and µm per pixel
/// from the files, and writes id,organ,pixel_size,height,width,rle with the known masks, and
/// GeoJSON and mask TIFFs; a file that states no pixel size is an error naming it, unless
/// `--pixel-size` gives one. `inspect` shows what the file says.
#[test]
fn predict_takes_slide_files_without_test_csv() {
    use ftu_formats::slide::write::{write_tiff_pages_with, TiffMeta};
    use ftu_infer::slides::SlideResultRow;
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let scanner = f.path("scanner");
    std::fs::create_dir(&scanner).unwrap();
    let img = gradient_slide(0);
    let page = |side: usize| TiffSpec {
        width: side as u32,
        height: side as u32,
        samples: Samples::Rgb8,
        chunking: Chunking::Tiles { size: 16 },
        compression: Compression::Deflate,
        bigtiff: false,
    };
    let write = |name: &str, meta: TiffMeta, pyramid: bool| {
        let mut pages = vec![page(SIDE)];
        if pyramid {
            pages.push(page(SIDE / 4));
        }
        write_tiff_pages_with(&scanner.join(name), &pages, &meta, |p, r, buf| {
            let step = if p == 0 { 1 } else { 4 };
            for y in r.y as usize..(r.y + r.height) as usize {
                for x in r.x as usize..(r.x + r.width) as usize {
                    buf.extend_from_slice(&img.pixel(x * step, y * step));
                }
            }
            Ok(())
        })
        .unwrap();
    };
    write(
        "a.svs",
        TiffMeta {
            description: Some("Aperio Image Library v12|AppMag = 40|MPP = 0.2502".into()),
            pixel_size: None,
        },
        true,
    );
    write(
        "b.ome.tif",
        TiffMeta {
            description: Some(
                r#"<OME><Image><Pixels PhysicalSizeX="500" PhysicalSizeXUnit="nm"/></Image></OME>"#.into(),
            ),
            pixel_size: None,
        },
        true,
    );
    write(
        "c.tif",
        TiffMeta {
            description: None,
            pixel_size: Some(0.8),
        },
        false,
    );
    let manifest = f.manifest("");
    let out = f.path("slides.csv");
    let geojson = f.path("gj");
    let masks = f.path("masks");
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            "--manifest",
            manifest.to_str().unwrap(),
            "--slides",
            scanner.to_str().unwrap(),
            "--organ",
            "kidney",
            "--out",
            out.to_str().unwrap(),
            "--geojson",
            geojson.to_str().unwrap(),
            "--masks",
            masks.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ftu_infer(&args)
    };
    let o = predict(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("b: 64×64, kidney, 0.5 µm/pixel (OME-XML PhysicalSizeX)"),
        "{}",
        text(&o)
    );
    let rows: Vec<SlideResultRow> = csv::Reader::from_path(&out)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    let got: Vec<(&str, f64)> = rows.iter().map(|r| (r.id.as_str(), r.pixel_size)).collect();
    assert_eq!(got[..2], [("a", 0.2502), ("b", 0.5)]);
    assert_eq!(got[2].0, "c");
    assert!((got[2].1 - 0.8).abs() < 1e-6, "{}", got[2].1);
    for r in &rows {
        assert_eq!((r.organ, r.height, r.width), (Organ::Kidney, SIDE as u32, SIDE as u32));
        assert_eq!(
            rle::decode(&r.rle, SIDE, SIDE).unwrap(),
            expected_mask(0.5),
            "slide {}",
            r.id
        );
        assert!(geojson.join(format!("{}.geojson", r.id)).is_file() && masks.join(format!("{}.tiff", r.id)).is_file());
    }

    // No pixel size in the file: named, with the way out; given, it runs.
    std::fs::copy(f.path("test_images/1.tiff"), scanner.join("d.tiff")).unwrap();
    let o = predict(&[]);
    let err = failure(&o);
    assert!(err.contains("d.tiff") && err.contains("--pixel-size"), "{}", text(&o));
    let o = predict(&["--pixel-size", "0.4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ftu_infer(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--slides",
        scanner.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--organ"),
        "{}",
        text(&o)
    );

    let o = ftu_infer(&["inspect", scanner.join("a.svs").to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    for want in [
        "64×64 pixels",
        "pixel size: 0.2502 µm (aperio)",
        "objective power: 40×",
        "16×16, downsample 4.00",
    ] {
        assert!(shown.contains(want), "{want:?} in {shown}");
    }
}

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

#[test]
fn on_error_skip_with_every_slide_bad_fails_and_writes_no_submission() {
    let f = Folder::new(&[
        ("1", Organ::Kidney, DataSource::Hpa),
        ("2", Organ::Lung, DataSource::Hpa),
    ]);
    std::fs::write(f.path("test_images/1.tiff"), b"II*\0 truncated").unwrap();
    std::fs::remove_file(f.path("test_images/2.tiff")).unwrap();
    let o = f.predict(&f.manifest(""), &["--on-error", "skip"]);
    assert!(!o.status.success(), "{}", text(&o));
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("2 rows, 0 predicted, 2 failed") && out.contains("failed 2: no image"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("none of the 2 slides could be predicted") && err.contains("sub.report.json"),
        "{err}"
    );
    assert!(
        !f.path("sub.csv").exists(),
        "empty masks for every slide would read as no FTU"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("sub.report.json")).unwrap()).unwrap();
    assert_eq!(
        (report["predicted"].as_u64(), report["failed"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(!f.path("sub.journal.csv").exists());
}

#[test]
fn a_failed_run_resumes_with_continue_and_gives_the_unbroken_runs_submission() {
    let ids = [
        ("4", Organ::Kidney, DataSource::Hpa),
        ("8", Organ::Lung, DataSource::Hubmap),
        ("6", Organ::Spleen, DataSource::Hpa),
    ];
    let f = Folder::new(&ids);
    let manifest = f.manifest(THRESHOLDS);
    let o = f.predict(&manifest, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let unbroken = std::fs::read(f.path("sub.csv")).unwrap();
    assert!(!f.path("sub.journal.csv").exists(), "a finished run leaves no journal");
    std::fs::remove_file(f.path("sub.csv")).unwrap();

    // Slide 6 is unreadable: the run stops there, keeping 4 and 8.
    let good = std::fs::read(f.path("test_images/6.tiff")).unwrap();
    std::fs::write(f.path("test_images/6.tiff"), b"II*\0 truncated").unwrap();
    let o = f.predict(&manifest, &[]);
    let err = failure(&o);
    assert!(
        err.contains("the 2 slide(s) finished are kept") && err.contains("--continue"),
        "{err}"
    );
    assert!(!f.path("sub.csv").exists());
    std::fs::write(f.path("test_images/6.tiff"), &good).unwrap();
    // Slides 4 and 8 are not read again: unreadable now, they are still reused.
    std::fs::write(f.path("test_images/4.tiff"), b"gone").unwrap();
    let o = f.predict(&manifest, &["--continue"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("3 predicted (2 reused from the journal)"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(f.path("sub.csv")).unwrap(), unbroken);
    assert!(!f.path("sub.journal.csv").exists());

    // Another manifest's journal is not reused: refused with --continue, replaced without.
    std::fs::write(f.path("test_images/4.tiff"), &good).unwrap();
    std::fs::write(f.path("test_images/6.tiff"), b"II*\0 truncated").unwrap();
    assert!(!f.predict(&manifest, &[]).status.success());
    let other = f.path("other.toml");
    std::fs::copy(&manifest, &other).unwrap();
    std::fs::write(
        &other,
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("default = 0.5", "default = 0.4"),
    )
    .unwrap();
    let o = f.predict(&other, &["--continue"]);
    let err = failure(&o);
    assert!(
        err.contains("sub.journal.csv") && err.contains("another manifest"),
        "{err}"
    );
    let o = f.predict(&other, &["--on-error", "skip"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("held 2 finished slide(s) of an earlier run; starting over"),
        "{}",
        text(&o)
    );
}

#[test]
fn slides_take_a_meta_csv_and_list_the_files_that_are_not_slides() {
    use ftu_formats::slide::write::{write_tiff_pages_with, TiffMeta};
    use ftu_infer::slides::SlideResultRow;
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let dir = f.path("scans");
    std::fs::create_dir(&dir).unwrap();
    let img = gradient_slide(0);
    for (name, um) in [("a.tif", Some(0.5)), ("b.tif", None)] {
        let spec = TiffSpec {
            width: SIDE as u32,
            height: SIDE as u32,
            samples: Samples::Rgb8,
            chunking: Chunking::Strips { rows: 16 },
            compression: Compression::Lzw,
            bigtiff: false,
        };
        let meta = TiffMeta {
            description: None,
            pixel_size: um,
        };
        write_tiff_pages_with(&dir.join(name), &[spec], &meta, |_, r, buf| {
            let start = r.y as usize * SIDE * 3;
            buf.extend_from_slice(&img.data[start..start + r.height as usize * SIDE * 3]);
            Ok(())
        })
        .unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not a slide").unwrap();
    let meta = f.path("meta.csv");
    std::fs::write(&meta, "id,organ,pixel_size\nb,lung,0.75\n").unwrap();
    let out = f.path("slides.csv");
    let manifest = f.manifest("");
    let o = ftu_infer(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--slides",
        dir.to_str().unwrap(),
        "--slides-meta",
        meta.to_str().unwrap(),
        "--organ",
        "spleen",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("not a slide, left out:") && stdout.contains("notes.txt"),
        "{stdout}"
    );
    assert!(
        stdout.contains("b: 64×64, lung, 0.75 µm/pixel (--slides-meta)"),
        "{stdout}"
    );
    let rows: Vec<SlideResultRow> = csv::Reader::from_path(&out)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    let got: Vec<(&str, Organ)> = rows.iter().map(|r| (r.id.as_str(), r.organ)).collect();
    assert_eq!(got, [("a", Organ::Spleen), ("b", Organ::Lung)]);
    assert!((rows[0].pixel_size - 0.5).abs() < 1e-6 && rows[1].pixel_size == 0.75);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("slides.report.json")).unwrap()).unwrap();
    assert!(
        report["not_slides"][0].as_str().unwrap().ends_with("notes.txt"),
        "{report}"
    );
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
