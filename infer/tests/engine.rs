//! The engine through the real ONNX Runtime, on hand-made models whose outputs are known.
//! Needs libonnxruntime: ORT_DYLIB_PATH, or `pip install onnxruntime==1.31.1` (scripts/test.sh does).

use std::path::PathBuf;

use ftu_formats::manifest::Manifest;
use ftu_formats::organ::{DataSource, Organ};
use ftu_formats::slide::RgbImage;
use ftu_infer::engine::{Engine, ProbMap, SlideContext, Timings};
use ftu_infer::session::{Runtime, RuntimeOptions};
use ftu_onnx::samples::{self, InputShape};
use rand::{Rng, SeedableRng};

fn runtime() -> Runtime {
    Runtime::load(RuntimeOptions {
        threads: Some(1),
        ..RuntimeOptions::default()
    })
    .expect("ONNX Runtime must be installed for these tests (see scripts/test.sh)")
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn model(&self, name: &str, model: ftu_onnx::proto::ModelProto) -> PathBuf {
        let path = self.dir.path().join(name);
        ftu_onnx::write(&model, &path).unwrap();
        path
    }

    /// A [`samples::pixel_linear`] model without bias, dynamic shape, output `o`.
    fn linear(&self, name: &str, weights: [f32; 3]) -> PathBuf {
        self.model(
            name,
            samples::pixel_linear(weights, 0.0, InputShape::default(), "o").unwrap(),
        )
    }

    fn manifest(&self, text: &str) -> Result<Engine, String> {
        let path = self.dir.path().join("ensemble.toml");
        std::fs::write(&path, text).unwrap();
        let manifest = Manifest::load(&path).map_err(|e| e.to_string())?;
        Engine::load(manifest, &runtime()).map_err(|e| e.to_string())
    }
}

fn random_slide(width: usize, height: usize, seed: u64) -> RgbImage {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut img = RgbImage::new(width, height);
    img.data.iter_mut().for_each(|v| *v = rng.random());
    img
}

const KIDNEY: SlideContext = SlideContext {
    organ: Organ::Kidney,
    source: DataSource::Hpa,
    pixel_size: 0.4,
};

fn predict(engine: &mut Engine, slide: &RgbImage, info: &SlideContext) -> ProbMap {
    engine.predict(slide, info, &mut Timings::default()).unwrap()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(worst <= tol, "{what}: max |a − b| = {worst} > {tol}");
}

/// `unit` normalisation: the model sees x/255.
fn linear_expected(slide: &RgbImage, w: [f32; 3], b: f32) -> Vec<f32> {
    slide
        .data
        .chunks_exact(3)
        .map(|p| (0..3).map(|c| w[c] * p[c] as f32 / 255.0).sum::<f32>() + b)
        .collect()
}

fn group(size: usize, model: &str, extra: &str) -> String {
    format!("[[group]]\nsize = {size}\n[[group.model]]\npath = \"{model}\"\nnorm = \"unit\"\nactivation = \"none\"\n{extra}\n")
}

#[test]
fn a_known_model_gives_its_known_output() {
    let f = Fixture::new();
    let w = [0.5, -0.25, 0.125];
    f.model(
        "lin.onnx",
        samples::pixel_linear(w, 0.1, InputShape::default(), "output").unwrap(),
    );
    let mut engine = f.manifest(&group(64, "lin.onnx", "")).unwrap();
    let slide = random_slide(64, 64, 1);
    let p = predict(&mut engine, &slide, &KIDNEY);
    assert_eq!((p.width, p.height), (64, 64));
    assert_close(&p.data, &linear_expected(&slide, w, 0.1), 1e-5, "linear model");
}

#[test]
fn bgr_models_see_blue_first_and_sigmoid_is_applied() {
    let f = Fixture::new();
    f.linear("lin.onnx", [1.0, 0.0, 0.0]);
    let text = "[[group]]\nsize = 32\n[[group.model]]\npath = \"lin.onnx\"\nnorm = \"unit\"\nchannels = \"bgr\"\n";
    let mut engine = f.manifest(text).unwrap();
    let slide = random_slide(32, 32, 2);
    let p = predict(&mut engine, &slide, &KIDNEY);
    let want: Vec<f32> = slide
        .data
        .chunks_exact(3)
        .map(|px| 1.0 / (1.0 + (-(px[2] as f32) / 255.0).exp()))
        .collect();
    assert_close(&p.data, &want, 1e-6, "sigmoid of blue");
}

