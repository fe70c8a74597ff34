//! Scanner formats ftu's own reader does not decode — Aperio SVS with JPEG 2000 tiles, Hamamatsu
//! NDPI, 3DHistech MRXS, Leica SCN, Philips TIFF, … — through OpenSlide's C library, loaded at
//! run time, so nothing links against it: without it every other format works as before, and a
//! slide that needs it is an error saying how to install it (`pip install openslide-bin`).
//!
//! The library loaded is the file `FTU_OPENSLIDE` names when it is set (and nothing else), else
//! the first found of: `libopenslide.so.1` (OpenSlide 4) or `.so.0` (3.4) beside the binary or in
//! its `lib/`, in the `openslide_bin` package (PyPI's `openslide-bin`) of the active virtualenv's
//! Python or of `python3`/`python` on PATH, then on the system's library path (Debian's
//! `libopenslide0`) — `.so.1` before `.so.0` in each place.

use std::ffi::{c_char, c_void, CStr, CString, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::error::{SlideError, SlideErrorKind};
use super::rgb::RgbImage;
use crate::dylib::{self, PythonShipped};

/// The variable that names the library to load (and turns the search off).
pub const VARIABLE: &str = "FTU_OPENSLIDE";

/// The library's file names, newest ABI first: OpenSlide 4.x, then 3.4.
pub const NAMES: [&str; 2] = ["libopenslide.so.1", "libopenslide.so.0"];

/// PyPI's `openslide-bin`: `openslide_bin/libopenslide.so.1`.
pub const PYPI: PythonShipped = PythonShipped {
    package: "openslide_bin",
    subdir: "",
};

type Open = unsafe extern "C" fn(*const c_char) -> *mut c_void;
type Close = unsafe extern "C" fn(*mut c_void);
type GetError = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type LevelCount = unsafe extern "C" fn(*mut c_void) -> i32;
type LevelDimensions = unsafe extern "C" fn(*mut c_void, i32, *mut i64, *mut i64);
type LevelDownsample = unsafe extern "C" fn(*mut c_void, i32) -> f64;
type ReadRegion = unsafe extern "C" fn(*mut c_void, *mut u32, i64, i64, i32, i64, i64);
type Property = unsafe extern "C" fn(*mut c_void, *const c_char) -> *const c_char;
type DetectVendor = unsafe extern "C" fn(*const c_char) -> *const c_char;
type GetVersion = unsafe extern "C" fn() -> *const c_char;

/// OpenSlide's functions, resolved once.
struct Library {
    _lib: libloading::Library,
    loaded: Loaded,
    open: Open,
    close: Close,
    get_error: GetError,
    level_count: LevelCount,
    level_dimensions: LevelDimensions,
    level_downsample: LevelDownsample,
    read_region: ReadRegion,
    property: Property,
    detect_vendor: DetectVendor,
}

/// Which OpenSlide this process loaded, for `ftu-infer inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The file, or the name the system's loader resolved (`libopenslide.so.0`).
    pub path: PathBuf,
    /// Where it was found: `FTU_OPENSLIDE`, `beside the binary`, `the openslide_bin package of
    /// .venv/bin/python`, `the system's library path`.
    pub origin: String,
    /// `openslide_get_version()`: `4.0.0`, `3.4.1`.
    pub version: String,
}

/// What to try loading, in order, each with where it came from; and the places searched in vain.
fn candidates() -> (Vec<(OsString, String)>, Vec<String>) {
    if let Some(name) = std::env::var_os(VARIABLE) {
        return (vec![(name, VARIABLE.to_string())], Vec::new());
    }
    let mut looked = Vec::new();
    let found = dylib::search(
        &dylib::binary_folders(),
        &dylib::pythons(),
        PYPI,
        |dir| dylib::first_file(dir, &NAMES),
        &mut looked,
    );
    let system = NAMES.map(|n| (OsString::from(n), "the system's library path".to_string()));
    let list = found
        .map(|f| (f.path.into_os_string(), f.origin.to_string()))
        .into_iter()
        .chain(system)
        .collect();
    (list, looked)
}

