//! Scoring out-of-fold predictions: Dice at each slide's full resolution and the per-organ
//! threshold search over it.

pub mod full_res;
pub mod thresholds;
