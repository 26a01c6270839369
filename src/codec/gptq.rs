//! GPTQ-style error feedback for the grouped INT4 codec (`--gptq`).
//!
//! For a linear layer `y = W x` with calibration inputs `X`, the output error of a
//! quantized `Ŵ` is `‖(W − Ŵ) Xᵀ‖²`, a quadratic form in each row of `W − Ŵ` with the
//! Hessian `H = E[x xᵀ]` (what `tenpak calibrate` stores as `input_xtx`). GPTQ
//! (Frantar et al., 2023) quantizes a row's columns left to right and, after each column,
//! moves its error onto the columns not yet quantized, weighted by the inverse Hessian,
//! so later columns compensate for earlier ones:
//!
//! ```text
//! U = upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹        (λ = damping, 0.01)
//! for j in 0..cols:
//!     if j starts a group: fit the group's (scale, offset) on the current weights
//!                          (min/max + least-squares refinement, as the plain codec)
//!     q_j = round((w_j − m) / s), clamped;   e = (w_j − (q_j·s + m)) / U[j,j]
//!     w_k −= e · U[j,k]   for k > j
//! ```
//!
//! Stated choices: damping λ = 0.01 of the mean diagonal; columns whose input is always
//! zero (`H[j,j] = 0`) get `H[j,j] = 1` and are quantized as they come; rows are
//! independent, so they run in parallel and no lazy block updates are needed (block size
//! = the whole row); no activation reordering (groups stay contiguous in the stored
//! order, so the decoder is the plain INT4 one and the bytes are a normal `int4`
//! encoding). Group parameters are fitted when the group starts, on the weights as
//! updated by the error feedback so far.

use rayon::prelude::*;

use super::group::{pack, Stage, StageData, ROWS_PER_TASK};
use crate::error::CodecProblem;
use crate::{Error, Result};

fn statistics(reason: String) -> Error {
    Error::invalid_codec("gptq", CodecProblem::Statistics { reason })
}

/// Default damping (fraction of the mean Hessian diagonal added to it).
pub const DEFAULT_DAMP: f64 = 0.01;

/// The factor GPTQ needs for one input width: `U` with `Uᵀ U = (H + λ·mean(diag)·I)⁻¹`.
#[derive(Debug, Clone)]
pub struct Hessian {
    cols: usize,
    /// Row-major upper-triangular factor (f32; the lower triangle is zero).
    u: Vec<f32>,
}

/// In-place lower Cholesky factor of a row-major symmetric positive definite `a`.
fn cholesky(a: &mut [f64], n: usize) -> std::result::Result<(), usize> {
    for j in 0..n {
        let (head, tail) = a.split_at_mut(j * n);
        let row_j = &mut tail[..n];
        // a[j][j] -= Σ_k<j L[j][k]²
        let d = row_j[j] - row_j[..j].iter().map(|v| v * v).sum::<f64>();
        if d <= 0.0 || !d.is_finite() {
            return Err(j);
        }
        let d = d.sqrt();
        row_j[j] = d;
        let _ = head;
        for i in j + 1..n {
            let (upper, lower) = a.split_at_mut(i * n);
            let lj = &upper[j * n..j * n + j];
            let li = &mut lower[..n];
            let s: f64 = li[..j].iter().zip(lj).map(|(x, y)| x * y).sum();
            li[j] = (li[j] - s) / d;
        }
    }
    // Zero the upper triangle.
    for i in 0..n {
        for v in &mut a[i * n + i + 1..(i + 1) * n] {
            *v = 0.0;
        }
    }
    Ok(())
}

