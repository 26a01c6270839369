//! `calibrated_vq`: vector quantization with a per-tensor codebook learned by
//! importance-weighted k-means.
//!
//! A row is cut into vectors of `d` consecutive weights; groups of `g` weights
//! (`g` a multiple of `d`) share an fp16 scale `s` (the group's RMS, then refitted by
//! weighted least squares once codes are chosen). Each vector is stored as the index of
//! the nearest codeword of a `K = 2^b` entry fp16 codebook learned on the scaled vectors
//! `u = w / s`:
//!
//! ```text
//! ŵ[r, j..j+d] = s[r, group(j)] · C[idx[r, j/d]]
//! ```
//!
//! **Weighting** (Hessian diagonal): with calibration, the importance of weight `(r, j)` is
//! `E[x_j²]` (the diagonal of the layer's input Hessian), so the squared error of a vector is
//! `s² Σₖ h_k (u_k − c_k)²` — its contribution to the layer's output error when inputs are
//! uncorrelated. k-means minimises exactly that: assignment by the weighted distance,
//! codewords as per-coordinate weighted means. Without an importance every weight counts 1.
//!
//! **Fit**: k-means++ initialisation (seeded, deterministic) on up to [`TRAIN_VECTORS`]
//! evenly spaced vectors, at most `iters` Lloyd iterations (stops early when no assignment
//! changes), then every vector is assigned, the scales refitted for those codes, and the
//! vectors reassigned once more.
//!
//! **With `--gptq`** ([`Vq::encode_gptq`]): the same codebook, then GPTQ's sweep — each
//! group's scale from its weights as updated so far, each vector's nearest codeword, each
//! column's error moved onto the columns not yet quantized through the inverse-Hessian
//! factor (as GPTVQ does, with the codebook fixed). The bytes are the same layout.
//!
//! Layout after the header (`group` = g, `group2` = b, `refine` = d): `scales f16[rows ·
//! ceil(cols/g)] | codebook f16[K · d] | indices` (b bits each, one little-endian bit stream
//! over the whole matrix, row-major). Bits/weight: `b/d + 16/g + 16·K·d/(rows·cols)` plus
//! the 16-byte header.

use half::f16;
use rayon::prelude::*;

use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{
    CodecKind, CodecSpec, EncodingRow, Family, GpuDecode, ResidualGroup, MAX_GROUP, MIN_GROUP,
};
use super::traits::{f16_bytes, Codec, Decoder};
use crate::error::{CodecProblem, Corruption};
use crate::{Error, Result};

/// Codec id of `calibrated_vq`.
pub const ID: CodecId = CodecId(6);

/// The `calibrated_vq` row: no kernel yet, so decoded on the CPU and uploaded.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "calibrated_vq",
    decode,
    gpu: GpuDecode::CpuThenUpload,
    apply: None,
    regrid: None,
};

/// The `calibrated_vq` family (default d 2, 8-bit indices, g64).
pub const FAMILY: Family = Family {
    kind: CodecKind::CalibratedVq,
    name: "calibrated_vq",
    preset: |g| CodecSpec::vq(2, 8, g.unwrap_or(64)),
    build: |s, _| Ok(Box::new(Vq::from_spec(s)?)),
    label: |s| format!("vq d{} {}b g{}", s.vq_dim, s.vq_bits, s.group),
    scalar_bits: None,
    vq: true,
    residual_group: ResidualGroup::No,
    weighted: true,
    gptq: Some(|s, w, rows, cols, imp, h, _| {
        Vq::from_spec(s)?.encode_gptq(w, rows, cols, Some(imp), h)
    }),
};

fn invalid(problem: CodecProblem) -> Error {
    Error::invalid_codec("calibrated_vq", problem)
}

fn out_of_range(parameter: &'static str, value: usize, min: usize, max: usize) -> Error {
    invalid(CodecProblem::OutOfRange {
        parameter,
        value: value as f64,
        min: min as f64,
        max: max as f64,
    })
}

/// Vectors used to learn the codebook (evenly spaced over the matrix).
pub const TRAIN_VECTORS: usize = 1 << 16;
/// Default Lloyd iteration cap.
pub const DEFAULT_ITERS: u32 = 20;
/// Largest vector length.
pub const MAX_DIM: usize = 8;
/// Largest index width (K = 4096).
pub const MAX_BITS: u32 = 12;

