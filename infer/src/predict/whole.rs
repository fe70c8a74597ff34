//! The model and finish stages of a slide read whole: its groups' maps from the models, then
//! (on the finisher thread) resized back, combined, thresholded, post-processed, encoded, written.

use std::time::Instant;

use ftu_formats::draw::overlay;
use ftu_formats::manifest::PostprocessSpec;
use ftu_formats::mask::runs::{RunMask, RunSums};
use ftu_formats::mask::Mask;
use ftu_formats::mask::{image as mask_image, rle};
use ftu_formats::postprocess;
use ftu_formats::schema::TestRow;
use ftu_formats::slide::RgbImage;

use super::extras::write_extras;
use super::finished::FinishedSlide;
use super::options::PredictOptions;
use super::SlideFailure;
use crate::engine::{Engine, ProbMap, SlideContext, Timings};
use crate::ensemble::SlideMaps;

/// The mask where the probability is above the threshold.
pub fn threshold(prob: &ProbMap, threshold: f32) -> Mask {
    let data = prob.data.iter().map(|&p| u8::from(p > threshold)).collect();
    Mask::from_row_major(prob.height, prob.width, data).expect("a map's data fills its size")
}

/// What the engine needs of a row besides its slide's pixels.
pub(super) fn context_of(row: &TestRow) -> SlideContext {
    SlideContext {
        organ: row.organ,
        source: row.data_source,
        pixel_size: row.pixel_size,
    }
}

/// A slide read whole whose models have run: what [`finish_one`] needs to make its row.
pub(super) struct ModelledSlide {
    slide: RgbImage,
    maps: SlideMaps,
    threshold: f32,
    post: PostprocessSpec,
}

/// A row whose slide went through the models (or failed on the way), for the finisher thread,
/// with its timings so far.
pub(super) struct ModelledRow<'a> {
    pub(super) row: &'a TestRow,
    pub(super) modelled: Result<ModelledSlide, SlideFailure>,
    pub(super) t: Timings,
}

/// The models' half of one slide read whole (every group in resize mode): each group's map.
pub(super) fn model_one(
    engine: &mut Engine,
    row: &TestRow,
    slide: RgbImage,
    t: &mut Timings,
) -> Result<ModelledSlide, SlideFailure> {
    let info = context_of(row);
    let maps = engine.slide_maps(&slide, &info, t)?;
    Ok(ModelledSlide {
        slide,
        maps,
        threshold: engine.threshold(&info),
        post: engine.manifest().postprocess.get(row.organ),
    })
}

/// The rest of one slide, without the engine: the groups' maps resized back and averaged,
/// thresholded, post-processed and encoded; the requested outputs written.
pub(super) fn finish_one(
    opts: &PredictOptions,
    row: &TestRow,
    modelled: ModelledSlide,
    truth: Option<&String>,
    t: &mut Timings,
) -> Result<FinishedSlide, SlideFailure> {
    let ModelledSlide {
        slide,
        maps,
        threshold: cut,
        post,
    } = modelled;
    let prob = maps.combine(t);
    let start = Instant::now();
    let mask = threshold(&prob, cut);
    let runs_needed = !post.is_identity() || opts.geojson.is_some() || opts.masks.is_some();
    let (encoded, mask, runs) = if runs_needed {
        let thresholded = RunSums::of_dense(RunMask::from_mask(&mask), &prob.data);
        let runs = postprocess::apply(thresholded.mask.clone(), &post, row.pixel_size);
        (runs.rle(), runs.to_mask(), Some((runs, thresholded)))
    } else {
        (rle::encode(&mask), mask, None)
    };
    t.rle += start.elapsed();
    if let Some(dir) = &opts.probs {
        let grey: Vec<u8> = prob.data.iter().map(|&p| to_grey(p)).collect();
        mask_image::write_grey_png(&dir.join(format!("{}.png", row.id)), prob.width, prob.height, &grey)?;
    }
    if let Some(dir) = &opts.overlays {
        let truth = truth.and_then(|r| rle::decode(r, slide.height, slide.width).ok());
        let (w, h, rgb) = overlay(&slide, &mask, truth.as_ref(), opts.overlay_size);
        mask_image::write_rgb_png(&dir.join(format!("{}.png", row.id)), w, h, &rgb)?;
    }
    if let Some((runs, thresholded)) = &runs {
        write_extras(opts, row, runs, |c| thresholded.mean_over(&c.runs), &slide)?;
    }
    Ok(FinishedSlide {
        rle: encoded,
        fraction: mask.count() as f64 / (mask.height() * mask.width()).max(1) as f64,
        tiles: None,
    })
}

fn to_grey(p: f32) -> u8 {
    (p.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_strictly_above() {
        let prob = ProbMap {
            width: 2,
            height: 2,
            data: vec![0.2, 0.5, 0.50001, 0.9],
        };
        let m = threshold(&prob, 0.5);
        assert_eq!(m.data(), [0, 0, 1, 1]);
        assert_eq!((m.height(), m.width()), (2, 2));
    }
}
