//! A mask image's bytes (PNG, JPEG or TIFF; non-zero is foreground), and the mask through RLE
//! and back.
#![no_main]
use ftu_formats::mask::image::decode_mask;
use ftu_formats::mask::rle;
use ftu_fuzz::{audited, budget, name, LIMITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mask) = audited(budget(data.len(), LIMITS.max_pixels), || {
        decode_mask(data, name(), LIMITS)
    }) else {
        return;
    };
    // The round trip parses a string this input did not hold: its budget is the string's.
    let encoded = rle::encode(&mask);
    let pixels = (mask.height() * mask.width()) as u64;
    let again = audited(budget(encoded.len(), pixels), || {
        rle::decode(&encoded, mask.height(), mask.width()).expect("its own RLE")
    });
    assert_eq!(again, mask);
});
