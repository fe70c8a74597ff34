//! The ensemble manifest (TOML): groups of models at an input size, how each model wants its
//! input and gives its output, TTA, per-organ thresholds. Parsed and checked once here; errors name
//! the field (`group[1].model[0].norm`). The file's own shape, which the trainer and the bundle
//! write, is [`ManifestFile`]; [`Manifest`] is the checked value the engine runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::organ::{DataSource, Organ};
use crate::tta::TtaMode;

pub mod file;

use file::{CudaFile, GroupFile, ModelFile, PostprocessFile};
pub use file::{ManifestError, ManifestFile, OutputRef};

/// The model input sizes must divide by this (the encoders' total stride).
pub const SIZE_MULTIPLE: usize = 32;

/// A checked manifest. Model paths are absolute (resolved against the manifest's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub path: PathBuf,
    pub groups: Vec<Group>,
    pub tta: Tta,
    pub thresholds: Thresholds,
    pub scaling: Option<PixelScaling>,
    /// `[tissue]`: which windows of a tiled group are worth running.
    pub tissue: TissueDetection,
    /// `[postprocess]`: mask clean-up per organ.
    pub postprocess: PostprocessTable,
    /// `[cuda]`: options of ONNX Runtime's CUDA execution provider (ignored on the CPU).
    pub cuda: CudaSettings,
}

/// Options of ONNX Runtime's CUDA execution provider; an unset one keeps ONNX Runtime's default
/// (exhaustive cuDNN convolution search, no arena limit, TF32 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaSettings {
    /// How cuDNN picks each convolution's algorithm (`cudnn_conv_algo_search`).
    pub conv_search: Option<ConvSearch>,
    /// The most device memory ONNX Runtime's arena takes, in MiB (`gpu_mem_limit`).
    pub memory_limit_mib: Option<usize>,
    /// Whether float32 convolutions and matmuls may use TF32 tensor cores (`use_tf32`).
    pub tf32: Option<bool>,
}

impl CudaSettings {
    /// These settings where set, `fallback`'s elsewhere (command-line flags over the manifest's).
    pub fn or(self, fallback: CudaSettings) -> CudaSettings {
        CudaSettings {
            conv_search: self.conv_search.or(fallback.conv_search),
            memory_limit_mib: self.memory_limit_mib.or(fallback.memory_limit_mib),
            tf32: self.tf32.or(fallback.tf32),
        }
    }
}

/// cuDNN's convolution algorithm choice: `exhaustive` benchmarks every algorithm once per input
/// shape (the fastest runs, a slower first batch), `heuristic` asks cuDNN's heuristics,
/// `default` takes the implicit-precomputed GEMM algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvSearch {
    Exhaustive,
    Heuristic,
    Default,
}

impl std::str::FromStr for ConvSearch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exhaustive" => Ok(ConvSearch::Exhaustive),
            "heuristic" => Ok(ConvSearch::Heuristic),
            "default" => Ok(ConvSearch::Default),
            _ => Err(format!("`{s}`: expected exhaustive, heuristic or default")),
        }
    }
}

fn parse_cuda(raw: CudaFile) -> Result<CudaSettings, (String, String)> {
    let conv_search = match raw.conv_search {
        None => None,
        Some(s) => Some(s.parse().map_err(|m| ("cuda.conv_search".to_string(), m))?),
    };
    let memory_limit_mib = match raw.memory_limit_mib {
        None => None,
        Some(m) if m > 0 => Some(m as usize),
        Some(m) => {
            return Err((
                "cuda.memory_limit_mib".to_string(),
                format!("{m} is not a positive number of MiB"),
            ))
        }
    };
    Ok(CudaSettings {
        conv_search,
        memory_limit_mib,
        tf32: raw.tf32,
    })
}

/// Models that see the slide at the same input size; their maps are averaged by model weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub size: usize,
    pub weight: f32,
    pub mode: GroupMode,
    pub models: Vec<ModelSpec>,
}

/// How a group sees a slide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupMode {
    /// The whole slide resized to the group's input size (the competition's way).
    Resize,
    /// Windows of the input size over the slide at the group's scale, blended (whole-slide images).
    Tiles(TileSpec),
}

/// `mode = "tiles"`: window overlap, scale and how many windows run in one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileSpec {
    /// Fraction of a window shared with its neighbour, in [0, 0.95].
    pub overlap: f64,
    /// Model pixels per slide pixel when the manifest has no `target_pixel_size`.
    pub scale: f64,
    /// Windows per model run (each with all its TTA variants).
    pub batch: usize,
}

