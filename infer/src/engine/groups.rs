//! Group maps: a group's models run over each input at the TTA's scales and transforms, their
//! maps inverted, activated and averaged by weight; in resize mode, the slide resized to the
//! group's input and its map back.

use std::borrow::Cow;

use ndarray::{Array4, Axis};
use rayon::prelude::*;

use super::planes::{planes, PlaneKey, Planes};
use super::record::Recording;
use super::run::{activated, run};
use super::{timed, Engine, EngineError, LoadedModel, SlideContext, Timings};
use ftu_formats::organ::Organ;
use ftu_formats::resize::{resize_map, resize_rgb};
use ftu_formats::slide::RgbImage;
use ftu_formats::tta::Transform;

impl Engine {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_dims_stay_multiples_of_32() {
        assert_eq!(scaled_dims(768, 512, 1.0), (768, 512));
        assert_eq!(scaled_dims(768, 512, 1.2), (928, 608));
        assert_eq!(scaled_dims(64, 64, 0.25), (32, 32));
    }
}
