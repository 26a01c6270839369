//! `tenpak_x`: importance-weighted low rank + vector-quantized residual (+ optional INT
//! residual), the seed's `W ≈ L·R + Codebook[idx] + Residual_INT`.
//!
//! Two building blocks, each a codec id of its own:
//! - **`LowRank`** (`L·R`, fp16): the rank-`r` approximation of `W·diag(c)` with column
//!   weights `c_j = sqrt(mean_r importance[r, j])` (√E[x_j²] with calibration, so the
//!   directions that carry most output energy are kept), found by subspace iteration
//!   ([`POWER_ITERS`] rounds of `Q ← orth(A·Aᵀ·Q)` from a seeded Gaussian start, then
//!   `B = Qᵀ·A`); stored as `L = Q` (`rows × r`) and `R = B·diag(1/c)` (`r × cols`).
//!   Layout after the header (`group` = r): `L f16[rows·r] | R f16[r·cols]`;
//!   `16·r·(rows + cols)` bits.
//! - **`Sum`**: encodings of the same shape whose decodes add up. Layout after the header
//!   (`group2` = n): n × (`length u64 | encoding`); 8 bytes per part.
//!
//! `tenpak_x` = `Sum[LowRank(r), Vq(d, b, g) of W − L·R, (IntN(g₂) of what is left)]`, every
//! stage fitted to the residual of the ones before, with the same importance. Bits/weight:
//! `16·r·(rows+cols)/(rows·cols) + b/d + 16/g + 16·K·d/(rows·cols) [+ bits₂ + 32/g₂]`
//! plus 16-byte headers and 8-byte part lengths.

use half::f16;
use rayon::prelude::*;

use super::header::{CodecId, Header, HEADER_LEN};
use super::int4::Int4;
use super::spec::{CodecKind, CodecSpec, EncodingRow, Family, GpuDecode, ResidualGroup};
use super::traits::{f16_bytes, Codec, Decoder};
use super::vq::Vq;
use crate::error::{CodecProblem, Corruption};
use crate::{Error, Result};

/// Codec id of a low-rank term `L·R`.
pub const ID: CodecId = CodecId(7);
/// Codec id of a sum of same-shape encodings.
pub const SUM_ID: CodecId = CodecId(8);

/// The low-rank row: no kernel yet, so decoded on the CPU and uploaded.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "low rank",
    decode,
    gpu: GpuDecode::CpuThenUpload,
    apply: None,
    regrid: None,
};

/// The sum row (`tenpak_x`'s container): decoded on the CPU and uploaded.
pub const ENCODING_SUM: EncodingRow = EncodingRow {
    id: SUM_ID,
    name: "sum",
    decode: decode_sum,
    gpu: GpuDecode::CpuThenUpload,
    apply: None,
    regrid: None,
};

/// The `tenpak_x` family: rank 8 + VQ (d 2, 7-bit, g64), no INT2 stage by default.
pub const FAMILY: Family = Family {
    kind: CodecKind::TenpakX,
    name: "tenpak_x",
    preset: |g| CodecSpec::tenpak_x(8, 2, 7, g.unwrap_or(64), 0),
    build: |s, decode| {
        let (lr, v, i2) = tenpak_x_parts(s)?;
        let mut parts: Vec<Box<dyn Codec>> = vec![Box::new(lr), Box::new(v)];
        parts.extend(i2.map(|c| Box::new(c) as Box<dyn Codec>));
        Ok(Box::new(Stages { parts, decode }))
    },
    label: |s| {
        format!(
            "x r{} vq d{} {}b g{}{}",
            s.rank,
            s.vq_dim,
            s.vq_bits,
            s.group,
            if s.residual_group > 0 {
                format!(" +int2 g{}", s.residual_group)
            } else {
                String::new()
            }
        )
    },
    scalar_bits: None,
    vq: true,
    residual_group: ResidualGroup::Optional,
    weighted: true,
    gptq: Some(tenpak_x_gptq),
};

/// A corrupt-encoding error naming this file's codec of `h`.
fn corrupt(h: &Header, problem: Corruption) -> Error {
    let name = if h.id == SUM_ID {
        ENCODING_SUM.name
    } else {
        ENCODING.name
    };
    Error::corrupt(name, problem)
}

