//! Training in Candle: for every registered architecture one gradient step on a tiny batch lowers
//! the loss as much as its gradient predicts, ftu's fused CPU ops give the loss and gradients of
//! the device-generic path (composed candle ops, what a GPU runs), and BatchNorm running
//! statistics move in train mode and stay put in eval mode.

mod common;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Optimizer, SGD};
use common::*;
use ftu_models::{Arch, ArchConfig, Ctx, Precision, Segmenter};

/// BCE on the mask, cross-entropy on the organ, MSE on the pixel size, Dice-free to stay smooth.
fn loss(model: &Segmenter, image: &Tensor, mask: &Tensor, organ: &Tensor, pixel: &Tensor) -> Tensor {
    loss_in(model, image, mask, organ, pixel, &Ctx::train(1))
}

fn loss_in(model: &Segmenter, image: &Tensor, mask: &Tensor, organ: &Tensor, pixel: &Tensor, ctx: &Ctx) -> Tensor {
    let out = model.forward(image, ctx).unwrap();
    let mut total = candle_nn::loss::binary_cross_entropy_with_logit(&out.logits, mask).unwrap();
    if let Some(logits) = &out.organ {
        total = (total + candle_nn::loss::cross_entropy(logits, organ).unwrap()).unwrap();
    }
    if let Some(p) = &out.pixel_size {
        total = (total + candle_nn::loss::mse(p, pixel).unwrap()).unwrap();
    }
    for aux in &out.aux {
        total = (total + candle_nn::loss::binary_cross_entropy_with_logit(aux, mask).unwrap()).unwrap();
    }
    total
}

fn batch() -> (Tensor, Tensor, Tensor, Tensor) {
    // Four images: with two, the deepest EfficientNet levels (2×2 at 64²) normalise over 8
    // values per channel and the loss is too curved along the gradient for a first-order check.
    let n = 4;
    let image = random_image(n, 64, 64, 3);
    // The mask is a function of the image, so there is something to learn.
    let mask = image
        .mean_keepdim(1)
        .unwrap()
        .gt(0.0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let organ: Vec<u32> = (0..n as u32).map(|i| (2 * i + 1) % 5).collect();
    let organ = Tensor::new(organ.as_slice(), &Device::Cpu).unwrap();
    let pixel: Vec<f32> = (0..n).map(|i| 0.4 + 0.1 * (i % 2) as f32).collect();
    let pixel = Tensor::from_vec(pixel, (n, 1), &Device::Cpu).unwrap();
    (image, mask, organ, pixel)
}

fn config(arch: Arch) -> ArchConfig {
    ArchConfig {
        dropout: 0.0,
        drop_path: Some(0.0),
        deep_supervision: matches!(
            arch.decoder,
            ftu_models::decoders::DecoderKind::Unet | ftu_models::decoders::DecoderKind::UnetPlusPlus
        ),
        ..small_config(arch)
    }
}

/// One plain gradient step, sized to lower the loss by about 0.1% if the gradient is right: the
/// loss must fall, and by about what the gradient predicts (first order), which a wrong backward
/// pass for any layer would miss.
#[test]
fn one_step_lowers_the_loss_for_every_architecture() {
    let (image, mask, organ, pixel) = batch();
    let mut failures = Vec::new();
    for arch in under_test(Scope::Training) {
        let model = Segmenter::new(arch, config(arch), 5).unwrap();
        let before = loss(&model, &image, &mask, &organ, &pixel);
        let again = loss(&model, &image, &mask, &organ, &pixel);
        assert_eq!(
            before.to_scalar::<f32>().unwrap(),
            again.to_scalar::<f32>().unwrap(),
            "{arch}: same loss twice"
        );
        let grads = before.backward().unwrap();
        let vars = model.store().trainable();
        let mut norm2 = 0f64;
        for var in &vars {
            if let Some(g) = grads.get(var) {
                norm2 += g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
            }
        }
        let b = before.to_scalar::<f32>().unwrap() as f64;
        let lr = 0.001 * b / norm2;
        let mut opt = SGD::new(vars, lr).unwrap();
        opt.step(&grads).unwrap();
        let a = loss(&model, &image, &mask, &organ, &pixel).to_scalar::<f32>().unwrap() as f64;
        let predicted = lr * norm2;
        let ratio = (b - a) / predicted;
        println!(
            "{arch:32} loss {b:.5} → {a:.5}: {:.2} of the first-order decrease",
            ratio
        );
        if !(a < b && (0.5..1.5).contains(&ratio)) {
            failures.push(format!("{arch}: {b} → {a}, {ratio:.2} of the predicted decrease"));
        }
    }
    assert!(
        failures.is_empty(),
        "loss did not fall as its gradient says:\n{}",
        failures.join("\n")
    );
}

/// Loss and per-parameter gradients (by name, in f64) of one batch.
fn loss_and_gradients(model: &Segmenter, ctx: &Ctx, dtype: DType) -> (f64, Vec<(String, Option<Tensor>)>) {
    let (image, mask, organ, pixel) = batch();
    let (image, mask, pixel) = (
        image.to_dtype(dtype).unwrap(),
        mask.to_dtype(dtype).unwrap(),
        pixel.to_dtype(dtype).unwrap(),
    );
    let loss = loss_in(model, &image, &mask, &organ, &pixel, ctx);
    let grads = loss.backward().unwrap();
    let named = model
        .store()
        .named_vars()
        .into_iter()
        .filter(|(name, _)| !ftu_models::store::is_buffer(name))
        .map(|(name, var)| (name, grads.get(&var).map(|g| g.to_dtype(DType::F64).unwrap())))
        .collect();
    (loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), named)
}

