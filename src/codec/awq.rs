//! Activation-aware scaling (AWQ, Lin et al., 2024) around an inner encoding: how
//! `int4_awq` (and `--awq` on any `intN` codec) stores its per-input-channel scales.
//!
//! A linear layer computes `y = W x`. Scaling input channel `j` of `W` by `s_j` and its
//! input by `1/s_j` changes nothing in exact arithmetic, but the quantizer then sees
//! `W' = W·diag(s)`: channels with large activations (`s_j > 1`) get finer steps relative
//! to their weights, so their error — the one that reaches the output — shrinks. Here the
//! inverse is applied to the weights at decode instead of to the activations, so the
//! format stays self-contained:
//!
//! ```text
//! ŵ[r, j] = decode(inner)[r, j] · m_j          m_j = 1 / s_j  (fp16, stored)
//! s_j = a_j^α / sqrt(max a^α · min a^α)         a_j = E|x_j| (calibration)
//! ```
//!
//! **Search** (as AWQ): α on a grid of [`GRID`] points in [0, 1); for each, up to
//! [`SEARCH_ROWS`] evenly spaced rows are scaled, encoded with the inner codec and decoded,
//! and the layer's output error on the calibration activations is measured:
//! `Σ_r Δ_r H Δ_rᵀ` with `H = E[x xᵀ]` when the statistics hold the full XᵀX, otherwise
//! `Σ_r Σ_j E[x_j²] Δ_rj²`. α = 0 (no scaling) is on the grid, so the choice is never
//! worse than the inner codec alone on the search rows. The inner codec's importance is
//! the Hessian diagonal in the scaled space (`E[x_j²] / s_j²`), so salient weights are
//! chosen by their output error contribution `E[x_j²] · w²` when it keeps fp16 outliers.
//!
//! Layout after the header (`id = Scaled`, rows, cols): `m f16[cols] | inner encoding`.
//! Cost: `16 / rows` bits per weight on top of the inner codec.

use half::f16;
use rayon::prelude::*;

use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{CodecSpec, EncodingRow, GpuDecode, DEFAULT_AWQ_OUTLIERS};
use super::traits::{f16_bytes, Codec, Decoder, Requantizer};
use crate::error::Corruption;
use crate::{Error, Result};

/// Codec id of the AWQ multiplier wrapper ("scaled").
pub const ID: CodecId = CodecId(5);

/// The wrapper's row: no kernel yet, so decoded on the CPU and uploaded.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "scaled",
    decode,
    gpu: GpuDecode::CpuThenUpload,
    apply: None,
    regrid: Some(regrid),
};

/// `--codec int4_awq`: `int4` (default g128) + AWQ + the 0.1 % most salient weights as fp16.
pub fn int4_awq_preset(group: Option<usize>) -> CodecSpec {
    CodecSpec {
        awq: true,
        outlier_fraction: DEFAULT_AWQ_OUTLIERS,
        ..CodecSpec::int4(group.unwrap_or(128))
    }
}

/// Grid points of α in [0, 1).
pub const GRID: usize = 20;
/// Rows used to score each α.
pub const SEARCH_ROWS: usize = 128;

/// What AWQ needs from calibration for one layer.
pub struct Activations<'a> {
    /// `E|x_j|` per input channel.
    pub abs_mean: &'a [f32],
    /// `E[x_j²]` per input channel.
    pub sq_mean: &'a [f32],
    /// `E[x xᵀ]` (`cols × cols`), when the statistics hold it.
    pub xtx: Option<&'a [f32]>,
}

/// Output error of `delta` (`rows × cols`) under the activations.
fn output_error(delta: &[f32], cols: usize, act: &Activations<'_>) -> f64 {
    delta
        .par_chunks(cols)
        .map(|d| match act.xtx {
            Some(h) => {
                let mut e = 0f64;
                for (j, dj) in d.iter().enumerate() {
                    if *dj == 0.0 {
                        continue;
                    }
                    let hj = &h[j * cols..(j + 1) * cols];
                    let dot: f32 = hj.iter().zip(d).map(|(a, b)| a * b).sum();
                    e += (*dj * dot) as f64;
                }
                e
            }
            None => d
                .iter()
                .zip(act.sq_mean)
                .map(|(x, h)| (h * x * x) as f64)
                .sum(),
        })
        .sum()
}

/// The stored multipliers `m = 1/s` (fp16) and the scales `s` that match them exactly.
fn scales_for(alpha: f64, act: &Activations<'_>) -> (Vec<f16>, Vec<f32>) {
    let pw: Vec<f64> = act
        .abs_mean
        .iter()
        .map(|&a| (a.max(1e-8) as f64).powf(alpha))
        .collect();
    let (lo, hi) = pw
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
    let norm = (lo * hi).sqrt().max(1e-30);
    let m: Vec<f16> = pw
        .iter()
        .map(|&p| f16::from_f64((norm / p).clamp(1e-4, 1e4)))
        .collect();
    let s = m.iter().map(|x| 1.0 / x.to_f32()).collect();
    (m, s)
}