/// `tenpak_x`'s stages: low rank, VQ, and the INT2 stage when `residual_group > 0`.
fn tenpak_x_parts(s: &CodecSpec) -> Result<(LowRank, Vq, Option<Int4>)> {
    let i2 = (s.residual_group > 0)
        .then(|| Int4::with_bits(2, s.residual_group, false, s.refine_iters))
        .transpose()?;
    Ok((LowRank::new(s.rank)?, Vq::from_spec(s)?, i2))
}

/// `tenpak_x` with GPTQ: the same stages as its `build`, the VQ stage with error feedback
/// on the low-rank residual.
fn tenpak_x_gptq(
    s: &CodecSpec,
    w: &[f32],
    rows: usize,
    cols: usize,
    imp: &[f32],
    h: &super::gptq::Hessian,
    decode: Decoder,
) -> Result<Vec<u8>> {
    let (lr, v, i2) = tenpak_x_parts(s)?;
    let lr_f = |r: &[f32]| lr.encode_checked(r, rows, cols, Some(imp));
    let vq_f = |r: &[f32]| v.encode_gptq(r, rows, cols, Some(imp), h);
    let i2_f;
    let mut st: Vec<StageFn<'_>> = vec![&lr_f, &vq_f];
    if let Some(c) = &i2 {
        i2_f = |r: &[f32]| c.encode_checked(r, rows, cols, Some(imp));
        st.push(&i2_f);
    }
    encode_stages(&st, w, rows, cols, decode)
}

/// Subspace-iteration rounds.
pub const POWER_ITERS: usize = 8;
/// Largest rank.
pub const MAX_RANK: usize = 1024;

/// Orthonormalises the `r` columns of `q` (`n × r`, row-major) in place (modified
/// Gram–Schmidt, twice for stability); a column that vanishes becomes zero.
fn orthonormalise(q: &mut [f32], n: usize, r: usize) {
    for _ in 0..2 {
        for c in 0..r {
            for p in 0..c {
                let dot: f64 = (0..n).map(|i| (q[i * r + c] * q[i * r + p]) as f64).sum();
                for i in 0..n {
                    q[i * r + c] -= dot as f32 * q[i * r + p];
                }
            }
            let norm = (0..n)
                .map(|i| (q[i * r + c] as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            for i in 0..n {
                q[i * r + c] = if norm > 1e-20 {
                    (q[i * r + c] as f64 / norm) as f32
                } else {
                    0.0
                };
            }
        }
    }
}

/// `a` (`rows × cols`) times `x` (`cols × r`) → `rows × r`.
fn mul(a: &[f32], rows: usize, cols: usize, x: &[f32], r: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * r];
    out.par_chunks_mut(r).enumerate().for_each(|(i, o)| {
        let ar = &a[i * cols..(i + 1) * cols];
        for (j, &v) in ar.iter().enumerate() {
            if v != 0.0 {
                for (o, xv) in o.iter_mut().zip(&x[j * r..(j + 1) * r]) {
                    *o += v * xv;
                }
            }
        }
    });
    out
}

/// `aᵀ` (`a` is `rows × cols`) times `y` (`rows × r`) → `cols × r`.
fn mul_t(a: &[f32], rows: usize, cols: usize, y: &[f32], r: usize) -> Vec<f32> {
    let chunk = 64;
    let parts: Vec<Vec<f32>> = (0..rows.div_ceil(chunk))
        .into_par_iter()
        .map(|b| {
            let mut out = vec![0f32; cols * r];
            for i in b * chunk..((b + 1) * chunk).min(rows) {
                let yr = &y[i * r..(i + 1) * r];
                for (j, &v) in a[i * cols..(i + 1) * cols].iter().enumerate() {
                    for (o, yv) in out[j * r..(j + 1) * r].iter_mut().zip(yr) {
                        *o += v * yv;
                    }
                }
            }
            out
        })
        .collect();
    let mut out = vec![0f32; cols * r];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Rank-`r` factors `(L, R)` of `w` under column weights `c` (see the module docs).
pub fn factor(w: &[f32], rows: usize, cols: usize, r: usize, c: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = w.iter().enumerate().map(|(i, x)| x * c[i % cols]).collect();
    let mut q = crate::rng::randn(rows * r, 0x10a7 + r as u64, 1.0);
    orthonormalise(&mut q, rows, r);
    for _ in 0..POWER_ITERS {
        let z = mul_t(&a, rows, cols, &q, r);
        q = mul(&a, rows, cols, &z, r);
        orthonormalise(&mut q, rows, r);
    }
    // B = Qᵀ A (r × cols), then R = B · diag(1/c).
    let bt = mul_t(&a, rows, cols, &q, r); // cols × r = (Qᵀ A)ᵀ
    let mut rr = vec![0f32; r * cols];
    for j in 0..cols {
        let inv = if c[j] > 0.0 { 1.0 / c[j] } else { 0.0 };
        for k in 0..r {
            rr[k * cols + j] = bt[j * r + k] * inv;
        }
    }
    (q, rr)
}

/// The `LowRank` codec alone (rank `r`, importance-weighted).
#[derive(Debug, Clone)]
pub struct LowRank {
    rank: usize,
}

impl LowRank {
    /// Rank `r` in 1..=[`MAX_RANK`].
    pub fn new(rank: usize) -> Result<Self> {
        if !(1..=MAX_RANK).contains(&rank) {
            return Err(Error::invalid_codec(
                "tenpak_x",
                CodecProblem::OutOfRange {
                    parameter: "rank",
                    value: rank as f64,
                    min: 1.0,
                    max: MAX_RANK as f64,
                },
            ));
        }
        Ok(Self { rank })
    }
}

impl Codec for LowRank {
    fn describe(&self) -> String {
        format!("low rank {}", self.rank)
    }

    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        let r = self.rank.min(rows).min(cols).max(1);
        let c = column_weights(importance, rows, cols);
        let (l, rr) = factor(w, rows, cols, r, &c);
        encode_factors(&l, &rr, rows, cols, r)
    }

    fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        let r = self.rank.min(rows).min(cols).max(1);
        HEADER_LEN + 2 * r * (rows + cols)
    }
}