#[test]
fn every_tta_variant_is_inverted_exactly() {
    let f = Fixture::new();
    let w = [0.3, 0.6, -0.2];
    f.linear("lin.onnx", w);
    f.model("shift.onnx", samples::shift_left(InputShape::default()).unwrap());
    let slide = random_slide(64, 64, 3);
    // An equivariant model gives the same map under every TTA.
    for mode in ["none", "hflip", "flips", "d4"] {
        let mut e = f
            .manifest(&format!("[tta]\nmode = \"{mode}\"\n{}", group(64, "lin.onnx", "")))
            .unwrap();
        assert_close(
            &predict(&mut e, &slide, &KIDNEY).data,
            &linear_expected(&slide, w, 0.0),
            1e-5,
            mode,
        );
    }
    // The shift model reads the pixel to the right; flipped, inverted and averaged it reads both sides.
    let r = |x: isize, y: isize| -> f32 {
        if (0..64).contains(&x) && (0..64).contains(&y) {
            slide.data[(y as usize * 64 + x as usize) * 3] as f32 / 255.0
        } else {
            0.0
        }
    };
    let cases: [(&str, fn(isize, isize, &dyn Fn(isize, isize) -> f32) -> f32); 3] = [
        ("none", |x, y, r| r(x + 1, y)),
        ("hflip", |x, y, r| (r(x + 1, y) + r(x - 1, y)) / 2.0),
        ("d4", |x, y, r| {
            (r(x + 1, y) + r(x - 1, y) + r(x, y + 1) + r(x, y - 1)) / 4.0
        }),
    ];
    for (mode, expected) in cases {
        let mut e = f
            .manifest(&format!("[tta]\nmode = \"{mode}\"\n{}", group(64, "shift.onnx", "")))
            .unwrap();
        let want: Vec<f32> = (0..64 * 64)
            .map(|i| expected((i % 64) as isize, (i / 64) as isize, &r))
            .collect();
        assert_close(&predict(&mut e, &slide, &KIDNEY).data, &want, 1e-6, mode);
    }
}

#[test]
fn non_square_inputs_with_rotations_run_in_two_batches() {
    let f = Fixture::new();
    let w = [0.2, 0.2, 0.2];
    f.linear("lin.onnx", w);
    // target_pixel_size makes a 3000×1500 slide a 64×32 input; d4 has 32×64 variants too.
    let text = format!(
        "target_pixel_size = 0.4\n[tta]\nmode = \"d4\"\n{}",
        group(64, "lin.onnx", "")
    );
    let mut e = f.manifest(&text).unwrap();
    let mut slide = RgbImage::new(64, 32);
    slide
        .data
        .chunks_exact_mut(3)
        .enumerate()
        .for_each(|(i, p)| p.fill((i % 64) as u8 * 3));
    let info = SlideContext {
        pixel_size: 0.4 * 3000.0 / 64.0,
        ..KIDNEY
    };
    let p = predict(&mut e, &slide, &info);
    assert_close(&p.data, &linear_expected(&slide, w, 0.0), 1e-5, "d4 on 64×32");
}

