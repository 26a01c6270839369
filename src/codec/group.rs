//! The grouped uniform quantizer that the INT4 and INT2 stages share.
//!
//! A row of `cols` weights is cut into groups of `group` consecutive weights (the last
//! group of a row may be shorter; groups never span rows). Each group stores an fp16
//! scale `s` and, in asymmetric mode, an fp16 offset `m`; its weights are `bits`-bit
//! codes `q` with `w ≈ q·s + m` (symmetric: `w ≈ (q − 2^(bits−1))·s`, stored as
//! `m = −2^(bits−1)·s` at decode time, so both modes decode with one multiply-add).
//!
//! **Iterative scale refinement**: starting from the min/max (round-to-nearest) fit, each
//! iteration assigns codes for the current (s, m), records the group's weighted squared
//! error, and solves the weighted least-squares problem for (s, m) given those codes; the
//! best (s, m) seen — after rounding to fp16, so the error is the one decode will see —
//! is kept. The error therefore never exceeds the round-to-nearest error.
//!
//! Codes of one group start on a byte boundary (a group of odd length wastes its last
//! half byte, and the accounting counts it), so every group decodes independently.

use half::f16;

/// Magic number that rounds an f32 in [0, 2^22] to the nearest integer by addition
/// (1.5·2^23): vectorises on baseline x86-64, unlike `f32::round`.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Geometry and mode of one quantization stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Bits per code: 2 or 4.
    pub bits: u32,
    /// Weights per group.
    pub group: usize,
    /// Symmetric (no stored offset) or asymmetric.
    pub symmetric: bool,
    /// Refinement iterations (0 = plain round-to-nearest).
    pub refine_iters: u32,
}

/// The encoded arrays of one stage.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StageData {
    /// fp16 scale per group, row-major over (row, group).
    pub scales: Vec<f16>,
    /// fp16 offset per group (empty when symmetric).
    pub offsets: Vec<f16>,
    /// Packed codes, group by group.
    pub codes: Vec<u8>,
}

