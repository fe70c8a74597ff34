//! Soak: `predict` over a few thousand small generated slides, then over one whole-slide image
//! repeated, sampling the process's resident memory (VmRSS) and the slides done as it goes. Steady
//! means the last tenth of each run within 10 % of the first tenth in both memory and slides/s.
//! Run: `cargo bench -p ftu-tests --bench soak` (2000 slides of 256², then a 6000² whole-slide
//! image 20 times; `FTU_SOAK_SLIDES` and `FTU_SOAK_WSI` change the counts). Under `cargo test`
//! it is a short smoke run that checks nothing but that it runs.

use std::path::Path;
use std::time::Instant;

use ftu_formats::kaggle::Split;
use ftu_formats::schema::{self, TestRow};
use ftu_infer::predict::{self, Event, PredictOptions};
use ftu_trainer::synth::{self, SynthConfig};
use ftu_trainer::wsi::{self, WsiConfig};

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One sample per finished slide: seconds since the start, slides done, RSS.
struct Sample {
    t: f64,
    done: usize,
    rss: u64,
}

/// Predicts `data` with the manifest, sampling as slides finish.
fn run(manifest: &Path, data: &Path, out: &Path) -> Vec<Sample> {
    let mut engine = ftu_tests::engine(manifest);
    let opts = PredictOptions::new(data, out);
    let start = Instant::now();
    let mut samples = Vec::new();
    predict::predict_dir(&mut engine, &opts, &mut |e| {
        if let Event::Slide { done, .. } = e {
            samples.push(Sample {
                t: start.elapsed().as_secs_f64(),
                done,
                rss: rss_kib(),
            });
        }
    })
    .unwrap();
    samples
}

/// First and last tenth: mean RSS (MiB) and slides/s; whether both are within 10 %.
fn steadiness(name: &str, s: &[Sample]) -> bool {
    let tenth = (s.len() / 10).max(1);
    let part = |p: &[Sample], before: Option<&Sample>| {
        let rss = p.iter().map(|x| x.rss as f64).sum::<f64>() / p.len() as f64 / 1024.0;
        let (t0, d0) = before.map_or((0.0, 0), |b| (b.t, b.done));
        let last = &p[p.len() - 1];
        (rss, (last.done - d0) as f64 / (last.t - t0).max(1e-9))
    };
    let (rss0, rate0) = part(&s[..tenth], None);
    let (rss1, rate1) = part(&s[s.len() - tenth..], s.get(s.len() - tenth - 1));
    let steady = (rss1 / rss0 - 1.0).abs() <= 0.10 && (rate1 / rate0 - 1.0).abs() <= 0.10;
    println!(
        "{name}: {} slides; first tenth {rss0:.0} MiB, {rate0:.2} slides/s; last tenth {rss1:.0} MiB, {rate1:.2} slides/s ({:+.1} % memory, {:+.1} % speed) — {}",
        s.len(),
        (rss1 / rss0 - 1.0) * 100.0,
        (rate1 / rate0 - 1.0) * 100.0,
        if steady { "steady" } else { "NOT STEADY" }
    );
    steady
}

fn count(var: &str, bench: usize, smoke: usize, is_bench: bool) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if is_bench { bench } else { smoke })
}

fn main() {
    let is_bench = std::env::args().any(|a| a == "--bench");
    let slides = count("FTU_SOAK_SLIDES", 2000, 40, is_bench);
    let repeats = count("FTU_SOAK_WSI", 20, 10, is_bench);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A small conv net at 128² with flips: the per-slide work of a real ensemble, scaled down.
    let model = ftu_onnx::samples::conv_net(8, 2, 1).unwrap();
    ftu_onnx::write(&model, &d.join("net.onnx")).unwrap();
    let group = "[[group.model]]\npath = \"net.onnx\"\nnorm = \"imagenet\"\n";
    std::fs::write(
        d.join("resize.toml"),
        format!("[tta]\nmode = \"flips\"\n[[group]]\nsize = 128\n{group}"),
    )
    .unwrap();
    std::fs::write(
        d.join("tiles.toml"),
        format!("[[group]]\nsize = 256\nmode = \"tiles\"\noverlap = 0.25\nbatch = 4\n{group}"),
    )
    .unwrap();

    let small = d.join("small");
    let cfg = SynthConfig {
        train: 1,
        test: slides,
        size: 256,
        seed: 9,
        mixed_formats: true,
    };
    synth::generate(&small, &cfg, || {}).unwrap();
    let samples = run(&d.join("resize.toml"), &small, &d.join("small.csv"));
    let mut steady = steadiness(
        &format!("{slides} slides of 256² (mixed TIFF flavours), resize mode"),
        &samples,
    );

    // One whole-slide image, its test.csv row repeated under new ids (hard links to one file).
    let side = if is_bench { 6000 } else { 1500 };
    let wsi_dir = d.join("wsi");
    wsi::generate(
        &wsi_dir,
        &WsiConfig {
            width: side,
            height: side,
            islands: 4,
            island_radius: side as f64 / 10.0,
            ftus_per_island: 8,
            seed: 3,
            jpeg: false,
            pyramid: Vec::new(),
        },
        |_, _| {},
    )
    .unwrap();
    let row = schema::read_test(&Split::Test.csv(&wsi_dir)).unwrap().remove(0);
    let images = Split::Test.images(&wsi_dir);
    let rows: Vec<TestRow> = (0..repeats)
        .map(|i| {
            let id = format!("wsi{i}");
            if i > 0 {
                std::fs::hard_link(images.join("wsi0.tiff"), images.join(format!("{id}.tiff"))).unwrap();
            }
            TestRow { id, ..row.clone() }
        })
        .collect();
    schema::write_rows(&Split::Test.csv(&wsi_dir), &rows).unwrap();
    let samples = run(&d.join("tiles.toml"), &wsi_dir, &d.join("wsi.csv"));
    steady &= steadiness(&format!("a {side}² whole-slide image {repeats} times, tiled"), &samples);

    if is_bench && !steady {
        eprintln!("not steady: memory or speed moved by more than 10 % between the first and last tenth");
        std::process::exit(1);
    }
}