fn norm(t: &Tensor) -> f64 {
    t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt()
}

/// The CPU ops (im2col + gemm and depthwise convolutions, fused BatchNorm + activation +
/// residual, max pool, upsample + concat) against the device-generic path, the math a GPU runs,
/// both measured against the generic path in f64.
///
/// Both f32 paths round differently, and some gradients of these deep random networks with
/// 2×2 deepest levels are ill-conditioned in f32: a decoder weight of unet-efficientnet_b1 is
/// off from f64 by 7% on the generic path (1.5% with the CPU ops), one of fpn-efficientnet_b6 by
/// 0.7% with the CPU ops (0.02% generic). So the paths are compared with the truth, not with
/// each other: the CPU ops' loss error is within twice the generic path's (or 2e-5), their error
/// on the whole gradient (every parameter's, as one vector) within twice the generic path's (or
/// 1e-5), and no single parameter's gradient is off by more than 2% of its norm or twice the
/// generic path's error, which a wrong backward pass (errors of order 1) would break. A
/// gradient's norm counts as at least 1e-4 of the whole model's (some are zero but for rounding).
#[test]
fn cpu_ops_are_as_accurate_as_the_generic_path_for_every_architecture() {
    let mut failures = Vec::new();
    for arch in under_test(Scope::Training) {
        let f32_model = Segmenter::new(arch, config(arch), 5).unwrap();
        let f64_model = Segmenter::with_dtype(arch, config(arch), 5, DType::F64).unwrap();
        let (l_truth, truth) = loss_and_gradients(&f64_model, &Ctx::train(1), DType::F64);
        let (l_fast, fast) = loss_and_gradients(&f32_model, &Ctx::train(1), DType::F32);
        let (l_generic, generic) = loss_and_gradients(&f32_model, &Ctx::train(1).generic(), DType::F32);
        let (e_fast, e_generic) = ((l_fast - l_truth).abs(), (l_generic - l_truth).abs());
        if e_fast > (2e-5 * l_truth.abs()).max(2.0 * e_generic) {
            failures.push(format!("{arch}: loss {l_fast} (generic {l_generic}, f64 {l_truth})"));
        }
        let total = truth
            .iter()
            .filter_map(|(_, g)| g.as_ref())
            .map(|g| norm(g).powi(2))
            .sum::<f64>()
            .sqrt();
        let (mut worst_fast, mut worst_generic) = ((0f64, String::new()), (0f64, String::new()));
        let (mut sq_fast, mut sq_generic) = (0f64, 0f64);
        let mut per_parameter = Vec::new();
        for (((name, t), (_, f)), (_, g)) in truth.iter().zip(&fast).zip(&generic) {
            let (t, f, g) = match (t, f, g) {
                (Some(t), Some(f), Some(g)) => (t, f, g),
                (None, None, None) => continue,
                _ => {
                    failures.push(format!("{arch}: {name} has a gradient on some paths only"));
                    continue;
                }
            };
            let scale = norm(t).max(1e-4 * total).max(1e-30);
            let (df, dg) = (norm(&(f - t).unwrap()), norm(&(g - t).unwrap()));
            sq_fast += df * df;
            sq_generic += dg * dg;
            let (ef, eg) = (df / scale, dg / scale);
            if ef > worst_fast.0 {
                worst_fast = (ef, name.clone());
            }
            if eg > worst_generic.0 {
                worst_generic = (eg, name.clone());
            }
            per_parameter.push((name.clone(), ef, eg));
        }
        let (all_fast, all_generic) = (sq_fast.sqrt() / total.max(1e-30), sq_generic.sqrt() / total.max(1e-30));
        // Where float32 itself is ill-conditioned for a network (the generic path's whole gradient
        // a few percent off float64, as for unetpp-resnet50 on these small inputs), no parameter
        // can be asked to be closer than twice that.
        for (name, ef, eg) in per_parameter {
            if ef > (2.0 * eg).max(2e-2).max(2.0 * all_generic) {
                failures.push(format!(
                    "{arch}: {name} gradient off by {ef:.1e} (generic path {eg:.1e}, its whole gradient {all_generic:.1e})"
                ));
            }
        }
        // Either path's float32 rounding alone reaches 3e-5 of the whole gradient on correct ops
        // (unetpp-resnet18: CPU ops 3.1e-5, generic 2.9e-5), and which of the two happens to land
        // nearer float64 varies (unetpp-swin_tiny: 1.1e-5 against 2.5e-6); a wrong backward pass
        // is off by 1e-2 and more.
        if all_fast > (2.0 * all_generic).max(5e-5) {
            failures.push(format!(
                "{arch}: whole gradient off by {all_fast:.1e} (generic path {all_generic:.1e})"
            ));
        }
        println!(
            "{arch:28} error against f64, whole gradient: CPU ops {all_fast:.1e}, generic {all_generic:.1e}; \
             worst parameter: CPU ops {:.1e} ({}), generic {:.1e} ({})",
            worst_fast.0, worst_fast.1, worst_generic.0, worst_generic.1
        );
    }
    assert!(
        failures.is_empty(),
        "CPU ops less accurate than the generic path:\n{}",
        failures.join("\n")
    );
}