#[test]
fn half_resolution_outputs_are_resized_to_the_slide() {
    let f = Fixture::new();
    f.model("half.onnx", samples::half_resolution([1.0, 0.0, 0.0], 0.0).unwrap());
    let mut e = f.manifest(&group(64, "half.onnx", "")).unwrap();
    // Columns of constant red: the 2×2 means equal the pairs' mean, then bilinear back.
    let mut slide = RgbImage::new(64, 64);
    slide
        .data
        .chunks_exact_mut(3)
        .enumerate()
        .for_each(|(i, p)| p[0] = ((i % 64) / 2 * 8) as u8);
    let p = predict(&mut e, &slide, &KIDNEY);
    assert_eq!((p.width, p.height), (64, 64));
    let half: Vec<f32> = (0..32 * 32).map(|i| ((i % 32) * 8) as f32 / 255.0).collect();
    let want = ftu_formats::resize::resize_map(&half, 32, 32, 64, 64);
    assert_close(&p.data, &want, 1e-6, "half resolution");
    // And a slide of another size comes back at its own size.
    let big = random_slide(100, 70, 4);
    let p = predict(&mut e, &big, &KIDNEY);
    assert_eq!((p.width, p.height, p.data.len()), (100, 70, 7000));
}

#[test]
fn the_mask_can_be_the_second_output_or_a_softmax_channel() {
    let f = Fixture::new();
    let w = [0.4, 0.1, -0.3];
    f.model("two.onnx", samples::two_outputs(w, 0.05).unwrap());
    f.model("cls.onnx", samples::two_class(w, 0.05).unwrap());
    let slide = random_slide(32, 32, 5);
    let want = linear_expected(&slide, w, 0.05);
    let mut e = f.manifest(&group(32, "two.onnx", "output = \"mask\"")).unwrap();
    assert_close(&predict(&mut e, &slide, &KIDNEY).data, &want, 1e-5, "output by name");
    let mut e = f.manifest(&group(32, "two.onnx", "output = 1")).unwrap();
    assert_close(&predict(&mut e, &slide, &KIDNEY).data, &want, 1e-5, "output by index");
    // softmax([0, z])[1] = sigmoid(z)
    let text = "[[group]]\nsize = 32\n[[group.model]]\npath = \"cls.onnx\"\nnorm = \"unit\"\nactivation = \"softmax\"\nchannel = 1\n";
    let mut e = f.manifest(text).unwrap();
    let sig: Vec<f32> = want.iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect();
    assert_close(&predict(&mut e, &slide, &KIDNEY).data, &sig, 1e-6, "softmax channel");
}

#[test]
fn group_and_model_weights_average_as_declared() {
    let f = Fixture::new();
    f.linear("r.onnx", [1.0, 0.0, 0.0]);
    f.linear("g.onnx", [0.0, 1.0, 0.0]);
    f.linear("b.onnx", [0.0, 0.0, 1.0]);
    let model = |p: &str, w: f32| {
        format!("[[group.model]]\npath = \"{p}\"\nnorm = \"unit\"\nactivation = \"none\"\nweight = {w}\n")
    };
    let text = format!(
        "[[group]]\nsize = 32\nweight = 1\n{}{}[[group]]\nsize = 32\nweight = 3\n{}",
        model("r.onnx", 1.0),
        model("g.onnx", 3.0),
        model("b.onnx", 5.0)
    );
    let mut e = f.manifest(&text).unwrap();
    let slide = random_slide(32, 32, 6);
    // group 1 = (r + 3g)/4, group 2 = b; total = (1·group1 + 3·group2)/4
    let want: Vec<f32> = slide
        .data
        .chunks_exact(3)
        .map(|p| {
            let [r, g, b] = [p[0], p[1], p[2]].map(|v| v as f32 / 255.0);
            ((r + 3.0 * g) / 4.0 + 3.0 * b) / 4.0
        })
        .collect();
    assert_close(&predict(&mut e, &slide, &KIDNEY).data, &want, 1e-5, "weights");
}

