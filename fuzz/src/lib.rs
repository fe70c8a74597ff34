//! What every fuzz target shares: the allocation audit (`audit.rs`: each execution's Rust
//! allocations are counted against a budget, and one that would pass it aborts before the memory
//! is taken) and the panic policy (a panic in ftu's own code is a crash; one inside a decoder
//! crate is left to unwind to the `catch_unwind` that turns it into the slide's error, as in
//! production).

use std::path::Path;
use std::sync::Once;

mod audit;
pub use audit::{budget, within, Audit, LIMITS};

#[global_allocator]
static GLOBAL: Audit = Audit;

/// Runs `f` under the allocation audit with `budget` bytes, and the panic policy installed.
pub fn audited<T>(budget: usize, f: impl FnOnce() -> T) -> T {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let ours = info
                .location()
                .is_some_and(|l| l.file().contains("formats/src") || l.file().contains("fuzz_targets"));
            if ours {
                eprintln!("panic in ftu's code: {info}");
                std::process::abort();
            }
            if std::env::var_os("FTU_FUZZ_VERBOSE").is_some() {
                eprintln!("panic in a dependency (caught where ftu contains it): {info}");
            }
        }))
    });
    within(budget, f).0
}

/// The name errors give for fuzzed bytes.
pub fn name() -> &'static Path {
    Path::new("fuzz-input")
}

/// A seeded generator for choices a target makes from its input (which regions to read).
pub struct Picks(u64);

impl Picks {
    pub fn new(data: &[u8]) -> Picks {
        Picks(
            data.iter()
                .fold(0xcbf29ce484222325, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3)),
        )
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