/// Scaled copy of `w` and the inner codec's importance in the scaled space.
fn scaled(w: &[f32], cols: usize, s: &[f32], sq_mean: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let ws = w.iter().enumerate().map(|(i, x)| x * s[i % cols]).collect();
    let imp = (0..w.len())
        .map(|i| {
            let j = i % cols;
            sq_mean[j] / (s[j] * s[j])
        })
        .collect();
    (ws, imp)
}

/// Picks α for `w` under `inner`; returns (α, multipliers, scales).
pub fn search(
    inner: &dyn Codec,
    w: &[f32],
    rows: usize,
    cols: usize,
    act: &Activations<'_>,
    decode: Decoder,
) -> Result<(f64, Vec<f16>, Vec<f32>)> {
    check(act, cols)?;
    let take = rows.min(SEARCH_ROWS);
    let mut sample = Vec::with_capacity(take * cols);
    for k in 0..take {
        let r = k * rows / take;
        sample.extend_from_slice(&w[r * cols..(r + 1) * cols]);
    }
    let mut best: Option<(f64, f64, Vec<f16>, Vec<f32>)> = None;
    for step in 0..GRID {
        let alpha = step as f64 / GRID as f64;
        let (m, s) = scales_for(alpha, act);
        let (ws, imp) = scaled(&sample, cols, &s, act.sq_mean);
        let enc = inner.encode_checked(&ws, take, cols, Some(&imp))?;
        let mut dec = vec![0f32; sample.len()];
        decode(&enc, &mut dec)?;
        let delta: Vec<f32> = dec
            .iter()
            .enumerate()
            .map(|(i, q)| sample[i] - q / s[i % cols])
            .collect();
        let err = output_error(&delta, cols, act);
        if best.as_ref().is_none_or(|b| err < b.1) {
            best = Some((alpha, err, m, s));
        }
    }
    let (alpha, _, m, s) = best.expect("GRID > 0");
    Ok((alpha, m, s))
}

fn check(act: &Activations<'_>, cols: usize) -> Result<()> {
    let bad = act.abs_mean.len() != cols
        || act.sq_mean.len() != cols
        || act.xtx.is_some_and(|x| x.len() != cols * cols);
    if bad {
        return Err(Error::ShapeMismatch {
            tensor: "calibration statistics".into(),
            expected: vec![cols],
            got: vec![act.abs_mean.len(), act.sq_mean.len()],
        });
    }
    Ok(())
}

/// An encoder of scaled weights with error feedback: `(scaled weights, scales) → bytes`.
pub type Feedback<'a> = &'a dyn Fn(&[f32], &[f32]) -> Result<Vec<u8>>;

/// Encodes `w` with AWQ scaling around `inner`. With `gptq`, the scaled weights are
/// encoded with error feedback through that (already scaled, see
/// [`super::gptq::Hessian::scale_inputs`]) factor instead of `inner`'s plain encode;
/// `gptq_encode` receives the scaled weights and the scales.
pub fn encode(
    inner: &dyn Codec,
    w: &[f32],
    rows: usize,
    cols: usize,
    act: &Activations<'_>,
    gptq_encode: Option<Feedback<'_>>,
    decode: Decoder,
) -> Result<(f64, Vec<u8>)> {
    let (alpha, m, s) = search(inner, w, rows, cols, act, decode)?;
    let (ws, imp) = scaled(w, cols, &s, act.sq_mean);
    let body = match gptq_encode {
        Some(f) => f(&ws, &s)?,
        None => inner.encode_checked(&ws, rows, cols, Some(&imp))?,
    };
    Ok((alpha, wrap(&m, &body, rows, cols)))
}

/// `Scaled` encoding of multipliers `m` around `inner`.
pub fn wrap(m: &[f16], inner: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + 2 * cols + inner.len());
    buf.extend_from_slice(&Header::new(ID, rows, cols).to_bytes());
    buf.extend(f16_bytes(m));
    buf.extend_from_slice(inner);
    buf
}

/// Bytes the wrapper adds.
pub fn overhead(cols: usize) -> usize {
    HEADER_LEN + 2 * cols
}

/// A `Scaled` encoding with `w` on its grid: the same multipliers, the inner encoding
/// re-quantized (by the dispatcher) for `w / m`.
pub(crate) fn regrid(
    h: &Header,
    bytes: &[u8],
    w: &[f32],
    refit: f32,
    inner: Requantizer,
) -> Result<Vec<u8>> {
    let cols = h.cols as usize;
    let Some(m) = bytes.get(HEADER_LEN..HEADER_LEN + 2 * cols) else {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Truncated {
                what: "multipliers",
                needed: (HEADER_LEN + 2 * cols) as u64,
                len: bytes.len() as u64,
            },
        ));
    };
    let mut mf = Vec::new();
    super::group::f16s_to_f32(m, &mut mf);
    let scaled: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let k = mf[i % cols.max(1)];
            if k != 0.0 {
                x / k
            } else {
                0.0
            }
        })
        .collect();
    let new_inner = inner(&bytes[HEADER_LEN + 2 * cols..], &scaled, refit)?;
    let mut out = bytes[..HEADER_LEN + 2 * cols].to_vec();
    out.extend_from_slice(&new_inner);
    Ok(out)
}

