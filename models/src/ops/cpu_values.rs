//! The f32 values behind a contiguous CPU tensor, as ftu's custom ops read them; the error names
//! the op and the argument.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Storage};

/// The values of `s` under layout `l` (the storage a custom op's `cpu_fwd` receives).
pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: the {what} must be f32, not {:?}", s.dtype())
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: the {what} must be contiguous")
    };
    Ok(&v[start..end])
}

/// [`f32s`] of any device's storage (from `Tensor::storage_and_layout`, as a backward pass has it).
pub(crate) fn storage_f32s<'a>(s: &'a Storage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [f32]> {
    let Storage::Cpu(s) = s else {
        candle_core::bail!("{op}: the {what} must be on the CPU")
    };
    f32s(s, l, op, what)
}