impl Stage {
    /// Largest code.
    pub fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
    /// Codes per byte.
    pub fn per_byte(&self) -> usize {
        8 / self.bits as usize
    }
    /// Groups in one row of `cols`.
    pub fn groups_per_row(&self, cols: usize) -> usize {
        cols.div_ceil(self.group)
    }
    /// Packed bytes for one row of `cols`.
    pub fn code_bytes_per_row(&self, cols: usize) -> usize {
        let full = cols / self.group;
        let tail = cols % self.group;
        full * self.group.div_ceil(self.per_byte()) + tail.div_ceil(self.per_byte())
    }
    /// Total encoded bytes for a `[rows, cols]` matrix (scales, offsets, codes).
    pub fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        let groups = rows * self.groups_per_row(cols);
        let per_group = if self.symmetric { 2 } else { 4 };
        groups * per_group + rows * self.code_bytes_per_row(cols)
    }

    /// Fits one group: returns (scale, offset) already rounded to fp16, and writes codes.
    /// `h` holds per-weight importance (a zero excludes the weight from the fit).
    fn fit(&self, w: &[f32], h: Option<&[f32]>, q: &mut [f32]) -> (f16, f16) {
        let qmax = self.qmax();
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for (i, &x) in w.iter().enumerate() {
            if h.is_none_or(|h| h[i] > 0.0) {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        if !lo.is_finite() {
            // Every weight is excluded: any parameters will do; decode gives zeros.
            q.fill(0.0);
            return (f16::ZERO, f16::ZERO);
        }
        let half_levels = (1u32 << (self.bits - 1)) as f32;
        let (mut s, mut m) = if self.symmetric {
            // The value of largest magnitude maps to the most negative code (-2^(b-1)), as
            // llama.cpp's Q4_0 does, using the asymmetric range of two's complement.
            let amax = if hi.abs() > lo.abs() { hi } else { lo };
            let s = amax / -half_levels;
            (s, -half_levels * s)
        } else {
            ((hi - lo) / qmax, lo)
        };
        let round = |v: f32| f16::from_f32(v);
        let mut best = (round(s), round(m), f32::INFINITY);
        for it in 0..=self.refine_iters {
            let (sf, mf) = (round(s), if self.symmetric { round(s) } else { round(m) });
            let (s16, m16) = if self.symmetric {
                (sf.to_f32(), -half_levels * sf.to_f32())
            } else {
                (sf.to_f32(), mf.to_f32())
            };
            let inv = if s16 != 0.0 { 1.0 / s16 } else { 0.0 };
            // One pass: codes, error, and the least-squares sums.
            let (mut err, mut s0, mut s1, mut s2, mut t0, mut t1) = (0f32, 0f32, 0f32, 0f32, 0f32, 0f32);
            for i in 0..w.len() {
                let x = w[i];
                let c = ((x - m16) * inv).clamp(0.0, qmax);
                let c = (c + ROUND_MAGIC) - ROUND_MAGIC;
                q[i] = c;
                let d = x - (c * s16 + m16);
                let hw = h.map_or(1.0, |h| h[i]);
                err += hw * d * d;
                s0 += hw;
                s1 += hw * c;
                s2 += hw * c * c;
                t0 += hw * x;
                t1 += hw * c * x;
            }
            if err < best.2 {
                best = (sf, if self.symmetric { sf } else { mf }, err);
            } else if it > 0 {
                break;
            }
            if it == self.refine_iters || err == 0.0 {
                break;
            }
            if self.symmetric {
                // Codes are c - 2^(b-1); w ≈ (c - half)·s  ⇒  s = Σh(c-half)w / Σh(c-half)².
                let num = t1 - half_levels * t0;
                let den = s2 - 2.0 * half_levels * s1 + half_levels * half_levels * s0;
                if den <= 0.0 {
                    break;
                }
                s = num / den;
                m = -half_levels * s;
            } else {
                let det = s0 * s2 - s1 * s1;
                if det <= f32::EPSILON * s0 * s2 {
                    break;
                }
                s = (s0 * t1 - s1 * t0) / det;
                m = (t0 - s * s1) / s0;
            }
        }
        // Recompute codes for the best parameters (the last pass may have used others).
        let (s16, m16) = if self.symmetric {
            (best.0.to_f32(), -half_levels * best.0.to_f32())
        } else {
            (best.0.to_f32(), best.1.to_f32())
        };
        let inv = if s16 != 0.0 { 1.0 / s16 } else { 0.0 };
        for (c, &x) in q.iter_mut().zip(w) {
            *c = ((x - m16) * inv).clamp(0.0, qmax) + ROUND_MAGIC - ROUND_MAGIC;
        }
        (best.0, best.1)
    }

    /// Encodes rows `[row0, row0 + n)` of a row-major matrix with `cols` columns.
    /// `h`, when given, is the importance of each weight (same layout as `w`).
    pub fn encode_rows(&self, w: &[f32], h: Option<&[f32]>, cols: usize) -> StageData {
        let rows = if cols == 0 { 0 } else { w.len() / cols };
        let gpr = self.groups_per_row(cols);
        let mut out = StageData {
            scales: Vec::with_capacity(rows * gpr),
            offsets: Vec::with_capacity(if self.symmetric { 0 } else { rows * gpr }),
            codes: Vec::with_capacity(rows * self.code_bytes_per_row(cols)),
        };
        let mut q = vec![0f32; self.group];
        let pb = self.per_byte();
        for r in 0..rows {
            for g in 0..gpr {
                let a = r * cols + g * self.group;
                let b = (a + self.group).min((r + 1) * cols);
                let qg = &mut q[..b - a];
                let (s, m) = self.fit(&w[a..b], h.map(|h| &h[a..b]), qg);
                out.scales.push(s);
                if !self.symmetric {
                    out.offsets.push(m);
                }
                for chunk in qg.chunks(pb) {
                    let mut byte = 0u8;
                    for (k, &c) in chunk.iter().enumerate() {
                        byte |= (c as u8) << (k as u32 * self.bits);
                    }
                    out.codes.push(byte);
                }
            }
        }
        out
    }

    /// Decodes `rows` rows from the stage arrays into `out` (`rows * cols` values).
    /// With `accumulate`, adds to `out` instead of overwriting (residual stages).
    ///
    /// Callers have checked the array lengths against [`Stage::encoded_len`].
    pub fn decode_rows(&self, scales: &[u8], offsets: &[u8], codes: &[u8], cols: usize, out: &mut [f32], accumulate: bool) {
        let gpr = self.groups_per_row(cols);
        let half = (1u32 << (self.bits - 1)) as f32;
        let per_byte = self.per_byte();
        let mut code_pos = 0;
        let mut gi = 0;
        for row in out.chunks_exact_mut(cols.max(1)) {
            for grp in row.chunks_mut(self.group) {
                let s = f16::from_bits(u16::from_le_bytes([scales[2 * gi], scales[2 * gi + 1]])).to_f32();
                let m = if self.symmetric {
                    -half * s
                } else {
                    f16::from_bits(u16::from_le_bytes([offsets[2 * gi], offsets[2 * gi + 1]])).to_f32()
                };
                let nb = grp.len().div_ceil(per_byte);
                let bytes = &codes[code_pos..code_pos + nb];
                match (self.bits, accumulate) {
                    (4, false) => decode4::<false>(bytes, s, m, grp),
                    (4, true) => decode4::<true>(bytes, s, m, grp),
                    (_, false) => decode2::<false>(bytes, s, m, grp),
                    (_, true) => decode2::<true>(bytes, s, m, grp),
                }
                code_pos += nb;
                gi += 1;
            }
        }
        debug_assert_eq!(gi, out.len() / cols.max(1) * gpr);
    }
}

#[inline(always)]
fn put<const ACC: bool>(o: &mut f32, v: f32) {
    if ACC {
        *o += v
    } else {
        *o = v
    }
}

#[inline(always)]
fn decode4<const ACC: bool>(bytes: &[u8], s: f32, m: f32, out: &mut [f32]) {
    let mut pairs = out.chunks_exact_mut(2);
    for (o, &b) in (&mut pairs).zip(bytes) {
        put::<ACC>(&mut o[0], (b & 0xF) as f32 * s + m);
        put::<ACC>(&mut o[1], (b >> 4) as f32 * s + m);
    }
    if let [last] = pairs.into_remainder() {
        put::<ACC>(last, (bytes[bytes.len() - 1] & 0xF) as f32 * s + m);
    }
}

#[inline(always)]
fn decode2<const ACC: bool>(bytes: &[u8], s: f32, m: f32, out: &mut [f32]) {
    for (o, &b) in out.chunks_mut(4).zip(bytes) {
        for (k, v) in o.iter_mut().enumerate() {
            put::<ACC>(v, ((b >> (2 * k)) & 3) as f32 * s + m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(bits: u32, group: usize, symmetric: bool, refine_iters: u32) -> Stage {
        Stage { bits, group, symmetric, refine_iters }
    }

    fn roundtrip(st: &Stage, w: &[f32], cols: usize) -> Vec<f32> {
        let d = st.encode_rows(w, None, cols);
        let sc: Vec<u8> = d.scales.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
        let of: Vec<u8> = d.offsets.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect();
        assert_eq!(sc.len() + of.len() + d.codes.len(), st.encoded_len(w.len() / cols, cols));
        let mut out = vec![0f32; w.len()];
        st.decode_rows(&sc, &of, &d.codes, cols, &mut out, false);
        out
    }

    #[test]
    fn exact_on_grid_values() {
        // Values already on a 4-bit grid (like SmolLM2's Q4_1 weights) come back exactly.
        let w: Vec<f32> = (0..64).map(|i| (i % 16) as f32 * 0.125 - 1.0).collect();
        for iters in [0, 5] {
            assert_eq!(roundtrip(&stage(4, 16, false, iters), &w, 64), w);
        }
    }

    #[test]
    fn refinement_never_worse_than_rtn() {
        let w: Vec<f32> = (0..4096).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5).powi(3)).collect();
        for (bits, sym) in [(4, false), (4, true), (2, false)] {
            let sse = |it| -> f32 {
                roundtrip(&stage(bits, 64, sym, it), &w, 512)
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum()
            };
            let (rtn, refined) = (sse(0), sse(5));
            assert!(refined <= rtn, "bits {bits} sym {sym}: {refined} > {rtn}");
            assert!(refined < rtn * 0.98, "refinement should help on skewed data: {refined} vs {rtn}");
        }
    }

    #[test]
    fn ragged_rows_and_odd_groups() {
        let cols = 37; // 2 groups of 16 and a tail of 5, odd lengths included
        let w: Vec<f32> = (0..cols * 3).map(|i| (i as f32).sin()).collect();
        for st in [stage(4, 16, false, 5), stage(4, 9, true, 5), stage(2, 7, false, 5)] {
            let out = roundtrip(&st, &w, cols);
            let step = 2.0 / st.qmax();
            for (a, b) in out.iter().zip(&w) {
                assert!((a - b).abs() <= step * 1.01 + 1e-3, "{st:?}: {a} vs {b}");
            }
        }
    }
}