impl Hessian {
    /// Builds the factor from `E[x xᵀ]` (`cols × cols`, row-major) with damping `damp`.
    pub fn from_xtx(xtx: &[f32], cols: usize, damp: f64) -> Result<Self> {
        if xtx.len() != cols * cols || cols == 0 {
            return Err(statistics(format!(
                "Hessian of {} values for {cols} columns",
                xtx.len()
            )));
        }
        let mut h: Vec<f64> = xtx.iter().map(|&v| v as f64).collect();
        let mut mean = 0.0;
        for j in 0..cols {
            if h[j * cols + j] <= 0.0 {
                h[j * cols + j] = 1.0;
            }
            mean += h[j * cols + j];
        }
        mean /= cols as f64;
        for j in 0..cols {
            h[j * cols + j] += damp * mean;
        }
        // H = L Lᵀ.
        cholesky(&mut h, cols).map_err(|j| {
            statistics(format!(
                "Hessian not positive definite at column {j} (raise the damping)"
            ))
        })?;
        // L⁻¹ (lower), by forward substitution row by row.
        let n = cols;
        let mut linv = vec![0f64; n * n];
        for i in 0..n {
            linv[i * n + i] = 1.0 / h[i * n + i];
            for j in 0..i {
                let mut s = 0.0;
                for k in j..i {
                    s += h[i * n + k] * linv[k * n + j];
                }
                linv[i * n + j] = -s / h[i * n + i];
            }
        }
        // H⁻¹ = L⁻ᵀ L⁻¹: entry (i, j) = Σ_k≥max(i,j) L⁻¹[k][i] L⁻¹[k][j]. Use the
        // transpose so the sums run over contiguous rows.
        let mut lt = vec![0f64; n * n]; // lt[i][k] = L⁻¹[k][i]
        for k in 0..n {
            for i in 0..=k {
                lt[i * n + k] = linv[k * n + i];
            }
        }
        drop(linv);
        let rows: Vec<Vec<f64>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut r = vec![0f64; n];
                for j in 0..=i {
                    let a = &lt[i * n + i..(i + 1) * n];
                    let b = &lt[j * n + i..(j + 1) * n];
                    r[j] = a.iter().zip(b).map(|(x, y)| x * y).sum();
                }
                r
            })
            .collect();
        let mut hinv = vec![0f64; n * n];
        for (i, r) in rows.into_iter().enumerate() {
            for j in 0..=i {
                hinv[i * n + j] = r[j];
                hinv[j * n + i] = r[j];
            }
        }
        let mut l = hinv;
        cholesky(&mut l, n)
            .map_err(|j| statistics(format!("inverse Hessian not positive definite at {j}")))?;
        // H⁻¹ = L Lᵀ; GPTQ's recursion (torch.linalg.cholesky(H⁻¹, upper=True)) uses the
        // upper factor U with Uᵀ U = H⁻¹, so U = Lᵀ.
        let mut u = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..=i {
                u[j * n + i] = l[i * n + j] as f32;
            }
        }
        Ok(Self { cols, u })
    }

    /// The factor for inputs scaled by `1/s` (weights by `s`, as AWQ does): the Hessian
    /// becomes `S⁻¹HS⁻¹`, its inverse `S·H⁻¹·S = (U·S)ᵀ(U·S)`, so the factor is `U` with
    /// column `k` multiplied by `s_k` — still upper triangular, no new factorisation.
    /// (The damping stays the one added to the unscaled `H`.)
    pub fn scale_inputs(&self, s: &[f32]) -> Hessian {
        let n = self.cols;
        let mut u = self.u.clone();
        for row in u.chunks_mut(n.max(1)) {
            for (x, sk) in row.iter_mut().zip(s) {
                *x *= sk;
            }
        }
        Hessian { cols: n, u }
    }

    /// The factor `U` (row-major, `cols × cols`, upper triangular).
    pub fn factor(&self) -> &[f32] {
        &self.u
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Encodes `w` (`rows × cols`, row-major) with `stage` and error feedback from `h`.
pub fn encode(stage: &Stage, w: &[f32], cols: usize, h: &Hessian) -> Result<StageData> {
    if h.cols != cols {
        return Err(statistics(format!(
            "Hessian is for {} columns, the tensor has {cols}",
            h.cols
        )));
    }
    if cols == 0 || w.is_empty() {
        return Ok(StageData::default());
    }
    let parts: Vec<StageData> = w
        .par_chunks(cols * ROWS_PER_TASK)
        .map(|chunk| {
            let mut out = StageData::default();
            let mut row = vec![0f32; cols];
            let mut q = vec![0f32; stage.group];
            for r in chunk.chunks(cols) {
                row.copy_from_slice(r);
                encode_row(stage, &mut row, &h.u, &mut q, &mut out);
            }
            out
        })
        .collect();
    Ok(StageData::concat(parts))
}

fn encode_row(stage: &Stage, w: &mut [f32], u: &[f32], q: &mut [f32], out: &mut StageData) {
    let cols = w.len();
    let qmax = stage.qmax();
    let half = (1u32 << (stage.bits - 1)) as f32;
    let mut a = 0;
    while a < cols {
        let b = (a + stage.group).min(cols);
        let qg = &mut q[..b - a];
        let (s16, m16) = stage.fit(&w[a..b], None, qg);
        let s = s16.to_f32();
        let m = if stage.symmetric {
            -half * s
        } else {
            m16.to_f32()
        };
        for j in a..b {
            let code = if s != 0.0 {
                ((w[j] - m) / s).round().clamp(0.0, qmax)
            } else {
                0.0
            };
            qg[j - a] = code;
            let err = (w[j] - (code * s + m)) / u[j * cols + j];
            let urow = &u[j * cols + j + 1..(j + 1) * cols];
            for (wk, uk) in w[j + 1..].iter_mut().zip(urow) {
                *wk -= err * uk;
            }
        }
        out.scales.push(s16);
        if !stage.symmetric {
            out.offsets.push(m16);
        }
        pack(qg, stage.bits, &mut out.codes);
        a = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output error ‖(W − Ŵ) Xᵀ‖² / ‖W Xᵀ‖² for `x` rows of inputs.
    fn output_error(w: &[f32], wq: &[f32], x: &[f32], cols: usize) -> f64 {
        let rows = w.len() / cols;
        let (mut num, mut den) = (0f64, 0f64);
        for xr in x.chunks(cols) {
            for r in 0..rows {
                let (mut y, mut yq) = (0f64, 0f64);
                for c in 0..cols {
                    y += (w[r * cols + c] * xr[c]) as f64;
                    yq += (wq[r * cols + c] * xr[c]) as f64;
                }
                num += (y - yq).powi(2);
                den += y * y;
            }
        }
        num / den
    }

    #[test]
    fn cholesky_reconstructs() {
        let n = 5;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    1.0 / (1.0 + (i as f64 - j as f64).abs()) + if i == j { 1.0 } else { 0.0 };
            }
        }
        let orig = a.clone();
        cholesky(&mut a, n).expect("spd");
        for i in 0..n {
            for j in 0..n {
                let s: f64 = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum();
                assert!((s - orig[i * n + j]).abs() < 1e-12);
            }
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky(&mut bad, 2).is_err());
    }

    #[test]
    fn inverse_factor_is_right() {
        // Uᵀ U must equal (H + damp)⁻¹: check (Uᵀ U) (H + damp) = I.
        let n = 6;
        let x = crate::rng::randn(200 * n, 7, 1.0);
        let mut h = vec![0f32; n * n];
        for r in x.chunks(n) {
            for i in 0..n {
                for j in 0..n {
                    h[i * n + j] += r[i] * r[j] / 200.0;
                }
            }
        }
        let f = Hessian::from_xtx(&h, n, 0.0).expect("factor");
        for i in 0..n {
            for j in 0..n {
                // (UᵀU H)[i][j]
                let mut s = 0f64;
                for k in 0..n {
                    let utu: f64 = (0..n)
                        .map(|m| f.u[m * n + i] as f64 * f.u[m * n + k] as f64)
                        .sum();
                    s += utu * h[k * n + j] as f64;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-3, "({i},{j}) = {s}");
            }
        }
    }

    #[test]
    fn error_feedback_lowers_output_error_on_correlated_inputs() {
        let (rows, cols) = (32, 256);
        let w = crate::rng::randn(rows * cols, 3, 0.02);
        // Correlated inputs with uneven channel scales: x = A z, A mixes neighbours.
        let z = crate::rng::randn(1024 * cols, 5, 1.0);
        let mut x = vec![0f32; 1024 * cols];
        for (xr, zr) in x.chunks_mut(cols).zip(z.chunks(cols)) {
            for c in 0..cols {
                let scale = 1.0 + 4.0 * ((c % 17) as f32 / 16.0);
                xr[c] = scale * (zr[c] + 0.8 * zr[(c + 1) % cols] + 0.5 * zr[(c + 7) % cols]);
            }
        }
        let mut h = vec![0f32; cols * cols];
        for xr in x.chunks(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += xr[i] * xr[j] / 1024.0;
                }
            }
        }
        let stage = Stage {
            bits: 4,
            group: 64,
            symmetric: false,
            refine_iters: 5,
        };
        let plain = super::super::int4::encode_stage(&stage, &w, None, cols);
        let hess = Hessian::from_xtx(&h, cols, DEFAULT_DAMP).expect("hessian");
        let fed = encode(&stage, &w, cols, &hess).expect("gptq");
        assert_eq!(fed.codes.len(), plain.codes.len());
        assert_eq!(fed.scales.len(), plain.scales.len());
        let decode = |d: &StageData| {
            let mut out = vec![0f32; rows * cols];
            let mut bytes = Vec::new();
            super::super::int4::push_stage(&mut bytes, d);
            super::super::int4::decode_stage(stage, &bytes, rows, cols, &mut out).expect("decode");
            out
        };
        let e_plain = output_error(&w, &decode(&plain), &x, cols);
        let e_fed = output_error(&w, &decode(&fed), &x, cols);
        assert!(
            e_fed < 0.8 * e_plain,
            "GPTQ output error {e_fed:.3e} vs plain {e_plain:.3e}"
        );
        assert!(matches!(
            Hessian::from_xtx(&h[..10], cols, 0.01),
            Err(crate::Error::InvalidCodec {
                problem: crate::error::CodecProblem::Statistics { .. },
                ..
            })
        ));
        assert!(matches!(
            encode(&stage, &w[..cols * 2], cols + 1, &hess),
            Err(crate::Error::InvalidCodec { .. })
        ));
    }
}