impl TileSpec {
    /// Model pixels per slide pixel for a slide of this pixel size.
    pub fn factor(&self, size: usize, scaling: Option<&PixelScaling>, pixel_size: f64) -> f64 {
        match scaling {
            Some(s) => pixel_size / s.target_pixel_size * size as f64 / s.reference_size,
            None => self.scale,
        }
    }
}

/// Background windows are skipped: Otsu's threshold on the saturation of a slide thumbnail marks
/// tissue, and a window runs when at least `min_fraction` of it is tissue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TissueDetection {
    pub enabled: bool,
    pub min_fraction: f64,
}

impl Default for TissueDetection {
    fn default() -> Self {
        TissueDetection {
            enabled: true,
            min_fraction: 0.01,
        }
    }
}

/// Clean-up of a thresholded mask. Areas in µm² are converted with the slide's pixel size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PostprocessSpec {
    /// Components smaller than this are removed.
    pub min_area: Option<Area>,
    /// Holes smaller than this are filled.
    pub max_hole: Option<Area>,
    /// Grow (positive) or shrink (negative) the mask by this many pixels, with a disc.
    pub dilate: i32,
}

impl PostprocessSpec {
    pub fn is_identity(&self) -> bool {
        self.min_area.is_none() && self.max_hole.is_none() && self.dilate == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Area {
    Pixels(f64),
    SquareMicrons(f64),
}

impl Area {
    /// The area in pixels of a slide with this pixel size (µm).
    pub fn pixels(&self, pixel_size: f64) -> f64 {
        match *self {
            Area::Pixels(p) => p,
            Area::SquareMicrons(a) => a / (pixel_size * pixel_size),
        }
    }
}

/// `[postprocess.default]` and `[postprocess.<organ>]` (an organ's table replaces the default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PostprocessTable {
    pub default: PostprocessSpec,
    pub organ: BTreeMap<Organ, PostprocessSpec>,
}

impl PostprocessTable {
    pub fn get(&self, organ: Organ) -> PostprocessSpec {
        self.organ.get(&organ).copied().unwrap_or(self.default)
    }
}

/// One ONNX model and how to feed it and read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Where in the manifest it was declared, e.g. `group[0].model[1]`, for error messages.
    pub field: String,
    pub path: PathBuf,
    pub weight: f32,
    /// `None` when the manifest leaves it out: the engine then takes the one the model states in
    /// its metadata (`ftu.norm`), and refuses a model that states none.
    pub norm: Option<Normalisation>,
    pub channels: ChannelOrder,
    pub output: OutputRef,
    pub activation: Activation,
    /// The output channel that holds the mask.
    pub channel: usize,
    /// Only used for slides of these organs; `None` means every organ.
    pub organs: Option<Vec<Organ>>,
}

impl ModelSpec {
    pub fn serves(&self, organ: Organ) -> bool {
        self.organs.as_ref().is_none_or(|o| o.contains(&organ))
    }
}

/// Per input channel, in the model's channel order: `(x − mean) / std` on 0–255 pixel values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalisation {
    const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

    /// A named normalisation, given in RGB and permuted to the model's channel order.
    pub fn named(name: &str, channels: ChannelOrder) -> Option<Normalisation> {
        let rgb = match name {
            "imagenet" => Normalisation {
                mean: Self::IMAGENET_MEAN.map(|m| m * 255.0),
                std: Self::IMAGENET_STD.map(|s| s * 255.0),
            },
            "unit" => Normalisation {
                mean: [0.0; 3],
                std: [255.0; 3],
            },
            "pm1" => Normalisation {
                mean: [127.0; 3],
                std: [127.0; 3],
            },
            _ => return None,
        };
        Some(match channels {
            ChannelOrder::Rgb => rgb,
            ChannelOrder::Bgr => Normalisation {
                mean: reversed(rgb.mean),
                std: reversed(rgb.std),
            },
        })
    }
}

fn reversed(v: [f32; 3]) -> [f32; 3] {
    [v[2], v[1], v[0]]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    /// OpenCV's order: the model's channel 0 is blue.
    Bgr,
}

impl std::fmt::Display for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputRef::Index(i) => write!(f, "output #{i}"),
            OutputRef::Name(n) => write!(f, "output `{n}`"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Sigmoid,
    /// Softmax over the output's channels, then the configured channel.
    Softmax,
    /// The output is already a probability.
    None,
}

/// `[tta]`: which transforms, at which input scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Tta {
    pub mode: TtaMode,
    pub scales: Vec<f32>,
}

