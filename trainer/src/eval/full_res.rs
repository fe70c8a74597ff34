//! Validation at the competition's resolution: a prediction made at the training size is resized
//! back to the slide's own size — with the resize ftu-infer's resize mode uses — and scored
//! against the full-resolution mask from train.csv, as the competition scored it. This is the
//! number that picks a fold's best checkpoint and the one the threshold search maximises.

use ftu_formats::blend::{combine, GroupMap};
use ftu_formats::dice::ThresholdCounts;
use ftu_formats::mask::rle;
use ftu_formats::resize::resize_map;
use ftu_formats::schema::TrainRow;
use ftu_formats::Mask;

use crate::error::DataError;

/// One slide's prediction at full resolution, scored.
pub struct Scored {
    /// Dice counts at each threshold of the grid it was scored on.
    pub counts: ThresholdCounts,
    /// The prediction at `rle_threshold` in the competition's RLE, when asked for.
    pub rle: Option<String>,
}

/// `prob` (row-major `side × side`, a map at training scale) resized to the slide's
/// `img_width × img_height` and scored at each threshold of `grid` against the slide's mask; with
/// `rle_threshold`, also the mask `prob > rle_threshold` encoded as RLE.
pub fn score(
    prob: &[f32],
    side: usize,
    row: &TrainRow,
    grid: &[f32],
    rle_threshold: Option<f32>,
) -> Result<Scored, DataError> {
    let full = resize_map(prob, side, side, row.img_width as usize, row.img_height as usize);
    score_full(&full, row, grid, rle_threshold)
}

/// A map already at the slide's size (see [`blend`]) scored as [`score`] does.
pub fn score_full(full: &[f32], row: &TrainRow, grid: &[f32], rle_threshold: Option<f32>) -> Result<Scored, DataError> {
    let (h, w) = (row.img_height as usize, row.img_width as usize);
    assert_eq!(full.len(), h * w, "slide {}: a map of its size", row.id);
    let truth = rle::decode(&row.rle, h, w).map_err(|cause| DataError::Rle {
        id: row.id.clone(),
        cause,
    })?;
    Ok(score_against(full, &truth, grid, rle_threshold))
}

fn score_against(full: &[f32], truth: &Mask, grid: &[f32], rle_threshold: Option<f32>) -> Scored {
    let counts = ThresholdCounts::of(full, truth.data(), grid);
    let rle = rle_threshold.map(|t| {
        let bytes = full.iter().map(|&p| u8::from(p > t)).collect();
        let mask = Mask::from_row_major(truth.height(), truth.width(), bytes).expect("the map has the slide's size");
        rle::encode(&mask)
    });
    Scored { counts, rle }
}

/// A map at training scale, its (width, height), and its weight.
pub type Part<'a> = (&'a [f32], (usize, usize), f32);

/// Maps at training scale averaged at full resolution with weights (summing to any positive
/// total), as ftu-infer averages the groups of a manifest (the same code: [`ftu_formats::blend`]).
pub fn blend(maps: &[Part], row: &TrainRow) -> Vec<f32> {
    let groups = maps
        .iter()
        .map(|&(map, (width, height), weight)| {
            (
                GroupMap::Small {
                    map: map.to_vec(),
                    width,
                    height,
                },
                weight,
            )
        })
        .collect();
    combine(row.img_width as usize, row.img_height as usize, groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::{DataSource, Organ};

    fn row(h: u32, w: u32, rle: &str) -> TrainRow {
        TrainRow {
            id: "1".into(),
            organ: Organ::Kidney,
            data_source: DataSource::Hpa,
            img_height: h,
            img_width: w,
            pixel_size: 0.4,
            tissue_thickness: 4.0,
            rle: rle.into(),
            age: None,
            sex: None,
        }
    }

    /// A 2×2 map whose left column is sure, resized to a slide 8 wide and 4 high whose truth is
    /// its left half: any symmetric filter puts the edge between columns 3 and 4, so the
    /// prediction is the left half, Dice is 1 and the RLE is the truth's (columns 0–3, all rows:
    /// pixels 1–16 in column-major order). On a slide 8 high and 4 wide, all foreground, columns
    /// 0–1 are predicted: 2·16/(16+32).
    #[test]
    fn a_map_at_training_scale_is_scored_and_encoded_at_the_slides_size() {
        let prob = [1.0, 0.0, 1.0, 0.0];
        let s = score(&prob, 2, &row(4, 8, "1 16"), &[0.25, 0.5], Some(0.5)).unwrap();
        assert_eq!(s.counts.truth, 16);
        assert_eq!(s.counts.pred[1], 16);
        assert_eq!(s.counts.dice(1), 1.0);
        assert_eq!(s.rle.as_deref(), Some("1 16"));
        // The same slide 8 high and 4 wide (width and height swapped): columns 0–1 predicted.
        let s = score(&prob, 2, &row(8, 4, "1 32"), &[0.5], Some(0.5)).unwrap();
        assert_eq!(s.rle.as_deref(), Some("1 16"));
        assert!((s.counts.dice(0) - 2.0 * 16.0 / 48.0).abs() < 1e-12);
    }

    #[test]
    fn a_bad_truth_rle_names_the_slide() {
        let err = score(&[0.0; 4], 2, &row(4, 6, "30 2"), &[0.5], None).err().unwrap();
        assert!(err.to_string().contains("slide 1"), "{err}");
    }

    #[test]
    fn blending_weights_maps_at_full_resolution() {
        let r = row(4, 4, "");
        let ones = [1.0f32; 4];
        let zeros = [0.0f32; 16];
        let b = blend(&[(&ones, (2, 2), 3.0), (&zeros, (4, 4), 1.0)], &r);
        assert!(b.iter().all(|&v| (v - 0.75).abs() < 1e-6), "{b:?}");
    }
}