/// The `LowRank` encoding of given factors `L` (`rows × r`) and `R` (`r × cols`), row
/// major, stored as fp16 (an adapter's own factors, or fitted ones).
pub fn encode_factors(
    l: &[f32],
    rr: &[f32],
    rows: usize,
    cols: usize,
    r: usize,
) -> Result<Vec<u8>> {
    if l.len() != rows * r || rr.len() != r * cols || r == 0 || r > u16::MAX as usize {
        return Err(Error::invalid_codec(
            "low rank",
            CodecProblem::Geometry {
                rows,
                cols,
                reason: format!(
                    "factors of rank {r} need {} + {} values; L has {} and R {}",
                    rows * r,
                    r * cols,
                    l.len(),
                    rr.len()
                ),
            },
        ));
    }
    let l16: Vec<f16> = l.iter().map(|&x| f16::from_f32(x)).collect();
    let r16: Vec<f16> = rr.iter().map(|&x| f16::from_f32(x)).collect();
    if l16.iter().chain(&r16).any(|x| !x.is_finite()) {
        return Err(Error::invalid_codec(
            "tenpak_x",
            CodecProblem::Fp16Range {
                what: "low-rank factor",
            },
        ));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN + 2 * r * (rows + cols));
    buf.extend_from_slice(
        &Header {
            group: r as u16,
            ..Header::new(ID, rows, cols)
        }
        .to_bytes(),
    );
    buf.extend(f16_bytes(&l16));
    buf.extend(f16_bytes(&r16));
    Ok(buf)
}

/// Decodes a `LowRank` encoding: `out = L·R`.
pub(crate) fn decode(h: &Header, bytes: &[u8], out: &mut [f32], _: Decoder) -> Result<()> {
    let (rows, cols, r) = (h.rows as usize, h.cols as usize, h.group as usize);
    if r == 0 {
        return Err(corrupt(
            h,
            Corruption::Field {
                field: "rank",
                value: 0,
            },
        ));
    }
    if bytes.len() != HEADER_LEN + 2 * r * (rows + cols) {
        return Err(corrupt(
            h,
            Corruption::Length {
                what: "bytes",
                expected: (HEADER_LEN + 2 * r * (rows + cols)) as u64,
                actual: bytes.len() as u64,
            },
        ));
    }
    let (mut l, mut rr) = (Vec::new(), Vec::new());
    super::group::f16s_to_f32(&bytes[HEADER_LEN..HEADER_LEN + 2 * rows * r], &mut l);
    super::group::f16s_to_f32(&bytes[HEADER_LEN + 2 * rows * r..], &mut rr);
    if cols == 0 {
        return Ok(());
    }
    product(&l, &rr, r, cols, out);
    Ok(())
}

