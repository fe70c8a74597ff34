//! Run-length strings as Kaggle writes them: parse, decode to a mask, and the round trips.
#![no_main]
use ftu_formats::mask::rle;
use ftu_fuzz::{audited, budget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Two bytes choose the mask's size (1..=256 each side), the rest is the string.
    if data.len() < 2 {
        return;
    }
    let (height, width) = (data[0] as usize + 1, data[1] as usize + 1);
    let Ok(text) = std::str::from_utf8(&data[2..]) else {
        return;
    };
    audited(budget(data.len(), (height * width) as u64), || {
        let Ok(runs) = rle::parse(text, height * width) else {
            assert!(
                rle::decode(text, height, width).is_err(),
                "decode takes what parse refused"
            );
            return;
        };
        let mut end = 0;
        for r in &runs {
            assert!(
                r.start >= end && r.len > 0 && r.end() <= height * width,
                "run {r:?} after {end}"
            );
            end = r.end();
        }
        assert_eq!(rle::parse(&rle::format(&runs), height * width).ok(), Some(runs.clone()));
        let mask = rle::decode(text, height, width).expect("parse took it");
        let covered: usize = runs.iter().map(|r| r.len).sum();
        assert_eq!(mask.count() as usize, covered);
        let again = rle::decode(&rle::encode(&mask), height, width).expect("its own encoding");
        assert_eq!(again, mask);
    })
});
