//! One training step (forward, BCE loss, backward, AdamW) of unet-resnet34 on the CPU: batch 4,
//! 256². Prints the median over the timed steps; `bench/train_step/run.sh` sets it beside the
//! same step in PyTorch.
//!
//! `cargo bench -p ftu-models --bench train_step [-- --steps N --batch B --size S --arch A]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ftu_models::{Arch, ArchConfig, Ctx, Segmenter};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo test --all-targets` runs this too, without `--bench`: then one small step, untimed
    // in spirit, just to prove the benchmark still runs.
    let bench = std::env::args().any(|a| a == "--bench");
    let (steps, batch, size) = if bench { ("5", "4", "256") } else { ("1", "1", "64") };
    let steps: usize = arg("--steps", steps).parse()?;
    let batch: usize = arg("--batch", batch).parse()?;
    let size: usize = arg("--size", size).parse()?;
    let arch: Arch = arg("--arch", "unet-resnet34").parse()?;
    let model = Segmenter::new(arch, ArchConfig::default(), 0)?;
    let image = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu)?;
    let mask = image.mean_keepdim(1)?.gt(0.0)?.to_dtype(DType::F32)?;
    let mut opt = AdamW::new(model.store().trainable(), ParamsAdamW::default())?;
    let mut times = Vec::new();
    for step in 0..=steps {
        let start = Instant::now();
        let out = model.forward(&image, &Ctx::train(step as u64))?;
        let loss = candle_nn::loss::binary_cross_entropy_with_logit(&out.logits, &mask)?;
        let forward = start.elapsed().as_secs_f64() * 1e3;
        let grads = loss.backward()?;
        let backward = start.elapsed().as_secs_f64() * 1e3 - forward;
        opt.step(&grads)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        // The first step allocates everything once; it is not timed.
        if step > 0 {
            times.push(ms);
        }
        eprintln!(
            "step {step}: {ms:.0} ms (forward {forward:.0}, backward {backward:.0}), loss {:.4}",
            loss.to_scalar::<f32>()?
        );
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "candle {arch} batch {batch} {size}²: median {median:.0} ms/step over {} steps ({:.1} M parameters)",
        times.len(),
        model.store().parameter_count() as f64 / 1e6
    );
    println!("CANDLE_MS {median:.1}");
    Ok(())
}
