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

/// Rows per parallel work item of the grouped encoders (plain and GPTQ) and decoder.
pub(crate) const ROWS_PER_TASK: usize = 16;

/// Geometry and mode of one quantization stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Bits per code: 2, 3 or 4.
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

impl StageData {
    /// The arrays of consecutive row blocks, joined in order.
    pub fn concat(parts: Vec<StageData>) -> StageData {
        let mut out = StageData::default();
        for p in parts {
            out.scales.extend(p.scales);
            out.offsets.extend(p.offsets);
            out.codes.extend(p.codes);
        }
        out
    }
}

impl Stage {
    /// Largest code.
    pub fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
    /// Bytes holding `n` packed codes (a group's codes start on a byte boundary).
    pub fn code_bytes(&self, n: usize) -> usize {
        (n * self.bits as usize).div_ceil(8)
    }
    /// Groups in one row of `cols`.
    pub fn groups_per_row(&self, cols: usize) -> usize {
        cols.div_ceil(self.group)
    }
    /// Packed bytes for one row of `cols`.
    pub fn code_bytes_per_row(&self, cols: usize) -> usize {
        let full = cols / self.group;
        let tail = cols % self.group;
        full * self.code_bytes(self.group) + self.code_bytes(tail)
    }
    /// Total encoded bytes for a `[rows, cols]` matrix (scales, offsets, codes).
    pub fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        let groups = rows * self.groups_per_row(cols);
        let per_group = if self.symmetric { 2 } else { 4 };
        groups * per_group + rows * self.code_bytes_per_row(cols)
    }

    /// Fits one group: returns (scale, offset) already rounded to fp16, and writes codes.
    /// `h` holds per-weight importance (a zero excludes the weight from the fit).
    pub(super) fn fit(&self, w: &[f32], h: Option<&[f32]>, q: &mut [f32]) -> (f16, f16) {
        let qmax = self.qmax();
        let Bounds { lo, hi, s0, t0 } = match h {
            None => bounds::<false>(w, w),
            Some(h) => bounds::<true>(w, h),
        };
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
        // The parameters as decode will see them: fp16, symmetric offset implied.
        let quantized = |s: f32, m: f32| -> (f16, f16, f32, f32) {
            let sf = f16::from_f32(s);
            if self.symmetric {
                (sf, sf, sf.to_f32(), -half_levels * sf.to_f32())
            } else {
                let mf = f16::from_f32(m);
                (sf, mf, sf.to_f32(), mf.to_f32())
            }
        };
        let (sf, mf, _, _) = quantized(s, m);
        if !sf.is_finite() || !mf.is_finite() {
            // The range does not fit fp16; the caller turns this into an error.
            q.fill(0.0);
            return (sf, mf);
        }
        let mut best = (sf, mf, f32::INFINITY);
        let mut codes_are_best = false;
        for it in 0..=self.refine_iters {
            let (sf, mf, s16, m16) = quantized(s, m);
            let [err, s1, s2, t1] = match h {
                None => pass::<false>(w, w, s16, m16, qmax, q),
                Some(h) => pass::<true>(w, h, s16, m16, qmax, q),
            };
            if err < best.2 {
                best = (sf, mf, err);
                codes_are_best = true;
            } else {
                codes_are_best = false;
                if it > 0 {
                    break;
                }
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
            // Converged: the new parameters round to the ones just evaluated, so another
            // pass would reproduce the same codes and error.
            let (nsf, nmf, _, _) = quantized(s, m);
            if nsf == sf && nmf == mf {
                break;
            }
        }
        if !codes_are_best {
            // The last pass tried other parameters: recompute the codes for the best ones.
            let (s16, m16) = if self.symmetric {
                (best.0.to_f32(), -half_levels * best.0.to_f32())
            } else {
                (best.0.to_f32(), best.1.to_f32())
            };
            pass::<false>(w, w, s16, m16, qmax, q);
        }
        (best.0, best.1)
    }

    /// Encodes rows `[row0, row0 + n)` of a row-major matrix with `cols` columns.
    /// `h`, when given, is the importance of each weight (same layout as `w`).
    pub fn encode_rows(&self, w: &[f32], h: Option<&[f32]>, cols: usize) -> StageData {
        let rows = w.len().checked_div(cols).unwrap_or(0);
        let gpr = self.groups_per_row(cols);
        let mut out = StageData {
            scales: Vec::with_capacity(rows * gpr),
            offsets: Vec::with_capacity(if self.symmetric { 0 } else { rows * gpr }),
            codes: Vec::with_capacity(rows * self.code_bytes_per_row(cols)),
        };
        let mut q = vec![0f32; self.group];
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
                pack(qg, self.bits, &mut out.codes);
            }
        }
        out
    }

    /// The groups' fp16 scales and offsets as f32, converted in one go (vectorised where
    /// the CPU has F16C); symmetric stages get their implied offsets `−2^(b−1)·s`.
    fn params(&self, scales: &[u8], offsets: &[u8]) -> (Vec<f32>, Vec<f32>) {
        let half = (1u32 << (self.bits - 1)) as f32;
        let mut sc = Vec::new();
        f16s_to_f32(scales, &mut sc);
        let mut of = Vec::new();
        if self.symmetric {
            of.extend(sc.iter().map(|s| -half * s));
        } else {
            f16s_to_f32(offsets, &mut of);
        }
        (sc, of)
    }

    /// Codes of rows of `w` on given parameters, round-to-nearest on a grid fixed in
    /// advance (a fine-tune quantized on its base's grid, `delta_grid`): `params` holds the
    /// stage's fp16 scale bytes then (when asymmetric) its offset bytes. With `refit` > 0, a group whose own fit
    /// ([`Stage::fit`]) has less than `refit` times the error of the kept grid gets its
    /// own parameters written into `params` and its own codes ("scales that moved").
    pub fn codes_on_grid_refit(
        &self,
        params: &mut [u8],
        w: &[f32],
        cols: usize,
        refit: f32,
    ) -> Vec<u8> {
        let rows = w.len().checked_div(cols).unwrap_or(0);
        let gpr = self.groups_per_row(cols);
        let groups = rows * gpr;
        let (scales, offsets) = params.split_at_mut(2 * groups);
        let (sc, of) = self.params(scales, offsets);
        let mut codes = Vec::with_capacity(rows * self.code_bytes_per_row(cols));
        let mut q = vec![0f32; self.group];
        let mut own = vec![0f32; self.group];
        for r in 0..rows {
            for g in 0..gpr {
                let a = r * cols + g * self.group;
                let b = (a + self.group).min((r + 1) * cols);
                let wg = &w[a..b];
                let qg = &mut q[..b - a];
                let k = r * gpr + g;
                let [err, ..] = pass::<false>(wg, wg, sc[k], of[k], self.qmax(), qg);
                if refit > 0.0 && err > 0.0 {
                    let og = &mut own[..b - a];
                    let (s16, m16) = self.fit(wg, None, og);
                    let m = if self.symmetric {
                        -((1u32 << (self.bits - 1)) as f32) * s16.to_f32()
                    } else {
                        m16.to_f32()
                    };
                    let [own_err, ..] = pass::<false>(wg, wg, s16.to_f32(), m, self.qmax(), og);
                    if s16.is_finite() && m16.is_finite() && own_err < refit * err {
                        scales[2 * k..2 * k + 2].copy_from_slice(&s16.to_le_bytes());
                        if !self.symmetric {
                            offsets[2 * k..2 * k + 2].copy_from_slice(&m16.to_le_bytes());
                        }
                        qg.copy_from_slice(og);
                    }
                }
                pack(qg, self.bits, &mut codes);
            }
        }
        codes
    }

    /// Decodes `rows` rows from the stage arrays into `out` (`rows * cols` values).
    /// With `accumulate`, adds to `out` instead of overwriting (residual stages).
    ///
    /// Callers have checked the array lengths against [`Stage::encoded_len`].
    pub fn decode_rows(
        &self,
        scales: &[u8],
        offsets: &[u8],
        codes: &[u8],
        cols: usize,
        out: &mut [f32],
        accumulate: bool,
    ) {
        let gpr = self.groups_per_row(cols);
        let (sc, of) = self.params(scales, offsets);
        match (self.bits, accumulate) {
            (4, false) => self.decode_groups(&sc, &of, codes, cols, out, decode4::<false>),
            (4, true) => self.decode_groups(&sc, &of, codes, cols, out, decode4::<true>),
            (3, false) => self.decode_groups(&sc, &of, codes, cols, out, decode3::<false>),
            (3, true) => self.decode_groups(&sc, &of, codes, cols, out, decode3::<true>),
            (_, false) => self.decode_groups(&sc, &of, codes, cols, out, decode2::<false>),
            (_, true) => self.decode_groups(&sc, &of, codes, cols, out, decode2::<true>),
        }
        debug_assert_eq!(sc.len(), out.len() / cols.max(1) * gpr);
    }

    #[inline(always)]
    fn decode_groups(
        &self,
        scales: &[f32],
        offsets: &[f32],
        codes: &[u8],
        cols: usize,
        out: &mut [f32],
        kernel: impl Fn(&[u8], f32, f32, &mut [f32]),
    ) {
        let mut code_pos = 0;
        let mut params = scales.iter().zip(offsets);
        for row in out.chunks_exact_mut(cols.max(1)) {
            for (grp, (&s, &m)) in row.chunks_mut(self.group).zip(&mut params) {
                let nb = self.code_bytes(grp.len());
                kernel(&codes[code_pos..code_pos + nb], s, m, grp);
                code_pos += nb;
            }
        }
    }
}

