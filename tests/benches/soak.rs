//! Soak: `predict` over a few thousand small generated slides, then over one whole-slide image
//! repeated, sampling the process's resident memory (VmRSS) and the slides done as it goes. Steady
//! means the last tenth of each run within 10 % of the first tenth in both memory and slides/s
//! (after one warm-up slide).
//! Run: `cargo bench -p ftu-tests --bench soak` (2000 slides of 256², then a 6000² whole-slide
//! image 41 times; `FTU_SOAK_SLIDES` and `FTU_SOAK_WSI` change the counts). Under `cargo test`
//! it is a short smoke run that checks nothing but that it runs.

use std::path::Path;
use std::time::Instant;

use ftu_formats::kaggle::Split;
use ftu_formats::schema::{self, TestRow};
use ftu_infer::predict::{self, Event, PredictOptions};
use ftu_trainer::synth::wsi::{self, WsiConfig};
use ftu_trainer::synth::{self, SynthConfig};

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One sample per finished slide: seconds since the start, RSS.
struct Sample {
    t: f64,
    rss: u64,
}

/// Predicts `data` with the manifest, sampling as slides finish.
fn run(manifest: &Path, data: &Path, out: &Path) -> Vec<Sample> {
    let mut engine = ftu_tests::engine(manifest);
    let opts = PredictOptions::new(data, out);
    let start = Instant::now();
    let mut samples = Vec::new();
    predict::predict_dir(&mut engine, &opts, &mut |e| {
        if let Event::Slide { .. } = e {
            samples.push(Sample {
                t: start.elapsed().as_secs_f64(),
                rss: rss_kib(),
            });
        }
    })
    .unwrap();
    samples
}

/// First and last tenth: mean RSS (MiB) and slides/s; whether both are within 10 %. The first
/// slide is warm-up (ONNX Runtime's first runs allocate its arena) and counts in neither.
fn steadiness(name: &str, all: &[Sample]) -> bool {
    if all.len() < 3 {
        println!("{name}: {} slides, too few to judge", all.len());
        return true;
    }
    let s = &all[1..];
    let tenth = (s.len() / 10).max(1);
    // Memory: the mean over the tenth; speed: 1 / the median seconds a slide took in it (robust
    // to a burst from a neighbour on a shared machine).
    let part = |from: usize, to: usize| {
        let rss = s[from..to].iter().map(|x| x.rss as f64).sum::<f64>() / (to - from) as f64 / 1024.0;
        let mut secs: Vec<f64> = (from..to)
            .map(|i| s[i].t - if i == 0 { all[0].t } else { s[i - 1].t })
            .collect();
        secs.sort_by(f64::total_cmp);
        (rss, 1.0 / secs[secs.len() / 2].max(1e-9))
    };
    let (rss0, rate0) = part(0, tenth);
    let (rss1, rate1) = part(s.len() - tenth, s.len());
    let steady = (rss1 / rss0 - 1.0).abs() <= 0.10 && (rate1 / rate0 - 1.0).abs() <= 0.10;
    println!(
        "{name}: {} slides after one warm-up; first tenth {rss0:.0} MiB, {rate0:.2} slides/s; last tenth {rss1:.0} MiB, {rate1:.2} slides/s ({:+.1} % memory, {:+.1} % speed) — {}",
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
    let repeats = count("FTU_SOAK_WSI", 41, 10, is_bench);
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