impl Default for Tta {
    fn default() -> Self {
        Tta {
            mode: TtaMode::None,
            scales: vec![1.0],
        }
    }
}

/// `[thresholds]`: a default, per organ, and per organ for one data source.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub default: f32,
    pub organ: BTreeMap<Organ, f32>,
    pub source: BTreeMap<(DataSource, Organ), f32>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            default: 0.5,
            organ: BTreeMap::new(),
            source: BTreeMap::new(),
        }
    }
}

impl Thresholds {
    /// The most specific threshold: for this source and organ, else the organ, else the default.
    pub fn get(&self, organ: Organ, source: DataSource) -> f32 {
        self.source
            .get(&(source, organ))
            .or_else(|| self.organ.get(&organ))
            .copied()
            .unwrap_or(self.default)
    }
}

/// `target_pixel_size`: slides are scaled by their pixel size so that the models see the µm per
/// pixel they were trained at. A group's `size` is then its input side for a slide of
/// `reference_size` pixels at `target_pixel_size` µm (a 3000² HPA training slide by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelScaling {
    pub target_pixel_size: f64,
    pub reference_size: f64,
}

impl PixelScaling {
    /// The model input (height, width) for a slide, rounded to multiples of [`SIZE_MULTIPLE`].
    pub fn input_dims(&self, size: usize, height: usize, width: usize, pixel_size: f64) -> (usize, usize) {
        let factor = pixel_size / self.target_pixel_size * size as f64 / self.reference_size;
        (
            round_to_multiple(height as f64 * factor),
            round_to_multiple(width as f64 * factor),
        )
    }
}

/// Nearest multiple of [`SIZE_MULTIPLE`], at least one multiple.
pub fn round_to_multiple(v: f64) -> usize {
    let m = SIZE_MULTIPLE as f64;
    ((v / m).round().max(1.0) * m) as usize
}

impl Manifest {
    /// Reads and checks a manifest file; model files must exist.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ManifestError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Manifest::parse(&text, path, &dir)
    }

    /// Parses manifest text; `path` is for messages, `dir` resolves relative model paths.
    pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Manifest, ManifestError> {
        Manifest::check(ManifestFile::parse(text, path)?, path, dir)
    }

    /// Checks a manifest file's fields; `path` is for messages, `dir` resolves relative model paths.
    pub fn check(raw: ManifestFile, path: &Path, dir: &Path) -> Result<Manifest, ManifestError> {
        let field = |field: &str, message: String| ManifestError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };

        let scaling = match (raw.target_pixel_size, raw.reference_size) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(field(
                    "reference_size",
                    "only means something with target_pixel_size".into(),
                ))
            }
            (Some(t), reference) => {
                if !(t.is_finite() && t > 0.0) {
                    return Err(field("target_pixel_size", format!("{t} is not a positive size in µm")));
                }
                let r = reference.unwrap_or(3000.0);
                if !(r.is_finite() && r >= 1.0) {
                    return Err(field("reference_size", format!("{r} is not a positive pixel count")));
                }
                Some(PixelScaling {
                    target_pixel_size: t,
                    reference_size: r,
                })
            }
        };

        let tta = match raw.tta {
            None => Tta::default(),
            Some(t) => {
                let mode = match t.mode {
                    None => TtaMode::None,
                    Some(m) => m
                        .parse()
                        .map_err(|e: crate::tta::UnknownTta| field("tta.mode", e.to_string()))?,
                };
                let scales = t.scales.unwrap_or_else(|| vec![1.0]);
                if scales.is_empty() {
                    return Err(field("tta.scales", "is empty; leave it out for [1.0]".into()));
                }
                for s in &scales {
                    if !(s.is_finite() && *s >= 0.25 && *s <= 4.0) {
                        return Err(field("tta.scales", format!("{s} is outside 0.25..=4")));
                    }
                }
                Tta {
                    mode,
                    scales: scales.into_iter().map(|s| s as f32).collect(),
                }
            }
        };

        let thresholds = match raw.thresholds {
            None => Thresholds::default(),
            Some(table) => parse_thresholds(&table).map_err(|(f, m)| field(&f, m))?,
        };

        if raw.group.is_empty() {
            return Err(field(
                "group",
                "no [[group]]: the ensemble needs at least one group of models".into(),
            ));
        }
        let mut groups = Vec::new();
        for (gi, g) in raw.group.into_iter().enumerate() {
            let gname = format!("group[{gi}]");
            if g.size < SIZE_MULTIPLE as i64 || g.size % SIZE_MULTIPLE as i64 != 0 || g.size > 16384 {
                return Err(field(
                    &format!("{gname}.size"),
                    format!("{} is not a multiple of {SIZE_MULTIPLE} between 32 and 16384", g.size),
                ));
            }
            let weight = positive(g.weight, &format!("{gname}.weight")).map_err(|(f, m)| field(&f, m))?;
            if g.model.is_empty() {
                return Err(field(
                    &format!("{gname}.model"),
                    "the group has no [[group.model]]".into(),
                ));
            }
            let mode = parse_mode(&g, &gname, scaling.is_some()).map_err(|(f, m)| field(&f, m))?;
            let mut models = Vec::new();
            for (mi, m) in g.model.into_iter().enumerate() {
                let mname = format!("{gname}.model[{mi}]");
                models.push(parse_model(m, &mname, dir).map_err(|(f, msg)| field(&f, msg))?);
            }
            groups.push(Group {
                size: g.size as usize,
                weight,
                mode,
                models,
            });
        }
        let tissue = match raw.tissue {
            None => TissueDetection::default(),
            Some(t) => {
                let min_fraction = t.min_fraction.unwrap_or(TissueDetection::default().min_fraction);
                if !(0.0..=1.0).contains(&min_fraction) {
                    return Err(field(
                        "tissue.min_fraction",
                        format!("{min_fraction} is not a fraction in 0..=1"),
                    ));
                }
                TissueDetection {
                    enabled: t.detect.unwrap_or(true),
                    min_fraction,
                }
            }
        };
        let postprocess = match raw.postprocess {
            None => PostprocessTable::default(),
            Some(tables) => parse_postprocess(tables).map_err(|(f, m)| field(&f, m))?,
        };
        let cuda = match raw.cuda {
            None => CudaSettings::default(),
            Some(c) => parse_cuda(c).map_err(|(f, m)| field(&f, m))?,
        };
        Ok(Manifest {
            path: path.to_path_buf(),
            groups,
            tta,
            thresholds,
            scaling,
            tissue,
            postprocess,
            cuda,
        })
    }

    /// Every model, with the index of its group.
    pub fn models(&self) -> impl Iterator<Item = (usize, &ModelSpec)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| g.models.iter().map(move |m| (gi, m)))
    }
}

