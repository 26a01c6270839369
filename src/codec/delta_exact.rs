//! `delta_exact` (id 9): a fine-tuned tensor stored losslessly against its base.
//!
//! Both tensors are taken as their bit patterns in the fine-tune's dtype (bf16, f16 or
//! f32; the base's values rounded to that dtype, which is exact when the base is stored
//! raw in it). Each pattern is mapped to an integer that orders like the float it encodes
//! (sign-magnitude to offset binary), and the fine-tune is stored as the *difference* of
//! those integers from the base's, zig-zag coded. A fine-tune's small updates are then
//! small integers — a change of a few units in the last place, whatever the value's
//! exponent — where XOR against the base flips a run of bits at every carry. The
//! differences are put in the order of the base value's exponent (stable; the decoder
//! derives the same order from the base), cut into byte planes (low bytes, high bytes,
//! ...), and each plane of each block of [`BLOCK`] values is compressed with zstd: the
//! high planes are nearly all zero, the low plane is a narrow distribution per exponent
//! that zstd's per-block Huffman tables code near its entropy. Blocks decode
//! independently (in parallel).
//!
//! Layout after the header (`group2` = dtype: 1 bf16, 2 f16, 3 f32): `block` (u32, values
//! per block), then per block and plane the compressed length (u32), then the zstd frames
//! in the same order.

use rayon::prelude::*;

use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{delta_needs_base, EncodingRow, GpuDecode};
use super::traits::{BaseView, Decoder, DeltaCodec};
use crate::dtype::DType;
use crate::error::Corruption;
use crate::{Error, Result};

/// Codec id of `delta_exact`.
pub const ID: CodecId = CodecId(9);

/// The `delta_exact` row: decoded on the CPU (entropy coding), then uploaded.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "delta_exact",
    decode: delta_needs_base,
    gpu: GpuDecode::CpuThenUpload,
    apply: Some(apply),
    regrid: None,
};

/// Values per independently compressed block (blocks encode and decode in parallel).
pub const BLOCK: usize = 1 << 18;

/// zstd level of [`DeltaExact::new`]'s default (`--delta-level`).
pub const DEFAULT_LEVEL: i32 = 19;

/// The dtype code stored in `group2`.
pub fn dtype_code(d: DType) -> u16 {
    match d {
        DType::BF16 => 1,
        DType::F16 => 2,
        DType::F32 => 3,
    }
}

fn dtype_of(code: u16) -> Option<DType> {
    match code {
        1 => Some(DType::BF16),
        2 => Some(DType::F16),
        3 => Some(DType::F32),
        _ => None,
    }
}

/// The lossless delta codec for tensors of `dtype`.
#[derive(Debug, Clone, Copy)]
pub struct DeltaExact {
    /// The fine-tune's dtype (what is reproduced bit for bit).
    pub dtype: DType,
    /// zstd level (1..=22); decode speed does not depend on it.
    pub level: i32,
}

impl DeltaExact {
    /// At the default level.
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            level: DEFAULT_LEVEL,
        }
    }
}

/// A value's bit pattern in `dtype` (round to nearest even, as the dtype's encoder does).
#[inline(always)]
fn bits_of(dtype: DType, x: f32) -> u32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(x).to_bits() as u32,
        DType::F16 => half::f16::from_f32(x).to_bits() as u32,
        DType::F32 => x.to_bits(),
    }
}

/// The exponent field of a pattern: the context the differences are grouped by. An
/// optimiser moves weights by similar absolute amounts, so the difference in units in the
/// last place depends on the weight's exponent; values of one exponent are coded
/// together, and zstd's per-block Huffman tables follow the change of distribution.
#[inline(always)]
fn exponent(dtype: DType, b: u32) -> usize {
    match dtype {
        DType::BF16 => (b >> 7 & 0xff) as usize,
        DType::F16 => (b >> 10 & 0x1f) as usize,
        DType::F32 => (b >> 23 & 0xff) as usize,
    }
}

/// The base's bit patterns of a block in `dtype` (computed once: the order and the
/// differences both use them).
fn base_bits(dtype: DType, base: &[f32]) -> Vec<u32> {
    match dtype {
        // A base stored as bf16 decodes to values whose low half is zero: their
        // pattern is the high half (the rounding conversion only for the others).
        DType::BF16 => base
            .iter()
            .map(|&x| {
                let u = x.to_bits();
                if u & 0xffff == 0 {
                    u >> 16
                } else {
                    half::bf16::from_f32(x).to_bits() as u32
                }
            })
            .collect(),
        DType::F16 => base
            .iter()
            .map(|&x| half::f16::from_f32(x).to_bits() as u32)
            .collect(),
        DType::F32 => base.iter().map(|x| x.to_bits()).collect(),
    }
}