/// The `calibrated_vq` codec.
#[derive(Debug, Clone)]
pub struct Vq {
    dim: usize,
    bits: u32,
    group: usize,
    iters: u32,
}

impl Vq {
    /// The VQ codec of a spec (`calibrated_vq`, and `tenpak_x`'s second stage).
    pub fn from_spec(s: &CodecSpec) -> Result<Self> {
        Self::new(s.vq_dim, s.vq_bits, s.group, DEFAULT_ITERS)
    }

    /// Vector length `dim`, `bits` per index, one scale per `group` weights.
    pub fn new(dim: usize, bits: u32, group: usize, iters: u32) -> Result<Self> {
        if !(1..=MAX_DIM).contains(&dim) {
            return Err(out_of_range("vector length", dim, 1, MAX_DIM));
        }
        if !(1..=MAX_BITS).contains(&bits) {
            return Err(out_of_range(
                "index bits",
                bits as usize,
                1,
                MAX_BITS as usize,
            ));
        }
        if !(MIN_GROUP..=MAX_GROUP).contains(&group) {
            return Err(out_of_range("scale group", group, MIN_GROUP, MAX_GROUP));
        }
        if !group.is_multiple_of(dim) {
            return Err(invalid(CodecProblem::NotApplicable {
                option: "scale group",
                reason: "must be a multiple of the vector length",
            }));
        }
        Ok(Self {
            dim,
            bits,
            group,
            iters,
        })
    }

    fn k(&self) -> usize {
        1 << self.bits
    }
}

/// Geometry shared by encode and decode.
struct Geo {
    rows: usize,
    cols: usize,
    d: usize,
    g: usize,
    k: usize,
    bits: u32,
}

impl Geo {
    fn gpr(&self) -> usize {
        self.cols.div_ceil(self.g)
    }
    fn vectors(&self) -> usize {
        self.rows * self.cols / self.d
    }
    fn index_bytes(&self) -> usize {
        (self.vectors() * self.bits as usize).div_ceil(8)
    }
    fn len(&self) -> usize {
        HEADER_LEN + 2 * self.rows * self.gpr() + 2 * self.k * self.d + self.index_bytes()
    }
    /// Scale index of vector `v` (row-major over vectors).
    fn scale_of(&self, v: usize) -> usize {
        let per_row = self.cols / self.d;
        let (r, c) = (v / per_row, (v % per_row) * self.d);
        r * self.gpr() + c / self.g
    }
}

/// Weighted squared distance of `u` to codeword `c` with per-coordinate weights `h`.
#[inline(always)]
fn dist(u: &[f32], h: &[f32], c: &[f32]) -> f32 {
    u.iter()
        .zip(h)
        .zip(c)
        .map(|((u, h), c)| h * (u - c) * (u - c))
        .sum()
}

/// Nearest codeword of `u` (weighted).
#[inline]
fn nearest(u: &[f32], h: &[f32], book: &[f32], d: usize) -> u32 {
    let mut best = (f32::INFINITY, 0u32);
    for (i, c) in book.chunks_exact(d).enumerate() {
        let e = dist(u, h, c);
        if e < best.0 {
            best = (e, i as u32);
        }
    }
    best.1
}

/// Assigns every vector of `u` (weights `h`) to its nearest codeword, in parallel.
fn assign(u: &[f32], h: &[f32], book: &[f32], d: usize, out: &mut [u32]) {
    out.par_chunks_mut(1024).enumerate().for_each(|(b, idx)| {
        for (k, slot) in idx.iter_mut().enumerate() {
            let v = (b * 1024 + k) * d;
            *slot = nearest(&u[v..v + d], &h[v..v + d], book, d);
        }
    });
}