/// Mixed precision (convolutions and matmuls in bfloat16 or float16, the rest float32; on the
/// CPU with the rounding a GPU's tensor cores do) against float64, on one network of each
/// decoder and encoder family: the loss within 5% (bf16) or 0.2% (f16), and the gradient
/// pointing about float64's way (cosine ≥ 0.8 and ≥ 0.98; bfloat16 keeps 8 mantissa bits,
/// float16 11). Measured: 1 − cosine 0.08 / 0.07 / 4e-5 in bf16 and 8e-3 / 3e-3 / 5e-7 in f16 for
/// unet-resnet18 / fpn-efficientnet_b0 / segformer-mit_b0 (f32: below 2e-10); a wrong backward
/// pass gives a cosine near 0. Each must also be clearly less accurate than float32, which shows the low
/// precision is in effect (a test that passed with float32 throughout would prove nothing).
/// Deep random EfficientNets at 64² (2×2 deepest levels) are too ill-conditioned for a bound on
/// the gradient error to mean anything even in float32 (see the test below), so they are left out.
#[test]
fn mixed_precision_tracks_float64() {
    let mut failures = Vec::new();
    for arch in ["unet-resnet18", "fpn-efficientnet_b0", "segformer-mit_b0"] {
        let arch: Arch = arch.parse().unwrap();
        let f32_model = Segmenter::new(arch, config(arch), 5).unwrap();
        let f64_model = Segmenter::with_dtype(arch, config(arch), 5, DType::F64).unwrap();
        let (l_truth, truth) = loss_and_gradients(&f64_model, &Ctx::train(1), DType::F64);
        // 1 − cosine between the whole gradient (every parameter's, as one vector) and float64's.
        let misalignment = |grads: &[(String, Option<Tensor>)]| {
            let (mut dot, mut nt, mut ng) = (0f64, 0f64, 0f64);
            for ((_, t), (_, g)) in truth.iter().zip(grads) {
                if let (Some(t), Some(g)) = (t, g) {
                    dot += (t * g).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
                    nt += norm(t).powi(2);
                    ng += norm(g).powi(2);
                }
            }
            1.0 - dot / (nt.sqrt() * ng.sqrt()).max(1e-300)
        };
        let (l_f32, g_f32) = loss_and_gradients(&f32_model, &Ctx::train(1), DType::F32);
        let f32_off = misalignment(&g_f32);
        let mut line = format!(
            "{arch:22} 1 − cosine, loss error: f32 {f32_off:.1e}, {:.1e}",
            ((l_f32 - l_truth) / l_truth).abs()
        );
        for (precision, loss_bound, off_bound) in [(Precision::Bf16, 5e-2, 0.2), (Precision::F16, 2e-3, 2e-2)] {
            let ctx = Ctx::train(1).with_precision(precision);
            let (l, g) = loss_and_gradients(&f32_model, &ctx, DType::F32);
            let (loss_error, off) = (((l - l_truth) / l_truth).abs(), misalignment(&g));
            line.push_str(&format!("; {precision} {off:.1e}, {loss_error:.1e}"));
            if !(loss_error < loss_bound && off < off_bound) {
                failures.push(format!(
                    "{arch} {precision}: loss off by {loss_error:.1e} (bound {loss_bound:.0e}), \
                     1 − cosine {off:.1e} (bound {off_bound:.0e})"
                ));
            }
            if off < 10.0 * f32_off.max(1e-12) {
                failures.push(format!(
                    "{arch} {precision}: gradient as close to float64's as float32's ({off:.1e}, \
                     f32 {f32_off:.1e}): is the low precision used?"
                ));
            }
        }
        println!("{line}");
    }
    assert!(failures.is_empty(), "mixed precision:\n{}", failures.join("\n"));
}