/// Where each exponent's run starts in a block's coded order (the counting sort's
/// prefix sums): values are coded grouped by the base's exponent, stably.
fn bucket_starts(dtype: DType, bits: &[u32]) -> [usize; 256] {
    let mut count = [0usize; 256];
    for &b in bits {
        count[exponent(dtype, b)] += 1;
    }
    let mut at = 0;
    for c in count.iter_mut() {
        let n = *c;
        *c = at;
        at += n;
    }
    count
}

/// The order in which a block's values are coded: stable by the base's exponent (a
/// counting sort; the decoder derives the same positions from the same base). Returns
/// for each coded position the value's index in the block.
fn coded_order(dtype: DType, bits: &[u32]) -> Vec<u32> {
    let mut next = bucket_starts(dtype, bits);
    let mut order = vec![0u32; bits.len()];
    for (i, &b) in bits.iter().enumerate() {
        let e = exponent(dtype, b);
        order[next[e]] = i as u32;
        next[e] += 1;
    }
    order
}

/// Width in bits, and the mask of a pattern.
fn width(dtype: DType) -> (u32, u32) {
    match dtype {
        DType::F32 => (32, u32::MAX),
        _ => (16, 0xffff),
    }
}

/// Sign-magnitude → offset binary: integers that order as the floats do (negative
/// patterns have every bit flipped, positive ones their sign bit set). Branch-free: signs
/// of weights are random, and a branch on them is mispredicted half the time.
#[inline(always)]
fn ordered(u: u32, w: u32, mask: u32) -> u32 {
    let sign = 1u32 << (w - 1);
    let negative = (u >> (w - 1)) & 1;
    u ^ ((negative.wrapping_neg() & mask) | sign)
}

#[inline(always)]
fn unordered(k: u32, w: u32, mask: u32) -> u32 {
    let sign = 1u32 << (w - 1);
    let positive = (k >> (w - 1)) & 1;
    k ^ (sign | (positive.wrapping_sub(1) & mask))
}

/// The zig-zag code of `ft − base` (ordered patterns, modulo 2^w).
#[inline(always)]
fn zigzag_diff(f: u32, b: u32, w: u32, mask: u32) -> u32 {
    let d = ordered(f, w, mask).wrapping_sub(ordered(b, w, mask)) & mask;
    // Sign-extend the w-bit difference, then zig-zag.
    let s = ((d << (32 - w)) as i32) >> (32 - w);
    ((s << 1) ^ (s >> 31)) as u32 & mask
}

#[inline(always)]
fn undo(z: u32, b: u32, w: u32, mask: u32) -> u32 {
    let d = (z >> 1) ^ (z & 1).wrapping_neg();
    unordered(ordered(b, w, mask).wrapping_add(d) & mask, w, mask)
}

impl DeltaCodec for DeltaExact {
    fn describe(&self) -> String {
        format!("delta exact ({})", self.dtype)
    }

    fn encode_checked(
        &self,
        ft: &[f32],
        base: &BaseView<'_>,
        rows: usize,
        cols: usize,
        _: Option<&[f32]>,
    ) -> Result<Option<Vec<u8>>> {
        let (w, mask) = width(self.dtype);
        let planes = (w / 8) as usize;
        let frames: Vec<Vec<Vec<u8>>> = ft
            .par_chunks(BLOCK)
            .zip(base.values.par_chunks(BLOCK))
            .map(|(f, b)| {
                let n = f.len();
                let mut plane = vec![vec![0u8; n]; planes];
                let bb = base_bits(self.dtype, b);
                for (at, &i) in coded_order(self.dtype, &bb).iter().enumerate() {
                    let i = i as usize;
                    let z = zigzag_diff(bits_of(self.dtype, f[i]), bb[i], w, mask);
                    for (k, p) in plane.iter_mut().enumerate() {
                        p[at] = (z >> (8 * k)) as u8;
                    }
                }
                plane
                    .iter()
                    .map(|p| zstd::bulk::compress(p, self.level))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::corrupt(ENCODING.name, Corruption::Stream(e.to_string())))?;
        let mut buf = Vec::new();
        let h = Header {
            group2: dtype_code(self.dtype),
            ..Header::new(ID, rows, cols)
        };
        buf.extend_from_slice(&h.to_bytes());
        buf.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        for f in frames.iter().flatten() {
            buf.extend_from_slice(&(f.len() as u32).to_le_bytes());
        }
        for f in frames.iter().flatten() {
            buf.extend_from_slice(f);
        }
        Ok(Some(buf))
    }
}

fn corrupt(problem: Corruption) -> Error {
    Error::corrupt(ENCODING.name, problem)
}

/// zstd decompression with one context per thread, kept across frames (a context is
/// ~100 KB of tables that [`zstd::bulk::decompress_to_buffer`] would allocate again for
/// every frame).
fn decompress_to_buffer(src: &[u8], dst: &mut [u8]) -> std::io::Result<usize> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new()?);
        }
        match c.as_mut() {
            Some(d) => d.decompress_to_buffer(src, dst),
            None => unreachable!("set above"),
        }
    })
}