/// splitmix64: a small deterministic generator for the k-means++ draws.
fn next(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Weighted k-means (k-means++ start, at most `iters` Lloyd steps) on `n = u.len()/d`
/// vectors; returns the codebook (`k · d`).
pub fn kmeans(u: &[f32], h: &[f32], d: usize, k: usize, iters: u32) -> Vec<f32> {
    let n = u.len() / d;
    let mut book = vec![0f32; k * d];
    if n == 0 {
        return book;
    }
    // k-means++: first centre uniform, then proportional to the weighted distance to the
    // nearest centre so far. Fewer distinct vectors than k leaves duplicates, harmless.
    let mut rng = 0x7e9a_9a11_u64 ^ (n as u64) << 20 ^ k as u64;
    let first = ((next(&mut rng) * n as f64) as usize).min(n - 1);
    book[..d].copy_from_slice(&u[first * d..(first + 1) * d]);
    let mut best: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| dist(&u[i * d..(i + 1) * d], &h[i * d..(i + 1) * d], &book[..d]))
        .collect();
    for c in 1..k {
        let total: f64 = best.iter().map(|&x| x as f64).sum();
        let pick = if total > 0.0 {
            let mut t = next(&mut rng) * total;
            let mut i = 0;
            while i + 1 < n && t >= best[i] as f64 {
                t -= best[i] as f64;
                i += 1;
            }
            i
        } else {
            ((next(&mut rng) * n as f64) as usize).min(n - 1)
        };
        let (head, tail) = book.split_at_mut(c * d);
        let _ = head;
        tail[..d].copy_from_slice(&u[pick * d..(pick + 1) * d]);
        let centre = tail[..d].to_vec();
        best.par_iter_mut().enumerate().for_each(|(i, b)| {
            let e = dist(&u[i * d..(i + 1) * d], &h[i * d..(i + 1) * d], &centre);
            if e < *b {
                *b = e;
            }
        });
    }
    // Lloyd iterations.
    let mut idx = vec![u32::MAX; n];
    let mut prev = vec![u32::MAX; n];
    for _ in 0..iters {
        assign(u, h, &book, d, &mut idx);
        if idx == prev {
            break;
        }
        let mut num = vec![0f64; k * d];
        let mut den = vec![0f64; k * d];
        for (i, &c) in idx.iter().enumerate() {
            let c = c as usize;
            for t in 0..d {
                let (x, w) = (u[i * d + t] as f64, h[i * d + t] as f64);
                num[c * d + t] += w * x;
                den[c * d + t] += w;
            }
        }
        for ((b, n), w) in book.iter_mut().zip(&num).zip(&den) {
            if *w > 0.0 {
                *b = (n / w) as f32;
            }
        }
        std::mem::swap(&mut idx, &mut prev);
    }
    book
}

/// GPTQ sweep for VQ: per row (in parallel), per group a scale from the current weights,
/// per vector the nearest codeword, per column the error fed forward through `u` (the
/// upper factor of the inverse Hessian, row-major `cols × cols`).
#[allow(clippy::too_many_arguments)]
fn sweep(
    w: &[f32],
    h: &[f32],
    cols: usize,
    d: usize,
    g: usize,
    book: &[f32],
    u: &[f32],
    scales: &mut [f32],
    idx: &mut [u32],
) {
    let gpr = cols.div_ceil(g);
    let per_row = cols / d;
    scales
        .par_chunks_mut(gpr)
        .zip(idx.par_chunks_mut(per_row))
        .enumerate()
        .for_each(|(r, (sc, ix))| {
            let mut row = w[r * cols..(r + 1) * cols].to_vec();
            let hr = &h[r * cols..(r + 1) * cols];
            let mut uv = vec![0f32; d];
            let mut hv = vec![0f32; d];
            for (gi, s_slot) in sc.iter_mut().enumerate() {
                let (a, b) = (gi * g, ((gi + 1) * g).min(cols));
                let ms = row[a..b].iter().map(|v| v * v).sum::<f32>() / (b - a) as f32;
                let s = f16::from_f32(ms.sqrt()).to_f32();
                let s = if s > 0.0 && s.is_finite() { s } else { 1.0 };
                *s_slot = s;
                for c in (a..b).step_by(d) {
                    for t in 0..d {
                        uv[t] = row[c + t] / s;
                        hv[t] = hr[c + t];
                    }
                    let code = nearest(&uv, &hv, book, d);
                    ix[c / d] = code;
                    let q = &book[code as usize * d..(code as usize + 1) * d];
                    for (t, qt) in q.iter().enumerate() {
                        let j = c + t;
                        let err = (row[j] - s * qt) / u[j * cols + j];
                        let urow = &u[j * cols + j + 1..(j + 1) * cols];
                        for (wk, uk) in row[j + 1..].iter_mut().zip(urow) {
                            *wk -= err * uk;
                        }
                    }
                }
            }
        });
}

