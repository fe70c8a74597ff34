//! Per-op wall time and bytes moved, for the training-step benchmark's profile table. Off unless
//! [`set_enabled`]; then ftu's ops and the layers built from candle ops record each call.
//!
//! Candle's own autograd (the gradients of its elementwise ops and the accumulation of every
//! gradient) has no hook: the bench reports it as the backward time no op here accounts for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, OpTime>> = Mutex::new(BTreeMap::new());

/// What one op cost over the calls since the last [`take`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTime {
    pub calls: usize,
    pub seconds: f64,
    /// Bytes read and written by the op's passes over its tensors (f32 values × 4).
    pub bytes: usize,
}

/// Starts or stops recording.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The table so far, by op name, and a fresh one started.
pub fn take() -> BTreeMap<&'static str, OpTime> {
    std::mem::take(&mut *TABLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Runs `f`, recording its time under `name` when profiling; `values` is the number of f32
/// values its passes read and write.
pub(crate) fn scope<R>(name: &'static str, values: usize, f: impl FnOnce() -> R) -> R {
    if !is_enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    let mut table = TABLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = table.entry(name).or_default();
    entry.calls += 1;
    entry.seconds += seconds;
    entry.bytes += values * 4;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recording happens only when enabled, and `take` empties the table. (One test: the table
    /// is global, so two tests of it would see each other's entries.)
    #[test]
    fn records_only_when_enabled() {
        set_enabled(false);
        take();
        assert_eq!(scope("test-op", 10, || 7), 7);
        assert!(!take().contains_key("test-op"));
        set_enabled(true);
        scope("test-op", 10, || ());
        scope("test-op", 5, || ());
        set_enabled(false);
        let table = take();
        let entry = table["test-op"];
        assert_eq!((entry.calls, entry.bytes), (2, 60));
        assert!(!take().contains_key("test-op"));
    }
}
