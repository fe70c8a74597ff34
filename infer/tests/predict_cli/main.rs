//! `ftu-infer predict` and `inspect` as a user runs them, on a small hand-made Kaggle folder and a
//! model whose output is the red channel, so every expected mask is known.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

mod bundle;
#[path = "../common/mod.rs"]
mod common;
mod described;
mod failures;
mod slides;

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
