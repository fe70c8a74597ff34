//! What can go wrong reading a slide, said once per file: a [`SlideError`] is the path and what
//! went wrong there ([`SlideErrorKind`]); readers work with kinds and add the path at the edge.
//! Also the pixel-count guard and the wall that keeps a third-party decoder's panic inside one slide.

use std::path::{Path, PathBuf};

/// Whole-image reads above this many pixels are refused: 2^28 ≈ 268 Mpx, 805 MB as RGB8.
/// Whole-slide images that large are for tiled reading.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlideLimits {
    pub max_pixels: u64,
}

impl Default for SlideLimits {
    fn default() -> Self {
        SlideLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// A slide that could not be read: which file, and what went wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct SlideError {
    pub path: PathBuf,
    pub kind: SlideErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum SlideErrorKind {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a TIFF, PNG or JPEG file (first bytes {magic:02x?})")]
    UnknownFormat { magic: Vec<u8> },
    #[error(
        "{width}×{height} = {pixels} pixels is over the limit of {max_pixels} (raise it, or read the slide in tiles)"
    )]
    TooLarge {
        width: u64,
        height: u64,
        pixels: u64,
        max_pixels: u64,
    },
    /// A JPEG whose MCU-padded area (what its decoder works on) is past the pixel limit.
    #[error(
        "a JPEG of {width}×{height} is decoded in {mcu_width}×{mcu_height} blocks, {padded} pixels in all, over the limit of {max_pixels}"
    )]
    JpegWorkArea {
        width: usize,
        height: usize,
        mcu_width: usize,
        mcu_height: usize,
        padded: u64,
        max_pixels: u64,
    },
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("corrupt or truncated TIFF: {0}")]
    Tiff(#[from] tiff::TiffError),
    #[error("corrupt or truncated TIFF: {0}")]
    Corrupt(String),
    #[error("corrupt or truncated JPEG: {0}")]
    CorruptJpeg(String),
    #[error("corrupt or truncated image: {0}")]
    Image(#[from] image::ImageError),
    #[error("the decoder failed on this file ({0})")]
    DecoderPanic(String),
    /// What OpenSlide said (or that it is not installed).
    #[error("{0}")]
    OpenSlide(String),
    /// Neither ftu's reader nor OpenSlide could read it: what each said.
    #[error("{ftu}; OpenSlide: {openslide}")]
    NoReader {
        ftu: Box<SlideErrorKind>,
        openslide: Box<SlideErrorKind>,
    },
}

impl SlideErrorKind {
    /// This error, in the file at `path`.
    pub fn at(self, path: &Path) -> SlideError {
        SlideError {
            path: path.to_path_buf(),
            kind: self,
        }
    }
}

/// A decoder bug must not take down a batch of a thousand slides: a panic inside a third-party
/// decoder becomes this slide's error.
pub(crate) fn guarded<T>(read: impl FnOnce() -> Result<T, SlideErrorKind>) -> Result<T, SlideErrorKind> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(SlideErrorKind::DecoderPanic(message))
    })
}

/// Refuses a `width × height` image past `limits`, before anything is allocated for it.
pub(crate) fn check_size(width: u64, height: u64, limits: SlideLimits) -> Result<(), SlideErrorKind> {
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(SlideErrorKind::TooLarge {
            width,
            height,
            pixels,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}