impl Codec for Vq {
    fn describe(&self) -> String {
        format!(
            "vq d{} K{} g{} ({} bits/index)",
            self.dim,
            self.k(),
            self.group,
            self.bits
        )
    }

    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        self.encode_impl(w, rows, cols, importance, None)
    }

    fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        match self.geo(rows, cols) {
            Ok(g) => g.len(),
            Err(_) => usize::MAX / 16,
        }
    }
}

impl Vq {
    /// Encodes with GPTQ-style error feedback (see [`super::gptq`]): the codebook is
    /// learned as in the plain encode; then each row is swept left to right, a group's
    /// scale set to the RMS of its weights as updated so far when the group starts, each
    /// vector assigned its nearest codeword, and each of its columns' errors moved onto the
    /// columns not yet quantized through the inverse-Hessian factor. Same bytes layout.
    pub fn encode_gptq(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
        h: &super::gptq::Hessian,
    ) -> Result<Vec<u8>> {
        super::traits::check_shape(w, rows, cols)?;
        super::traits::check_finite(w)?;
        if h.cols() != cols {
            return Err(invalid(CodecProblem::Statistics {
                reason: format!("Hessian is for {} columns, the tensor has {cols}", h.cols()),
            }));
        }
        self.encode_impl(w, rows, cols, importance, Some(h))
    }