/// Reconstructs the fine-tune's values exactly.
fn apply(h: &Header, bytes: &[u8], base: &BaseView<'_>, out: &mut [f32], _: Decoder) -> Result<()> {
    let dtype = dtype_of(h.group2).ok_or(corrupt(Corruption::Field {
        field: "dtype code",
        value: h.group2 as u64,
    }))?;
    let (w, _) = width(dtype);
    let planes = (w / 8) as usize;
    let body = &bytes[HEADER_LEN..];
    let Some(block) = body.get(..4) else {
        return Err(corrupt(Corruption::Truncated {
            what: "block size",
            needed: (HEADER_LEN + 4) as u64,
            len: bytes.len() as u64,
        }));
    };
    let block = u32::from_le_bytes([block[0], block[1], block[2], block[3]]) as usize;
    if block == 0 || block > 1 << 28 {
        return Err(corrupt(Corruption::Field {
            field: "block size",
            value: block as u64,
        }));
    }
    let n = out.len();
    let frames = n.div_ceil(block) * planes;
    let table_end = 4 + 4 * frames;
    let Some(table) = body.get(4..table_end) else {
        return Err(corrupt(Corruption::Truncated {
            what: "frame table",
            needed: (HEADER_LEN + table_end) as u64,
            len: bytes.len() as u64,
        }));
    };
    let mut spans = Vec::with_capacity(frames);
    let mut at = table_end;
    for c in table.chunks_exact(4) {
        let len = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
        spans.push(at..at + len);
        at += len;
    }
    if at != body.len() {
        return Err(corrupt(Corruption::Length {
            what: "bytes",
            expected: (HEADER_LEN + at) as u64,
            actual: bytes.len() as u64,
        }));
    }
    out.par_chunks_mut(block)
        .zip(base.values.par_chunks(block))
        .zip(spans.par_chunks(planes))
        .try_for_each(|((o, b), spans)| {
            let mut plane = vec![0u8; o.len() * planes];
            for (k, span) in spans.iter().enumerate() {
                let dst = &mut plane[k * o.len()..(k + 1) * o.len()];
                let got = decompress_to_buffer(&body[span.clone()], dst)
                    .map_err(|e| corrupt(Corruption::Stream(e.to_string())))?;
                if got != o.len() {
                    return Err(corrupt(Corruption::Stream(format!(
                        "a plane of {got} bytes where the block holds {}",
                        o.len()
                    ))));
                }
            }
            let n = o.len();
            let (lo, rest) = plane.split_at(n);
            if dtype == DType::BF16 && apply_bf16_lanes(lo, &rest[..n], b, o) {
                return Ok(());
            }
            // Walk the block in its natural order (the output and the base's patterns
            // stream through memory) and take each value's difference from its
            // exponent's run of the planes (one-byte gathers that stay in cache); the
            // coded order is never materialized.
            let bb = base_bits(dtype, b);
            let mut next = bucket_starts(dtype, &bb);
            match dtype {
                DType::BF16 | DType::F16 => {
                    let hi = &rest[..n];
                    for (o, &bits) in o.iter_mut().zip(&bb) {
                        let e = exponent(dtype, bits);
                        let at = next[e];
                        next[e] += 1;
                        let z = lo[at] as u32 | (hi[at] as u32) << 8;
                        // Width and mask as constants: the shifts and masks fold.
                        let r = undo(z, bits, 16, 0xffff);
                        *o = if dtype == DType::BF16 {
                            f32::from_bits(r << 16)
                        } else {
                            half::f16::from_bits(r as u16).to_f32()
                        };
                    }
                }
                DType::F32 => {
                    for (o, &bits) in o.iter_mut().zip(&bb) {
                        let e = exponent(dtype, bits);
                        let at = next[e];
                        next[e] += 1;
                        let z = (0..planes)
                            .fold(0u32, |z, k| z | (plane[k * n + at] as u32) << (8 * k));
                        *o = f32::from_bits(undo(z, bits, 32, u32::MAX));
                    }
                }
            }
            Ok(())
        })
}

