//! Checks that need an NVIDIA GPU and a CUDA build, ignored by default (CI has no GPU):
//! `cargo test --release -p ftu-trainer --features cuda --test gpu -- --ignored`. Asked to run
//! where no CUDA device opens, they fail — they never pass without having run.

use candle_core::{DType, Device, Tensor, Var};
use ftu_models::{ArchConfig, Ctx, Precision, Segmenter};

/// Loss and every parameter gradient (by name, on the host) of one training step.
fn step(model: &Segmenter, image: &Tensor, mask: &Tensor, precision: Precision) -> (f64, Vec<(String, Vec<f32>)>) {
    let out = model.forward(image, &Ctx::train(1).with_precision(precision)).unwrap();
    let loss = candle_nn::loss::binary_cross_entropy_with_logit(&out.logits, mask).unwrap();
    let grads = loss.backward().unwrap();
    let named: Vec<(String, Var)> = model.store().named_vars();
    let gradients = named
        .iter()
        .filter_map(|(name, var)| {
            let g = grads.get(var)?;
            Some((
                name.clone(),
                g.flatten_all()
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            ))
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap() as f64, gradients)
}

/// The same network (seed 3), batch and step in `precision` on the CPU and on CUDA.
#[allow(clippy::type_complexity)]
fn cpu_and_cuda_steps(
    arch: &str,
    precision: Precision,
) -> ((f64, Vec<(String, Vec<f32>)>), (f64, Vec<(String, Vec<f32>)>)) {
    let cuda =
        ftu_trainer::device::parse("cuda").unwrap_or_else(|e| panic!("the GPU tests need a CUDA device, but {e}"));
    let arch = arch.parse().unwrap();
    let config = ArchConfig {
        // No randomness whose stream differs between devices.
        drop_path: Some(0.0),
        ..ArchConfig::default()
    };
    let image = Tensor::randn(0f32, 1.0, (2, 3, 128, 128), &Device::Cpu).unwrap();
    let mask = image
        .mean_keepdim(1)
        .unwrap()
        .gt(0.0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let on_cpu = Segmenter::on_device(arch, config.clone(), 3, DType::F32, &Device::Cpu).unwrap();
    let on_gpu = Segmenter::on_device(arch, config, 3, DType::F32, &cuda).unwrap();
    let cpu = step(&on_cpu, &image, &mask, precision);
    let gpu = step(
        &on_gpu,
        &image.to_device(&cuda).unwrap(),
        &mask.to_device(&cuda).unwrap(),
        precision,
    );
    (cpu, gpu)
}

/// The same network, batch and step on the CPU (ftu's CPU ops) and on CUDA (candle's
/// device-generic ops): the loss within 1e-3 relative, the whole gradient within 1e-2 relative
/// (L2), every parameter's gradient present on both.
#[test]
#[ignore = "needs a CUDA device: cargo test -p ftu-trainer --features cuda -- --ignored"]
fn a_training_step_on_cuda_matches_the_cpu_for_each_encoder_family() {
    for arch in ["unet-resnet18", "unet-efficientnet_b0", "segformer-mit_b0"] {
        let ((loss_cpu, grads_cpu), (loss_gpu, grads_gpu)) = cpu_and_cuda_steps(arch, Precision::F32);
        let loss_error = (loss_gpu - loss_cpu).abs() / loss_cpu.abs().max(1e-12);
        assert!(
            loss_error <= 1e-3,
            "{arch}: loss {loss_gpu} on CUDA, {loss_cpu} on the CPU"
        );
        assert_eq!(
            grads_cpu.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            grads_gpu.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "{arch}: the same parameters get gradients"
        );
        let (mut diff, mut norm) = (0f64, 0f64);
        for ((_, a), (_, b)) in grads_cpu.iter().zip(&grads_gpu) {
            for (x, y) in a.iter().zip(b) {
                diff += ((x - y) as f64).powi(2);
                norm += (*x as f64).powi(2);
            }
        }
        let relative = (diff / norm.max(1e-30)).sqrt();
        assert!(
            relative <= 1e-2,
            "{arch}: gradients differ by {relative:.2e} (relative L2)"
        );
        eprintln!("{arch}: loss {loss_error:.1e}, gradient {relative:.1e} relative difference CUDA vs CPU");
    }
}

/// bf16 and f16 on CUDA (candle's kernels in the low type) against the CPU's emulation of them
/// (operands and results rounded, float32 sums), which models/tests/training.rs checks against
/// float64: the loss within 1e-2 relative and the whole gradient's cosine ≥ 0.95. Both round to
/// the same type, but sums run in different orders and a different rounding flips some values
/// by one unit of the low type, so the bound is looser than float32's.
#[test]
#[ignore = "needs a CUDA device: cargo test -p ftu-trainer --features cuda -- --ignored"]
fn mixed_precision_on_cuda_matches_the_cpu_emulation() {
    for arch in ["unet-resnet18", "segformer-mit_b0"] {
        for precision in [Precision::Bf16, Precision::F16] {
            let ((loss_cpu, grads_cpu), (loss_gpu, grads_gpu)) = cpu_and_cuda_steps(arch, precision);
            let loss_error = (loss_gpu - loss_cpu).abs() / loss_cpu.abs().max(1e-12);
            let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
            for ((_, a), (_, b)) in grads_cpu.iter().zip(&grads_gpu) {
                for (x, y) in a.iter().zip(b) {
                    dot += *x as f64 * *y as f64;
                    na += (*x as f64).powi(2);
                    nb += (*y as f64).powi(2);
                }
            }
            let cosine = dot / (na.sqrt() * nb.sqrt()).max(1e-300);
            eprintln!("{arch} {precision}: loss {loss_error:.1e} relative difference, gradient cosine {cosine:.4}");
            assert!(
                loss_error <= 1e-2,
                "{arch} {precision}: loss {loss_gpu} on CUDA, {loss_cpu} emulated"
            );
            assert!(
                cosine >= 0.95,
                "{arch} {precision}: gradient cosine {cosine} CUDA vs emulated"
            );
        }
    }
}