/// Decodes a `Scaled` encoding.
pub(crate) fn decode(
    h: &Header,
    bytes: &[u8],
    out: &mut [f32],
    inner_decode: Decoder,
) -> Result<()> {
    let cols = h.cols as usize;
    let Some(m) = bytes.get(HEADER_LEN..HEADER_LEN + 2 * cols) else {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Truncated {
                what: "multipliers",
                needed: (HEADER_LEN + 2 * cols) as u64,
                len: bytes.len() as u64,
            },
        ));
    };
    let inner = &bytes[HEADER_LEN + 2 * cols..];
    let ih = Header::parse(inner)?;
    if ih.id == ID || ih.rows != h.rows || ih.cols != h.cols {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Structure("scaled encoding wraps a nested or differently shaped encoding"),
        ));
    }
    inner_decode(inner, out)?;
    let mut mf = Vec::new();
    super::group::f16s_to_f32(m, &mut mf);
    let m = mf;
    if cols > 0 {
        out.par_chunks_mut(cols).for_each(|row| {
            for (x, k) in row.iter_mut().zip(&m) {
                *x *= k;
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Int4;

    /// Inputs with a few loud channels, as in real LLM activations.
    fn activations(n: usize, cols: usize) -> Vec<f32> {
        let z = crate::rng::randn(n * cols, 5, 1.0);
        z.iter()
            .enumerate()
            .map(|(i, x)| if i % cols < 4 { x * 20.0 } else { *x })
            .collect()
    }

    fn stats(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = (x.len() / cols) as f32;
        let mut abs = vec![0f32; cols];
        let mut sq = vec![0f32; cols];
        let mut xtx = vec![0f32; cols * cols];
        for r in x.chunks(cols) {
            for j in 0..cols {
                abs[j] += r[j].abs() / n;
                sq[j] += r[j] * r[j] / n;
                for k in 0..cols {
                    xtx[j * cols + k] += r[j] * r[k] / n;
                }
            }
        }
        (abs, sq, xtx)
    }

    fn out_err(w: &[f32], q: &[f32], x: &[f32], cols: usize) -> f64 {
        let mut e = 0f64;
        for xr in x.chunks(cols) {
            for (wr, qr) in w.chunks(cols).zip(q.chunks(cols)) {
                let d: f32 = wr
                    .iter()
                    .zip(qr)
                    .zip(xr)
                    .map(|((a, b), x)| (a - b) * x)
                    .sum();
                e += (d * d) as f64;
            }
        }
        e
    }

    #[test]
    fn awq_lowers_output_error_and_roundtrips() {
        let (rows, cols) = (64, 128);
        let w = crate::rng::randn(rows * cols, 11, 1.0);
        let x = activations(256, cols);
        let (abs, sq, xtx) = stats(&x, cols);
        let inner = Int4::new(64, false, 5).expect("test");
        let plain = crate::codec::decode_vec(&inner.encode(&w, rows, cols, None).expect("test"))
            .expect("test");
        for full in [true, false] {
            let act = Activations {
                abs_mean: &abs,
                sq_mean: &sq,
                xtx: full.then_some(&xtx[..]),
            };
            let (alpha, enc) =
                encode(&inner, &w, rows, cols, &act, None, crate::codec::decode).expect("test");
            assert_eq!(enc.len(), overhead(cols) + inner.encoded_len(rows, cols));
            let dec = crate::codec::decode_vec(&enc).expect("test");
            let (p, a) = (out_err(&w, &plain, &x, cols), out_err(&w, &dec, &x, cols));
            assert!(alpha > 0.0, "α = {alpha}");
            assert!(a < 0.8 * p, "full XᵀX {full}: awq {a} vs plain {p}");
        }
    }

    #[test]
    fn corrupt_wrappers_are_refused() {
        let inner = Int4::new(32, false, 0).expect("test");
        let w = crate::rng::randn(8 * 64, 1, 1.0);
        let body = inner.encode(&w, 8, 64, None).expect("test");
        let m = vec![f16::ONE; 64];
        let ok = wrap(&m, &body, 8, 64);
        assert_eq!(
            crate::codec::decode_vec(&ok).expect("test"),
            crate::codec::decode_vec(&body).expect("test")
        );
        assert!(matches!(
            crate::codec::decode_vec(&ok[..HEADER_LEN + 10]),
            Err(crate::Error::CorruptEncoding { .. })
        ));
        let nested = wrap(&m, &ok, 8, 64);
        assert!(matches!(
            crate::codec::decode_vec(&nested),
            Err(crate::Error::CorruptEncoding { .. })
        ));
        let other = wrap(
            &[f16::ONE; 32],
            &inner.encode(&w, 16, 32, None).expect("test"),
            16,
            32,
        );
        let mut bad = other.clone();
        bad[4] = 8; // rows 8 in the outer header, 16 inside
        assert!(matches!(
            crate::codec::decode_vec(&bad),
            Err(crate::Error::CorruptEncoding { .. })
        ));
    }
}
