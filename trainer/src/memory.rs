//! glibc's malloc set for training: freed blocks of up to 32 MiB stay in the process for the next
//! step instead of going back to the kernel and faulting in again.
//!
//! A training step allocates and frees the same few hundred tensors, many of them megabytes. By
//! default glibc serves a block above its mmap threshold (128 KiB at first, raised up to 32 MiB
//! as such blocks are freed) with a fresh `mmap`, and gives the top of a heap back to the kernel
//! once more than twice that is free, so each step faults in and zero-fills again pages it
//! released a moment before: `perf stat -e page-faults` counts 485 000 faults for one run of the
//! bench (unet-efficientnet_b0, batch 4, 256², 5 timed steps), 204 000 with this module's
//! settings. With them the bench's step was 2–14 % faster for each of the five default
//! architectures, interleaved runs, peak resident memory within 5 % (AMD EPYC, `BENCHMARKS.md`).
//! What the process holds at its peak it keeps until it exits, which for a training process is
//! the memory its next step needs anyway.

/// The mmap threshold set: glibc's largest (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit targets).
/// Blocks above it (few in a step) are still mapped and unmapped on their own.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malloc {
    /// The threshold and trimming were set as this module describes.
    Kept,
    /// `GLIBC_TUNABLES` names a `glibc.malloc.` setting: the user's choice stands.
    UserTunables,
    /// The C library is not glibc (or refused the settings): left as it is.
    Unchanged,
}

/// Sets glibc's malloc for training (see the module's text), unless `GLIBC_TUNABLES` already
/// sets one of its parameters. Call it first in `main`, before threads start allocating.
pub fn keep_freed_memory() -> Malloc {
    let tunables = std::env::var_os("GLIBC_TUNABLES");
    if tunables.is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.")) {
        return Malloc::UserTunables;
    }
    set_mallopt()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_mallopt() -> Malloc {
    let threshold = libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes malloc's parameters, under malloc's own lock; both values
    // are in the ranges mallopt(3) documents (-1 turns trimming off).
    let set = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
    };
    if set {
        Malloc::Kept
    } else {
        Malloc::Unchanged
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mallopt() -> Malloc {
    Malloc::Unchanged
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn faults() -> i64 {
        // SAFETY: getrusage writes the struct it is given and nothing else.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD) failed");
        usage.ru_minflt
    }

    /// Faults taken to allocate a block of `bytes`, write every byte of it and free it.
    fn faults_of_a_block(bytes: usize) -> i64 {
        let before = faults();
        let block = vec![1u8; bytes];
        std::hint::black_box(&block);
        drop(block);
        faults() - before
    }

    #[test]
    fn a_freed_block_is_reused_without_faulting_its_pages_in_again() {
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let bytes = 16 << 20; // above glibc's first mmap threshold, below the one set
        let pages = (bytes / 4096) as i64;
        // The counter sees this thread fault in a fresh mapping's pages.
        let before = faults();
        // SAFETY: a private anonymous mapping, written within its length, then unmapped.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED, "mmap of 16 MiB failed");
            // 4 KiB pages even where transparent huge pages are always on.
            libc::madvise(map, bytes, libc::MADV_NOHUGEPAGE);
            std::ptr::write_bytes(map.cast::<u8>(), 1, bytes);
            libc::munmap(map, bytes);
        }
        let fresh = faults() - before;
        assert!(
            fresh >= pages / 2,
            "a fresh 16 MiB mapping faulted in only {fresh} of its {pages} pages"
        );
        assert_eq!(keep_freed_memory(), Malloc::Kept);
        faults_of_a_block(bytes);
        let again = faults_of_a_block(bytes);
        assert!(
            again < pages / 20,
            "a reused 16 MiB block faulted in {again} of its {pages} pages"
        );
    }
}