/// Little-endian fp16 bytes to f32.
pub(super) fn f16s_to_f32(bytes: &[u8], out: &mut Vec<f32>) {
    use half::slice::HalfFloatSliceExt;
    out.clear();
    out.resize(bytes.len() / 2, 0.0);
    match bytemuck::try_cast_slice::<u8, f16>(bytes) {
        Ok(h) if cfg!(target_endian = "little") => h.convert_to_f32_slice(out),
        _ => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
    }
}

/// Lanes of the accumulators in [`pass`]: f32 sums are not reassociated by the compiler,
/// so independent lanes are what lets the loop vectorise.
const LANES: usize = 8;

/// What one scan of a group gives before fitting: the range of the weights that count,
/// and the sums that do not depend on the codes (Σh, Σh·w).
struct Bounds {
    lo: f32,
    hi: f32,
    s0: f32,
    t0: f32,
}

#[inline(always)]
fn bounds<const WEIGHTED: bool>(w: &[f32], h: &[f32]) -> Bounds {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut s0 = [0f32; LANES];
    let mut t0 = [0f32; LANES];
    let mut step = |x: f32, hw: f32, l: usize| {
        if !WEIGHTED || hw > 0.0 {
            lo[l] = if x < lo[l] { x } else { lo[l] };
            hi[l] = if x > hi[l] { x } else { hi[l] };
        }
        s0[l] += hw;
        t0[l] += hw * x;
    };
    let n = w.len() / LANES * LANES;
    for (wc, hc) in w[..n].chunks_exact(LANES).zip(h[..n].chunks_exact(LANES)) {
        for l in 0..LANES {
            step(wc[l], if WEIGHTED { hc[l] } else { 1.0 }, l);
        }
    }
    for i in n..w.len() {
        step(w[i], if WEIGHTED { h[i] } else { 1.0 }, 0);
    }
    Bounds {
        lo: lo.iter().copied().fold(f32::INFINITY, f32::min),
        hi: hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        s0: s0.iter().sum(),
        t0: t0.iter().sum(),
    }
}

