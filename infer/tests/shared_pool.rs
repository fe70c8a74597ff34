//! ONNX Runtime's shared (global) intra-op pool: every model of an ensemble runs on one pool and
//! computes what it computes on its own pool; a process cannot mix the two. Its own test binary,
//! because the first runtime a process loads fixes its thread pools.

use ftu_formats::manifest::Manifest;
use ftu_formats::organ::{DataSource, Organ};
use ftu_formats::slide::RgbImage;
use ftu_infer::engine::{Engine, SlideContext, Timings};
use ftu_infer::session::{Runtime, RuntimeError, RuntimeOptions, ThreadPool};
use ftu_onnx::samples::{self, InputShape};

#[test]
fn an_ensemble_on_the_shared_pool_gives_its_known_output_and_the_process_keeps_that_pool() {
    let runtime = Runtime::load(RuntimeOptions {
        thread_pool: ThreadPool::Shared,
        threads: Some(2),
        ..RuntimeOptions::default()
    })
    .expect("ONNX Runtime must be installed for these tests (see scripts/test.sh)");
    let dir = tempfile::tempdir().unwrap();
    let (wa, wb) = ([0.5f32, -0.25, 0.125], [-0.3f32, 0.2, 0.7]);
    for (name, w) in [("a.onnx", wa), ("b.onnx", wb)] {
        let model = samples::pixel_linear(w, 0.0, InputShape::default(), "o").unwrap();
        ftu_onnx::write(&model, &dir.path().join(name)).unwrap();
    }
    let manifest = dir.path().join("ensemble.toml");
    std::fs::write(
        &manifest,
        "[[group]]\nsize = 64\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\nactivation = \"none\"\n\
         [[group.model]]\npath = \"b.onnx\"\nnorm = \"unit\"\nactivation = \"none\"\n",
    )
    .unwrap();
    let mut engine = Engine::load(Manifest::load(&manifest).unwrap(), &runtime).unwrap();
    let mut slide = RgbImage::new(64, 64);
    for (i, v) in slide.data.iter_mut().enumerate() {
        *v = (i * 37 % 251) as u8;
    }
    let info = SlideContext {
        organ: Organ::Kidney,
        source: DataSource::Hpa,
        pixel_size: 0.4,
    };
    let p = engine.predict(&slide, &info, &mut Timings::default()).unwrap();
    // The two models' mean: each is a per-pixel linear map of x/255.
    let worst = slide
        .data
        .chunks_exact(3)
        .zip(&p.data)
        .map(|(px, got)| {
            let lin = |w: [f32; 3]| (0..3).map(|c| w[c] * px[c] as f32 / 255.0).sum::<f32>();
            ((lin(wa) + lin(wb)) / 2.0 - got).abs()
        })
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "max |expected − got| = {worst}");

    // A second runtime with the same pools shares the environment; one asking for its own
    // pools is refused with the reason.
    assert!(Runtime::load(RuntimeOptions {
        thread_pool: ThreadPool::Shared,
        ..RuntimeOptions::default()
    })
    .is_ok());
    let refused = Runtime::load(RuntimeOptions::default()).unwrap_err();
    assert!(
        matches!(refused, RuntimeError::ThreadPoolMismatch { made: "shared" }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("made with shared thread pools"),
        "{refused}"
    );
}

#[test]
fn thread_pool_names_parse_and_others_are_refused() {
    assert_eq!("shared".parse::<ThreadPool>(), Ok(ThreadPool::Shared));
    assert_eq!("per-session".parse::<ThreadPool>(), Ok(ThreadPool::PerSession));
    assert!("global"
        .parse::<ThreadPool>()
        .unwrap_err()
        .contains("per-session or shared"));
}
