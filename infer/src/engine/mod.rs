//! The engine: one ONNX Runtime session per manifest model, checked against what the manifest
//! says about it, and one group's maps — resize, normalise, TTA as one batch, invert, activate,
//! average the group's models, resize back. Groups are combined in [`crate::ensemble`] (a slide
//! in memory) and [`crate::tiled`] (a slide read in windows).

pub mod describe;

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use ndarray::{Array4, ArrayD, ArrayView4, ArrayViewD, Axis};
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};
use rayon::prelude::*;

use crate::session::{Element, ModelInfo, Runtime, RuntimeError, TensorInfo};
use ftu_formats::manifest::{Activation, ChannelOrder, Manifest, ModelSpec, Normalisation, OutputRef};
use ftu_formats::organ::{DataSource, Organ};
use ftu_formats::resize::{resize_map, resize_rgb};
use ftu_formats::slide::RgbImage;
use ftu_formats::tta::Transform;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("manifest {field} ({path}): {message}")]
    Unfit {
        field: String,
        path: PathBuf,
        message: String,
    },
    #[error("manifest {field} ({path}): running the model failed: {message}")]
    Run {
        field: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "manifest {field} ({path}): {count} of {total} values of output `{output}` are NaN or infinite \
         (an overflow, e.g. in fp16, or a broken export); no mask is made from them"
    )]
    NonFinite {
        field: String,
        path: PathBuf,
        output: String,
        count: usize,
        total: usize,
    },
    #[error(
        "--bench-limit: the batches outgrew the recording limit ({kept} kept, {mib_left} MiB left); bench fewer slides"
    )]
    RecordingFull { kept: usize, mib_left: usize },
    #[error(transparent)]
    Slide(#[from] ftu_formats::slide::SlideError),
    /// What a model states about itself (its `ftu.*` metadata) leaves its input undefined, or,
    /// when loading strictly, contradicts the manifest.
    #[error("manifest {manifest}: {message}")]
    Described { manifest: PathBuf, message: String },
    #[error("no model in the manifest serves organ {0}: give one without `organs`, or add {0} to a model's organs")]
    NoModel(Organ),
}

/// What the engine needs to know about a slide besides its pixels.
#[derive(Debug, Clone, Copy)]
pub struct SlideContext {
    pub organ: Organ,
    pub source: DataSource,
    pub pixel_size: f64,
}

/// A probability map at slide resolution, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbMap {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Wall time per stage, summed over slides.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub read: Duration,
    pub resize: Duration,
    pub tta: Duration,
    pub model: Duration,
    pub resize_back: Duration,
    pub rle: Duration,
}

impl Timings {
    pub fn stages(&self) -> [(&'static str, Duration); 6] {
        [
            ("read", self.read),
            ("resize", self.resize),
            ("normalise+tta", self.tta),
            ("model", self.model),
            ("resize back", self.resize_back),
            ("threshold+rle", self.rle),
        ]
    }

    pub fn add(&mut self, other: &Timings) {
        self.read += other.read;
        self.resize += other.resize;
        self.tta += other.tta;
        self.model += other.model;
        self.resize_back += other.resize_back;
        self.rle += other.rle;
    }
}

pub(crate) fn timed<T>(slot: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *slot += start.elapsed();
    out
}

/// A model with its session and what its signature allows.
struct LoadedModel {
    spec: ModelSpec,
    session: Session,
    info: ModelInfo,
    /// What its metadata says about it, and the normalisation it is fed (the manifest's, or the
    /// model's own when the manifest gives none).
    described: describe::Described,
    norm: Normalisation,
    input: String,
    output: String,
    /// The input's and output's element types (float32, float16 or bfloat16): the batch is
    /// converted to the input's, the output read as float32 whatever its own.
    input_element: Element,
    output_element: Element,
    /// A fixed batch dimension (often 1 in exports without dynamic axes): batches are split to it.
    batch: Option<usize>,
    /// Every batch run, kept for [`Engine::replay`] while recording.
    recorded: Vec<Array4<f32>>,
}

pub struct Engine {
    manifest: Manifest,
    groups: Vec<Vec<LoadedModel>>,
    /// While recording: the bytes of batches still allowed to be kept, and whether one was not.
    recording: Option<Recording>,
    /// Tiled groups read windows from the pyramid level at their scale when a slide has one.
    read_levels: bool,
    /// Where the manifest and what the models state disagree, one sentence each.
    warnings: Vec<String>,
}

struct Recording {
    bytes_left: usize,
    overflowed: bool,
}

/// The bare ONNX Runtime time of the batches a run gave the models: the limit of its model stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Model runs (batches) replayed, and the images in them.
    pub batches: usize,
    pub items: usize,
    /// Wall time of `Session::run` over all of them, one after another (model by model).
    pub seconds: f64,
}