/// One pass over a group for parameters (s, m): writes the codes and returns the weighted
/// squared error and the code-dependent least-squares sums `[err, Σh·c, Σh·c², Σh·c·w]`.
/// With `WEIGHTED = false`, `h` is ignored (every weight counts 1).
#[inline(always)]
fn pass<const WEIGHTED: bool>(
    w: &[f32],
    h: &[f32],
    s: f32,
    m: f32,
    qmax: f32,
    q: &mut [f32],
) -> [f32; 4] {
    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
    let mut acc = [[0f32; LANES]; 4];
    let n = w.len() / LANES * LANES;
    let step = |x: f32, hw: f32, c_out: &mut f32, acc: &mut [[f32; LANES]; 4], l: usize| {
        let c = ((x - m) * inv).max(0.0).min(qmax);
        let c = (c + ROUND_MAGIC) - ROUND_MAGIC;
        *c_out = c;
        let d = x - (c * s + m);
        let hc = hw * c;
        acc[0][l] += hw * d * d;
        acc[1][l] += hc;
        acc[2][l] += hc * c;
        acc[3][l] += hc * x;
    };
    for ((wc, qc), hc) in w[..n]
        .chunks_exact(LANES)
        .zip(q[..n].chunks_exact_mut(LANES))
        .zip(h[..n].chunks_exact(LANES))
    {
        for l in 0..LANES {
            step(
                wc[l],
                if WEIGHTED { hc[l] } else { 1.0 },
                &mut qc[l],
                &mut acc,
                l,
            );
        }
    }
    for i in n..w.len() {
        step(
            w[i],
            if WEIGHTED { h[i] } else { 1.0 },
            &mut q[i],
            &mut acc,
            0,
        );
    }
    acc.map(|a| a.iter().sum())
}

/// Appends codes (small non-negative integers held in f32) packed `bits` each, low bits
/// first (a little-endian bit stream; 2- and 4-bit codes never straddle a byte).
pub(super) fn pack(q: &[f32], bits: u32, out: &mut Vec<u8>) {
    if bits == 3 {
        pack_bits(q.iter().map(|&v| v as u32), 3, out);
    } else if bits == 4 {
        let pairs = q.chunks_exact(2);
        let tail = pairs.remainder();
        out.extend(pairs.map(|p| p[0] as u8 | ((p[1] as u8) << 4)));
        if let [last] = tail {
            out.push(*last as u8);
        }
    } else {
        let per_byte = (8 / bits) as usize;
        out.extend(q.chunks(per_byte).map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (k, &v)| b | ((v as u8) << (k as u32 * bits)))
        }));
    }
}

