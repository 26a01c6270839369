//! Deterministic pseudo-random values (xorshift64), reproducible from a seed, no RNG
//! dependency: synthetic weights, and the codecs' seeded starts (low-rank subspace
//! iteration). A leaf module: it depends on nothing in the crate.

/// `n` weights with standard deviation about `scale · 0.58`, from `seed`.
pub fn weights(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            let mut acc = 0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            acc * scale
        })
        .collect()
}

/// Deterministic pseudo-random values (xorshift + Box–Muller), roughly N(0, scale²).
pub fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next().max(1e-7), next());
            scale * (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
        })
        .collect()
}
