//! The allocation audit: a global allocator that counts live bytes and, while a budget is set,
//! aborts the process (with a backtrace) at the allocation that would pass it, before the memory
//! is taken. Shared by the fuzz targets (`fuzz/src/lib.rs`) and the regression test that replays
//! what they found (`formats/tests/fuzz_regressions.rs`), which include this file by path; each
//! declares `Audit` its `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts live bytes and refuses to pass the current budget.
pub struct Audit;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static BASE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed).saturating_add(bytes);
    PEAK.fetch_max(live, Relaxed);
    if live > LIMIT.load(Relaxed) {
        let budget = LIMIT.swap(usize::MAX, Relaxed) - BASE.load(Relaxed);
        let base = BASE.load(Relaxed);
        eprintln!(
            "allocation audit: {} bytes live after asking for {bytes}, over this input's budget of {budget}",
            live - base
        );
        // A panic hook may hold the backtrace lock (and be what allocated): no second one then.
        if !std::thread::panicking() {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for Audit {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        let out = System.realloc(ptr, layout, new_size);
        if out.is_null() && new_size > layout.size() {
            LIVE.fetch_sub(new_size - layout.size(), Relaxed);
        }
        out
    }
}

/// The pixels a fuzzed slide may have: small (256²), so each execution is fast and the budget
/// tight. Larger claimed sizes still go through every header and chunk check before the limit
/// refuses them. (At 2^20 the slide and mask targets' corpora grew to megapixel images and ran
/// at about 1 500 executions a second.)
pub const LIMITS: ftu_formats::SlideLimits = ftu_formats::SlideLimits { max_pixels: 1 << 16 };

/// What one input may allocate: a small multiple of its size plus what `pixels` pixels need
/// (16 bytes each: a chunk of 16-bit RGBA while the RGB8 image it goes into is alive), plus
/// 8 MiB for fixed-size state (decoder tables, rayon's pool).
pub fn budget(input_len: usize, pixels: u64) -> usize {
    input_len
        .saturating_mul(64)
        .saturating_add((pixels as usize).saturating_mul(16))
        .saturating_add(8 << 20)
}

/// Runs `f` with `budget` bytes over what is live when it starts; returns its result and the
/// most it had live at once.
pub fn within<T>(budget: usize, f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    BASE.store(base, Relaxed);
    PEAK.store(base, Relaxed);
    LIMIT.store(base.saturating_add(budget), Relaxed);
    let out = f();
    LIMIT.store(usize::MAX, Relaxed);
    (out, PEAK.load(Relaxed) - base)
}
