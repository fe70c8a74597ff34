//! A slide read region by region through the tiled engine: its mask as row runs, its
//! probabilities in blocks, its overlays drawn on a thumbnail.

use std::time::Instant;

use ftu_formats::draw::{outline_overlay, Layer, PRED_COLOUR, TRUTH_COLOUR};
use ftu_formats::mask::{image as mask_image, rle};
use ftu_formats::postprocess;
use ftu_formats::schema::TestRow;
use ftu_formats::slide::region::SlideSource;
use ftu_formats::slide::RgbImage;

use super::extras::{stated_pixel_size, write_extras};
use super::finished::FinishedSlide;
use super::options::PredictOptions;
use super::reader::{check_size, image_path};
use super::whole::context_of;
use super::{Event, SlideFailure, SlideProgress};
use crate::engine::{Engine, Timings};
use crate::tiled;

/// One slide read region by region through the tiled engine.
pub(super) fn predict_tiled_one(
    engine: &mut Engine,
    opts: &PredictOptions,
    row: &TestRow,
    truth: Option<&String>,
    t: &mut Timings,
    progress: SlideProgress,
) -> Result<FinishedSlide, SlideFailure> {
    let info = context_of(row);
    let path = image_path(opts, row)?;
    let start = Instant::now();
    let mut source = SlideSource::open(&path, opts.limits)?;
    t.read += start.elapsed();
    let (width, height) = (source.width(), source.height());
    check_size(&path, row, width, height)?;
    let threshold = engine.threshold(&info);
    let keep_map = opts.probs.is_some();
    let pred = tiled::predict_slide(
        engine,
        &mut source,
        &info,
        threshold,
        keep_map,
        opts.limits,
        t,
        &mut |done, total| progress(Event::Windows { done, total }),
    )?;
    let start = Instant::now();
    let runs = postprocess::apply(
        pred.mask.mask.clone(),
        &engine.manifest().postprocess.get(row.organ),
        row.pixel_size,
    );
    let encoded = runs.rle();
    t.rle += start.elapsed();
    if let (Some(dir), Some(map)) = (&opts.probs, &pred.map) {
        mask_image::write_prob_tiff(&dir.join(format!("{}.tiff", row.id)), map, stated_pixel_size(row))?;
    }
    // Overlays and overviews start from the thumbnail the tissue detector used, or a new one.
    let base = match pred.thumbnail {
        Some((thumb, _)) => thumb,
        None if opts.overlays.is_some() || opts.geojson.is_some() => {
            let factor = ftu_formats::tissue::thumbnail_factor(width, height, ftu_formats::tissue::THUMBNAIL_SIDE);
            source.thumbnail(factor).map_err(SlideFailure::Read)?
        }
        None => RgbImage::new(1, 1),
    };
    if let Some(dir) = &opts.overlays {
        let truth = truth.and_then(|r| rle::parse(r, width * height).ok());
        let truth_at = truth.as_ref().map(|runs| {
            move |y: usize, x: usize| {
                let i = x * height + y;
                let k = runs.partition_point(|r| r.end() <= i);
                k < runs.len() && runs[k].start <= i
            }
        });
        let pred_at = |y: usize, x: usize| runs.get(y, x);
        let mut layers: Vec<Layer> = Vec::new();
        if let Some(f) = &truth_at {
            layers.push((f, TRUTH_COLOUR));
        }
        layers.push((&pred_at, PRED_COLOUR));
        let (w, h, rgb) = outline_overlay(&base, width, height, &layers, opts.overlay_size);
        mask_image::write_rgb_png(&dir.join(format!("{}.png", row.id)), w, h, &rgb)?;
    }
    write_extras(opts, row, &runs, |c| pred.mask.mean_over(&c.runs), &base)?;
    Ok(FinishedSlide {
        rle: encoded,
        fraction: runs.count() as f64 / (width * height).max(1) as f64,
        tiles: Some(pred.stats),
    })
}
