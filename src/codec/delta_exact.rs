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

/// Codec id of the context-coded layout (format 1.3).
pub const ID_CODED: CodecId = CodecId(14);

/// The `delta_exact` row (byte planes through zstd): decoded on the CPU (entropy
/// coding), then uploaded.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "delta_exact",
    decode: delta_needs_base,
    gpu: GpuDecode::CpuThenUpload,
    apply: Some(apply),
    regrid: None,
};

/// The `delta_exact_coded` row (context-coded Huffman): decoded on the CPU, then uploaded.
pub const ENCODING_CODED: EncodingRow = EncodingRow {
    id: ID_CODED,
    name: "delta_exact_coded",
    decode: delta_needs_base,
    gpu: GpuDecode::CpuThenUpload,
    apply: Some(apply),
    regrid: None,
};

/// Values per independently compressed block (blocks encode and decode in parallel).
pub const BLOCK: usize = 1 << 18;
const _: () = assert!(
    BLOCK <= MAX_CODED_BLOCK,
    "the coded layout decodes blocks of at most 2^18 values"
);

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

/// How the differences are entropy-coded (each layout is its own codec id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// [`ID`]: byte planes in the base's exponent order, each compressed with zstd (every
    /// dtype; the only layout of format 1.2).
    Planes,
    /// [`ID_CODED`] (format 1.3): natural order, canonical Huffman codes with the base's
    /// exponent as context (bf16 and f16; an f32 tensor falls back to `Planes`).
    /// Decodes several times faster at about the same size.
    Coded,
}

impl Layout {
    fn id(self) -> CodecId {
        match self {
            Layout::Planes => ID,
            Layout::Coded => ID_CODED,
        }
    }
}

/// The lossless delta codec for tensors of `dtype`.
#[derive(Debug, Clone, Copy)]
pub struct DeltaExact {
    /// The fine-tune's dtype (what is reproduced bit for bit).
    pub dtype: DType,
    /// zstd level (1..=22) of the planes layout; decode speed does not depend on it.
    pub level: i32,
    /// The entropy stage.
    pub layout: Layout,
}

