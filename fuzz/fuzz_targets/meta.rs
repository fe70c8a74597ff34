//! A slide's metadata as `ftu-infer inspect` and `predict --pixel-size auto` read it: size,
//! pyramid levels, the pixel size from Aperio, OME-XML or the resolution tags.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use ftu_formats::slide::meta::read_meta;
use ftu_fuzz::{audited, budget};
use libfuzzer_sys::fuzz_target;

/// The file the input is written to (metadata is read from a path), in memory where possible.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("ftu-fuzz-meta-{}.tif", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("write the input");
    audited(budget(data.len(), 0), || {
        if let Ok(meta) = read_meta(path()) {
            if let Some((pixel_size, _)) = meta.pixel_size {
                assert!(pixel_size.is_finite() && pixel_size > 0.0, "{pixel_size}");
            }
            for level in &meta.levels {
                assert!(level.width <= meta.width && level.height <= meta.height, "{level:?}");
            }
        }
    })
});
