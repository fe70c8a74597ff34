//! A TIFF read region by region, as whole-slide images are: the header, then windows through
//! the chunk cache, each compared with the same window of the page decoded whole.
#![no_main]
use std::sync::Arc;

use ftu_formats::slide::rgb::crop;
use ftu_formats::slide::tiff::TiffRegions;
use ftu_fuzz::{audited, budget, name, Picks, LIMITS};
use libfuzzer_sys::fuzz_target;

/// Chunks kept decoded between windows: small, so eviction runs too.
const CACHE_BYTES: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Ok(mut tiff) = audited(budget(data.len(), 0), || {
        TiffRegions::from_bytes(Arc::from(data), name(), CACHE_BYTES)
    }) else {
        return;
    };
    let (width, height) = (tiff.width, tiff.height);
    let pixels = (width as u64).saturating_mul(height as u64);
    if width == 0 || height == 0 || pixels > LIMITS.max_pixels {
        return;
    }
    audited(budget(data.len(), pixels), || {
        let whole = tiff.whole(LIMITS);
        let mut picks = Picks::new(data);
        for _ in 0..4 {
            let (x, y) = (picks.below(width), picks.below(height));
            let (w, h) = (
                1 + picks.below((width - x).min(96)),
                1 + picks.below((height - y).min(96)),
            );
            let region = tiff.region(x, y, w, h);
            match (&whole, region) {
                (Ok(whole), Ok(region)) => assert!(crop(whole, x, y, w, h) == region, "window {x},{y} {w}×{h}"),
                // A chunk that fails fails the same way whichever way it is read; a window may
                // miss the broken chunk the whole page hit.
                (Ok(_), Err(e)) => panic!("window {x},{y} {w}×{h} failed where the whole page read: {e}"),
                (Err(_), _) => {}
            }
        }
    })
});