#[test]
fn organ_restricted_models_serve_only_their_organs() {
    let f = Fixture::new();
    f.linear("r.onnx", [1.0, 0.0, 0.0]);
    f.linear("g.onnx", [0.0, 1.0, 0.0]);
    let text = format!(
        "{}organs = [\"kidney\"]\n{}organs = [\"lung\", \"kidney\"]\n",
        group(32, "r.onnx", ""),
        group(32, "g.onnx", "")
    );
    let mut e = f.manifest(&text).unwrap();
    let slide = random_slide(32, 32, 7);
    let lung = SlideContext {
        organ: Organ::Lung,
        ..KIDNEY
    };
    let g_only: Vec<f32> = slide.data.chunks_exact(3).map(|p| p[1] as f32 / 255.0).collect();
    assert_close(&predict(&mut e, &slide, &lung).data, &g_only, 1e-6, "lung sees only g");
    let both: Vec<f32> = slide
        .data
        .chunks_exact(3)
        .map(|p| (p[0] as f32 + p[1] as f32) / 2.0 / 255.0)
        .collect();
    assert_close(&predict(&mut e, &slide, &KIDNEY).data, &both, 1e-6, "kidney sees both");
    let err = e
        .predict(
            &slide,
            &SlideContext {
                organ: Organ::Spleen,
                ..KIDNEY
            },
            &mut Timings::default(),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("no model in the manifest serves organ spleen"),
        "{err}"
    );
}

#[test]
fn fixed_batch_and_size_exports_run_when_they_fit() {
    let f = Fixture::new();
    let w = [0.1, 0.2, 0.3];
    f.model(
        "fixed.onnx",
        samples::pixel_linear(
            w,
            0.0,
            InputShape {
                batch: Some(1),
                size: Some(32),
            },
            "o",
        )
        .unwrap(),
    );
    let mut e = f
        .manifest(&format!("[tta]\nmode = \"flips\"\n{}", group(32, "fixed.onnx", "")))
        .unwrap();
    let slide = random_slide(48, 40, 8);
    let p = predict(&mut e, &slide, &KIDNEY);
    assert_eq!((p.width, p.height), (48, 40));
    let small = ftu_formats::resize::resize_rgb(&slide, 32, 32);
    let want = ftu_formats::resize::resize_map(&linear_expected(&small, w, 0.0), 32, 32, 48, 40);
    assert_close(&p.data, &want, 1e-5, "fixed batch 1 under flips");
}

#[test]
fn unfit_models_are_refused_naming_the_field() {
    let f = Fixture::new();
    f.model(
        "fixed.onnx",
        samples::pixel_linear(
            [1.0; 3],
            0.0,
            InputShape {
                batch: None,
                size: Some(32),
            },
            "o",
        )
        .unwrap(),
    );
    f.model("two.onnx", samples::two_outputs([1.0; 3], 0.0).unwrap());
    f.linear("lin.onnx", [1.0; 3]);
    std::fs::write(f.dir.path().join("junk.onnx"), b"not a model").unwrap();
    let cases = [
        (
            group(64, "fixed.onnx", ""),
            "group[0].model[0]",
            "fixed at 32×32 (width×height), but the group size is 64",
        ),
        (
            format!("[tta]\nscales = [1.0, 1.5]\n{}", group(32, "fixed.onnx", "")),
            "group[0].model[0]",
            "export the model with dynamic",
        ),
        (group(32, "two.onnx", ""), "group[0].model[0]", "output `organ` is N×5"),
        (
            group(32, "two.onnx", "output = \"logits\""),
            "group[0].model[0]",
            "output `logits` not found; the model's outputs are `organ`",
        ),
        (
            group(32, "lin.onnx", "channel = 1"),
            "group[0].model[0]",
            "channel 1 asked for",
        ),
        (
            group(32, "junk.onnx", ""),
            "junk.onnx",
            "ONNX Runtime cannot load the model",
        ),
    ];
    for (text, field, message) in cases {
        let err = f.manifest(&text).err().expect("should be refused");
        assert!(
            err.contains(field) && err.contains(message),
            "expected {field} / {message} in: {err}"
        );
    }
}

