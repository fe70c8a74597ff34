//! ftu-formats: what every part of ftu reads and writes — organs and data sources, the
//! competition's CSV schemas and folder layout, masks (RLE in the competition's convention, row
//! runs, mask images, GeoJSON), the Dice metric, slides (read whole or by region through one
//! chunked TIFF reader, and written as TIFF), resizing, TTA transforms, sliding windows and their blending, tissue detection, overlays,
//! the ensemble manifest, and how a failed command's error reads. No ONNX Runtime and no Candle: the trainer and the engine both stand on this crate.

pub mod atomic;
pub mod blend;
pub mod blocks;
pub mod dice;
pub mod draw;
pub mod dylib;
pub mod exit;
pub mod kaggle;
pub mod manifest;
pub mod mask;
pub mod organ;
pub mod postprocess;
pub mod resize;
pub mod schema;
pub mod slide;
pub mod tiles;
pub mod tissue;
pub mod tta;

pub use mask::Mask;
pub use organ::{DataSource, Organ};
pub use slide::{read_slide, RgbImage, SlideLimits};
