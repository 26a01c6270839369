//! Quantized low rank (id 13): `W ≈ L̂·R̂` where both factors are themselves stored with a
//! grouped INT encoding. Low rank in fp16 spends 16 bits per factor entry; a fine-tune's
//! update is close to low rank but needs a fair rank (32-128) to keep its quality, and
//! the factors tolerate 3-4 bits (Delta-CoMe's observation: mixed precision on singular
//! vectors), so quantized factors buy a higher rank for the same bytes.
//!
//! Encoding: the rank-r factors of [`super::lowrank::factor`] (importance-weighted
//! subspace iteration; `L` orthonormal columns), `L` quantized first (groups of r along
//! each row: one row of L is one group), then `R` re-fitted to the quantized `L̂` by least
//! squares (`R = (L̂ᵀL̂)⁻¹ L̂ᵀ W`, column by column, which the column weights do not change)
//! and quantized (groups along its rows).
//!
//! Layout after the header (`group` = r): the length of `L`'s encoding (u64), `L`'s
//! encoding (`rows × r`, any non-delta encoding of §4), `R`'s encoding (`r × cols`).

use rayon::prelude::*;

use super::header::{CodecId, Header, HEADER_LEN};
use super::int4::Int4;
use super::spec::{EncodingRow, GpuDecode, DEFAULT_REFINE_ITERS};
use super::traits::{Codec, Decoder};
use crate::error::{CodecProblem, Corruption};
use crate::{Error, Result};

/// Codec id of the quantized low-rank product.
pub const ID: CodecId = CodecId(13);

/// The row: decoded on the CPU (two small decodes and a product), then uploaded.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "low_rank_q",
    decode,
    gpu: GpuDecode::CpuThenUpload,
    apply: None,
    regrid: None,
};

/// Rank-`rank` factors, each stored as `bits`-bit grouped INT (`R` in groups of `group`).
#[derive(Debug, Clone, Copy)]
pub struct QuantLowRank {
    /// Rank (8..=1024: one row of `L` is one quantization group).
    pub rank: usize,
    /// Bits of both factors (2, 3, 4).
    pub bits: u32,
    /// Group size of `R` along its rows.
    pub group: usize,
    /// The table's dispatcher (decodes `L̂` to refit `R`).
    pub decode: Decoder,
}

impl QuantLowRank {
    fn l_codec(&self, r: usize) -> Result<Int4> {
        Int4::with_bits(
            self.bits,
            r.max(super::spec::MIN_GROUP),
            false,
            DEFAULT_REFINE_ITERS,
        )
    }
    fn r_codec(&self) -> Result<Int4> {
        Int4::with_bits(self.bits, self.group, false, DEFAULT_REFINE_ITERS)
    }
    fn rank_for(&self, rows: usize, cols: usize) -> usize {
        self.rank.min(rows).min(cols).max(1)
    }
}

/// Solves the symmetric positive (semi)definite `a x = b` (`n × n`, `n × m` right-hand
/// sides, row-major) by Cholesky with a small ridge; `b` is overwritten with `x`.
fn solve_spd(a: &mut [f64], n: usize, b: &mut [f64], m: usize) {
    let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
    let ridge = 1e-9 * trace / n.max(1) as f64 + 1e-30;
    for i in 0..n {
        a[i * n + i] += ridge;
    }
    // Cholesky: a = G Gᵀ, G lower, stored in a.
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        let d = d.max(1e-300).sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for c in 0..m {
        // Forward: G y = b; back: Gᵀ x = y.
        for i in 0..n {
            let mut s = b[i * m + c];
            for k in 0..i {
                s -= a[i * n + k] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = b[i * m + c];
            for k in i + 1..n {
                s -= a[k * n + i] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * n + i];
        }
    }
}

impl Codec for QuantLowRank {
    fn describe(&self) -> String {
        format!("rank {} int{} g{}", self.rank, self.bits, self.group)
    }

    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        let r = self.rank_for(rows, cols);
        let c = super::lowrank::column_weights(importance, rows, cols);
        let (l, _) = super::lowrank::factor(w, rows, cols, r, &c);
        let l_enc = self.l_codec(r)?.encode_checked(&l, rows, r, None)?;
        let mut lq = vec![0f32; rows * r];
        (self.decode)(&l_enc, &mut lq)?;
        // R = (L̂ᵀL̂)⁻¹ L̂ᵀ W.
        let mut g = vec![0f64; r * r];
        for i in 0..rows {
            let li = &lq[i * r..(i + 1) * r];
            for a in 0..r {
                for b in 0..r {
                    g[a * r + b] += li[a] as f64 * li[b] as f64;
                }
            }
        }
        let mut rhs: Vec<f64> = (0..r)
            .into_par_iter()
            .flat_map_iter(|a| {
                let mut row = vec![0f64; cols];
                for i in 0..rows {
                    let la = lq[i * r + a] as f64;
                    if la != 0.0 {
                        for (o, x) in row.iter_mut().zip(&w[i * cols..(i + 1) * cols]) {
                            *o += la * *x as f64;
                        }
                    }
                }
                row
            })
            .collect();
        solve_spd(&mut g, r, &mut rhs, cols);
        let rr: Vec<f32> = rhs.iter().map(|&x| x as f32).collect();
        if rr.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid_codec(
                ENCODING.name,
                CodecProblem::Fp16Range {
                    what: "low-rank factor",
                },
            ));
        }
        let r_enc = self.r_codec()?.encode_checked(&rr, r, cols, None)?;
        let h = Header {
            group: r as u16,
            ..Header::new(ID, rows, cols)
        };
        let mut buf = Vec::with_capacity(HEADER_LEN + 8 + l_enc.len() + r_enc.len());
        buf.extend_from_slice(&h.to_bytes());
        buf.extend_from_slice(&(l_enc.len() as u64).to_le_bytes());
        buf.extend_from_slice(&l_enc);
        buf.extend_from_slice(&r_enc);
        Ok(buf)
    }

    fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        let r = self.rank_for(rows, cols);
        let l = self.l_codec(r).map_or(0, |c| c.encoded_len(rows, r));
        let rr = self.r_codec().map_or(0, |c| c.encoded_len(r, cols));
        HEADER_LEN + 8 + l + rr
    }
}

