//! Speed of the shared formats on a competition-sized slide: RLE encode/decode of a 3000² mask
//! and TIFF decode of a 3000² RGB slide, uncompressed, LZW strips and LZW tiles.
//! Run: `cargo bench -p ftu-tests --bench formats`. Prints medians against ftu's goals.

use ftu_formats::mask::rle;
use ftu_formats::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
use ftu_formats::{read_slide, SlideLimits};
use ftu_trainer::synth::{self, SynthConfig};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    f(); // warm-up: page cache, allocator
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn report(name: &str, t: Duration, goal_ms: f64) {
    let ms = t.as_secs_f64() * 1e3;
    let verdict = match (BENCH.get(), ms <= goal_ms) {
        (Some(false), _) => "smoke run, not a measurement",
        (_, true) => "ok",
        (_, false) => "OVER GOAL",
    };
    let goal = if goal_ms.is_finite() {
        format!("goal ≤ {goal_ms:>5.0} ms")
    } else {
        "(no goal)".into()
    };
    println!("{name:<36} median {ms:>8.2} ms   {goal}   {verdict}");
}

/// Whether this is `cargo bench` (which passes `--bench`) rather than `cargo test` running the
/// target as a smoke test in a debug build.
static BENCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn main() {
    let bench = *BENCH.get_or_init(|| std::env::args().any(|a| a == "--bench"));
    let default_runs = if bench { 15 } else { 1 };
    let runs: usize = std::env::var("FTU_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_runs);
    let size = if bench { 3000 } else { 256 };
    let cfg = SynthConfig {
        train: 1,
        test: 0,
        size,
        seed: 1,
        mixed_formats: false,
    };
    let (plans, _) = synth::plan(&cfg).expect("plan");
    let (image, mask) = synth::render(&plans[0]);
    let encoded = rle::encode(&mask);
    println!(
        "{size}×{size} {} slide: {} foreground pixels, {} runs; medians of {runs} runs, {} threads",
        plans[0].organ,
        mask.count(),
        encoded.split(' ').count() / 2,
        rayon::current_num_threads()
    );

    report(
        &format!("rle encode {size}²"),
        median(|| drop(black_box(rle::encode(black_box(&mask)))), runs),
        10.0,
    );
    report(
        &format!("rle decode {size}²"),
        median(
            || {
                drop(black_box(
                    rle::decode(black_box(&encoded), size as usize, size as usize).unwrap(),
                ))
            },
            runs,
        ),
        10.0,
    );

    let dir = tempfile::tempdir().expect("temp dir");
    for (name, chunking, compression, goal) in [
        (
            "RGB uncompressed",
            Chunking::Strips { rows: 64 },
            Compression::None,
            40.0,
        ),
        ("RGB LZW strips", Chunking::Strips { rows: 16 }, Compression::Lzw, 150.0),
        (
            "RGB LZW tiles 256",
            Chunking::Tiles { size: 256 },
            Compression::Lzw,
            150.0,
        ),
        (
            "RGB deflate tiles",
            Chunking::Tiles { size: 256 },
            Compression::Deflate,
            f64::INFINITY,
        ),
    ] {
        let path = dir.path().join("slide.tiff");
        let spec = TiffSpec {
            width: size,
            height: size,
            samples: Samples::Rgb8,
            chunking,
            compression,
            bigtiff: false,
        };
        write_tiff_image(&path, &spec, &image.data).expect("write slide");
        let t = median(
            || drop(black_box(read_slide(&path, SlideLimits::default()).unwrap())),
            runs,
        );
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        report(
            &format!("tiff decode {size}² {name} ({:.1} MB)", bytes as f64 / 1e6),
            t,
            goal,
        );
    }
}