impl Engine {
    /// Opens a session per model (all at once: ONNX Runtime's graph optimisation of one model
    /// does not wait for another's) and checks each against the manifest; where the manifest and
    /// a model's metadata disagree, [`Engine::warnings`] says so.
    pub fn load(manifest: Manifest, runtime: &Runtime) -> Result<Engine, EngineError> {
        Engine::load_checked(manifest, runtime, false)
    }

    /// [`Engine::load`]; with `strict`, a disagreement between the manifest and what a model
    /// states (its norm, its training size) is an error instead of a warning.
    pub fn load_checked(manifest: Manifest, runtime: &Runtime, strict: bool) -> Result<Engine, EngineError> {
        let specs: Vec<(usize, &ModelSpec)> = manifest
            .groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| g.models.iter().map(move |m| (gi, m)))
            .collect();
        let sessions: Vec<Result<Session, RuntimeError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = specs
                .iter()
                .map(|(_, spec)| scope.spawn(|| runtime.session(&spec.path)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a session builder thread panicked"))
                .collect()
        });
        let mut groups: Vec<Vec<LoadedModel>> = manifest.groups.iter().map(|_| Vec::new()).collect();
        let mut warnings = Vec::new();
        for ((gi, spec), session) in specs.into_iter().zip(sessions) {
            let session = session?;
            let info = ModelInfo::of(&session, &spec.path);
            let fit = check_fit(spec, &info, manifest.groups[gi].size, &manifest)?;
            let described = describe::Described::from_metadata(&info.metadata);
            let refused = |message: String| EngineError::Described {
                manifest: manifest.path.clone(),
                message,
            };
            let checked = describe::check(spec, &described, manifest.groups[gi].size).map_err(|e| refused(e.0))?;
            if strict {
                if let Some(first) = checked.warnings.first() {
                    return Err(refused(format!("{first} (an error with --strict)")));
                }
            }
            warnings.extend(checked.warnings);
            groups[gi].push(LoadedModel {
                spec: spec.clone(),
                session,
                info,
                described,
                norm: checked.norm,
                input: fit.input,
                output: fit.output,
                input_element: fit.input_element,
                output_element: fit.output_element,
                batch: fit.batch,
                recorded: Vec::new(),
            });
        }
        Ok(Engine {
            manifest,
            groups,
            recording: None,
            read_levels: true,
            warnings,
        })
    }

    /// Where the manifest and what its models state disagree (a norm, a training size far from
    /// the group's), one sentence each naming the field, the model and both values.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Each model's manifest field, what its metadata says, and the normalisation it is fed.
    pub fn described(&self) -> impl Iterator<Item = (&ModelSpec, &describe::Described, &Normalisation)> {
        self.groups.iter().flatten().map(|m| (&m.spec, &m.described, &m.norm))
    }

    /// Whether tiled groups read a pyramidal slide's windows from the coarsest level that still
    /// has the group's resolution (the default), or always from the full-resolution page.
    pub fn set_read_levels(&mut self, on: bool) {
        self.read_levels = on;
    }

    pub fn read_levels(&self) -> bool {
        self.read_levels
    }

    /// From now on, keeps every batch the models run (up to `max_bytes` of them in all) for
    /// [`Engine::replay`].
    pub fn record_batches(&mut self, max_bytes: usize) {
        self.recording = Some(Recording {
            bytes_left: max_bytes,
            overflowed: false,
        });
    }

    /// Runs every recorded batch again through its model's session and nothing else (no
    /// layout, output extraction, checks or TTA): what the model stage would take if the engine
    /// added nothing. Fails when the recording outgrew its byte limit (say how many slides fit).
    pub fn replay(&mut self) -> Result<Replay, EngineError> {
        let recording = self.recording.take();
        let models: Vec<&mut LoadedModel> = self.groups.iter_mut().flatten().collect();
        if let Some(r) = recording.filter(|r| r.overflowed) {
            // The partial recording is dropped: a limit over part of the run would mislead.
            let kept: usize = models.into_iter().map(|m| std::mem::take(&mut m.recorded).len()).sum();
            return Err(EngineError::RecordingFull {
                kept,
                mib_left: r.bytes_left >> 20,
            });
        }
        let (mut batches, mut items) = (0, 0);
        let start = Instant::now();
        for model in models {
            let (field, path) = (model.spec.field.clone(), model.spec.path.clone());
            let err = |e: ort::Error| EngineError::Run {
                field: field.clone(),
                path: path.clone(),
                message: e.to_string(),
            };
            for batch in std::mem::take(&mut model.recorded) {
                let tensor = input_value(batch.view(), &model.input_element).map_err(err)?;
                let outputs = model
                    .session
                    .run(ort::inputs![model.input.as_str() => tensor])
                    .map_err(err)?;
                drop(outputs);
                batches += 1;
                items += batch.len_of(Axis(0));
            }
        }
        Ok(Replay {
            batches,
            items,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Each model's manifest field and what ONNX Runtime reported about it.
    pub fn models(&self) -> impl Iterator<Item = (&ModelSpec, &ModelInfo)> {
        self.groups.iter().flatten().map(|m| (&m.spec, &m.info))
    }

    /// The threshold for a slide.
    pub fn threshold(&self, info: &SlideContext) -> f32 {
        self.manifest.thresholds.get(info.organ, info.source)
    }

    /// Whether any model of group `gi` serves this organ.
    pub fn group_serves(&self, gi: usize, organ: Organ) -> bool {
        self.groups[gi].iter().any(|m| m.spec.serves(organ))
    }

    /// Group `gi` in resize mode: the slide at the group's input size, its map resized back.
    pub fn resized_group(
        &mut self,
        gi: usize,
        slide: &RgbImage,
        info: &SlideContext,
        t: &mut Timings,
    ) -> Result<Vec<f32>, EngineError> {
        let (map, w_in, h_in) = self.small_group(gi, slide, info, t)?;
        Ok(timed(&mut t.resize_back, || {
            resize_map(&map, w_in, h_in, slide.width, slide.height)
        }))
    }

    /// Group `gi` in resize mode: its map of the slide at the group's input size, with that
    /// size (width, height), before it is resized back.
    pub fn small_group(
        &mut self,
        gi: usize,
        slide: &RgbImage,
        info: &SlideContext,
        t: &mut Timings,
    ) -> Result<(Vec<f32>, usize, usize), EngineError> {
        let size = self.manifest.groups[gi].size;
        let (h_in, w_in) = match &self.manifest.scaling {
            Some(s) => s.input_dims(size, slide.height, slide.width, info.pixel_size),
            None => (size, size),
        };
        let map = self
            .group_maps(gi, std::slice::from_ref(slide), (h_in, w_in), info.organ, usize::MAX, t)?
            .pop()
            .expect("one map per input");
        Ok((map, w_in, h_in))
    }

    /// Group `gi`'s map of each source image seen at `h_in × w_in` (each TTA scale resized from
    /// the source itself), averaged over the group's models by weight and over the TTA variants;
    /// at most `windows_per_run` sources go into one model run.
    pub fn group_maps(
        &mut self,
        gi: usize,
        inputs: &[RgbImage],
        (h_in, w_in): (usize, usize),
        organ: Organ,
        windows_per_run: usize,
        t: &mut Timings,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let transforms = self.manifest.tta.mode.transforms();
        let scales = self.manifest.tta.scales.clone();
        // Each input at each TTA scale, shared by the group's models (borrowed when it fits).
        let scaled: Vec<Vec<Cow<RgbImage>>> = timed(&mut t.resize, || {
            inputs
                .iter()
                .map(|img| {
                    scales
                        .iter()
                        .map(|&s| {
                            let (h, w) = scaled_dims(h_in, w_in, s);
                            if (img.height, img.width) == (h, w) {
                                Cow::Borrowed(img)
                            } else {
                                Cow::Owned(resize_rgb(img, w, h))
                            }
                        })
                        .collect()
                })
                .collect()
        });
        // The weighted sum of the models' maps; the first model's maps are taken as they are.
        let mut maps: Option<Vec<Vec<f32>>> = None;
        let mut model_weights = 0f32;
        // Models that normalise alike share their input planes.
        let mut prepared: Vec<(PlaneKey, Vec<Vec<Planes>>)> = Vec::new();
        for model in self.groups[gi].iter_mut().filter(|m| m.spec.serves(organ)) {
            let key = (model.norm, model.spec.channels);
            if !prepared.iter().any(|(k, _)| *k == key) {
                let p = timed(&mut t.tta, || {
                    use rayon::prelude::*;
                    scaled
                        .par_iter()
                        .map(|per_scale| per_scale.iter().map(|img| planes(img, key.0, key.1)).collect())
                        .collect()
                });
                prepared.push((key, p));
            }
            let base = &prepared.iter().find(|(k, _)| *k == key).expect("just prepared").1;
            let max_items = windows_per_run.saturating_mul(transforms.len()).max(1);
            let mut model_maps = model_maps(
                model,
                base,
                &transforms,
                (h_in, w_in),
                max_items,
                self.recording.as_mut(),
                t,
            )?;
            let w = model.spec.weight;
            match &mut maps {
                None => {
                    if w != 1.0 {
                        model_maps.iter_mut().for_each(|m| m.iter_mut().for_each(|v| *v *= w));
                    }
                    maps = Some(model_maps);
                }
                Some(maps) => {
                    for (map, m) in maps.iter_mut().zip(&model_maps) {
                        map.iter_mut().zip(m).for_each(|(g, v)| *g += w * v);
                    }
                }
            }
            model_weights += w;
        }
        let mut maps = maps.unwrap_or_else(|| vec![vec![0f32; h_in * w_in]; inputs.len()]);
        if model_weights > 0.0 && model_weights != 1.0 {
            maps.iter_mut()
                .for_each(|m| m.iter_mut().for_each(|v| *v /= model_weights));
        }
        Ok(maps)
    }
}

/// Input dims at a TTA scale, kept to multiples of 32.
fn scaled_dims(h: usize, w: usize, scale: f32) -> (usize, usize) {
    if scale == 1.0 {
        return (h, w);
    }
    let r = |v: usize| ftu_formats::manifest::round_to_multiple(v as f64 * scale as f64);
    (r(h), r(w))
}

/// One model's map of each input at `(h_out, w_out)`: every scale × transform, inverted and
/// averaged. `inputs[i][s]` is input `i` at TTA scale `s`; runs hold at most `max_items` images.
#[allow(clippy::too_many_arguments)]
fn model_maps(
    model: &mut LoadedModel,
    inputs: &[Vec<Planes>],
    transforms: &[Transform],
    (h_out, w_out): (usize, usize),
    max_items: usize,
    mut recording: Option<&mut Recording>,
    t: &mut Timings,
) -> Result<Vec<Vec<f32>>, EngineError> {
    // Per input, the sum over scales (the first scale's sum is taken as it is).
    let mut sums: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
    let n_scales = inputs.first().map_or(0, Vec::len);
    let variants = (n_scales * transforms.len()) as f32;
    for si in 0..n_scales {
        let (h, w) = (inputs[0][si].height, inputs[0][si].width);
        // Transposes swap height and width: those variants form a second batch unless square.
        let mut buckets: Vec<((usize, usize), Vec<Transform>)> = Vec::new();
        for &tr in transforms {
            let dims = tr.dims(h, w);
            match buckets.iter_mut().find(|(d, _)| *d == dims) {
                Some((_, list)) => list.push(tr),
                None => buckets.push((dims, vec![tr])),
            }
        }
        // Per input, the sum of this scale's inverted variants and its size.
        let mut scale_sums: Vec<Option<(Vec<f32>, usize, usize)>> = vec![None; inputs.len()];
        for ((bh, bw), list) in buckets {
            let items: Vec<(usize, Transform)> = (0..inputs.len())
                .flat_map(|i| list.iter().map(move |&tr| (i, tr)))
                .collect();
            let chunk = model.batch.unwrap_or(max_items).min(max_items).max(1);
            for run_items in items.chunks(chunk) {
                // Items are laid out and read back in parallel: on many cores (or with the model
                // on a GPU) this CPU work, not the model, would otherwise set the pace.
                let batch = timed(&mut t.tta, || {
                    let mut batch = Array4::<f32>::zeros((run_items.len(), 3, bh, bw));
                    batch
                        .axis_iter_mut(Axis(0))
                        .into_par_iter()
                        .zip(run_items.par_iter())
                        .for_each(|(mut item, &(i, tr))| {
                            for (plane, mut d) in inputs[i][si].planes.iter().zip(item.axis_iter_mut(Axis(0))) {
                                let d = d.as_slice_mut().expect("a standard-layout batch");
                                tr.apply_into(plane, h, w, d);
                            }
                        });
                    batch
                });
                let out = timed(&mut t.model, || run(model, batch.view()))?;
                if let Some(r) = recording.as_deref_mut() {
                    let bytes = batch.len() * 4;
                    if bytes <= r.bytes_left {
                        r.bytes_left -= bytes;
                        model.recorded.push(batch);
                    } else {
                        r.overflowed = true;
                    }
                }
                timed(&mut t.tta, || -> Result<(), EngineError> {
                    let (oh, ow) = (out.shape()[out.ndim() - 2], out.shape()[out.ndim() - 1]);
                    let model = &*model;
                    let inverted: Vec<Vec<f32>> = run_items
                        .par_iter()
                        .enumerate()
                        .map(|(k, &(_, tr))| {
                            let map =
                                activated(&model.spec, out.index_axis(Axis(0), k)).map_err(|m| model.run_error(m))?;
                            Ok(if tr == Transform::IDENTITY {
                                map
                            } else {
                                tr.invert(&map, oh, ow)
                            })
                        })
                        .collect::<Result<_, EngineError>>()?;
                    for (&(i, tr), inv) in run_items.iter().zip(inverted) {
                        let (ih, iw) = tr.dims(oh, ow);
                        match &mut scale_sums[i] {
                            None => scale_sums[i] = Some((inv, ih, iw)),
                            Some((acc, sh, sw)) if (*sh, *sw) == (ih, iw) => {
                                acc.iter_mut().zip(&inv).for_each(|(a, v)| *a += v)
                            }
                            Some((acc, sh, sw)) => {
                                // Odd sizes can give transposed outputs of another shape: meet at the first.
                                let fitted = resize_map(&inv, iw, ih, *sw, *sh);
                                acc.iter_mut().zip(&fitted).for_each(|(a, v)| *a += v)
                            }
                        }
                    }
                    Ok(())
                })?;
            }
        }
        for (sum, scale_sum) in sums.iter_mut().zip(scale_sums) {
            if let Some((acc, sh, sw)) = scale_sum {
                let fitted = if (sh, sw) == (h_out, w_out) {
                    acc
                } else {
                    // Resizing is linear, so resizing the scale's sum equals summing resized maps.
                    timed(&mut t.resize_back, || resize_map(&acc, sw, sh, w_out, h_out))
                };
                match sum {
                    None => *sum = Some(fitted),
                    Some(sum) => sum.iter_mut().zip(&fitted).for_each(|(s, v)| *s += v),
                }
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|s| {
            let mut s = s.unwrap_or_else(|| vec![0f32; h_out * w_out]);
            if variants != 1.0 {
                s.iter_mut().for_each(|v| *v /= variants);
            }
            s
        })
        .collect())
}

/// How a model wants its input: models that agree share their planes.
type PlaneKey = (Normalisation, ChannelOrder);

/// An input image as three normalised float planes in a model's channel order.
struct Planes {
    height: usize,
    width: usize,
    planes: [Vec<f32>; 3],
}

fn planes(image: &RgbImage, norm: Normalisation, channels: ChannelOrder) -> Planes {
    Planes {
        height: image.height,
        width: image.width,
        planes: normalised(image, norm, channels),
    }
}

/// The image as three normalised float planes in the model's channel order, in one pass.
fn normalised(image: &RgbImage, norm: Normalisation, channels: ChannelOrder) -> [Vec<f32>; 3] {
    let n = image.width * image.height;
    let src = match channels {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    // Per channel, a table of the 256 byte values (the same arithmetic as per pixel).
    let tables: [[f32; 256]; 3] = std::array::from_fn(|c| {
        let (mean, inv_std) = (norm.mean[c], 1.0 / norm.std[c]);
        std::array::from_fn(|v| (v as f32 - mean) * inv_std)
    });
    let mut planes: [Vec<f32>; 3] = std::array::from_fn(|_| vec![0f32; n]);
    let [p0, p1, p2] = &mut planes;
    for (((px, a), b), c) in image.data.chunks_exact(3).zip(p0).zip(p1).zip(p2) {
        *a = tables[0][px[src[0]] as usize];
        *b = tables[1][px[src[1]] as usize];
        *c = tables[2][px[src[2]] as usize];
    }
    planes
}

/// Runs one N×3×H×W batch; returns the selected output, N×C×H×W or N×H×W.
fn run(model: &mut LoadedModel, batch: ArrayView4<f32>) -> Result<ArrayD<f32>, EngineError> {
    let n = batch.len_of(Axis(0));
    let (field, path) = (model.spec.field.clone(), model.spec.path.clone());
    let err = |message: String| EngineError::Run {
        field: field.clone(),
        path: path.clone(),
        message,
    };
    let tensor = input_value(batch, &model.input_element).map_err(|e| err(e.to_string()))?;
    let output = model.output.as_str();
    let outputs = model
        .session
        .run(ort::inputs![model.input.as_str() => tensor])
        .map_err(|e| err(e.to_string()))?;
    let value = outputs
        .get(output)
        .ok_or_else(|| err(format!("no output `{output}` in the results")))?;
    let out = output_as_f32(value, &model.output_element).map_err(|e| err(e.to_string()))?;
    if !matches!(out.ndim(), 3 | 4) || out.len_of(Axis(0)) != n {
        return Err(err(format!(
            "output `{output}` has shape {}; expected N×C×H×W or N×H×W with N = {n}",
            out.shape().iter().map(usize::to_string).collect::<Vec<_>>().join("×")
        )));
    }
    // NaN would threshold to background and +Inf to foreground without a word: refuse both.
    let count = out.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(EngineError::NonFinite {
            field,
            path,
            output: output.to_string(),
            count,
            total: out.len(),
        });
    }
    Ok(out)
}

/// The batch as the model's input type: float32 as it is (no copy), float16 and bfloat16
/// converted value by value (round to nearest even).
fn input_value<'a>(batch: ArrayView4<'a, f32>, element: &Element) -> Result<SessionInputValue<'a>, ort::Error> {
    Ok(match element {
        Element::F16 => Tensor::from_array(batch.mapv(f16::from_f32))?.into(),
        Element::BF16 => Tensor::from_array(batch.mapv(bf16::from_f32))?.into(),
        // check_fit let no other type through.
        _ => TensorRef::from_array_view(batch)?.into(),
    })
}

/// An output of the model's output type as float32, standard layout.
fn output_as_f32(value: &ort::value::DynValue, element: &Element) -> Result<ArrayD<f32>, ort::Error> {
    Ok(match element {
        Element::F16 => value.try_extract_array::<f16>()?.mapv(f16::to_f32),
        Element::BF16 => value.try_extract_array::<bf16>()?.mapv(bf16::to_f32),
        _ => value.try_extract_array::<f32>()?.as_standard_layout().into_owned(),
    })
}

impl LoadedModel {
    fn run_error(&self, message: impl Into<String>) -> EngineError {
        EngineError::Run {
            field: self.spec.field.clone(),
            path: self.spec.path.clone(),
            message: message.into(),
        }
    }
}

/// One item of a model's output (C×H×W, or H×W: one implicit channel): its mask channel with
/// the activation applied, row-major.
fn activated(spec: &ModelSpec, item: ArrayViewD<f32>) -> Result<Vec<f32>, String> {
    let item = if item.ndim() == 2 {
        item.insert_axis(Axis(0))
    } else {
        item
    };
    let c = item.len_of(Axis(0));
    if spec.channel >= c {
        return Err(format!("channel {} asked for, but the output has {c}", spec.channel));
    }
    let plane = item.index_axis(Axis(0), spec.channel);
    Ok(match spec.activation {
        Activation::None => plane.iter().copied().collect(),
        Activation::Sigmoid => {
            let plane = plane.as_slice().expect("a standard-layout output");
            plane
                .par_iter()
                .with_min_len(1 << 14)
                .map(|&x| 1.0 / (1.0 + (-x).exp()))
                .collect()
        }
        Activation::Softmax => {
            // Over the channel axis, per pixel: exp(x − max) / Σ exp(x_k − max).
            let max = item.fold_axis(Axis(0), f32::NEG_INFINITY, |&m, &x| m.max(x));
            let denom = item
                .axis_iter(Axis(0))
                .fold(ArrayD::<f32>::zeros(max.raw_dim()), |acc, lane| {
                    acc + (&lane - &max).mapv(f32::exp)
                });
            ((&plane - &max).mapv(f32::exp) / &denom).iter().copied().collect()
        }
    })
}

/// What [`check_fit`] found a model's signature to be.
#[derive(Debug)]
struct Fit {
    input: String,
    output: String,
    input_element: Element,
    output_element: Element,
    /// A fixed batch size, if the model has one.
    batch: Option<usize>,
}

/// Checks a model's signature against its manifest entry.
fn check_fit(spec: &ModelSpec, info: &ModelInfo, size: usize, manifest: &Manifest) -> Result<Fit, EngineError> {
    let unfit = |message: String| EngineError::Unfit {
        field: spec.field.clone(),
        path: spec.path.clone(),
        message,
    };
    let [input] = info.inputs.as_slice() else {
        return Err(unfit(format!(
            "the model has {} inputs ({}); ftu feeds one image tensor",
            info.inputs.len(),
            names(&info.inputs)
        )));
    };
    if !input.element.is_supported() {
        return Err(unfit(format!(
            "input `{}` is {} {}; ftu feeds images as {}",
            input.name,
            input.element.onnx_name(),
            input.shape_string(),
            Element::ACCEPTED
        )));
    }
    if input.dims.len() != 4 {
        return Err(unfit(format!(
            "input `{}` is {} {}; expected N×3×H×W",
            input.name,
            input.element,
            input.shape_string()
        )));
    }
    if input.dims[1].is_some_and(|c| c != 3) {
        return Err(unfit(format!(
            "input `{}` has {} channels; ftu feeds 3",
            input.name,
            input.shape_string()
        )));
    }
    if let (Some(h), Some(w)) = (input.dims[2], input.dims[3]) {
        if manifest.scaling.is_some() || manifest.tta.scales.iter().any(|&s| s != 1.0) {
            return Err(unfit(format!(
                "input `{}` is fixed at {w}×{h} (width×height), but target_pixel_size or tta.scales change the input size; \
                 export the model with dynamic height and width",
                input.name
            )));
        }
        if (h as usize, w as usize) != (size, size) {
            return Err(unfit(format!(
                "input `{}` is fixed at {w}×{h} (width×height), but the group size is {size}",
                input.name
            )));
        }
    } else if input.dims[2].is_some() != input.dims[3].is_some() {
        return Err(unfit(format!(
            "input `{}` ({}) fixes only one of height and width",
            input.name,
            input.shape_string()
        )));
    }
    let batch = input.dims[0].map(|b| b as usize);
    if batch == Some(0) {
        return Err(unfit(format!("input `{}` has batch size 0", input.name)));
    }
    let output = match &spec.output {
        OutputRef::Index(i) => info.outputs.get(*i),
        OutputRef::Name(n) => info.outputs.iter().find(|o| &o.name == n),
    }
    .ok_or_else(|| {
        unfit(format!(
            "{} not found; the model's outputs are {}",
            spec.output,
            names(&info.outputs)
        ))
    })?;
    if !output.element.is_supported() {
        return Err(unfit(format!(
            "output `{}` is {}; ftu reads masks of {}",
            output.name,
            output.element.onnx_name(),
            Element::ACCEPTED
        )));
    }
    match output.dims.len() {
        4 => {
            if let Some(c) = output.dims[1] {
                if spec.channel as i64 >= c {
                    return Err(unfit(format!(
                        "channel {} asked for, but output `{}` is {}",
                        spec.channel,
                        output.name,
                        output.shape_string()
                    )));
                }
                if spec.activation == Activation::Softmax && c < 2 {
                    return Err(unfit(format!("softmax over output `{}` with one channel", output.name)));
                }
            }
        }
        3 if spec.channel == 0 && spec.activation != Activation::Softmax => {}
        _ => {
            return Err(unfit(format!(
                "output `{}` is {}; expected a mask N×C×H×W (or N×H×W with channel 0 and no softmax)",
                output.name,
                output.shape_string()
            )))
        }
    }
    Ok(Fit {
        input: input.name.clone(),
        output: output.name.clone(),
        input_element: input.element.clone(),
        output_element: output.element.clone(),
        batch,
    })
}

fn names(list: &[TensorInfo]) -> String {
    if list.is_empty() {
        return "none".to_string();
    }
    list.iter()
        .map(|t| format!("`{}` {}", t.name, t.shape_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(activation: Activation, channel: usize) -> ModelSpec {
        ModelSpec {
            field: "group[0].model[0]".into(),
            path: "m.onnx".into(),
            weight: 1.0,
            norm: Some(Normalisation {
                mean: [0.0; 3],
                std: [1.0; 3],
            }),
            channels: ChannelOrder::Rgb,
            output: OutputRef::Index(0),
            activation,
            channel,
            organs: None,
        }
    }

    #[test]
    fn activations_pick_the_channel_of_the_right_item() {
        // batch 2, 2 channels, 1×2 pixels
        let out = ndarray::Array::from_shape_vec(
            ndarray::IxDyn(&[2, 2, 1, 2]),
            vec![0.0, 1.0, 2.0, 3.0, /* item 1 */ 0.0, 0.0, 5.0, -5.0],
        )
        .unwrap();
        let item = |i: usize| out.index_axis(Axis(0), i);
        assert_eq!(activated(&spec(Activation::None, 1), item(0)).unwrap(), [2.0, 3.0]);
        let s = activated(&spec(Activation::Sigmoid, 0), item(1)).unwrap();
        assert_eq!(s, [0.5, 0.5]);
        let soft = activated(&spec(Activation::Softmax, 1), item(1)).unwrap();
        let e5 = 1.0 / (1.0 + (-5.0f32).exp());
        assert!(
            (soft[0] - e5).abs() < 1e-6 && (soft[1] - (1.0 - e5)).abs() < 1e-6,
            "{soft:?}"
        );
        assert!(activated(&spec(Activation::None, 2), item(0)).is_err());
        // N×H×W outputs have one implicit channel.
        let nhw = ndarray::Array::from_shape_vec(ndarray::IxDyn(&[2, 1, 2]), vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            activated(&spec(Activation::None, 0), nhw.index_axis(Axis(0), 1)).unwrap(),
            [2.0, 3.0]
        );
    }

    #[test]
    fn planes_normalise_in_the_models_channel_order() {
        let mut img = RgbImage::new(2, 1);
        img.data.copy_from_slice(&[10, 20, 30, 40, 50, 60]);
        let norm = Normalisation {
            mean: [1.0, 2.0, 3.0],
            std: [1.0, 2.0, 4.0],
        };
        let rgb = normalised(&img, norm, ChannelOrder::Rgb);
        assert_eq!(rgb, [vec![9.0, 39.0], vec![9.0, 24.0], vec![6.75, 14.25]]);
        let bgr = normalised(&img, norm, ChannelOrder::Bgr);
        assert_eq!(bgr, [vec![29.0, 59.0], vec![9.0, 24.0], vec![1.75, 9.25]]);
    }

    #[test]
    fn scaled_dims_stay_multiples_of_32() {
        assert_eq!(scaled_dims(768, 512, 1.0), (768, 512));
        assert_eq!(scaled_dims(768, 512, 1.2), (928, 608));
        assert_eq!(scaled_dims(64, 64, 0.25), (32, 32));
    }
}