fn corrupt(problem: Corruption) -> Error {
    Error::corrupt(ENCODING.name, problem)
}

/// Decodes `L̂·R̂`.
fn decode(h: &Header, bytes: &[u8], out: &mut [f32], inner: Decoder) -> Result<()> {
    let (rows, cols, r) = (h.rows as usize, h.cols as usize, h.group as usize);
    if r == 0 {
        return Err(corrupt(Corruption::Field {
            field: "rank",
            value: 0,
        }));
    }
    let Some(len) = bytes.get(HEADER_LEN..HEADER_LEN + 8) else {
        return Err(corrupt(Corruption::Truncated {
            what: "factor length",
            needed: (HEADER_LEN + 8) as u64,
            len: bytes.len() as u64,
        }));
    };
    let mut l8 = [0u8; 8];
    l8.copy_from_slice(len);
    let rest = &bytes[HEADER_LEN + 8..];
    let l_len = usize::try_from(u64::from_le_bytes(l8))
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or(corrupt(Corruption::Length {
            what: "factor bytes (at most what follows)",
            expected: rest.len() as u64,
            actual: u64::from_le_bytes(l8),
        }))?;
    let (le, re) = rest.split_at(l_len);
    let (lh, rh) = (Header::parse(le)?, Header::parse(re)?);
    if (lh.rows as usize, lh.cols as usize) != (rows, r)
        || (rh.rows as usize, rh.cols as usize) != (r, cols)
    {
        return Err(corrupt(Corruption::Structure(
            "factor shapes disagree with the product",
        )));
    }
    let mut l = vec![0f32; rows * r];
    let mut rr = vec![0f32; r * cols];
    inner(le, &mut l)?;
    inner(re, &mut rr)?;
    if cols == 0 {
        return Ok(());
    }
    super::lowrank::product(&l, &rr, r, cols, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_factors_reconstruct_a_low_rank_matrix_and_corruption_is_an_error() {
        let (rows, cols, r) = (96, 160, 8);
        let a = crate::rng::randn(rows * r, 3, 1.0);
        let b = crate::rng::randn(r * cols, 4, 0.01);
        let mut w = vec![0f32; rows * cols];
        for i in 0..rows {
            for k in 0..r {
                for j in 0..cols {
                    w[i * cols + j] += a[i * r + k] * b[k * cols + j];
                }
            }
        }
        let c = QuantLowRank {
            rank: 16,
            bits: 4,
            group: 32,
            decode: crate::codec::decode,
        };
        let enc = c.encode(&w, rows, cols, None).expect("encode");
        assert_eq!(enc.len(), c.encoded_len(rows, cols));
        let out = crate::codec::decode_vec(&enc).expect("decode");
        let e = crate::quantize::rel_error(&w, &out);
        // 4-bit factors: a few percent of error, where the fp16 factors of the same rank
        // would cost four times the bytes.
        assert!(e < 0.15, "relative error {e}");
        // 4-bit factors are several times smaller than fp16 ones of the same rank.
        assert!(enc.len() * 2 < 2 * 16 * (rows + cols));
        for cut in [HEADER_LEN, HEADER_LEN + 8, enc.len() / 2, enc.len() - 1] {
            assert!(crate::codec::decode_vec(&enc[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = enc.clone();
        bad[HEADER_LEN] ^= 0x40; // L's length points past the end
        assert!(crate::codec::decode_vec(&bad).is_err());
    }
}