/// Per-column weights of the factorisation: the root mean importance of each column
/// (1 everywhere without importance).
pub fn column_weights(importance: Option<&[f32]>, rows: usize, cols: usize) -> Vec<f32> {
    match importance {
        Some(h) => {
            let mut m = vec![0f64; cols];
            for row in h.chunks(cols.max(1)) {
                for (a, v) in m.iter_mut().zip(row) {
                    *a += *v as f64;
                }
            }
            m.iter()
                .map(|v| ((v / rows.max(1) as f64).sqrt()) as f32)
                .collect()
        }
        None => vec![1.0; cols],
    }
}

/// `out = L·R` (`L` is `rows × r`, `R` is `r × cols`, `out` `rows × cols`), rows in parallel.
pub fn product(l: &[f32], rr: &[f32], r: usize, cols: usize, out: &mut [f32]) {
    out.par_chunks_mut(cols).enumerate().for_each(|(i, o)| {
        o.fill(0.0);
        for k in 0..r {
            let lk = l[i * r + k];
            for (x, v) in o.iter_mut().zip(&rr[k * cols..(k + 1) * cols]) {
                *x += lk * v;
            }
        }
    });
}

/// A `Sum` of same-shape encodings.
pub fn sum(parts: &[Vec<u8>], rows: usize, cols: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + parts.iter().map(|p| 8 + p.len()).sum::<usize>());
    buf.extend_from_slice(
        &Header {
            group2: parts.len() as u16,
            ..Header::new(SUM_ID, rows, cols)
        }
        .to_bytes(),
    );
    for p in parts {
        buf.extend_from_slice(&(p.len() as u64).to_le_bytes());
        buf.extend_from_slice(p);
    }
    buf
}

/// Decodes a `Sum` encoding.
pub(crate) fn decode_sum(h: &Header, bytes: &[u8], out: &mut [f32], inner: Decoder) -> Result<()> {
    let mut rest = &bytes[HEADER_LEN..];
    let mut tmp = Vec::new();
    for k in 0..h.group2 {
        let Some(len) = rest.get(..8) else {
            return Err(corrupt(
                h,
                Corruption::Truncated {
                    what: "part length",
                    needed: 8,
                    len: rest.len() as u64,
                },
            ));
        };
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(len);
        let len = u64::from_le_bytes(len8);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len() - 8)
            .ok_or_else(|| {
                corrupt(
                    h,
                    Corruption::Length {
                        what: "part bytes (at most what follows)",
                        expected: (rest.len() - 8) as u64,
                        actual: len,
                    },
                )
            })?;
        let part = &rest[8..8 + len];
        let ph = Header::parse(part)?;
        if ph.id == SUM_ID || ph.rows != h.rows || ph.cols != h.cols {
            return Err(corrupt(
                h,
                Corruption::Structure("sum part is nested or differently shaped"),
            ));
        }
        if k == 0 {
            inner(part, out)?;
        } else {
            tmp.resize(out.len(), 0.0);
            inner(part, &mut tmp)?;
            for (o, t) in out.iter_mut().zip(&tmp) {
                *o += t;
            }
        }
        rest = &rest[8 + len..];
    }
    if h.group2 == 0 {
        return Err(corrupt(
            h,
            Corruption::Field {
                field: "parts",
                value: 0,
            },
        ));
    }
    if !rest.is_empty() {
        return Err(corrupt(
            h,
            Corruption::Length {
                what: "trailing bytes",
                expected: 0,
                actual: rest.len() as u64,
            },
        ));
    }
    Ok(())
}

/// One stage's encoder: the residual left by the stages before → its encoding.
pub type StageFn<'a> = &'a dyn Fn(&[f32]) -> Result<Vec<u8>>;

/// An owned [`StageFn`].
pub type BoxedStage<'a> = Box<dyn Fn(&[f32]) -> Result<Vec<u8>> + 'a>;