type FieldError = (String, String);

fn parse_mode(g: &GroupFile, gname: &str, scaled: bool) -> Result<GroupMode, FieldError> {
    let err = |f: &str, msg: String| (format!("{gname}.{f}"), msg);
    let tiles_only = [
        ("overlap", g.overlap.is_some()),
        ("scale", g.scale.is_some()),
        ("batch", g.batch.is_some()),
    ];
    match g.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("resize") => {
            if let Some((name, _)) = tiles_only.iter().find(|(_, set)| *set) {
                return Err(err(name, "only applies to mode = \"tiles\"".into()));
            }
            Ok(GroupMode::Resize)
        }
        Some("tiles") => {
            let overlap = g.overlap.unwrap_or(0.5);
            if !(0.0..=0.95).contains(&overlap) {
                return Err(err("overlap", format!("{overlap} is outside 0..=0.95")));
            }
            if scaled && g.scale.is_some() {
                return Err(err(
                    "scale",
                    "target_pixel_size already sets the scale from each slide's pixel size".into(),
                ));
            }
            let scale = g.scale.unwrap_or(1.0);
            if !(scale.is_finite() && (1.0 / 64.0..=8.0).contains(&scale)) {
                return Err(err(
                    "scale",
                    format!("{scale} is outside 1/64..=8 model pixels per slide pixel"),
                ));
            }
            let batch = g.batch.unwrap_or(4);
            if !(1..=256).contains(&batch) {
                return Err(err("batch", format!("{batch} is outside 1..=256 windows")));
            }
            Ok(GroupMode::Tiles(TileSpec {
                overlap,
                scale,
                batch: batch as usize,
            }))
        }
        Some(other) => Err(err("mode", format!("`{other}`: expected resize or tiles"))),
    }
}