#[test]
fn a_cuda_request_without_the_cuda_provider_fails_or_falls_back_as_asked() {
    use ftu_infer::session::Device;
    let f = Fixture::new();
    let path = f.linear("lin.onnx", [1.0; 3]);
    let strict = Runtime::load(RuntimeOptions {
        device: Device::Cuda(0),
        ..RuntimeOptions::default()
    })
    .unwrap();
    // The CPU wheel has no CUDA provider; with onnxruntime-gpu on a GPU machine the session opens.
    use ort::ep::ExecutionProvider;
    let cuda_built_in = ort::ep::CUDA::is_available().unwrap_or(false);
    let result = strict.session(&path);
    assert_eq!(result.is_ok(), cuda_built_in, "CUDA session without the CUDA provider");
    if let Err(err) = result {
        let err = err.to_string();
        assert!(
            err.contains("CUDA execution provider") && err.contains("--allow-cpu-fallback"),
            "{err}"
        );
        let lenient = Runtime::load(RuntimeOptions {
            device: Device::Cuda(0),
            allow_cpu_fallback: true,
            ..RuntimeOptions::default()
        })
        .unwrap();
        lenient.session(&path).expect("falls back to the CPU");
        assert!(lenient.fallback().unwrap().contains("running on the CPU"));
    }
}

/// `tests/fixtures/pytorch_two_head.onnx` was exported by `torch.onnx.export` (see
/// make_pytorch_fixture.py): input `input`, BGR with mmseg's mean/std, mask as the second output.
/// Given those manifest fields, ftu's probabilities match PyTorch's own.
#[test]
fn a_pytorch_export_runs_unchanged_and_matches_pytorch() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let f = Fixture::new();
    std::fs::copy(fixtures.join("pytorch_two_head.onnx"), f.dir.path().join("torch.onnx")).unwrap();
    let text = "[[group]]\nsize = 64\n[[group.model]]\npath = \"torch.onnx\"\nchannels = \"bgr\"\n\
                mean = [103.53, 116.28, 123.675]\nstd = [57.375, 57.12, 58.395]\noutput = \"mask\"\n\
                activation = \"sigmoid\"\n";
    let mut e = f.manifest(text).unwrap();
    let mut slide = RgbImage::new(64, 64);
    for (i, p) in slide.data.chunks_exact_mut(3).enumerate() {
        let (y, x) = (i / 64, i % 64);
        p.copy_from_slice(&[
            ((x * 7 + y * 3) % 256) as u8,
            ((x * y) % 256) as u8,
            ((255 + 512 - 2 * x - y) % 256) as u8,
        ]);
    }
    let want: Vec<f32> = std::fs::read(fixtures.join("pytorch_two_head.prob.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let got = predict(&mut e, &slide, &KIDNEY);
    assert!(
        want.iter().any(|&p| p < 0.2) && want.iter().any(|&p| p > 0.8),
        "the reference spans 0..1"
    );
    assert_close(&got.data, &want, 1e-4, "ftu vs PyTorch");
}

/// The limit bench replays exactly the runs predict made: two models, d4 (one batch of 8 per model
/// and slide), two slides → 4 runs of 8 images; a replay without recording replays nothing, and
/// a recording past its byte limit is an error, not a partial limit.
#[test]
fn recorded_batches_replay_as_predict_ran_them() {
    let f = Fixture::new();
    f.linear("a.onnx", [0.2, 0.2, 0.2]);
    f.linear("b.onnx", [0.1, 0.3, 0.2]);
    let text = "[tta]\nmode = \"d4\"\n[[group]]\nsize = 64\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\noutput = \"o\"\nactivation = \"none\"\n[[group.model]]\npath = \"b.onnx\"\nnorm = \"unit\"\noutput = \"o\"\nactivation = \"none\"\n";
    let mut e = f.manifest(text).unwrap();
    let slide = random_slide(64, 64, 3);
    predict(&mut e, &slide, &KIDNEY);
    assert_eq!(e.replay().unwrap().batches, 0, "nothing recorded before asking");
    e.record_batches(1 << 30);
    predict(&mut e, &slide, &KIDNEY);
    predict(&mut e, &random_slide(64, 64, 4), &KIDNEY);
    let r = e.replay().unwrap();
    assert_eq!((r.batches, r.items), (4, 32));
    assert!(r.seconds > 0.0);
    // One batch is 8·3·64·64·4 bytes: a limit below it keeps nothing and says so.
    e.record_batches(8 * 3 * 64 * 64 * 4 - 1);
    predict(&mut e, &slide, &KIDNEY);
    let err = e.replay().unwrap_err().to_string();
    assert!(err.contains("recording limit"), "{err}");
}
