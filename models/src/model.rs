//! A segmentation network: encoder × decoder plus optional organ and pixel-size heads, its
//! parameters in one `Store`, and its export to an ONNX model ftu-infer serves as it is.

use candle_core::{DType, Tensor};
use ftu_onnx::proto::ModelProto;
use ftu_onnx::{Dim, ModelMeta};

use crate::decoders::Decoder;
use crate::encoders::Encoder;
use crate::heads::{PooledHead, ORGANS};
use crate::{Arch, ArchConfig, Ctx, Exporter, ModelError, Result, Store};

pub struct Segmenter {
    arch: Arch,
    config: ArchConfig,
    store: Store,
    encoder: Box<dyn Encoder>,
    encoder_keys: Vec<String>,
    decoder: Box<dyn Decoder>,
    organ: Option<PooledHead>,
    pixel_size: Option<PooledHead>,
}

pub struct Outputs {
    /// N×1×H×W, at the input resolution.
    pub logits: Tensor,
    /// N×5, when the model has an organ head.
    pub organ: Option<Tensor>,
    /// N×1, when the model has a pixel-size head.
    pub pixel_size: Option<Tensor>,
    /// Deep-supervision logits at the input resolution (U-Net and U-Net++ with `deep_supervision`).
    pub aux: Vec<Tensor>,
}

/// What an exported model says about itself in `metadata_props`.
#[derive(Debug, Clone)]
pub struct ExportMeta {
    /// The input normalisation ftu-infer's manifest should name (`imagenet`, `unit`, `pm1`).
    pub norm: String,
    pub train_size: Option<usize>,
    pub fold: Option<usize>,
    pub val_dice: Option<f64>,
}

impl Default for ExportMeta {
    fn default() -> Self {
        ExportMeta {
            norm: "imagenet".to_string(),
            train_size: None,
            fold: None,
            val_dice: None,
        }
    }
}

/// Input sizes must be multiples of the deepest stride.
pub const SIZE_MULTIPLE: usize = 32;

impl Segmenter {
    /// A randomly initialised network; the same seed gives the same weights.
    pub fn new(arch: Arch, config: ArchConfig, seed: u64) -> Result<Segmenter> {
        Self::with_dtype(arch, config, seed, DType::F32)
    }

    /// [`Segmenter::new`] with parameters of `dtype`: f64 for reference computations (training
    /// and export are f32).
    pub fn with_dtype(arch: Arch, config: ArchConfig, seed: u64, dtype: DType) -> Result<Segmenter> {
        Self::on_device(arch, config, seed, dtype, &candle_core::Device::Cpu)
    }

