//! A slide's bytes decoded whole, whatever they are: TIFF and BigTIFF (strips or tiles, every
//! codec ftu or the tiff crate decodes, every sample layout), PNG, JPEG.
#![no_main]
use ftu_formats::slide::decode_slide;
use ftu_fuzz::{audited, budget, name, LIMITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    audited(budget(data.len(), LIMITS.max_pixels), || {
        if let Ok(image) = decode_slide(data, name(), LIMITS) {
            assert!((image.width * image.height) as u64 <= LIMITS.max_pixels);
            assert_eq!(image.data.len(), image.width * image.height * 3);
        }
    })
});