impl DeltaExact {
    /// The context-coded layout (planes at the default level for f32).
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            level: DEFAULT_LEVEL,
            layout: Layout::Coded,
        }
    }

    /// The layout this codec writes for its dtype.
    fn effective_layout(&self) -> Layout {
        match self.dtype {
            DType::F32 => Layout::Planes,
            _ => self.layout,
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

/// [`undo`] for 16-bit patterns in 16-bit arithmetic (twice the lanes per vector
/// instruction where the compiler vectorizes it).
#[inline(always)]
fn undo_bf16(z: u16, b: u16) -> u16 {
    let ordered_b = b ^ ((b >> 15).wrapping_neg() | 0x8000);
    let d = (z >> 1) ^ (z & 1).wrapping_neg();
    let k = ordered_b.wrapping_add(d);
    k ^ (0x8000 | (k >> 15).wrapping_sub(1))
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
        let layout = self.effective_layout();
        let h = Header {
            group2: dtype_code(self.dtype),
            ..Header::new(layout.id(), rows, cols)
        };
        if layout == Layout::Coded {
            let blocks: Vec<Vec<u8>> = ft
                .par_chunks(BLOCK)
                .zip(base.values.par_chunks(BLOCK))
                .map(|(f, b)| encode_coded_block(self.dtype, f, b))
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::corrupt(ENCODING.name, Corruption::Stream(e.to_string())))?;
            let mut buf = Vec::with_capacity(
                HEADER_LEN + 4 + 4 * blocks.len() + blocks.iter().map(Vec::len).sum::<usize>(),
            );
            buf.extend_from_slice(&h.to_bytes());
            buf.extend_from_slice(&(BLOCK as u32).to_le_bytes());
            for b in &blocks {
                buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            }
            for b in &blocks {
                buf.extend_from_slice(b);
            }
            return Ok(Some(buf));
        }
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
    let layout = match h.id {
        ID_CODED if dtype == DType::F32 => {
            return Err(corrupt(Corruption::Field {
                field: "dtype code of the coded layout",
                value: u64::from(h.group2),
            }))
        }
        ID_CODED => Layout::Coded,
        _ => Layout::Planes,
    };
    let (w, _) = width(dtype);
    let planes = match layout {
        Layout::Planes => (w / 8) as usize,
        Layout::Coded => 1,
    };
    let body = &bytes[HEADER_LEN..];
    let block = read_u32(bytes, HEADER_LEN, "block size")? as usize;
    let max_block = match layout {
        Layout::Planes => 1 << 28,
        Layout::Coded => MAX_CODED_BLOCK,
    };
    if block == 0 || block > max_block {
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
    if layout == Layout::Coded {
        return out
            .par_chunks_mut(block)
            .zip(base.values.par_chunks(block))
            .zip(spans.par_iter())
            .try_for_each(|((o, b), span)| decode_coded_block(dtype, &body[span.clone()], b, o));
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

// ---------------------------------------------------------------------------------------
// Codec 14, `delta_exact_coded`: the context-coded layout (16-bit dtypes).
//
// The planes layout codes the differences in the base's exponent order so that zstd's
// per-block Huffman tables see one exponent's distribution at a time; the decoder then
// has to find each value's place in that order (a cursor per exponent, a gather per
// value) and zstd's sequence decoding comes on top. The context-coded layout keeps the
// exponent as the *context* of a Huffman code instead, and codes the values in their
// natural order: the decoder reads each value's code with the table of its base
// exponent's context, so one pass over the block does the entropy decoding and the
// walk together, with no reordering at all.
//
// Per context a shift `s` is chosen by measured cost: the code is over `z >> s` (the
// difference's high part: an optimiser moves a weight by about the same amount whatever
// its exponent, so the difference in units in the last place grows as the exponent
// shrinks, and the shift makes the coded part look alike across contexts), followed by
// the `s` low bits as they are; a high part of 255 or more is coded as the escape
// symbol 255 followed by the whole 16-bit difference.
//
// Block layout: `desc_len u32 | desc (zstd) | lane byte lengths (u32 x LANES_CODED) |
// lane bit streams`. `desc` is `lo u8 | contexts u8 | per context: kind u8 (0 unused,
// 1 one symbol, 2 a code), shift u8, then the symbol (kind 1) or 128 bytes of 4-bit code
// lengths for the symbols 0..=255 (kind 2)`. A value's context is its base exponent
// field minus `lo`, clamped to `0..contexts`. The block's values are cut into
// LANES_CODED contiguous lanes (the last takes the remainder), each an LSB-first bit
// stream of canonical Huffman codes (`super::huffman`), decoded side by side.
// ---------------------------------------------------------------------------------------

/// Lanes of a context-coded block: independent bit streams decoded side by side (a
/// value's decode waits on the previous one of its lane: table load, then the shift by
/// its length).
const LANES_CODED: usize = 8;

/// Contexts at most (the highest base exponents of the block each get one; lower ones
/// share the first).
const MAX_CONTEXTS: usize = 16;

/// Largest shift a context may take.
const MAX_SHIFT: u32 = 12;

/// The escape symbol: the whole 16-bit difference follows.
const ESCAPE: usize = 255;

/// A decoder reads a block's streams from a buffer of `STREAM_SPAN + 8` bytes at byte
/// offsets masked to `STREAM_SPAN` (a power of two): every 8-byte read is in bounds by
/// construction, with no check or clamp per value. A block holds at most
/// [`MAX_CODED_BLOCK`] values, whose streams take at most 2^18 x (10 + 16) bits (< 2^20
/// bytes); longer streams are refused.
const STREAM_SPAN: usize = 1 << 20;

/// Values per block at most in the coded layout (the writer's [`BLOCK`]).
const MAX_CODED_BLOCK: usize = 1 << 18;

/// Decode table entries. Where a symbol's code and its raw bits fit in the
/// `huffman::MAX_LEN` bits a lookup sees (most values), the entry resolves the whole value
/// (`z | (code length + raw bits) << 16`, bit 31 clear). Otherwise (an escape's 16 raw bits, or a long code
/// followed by many raw bits) it is *slow*: `(symbol << raw) | length << 16 | raw << 21 |
/// SLOW`, and the raw bits are read after it. A context no value may use has slow entries
/// with `TRAP` set (a corrupt stream).
const SLOW: u32 = 1 << 31;
const TRAP: u32 = 1 << 30;

/// The slow entry of `symbol` with a code of `len` bits and `raw` bits after it.
#[inline(always)]
fn slow_entry(symbol: u32, len: u32, raw: u32) -> u32 {
    (symbol << raw & 0xffff) | len << 16 | raw << 21 | SLOW
}

/// Makes the slow entries of `table` that fit in a lookup fast: the entry at index `i`
/// of a code of `len` bits followed by `raw` bits holds those raw bits in `i >> len`.
fn resolve_fast(table: &mut [u32]) {
    for (i, t) in table.iter_mut().enumerate() {
        let e = *t;
        let (len, raw) = (e >> 16 & 31, e >> 21 & 31);
        if e & TRAP == 0 && len + raw <= super::huffman::MAX_LEN {
            let bits = (i as u32 >> len) & ((1 << raw) - 1);
            *t = ((e & 0xffff) | bits) | (len + raw) << 16;
        }
    }
}

/// One context's code, as the encoder chose it.
struct ContextCode {
    shift: u32,
    /// Code lengths over the 256 symbols (all 0: one symbol, `single`).
    lengths: Vec<u8>,
    codes: Vec<u32>,
    single: Option<usize>,
    used: bool,
}

/// The symbol of `z` under `shift`, and the raw bits after it.
#[inline(always)]
fn symbol(z: u32, shift: u32) -> (usize, u32) {
    let q = (z >> shift) as usize;
    if q >= ESCAPE {
        (ESCAPE, 16)
    } else {
        (q, shift)
    }
}

/// The cheapest code for one context's differences: every shift tried, cost in bits
/// (codes + raw bits + the 128-byte table).
fn best_code(zs: &[u16]) -> ContextCode {
    if zs.is_empty() {
        return ContextCode {
            shift: 0,
            lengths: Vec::new(),
            codes: Vec::new(),
            single: None,
            used: false,
        };
    }
    let mut best: Option<(u64, ContextCode)> = None;
    for shift in 0..=MAX_SHIFT {
        let mut freq = vec![0u64; 256];
        let mut raw = 0u64;
        for &z in zs {
            let (s, r) = symbol(u32::from(z), shift);
            freq[s] += 1;
            raw += u64::from(r);
        }
        let used = freq.iter().filter(|&&f| f > 0).count();
        let (lengths, single, table_bits) = if used == 1 {
            let s = freq.iter().position(|&f| f > 0).unwrap_or(0);
            (vec![0u8; 256], Some(s), 8)
        } else {
            (super::huffman::code_lengths(&freq), None, 128 * 8)
        };
        let code_bits: u64 = freq
            .iter()
            .zip(&lengths)
            .map(|(f, &l)| f * u64::from(l))
            .sum();
        let cost = code_bits + raw + table_bits;
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            let codes = super::huffman::codes(&lengths);
            best = Some((
                cost,
                ContextCode {
                    shift,
                    lengths,
                    codes,
                    single,
                    used: true,
                },
            ));
        }
        // Past the point where every value escapes, larger shifts change nothing.
        if freq[ESCAPE] == 0 && shift > 0 && used == 1 {
            break;
        }
    }
    best.map(|(_, c)| c).unwrap_or_else(|| best_code(&[]))
}

/// Encodes one block (16-bit dtype) in the context-coded layout.
fn encode_coded_block(dtype: DType, f: &[f32], b: &[f32]) -> std::io::Result<Vec<u8>> {
    let n = f.len();
    let bb = base_bits(dtype, b);
    let z: Vec<u16> = f
        .iter()
        .zip(&bb)
        .map(|(&x, &p)| zigzag_diff(bits_of(dtype, x), p, 16, 0xffff) as u16)
        .collect();
    let e_max = bb.iter().map(|&p| exponent(dtype, p)).max().unwrap_or(0);
    let e_min = bb.iter().map(|&p| exponent(dtype, p)).min().unwrap_or(0);
    let lo = e_min.max(e_max.saturating_sub(MAX_CONTEXTS - 1));
    let contexts = e_max - lo + 1;
    let ctx = |p: u32| (exponent(dtype, p).saturating_sub(lo)).min(contexts - 1);
    let mut per: Vec<Vec<u16>> = vec![Vec::new(); contexts];
    for (&p, &z) in bb.iter().zip(&z) {
        per[ctx(p)].push(z);
    }
    let codes: Vec<ContextCode> = per.iter().map(|zs| best_code(zs)).collect();
    let mut desc = vec![lo as u8, contexts as u8];
    for c in &codes {
        match (c.used, c.single) {
            (false, _) => desc.extend_from_slice(&[0, 0]),
            (true, Some(s)) => desc.extend_from_slice(&[1, c.shift as u8, s as u8]),
            (true, None) => {
                desc.extend_from_slice(&[2, c.shift as u8]);
                desc.extend(c.lengths.chunks(2).map(|p| p[0] | p[1] << 4));
            }
        }
    }
    let desc = zstd::bulk::compress(&desc, 19)?;
    let m = n / LANES_CODED;
    let mut lanes = Vec::with_capacity(LANES_CODED);
    for k in 0..LANES_CODED {
        let end = if k + 1 == LANES_CODED { n } else { (k + 1) * m };
        let mut w = super::huffman::BitWriter::default();
        for i in k * m..end {
            let c = &codes[ctx(bb[i])];
            let z = u32::from(z[i]);
            let (s, raw) = symbol(z, c.shift);
            if c.single.is_none() {
                w.put(c.codes[s], u32::from(c.lengths[s]));
            }
            w.put(z, raw);
        }
        lanes.push(w.finish());
    }
    let mut out = Vec::with_capacity(
        4 + desc.len() + 4 * LANES_CODED + lanes.iter().map(Vec::len).sum::<usize>(),
    );
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&desc);
    for l in &lanes {
        out.extend_from_slice(&(l.len() as u32).to_le_bytes());
    }
    for l in &lanes {
        out.extend_from_slice(l);
    }
    Ok(out)
}

/// One context's decode table.
type Table = [u32; 1 << super::huffman::MAX_LEN];

/// Entries of every context's table together, rounded up to 2^16 so that any u16 context
/// offset plus a code index is in bounds by its type (no mask or check per value; the
/// entries past the contexts' tables are never filled and never read by valid data).
const TABLES_LEN: usize = 1 << 16;

/// A decoder's per-thread buffers, kept across blocks (the tables are 4 KiB per context).
#[derive(Default)]
struct CodedScratch {
    tables: Vec<Table>,
    streams: Option<Box<[u8; STREAM_SPAN + 8]>>,
    patterns: Vec<u32>,
}

/// Decodes one context-coded block into `out` (16-bit dtypes).
fn decode_coded_block(dtype: DType, bytes: &[u8], base: &[f32], out: &mut [f32]) -> Result<()> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<CodedScratch> = std::cell::RefCell::default();
    }
    SCRATCH.with(|s| decode_coded_block_in(dtype, bytes, base, out, &mut s.borrow_mut()))
}

