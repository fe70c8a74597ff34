//! A mask image's bytes (PNG, JPEG or TIFF; non-zero is foreground), and the mask through RLE
//! and back.
#![no_main]
use ftu_formats::mask::image::decode_mask;
use ftu_formats::mask::rle;
use ftu_fuzz::{audited, budget, name, LIMITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    audited(budget(data.len(), LIMITS.max_pixels), || {
        if let Ok(mask) = decode_mask(data, name(), LIMITS) {
            let again = rle::decode(&rle::encode(&mask), mask.height(), mask.width()).expect("its own RLE");
            assert_eq!(again, mask);
        }
    })
});