/// Appends `codes` of `bits` bits each (≤ 24) as one little-endian bit stream, low bits
/// first, the last byte zero-padded.
pub(super) fn pack_bits(codes: impl Iterator<Item = u32>, bits: u32, out: &mut Vec<u8>) {
    let (mut acc, mut n) = (0u64, 0u32);
    for v in codes {
        acc |= (v as u64) << n;
        n += bits;
        while n >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    }
    if n > 0 {
        out.push(acc as u8);
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
fn decode3<const ACC: bool>(bytes: &[u8], s: f32, m: f32, out: &mut [f32]) {
    // Eight codes per three bytes; the tail reads what is left of the stream.
    let mut blocks = out.chunks_exact_mut(8);
    let mut at = 0;
    for o in &mut blocks {
        let v = bytes[at] as u32 | (bytes[at + 1] as u32) << 8 | (bytes[at + 2] as u32) << 16;
        for (k, x) in o.iter_mut().enumerate() {
            put::<ACC>(x, ((v >> (3 * k)) & 7) as f32 * s + m);
        }
        at += 3;
    }
    let rest = blocks.into_remainder();
    let mut v = 0u32;
    for (k, &b) in bytes[at..].iter().enumerate() {
        v |= (b as u32) << (8 * k);
    }
    for (k, x) in rest.iter_mut().enumerate() {
        put::<ACC>(x, ((v >> (3 * k)) & 7) as f32 * s + m);
    }
}

#[inline(always)]
fn decode2<const ACC: bool>(bytes: &[u8], s: f32, m: f32, out: &mut [f32]) {
    let full = out.len() / 4;
    let mut quads = out.chunks_exact_mut(4);
    for (o, &b) in (&mut quads).zip(bytes) {
        put::<ACC>(&mut o[0], (b & 3) as f32 * s + m);
        put::<ACC>(&mut o[1], ((b >> 2) & 3) as f32 * s + m);
        put::<ACC>(&mut o[2], ((b >> 4) & 3) as f32 * s + m);
        put::<ACC>(&mut o[3], (b >> 6) as f32 * s + m);
    }
    let rest = quads.into_remainder();
    if let Some(&b) = bytes.get(full) {
        for (k, v) in rest.iter_mut().enumerate() {
            put::<ACC>(v, ((b >> (2 * k)) & 3) as f32 * s + m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(bits: u32, group: usize, symmetric: bool, refine_iters: u32) -> Stage {
        Stage {
            bits,
            group,
            symmetric,
            refine_iters,
        }
    }

    fn roundtrip(st: &Stage, w: &[f32], cols: usize) -> Vec<f32> {
        let d = st.encode_rows(w, None, cols);
        let sc: Vec<u8> = d
            .scales
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect();
        let of: Vec<u8> = d
            .offsets
            .iter()
            .flat_map(|x| x.to_bits().to_le_bytes())
            .collect();
        assert_eq!(
            sc.len() + of.len() + d.codes.len(),
            st.encoded_len(w.len() / cols, cols)
        );
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
        // The same on an 8-level grid at 3 bits, with groups that end mid-byte.
        let w: Vec<f32> = (0..60).map(|i| (i % 8) as f32 * 0.25 - 1.0).collect();
        assert_eq!(roundtrip(&stage(3, 15, false, 5), &w, 60), w);
    }

    #[test]
    fn refinement_never_worse_than_rtn() {
        let w: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5).powi(3))
            .collect();
        for (bits, sym) in [(4, false), (4, true), (3, false), (3, true), (2, false)] {
            let sse = |it| -> f32 {
                roundtrip(&stage(bits, 64, sym, it), &w, 512)
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum()
            };
            let (rtn, refined) = (sse(0), sse(5));
            assert!(refined <= rtn, "bits {bits} sym {sym}: {refined} > {rtn}");
            assert!(
                refined < rtn * 0.99,
                "refinement should help on skewed data: {refined} vs {rtn}"
            );
        }
    }

    #[test]
    fn ragged_rows_and_odd_groups() {
        let cols = 37; // 2 groups of 16 and a tail of 5, odd lengths included
        let w: Vec<f32> = (0..cols * 3).map(|i| (i as f32).sin()).collect();
        for st in [
            stage(4, 16, false, 5),
            stage(4, 9, true, 5),
            stage(2, 7, false, 5),
            stage(3, 11, false, 5),
            stage(3, 16, true, 0),
        ] {
            let out = roundtrip(&st, &w, cols);
            let step = 2.0 / st.qmax();
            for (a, b) in out.iter().zip(&w) {
                assert!((a - b).abs() <= step * 1.01 + 1e-3, "{st:?}: {a} vs {b}");
            }
        }
    }
}
