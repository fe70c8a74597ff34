//! The f32 values behind a contiguous CPU tensor, as ftu's custom ops read them (the error names
//! the op and the argument), and the zeroed buffers they write their outputs into.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Storage};
use rayon::prelude::*;

/// Values per task of [`zeros`].
const ZERO_CHUNK: usize = 1 << 16;

/// `n` zeros for an op's output, written in chunks on the rayon pool. `vec![0.0; n]` is one
/// memset on the calling thread while the pool waits: reusing freed memory, glibc's calloc
/// clears it all, and in segformer-mit_b2's step those memsets were about 4 % of the samples,
/// every one of them on one core.
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    if n < 2 * ZERO_CHUNK {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(ZERO_CHUNK)
        .for_each(|chunk| {
            chunk.iter_mut().for_each(|x| {
                x.write(0.0);
            })
        });
    // SAFETY: the loop above wrote every one of the first `n` values.
    unsafe { v.set_len(n) };
    v
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Below, at and past the size written on the pool, with a last chunk that is not whole: the
    /// length asked for and nothing but zeros, also where the allocator hands back memory that
    /// held other values.
    #[test]
    fn zeros_are_zeros_of_the_length_asked_for() {
        for n in [0, 1, 2 * ZERO_CHUNK - 1, 2 * ZERO_CHUNK, 5 * ZERO_CHUNK + 17] {
            drop(vec![7f32; n]);
            let v = zeros(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0 && x.is_sign_positive()), "{n} values");
        }
    }
}
