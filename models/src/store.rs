//! Parameter storage: a candle `VarMap` filled through a `VarBuilder` whose initial values come
//! from a seeded generator, so the same seed builds the same network on every machine.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// All parameters and buffers of one network, by their checkpoint names (`layer1.0.conv1.weight`).
#[derive(Clone)]
pub struct Store {
    vars: VarMap,
    rng: Arc<Mutex<ChaCha8Rng>>,
    dtype: DType,
    device: Device,
}

impl Store {
    pub fn new(seed: u64) -> Store {
        Self::with_dtype(seed, DType::F32)
    }

    /// A store whose variables have `dtype` (the same initial values, converted): f64 makes
    /// reference networks that tests measure f32 rounding against.
    pub fn with_dtype(seed: u64, dtype: DType) -> Store {
        Self::on_device(seed, dtype, Device::Cpu)
    }

    /// A store whose variables live on `device`. The initial values are drawn on the host from
    /// the seed, so every device starts from the same network.
    pub fn on_device(seed: u64, dtype: DType, device: Device) -> Store {
        Store {
            vars: VarMap::new(),
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            dtype,
            device,
        }
    }

    /// Where the variables live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The builder layers take; every tensor it hands out is a variable of this store.
    pub fn builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), self.dtype, self.device.clone())
    }

    pub fn var_map(&self) -> &VarMap {
        &self.vars
    }

    /// Names and variables, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.vars.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The variables an optimiser should update: everything but BatchNorm running statistics.
    pub fn trainable(&self) -> Vec<Var> {
        self.named_vars()
            .into_iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(_, var)| var)
            .collect()
    }

    /// The number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.trainable().iter().map(|v| v.elem_count()).sum()
    }

    /// Writes every variable to a safetensors file (through a temp file and a rename).
    pub fn save(&self, path: &std::path::Path) -> candle_core::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let tensors: Vec<(String, Tensor)> = self
            .named_vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors.into_iter().collect(), &tmp)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// Buffers follow the model but are not trained.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var") || name.ends_with(".num_batches_tracked")
}

impl Store {
    fn initial(&self, shape: &Shape, init: Init) -> Vec<f32> {
        let count = shape.elem_count();
        let mut rng = self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (normal, lo, up, mean, stdev) = match init {
            Init::Const(v) => return vec![v as f32; count],
            Init::Randn { mean, stdev } => (true, 0.0, 0.0, mean, stdev),
            Init::Uniform { lo, up } => (false, lo, up, 0.0, 0.0),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = match fan {
                    FanInOut::FanIn => fan_in(shape),
                    FanInOut::FanOut => fan_out(shape),
                };
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => (true, 0.0, 0.0, 0.0, std),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (false, -bound, bound, 0.0, 0.0)
                    }
                }
            }
        };
        (0..count)
            .map(|_| {
                if normal {
                    // Box–Muller: one normal value per two uniforms keeps the stream simple.
                    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    let u2: f64 = rng.random();
                    (mean + stdev * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                } else {
                    (lo + (up - lo) * rng.random::<f64>()) as f32
                }
            })
            .collect()
    }
}

fn receptive(shape: &Shape) -> usize {
    shape.dims().iter().skip(2).product::<usize>().max(1)
}

fn fan_in(shape: &Shape) -> usize {
    shape.dims().get(1).copied().unwrap_or(1) * receptive(shape)
}

fn fan_out(shape: &Shape) -> usize {
    shape.dims().first().copied().unwrap_or(1) * receptive(shape)
}

impl candle_nn::var_builder::SimpleBackend for Store {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let existing = {
            let data = self.vars.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            data.get(name).map(|v| v.as_tensor().clone())
        };
        if let Some(tensor) = existing {
            if tensor.shape() != &s {
                candle_core::bail!("parameter {name}: shape {:?} already made, {s:?} asked", tensor.dims());
            }
            return tensor.to_dtype(dtype)?.to_device(dev);
        }
        let values = self.initial(&s, h);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        let mut data = self.vars.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.vars.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match data.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("no parameter {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let data = self.vars.data().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        data.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_builds_the_same_parameters() {
        let make = |seed| {
            let store = Store::new(seed);
            let vb = store.builder();
            let t = vb
                .get_with_hints((4, 3), "w", candle_nn::init::DEFAULT_KAIMING_NORMAL)
                .unwrap();
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(make(7), make(7));
        assert_ne!(make(7), make(8));
    }

    #[test]
    fn normal_init_has_the_asked_spread() {
        let store = Store::new(1);
        let t = store
            .builder()
            .get_with_hints(10_000, "w", Init::Randn { mean: 1.0, stdev: 2.0 })
            .unwrap();
        let v = t.to_vec1::<f32>().unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!((mean - 1.0).abs() < 0.1, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.1, "std {}", var.sqrt());
    }

    #[test]
    fn buffers_are_not_trainable() {
        let store = Store::new(1);
        let vb = store.builder();
        vb.get_with_hints(3, "bn.weight", Init::Const(1.0)).unwrap();
        vb.get_with_hints(3, "bn.running_mean", Init::Const(0.0)).unwrap();
        assert_eq!(store.parameter_count(), 3);
        assert_eq!(store.named_vars().len(), 2);
    }
}