fn parse_postprocess(tables: BTreeMap<String, PostprocessFile>) -> Result<PostprocessTable, FieldError> {
    let mut out = PostprocessTable::default();
    for (key, raw) in tables {
        let f = format!("postprocess.{key}");
        let area = |px: Option<f64>, um2: Option<f64>, name: &str| -> Result<Option<Area>, FieldError> {
            let check = |v: f64, unit: &str| {
                if v.is_finite() && v >= 0.0 {
                    Ok(v)
                } else {
                    Err((format!("{f}.{name}_{unit}"), format!("{v} is not a non-negative area")))
                }
            };
            match (px, um2) {
                (None, None) => Ok(None),
                (Some(p), None) => Ok(Some(Area::Pixels(check(p, "px")?))),
                (None, Some(a)) => Ok(Some(Area::SquareMicrons(check(a, "um2")?))),
                (Some(_), Some(_)) => Err((
                    format!("{f}.{name}_px"),
                    format!("give {name}_px or {name}_um2, not both"),
                )),
            }
        };
        let dilate = match (raw.dilate_px, raw.erode_px) {
            (Some(_), Some(_)) => return Err((format!("{f}.erode_px"), "give dilate_px or erode_px, not both".into())),
            (Some(d), None) => d,
            (None, Some(e)) => -e,
            (None, None) => 0,
        };
        if !(-256..=256).contains(&dilate)
            || raw.erode_px.is_some_and(|e| e < 0)
            || raw.dilate_px.is_some_and(|d| d < 0)
        {
            let name = if raw.erode_px.is_some() {
                "erode_px"
            } else {
                "dilate_px"
            };
            return Err((format!("{f}.{name}"), "expected a radius of 0..=256 pixels".into()));
        }
        let spec = PostprocessSpec {
            min_area: area(raw.min_area_px, raw.min_area_um2, "min_area")?,
            max_hole: area(raw.max_hole_px, raw.max_hole_um2, "max_hole")?,
            dilate: dilate as i32,
        };
        if key == "default" {
            out.default = spec;
        } else {
            let organ = key.parse::<Organ>().map_err(|e| (f.clone(), e.to_string()))?;
            out.organ.insert(organ, spec);
        }
    }
    Ok(out)
}

fn positive(v: Option<f64>, name: &str) -> Result<f32, FieldError> {
    let v = v.unwrap_or(1.0);
    if v.is_finite() && v > 0.0 {
        Ok(v as f32)
    } else {
        Err((name.to_string(), format!("{v} is not a positive weight")))
    }
}

