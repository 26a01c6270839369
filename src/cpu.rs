//! CPU feature dispatch for the few hot loops that gain from a newer instruction set than
//! the build's baseline (x86-64: SSE2 only, so that one binary runs everywhere).
//!
//! A loop written once as an `#[inline(always)]` function is instantiated twice: as is,
//! and inside a `#[target_feature]` wrapper for x86-64-v3 (AVX2, BMI1/2, LZCNT, FMA, MOVBE:
//! Haswell and Zen onwards); [`x86_64_v3`] says at run time which one may be called. The
//! two compute the same bits (integer code only; FMA is never contracted by rustc).
//!
//! `TENPAK_CPU=baseline` in the environment (read once) or [`force_baseline`] keeps every
//! loop on the baseline instantiation: for comparing the two in one run, and as an escape
//! hatch should a feature be reported that does not work (a misconfigured VM).

use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const BASELINE: u8 = 1;
const V3: u8 = 2;

static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether the x86-64-v3 instantiations may run: the CPU reports every feature of the
/// level and neither `TENPAK_CPU=baseline` nor [`force_baseline`] said otherwise. Cheap
/// (one relaxed atomic load after the first call).
#[inline]
pub fn x86_64_v3() -> bool {
    match LEVEL.load(Ordering::Relaxed) {
        UNKNOWN => {
            let level = detect();
            LEVEL.store(level, Ordering::Relaxed);
            level == V3
        }
        level => level == V3,
    }
}

/// Keeps every dispatched loop on the baseline instantiation (`true`), or lets them use
/// what the CPU has again (`false`; `TENPAK_CPU` is read again).
pub fn force_baseline(baseline: bool) {
    LEVEL.store(if baseline { BASELINE } else { UNKNOWN }, Ordering::Relaxed);
}

/// The level in use, for logs and benchmark records: `"x86-64-v3"` or `"baseline"`.
pub fn level_name() -> &'static str {
    if x86_64_v3() {
        "x86-64-v3"
    } else {
        "baseline"
    }
}

fn detect() -> u8 {
    if std::env::var("TENPAK_CPU").is_ok_and(|v| v.eq_ignore_ascii_case("baseline")) {
        return BASELINE;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("lzcnt")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("movbe")
        {
            return V3;
        }
    }
    BASELINE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_the_baseline_holds_until_released() {
        force_baseline(true);
        assert!(!x86_64_v3());
        assert_eq!(level_name(), "baseline");
        force_baseline(false);
        // Whatever the CPU has: the answer is stable across calls.
        assert_eq!(x86_64_v3(), x86_64_v3());
    }
}
