//! Speed of the shared formats on a competition-sized slide: RLE encode/decode of a 3000² mask
//! and TIFF decode of a 3000² RGB slide, uncompressed, LZW strips and LZW tiles.
//! Run: `cargo bench -p ftu-tests --bench formats`. Prints medians against the goals.

use ftu_infer::tiff_write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
use ftu_infer::{read_slide, rle, SlideLimits};
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
    let verdict = if ms <= goal_ms { "ok" } else { "OVER GOAL" };
    println!("{name:<36} median {ms:>8.2} ms   goal ≤ {goal_ms:>5.0} ms   {verdict}");
}

fn main() {
    let runs: usize = std::env::var("FTU_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let cfg = SynthConfig {
        train: 1,
        test: 0,
        size: 3000,
        seed: 1,
        mixed_formats: false,
    };
    let (plans, _) = synth::plan(&cfg).expect("plan");
    let (image, mask) = synth::render(&plans[0]);
    let encoded = rle::encode(&mask);
    println!(
        "3000×3000 {} slide: {} foreground pixels, {} runs; medians of {runs} runs, {} threads",
        plans[0].organ,
        mask.count(),
        encoded.split(' ').count() / 2,
        rayon::current_num_threads()
    );

    report(
        "rle encode 3000²",
        median(|| drop(black_box(rle::encode(black_box(&mask)))), runs),
        10.0,
    );
    report(
        "rle decode 3000²",
        median(
            || {
                drop(black_box(
                    rle::decode(black_box(&encoded), 3000, 3000).unwrap(),
                ))
            },
            runs,
        ),
        10.0,
    );

    let dir = tempfile::tempdir().expect("temp dir");
    for (name, chunking, compression, goal) in [
        (
            "tiff decode 3000² RGB uncompressed",
            Chunking::Strips { rows: 64 },
            Compression::None,
            40.0,
        ),
        (
            "tiff decode 3000² RGB LZW strips",
            Chunking::Strips { rows: 16 },
            Compression::Lzw,
            150.0,
        ),
        (
            "tiff decode 3000² RGB LZW tiles 256",
            Chunking::Tiles { size: 256 },
            Compression::Lzw,
            150.0,
        ),
        (
            "tiff decode 3000² RGB deflate tiles",
            Chunking::Tiles { size: 256 },
            Compression::Deflate,
            f64::INFINITY,
        ),
    ] {
        let path = dir.path().join("slide.tiff");
        let spec = TiffSpec {
            width: 3000,
            height: 3000,
            samples: Samples::Rgb8,
            chunking,
            compression,
            bigtiff: false,
        };
        write_tiff_image(&path, &spec, &image.data).expect("write slide");
        let t = median(
            || {
                drop(black_box(
                    read_slide(&path, SlideLimits::default()).unwrap(),
                ))
            },
            runs,
        );
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        report(&format!("{name} ({:.1} MB)", size as f64 / 1e6), t, goal);
    }
}