fn truncated(what: &'static str, needed: usize, len: usize) -> Error {
    corrupt(Corruption::Truncated {
        what,
        needed: needed as u64,
        len: len as u64,
    })
}

fn read_u32(bytes: &[u8], at: usize, what: &'static str) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| truncated(what, at + 4, bytes.len()))
}

fn decode_coded_block_in(
    dtype: DType,
    bytes: &[u8],
    base: &[f32],
    out: &mut [f32],
    scratch: &mut CodedScratch,
) -> Result<()> {
    // The description: contexts and their codes.
    let desc_len = read_u32(bytes, 0, "block description length")? as usize;
    let packed = bytes
        .get(4..4 + desc_len)
        .ok_or_else(|| truncated("block description", 4 + desc_len, bytes.len()))?;
    let mut desc = [0u8; 2 + MAX_CONTEXTS * 130];
    let got = decompress_to_buffer(packed, &mut desc)
        .map_err(|e| corrupt(Corruption::Stream(e.to_string())))?;
    let desc = &desc[..got];
    let (lo, contexts) = match desc {
        [lo, c, ..] if (1..=MAX_CONTEXTS).contains(&usize::from(*c)) => {
            (usize::from(*lo), usize::from(*c))
        }
        [_, c, ..] => {
            return Err(corrupt(Corruption::Field {
                field: "contexts",
                value: u64::from(*c),
            }))
        }
        _ => return Err(truncated("block description", 2, desc.len())),
    };
    // Allocated once per thread; each block writes every entry of its contexts' tables
    // (the others are never read: a value's context is clamped to the block's).
    scratch.tables.resize(
        TABLES_LEN >> super::huffman::MAX_LEN,
        [TRAP | SLOW; 1 << super::huffman::MAX_LEN],
    );
    let mut at = 2;
    for c in 0..contexts {
        let table = &mut scratch.tables[c];
        let (kind, shift) = match desc.get(at..at + 2) {
            Some(&[k, s]) => (k, u32::from(s)),
            _ => return Err(truncated("context description", at + 2, desc.len())),
        };
        at += 2;
        if shift > MAX_SHIFT {
            return Err(corrupt(Corruption::Field {
                field: "context shift",
                value: u64::from(shift),
            }));
        }
        let value_entry = |s: usize, len: u32| {
            if s == ESCAPE {
                slow_entry(0, len, 16)
            } else {
                slow_entry(s as u32, len, shift)
            }
        };
        match kind {
            0 => table.fill(TRAP | SLOW), // unused: every entry traps
            1 => {
                let s = *desc
                    .get(at)
                    .ok_or_else(|| truncated("context symbol", at + 1, desc.len()))?;
                at += 1;
                table.fill(value_entry(usize::from(s), 0));
            }
            2 => {
                let packed = desc
                    .get(at..at + 128)
                    .ok_or_else(|| truncated("code lengths", at + 128, desc.len()))?;
                at += 128;
                let lengths: Vec<u8> = packed.iter().flat_map(|&b| [b & 15, b >> 4]).collect();
                if !super::huffman::is_complete(&lengths) {
                    return Err(corrupt(Corruption::Stream(
                        "a context's code lengths are not a complete prefix code".into(),
                    )));
                }
                super::huffman::fill_table(&lengths, table, value_entry);
            }
            k => {
                return Err(corrupt(Corruption::Field {
                    field: "context kind",
                    value: u64::from(k),
                }))
            }
        }
        resolve_fast(table);
    }
    // The lanes' streams, copied after one another with zero padding behind.
    let lane_table = 4 + desc_len;
    let mut ends = [0usize; LANES_CODED];
    let mut total = 0usize;
    for (k, end) in ends.iter_mut().enumerate() {
        total += read_u32(bytes, lane_table + 4 * k, "lane lengths")? as usize;
        *end = total;
    }
    let streams_at = lane_table + 4 * LANES_CODED;
    if bytes.len() != streams_at + total {
        return Err(corrupt(Corruption::Length {
            what: "block bytes",
            expected: (streams_at + total) as u64,
            actual: bytes.len() as u64,
        }));
    }
    if total > STREAM_SPAN {
        return Err(corrupt(Corruption::Field {
            field: "bytes of a block's streams",
            value: total as u64,
        }));
    }
    let streams = scratch.streams.get_or_insert_with(|| {
        match vec![0u8; STREAM_SPAN + 8].into_boxed_slice().try_into() {
            Ok(b) => b,
            Err(_) => unreachable!("the length is the array's"),
        }
    });
    // The streams, then zeros where the last values' reads may look (8 bytes).
    streams[..total].copy_from_slice(&bytes[streams_at..]);
    streams[total..total + 8].fill(0);
    let starts = {
        let mut s = [0usize; LANES_CODED];
        for k in 1..LANES_CODED {
            s[k] = ends[k - 1] * 8;
        }
        s
    };
    let Ok(tables) = <&[u32; TABLES_LEN]>::try_from(scratch.tables.as_flattened()) else {
        unreachable!("resized to TABLES_LEN entries above")
    };
    let walk = Walk {
        tables,
        streams,
        lo: lo as u32,
        last: (lo + contexts - 1) as u32,
    };
    let general = |walk: &Walk<'_>, out: &mut [f32], pats: &mut Vec<u32>| {
        pats.clear();
        pats.extend(base_bits(dtype, base));
        let exp = if dtype == DType::BF16 {
            (7, 0xff)
        } else {
            (10, 0x1f)
        };
        let finish = |z: u32, p: u32| {
            let r = undo(z, p, 16, 0xffff);
            if dtype == DType::BF16 {
                f32::from_bits(r << 16)
            } else {
                half::f16::from_bits(r as u16).to_f32()
            }
        };
        walk.run(pats, |p| p, |_| 0, exp, starts, out, finish)
    };
    let (pos, trap) = if dtype == DType::BF16 {
        // A base stored as bf16 (the usual case): its pattern is the high half of the
        // f32, read on the fly; a value with low bits set (a base that is not exact bf16)
        // is noticed as the walk goes, and the block is decoded again the general way.
        let fast = walk.run_bf16(base, starts, out);
        match fast {
            (pos, trap, 0) => (pos, trap),
            _ => {
                let (pos, trap, _) = general(&walk, out, &mut scratch.patterns);
                (pos, trap)
            }
        }
    } else {
        let (pos, trap, _) = general(&walk, out, &mut scratch.patterns);
        (pos, trap)
    };
    if trap {
        return Err(corrupt(Corruption::Stream(
            "a value of a context the block does not code".into(),
        )));
    }
    for k in 0..LANES_CODED {
        if pos[k] > ends[k] * 8 {
            return Err(corrupt(Corruption::Stream(format!(
                "lane {k} reads {} bits past its stream",
                pos[k] - ends[k] * 8
            ))));
        }
    }
    Ok(())
}

