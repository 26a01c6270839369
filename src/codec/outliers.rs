//! `outliers`: keeps the top p% of weights — by magnitude, or by `importance · w²` when an
//! importance is supplied — exactly as fp16, and encodes the rest with a base codec that
//! ignores them in its fit (their importance is set to 0), so one huge weight no longer
//! stretches its whole group's scale.
//!
//! Layout: header (`id = 3`, `rows`, `cols`; the outlier count in bytes 12..16 as u32 is
//! not used — it follows), then `count u32 | base encoding length u64 | base encoding |
//! indices u32[count] (ascending) | values f16[count]`. 48 bits per outlier.

use half::f16;

use super::{Codec, CodecId, Header, HEADER_LEN};
use crate::{Error, Result};

/// A base codec plus fp16 outliers.
pub struct WithOutliers {
    base: Box<dyn Codec>,
    fraction: f64,
}

impl WithOutliers {
    /// Wraps `base`, keeping `fraction` (0 < fraction ≤ 0.5) of weights as fp16.
    pub fn new(base: Box<dyn Codec>, fraction: f64) -> Result<Self> {
        if !(fraction > 0.0 && fraction <= 0.5) {
            return Err(Error::InvalidCodec(format!("outlier fraction {fraction}")));
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
        buf.extend_from_slice(&Header::new(CodecId::Outliers, rows, cols).to_bytes());
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

/// Decodes an outlier-wrapped encoding.
pub(crate) fn decode(h: &Header, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let body = &bytes[HEADER_LEN..];
    let Some(extra) = body.get(..EXTRA) else {
        return Err(Error::CorruptEncoding("outlier header truncated".into()));
    };
    let count = u32::from_le_bytes([extra[0], extra[1], extra[2], extra[3]]) as usize;
    let base_len = u64::from_le_bytes(
        extra[4..12]
            .try_into()
            .map_err(|_| Error::CorruptEncoding("len".into()))?,
    );
    let rest = &body[EXTRA..];
    let base_len = usize::try_from(base_len)
        .ok()
        .filter(|&l| l <= rest.len())
        .ok_or_else(|| {
            Error::CorruptEncoding(format!("base encoding length {base_len} exceeds the data"))
        })?;
    let (base, tail) = rest.split_at(base_len);
    if Header::parse(base)?.id == CodecId::Outliers {
        return Err(Error::CorruptEncoding("nested outlier encodings".into()));
    }
    if count > h.numel() || tail.len() != count * 6 {
        return Err(Error::CorruptEncoding(format!(
            "{count} outliers need {} bytes, {} present",
            count.saturating_mul(6),
            tail.len()
        )));
    }
    super::decode(base, out)?;
    let (idx, vals) = tail.split_at(count * 4);
    for (i, v) in idx.chunks_exact(4).zip(vals.chunks_exact(2)) {
        let i = u32::from_le_bytes([i[0], i[1], i[2], i[3]]) as usize;
        let slot = out
            .get_mut(i)
            .ok_or_else(|| Error::CorruptEncoding(format!("outlier index {i} out of range")))?;
        *slot = f16::from_bits(u16::from_le_bytes([v[0], v[1]])).to_f32();
    }
    Ok(())
}
