//! `outliers`: keeps the top p% of weights — by magnitude, or by `importance · w²` when an
//! importance is supplied — exactly as fp16, and encodes the rest with a base codec that
//! ignores them in its fit (their importance is set to 0), so one huge weight no longer
//! stretches its whole group's scale.
//!
//! Layout: header (`id = 3`, `rows`, `cols`; the outlier count in bytes 12..16 as u32 is
//! not used — it follows), then `count u32 | base encoding length u64 | base encoding |
//! indices u32[count] (ascending) | values f16[count]`. 48 bits per outlier.

use half::f16;

use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{EncodingRow, GpuDecode};
use super::traits::{Codec, Decoder, Requantizer};
use crate::error::{CodecProblem, Corruption};
use crate::{Error, Result};

/// Codec id of the outlier wrapper.
pub const ID: CodecId = CodecId(3);

/// The outlier wrapper's row: on the GPU its base's path, then a scatter of the values.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "outliers",
    decode,
    gpu: GpuDecode::Outliers,
    apply: None,
    regrid: Some(regrid),
};

/// A base codec plus fp16 outliers.
pub struct WithOutliers {
    base: Box<dyn Codec>,
    fraction: f64,
}

impl WithOutliers {
    /// Wraps `base`, keeping `fraction` (0 < fraction ≤ 0.5) of weights as fp16.
    pub fn new(base: Box<dyn Codec>, fraction: f64) -> Result<Self> {
        if !(fraction > 0.0 && fraction <= 0.5) {
            return Err(Error::invalid_codec(
                "outliers",
                CodecProblem::OutOfRange {
                    parameter: "outlier fraction",
                    value: fraction,
                    min: 0.0,
                    max: 0.5,
                },
            ));
        }
        Ok(Self { base, fraction })
    }

    fn count(&self, n: usize) -> usize {
        ((n as f64 * self.fraction).ceil() as usize).min(n)
    }
}

const EXTRA: usize = 4 + 8;

/// Indices of the `k` largest `score`s, ascending.
fn top_k(score: &[f32], k: usize) -> Vec<u32> {
    if k == 0 {
        return vec![];
    }
    let mut idx: Vec<u32> = (0..score.len() as u32).collect();
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        score[b as usize].total_cmp(&score[a as usize])
    });
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

impl Codec for WithOutliers {
    fn describe(&self) -> String {
        format!(
            "{} +{}% fp16 outliers",
            self.base.describe(),
            self.fraction * 100.0
        )
    }

    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        let score: Vec<f32> = match importance {
            Some(h) => w.iter().zip(h).map(|(x, h)| h * x * x).collect(),
            None => w.iter().map(|x| x.abs()).collect(),
        };
        let idx = top_k(&score, self.count(w.len()));
        drop(score);
        let mut fit: Vec<f32> = importance.map_or_else(|| vec![1.0; w.len()], |h| h.to_vec());
        for &i in &idx {
            fit[i as usize] = 0.0;
        }
        // Zero importance excludes the outliers from the base codec's fit (its min/max and
        // least squares), so they cannot stretch a group's scale; decode overwrites them.
        let base = self.base.encode_checked(w, rows, cols, Some(&fit))?;
        drop(fit);
        let mut buf = Vec::with_capacity(self.encoded_len(rows, cols));
        buf.extend_from_slice(&Header::new(ID, rows, cols).to_bytes());
        buf.extend_from_slice(&(idx.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(base.len() as u64).to_le_bytes());
        buf.extend_from_slice(&base);
        for &i in &idx {
            buf.extend_from_slice(&i.to_le_bytes());
        }
        for &i in &idx {
            let v = f16::from_f32(w[i as usize]);
            buf.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        Ok(buf)
    }

    fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        HEADER_LEN + EXTRA + self.base.encoded_len(rows, cols) + self.count(rows * cols) * 6
    }
}

/// The parts of an outlier-wrapped encoding, validated: where the base encoding lies and
/// the kept values (indices checked against the matrix).
pub struct Parts<'a> {
    /// Offset of the base encoding in the bytes.
    pub base_start: usize,
    /// The base encoding (any codec but this wrapper).
    pub base: &'a [u8],
    /// Flat indices of the kept weights, ascending.
    pub indices: Vec<u32>,
    /// Their fp16 bits.
    pub values: Vec<u16>,
}

/// Splits and checks an outlier-wrapped encoding (CPU and GPU decode share this).
pub fn parts<'a>(h: &Header, bytes: &'a [u8]) -> Result<Parts<'a>> {
    let body = &bytes[HEADER_LEN..];
    let Some(extra) = body.get(..EXTRA) else {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Truncated {
                what: "outlier header",
                needed: (HEADER_LEN + EXTRA) as u64,
                len: bytes.len() as u64,
            },
        ));
    };
    let count = u32::from_le_bytes([extra[0], extra[1], extra[2], extra[3]]) as usize;
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&extra[4..12]);
    let base_len = u64::from_le_bytes(len8);
    let rest = &body[EXTRA..];
    let base_len = usize::try_from(base_len)
        .ok()
        .filter(|&l| l <= rest.len())
        .ok_or_else(|| {
            Error::corrupt(
                ENCODING.name,
                Corruption::Length {
                    what: "base encoding bytes (at most what follows)",
                    expected: rest.len() as u64,
                    actual: base_len,
                },
            )
        })?;
    let (base, tail) = rest.split_at(base_len);
    if Header::parse(base)?.id == ID {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Structure("nested outlier encodings"),
        ));
    }
    if count > h.numel() || tail.len() != count * 6 {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Length {
                what: "outlier array bytes",
                expected: count.saturating_mul(6) as u64,
                actual: tail.len() as u64,
            },
        ));
    }
    let (idx, vals) = tail.split_at(count * 4);
    let indices: Vec<u32> = idx
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(&i) = indices.iter().find(|&&i| i as usize >= h.numel()) {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Index {
                what: "outlier",
                index: i as u64,
                bound: h.numel() as u64,
            },
        ));
    }
    let values = vals
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(Parts {
        base_start: HEADER_LEN + EXTRA,
        base,
        indices,
        values,
    })
}

/// An outlier-wrapped encoding with `w` on its grid: the base encoding re-quantized (by
/// the dispatcher), the kept values at the same positions taken from `w`.
pub(crate) fn regrid(
    h: &Header,
    bytes: &[u8],
    w: &[f32],
    refit: f32,
    inner: Requantizer,
) -> Result<Vec<u8>> {
    let p = parts(h, bytes)?;
    let new_base = inner(p.base, w, refit)?;
    if new_base.len() != p.base.len() {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Structure("re-quantized base encoding changed length"),
        ));
    }
    let mut out = bytes.to_vec();
    let base_end = p.base_start + p.base.len();
    out[p.base_start..base_end].copy_from_slice(&new_base);
    let values_at = base_end + 4 * p.indices.len();
    for (k, &i) in p.indices.iter().enumerate() {
        let v = f16::from_f32(w[i as usize]).to_bits().to_le_bytes();
        out[values_at + 2 * k..values_at + 2 * k + 2].copy_from_slice(&v);
    }
    Ok(out)
}

/// Decodes an outlier-wrapped encoding.
pub(crate) fn decode(h: &Header, bytes: &[u8], out: &mut [f32], inner: Decoder) -> Result<()> {
    let p = parts(h, bytes)?;
    inner(p.base, out)?;
    for (&i, &v) in p.indices.iter().zip(&p.values) {
        out[i as usize] = f16::from_bits(v).to_f32();
    }
    Ok(())
}
