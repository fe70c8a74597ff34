//! A custom op's result computed beforehand by candle's own kernels, on any device: ops that
//! only carry a gradient of their own (`conv/generic.rs`, `batch_norm/generic.rs`) hand it to
//! their forward, which returns a copy and lets go of it, so the graph keeps the op's inputs (as
//! candle's own ops do) and not a second copy of the output.

use std::sync::Mutex;

use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};

pub(crate) struct Precomputed {
    op: &'static str,
    result: Mutex<Option<Tensor>>,
}

impl Precomputed {
    /// `result` must be a fresh contiguous tensor (a kernel's output).
    pub(crate) fn new(op: &'static str, result: Tensor) -> Precomputed {
        Precomputed {
            op,
            result: Mutex::new(Some(result)),
        }
    }

    /// The result, once.
    fn take(&self) -> candle_core::Result<Tensor> {
        let mut slot = self.result.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward run twice", self.op)))
    }

    /// For `cpu_fwd`.
    pub(crate) fn cpu(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => copy_of(s, layout, self.op),
            _ => candle_core::bail!("{}: the result is not on the CPU", self.op),
        }
    }

    /// For `cuda_fwd`.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => copy_of(s, layout, self.op),
            _ => candle_core::bail!("{}: the result is not on the GPU", self.op),
        }
    }
}

/// A copy of a fresh contiguous tensor's storage (`try_clone` copies the whole buffer).
fn copy_of<S: candle_core::backend::BackendStorage>(s: &S, l: &Layout, op: &str) -> candle_core::Result<(S, Shape)> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("{op}: the precomputed result must be a fresh contiguous tensor");
    }
    Ok((s.try_clone(l)?, l.shape().clone()))
}
