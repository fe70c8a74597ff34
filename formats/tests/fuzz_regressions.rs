//! Every input the fuzz targets (`fuzz/`, `scripts/fuzz.sh`) found a crash with, kept in
//! `tests/fuzz/`, replayed through the same entry point under the same allocation audit: each
//! must now be refused with the error named here, within the budget the fuzz target gave it
//! (a small multiple of the file's size plus what its allowed pixels need).

#[path = "../../fuzz/src/audit.rs"]
mod audit;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use audit::{budget, within, Audit, LIMITS};
use ftu_formats::mask::image::decode_mask;
use ftu_formats::slide::decode_slide;
use ftu_formats::slide::meta::read_meta;
use ftu_formats::slide::tiff::TiffRegions;

#[global_allocator]
static GLOBAL: Audit = Audit;

/// (file in tests/fuzz, the fuzz target that found it, what the error must say)
const CASES: &[(&str, &str, &str)] = &[
    ("slide-tag-values-past-the-end.tif", "slide", "past the end of the file"),
    (
        "region-tag-values-past-the-end.tif",
        "tiff_region",
        "past the end of the file",
    ),
    ("meta-tag-values-past-the-end.tif", "meta", "past the end of the file"),
    ("mask-tile-larger-than-the-image.tif", "mask", "for a 20×13 image"),
    (
        "meta-empty-sample-format-panics-the-tiff-crate.tif",
        "meta",
        "the decoder failed on this file (index out of bounds",
    ),
    (
        "slide-bigtiff-unknown-type-misaligns-the-crate.tif",
        "slide",
        "past the end of the file",
    ),
    (
        "region-bigtiff-unknown-type-misaligns-the-crate.tif",
        "tiff_region",
        "past the end of the file",
    ),
    (
        "region-jpeg-frame-larger-than-its-tile.tif",
        "tiff_region",
        "in a 16×16 chunk",
    ),
    (
        "slide-jpeg-one-row-in-24-row-mcus.jpg",
        "slide",
        "a JPEG of 60436×1 is decoded in 8×24 blocks",
    ),
];

fn replay(target: &str, path: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = Path::new("fuzz-input");
    let err = |e: ftu_formats::slide::SlideError| e.to_string();
    match target {
        "slide" => decode_slide(bytes, name, LIMITS).map(drop).map_err(err),
        "mask" => decode_mask(bytes, name, LIMITS).map(drop).map_err(err),
        "tiff_region" => TiffRegions::from_bytes(Arc::from(bytes), name, 64 << 10)
            .and_then(|mut tiff| tiff.whole(LIMITS))
            .map(drop)
            .map_err(err),
        "meta" => read_meta(path).map(drop).map_err(err),
        _ => panic!("no fuzz target {target}"),
    }
}

#[test]
fn what_fuzzing_found_is_refused_within_budget() {
    // A decoder's panic (contained by ftu, an error here) is printed without the backtrace the
    // default hook would symbolise inside the audited budget.
    std::panic::set_hook(Box::new(|info| eprintln!("contained: {info}")));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    for &(file, target, expected) in CASES {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let pixels = if target == "meta" { 0 } else { LIMITS.max_pixels };
        let allowed = budget(bytes.len(), pixels);
        let (result, peak) = within(allowed, || replay(target, &path, &bytes));
        let message = result.expect_err(file);
        assert!(message.contains(expected), "{file}: {message}");
        println!("{file}: refused with {peak} bytes at most (budget {allowed}): {message}");
    }
    let kept = std::fs::read_dir(&dir).expect("tests/fuzz").count();
    assert_eq!(kept, CASES.len(), "every file in tests/fuzz has a case here");
}

/// A file with several bad chunks gets the same error whatever the thread count: the first
/// bad chunk in chunk order, not whichever thread failed first (CI, on another machine, once
/// saw chunk 1's error for this file).
#[test]
fn several_bad_chunks_report_the_first_whatever_the_threads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/region-jpeg-frame-larger-than-its-tile.tif");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for threads in [1, 2, 16] {
        for _ in 0..50 {
            // A fresh pool each time: its threads start while the chunks are handed out.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a rayon pool");
            let message = pool
                .install(|| replay("tiff_region", &path, &bytes))
                .expect_err("refused");
            assert!(
                message.contains("chunk 0: a JPEG of 8200×11777 in a 16×16 chunk"),
                "{threads} threads: {message}"
            );
        }
    }
}
