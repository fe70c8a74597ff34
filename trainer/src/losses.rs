//! Segmentation losses on logits (N×1×H×W) against targets in 0–1 (0/1 masks or soft labels),
//! each per image (N values), and their weighted sum averaged over the batch, optionally with a
//! weight per image. `keep` (N×1×H×W, 0 or 1) leaves pixels out of every term (a pseudo-label's
//! unsure band).

use candle_core::{DType, Result, Tensor, D};

use crate::config::LossConfig;

/// BCE with logits per pixel, stable for large |x|: max(x, 0) − x·y + ln(1 + e^−|x|); the mean
/// of each image.
pub fn bce(logits: &Tensor, target: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
    let per_pixel = ((logits.relu()? - (logits * target)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    per_image_mean(&per_pixel, keep)
}

/// Sums over everything but the batch: N values.
fn per_image_sum(t: &Tensor) -> Result<Tensor> {
    t.flatten_from(1)?.sum(D::Minus1)
}

/// The mean of each image over its kept pixels (all when `keep` is `None`; 0 when none is kept).
fn per_image_mean(t: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
    match keep {
        None => t.flatten_from(1)?.mean(D::Minus1),
        Some(k) => per_image_sum(&(t * k)?)?.div(&per_image_sum(k)?.clamp(1.0, f64::MAX)?),
    }
}

/// Probabilities and targets with the left-out pixels zeroed (so they add nothing to overlaps
/// and areas).
fn kept(logits: &Tensor, target: &Tensor, keep: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let p = candle_nn::ops::sigmoid(logits)?;
    match keep {
        None => Ok((p, target.clone())),
        Some(k) => Ok(((p * k)?, (target * k)?)),
    }
}

/// 1 − soft Dice of each image (smoothing 1 keeps empty masks finite).
pub fn dice(logits: &Tensor, target: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
    let (p, target) = kept(logits, target, keep)?;
    let inter = per_image_sum(&(&p * &target)?)?;
    let total = (per_image_sum(&p)? + per_image_sum(&target)?)?;
    let score = ((inter * 2.0)? + 1.0)?.div(&(total + 1.0)?)?;
    1.0 - score
}

/// 1 − Tversky index of each image: TP / (TP + α·FP + β·FN); β > α weighs misses more.
pub fn tversky(logits: &Tensor, target: &Tensor, alpha: f64, beta: f64, keep: Option<&Tensor>) -> Result<Tensor> {
    let (p, target) = kept(logits, target, keep)?;
    let target = &target;
    let tp = per_image_sum(&(&p * target)?)?;
    let fp = per_image_sum(&(&p * (1.0 - target)?)?)?;
    let fne = per_image_sum(&((1.0 - &p)? * target)?)?;
    // Smoothing 0.5, so that α = β = 0.5 is exactly `dice`.
    let denom = (((&tp + (fp * alpha)?)? + (fne * beta)?)? + 0.5)?;
    1.0 - (tp + 0.5)?.div(&denom)?
}

/// Focal loss: (1 − p_t)^γ · BCE per pixel; the mean of each image.
pub fn focal(logits: &Tensor, target: &Tensor, gamma: f64, keep: Option<&Tensor>) -> Result<Tensor> {
    let per_pixel = ((logits.relu()? - (logits * target)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let p = candle_nn::ops::sigmoid(logits)?;
    let p_t = ((&p * target)? + ((1.0 - &p)? * (1.0 - target)?)?)?;
    let weight = (1.0 - p_t)?.clamp(0.0, 1.0)?.powf(gamma)?;
    per_image_mean(&(weight * per_pixel)?, keep)
}

/// The gradient of the Lovász extension of the Jaccard loss for errors sorted decreasingly with
/// these labels (Berman et al. 2018).
fn lovasz_grad(gt_sorted: &[f32]) -> Vec<f32> {
    let total: f32 = gt_sorted.iter().sum();
    let mut grad = Vec::with_capacity(gt_sorted.len());
    let (mut cum_gt, mut cum_not) = (0f32, 0f32);
    let mut prev = 0f32;
    for &g in gt_sorted {
        cum_gt += g;
        cum_not += 1.0 - g;
        let jaccard = 1.0 - (total - cum_gt) / (total + cum_not);
        grad.push(jaccard - prev);
        prev = jaccard;
    }
    grad
}

/// Lovász hinge of each image (over its kept pixels).
pub fn lovasz_hinge(logits: &Tensor, target: &Tensor, keep: Option<&Tensor>) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let mut losses = Vec::with_capacity(n);
    for i in 0..n {
        let mut x = logits.get(i)?.flatten_all()?;
        let mut y = target.get(i)?.flatten_all()?;
        if let Some(k) = keep {
            let kept: Vec<u32> = k
                .get(i)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .enumerate()
                .filter(|(_, &v)| v > 0.5)
                .map(|(j, _)| j as u32)
                .collect();
            if kept.is_empty() {
                losses.push(Tensor::zeros((), DType::F32, logits.device())?);
                continue;
            }
            let idx = Tensor::new(kept, logits.device())?;
            x = x.index_select(&idx, 0)?;
            y = y.index_select(&idx, 0)?;
        }
        let signs = ((&y * 2.0)? - 1.0)?;
        let errors = (1.0 - (&x * &signs)?)?;
        let order = errors.detach().arg_sort_last_dim(false)?;
        let sorted = errors.index_select(&order, 0)?;
        let gt_sorted = y.index_select(&order, 0)?.to_vec1::<f32>()?;
        let grad = Tensor::new(lovasz_grad(&gt_sorted), logits.device())?;
        losses.push((sorted.relu()? * grad)?.sum_all()?);
    }
    Tensor::stack(&losses, 0)
}

/// The configured weighted sum of segmentation terms, averaged over the batch; with
/// `image_weights` (N values, e.g. per organ), each image's sum counts that many times; with
/// `keep`, only its pixels count.
pub fn segmentation(
    logits: &Tensor,
    target: &Tensor,
    cfg: &LossConfig,
    image_weights: Option<&Tensor>,
    keep: Option<&Tensor>,
) -> Result<Tensor> {
    let mut total = Tensor::zeros(logits.dim(0)?, DType::F32, logits.device())?;
    let terms: [(f64, &dyn Fn() -> Result<Tensor>); 5] = [
        (cfg.bce, &|| bce(logits, target, keep)),
        (cfg.dice, &|| dice(logits, target, keep)),
        (cfg.tversky, &|| {
            tversky(logits, target, cfg.tversky_alpha, cfg.tversky_beta, keep)
        }),
        (cfg.focal, &|| focal(logits, target, cfg.focal_gamma, keep)),
        (cfg.lovasz, &|| lovasz_hinge(logits, target, keep)),
    ];
    for (weight, term) in terms {
        if weight > 0.0 {
            total = (total + (term()? * weight)?)?;
        }
    }
    match image_weights {
        None => total.mean_all(),
        Some(w) => (total * w)?.mean_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(values: &[f32], n: usize) -> Tensor {
        Tensor::from_slice(values, (n, 1, 1, values.len() / n), &Device::Cpu).unwrap()
    }

    /// The batch mean of a per-image loss.
    fn scalar(t: Tensor) -> f32 {
        t.mean_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn bce_matches_the_formula_and_stays_finite_for_large_logits() {
        let logits = t(&[2.0, -1.0, 100.0, -100.0], 1);
        let target = t(&[1.0, 0.0, 1.0, 0.0], 1);
        let expected = [(1.0 + (-2f32).exp()).ln(), (1.0 + (-1f32).exp()).ln(), 0.0, 0.0];
        let want = expected.iter().sum::<f32>() / 4.0;
        assert!((scalar(bce(&logits, &target, None).unwrap()) - want).abs() < 1e-6);
        let wrong = t(&[-100.0], 1);
        assert!((scalar(bce(&wrong, &t(&[1.0], 1), None).unwrap()) - 100.0).abs() < 1e-3);
    }

    #[test]
    fn dice_tversky_and_lovasz_are_zero_when_perfect_and_high_when_inverted() {
        let target = t(&[1.0, 1.0, 0.0, 0.0, 1.0, 0.0], 2);
        let perfect = ((&target * 40.0).unwrap() - 20.0).unwrap();
        let inverted = perfect.neg().unwrap();
        for (name, f) in [
            (
                "dice",
                &(|l: &Tensor| dice(l, &target, None)) as &dyn Fn(&Tensor) -> Result<Tensor>,
            ),
            ("tversky", &|l| tversky(l, &target, 0.3, 0.7, None)),
            ("lovasz", &|l| lovasz_hinge(l, &target, None)),
        ] {
            let good = scalar(f(&perfect).unwrap());
            let bad = scalar(f(&inverted).unwrap());
            assert!(good < 0.01, "{name}: perfect {good}");
            assert!(bad > 0.6, "{name}: inverted {bad}");
        }
    }

    #[test]
    fn tversky_with_equal_weights_is_dice_and_focal_with_gamma_0_is_bce() {
        let logits = t(&[0.3, -1.2, 2.0, 0.1, -0.5, 1.5], 2);
        let target = t(&[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], 2);
        let d = scalar(dice(&logits, &target, None).unwrap());
        let tv = scalar(tversky(&logits, &target, 0.5, 0.5, None).unwrap());
        assert!((d - tv).abs() < 1e-6, "dice {d} tversky {tv}");
        let b = scalar(bce(&logits, &target, None).unwrap());
        let f = scalar(focal(&logits, &target, 0.0, None).unwrap());
        assert!((b - f).abs() < 1e-6);
        assert!(scalar(focal(&logits, &target, 2.0, None).unwrap()) < f);
    }

    /// For a single image with one wrong pixel among margins, Lovász equals the hinge error of
    /// that pixel times the Jaccard gradient (known value).
    #[test]
    fn lovasz_known_value() {
        // Labels 1, 0; logits 2 (right, error −1) and 0.5 (wrong, error 1.5).
        let logits = t(&[2.0, 0.5], 1);
        let target = t(&[1.0, 0.0], 1);
        // Sorted errors: 1.5 (label 0), −1 (label 1). grad[0] = 1 − (1 − 0)/(1 + 1) = 0.5.
        assert!((scalar(lovasz_hinge(&logits, &target, None).unwrap()) - 0.75).abs() < 1e-6);
    }

    #[test]
    fn weighted_sum_adds_the_configured_terms() {
        let logits = t(&[0.3, -1.2, 2.0, 0.1], 1);
        let target = t(&[1.0, 0.0, 1.0, 0.0], 1);
        let cfg = LossConfig {
            bce: 0.5,
            dice: 2.0,
            ..LossConfig::default()
        };
        let total = scalar(segmentation(&logits, &target, &cfg, None, None).unwrap());
        let want =
            0.5 * scalar(bce(&logits, &target, None).unwrap()) + 2.0 * scalar(dice(&logits, &target, None).unwrap());
        assert!((total - want).abs() < 1e-6);
    }

    /// Two images, weights 3 and 1: the weighted loss is (3·L₀ + L₁) / 2, from each image's own.
    #[test]
    fn image_weights_scale_each_images_loss() {
        let logits = t(&[0.3, -1.2, 2.0, 0.1, -0.5, 1.5], 2);
        let target = t(&[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], 2);
        let cfg = LossConfig::default();
        let each = |i: usize| {
            let (l, y) = (logits.narrow(0, i, 1).unwrap(), target.narrow(0, i, 1).unwrap());
            scalar(segmentation(&l, &y, &cfg, None, None).unwrap())
        };
        let w = Tensor::new(&[3f32, 1.0], &Device::Cpu).unwrap();
        let weighted = scalar(segmentation(&logits, &target, &cfg, Some(&w), None).unwrap());
        assert!((weighted - (3.0 * each(0) + each(1)) / 2.0).abs() < 1e-6);
        let plain = scalar(segmentation(&logits, &target, &cfg, None, None).unwrap());
        assert!((plain - (each(0) + each(1)) / 2.0).abs() < 1e-6);
    }

    /// A left-out pixel adds nothing: changing its logit changes no term, and every term equals
    /// the same term on the kept pixels alone; keeping every pixel is no mask at all.
    #[test]
    fn left_out_pixels_count_in_no_term() {
        let target = t(&[1.0, 0.0, 0.6, 1.0, 0.0, 0.2], 1);
        let keep = t(&[1.0, 1.0, 0.0, 1.0, 1.0, 0.0], 1);
        let a = t(&[0.3, -1.2, 2.0, 0.1, -0.5, 1.5], 1);
        let b = t(&[0.3, -1.2, -7.0, 0.1, -0.5, 9.0], 1);
        let kept_logits = t(&[0.3, -1.2, 0.1, -0.5], 1);
        let kept_target = t(&[1.0, 0.0, 1.0, 0.0], 1);
        type Term = fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>;
        let terms: [(&str, Term); 5] = [
            ("bce", bce),
            ("dice", dice),
            ("tversky", |l, y, k| tversky(l, y, 0.3, 0.7, k)),
            ("focal", |l, y, k| focal(l, y, 2.0, k)),
            ("lovasz", lovasz_hinge),
        ];
        for (name, f) in terms {
            let with_a = scalar(f(&a, &target, Some(&keep)).unwrap());
            let with_b = scalar(f(&b, &target, Some(&keep)).unwrap());
            let alone = scalar(f(&kept_logits, &kept_target, None).unwrap());
            assert!((with_a - with_b).abs() < 1e-6, "{name}: {with_a} vs {with_b}");
            assert!((with_a - alone).abs() < 1e-6, "{name}: {with_a} vs kept alone {alone}");
            let ones = t(&[1.0; 6], 1);
            let all = scalar(f(&a, &target, Some(&ones)).unwrap());
            let none = scalar(f(&a, &target, None).unwrap());
            assert!((all - none).abs() < 1e-6, "{name}: keep all {all} vs none {none}");
        }
    }
}
