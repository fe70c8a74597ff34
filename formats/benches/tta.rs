//! TTA transforms of a model-sized plane: what the engine runs (`apply_into`: whole-row copies
//! for flips, ndarray's view + assign for transposes) against ndarray's view + assign for every
//! transform (`view_into`), on a 1024² f32 map and a 1024² u8 plane. Prints medians and the ratio
//! ndarray / apply_into: for flips it is why the row copies stay (≈3× on this machine); for
//! transposes both are the same code (≈1).
//! Run: `cargo bench -p ftu-formats --bench tta`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ftu_formats::tta::Transform;

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    f();
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

fn compare<T: Copy + Default>(name: &str, side: usize, runs: usize, value: impl Fn(usize) -> T) {
    let plane: Vec<T> = (0..side * side).map(value).collect();
    let mut out = vec![T::default(); side * side];
    for t in Transform::d4() {
        let hand = median(
            || t.apply_into(black_box(&plane), side, side, black_box(&mut out)),
            runs,
        );
        let nd = median(|| t.view_into(black_box(&plane), side, side, black_box(&mut out)), runs);
        println!(
            "{name} {side}² {:<14} apply_into {:>7.3} ms   ndarray view {:>7.3} ms   ndarray/apply_into {:>5.2}",
            t.name(),
            hand.as_secs_f64() * 1e3,
            nd.as_secs_f64() * 1e3,
            nd.as_secs_f64() / hand.as_secs_f64()
        );
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (side, runs) = if bench { (1024, 31) } else { (64, 1) };
    compare("f32", side, runs, |i| i as f32);
    compare("u8 ", side, runs, |i| i as u8);
}