fn running_stats(model: &Segmenter) -> Vec<f32> {
    let mut all = Vec::new();
    for (name, var) in model.store().named_vars() {
        if name.contains("running_") {
            all.extend(var.as_tensor().to_vec1::<f32>().unwrap());
        }
    }
    all
}

#[test]
fn batch_norm_statistics_move_only_in_train_mode() {
    let arch: Arch = "unet-resnet18".parse().unwrap();
    let model = Segmenter::new(arch, config(arch), 5).unwrap();
    let image = random_image(2, 64, 64, 4);
    let start = running_stats(&model);
    assert!(start.len() > 100);
    model.forward(&image, &Ctx::eval()).unwrap();
    assert_eq!(running_stats(&model), start, "eval mode changed running statistics");
    let trained = model.forward(&image, &Ctx::train(0)).unwrap();
    let moved = running_stats(&model);
    let changed = moved.iter().zip(&start).filter(|(a, b)| a != b).count();
    assert!(
        changed > start.len() / 2,
        "only {changed} of {} statistics moved",
        start.len()
    );
    // Train mode normalises with batch statistics, so it differs from eval on the same input.
    let eval = model.forward(&image, &Ctx::eval()).unwrap();
    let gap = (trained.logits - eval.logits)
        .unwrap()
        .abs()
        .unwrap()
        .max(D::Minus1)
        .unwrap();
    assert!(gap.max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3);
}
