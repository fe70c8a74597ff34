//! One training step (forward, BCE loss, backward, the trainer's AdamW) of unet-resnet34 on the
//! CPU: batch 4, 256². Prints the median over the timed steps and the process's peak resident
//! memory; `bench/train_step/run.sh` sets them beside the same step in PyTorch.
//!
//! `cargo bench -p ftu-trainer --bench train_step [-- --steps N --batch B --size S --arch A --device D --precision P --profile]`
//!
//! `--generic` runs the device-generic layers (what a GPU runs) on the CPU instead of ftu's CPU
//! ops: their memory and op structure, measurable here.
//!
//! `--precision bf16|f16` runs convolutions and matmuls in that precision as the trainer does
//! (f16 with its dynamic loss scale); on the CPU that is an emulation, slower than f32.
//!
//! `--device cuda` (a `--features cuda` build) runs the step on the GPU through candle's
//! device-generic ops; each step ends with the device synchronised, so times are wall times.
//!
//! With `--profile`, a table of where a step's time goes, per op (ftu's own ops, the layers
//! built from candle ops, candle's autograd as the rest of the backward, AdamW), with the
//! effective bandwidth of each.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ftu_models::store::is_buffer;
use ftu_models::{profile, Arch, ArchConfig, Ctx, Precision, Segmenter};
use ftu_trainer::config::OptimConfig;
use ftu_trainer::optim::loss_scale::LossScale;
use ftu_trainer::optim::AdamW;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> std::process::ExitCode {
    // glibc's malloc as ftu-train sets it.
    ftu_trainer::memory::keep_freed_memory();
    // Errors read as sentences, as the ftu binaries print them.
    ftu_formats::exit::run(bench)
}

fn bench() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs this too, without `--bench`: then one small step, untimed
    // in spirit, just to prove the benchmark still runs.
    let bench = std::env::args().any(|a| a == "--bench");
    let (steps, batch, size) = if bench { ("5", "4", "256") } else { ("1", "1", "64") };
    let steps: usize = arg("--steps", steps).parse()?;
    let batch: usize = arg("--batch", batch).parse()?;
    let size: usize = arg("--size", size).parse()?;
    let arch: Arch = arg("--arch", "unet-resnet34").parse()?;
    let precision: Precision = arg("--precision", "f32").parse().map_err(anyhow::Error::msg)?;
    let mut loss_scale = LossScale::for_precision(precision);
    let profiling = std::env::args().any(|a| a == "--profile");
    let generic = std::env::args().any(|a| a == "--generic");
    let mut table: Vec<(String, f64, f64, usize)> = Vec::new();
    let device = ftu_trainer::device::parse(&arg("--device", "cpu"))?;
    let model = Segmenter::on_device(arch, ArchConfig::default(), 0, DType::F32, &device)?;
    let image = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu)?.to_device(&device)?;
    let mask = image.mean_keepdim(1)?.gt(0.0)?.to_dtype(DType::F32)?;
    let params = model
        .store()
        .named_vars()
        .into_iter()
        .filter(|(n, _)| !is_buffer(n))
        .collect();
    let mut opt = AdamW::new(params, OptimConfig::default())?;
    let mut times = Vec::new();
    for step in 0..=steps {
        profile::set_enabled(profiling && step > 0);
        let start = Instant::now();
        let ctx = Ctx::train(step as u64).with_precision(precision);
        let ctx = if generic { ctx.generic() } else { ctx };
        let out = model.forward(&image, &ctx)?;
        let loss = candle_nn::loss::binary_cross_entropy_with_logit(&out.logits, &mask)?;
        let forward = start.elapsed().as_secs_f64() * 1e3;
        let scale = loss_scale.scale();
        let grads = loss_scale.backward(&loss)?;
        let backward = start.elapsed().as_secs_f64() * 1e3 - forward;
        let finite = !loss_scale.is_dynamic() || opt.grad_norm(&grads)?.is_finite();
        if loss_scale.update(finite) {
            opt.step(&grads, 1e-3, 1.0 / scale, |_| false)?;
        }
        device.synchronize()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        // The first step allocates everything once; it is not timed.
        if step > 0 {
            times.push(ms);
            if profiling {
                record(&mut table, profile::take(), forward, backward, ms - forward - backward);
            }
        }
        eprintln!(
            "step {step}: {ms:.0} ms (forward {forward:.0}, backward {backward:.0}), loss {:.4}",
            loss.to_scalar::<f32>()?
        );
    }
    if profiling {
        print_table(&table, steps, &times);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "candle {arch} on {device:?}{} in {precision} batch {batch} {size}²: median {median:.0} ms/step over {} steps \
         ({:.1} M parameters{})",
        if generic { " (generic path)" } else { "" },
        times.len(),
        model.store().parameter_count() as f64 / 1e6,
        if loss_scale.is_dynamic() {
            format!(
                "; f16 loss scale {}, {} steps skipped",
                loss_scale.scale(),
                loss_scale.skipped
            )
        } else {
            String::new()
        }
    );
    println!("CANDLE_MS {median:.1}");
    if let Some(mib) = peak_rss_mib() {
        println!("CANDLE_PEAK_RSS_MIB {mib:.0}");
    }
    Ok(())
}

/// The process's peak resident memory so far (`VmHWM` in /proc/self/status), in MiB; None where
/// that file is not there (not Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Adds one step's profile to `table` (name, ms, share of step, bytes): ftu's ops and candle
/// layers as recorded, the unaccounted rest of the forward and of the backward, and AdamW.
fn record(
    table: &mut Vec<(String, f64, f64, usize)>,
    ops: std::collections::BTreeMap<&'static str, profile::OpTime>,
    forward: f64,
    backward: f64,
    optimiser: f64,
) {
    let mut add = |name: String, ms: f64, bytes: usize| match table.iter_mut().find(|row| row.0 == name) {
        Some(row) => {
            row.1 += ms;
            row.3 += bytes;
        }
        None => table.push((name, ms, 0.0, bytes)),
    };
    let (mut in_forward, mut in_backward) = (0.0, 0.0);
    for (name, t) in &ops {
        let ms = t.seconds * 1e3;
        // Gradients run inside candle's backward; everything else inside the forward.
        if name.contains("gradient") || name.contains("backward") {
            in_backward += ms;
        } else {
            in_forward += ms;
        }
        add(name.to_string(), ms, t.bytes);
    }
    add(
        "forward: other candle ops (loss, adds, reshapes)".into(),
        forward - in_forward,
        0,
    );
    add(
        "backward: candle autograd (its ops' gradients, every gradient's accumulation)".into(),
        backward - in_backward,
        0,
    );
    add("AdamW (in place)".into(), optimiser, 0);
}

fn print_table(table: &[(String, f64, f64, usize)], steps: usize, times: &[f64]) {
    let total: f64 = times.iter().sum::<f64>() / steps as f64;
    println!("profile, mean of {steps} steps ({total:.0} ms/step):");
    println!("{:<80} {:>9} {:>7} {:>9}", "op", "ms/step", "share", "GB/s");
    let mut rows: Vec<_> = table.to_vec();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, ms, _, bytes) in rows {
        let ms = ms / steps as f64;
        let gbs = if bytes > 0 && ms > 0.0 {
            format!("{:.1}", bytes as f64 / steps as f64 / (ms * 1e-3) / 1e9)
        } else {
            "-".into()
        };
        println!("{name:<80} {ms:>9.0} {:>6.1}% {gbs:>9}", 100.0 * ms / total);
    }
}
