//! AdamW with a warmup + cosine schedule, gradient clipping and an optional weight EMA, with its
//! state saved beside the checkpoint so `--resume` continues exactly. (candle-nn's AdamW keeps
//! its moments private, so it cannot be saved; this one is the same update.)

pub mod loss_scale;

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::config::OptimConfig;
use ftu_models::ops::adamw;

/// The learning rate at optimiser step `step` of `total`: linear warmup from 0, then cosine
/// decay from `lr` to `min_lr`. `total` is the steps of the epochs the run has now: a run
/// extended with `--resume --epochs N` goes on from the step it stopped at along the curve of an
/// N-epoch run — the rate rises from `min_lr` to that curve's value there (a warm restart) and
/// decays with it to `min_lr` at the new end.
pub fn learning_rate(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1);
    let t = ((step - cfg.warmup_steps) as f64 / span as f64).min(1.0);
    cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
}

pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: usize,
    cfg: OptimConfig,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: OptimConfig) -> Result<AdamW> {
        // Separate storage for every moment: the CPU path updates them in place.
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            m,
            v,
            step: 0,
            cfg,
        })
    }

    /// √Σ‖g‖² over the parameters that have a gradient.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for (_, p) in &self.params {
            if let Some(g) = grads.get(p) {
                total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`; gradients are scaled by `scale` first (clipping,
    /// accumulation). Parameters for which `frozen(name)` holds keep their values.
    pub fn step(&mut self, grads: &GradStore, lr: f64, scale: f64, frozen: impl Fn(&str) -> bool) -> Result<()> {
        self.step_with(grads, lr, scale, frozen, true)
    }

    /// [`AdamW::step`]; `in_place` takes the in-place CPU passes where they apply, else every
    /// parameter goes through composed tensor ops (the path on other devices).
    fn step_with(
        &mut self,
        grads: &GradStore,
        lr: f64,
        scale: f64,
        frozen: impl Fn(&str) -> bool,
        in_place: bool,
    ) -> Result<()> {
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        for (i, (name, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if frozen(name) {
                continue;
            }
            if in_place && adamw::applies(p) && adamw::applies(&self.m[i]) && adamw::applies(&self.v[i]) {
                let update = adamw::Update {
                    beta1: b1 as f32,
                    beta2: b2 as f32,
                    correction1: c1 as f32,
                    correction2: c2 as f32,
                    eps: self.cfg.eps as f32,
                    lr: lr as f32,
                    weight_decay: self.cfg.weight_decay as f32,
                    scale: scale as f32,
                };
                adamw::step(p.as_tensor(), g, &self.m[i], &self.v[i], update)?;
                continue;
            }
            let g = (g * scale)?;
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&self.m[i] / c1)?;
            let v_hat = (&self.v[i] / c2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * self.cfg.weight_decay))?;
            p.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            tensors.insert(format!("m.{name}"), self.m[i].clone());
            tensors.insert(format!("v.{name}"), self.v[i].clone());
        }
        tensors.insert(
            "step".into(),
            Tensor::new(&[self.step as u32], &candle_core::Device::Cpu)?,
        );
        save_atomic(&tensors, path)
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)?;
        let get = |key: &str| {
            tensors
                .get(key)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{}: no tensor {key}", path.display())))
        };
        for (i, (name, p)) in self.params.iter().enumerate() {
            let (m, v) = (get(&format!("m.{name}"))?, get(&format!("v.{name}"))?);
            if m.dims() != p.dims() || v.dims() != p.dims() {
                candle_core::bail!(
                    "{}: moments of {name} have shape {:?}, the model {:?}",
                    path.display(),
                    m.dims(),
                    p.dims()
                );
            }
            // Read on the host; the moments live where their parameter does.
            self.m[i] = m.to_device(p.device())?;
            self.v[i] = v.to_device(p.device())?;
        }
        self.step = get("step")?.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}

/// Writes tensors to `path` through a temp file and a rename.
pub fn save_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = ftu_formats::atomic::tmp_path(path);
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Exponential moving average of every variable (buffers included), `decay` per update.
pub struct Ema {
    decay: f64,
    shadow: Vec<(String, Var, Tensor)>,
}

impl Ema {
    pub fn new(vars: Vec<(String, Var)>, decay: f64) -> Result<Ema> {
        let shadow = vars
            .into_iter()
            .map(|(n, v)| {
                let copy = v.as_tensor().copy()?;
                Ok((n, v, copy))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Ema { decay, shadow })
    }

    pub fn update(&mut self) -> Result<()> {
        for (_, v, s) in self.shadow.iter_mut() {
            *s = ((&*s * self.decay)? + (v.as_tensor() * (1.0 - self.decay))?)?;
        }
        Ok(())
    }

    /// Swaps the model's values and the averages (call twice to swap back).
    pub fn swap(&mut self) -> Result<()> {
        for (_, v, s) in self.shadow.iter_mut() {
            let current = v.as_tensor().copy()?;
            v.set(s)?;
            *s = current;
        }
        Ok(())
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.shadow
            .iter()
            .map(|(n, _, s)| (format!("ema.{n}"), s.clone()))
            .collect()
    }

    pub fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (n, v, s) in self.shadow.iter_mut() {
            *s = tensors
                .get(&format!("ema.{n}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("no EMA value for {n}")))?
                .to_device(v.device())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_linearly_then_decays_by_cosine() {
        let cfg = OptimConfig {
            lr: 1.0,
            min_lr: 0.0,
            warmup_steps: 4,
            ..OptimConfig::default()
        };
        assert_eq!(learning_rate(&cfg, 0, 104), 0.25);
        assert_eq!(learning_rate(&cfg, 3, 104), 1.0);
        assert_eq!(learning_rate(&cfg, 4, 104), 1.0);
        assert!((learning_rate(&cfg, 54, 104) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&cfg, 104, 104).abs() < 1e-12);
    }

    /// Minimises (x − 3)²; matches a hand-computed first AdamW step; state round-trips.
    #[test]
    fn adamw_converges_matches_the_formula_and_saves_its_state() {
        let x = Var::new(&[0f32], &Device::Cpu).unwrap();
        let cfg = OptimConfig {
            weight_decay: 0.0,
            ..OptimConfig::default()
        };
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], cfg.clone()).unwrap();
        let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.1, 1.0, |_| false).unwrap();
        // First step of Adam moves by lr·sign(g) (bias-corrected m/√v = g/|g|).
        let first = x.to_vec1::<f32>().unwrap()[0];
        assert!((first - 0.1).abs() < 1e-5, "{first}");
        for _ in 0..300 {
            let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.1, 1.0, |_| false).unwrap();
        }
        assert!((x.to_vec1::<f32>().unwrap()[0] - 3.0).abs() < 0.05);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optim.safetensors");
        opt.save(&path).unwrap();
        let mut other = AdamW::new(vec![("x".into(), x.clone())], cfg).unwrap();
        other.load(&path).unwrap();
        assert_eq!(other.step, opt.step);
        assert_eq!(other.m[0].to_vec1::<f32>().unwrap(), opt.m[0].to_vec1::<f32>().unwrap());
    }

    /// The in-place CPU passes and the composed ops (the path on other devices) take the same
    /// steps, with weight decay, scaling and several parameters.
    #[test]
    fn in_place_steps_equal_composed_steps() {
        let dev = Device::Cpu;
        let start: Vec<Tensor> = [(3usize, 4usize), (5, 1)]
            .iter()
            .map(|&shape| Tensor::randn(0f32, 1.0, shape, &dev).unwrap())
            .collect();
        let run = |in_place: bool| -> Vec<Vec<f32>> {
            let vars: Vec<(String, Var)> = start
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("p{i}"), Var::from_tensor(&t.copy().unwrap()).unwrap()))
                .collect();
            let mut opt = AdamW::new(vars.clone(), OptimConfig::default()).unwrap();
            for step in 0..5 {
                let loss = vars
                    .iter()
                    .map(|(_, v)| (v.as_tensor() - step as f64).unwrap().sqr().unwrap().sum_all().unwrap())
                    .reduce(|a, b| (a + b).unwrap())
                    .unwrap();
                opt.step_with(&loss.backward().unwrap(), 0.05, 0.7, |_| false, in_place)
                    .unwrap();
            }
            vars.iter()
                .map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .chain(opt.v.iter().map(|v| v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
                .collect()
        };
        let (fused, composed) = (run(true), run(false));
        for (a, b) in fused.iter().zip(&composed) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn frozen_parameters_keep_their_values_and_ema_averages() {
        let a = Var::new(&[1f32], &Device::Cpu).unwrap();
        let b = Var::new(&[1f32], &Device::Cpu).unwrap();
        let vars = vec![
            ("encoder.a".to_string(), a.clone()),
            ("decoder.b".to_string(), b.clone()),
        ];
        let mut ema = Ema::new(vars.clone(), 0.5).unwrap();
        let mut opt = AdamW::new(vars, OptimConfig::default()).unwrap();
        let loss = (a.as_tensor() + b.as_tensor()).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.1, 1.0, |n| n.starts_with("encoder."))
            .unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), vec![1.0]);
        let moved = b.to_vec1::<f32>().unwrap()[0];
        assert!(moved < 1.0);
        ema.update().unwrap();
        ema.swap().unwrap();
        assert!((b.to_vec1::<f32>().unwrap()[0] - (0.5 + 0.5 * moved)).abs() < 1e-6);
        ema.swap().unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap()[0], moved);
    }
}
