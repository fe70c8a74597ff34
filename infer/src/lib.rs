//! ftu-infer: the inference engine of ftu and the formats every part of ftu shares — RLE in the
//! competition's convention, the CSV schemas, slide reading, TIFF writing and the Dice metric.
//! No Candle here: the trainer depends on this crate, never the other way.

pub mod atomic;
pub mod blocks;
pub mod bundle;
pub mod dice;
pub mod engine;
pub mod geojson;
pub mod manifest;
pub mod mask;
pub mod mask_image;
pub mod merge;
pub mod organ;
pub mod postprocess;
pub mod predict;
pub mod region;
pub mod resize;
pub mod rle;
pub mod runs;
pub mod schema;
pub mod score;
pub mod session;
pub mod slide;
pub mod tiff_write;
pub mod tiled;
pub mod tiles;
pub mod tissue;
pub mod tta;

pub use mask::Mask;
pub use organ::{DataSource, Organ};
pub use slide::{read_slide, RgbImage, SlideLimits};