    /// [`Segmenter::with_dtype`] with its parameters and buffers on `device`: the same initial
    /// values on every device. Off the CPU (or in another dtype than f32) the layers run candle's
    /// device-generic ops instead of ftu's CPU ops.
    pub fn on_device(
        arch: Arch,
        config: ArchConfig,
        seed: u64,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Segmenter> {
        let store = Store::on_device(seed, dtype, device.clone());
        let root = store.builder();
        let mut vb_encoder = root.clone();
        for part in arch.encoder.prefix().split('.').filter(|p| !p.is_empty()) {
            vb_encoder = vb_encoder.pp(part);
        }
        let drop_path = config.drop_path.unwrap_or_else(|| arch.encoder.default_drop_path());
        let encoder = arch.encoder.build(vb_encoder, drop_path)?;
        let encoder_keys = store.named_vars().into_iter().map(|(name, _)| name).collect();
        let channels = encoder.channels();
        let decoder = arch
            .decoder
            .build(root.clone(), &channels, &encoder.strides(), &config)?;
        let deepest = *channels.last().expect("encoders have levels");
        let organ = if config.organ_head {
            Some(PooledHead::new(root.pp("organ_head"), deepest, ORGANS)?)
        } else {
            None
        };
        let pixel_size = if config.pixel_size_head {
            Some(PooledHead::new(root.pp("pixel_size_head"), deepest, 1)?)
        } else {
            None
        };
        Ok(Segmenter {
            arch,
            config,
            store,
            encoder,
            encoder_keys,
            decoder,
            organ,
            pixel_size,
        })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn config(&self) -> &ArchConfig {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checkpoint names of the encoder's parameters and buffers.
    pub fn encoder_keys(&self) -> &[String] {
        &self.encoder_keys
    }

    pub fn encoder_channels(&self) -> Vec<usize> {
        self.encoder.channels()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let ok = dims.len() == 4 && dims[1] == 3 && dims[2] % SIZE_MULTIPLE == 0 && dims[3] % SIZE_MULTIPLE == 0;
        if !ok || dims[2] == 0 || dims[3] == 0 {
            return Err(ModelError::Input {
                what: format!("image of shape {dims:?}"),
                expected: format!("N×3×H×W with H and W positive multiples of {SIZE_MULTIPLE}"),
            });
        }
        Ok(())
    }

    /// The encoder's levels, shallow to deep.
    pub fn encode(&self, x: &Tensor, ctx: &Ctx) -> Result<Vec<Tensor>> {
        self.check_input(x)?;
        self.encoder.forward(x, ctx)
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Outputs> {
        let levels = self.encode(x, ctx)?;
        let decoded = self.decoder.forward(&levels, ctx)?;
        let deepest = levels.last().expect("encoders have levels");
        Ok(Outputs {
            logits: decoded.logits,
            organ: self.organ.as_ref().map(|h| h.forward(deepest, ctx)).transpose()?,
            pixel_size: self.pixel_size.as_ref().map(|h| h.forward(deepest, ctx)).transpose()?,
            aux: decoded.aux,
        })
    }

    fn meta(&self, meta: &ExportMeta, outputs: &[&str]) -> ModelMeta {
        let mut props = vec![
            ("ftu.arch".to_string(), self.arch.name()),
            ("ftu.norm".to_string(), meta.norm.clone()),
            ("ftu.outputs".to_string(), outputs.join(",")),
        ];
        if let Some(size) = meta.train_size {
            props.push(("ftu.train_size".to_string(), size.to_string()));
        }
        if let Some(fold) = meta.fold {
            props.push(("ftu.fold".to_string(), fold.to_string()));
        }
        if let Some(dice) = meta.val_dice {
            props.push(("ftu.val_dice".to_string(), format!("{dice:.6}")));
        }
        ModelMeta {
            opset: 17,
            producer: "ftu-models".to_string(),
            props,
        }
    }

    fn image_input(e: &mut Exporter) -> String {
        let dims = [
            Dim::named("batch"),
            Dim::Fixed(3),
            Dim::named("height"),
            Dim::named("width"),
        ];
        e.graph().input("image", &dims)
    }

    /// The whole network: input `image` (N×3×H×W, all dynamic but channels), outputs `logits`
    /// (N×1×H×W) and, when present, `organ` (N×5) and `pixel_size` (N×1).
    pub fn export(&self, meta: &ExportMeta) -> Result<ModelProto> {
        let mut e = Exporter::new(&self.arch.name());
        let image = Self::image_input(&mut e);
        let levels = self.encoder.export(&mut e, &image)?;
        let logits = self.decoder.export(&mut e, &levels)?;
        let batch = Dim::named("batch");
        let mut names = vec!["logits"];
        e.graph().output(
            &logits,
            "logits",
            &[batch.clone(), Dim::Fixed(1), Dim::named("height"), Dim::named("width")],
        );
        let deepest = levels.last().expect("encoders have levels");
        for (head, name, width) in [(&self.organ, "organ", ORGANS), (&self.pixel_size, "pixel_size", 1)] {
            if let Some(head) = head {
                let value = head.export(&mut e, deepest)?;
                e.graph()
                    .output(&value, name, &[batch.clone(), Dim::Fixed(width as i64)]);
                names.push(name);
            }
        }
        Ok(e.into_graph().finish(&self.meta(meta, &names)))
    }

    /// The encoder alone: outputs `feat0`…`featK`, shallow to deep.
    pub fn export_encoder(&self, meta: &ExportMeta) -> Result<ModelProto> {
        let mut e = Exporter::new(&format!("{}-encoder", self.arch.encoder.name()));
        let image = Self::image_input(&mut e);
        let levels = self.encoder.export(&mut e, &image)?;
        let mut names = Vec::new();
        for (k, (value, channels)) in levels.iter().zip(self.encoder.channels()).enumerate() {
            let name = format!("feat{k}");
            let dims = [
                Dim::named("batch"),
                Dim::Fixed(channels as i64),
                Dim::Named(format!("height{k}")),
                Dim::Named(format!("width{k}")),
            ];
            e.graph().output(value, &name, &dims);
            names.push(name);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(e.into_graph().finish(&self.meta(meta, &refs)))
    }
}
