//! The outputs a slide gets besides its row, when asked for: GeoJSON outlines with an overview,
//! and the mask as a pyramidal tiled TIFF.

use ftu_formats::draw::outline_overview;
use ftu_formats::mask::geojson;
use ftu_formats::mask::image as mask_image;
use ftu_formats::mask::runs::{Component, RunMask};
use ftu_formats::schema::TestRow;
use ftu_formats::slide::RgbImage;

use super::options::PredictOptions;
use super::SlideFailure;

/// The slide's pixel size for a TIFF's resolution tags, when it is a real one.
pub(super) fn stated_pixel_size(row: &TestRow) -> Option<f64> {
    (row.pixel_size.is_finite() && row.pixel_size > 0.0).then_some(row.pixel_size)
}

/// GeoJSON outlines with their overview, and the mask as a tiled TIFF, when asked for.
/// `base` is the slide or a thumbnail of it.
pub(super) fn write_extras(
    opts: &PredictOptions,
    row: &TestRow,
    runs: &RunMask,
    mean_probability: impl Fn(&Component) -> f64,
    base: &RgbImage,
) -> Result<(), SlideFailure> {
    if let Some(dir) = &opts.geojson {
        let outlines = geojson::outlines(runs, mean_probability);
        let fc = geojson::feature_collection(&row.id, row.organ, &outlines);
        geojson::write(&dir.join(format!("{}.geojson", row.id)), &fc)?;
        let (w, h, rgb) = outline_overview(base, runs.width, runs.height, &outlines, opts.overlay_size);
        mask_image::write_rgb_png(&dir.join(format!("{}.png", row.id)), w, h, &rgb)?;
    }
    if let Some(dir) = &opts.masks {
        mask_image::write_mask_tiff(&dir.join(format!("{}.tiff", row.id)), runs, stated_pixel_size(row))?;
    }
    Ok(())
}