/// The decode walk of a context-coded block.
struct Walk<'a> {
    /// Every context's table, one after another.
    tables: &'a [u32; TABLES_LEN],
    streams: &'a [u8; STREAM_SPAN + 8],
    /// The exponent of context 0, and of the last context.
    lo: u32,
    last: u32,
}

impl Walk<'_> {
    /// One value of a lane: the next 8 bytes at the lane's bit position (0 past the
    /// buffer: a corrupt stream, caught by the position check after the walk), the entry
    /// of the value's context, then (slow entries only) the raw bits after the code.
    #[inline(always)]
    /// `ctx`: the context's first entry (context << MAX_LEN).
    fn step(&self, pos: &mut usize, ctx: u16, trap: &mut u32) -> u16 {
        // Masked, not checked: a position past the streams (a corrupt stream) reads
        // other bytes of the buffer, and the position check after the walk reports it.
        let at = (*pos >> 3) & (STREAM_SPAN - 1);
        let bytes = &self.streams[at..at + 8];
        let word = u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]) >> (*pos & 7);
        let index = usize::from(ctx) | (word as usize & ((1 << super::huffman::MAX_LEN) - 1));
        let t = self.tables[index & (TABLES_LEN - 1)];
        if t & SLOW == 0 {
            *pos += (t >> 16) as usize;
            return t as u16;
        }
        Self::slow(pos, t, word, trap)
    }

    /// The walk of a bf16 block over a base held as f32 whose values are bf16 (the
    /// usual case; `run`'s check is the low halves), on the widest instantiation the CPU
    /// allows ([`crate::cpu`]): both compute the same bits.
    fn run_bf16(
        &self,
        base: &[f32],
        starts: [usize; LANES_CODED],
        out: &mut [f32],
    ) -> ([usize; LANES_CODED], bool, u32) {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::x86_64_v3() {
            #[allow(unsafe_code)]
            // SAFETY: `x86_64_v3` checked at run time that the CPU has every feature
            // `run_bf16_v3` is compiled for; that is the whole of its contract.
            return unsafe { self.run_bf16_v3(base, starts, out) };
        }
        self.run_bf16_body(base, starts, out)
    }

    /// [`Self::run_bf16_body`] compiled for x86-64-v3.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,fma,movbe,popcnt")]
    fn run_bf16_v3(
        &self,
        base: &[f32],
        starts: [usize; LANES_CODED],
        out: &mut [f32],
    ) -> ([usize; LANES_CODED], bool, u32) {
        self.run_bf16_body(base, starts, out)
    }

    #[inline(always)]
    fn run_bf16_body(
        &self,
        base: &[f32],
        starts: [usize; LANES_CODED],
        out: &mut [f32],
    ) -> ([usize; LANES_CODED], bool, u32) {
        self.run(
            base,
            |x| x.to_bits() >> 16,
            |x| x.to_bits() & 0xffff,
            (7, 0xff),
            starts,
            out,
            |z, p| f32::from_bits(u32::from(undo_bf16(z as u16, p as u16)) << 16),
        )
    }

    /// A slow entry: the raw bits after the code (or a trap).
    #[cold]
    #[inline(never)]
    fn slow(pos: &mut usize, t: u32, word: u64, trap: &mut u32) -> u16 {
        *trap |= t;
        let len = t >> 16 & 31;
        let raw_bits = t >> 21 & 31;
        let raw = (word >> len) as u32 & ((1u32 << raw_bits) - 1);
        *pos += (len + raw_bits) as usize;
        ((t & 0xffff) | raw) as u16
    }

    /// Decodes the block's values against `base`: `pattern(x)` is a base value's 16-bit
    /// pattern, its exponent field `pattern >> exp.0 & exp.1`, `finish(z, pattern)` the
    /// output value; `check(x)` is OR-ed over every base value and returned (non-zero:
    /// the fast path does not apply). Returns the lanes' final bit positions, whether a
    /// trap entry was hit, and the check.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn run<T: Copy>(
        &self,
        base: &[T],
        pattern: impl Fn(T) -> u32,
        check: impl Fn(T) -> u32,
        exp: (u32, u32),
        mut pos: [usize; LANES_CODED],
        out: &mut [f32],
        finish: impl Fn(u32, u32) -> f32,
    ) -> ([usize; LANES_CODED], bool, u32) {
        const CHUNK: usize = 256;
        let n = base.len();
        let m = n / LANES_CODED;
        let mut trap = 0u32;
        let mut checked = 0u32;
        // A value's context: its exponent clamped to [lo, last], less lo (branch-free
        // arithmetic, computed for a chunk of each lane at a time: it vectorizes).
        let ctx = |x: T| {
            (((pattern(x) >> exp.0 & exp.1).clamp(self.lo, self.last) - self.lo)
                << super::huffman::MAX_LEN) as u16
        };
        let mut zs = [[0u16; CHUNK]; LANES_CODED];
        let mut cs = [[0u16; CHUNK]; LANES_CODED];
        let mut j = 0;
        while j < m {
            let len = CHUNK.min(m - j);
            let b: [&[T]; LANES_CODED] = std::array::from_fn(|k| &base[k * m + j..][..len]);
            for (c, b) in cs.iter_mut().zip(&b) {
                for (c, &x) in c.iter_mut().zip(b.iter()) {
                    *c = ctx(x);
                }
            }
            // The eight lanes' cursors as eight locals, the steps written out: each
            // lane's chain (stream load, table load, advance) overlaps the others'.
            let [mut p0, mut p1, mut p2, mut p3, mut p4, mut p5, mut p6, mut p7] = pos;
            let [c0, c1, c2, c3, c4, c5, c6, c7] = &cs;
            let [z0, z1, z2, z3, z4, z5, z6, z7] = &mut zs;
            for i in 0..len {
                z0[i] = self.step(&mut p0, c0[i], &mut trap);
                z1[i] = self.step(&mut p1, c1[i], &mut trap);
                z2[i] = self.step(&mut p2, c2[i], &mut trap);
                z3[i] = self.step(&mut p3, c3[i], &mut trap);
                z4[i] = self.step(&mut p4, c4[i], &mut trap);
                z5[i] = self.step(&mut p5, c5[i], &mut trap);
                z6[i] = self.step(&mut p6, c6[i], &mut trap);
                z7[i] = self.step(&mut p7, c7[i], &mut trap);
            }
            pos = [p0, p1, p2, p3, p4, p5, p6, p7];
            for (k, z) in zs.iter().enumerate() {
                let o = &mut out[k * m + j..][..len];
                for ((o, &z), &x) in o.iter_mut().zip(&z[..len]).zip(b[k]) {
                    checked |= check(x);
                    *o = finish(u32::from(z), pattern(x));
                }
            }
            j += len;
        }
        // The last lane's remainder.
        let k = LANES_CODED - 1;
        for (o, &x) in out[LANES_CODED * m..]
            .iter_mut()
            .zip(&base[LANES_CODED * m..])
        {
            let z = self.step(&mut pos[k], ctx(x), &mut trap);
            checked |= check(x);
            *o = finish(u32::from(z), pattern(x));
        }
        (pos, trap & TRAP != 0, checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_in_16_bits_is_undo() {
        for b in (0..=0xffffu32).step_by(7) {
            for z in [
                0u32, 1, 2, 3, 255, 256, 4097, 0x7fff, 0x8000, 0xfffe, 0xffff,
            ] {
                assert_eq!(
                    u32::from(undo_bf16(z as u16, b as u16)),
                    undo(z, b, 16, 0xffff)
                );
            }
        }
    }

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
        for (dtype, layout) in [
            (DType::BF16, Layout::Coded),
            (DType::BF16, Layout::Planes),
            (DType::F16, Layout::Coded),
            (DType::F16, Layout::Planes),
            (DType::F32, Layout::Planes),
        ] {
            let (base, ft) = pair(3000, dtype);
            let view = BaseView {
                values: &base,
                encoded: None,
            };
            let enc = DeltaExact {
                dtype,
                level: 3,
                layout,
            }
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
            assert_eq!(
                Header::parse(&enc).expect("header").id,
                layout.id(),
                "{dtype} {layout:?}"
            );
            for n in [1, 3, 5, 2051, BLOCK + 17] {
                let (b, f) = pair(n, dtype);
                let mut inexact = b.clone();
                inexact[n / 2] = f32::from_bits(inexact[n / 2].to_bits() | 1);
                for b in [b, inexact] {
                    let v = BaseView {
                        values: &b,
                        encoded: None,
                    };
                    let e = DeltaExact {
                        dtype,
                        level: 3,
                        layout,
                    }
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
    /// A coded encoding of `n` bf16 values made of one hand-written block.
    fn coded(n: usize, desc: &[u8], lanes: [&[u8]; LANES_CODED]) -> Vec<u8> {
        let desc = zstd::bulk::compress(desc, 3).expect("zstd");
        let mut block = (desc.len() as u32).to_le_bytes().to_vec();
        block.extend_from_slice(&desc);
        for l in lanes {
            block.extend_from_slice(&(l.len() as u32).to_le_bytes());
        }
        for l in lanes {
            block.extend_from_slice(l);
        }
        let h = Header {
            group2: dtype_code(DType::BF16),
            ..Header::new(ID_CODED, 1, n)
        };
        let mut enc = h.to_bytes().to_vec();
        enc.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        enc.extend_from_slice(&(block.len() as u32).to_le_bytes());
        enc.extend_from_slice(&block);
        enc
    }

    #[test]
    fn coded_layout_refuses_bad_tables_and_overruns_and_survives_any_flipped_byte() {
        let (base, ft) = pair(2051, DType::BF16);
        let view = BaseView {
            values: &base,
            encoded: None,
        };
        let enc = DeltaExact::new(DType::BF16)
            .encode(&ft, &view, 1, 2051, None)
            .expect("encode")
            .expect("applies");
        let mut out = vec![0f32; 2051];
        for at in HEADER_LEN..enc.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut bad = enc.clone();
                bad[at] ^= x;
                let _ = apply_any(&bad, &view, &mut out); // an error or other values: no panic
            }
        }
        // Hand-written blocks over a base whose every exponent falls in context 0.
        let n = 64;
        let base = vec![0.5f32; n];
        let view = BaseView {
            values: &base,
            encoded: None,
        };
        let mut out = vec![0f32; n];
        let empty: [&[u8]; LANES_CODED] = [&[]; LANES_CODED];
        let err = |enc: &[u8]| {
            apply_any(enc, &view, &mut vec![0f32; n])
                .expect_err("refused")
                .to_string()
        };
        // One symbol, no bits: every value is the base's, and nothing is read.
        let ok = coded(n, &[0, 1, 1, 0, 0], empty);
        apply_any(&ok, &view, &mut out).expect("one-symbol context");
        assert!(out.iter().all(|&x| x == 0.5));
        // The same with 12 raw bits per value and no stream: the lanes overrun.
        assert!(err(&coded(n, &[0, 1, 1, 12, 0], empty)).contains("past its stream"));
        // A code of one 1-bit symbol leaves half the table empty.
        let mut lengths = vec![0, 1, 2, 0];
        lengths.extend(std::iter::once(1u8).chain(std::iter::repeat_n(0, 127)));
        assert!(err(&coded(n, &lengths, empty)).contains("complete prefix code"));
        // 17 contexts, a shift of 13, an unknown kind, a value in an unused context.
        assert!(err(&coded(n, &[0, 17], empty)).contains("contexts"));
        assert!(err(&coded(n, &[0, 1, 1, 13, 0], empty)).contains("shift"));
        assert!(err(&coded(n, &[0, 1, 7, 0], empty)).contains("kind"));
        assert!(err(&coded(n, &[0, 1, 0, 0], empty)).contains("does not code"));
        // f32 is not a dtype of the coded layout.
        let mut f32_enc = ok.clone();
        f32_enc[12] = dtype_code(DType::F32) as u8;
        assert!(err(&f32_enc).contains("dtype"));
    }
}
