//! `delta_sign` (id 10): a fine-tune as its base plus one sign bit per weight times a
//! scale per row — BitDelta's compression (Liu et al., 2024), with a scale per output
//! row instead of one per matrix. The baseline the other lossy deltas are judged against.
//!
//! For fixed signs `sign(Δ)`, the (importance-weighted) least-squares scale of a row is
//! `Σ h·|Δ| / Σ h`, which is what is stored. Layout after the header: `rows` fp16 scales,
//! then per row `ceil(cols / 8)` bytes of sign bits (bit set: `+scale`; little-endian bit
//! order, each row starting on a byte).

use half::f16;
use rayon::prelude::*;

use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{delta_needs_base, EncodingRow, GpuDecode};
use super::traits::{f16_bytes, BaseView, Decoder, DeltaCodec};
use crate::error::Corruption;
use crate::{Error, Result};

/// Codec id of `delta_sign`.
pub const ID: CodecId = CodecId(10);

/// The `delta_sign` row.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "delta_sign",
    decode: delta_needs_base,
    gpu: GpuDecode::CpuThenUpload,
    apply: Some(apply),
    regrid: None,
};

/// Sign × scale per row.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaSign;

/// Encoded bytes for a `[rows, cols]` matrix.
pub fn encoded_len(rows: usize, cols: usize) -> usize {
    HEADER_LEN + rows * (2 + cols.div_ceil(8))
}

impl DeltaCodec for DeltaSign {
    fn describe(&self) -> String {
        "delta sign x scale/row".into()
    }

    fn encode_checked(
        &self,
        ft: &[f32],
        base: &BaseView<'_>,
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Option<Vec<u8>>> {
        let bpr = cols.div_ceil(8);
        let per_row: Vec<(f16, Vec<u8>)> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let (mut num, mut den) = (0f64, 0f64);
                let mut bits = vec![0u8; bpr];
                for c in 0..cols {
                    let i = r * cols + c;
                    let d = ft[i] - base.values[i];
                    let h = importance.map_or(1.0, |h| h[i]) as f64;
                    num += h * d.abs() as f64;
                    den += h;
                    if d > 0.0 {
                        bits[c / 8] |= 1 << (c % 8);
                    }
                }
                let s = if den > 0.0 { num / den } else { 0.0 };
                (f16::from_f32(s as f32), bits)
            })
            .collect();
        let mut buf = Vec::with_capacity(encoded_len(rows, cols));
        buf.extend_from_slice(&Header::new(ID, rows, cols).to_bytes());
        let scales: Vec<f16> = per_row.iter().map(|p| p.0).collect();
        if scales.iter().any(|s| !s.is_finite()) {
            return Err(Error::corrupt(
                ENCODING.name,
                Corruption::Structure("a row's scale overflows fp16"),
            ));
        }
        buf.extend(f16_bytes(&scales));
        for (_, bits) in &per_row {
            buf.extend_from_slice(bits);
        }
        Ok(Some(buf))
    }
}

fn apply(h: &Header, bytes: &[u8], base: &BaseView<'_>, out: &mut [f32], _: Decoder) -> Result<()> {
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    if bytes.len() != encoded_len(rows, cols) {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Length {
                what: "bytes",
                expected: encoded_len(rows, cols) as u64,
                actual: bytes.len() as u64,
            },
        ));
    }
    if cols == 0 {
        return Ok(());
    }
    let bpr = cols.div_ceil(8);
    let mut scales = Vec::new();
    super::group::f16s_to_f32(&bytes[HEADER_LEN..HEADER_LEN + 2 * rows], &mut scales);
    let signs = &bytes[HEADER_LEN + 2 * rows..];
    out.par_chunks_mut(cols)
        .zip(base.values.par_chunks(cols))
        .enumerate()
        .with_min_len(16)
        .for_each(|(r, (o, b))| {
            let s = scales[r].to_bits();
            let bits = &signs[r * bpr..(r + 1) * bpr];
            // Eight weights per sign byte; the sign is put into the scale's sign bit
            // (branch-free, so the inner loop vectorizes).
            for ((o8, b8), &byte) in o.chunks_mut(8).zip(b.chunks(8)).zip(bits) {
                for (k, (o, &b)) in o8.iter_mut().zip(b8).enumerate() {
                    let down = !(byte as u32 >> k) & 1;
                    *o = b + f32::from_bits(s ^ (down << 31));
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_is_base_plus_or_minus_the_row_scale_bit_for_bit() {
        for (rows, cols) in [(3, 13), (5, 64), (2, 1)] {
            let base = crate::rng::randn(rows * cols, 7, 0.05);
            let ft: Vec<f32> = base
                .iter()
                .zip(crate::rng::randn(rows * cols, 8, 1e-3))
                .map(|(b, d)| b + d)
                .collect();
            let view = BaseView {
                values: &base,
                encoded: None,
            };
            let enc = DeltaSign
                .encode(&ft, &view, rows, cols, None)
                .expect("encode")
                .expect("applies");
            let mut out = vec![0f32; ft.len()];
            crate::codec::apply(&enc, &view, &mut out).expect("apply");
            // The layout, read independently: fp16 scales, then sign bits per row.
            let bpr = cols.div_ceil(8);
            for r in 0..rows {
                let at = HEADER_LEN + 2 * r;
                let s = f16::from_le_bytes([enc[at], enc[at + 1]]).to_f32();
                for c in 0..cols {
                    let byte = enc[HEADER_LEN + 2 * rows + r * bpr + c / 8];
                    let up = byte >> (c % 8) & 1 == 1;
                    let want = base[r * cols + c] + if up { s } else { -s };
                    assert_eq!(
                        out[r * cols + c].to_bits(),
                        want.to_bits(),
                        "{rows}x{cols} ({r},{c})"
                    );
                    // The sign follows the fine-tune's change.
                    assert_eq!(up, ft[r * cols + c] >= base[r * cols + c], "({r},{c})");
                }
            }
        }
    }
}