fn parse_model(m: ModelFile, name: &str, dir: &Path) -> Result<ModelSpec, FieldError> {
    let err = |f: &str, msg: String| (format!("{name}.{f}"), msg);
    let path = dir.join(&m.path);
    if !path.is_file() {
        return Err(err("path", format!("{} does not exist", path.display())));
    }
    let weight = positive(m.weight, &format!("{name}.weight"))?;
    let channels = match m.channels.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("rgb") => ChannelOrder::Rgb,
        Some("bgr") => ChannelOrder::Bgr,
        Some(other) => return Err(err("channels", format!("`{other}`: expected rgb or bgr"))),
    };
    let norm = match (m.norm.as_deref().map(str::to_ascii_lowercase), m.mean, m.std) {
        (Some(n), None, None) => Some(
            Normalisation::named(&n, channels)
                .ok_or_else(|| err("norm", format!("`{n}`: expected imagenet, unit, pm1, or mean and std")))?,
        ),
        // The model's own `ftu.norm`, checked when the engine opens it.
        (None, None, None) => None,
        (None | Some(_), Some(mean), Some(std)) if m.norm.as_deref().is_none_or(|n| n == "custom") => {
            let three = |v: Vec<f64>, f: &str| -> Result<[f32; 3], FieldError> {
                let arr: [f64; 3] = v
                    .clone()
                    .try_into()
                    .map_err(|_| err(f, format!("{v:?}: expected three numbers, one per channel")))?;
                Ok(arr.map(|x| x as f32))
            };
            let mean = three(mean, "mean")?;
            let std = three(std, "std")?;
            if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || mean.iter().any(|v| !v.is_finite()) {
                return Err(err("std", format!("{std:?}: every std must be positive")));
            }
            Some(Normalisation { mean, std })
        }
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(err("norm", "give either a named norm or mean and std, not both".into()))
        }
        (None, _, _) => return Err(err("mean", "mean and std go together; one of them is missing".into())),
    };
    let activation = match m.activation.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("sigmoid") => Activation::Sigmoid,
        Some("softmax") => Activation::Softmax,
        Some("none") => Activation::None,
        Some(other) => {
            return Err(err(
                "activation",
                format!("`{other}`: expected sigmoid, softmax or none"),
            ))
        }
    };
    let channel = match m.channel {
        None if activation == Activation::Softmax => {
            return Err(err(
                "channel",
                "softmax needs the channel of the FTU class (usually 1)".into(),
            ))
        }
        None => 0,
        Some(c) if c >= 0 => c as usize,
        Some(c) => return Err(err("channel", format!("{c} is negative"))),
    };
    let organs = match m.organs {
        None => None,
        Some(list) if list.is_empty() => return Err(err("organs", "is empty; leave it out for every organ".into())),
        Some(list) => Some(
            list.iter()
                .map(|o| o.parse::<Organ>().map_err(|e| err("organs", e.to_string())))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(ModelSpec {
        field: name.to_string(),
        path,
        weight,
        norm,
        channels,
        output: m.output.unwrap_or(OutputRef::Index(0)),
        activation,
        channel,
        organs,
    })
}

/// `default`, organ keys, and data-source sub-tables of organ keys.
fn parse_thresholds(table: &toml::Table) -> Result<Thresholds, FieldError> {
    let mut t = Thresholds::default();
    let value = |v: &toml::Value, f: &str| -> Result<f32, FieldError> {
        let x = v
            .as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .ok_or_else(|| (f.to_string(), format!("{v} is not a number")))?;
        if x.is_finite() {
            Ok(x as f32)
        } else {
            Err((f.to_string(), format!("{x} is not finite")))
        }
    };
    for (key, v) in table {
        let f = format!("thresholds.{key}");
        if key == "default" {
            t.default = value(v, &f)?;
        } else if let Ok(organ) = key.parse::<Organ>() {
            t.organ.insert(organ, value(v, &f)?);
        } else if let Ok(source) = key.parse::<DataSource>() {
            let sub = v.as_table().ok_or_else(|| {
                (
                    f.clone(),
                    "a data source takes a table of organ thresholds, e.g. [thresholds.hubmap]".to_string(),
                )
            })?;
            for (okey, ov) in sub {
                let of = format!("{f}.{okey}");
                let organ = okey.parse::<Organ>().map_err(|e| (of.clone(), e.to_string()))?;
                t.source.insert((source, organ), value(ov, &of)?);
            }
        } else {
            return Err((
                f,
                "expected default, an organ, or a data source (hpa, hubmap)".to_string(),
            ));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_models(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(dir.path().join(n), b"onnx").unwrap();
        }
        dir
    }

    fn parse(text: &str, dir: &Path) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("m.toml"), dir)
    }

    const FULL: &str = r#"
        target_pixel_size = 0.4
        [tta]
        mode = "flips"
        scales = [0.8, 1.0, 1.2]
        [thresholds]
        default = 0.4
        kidney = 0.3
        lung = 0.6
        [thresholds.hubmap]
        lung = 0.06
        [[group]]
        size = 768
        weight = 0.2
        [[group.model]]
        path = "a.onnx"
        norm = "imagenet"
        channels = "bgr"
        [[group]]
        size = 1024
        weight = 0.8
        [[group.model]]
        path = "sub/b.onnx"
        weight = 2
        mean = [1, 2, 3]
        std = [4, 5, 6]
        output = "mask"
        activation = "softmax"
        channel = 1
        organs = ["kidney", "lung"]
        [[group.model]]
        path = "a.onnx"
        norm = "pm1"
        output = 1
        activation = "none"
    "#;

    #[test]
    fn a_full_manifest_parses_into_typed_fields() {
        let dir = with_models(&["a.onnx"]);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.onnx"), b"x").unwrap();
        let m = parse(FULL, dir.path()).unwrap();
        assert_eq!(m.tta.mode, TtaMode::Flips);
        assert_eq!(m.tta.scales, [0.8, 1.0, 1.2]);
        assert_eq!(m.scaling.unwrap().reference_size, 3000.0);
        assert_eq!(m.groups.len(), 2);
        assert_eq!((m.groups[0].size, m.groups[0].weight), (768, 0.2));
        let a = &m.groups[0].models[0];
        assert_eq!(a.path, dir.path().join("a.onnx"));
        assert_eq!(a.weight, 1.0);
        assert_eq!(a.channels, ChannelOrder::Bgr);
        // ImageNet's blue mean comes first for a BGR model.
        assert!((a.norm.expect("a named norm").mean[0] - 0.406 * 255.0).abs() < 1e-4);
        assert_eq!(
            (a.output.clone(), a.activation, a.channel),
            (OutputRef::Index(0), Activation::Sigmoid, 0)
        );
        let b = &m.groups[1].models[0];
        assert_eq!(
            b.norm,
            Some(Normalisation {
                mean: [1.0, 2.0, 3.0],
                std: [4.0, 5.0, 6.0]
            })
        );
        assert_eq!(
            (b.output.clone(), b.activation, b.channel),
            (OutputRef::Name("mask".into()), Activation::Softmax, 1)
        );
        assert!(b.serves(Organ::Lung) && !b.serves(Organ::Spleen));
        assert_eq!(m.groups[1].models[1].output, OutputRef::Index(1));
        assert_eq!(
            m.groups[1].models[1].norm,
            Some(Normalisation {
                mean: [127.0; 3],
                std: [127.0; 3]
            })
        );
    }

    #[test]
    fn a_model_without_norm_is_left_to_its_own_metadata() {
        let dir = with_models(&["a.onnx"]);
        let m = parse(
            "[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\n",
            dir.path(),
        )
        .unwrap();
        assert_eq!(m.groups[0].models[0].norm, None);
    }

    #[test]
    fn the_cuda_table_parses_and_flags_override_it_one_by_one() {
        let dir = with_models(&["a.onnx"]);
        let model = "[[group]]\nsize = 256\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n";
        assert_eq!(parse(model, dir.path()).unwrap().cuda, CudaSettings::default());
        let text = format!("[cuda]\nconv_search = \"heuristic\"\nmemory_limit_mib = 4096\ntf32 = false\n{model}");
        let m = parse(&text, dir.path()).unwrap();
        let file = CudaSettings {
            conv_search: Some(ConvSearch::Heuristic),
            memory_limit_mib: Some(4096),
            tf32: Some(false),
        };
        assert_eq!(m.cuda, file);
        let flags = CudaSettings {
            tf32: Some(true),
            ..CudaSettings::default()
        };
        assert_eq!(
            flags.or(m.cuda),
            CudaSettings {
                tf32: Some(true),
                ..file
            }
        );
    }

    #[test]
    fn tiles_tissue_and_postprocess_parse_into_typed_fields() {
        let dir = with_models(&["a.onnx"]);
        let text = "[tissue]\ndetect = false\nmin_fraction = 0.2\n\
            [postprocess.default]\nmin_area_px = 100\n\
            [postprocess.lung]\nmin_area_um2 = 2000\nmax_hole_px = 50\nerode_px = 10\n\
            [[group]]\nsize = 512\nmode = \"tiles\"\noverlap = 0.25\nscale = 0.5\nbatch = 2\n\
            [[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n\
            [[group]]\nsize = 256\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n";
        let m = parse(text, dir.path()).unwrap();
        let spec = TileSpec {
            overlap: 0.25,
            scale: 0.5,
            batch: 2,
        };
        assert_eq!(m.groups[0].mode, GroupMode::Tiles(spec));
        assert_eq!(m.groups[1].mode, GroupMode::Resize);
        assert_eq!(
            m.tissue,
            TissueDetection {
                enabled: false,
                min_fraction: 0.2
            }
        );
        let lung = m.postprocess.get(Organ::Lung);
        assert_eq!(lung.min_area, Some(Area::SquareMicrons(2000.0)));
        assert_eq!((lung.max_hole, lung.dilate), (Some(Area::Pixels(50.0)), -10));
        // 2000 µm² at 0.5 µm/px is 8000 px.
        assert_eq!(lung.min_area.unwrap().pixels(0.5), 8000.0);
        assert_eq!(m.postprocess.get(Organ::Kidney).min_area, Some(Area::Pixels(100.0)));
        assert!(PostprocessTable::default().get(Organ::Kidney).is_identity());
        // Without target_pixel_size the window scale is the group's; with it, the slide's pixel
        // size decides: a 0.8 µm slide at target 0.4 and reference = size gives 2 model px per px.
        assert_eq!(spec.factor(512, None, 0.8), 0.5);
        let scaling = PixelScaling {
            target_pixel_size: 0.4,
            reference_size: 512.0,
        };
        assert_eq!(spec.factor(512, Some(&scaling), 0.8), 2.0);
    }

    #[test]
    fn thresholds_prefer_source_then_organ_then_default() {
        let dir = with_models(&["a.onnx"]);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.onnx"), b"x").unwrap();
        let t = parse(FULL, dir.path()).unwrap().thresholds;
        assert_eq!(t.get(Organ::Lung, DataSource::Hubmap), 0.06);
        assert_eq!(t.get(Organ::Lung, DataSource::Hpa), 0.6);
        assert_eq!(t.get(Organ::Kidney, DataSource::Hubmap), 0.3);
        assert_eq!(t.get(Organ::Spleen, DataSource::Hpa), 0.4);
        assert_eq!(Thresholds::default().get(Organ::Spleen, DataSource::Hpa), 0.5);
    }

    #[test]
    fn pixel_scaling_maps_a_training_slide_to_the_group_size() {
        let s = PixelScaling {
            target_pixel_size: 0.4,
            reference_size: 3000.0,
        };
        assert_eq!(s.input_dims(768, 3000, 3000, 0.4), (768, 768));
        // Hubmap lung pixels (0.7562 µm) are 1.89× HPA's: 2000 × 1.89 × 768/3000 = 968 → 960.
        assert_eq!(s.input_dims(768, 2000, 1000, 0.7562), (960, 480));
        assert_eq!(s.input_dims(768, 10, 10, 0.4), (32, 32));
    }

    #[test]
    fn mistakes_are_refused_naming_the_field() {
        let dir = with_models(&["a.onnx"]);
        let model = "[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n";
        let cases: &[(&str, &str)] = &[
            ("", "group"),
            ("[[group]]\nsize = 500\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n", "group[0].size"),
            ("[[group]]\nsize = 512\nweight = 0\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n", "group[0].weight"),
            ("[[group]]\nsize = 512\n", "group[0].model"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"missing.onnx\"\nnorm = \"unit\"\n", "group[0].model[0].path"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"zscore\"\n", "group[0].model[0].norm"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nmean = [1, 2]\nstd = [1, 1, 1]\n", "group[0].model[0].mean"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nmean = [1, 2, 3]\nstd = [1, 0, 1]\n", "group[0].model[0].std"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nmean = [1, 2, 3]\n", "group[0].model[0].mean"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\nchannels = \"rgba\"\n", "group[0].model[0].channels"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\nactivation = \"softmax\"\n", "group[0].model[0].channel"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\norgans = [\"liver\"]\n", "group[0].model[0].organs"),
            ("[[group]]\nsize = 512\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\nweight = -1\n", "group[0].model[0].weight"),
        ];
        for (text, field) in cases {
            let err = parse(text, dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}:")), "expected {field} in: {err}");
        }
        for (extra, field) in [
            ("[tta]\nmode = \"rot\"\n", "tta.mode"),
            ("[tta]\nscales = [0.1]\n", "tta.scales"),
            ("[thresholds]\nliver = 0.5\n", "thresholds.liver"),
            ("[thresholds]\nhubmap = 0.5\n", "thresholds.hubmap"),
            ("[thresholds.hubmap]\nliver = 0.5\n", "thresholds.hubmap.liver"),
            ("[thresholds]\nkidney = \"high\"\n", "thresholds.kidney"),
            ("target_pixel_size = -1\n", "target_pixel_size"),
            ("[tissue]\nmin_fraction = 2\n", "tissue.min_fraction"),
            ("[postprocess.liver]\nmin_area_px = 5\n", "postprocess.liver"),
            (
                "[postprocess.kidney]\nmin_area_px = -5\n",
                "postprocess.kidney.min_area_px",
            ),
            (
                "[postprocess.kidney]\nmin_area_px = 5\nmin_area_um2 = 5\n",
                "postprocess.kidney.min_area_px",
            ),
            (
                "[postprocess.lung]\nerode_px = 3\ndilate_px = 2\n",
                "postprocess.lung.erode_px",
            ),
            ("[postprocess.lung]\nerode_px = 999\n", "postprocess.lung.erode_px"),
            ("reference_size = 3000\n", "reference_size"),
            ("[cuda]\nconv_search = \"fast\"\n", "cuda.conv_search"),
            ("[cuda]\nmemory_limit_mib = 0\n", "cuda.memory_limit_mib"),
        ] {
            let err = parse(&format!("{extra}{model}"), dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}:")), "expected {field} in: {err}");
        }
        let tiles = |extra: &str| {
            format!("[[group]]\nsize = 512\n{extra}\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"unit\"\n")
        };
        for (extra, field) in [
            ("mode = \"slide\"", "group[0].mode"),
            ("overlap = 0.5", "group[0].overlap"),
            ("mode = \"tiles\"\noverlap = 1.0", "group[0].overlap"),
            ("mode = \"tiles\"\nscale = 0", "group[0].scale"),
            ("mode = \"tiles\"\nbatch = 0", "group[0].batch"),
        ] {
            let err = parse(&tiles(extra), dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}:")), "expected {field} in: {err}");
        }
        let err = parse(
            &format!("target_pixel_size = 0.4\n{}", tiles("mode = \"tiles\"\nscale = 0.5")),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("group[0].scale:"), "{err}");
        // Unknown keys are typos, not silently ignored.
        let err = parse(&format!("{model}sise = 3\n"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("sise"), "{err}");
    }
}