/// Independent cursors of the bf16 fast path: the block is cut into this many contiguous
/// lanes walked side by side, so that the cursor of a value's exponent is not the one the
/// previous value just advanced (consecutive weights mostly share an exponent, and a
/// single cursor table makes every value wait for the last store).
const LANES: usize = 4;

/// The decoder's fast path for the usual case, a bf16 fine-tune against a base whose
/// values are exact bf16 (a base stored as bf16): the base's pattern is the high half of
/// its f32 bits, read on the fly (no pattern buffer), and the block is walked in
/// [`LANES`] interleaved lanes, each with cursors into every exponent's run that start
/// where the earlier lanes' values of that exponent end (the coded order is stable, so
/// lane k's values of an exponent follow lane k-1's). Returns false, having written
/// nothing, when a base value is not exact bf16; the general walk then decodes the block.
fn apply_bf16_lanes(lo: &[u8], hi: &[u8], base: &[f32], out: &mut [f32]) -> bool {
    let n = base.len();
    let m = n / LANES;
    // The lanes: [k*m, (k+1)*m) for k < LANES-1, and the last takes the remainder.
    let lane_start = |k: usize| k * m;
    let exp = |x: f32| (x.to_bits() >> 23 & 0xff) as usize;
    let mut count = [[0u32; 256]; LANES];
    let mut low = 0u32;
    for j in 0..m {
        for (k, c) in count.iter_mut().enumerate() {
            let x = base[lane_start(k) + j];
            low |= x.to_bits();
            c[exp(x)] += 1;
        }
    }
    for &x in &base[LANES * m..] {
        low |= x.to_bits();
        count[LANES - 1][exp(x)] += 1;
    }
    if low & 0xffff != 0 {
        return false;
    }
    // Cursors: exponent runs in order, lanes in order within each run.
    let mut next = [[0u32; 256]; LANES];
    let mut at = 0u32;
    for e in 0..256 {
        for k in 0..LANES {
            next[k][e] = at;
            at += count[k][e];
        }
    }
    // The differences, two bytes each, side by side in coded order (one gather per
    // value below instead of two; the zip vectorizes).
    let z: Vec<u16> = lo
        .iter()
        .zip(hi)
        .map(|(&l, &h)| l as u16 | (h as u16) << 8)
        .collect();
    // Chunks of lanes: gather each lane's next `CHUNK` differences in natural order
    // (the dependent, scalar part), then undo them against the base's patterns in a
    // branch-free loop the compiler vectorizes; the chunk stays in L1.
    const CHUNK: usize = 512;
    #[inline(always)]
    fn finish(base: &[f32], zs: &[u16], out: &mut [f32]) {
        for ((o, x), &z) in out.iter_mut().zip(base).zip(zs) {
            *o = f32::from_bits(undo(z as u32, x.to_bits() >> 16, 16, 0xffff) << 16);
        }
    }
    let [n0, n1, n2, n3] = &mut next;
    #[inline(always)]
    fn step(x: &f32, next: &mut [u32; 256], z: &[u16]) -> u16 {
        let e = (x.to_bits() >> 23 & 0xff) as usize;
        let at = next[e] as usize;
        next[e] += 1;
        z[at]
    }
    let mut buf = [[0u16; CHUNK]; LANES];
    for j in (0..m).step_by(CHUNK) {
        let len = CHUNK.min(m - j);
        let lane = |k: usize| k * m + j..k * m + j + len;
        // Four independent cursor chains side by side.
        let [d0, d1, d2, d3] = &mut buf;
        let lanes = base[lane(0)]
            .iter()
            .zip(&base[lane(1)])
            .zip(&base[lane(2)])
            .zip(&base[lane(3)]);
        for (i, (((x0, x1), x2), x3)) in lanes.enumerate() {
            d0[i] = step(x0, n0, &z);
            d1[i] = step(x1, n1, &z);
            d2[i] = step(x2, n2, &z);
            d3[i] = step(x3, n3, &z);
        }
        for (k, d) in buf.iter().enumerate() {
            finish(&base[lane(k)], &d[..len], &mut out[lane(k)]);
        }
    }
    let tail = LANES * m;
    let rest: Vec<u16> = base[tail..].iter().map(|x| step(x, n3, &z)).collect();
    finish(&base[tail..], &rest, &mut out[tail..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_difference_round_trips_every_pattern_pair_sample() {
        let (w, mask) = width(DType::BF16);
        let pats = [
            0u32, 1, 0x7f7f, 0x7f80, 0x8000, 0x8001, 0xff80, 0x3c00, 0xbc00, 0xffff,
        ];
        for &f in &pats {
            for &b in &pats {
                assert_eq!(
                    undo(zigzag_diff(f, b, w, mask), b, w, mask),
                    f,
                    "{f:#x} vs {b:#x}"
                );
            }
        }
        // One unit in the last place is a small code, across zero too.
        let one_up = zigzag_diff(0x3c01, 0x3c00, w, mask);
        assert_eq!(one_up, 2);
        assert_eq!(
            zigzag_diff(0x0000, 0x8000, w, mask),
            2,
            "-0 -> +0 is one step"
        );
        let (w, mask) = width(DType::F32);
        for &(f, b) in &[
            (1.5f32, 1.25f32),
            (-3.0, 2.0),
            (0.0, -0.0),
            (f32::MAX, f32::MIN),
        ] {
            let (f, b) = (f.to_bits(), b.to_bits());
            assert_eq!(undo(zigzag_diff(f, b, w, mask), b, w, mask), f);
        }
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;
    use crate::codec::table::apply as apply_any;

    fn pair(n: usize, dtype: DType) -> (Vec<f32>, Vec<f32>) {
        let round = |v: Vec<f32>| -> Vec<f32> {
            let b = dtype.encode(&v);
            let mut o = vec![0f32; v.len()];
            dtype.decode_into(&b, &mut o);
            o
        };
        let base = round(crate::rng::randn(n, 1, 0.05));
        let ft = round(
            base.iter()
                .zip(crate::rng::randn(n, 2, 3e-4))
                .map(|(b, d)| b + d)
                .collect(),
        );
        (base, ft)
    }

    #[test]
    fn every_dtype_round_trips_exactly_and_corruption_is_an_error() {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let (base, ft) = pair(3000, dtype);
            let view = BaseView {
                values: &base,
                encoded: None,
            };
            let enc = DeltaExact { dtype, level: 3 }
                .encode(&ft, &view, 30, 100, None)
                .expect("encode")
                .expect("applies");
            let mut out = vec![0f32; ft.len()];
            apply_any(&enc, &view, &mut out).expect("apply");
            assert!(
                out.iter().zip(&ft).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dtype}"
            );
            // Lengths that leave a remainder to the last lane (and lanes shorter than a
            // chunk), and a base that is not exact in the dtype (the general walk).
            for n in [1, 3, 5, 2051] {
                let (b, f) = pair(n, dtype);
                let mut inexact = b.clone();
                inexact[n / 2] = f32::from_bits(inexact[n / 2].to_bits() | 1);
                for b in [b, inexact] {
                    let v = BaseView {
                        values: &b,
                        encoded: None,
                    };
                    let e = DeltaExact { dtype, level: 3 }
                        .encode(&f, &v, 1, n, None)
                        .expect("encode")
                        .expect("applies");
                    let mut o = vec![0f32; n];
                    apply_any(&e, &v, &mut o).expect("apply");
                    assert!(
                        o.iter().zip(&f).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{dtype} n={n}"
                    );
                }
            }
            if dtype == DType::BF16 {
                assert!(enc.len() < ft.len() * 2 / 2, "{} bytes", enc.len());
            }
            // Every truncation, and a flipped byte in the frames, fails cleanly.
            for cut in [
                0,
                10,
                HEADER_LEN,
                HEADER_LEN + 3,
                enc.len() / 2,
                enc.len() - 1,
            ] {
                assert!(
                    apply_any(&enc[..cut], &view, &mut out).is_err(),
                    "cut {cut}"
                );
            }
            let mut bad = enc.clone();
            let k = bad.len() - 5;
            bad[k] ^= 0xff;
            let _ = apply_any(&bad, &view, &mut out); // an error or other values: no panic
                                                      // Decoding without the base is refused.
            assert!(crate::codec::decode(&enc, &mut out).is_err());
        }
    }
}
