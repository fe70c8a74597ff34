//! ftu's own loops compiled for the widest instruction set the CPU has, chosen at run time:
//! AVX-512 (x86-64-v4), AVX2 with FMA (x86-64-v3), or the x86-64 baseline (SSE2). The binaries
//! are built for the baseline, so without this every loop of ftu's ops runs four floats at a
//! time even where the CPU does sixteen.
//!
//! A loop opts in by running inside [`widest`] with an `#[inline(always)]` closure: the closure is
//! inlined into `pulp`'s wrapper for each level (a function with those target features), where
//! LLVM vectorises it for that level. `FTU_SIMD=avx2` or `FTU_SIMD=baseline` caps the level (to
//! compare them, or on a CPU whose AVX-512 clocks down); `avx512` is the default where the CPU
//! has it. The math helpers here ([`exp`], [`erfc_scaled`]) are branch-free so that they vectorise.

use std::sync::OnceLock;

use pulp::Arch;

/// An instruction-set level, from the narrowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// x86-64's SSE2, or any other architecture's baseline.
    Baseline,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512 (F, BW, CD, DQ, VL).
    Avx512,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The `pulp` dispatcher for this level, if the CPU has it.
    fn arch(self) -> Option<Arch> {
        match self {
            SimdLevel::Baseline => Some(Arch::Scalar),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => pulp::x86::V3::try_new().map(Arch::V3),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => pulp::x86::V4::try_new().map(Arch::V4),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }

    /// Every level this CPU runs, narrowest first (for tests that compare them).
    pub fn available() -> Vec<SimdLevel> {
        [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|l| l.arch().is_some())
            .collect()
    }
}

/// The level ftu's loops run at: the widest the CPU has, capped by `FTU_SIMD`. An unknown value
/// of `FTU_SIMD` is reported once on stderr and ignored.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let widest = SimdLevel::available().into_iter().max().unwrap_or(SimdLevel::Baseline);
        let cap = match std::env::var("FTU_SIMD").as_deref() {
            Err(_) | Ok("") => widest,
            Ok("avx512") => SimdLevel::Avx512,
            Ok("avx2") => SimdLevel::Avx2,
            Ok("baseline") => SimdLevel::Baseline,
            Ok(other) => {
                eprintln!(
                    "ftu: FTU_SIMD={other} is not one of avx512, avx2, baseline; using {}",
                    widest.name()
                );
                widest
            }
        };
        widest.min(cap)
    })
}

/// Runs `f` compiled for [`simd_level`]. `f` should be an `#[inline(always)]` closure whose loops
/// call only inlined code; a call it makes to a function that is not inlined runs at the
/// baseline.
#[inline(always)]
pub(crate) fn widest<R>(f: impl FnOnce() -> R) -> R {
    at(simd_level(), f)
}

/// Runs `f` compiled for `level` (the baseline where the CPU lacks it).
#[inline(always)]
pub(crate) fn at<R>(level: SimdLevel, f: impl FnOnce() -> R) -> R {
    level.arch().unwrap_or(Arch::Scalar).dispatch(f)
}

/// f32 lanes of a sum kept in vector registers: one AVX-512 register (two AVX2 ones). A plain f32
/// sum is one sequential chain, which LLVM may not reorder into vector lanes.
pub(crate) const LANES: usize = 16;

/// 1.5·2²³: a float of this size has no fractional bits, so adding it rounds to an integer, which
/// then sits in the low bits of the sum's representation.
const ROUNDER: f32 = 12_582_912.0;

/// eˣ for x in [−87, 88] (clamped there), within 2 ulp: Cephes' `expf`, a degree-5 polynomial
/// after reducing by ln 2, branch-free. The integer n = round(x·log₂e) is taken with [`ROUNDER`]
/// rather than `floor` and `as i32`, which LLVM does not vectorise (a saturating conversion).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = k - ROUNDER;
    // ln 2 in two parts, so that n·ln 2 is subtracted exactly.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // k's low bits hold n (two's complement); shifted into the exponent field with the bias they
    // are 2ⁿ, and the shift drops ROUNDER's own bits.
    e * f32::from_bits(k.to_bits().wrapping_add(127) << 23)
}

/// erfc(|z|) within 1.2·10⁻⁷ relative before f32 rounding (4·10⁻⁷ + 2·10⁻⁷·z² after it), deep
/// into the tail: Numerical Recipes' `erfcc`, t·exp(−z² + a degree-9 polynomial in t) with
/// t = 1/(1 + |z|/2).
#[inline(always)]
pub(crate) fn erfc(z: f32) -> f32 {
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.5 * a);
    let mut p = 0.170_872_77f32;
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
    ] {
        p = p * t + c;
    }
    t * exp(-a * a - 1.265_512_2 + t * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// exp and erfc at every level against f64 over their whole useful range: exp within 2·10⁻⁷
    /// relative, erfc for |z| ≤ 6 within 4·10⁻⁷ + 2·10⁻⁷·z² relative (f32 rounds z² in the
    /// exponent: 4.5·10⁻⁶ at z = 6, where erfc is 2·10⁻¹⁷).
    #[test]
    fn exp_and_erfc_match_f64_at_every_level() {
        let xs: Vec<f32> = (0..200_001).map(|i| -87.0 + 175.0 * i as f32 / 200_000.0).collect();
        let zs: Vec<f32> = (0..100_001).map(|i| -6.0 + 12.0 * i as f32 / 100_000.0).collect();
        for level in SimdLevel::available() {
            let (mut e, mut c) = (vec![0f32; xs.len()], vec![0f32; zs.len()]);
            at(
                level,
                #[inline(always)]
                || {
                    for (e, &x) in e.iter_mut().zip(&xs) {
                        *e = exp(x);
                    }
                    for (c, &z) in c.iter_mut().zip(&zs) {
                        *c = erfc(z);
                    }
                },
            );
            for (&x, &e) in xs.iter().zip(&e) {
                let want = (x as f64).exp();
                assert!(
                    ((e as f64 - want) / want).abs() < 2e-7,
                    "{}: exp({x}) = {e}, not {want}",
                    level.name()
                );
            }
            for (&z, &c) in zs.iter().zip(&c) {
                let want = erfc_f64(z.abs() as f64);
                assert!(
                    ((c as f64 - want) / want).abs() < 4e-7 + 2e-7 * (z * z) as f64,
                    "{}: erfc(|{z}|) = {c}, not {want}",
                    level.name()
                );
            }
        }
    }

    /// erfc in f64 by its continued fraction (z > 2) or its Taylor series, to 1e-14.
    fn erfc_f64(z: f64) -> f64 {
        if z > 2.0 {
            let mut f = 0.0;
            for k in (1..200).rev() {
                f = k as f64 / 2.0 / (z + f);
            }
            (-z * z).exp() / (z + f) / std::f64::consts::PI.sqrt()
        } else {
            let (mut term, mut sum) = (z, z);
            for n in 1..100 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            1.0 - sum * 2.0 / std::f64::consts::PI.sqrt()
        }
    }

    #[test]
    fn the_level_is_one_the_cpu_has() {
        assert!(SimdLevel::available().contains(&simd_level()));
    }
}