/// Encodes `w` as the sum of `stages`, each fitted to what the ones before left.
pub fn encode_stages(
    stages: &[StageFn<'_>],
    w: &[f32],
    rows: usize,
    cols: usize,
    decode: Decoder,
) -> Result<Vec<u8>> {
    let mut resid = w.to_vec();
    let mut parts = Vec::with_capacity(stages.len());
    for (k, st) in stages.iter().enumerate() {
        let enc = st(&resid)?;
        if k + 1 < stages.len() {
            let mut dec = vec![0f32; resid.len()];
            decode(&enc, &mut dec)?;
            for (r, d) in resid.iter_mut().zip(&dec) {
                *r -= d;
            }
        }
        parts.push(enc);
    }
    Ok(sum(&parts, rows, cols))
}

/// Stages whose decodes add up, each fitted to the residual of those before
/// (`tenpak_x`'s codec); `decode` (the table's dispatcher) decodes each stage's encoding
/// to find what the next one is fitted to.
pub struct Stages {
    /// The stages, in order.
    pub parts: Vec<Box<dyn Codec>>,
    /// Decodes any stage's encoding.
    pub decode: Decoder,
}

impl Codec for Stages {
    fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|c| c.describe())
            .collect::<Vec<_>>()
            .join(" + ")
    }

    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        let fs: Vec<BoxedStage<'_>> = self
            .parts
            .iter()
            .map(|c| {
                Box::new(move |r: &[f32]| c.encode_checked(r, rows, cols, importance))
                    as BoxedStage<'_>
            })
            .collect();
        let st: Vec<StageFn<'_>> = fs.iter().map(|f| f.as_ref()).collect();
        encode_stages(&st, w, rows, cols, self.decode)
    }

    fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        let st: Vec<&dyn Codec> = self.parts.iter().map(|c| c.as_ref()).collect();
        stages_len(&st, rows, cols)
    }
}

/// Bytes of a `Sum` of `stages` for a `[rows, cols]` matrix.
pub fn stages_len(stages: &[&dyn Codec], rows: usize, cols: usize) -> usize {
    HEADER_LEN
        + stages
            .iter()
            .map(|s| 8 + s.encoded_len(rows, cols))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_rank_matrix_is_recovered() {
        // W = A·B with rank 3: rank 3 factors reproduce it (up to fp16).
        let (rows, cols, r) = (40, 56, 3);
        let a = crate::rng::randn(rows * r, 1, 1.0);
        let b = crate::rng::randn(r * cols, 2, 1.0);
        let mut w = vec![0f32; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                w[i * cols + j] = (0..r).map(|k| a[i * r + k] * b[k * cols + j]).sum();
            }
        }
        let enc = LowRank::new(3)
            .expect("test")
            .encode(&w, rows, cols, None)
            .expect("test");
        let dec = crate::codec::decode_vec(&enc).expect("test");
        let rel = crate::quantize::rel_error(&w, &dec);
        assert!(rel < 2e-3, "relative error {rel}");
        assert!(matches!(
            crate::codec::decode_vec(&enc[..enc.len() - 2]),
            Err(crate::Error::CorruptEncoding { .. })
        ));
    }

    #[test]
    fn stages_add_up_and_each_lowers_the_error() {
        let (rows, cols) = (32, 64);
        let w = crate::rng::randn(rows * cols, 4, 1.0);
        let lr = LowRank::new(4).expect("test");
        let vq = super::super::vq::Vq::new(2, 6, 32, 20).expect("test");
        let i2 = super::super::Int4::with_bits(2, 32, false, 5).expect("test");
        let mut last = f64::INFINITY;
        for n in 1..=3 {
            let st: Vec<&dyn Codec> = [&lr as &dyn Codec, &vq, &i2][..n].to_vec();
            let fs: Vec<BoxedStage<'_>> = st
                .iter()
                .map(|c| {
                    let c = *c;
                    Box::new(move |r: &[f32]| c.encode_checked(r, rows, cols, None))
                        as BoxedStage<'_>
                })
                .collect();
            let fr: Vec<StageFn<'_>> = fs.iter().map(|f| f.as_ref()).collect();
            let enc = encode_stages(&fr, &w, rows, cols, crate::codec::decode).expect("test");
            assert_eq!(enc.len(), stages_len(&st, rows, cols));
            let e = crate::quantize::rel_error(&w, &crate::codec::decode_vec(&enc).expect("test"));
            assert!(e < last, "{n} stages: {e} >= {last}");
            last = e;
        }
        let enc = Stages {
            parts: vec![Box::new(lr), Box::new(vq)],
            decode: crate::codec::decode,
        }
        .encode(&w, rows, cols, None)
        .expect("test");
        let mut bad = enc.clone();
        bad[HEADER_LEN] ^= 0xff; // first part length
        assert!(matches!(
            crate::codec::decode_vec(&bad),
            Err(crate::Error::CorruptEncoding { .. })
        ));
    }
}
