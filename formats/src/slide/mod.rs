//! Slides: read whole ([`read_slide`]) or by region ([`region::SlideSource`]) through one chunked
//! TIFF reader ([`tiff::TiffRegions`]: strips or tiles; none, LZW, deflate, JPEG, PackBits;
//! 8/16-bit; grey, RGB, RGBA; BigTIFF; any page), PNG and JPEG with `image`, and written as
//! (pyramidal, tiled, BigTIFF) TIFF ([`write`]). Errors carry the file's path once ([`SlideError`]).

pub mod error;
mod ifd;
mod jpeg;
pub mod meta;
pub mod openslide;
pub mod read;
pub mod region;
pub mod rgb;
pub mod sniff;
pub mod tiff;
pub mod write;

pub use error::{SlideError, SlideErrorKind, SlideLimits, DEFAULT_MAX_PIXELS};
pub use read::{decode_slide, read_slide};
pub use rgb::RgbImage;