    fn encode_impl(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
        hess: Option<&super::gptq::Hessian>,
    ) -> Result<Vec<u8>> {
        let geo = self.geo(rows, cols)?;
        let (d, g) = (self.dim, self.group);
        let gpr = geo.gpr();
        let ones;
        let h = match importance {
            Some(h) => h,
            None => {
                ones = vec![1f32; w.len()];
                &ones
            }
        };
        // Initial scales: each group's RMS (zero groups get 1, so u stays 0).
        let mut scales: Vec<f32> = (0..rows * gpr)
            .map(|sg| {
                let (r, c) = (sg / gpr, (sg % gpr) * g);
                let x = &w[r * cols + c..r * cols + (c + g).min(cols)];
                let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
                let s = f16::from_f32(ms.sqrt()).to_f32();
                if s > 0.0 && s.is_finite() {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        let scale_at = |scales: &[f32], i: usize| scales[(i / cols) * gpr + (i % cols) / g];
        let normalise = |scales: &[f32]| -> (Vec<f32>, Vec<f32>) {
            let u: Vec<f32> = (0..w.len()).map(|i| w[i] / scale_at(scales, i)).collect();
            let hw: Vec<f32> = (0..w.len())
                .map(|i| {
                    let s = scale_at(scales, i);
                    h[i] * s * s
                })
                .collect();
            (u, hw)
        };
        let (mut u, mut hw) = normalise(&scales);
        // Learn the codebook on evenly spaced vectors.
        let n = geo.vectors();
        let take = n.min(TRAIN_VECTORS);
        let mut tu = Vec::with_capacity(take * d);
        let mut th = Vec::with_capacity(take * d);
        for t in 0..take {
            let v = t * n / take;
            tu.extend_from_slice(&u[v * d..(v + 1) * d]);
            th.extend_from_slice(&hw[v * d..(v + 1) * d]);
        }
        let book = kmeans(&tu, &th, d, geo.k, self.iters);
        drop((tu, th));
        let book16: Vec<f16> = book.iter().map(|&x| f16::from_f32(x)).collect();
        if book16.iter().any(|x| !x.is_finite()) {
            return Err(invalid(CodecProblem::Fp16Range { what: "codebook" }));
        }
        let book: Vec<f32> = book16.iter().map(|x| x.to_f32()).collect();
        let mut idx = vec![0u32; n];
        if let Some(hs) = hess {
            drop((u, hw));
            sweep(w, h, cols, d, g, &book, hs.factor(), &mut scales, &mut idx);
        } else {
            assign(&u, &hw, &book, d, &mut idx);
            // Refit each group's scale for its codes (weighted least squares:
            // s = Σ h·w·c / Σ h·c²), then reassign under the new scales.
            let refit = |idx: &[u32], scales: &mut [f32]| {
                let per_row = cols / d;
                scales.par_iter_mut().enumerate().for_each(|(sg, s)| {
                    let (r, c0) = (sg / gpr, (sg % gpr) * g);
                    let (mut num, mut den) = (0f64, 0f64);
                    for c in (c0..(c0 + g).min(cols)).step_by(d) {
                        let code = &book[idx[r * per_row + c / d] as usize * d..][..d];
                        let i = r * cols + c;
                        for ((hv, wv), cv) in h[i..i + d].iter().zip(&w[i..i + d]).zip(code) {
                            num += (hv * wv * cv) as f64;
                            den += (hv * cv * cv) as f64;
                        }
                    }
                    if den > 0.0 {
                        let v = f16::from_f32((num / den) as f32).to_f32();
                        if v.is_finite() && v != 0.0 {
                            *s = v;
                        }
                    }
                });
            };
            refit(&idx, &mut scales);
            (u, hw) = normalise(&scales);
            assign(&u, &hw, &book, d, &mut idx);
            drop((u, hw));
            let _ = scale_at;
        }
        let scales16: Vec<f16> = scales.iter().map(|&s| f16::from_f32(s)).collect();
        if scales16.iter().any(|x| !x.is_finite()) {
            return Err(invalid(CodecProblem::Fp16Range {
                what: "a group's scale",
            }));
        }
        let mut buf = Vec::with_capacity(geo.len());
        buf.extend_from_slice(&self.header(rows, cols).to_bytes());
        buf.extend(f16_bytes(&scales16));
        buf.extend(f16_bytes(&book16));
        super::group::pack_bits(idx.iter().copied(), self.bits, &mut buf);
        debug_assert_eq!(buf.len(), geo.len());
        Ok(buf)
    }

    fn geo(&self, rows: usize, cols: usize) -> Result<Geo> {
        if !cols.is_multiple_of(self.dim) {
            return Err(invalid(CodecProblem::Geometry {
                rows,
                cols,
                reason: format!(
                    "columns are not a multiple of the vector length {}",
                    self.dim
                ),
            }));
        }
        Ok(Geo {
            rows,
            cols,
            d: self.dim,
            g: self.group,
            k: self.k(),
            bits: self.bits,
        })
    }

    fn header(&self, rows: usize, cols: usize) -> Header {
        Header {
            id: ID,
            symmetric: false,
            group: self.group as u16,
            rows: rows as u32,
            cols: cols as u32,
            group2: self.bits as u16,
            refine: self.dim as u8,
        }
    }
}

/// Decodes a `calibrated_vq` encoding.
pub(crate) fn decode(h: &Header, bytes: &[u8], out: &mut [f32], _: Decoder) -> Result<()> {
    let (d, bits, g) = (h.refine as usize, h.group2 as u32, h.group as usize);
    let field = |field, value: usize| {
        Error::corrupt(
            ENCODING.name,
            Corruption::Field {
                field,
                value: value as u64,
            },
        )
    };
    if !(1..=MAX_DIM).contains(&d) {
        return Err(field("vector length", d));
    }
    let geo = Vq::new(d, bits, g, 0)
        .and_then(|c| c.geo(h.rows as usize, h.cols as usize))
        .map_err(|_| match (1..=MAX_BITS).contains(&bits) {
            false => field("index bits", bits as usize),
            true if !(h.cols as usize).is_multiple_of(d) => {
                field("columns (not a multiple of d)", h.cols as usize)
            }
            true => field("scale group", g),
        })?;
    if bytes.len() != geo.len() {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Length {
                what: "bytes",
                expected: geo.len() as u64,
                actual: bytes.len() as u64,
            },
        ));
    }
    let body = &bytes[HEADER_LEN..];
    let ns = geo.rows * geo.gpr();
    let (sc, rest) = body.split_at(2 * ns);
    let (bk, ix) = rest.split_at(2 * geo.k * d);
    let (mut scales, mut book) = (Vec::new(), Vec::new());
    super::group::f16s_to_f32(sc, &mut scales);
    super::group::f16s_to_f32(bk, &mut book);
    let mask = (1u64 << bits) - 1;
    out.par_chunks_mut(d * 1024)
        .enumerate()
        .for_each(|(blk, o)| {
            for (k, v) in o.chunks_exact_mut(d).enumerate() {
                let vi = blk * 1024 + k;
                let bit = vi * bits as usize;
                let mut word = 0u64;
                for (t, b) in ix[bit / 8..(bit / 8 + 3).min(ix.len())].iter().enumerate() {
                    word |= (*b as u64) << (8 * t);
                }
                let code = ((word >> (bit % 8)) & mask) as usize;
                let s = scales[geo.scale_of(vi)];
                for (x, c) in v.iter_mut().zip(&book[code * d..(code + 1) * d]) {
                    *x = s * c;
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(a: &[f32], b: &[f32], h: Option<&[f32]>) -> f64 {
        a.iter()
            .zip(b)
            .enumerate()
            .map(|(i, (x, y))| h.map_or(1.0, |h| h[i] as f64) * ((x - y) as f64).powi(2))
            .sum()
    }

    #[test]
    fn roundtrip_and_exact_length() {
        let (rows, cols) = (24, 96);
        let w = crate::rng::randn(rows * cols, 3, 1.0);
        let c = Vq::new(2, 6, 32, DEFAULT_ITERS).expect("test");
        let enc = c.encode(&w, rows, cols, None).expect("test");
        assert_eq!(enc.len(), c.encoded_len(rows, cols));
        let dec = crate::codec::decode_vec(&enc).expect("test");
        let rel = (sse(&w, &dec, None) / sse(&w, &vec![0.0; w.len()], None)).sqrt();
        assert!(rel < 0.25, "relative error {rel}");
        // Truncated or extended encodings are refused.
        assert!(matches!(
            crate::codec::decode_vec(&enc[..enc.len() - 1]),
            Err(crate::Error::CorruptEncoding { .. })
        ));
    }

    #[test]
    fn vectors_on_a_small_codebook_come_back_exactly() {
        // Four distinct pairs, scaled per row: a 2-bit codebook of 2-vectors holds them.
        let pairs = [[1.0f32, -1.0], [0.5, 0.5], [-0.25, 1.0], [0.0, -0.5]];
        let (rows, cols) = (8, 32);
        let w: Vec<f32> = (0..rows * cols / 2)
            .flat_map(|v| pairs[(v * 7 + v / 3) % 4])
            .collect();
        let c = Vq::new(2, 2, 32, 50).expect("test");
        let dec =
            crate::codec::decode_vec(&c.encode(&w, rows, cols, None).expect("test")).expect("test");
        assert!(sse(&w, &dec, None) < 1e-4, "{}", sse(&w, &dec, None));
    }

    #[test]
    fn importance_weighting_lowers_the_weighted_error() {
        let (rows, cols) = (64, 128);
        let w = crate::rng::randn(rows * cols, 9, 1.0);
        // A few columns matter 100× more.
        let h: Vec<f32> = (0..rows * cols)
            .map(|i| if i % cols < 8 { 100.0 } else { 1.0 })
            .collect();
        let c = Vq::new(2, 4, 64, DEFAULT_ITERS).expect("test");
        let plain =
            crate::codec::decode_vec(&c.encode(&w, rows, cols, None).expect("test")).expect("test");
        let weighted = crate::codec::decode_vec(&c.encode(&w, rows, cols, Some(&h)).expect("test"))
            .expect("test");
        let (p, q) = (sse(&w, &plain, Some(&h)), sse(&w, &weighted, Some(&h)));
        assert!(q < 0.8 * p, "weighted {q} vs plain {p}");
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(matches!(
            Vq::new(3, 8, 64, 5),
            Err(crate::Error::InvalidCodec { .. })
        )); // 64 is not a multiple of 3
        assert!(matches!(
            Vq::new(2, 13, 64, 5),
            Err(crate::Error::InvalidCodec { .. })
        ));
        assert!(matches!(
            Vq::new(9, 8, 72, 5),
            Err(crate::Error::InvalidCodec { .. })
        ));
        let c = Vq::new(4, 8, 64, 5).expect("test");
        assert!(matches!(
            c.encode(&[0.0; 30], 3, 10, None),
            Err(crate::Error::InvalidCodec {
                problem: crate::error::CodecProblem::Geometry { .. },
                ..
            })
        )); // 10 % 4 != 0
            // The spec says so before any encode, so a bit budget can price it out.
        for spec in [
            crate::codec::CodecSpec::vq(4, 8, 64),
            crate::codec::CodecSpec::tenpak_x(2, 4, 8, 64, 0),
        ] {
            assert!(matches!(
                spec.encoded_len(3, 10),
                Err(crate::Error::InvalidCodec {
                    problem: crate::error::CodecProblem::Geometry { .. },
                    ..
                })
            ));
        }
    }
}