fn library() -> Result<&'static Library, String> {
    static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let (candidates, looked) = candidates();
        let mut failures = Vec::new();
        for (name, origin) in candidates {
            match load(&name, origin) {
                Ok(lib) => return Ok(lib),
                Err(e) => failures.push(e),
            }
        }
        Err(if std::env::var_os(VARIABLE).is_some() {
            format!(
                "OpenSlide could not be loaded from {VARIABLE} ({}); point {VARIABLE} at libopenslide.so.1 \
                 (pip install openslide-bin puts it in site-packages/openslide_bin/), or unset it to let ftu look for it",
                failures.join("; ")
            )
        } else {
            format!(
                "OpenSlide is not installed: no {} in {}, nor on the system's library path ({}); \
                 install it with `pip install openslide-bin` (into the virtualenv ftu runs in, or for python3 on PATH), \
                 or apt-get install libopenslide0 (Debian/Ubuntu), or set {VARIABLE} to the library's path",
                NAMES.join(" or "),
                looked.join(", "),
                failures.join("; ")
            )
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Loads OpenSlide from `name` (a path, or a name for the system's loader).
fn load(name: &OsString, origin: String) -> Result<Library, String> {
    let shown = PathBuf::from(name).display().to_string();
    // SAFETY: loading OpenSlide runs its library constructors, which only initialise glib and its
    // codecs; the symbols below are OpenSlide's stable C API (3.4 and 4.x).
    unsafe {
        let lib = libloading::Library::new(name).map_err(|e| format!("{shown}: {e}"))?;
        macro_rules! sym {
            ($name:literal) => {
                *lib.get($name).map_err(|e| {
                    format!(
                        "{shown} is no OpenSlide library (no {}: {e})",
                        String::from_utf8_lossy($name)
                    )
                })?
            };
        }
        let get_version: GetVersion = sym!(b"openslide_get_version");
        let version = get_version();
        let version = if version.is_null() {
            "(version unknown)".to_string()
        } else {
            CStr::from_ptr(version).to_string_lossy().into_owned()
        };
        Ok(Library {
            loaded: Loaded {
                path: PathBuf::from(name),
                origin,
                version,
            },
            open: sym!(b"openslide_open"),
            close: sym!(b"openslide_close"),
            get_error: sym!(b"openslide_get_error"),
            level_count: sym!(b"openslide_get_level_count"),
            level_dimensions: sym!(b"openslide_get_level_dimensions"),
            level_downsample: sym!(b"openslide_get_level_downsample"),
            read_region: sym!(b"openslide_read_region"),
            property: sym!(b"openslide_get_property_value"),
            detect_vendor: sym!(b"openslide_detect_vendor"),
            _lib: lib,
        })
    }
}

/// Which OpenSlide is loaded (loading it if it has not been), or why none could be.
pub fn loaded() -> Result<Loaded, String> {
    library().map(|l| l.loaded.clone())
}

/// Whether OpenSlide's library could be loaded (the reason when not).
pub fn available() -> Result<(), String> {
    library().map(|_| ())
}

/// The vendor OpenSlide recognises `path` as (`aperio`, `hamamatsu`, `mirax`, `generic-tiff`, …),
/// or `None` when it does not, or OpenSlide is not installed.
pub fn vendor(path: &Path) -> Option<String> {
    let lib = library().ok()?;
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string; the result is a static string or null.
    let v = unsafe { (lib.detect_vendor)(c.as_ptr()) };
    (!v.is_null()).then(|| unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned())
}

/// One reduced-resolution level: its size and slide pixels per level pixel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub width: usize,
    pub height: usize,
    pub downsample: f64,
}

/// An open slide. OpenSlide handles are safe to use from several threads.
pub struct OpenSlide {
    lib: &'static Library,
    handle: *mut c_void,
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
    /// Level 0 first.
    pub levels: Vec<Level>,
    decoded: AtomicU64,
}

// SAFETY: OpenSlide documents its handles as thread-safe; ftu uses one from one thread at a time.
unsafe impl Send for OpenSlide {}
unsafe impl Sync for OpenSlide {}

impl OpenSlide {
    pub fn open(path: &Path) -> Result<OpenSlide, SlideError> {
        let lib = library().map_err(|e| SlideErrorKind::OpenSlide(e).at(path))?;
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| SlideErrorKind::Unsupported("a path with a NUL byte".into()).at(path))?;
        // SAFETY: a valid C string; null means "not a format OpenSlide knows".
        let handle = unsafe { (lib.open)(c.as_ptr()) };
        if handle.is_null() {
            return Err(SlideErrorKind::OpenSlide("not a format OpenSlide reads either".into()).at(path));
        }
        let mut slide = OpenSlide {
            lib,
            handle,
            path: path.to_path_buf(),
            width: 0,
            height: 0,
            levels: Vec::new(),
            decoded: AtomicU64::new(0),
        };
        slide.check()?;
        // SAFETY: the handle is open and error-free.
        let count = unsafe { (lib.level_count)(handle) };
        for level in 0..count.max(0) {
            let (mut w, mut h) = (0i64, 0i64);
            unsafe { (lib.level_dimensions)(handle, level, &mut w, &mut h) };
            let downsample = unsafe { (lib.level_downsample)(handle, level) };
            slide.levels.push(Level {
                width: w.max(0) as usize,
                height: h.max(0) as usize,
                downsample,
            });
        }
        slide.check()?;
        let Some(first) = slide.levels.first().copied() else {
            return Err(SlideErrorKind::Corrupt("OpenSlide found no levels".into()).at(path));
        };
        slide.width = first.width;
        slide.height = first.height;
        Ok(slide)
    }

    /// OpenSlide's sticky error, if the handle has one.
    fn check(&self) -> Result<(), SlideError> {
        // SAFETY: the handle is open; the message is owned by it.
        let e = unsafe { (self.lib.get_error)(self.handle) };
        if e.is_null() {
            return Ok(());
        }
        let message = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
        Err(SlideErrorKind::OpenSlide(message).at(&self.path))
    }

    /// A property (`openslide.mpp-x`, `openslide.objective-power`, `aperio.MPP`, …).
    pub fn property(&self, name: &str) -> Option<String> {
        let c = CString::new(name).ok()?;
        // SAFETY: valid handle and C string; the value is owned by the handle.
        let v = unsafe { (self.lib.property)(self.handle, c.as_ptr()) };
        (!v.is_null()).then(|| unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned())
    }

    /// The `w × h` region of level `level` whose top-left is `(x, y)` in level-0 pixels, as RGB
    /// (OpenSlide's premultiplied ARGB; transparent pixels, outside the scanned area, white).
    pub fn read_level(&self, level: usize, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        let mut argb = vec![0u32; w * h];
        self.decoded.fetch_add((w * h) as u64, Ordering::Relaxed);
        if w > 0 && h > 0 {
            // SAFETY: the buffer holds w·h pixels as OpenSlide requires.
            unsafe {
                (self.lib.read_region)(
                    self.handle,
                    argb.as_mut_ptr(),
                    x as i64,
                    y as i64,
                    level as i32,
                    w as i64,
                    h as i64,
                )
            };
            self.check()?;
        }
        let mut out = RgbImage::new(w, h);
        for (px, &v) in out.data.chunks_exact_mut(3).zip(&argb) {
            let a = v >> 24;
            let [r, g, b] = [(v >> 16) & 255, (v >> 8) & 255, v & 255];
            // Un-premultiply over white: c/a·a + 255·(1 − a) = c + 255 − a.
            for (o, c) in px.iter_mut().zip([r, g, b]) {
                *o = (c + 255 - a).min(255) as u8;
            }
        }
        Ok(out)
    }

    /// Pixels read so far, over every level.
    pub fn decoded_pixels(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// The level-0 region at `(x, y)`.
    pub fn region(&self, x: usize, y: usize, w: usize, h: usize) -> Result<RgbImage, SlideError> {
        self.read_level(0, x, y, w, h)
    }

    /// µm per pixel (`openslide.mpp-x`) and the objective power, when the file states them.
    pub fn pixel_size(&self) -> Option<f64> {
        self.property("openslide.mpp-x").and_then(|v| v.trim().parse().ok())
    }

    pub fn objective_power(&self) -> Option<f64> {
        self.property("openslide.objective-power")
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for OpenSlide {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once.
        unsafe { (self.lib.close)(self.handle) };
    }
}
