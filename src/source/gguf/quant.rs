//! Quantization into ggml's 32-value block types, following llama.cpp's reference C
//! (`ggml-quants.c`: `quantize_row_q4_0_ref`, `quantize_row_q4_1_ref`,
//! `quantize_row_q8_0_ref`) operation for operation, and the packing of codes that are
//! already on a block's grid ([`q4_1_block`], [`q4_0_block`]: exact exports).

use half::f16;

use super::types::GgmlType;
use crate::dtype::DType;

/// Values per block of the types here.
pub const QK: usize = 32;

/// A `block_q4_1` from fp16 `d`, `m` and 32 codes in `0..16` (values `q·d + m`); codes
/// `j` and `j + 16` share byte `j`, low nibble first.
pub fn q4_1_block(d: f16, m: f16, codes: &[u8; QK], out: &mut Vec<u8>) {
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend_from_slice(&m.to_bits().to_le_bytes());
    out.extend((0..QK / 2).map(|j| (codes[j] & 15) | (codes[j + QK / 2] << 4)));
}

/// A `block_q4_0` from fp16 `d` and 32 codes in `0..16` (values `(q - 8)·d`).
pub fn q4_0_block(d: f16, codes: &[u8; QK], out: &mut Vec<u8>) {
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend((0..QK / 2).map(|j| (codes[j] & 15) | (codes[j + QK / 2] << 4)));
}

/// Quantizes one row (a whole number of blocks) to `ty` (`Q4_0`, `Q4_1`, `Q8_0`, or the
/// plain `F32`/`F16`/`BF16`), appending to `out`.
///
/// # Panics
/// For other types, or a row that is not whole blocks (callers check with
/// [`super::write::TensorDecl::data_len`]).
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) {
    match ty {
        GgmlType::F32 => DType::F32.encode_into(x, out),
        GgmlType::F16 => DType::F16.encode_into(x, out),
        GgmlType::BF16 => DType::BF16.encode_into(x, out),
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            assert!(x.len().is_multiple_of(QK), "whole blocks");
            for b in x.chunks_exact(QK) {
                match ty {
                    GgmlType::Q4_0 => q4_0(b, out),
                    GgmlType::Q4_1 => q4_1(b, out),
                    _ => q8_0(b, out),
                }
            }
        }
        other => panic!("quantizing to {other} is not implemented"),
    }
}

fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + 8.5) as i8).min(15) as u8;
    }
    q4_0_block(f16::from_f32(d), &q, out);
}

fn q4_1(x: &[f32], out: &mut Vec<u8>) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as i8).min(15) as u8;
    }
    q4_1_block(f16::from_f32(d), f16::from_f32(min), &q, out);
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

#[cfg(test)]
mod tests {
    use super::super::dequant::dequantize;
    use super::*;

    fn row(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 40.0)
            .collect()
    }

    #[test]
    fn every_type_round_trips_within_its_step() {
        let x = row(4 * QK);
        for (ty, tol) in [
            (GgmlType::Q4_0, 0.2),
            (GgmlType::Q4_1, 0.1),
            (GgmlType::Q8_0, 0.02),
            (GgmlType::F16, 1e-3),
            (GgmlType::BF16, 1e-2),
            (GgmlType::F32, 0.0),
        ] {
            let mut b = vec![];
            quantize_row(ty, &x, &mut b);
            assert_eq!(
                b.len() as u64,
                x.len() as u64 / ty.block_elems() * ty.block_bytes()
            );
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &b, &mut y);
            let worst = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= tol, "{ty}: {worst}");
        }
    }

    #[test]
    fn codes_on_the_grid_pack_exactly() {
        let codes: [u8; QK] = std::array::from_fn(|i| (i * 5 % 16) as u8);
        let (d, m) = (f16::from_f32(0.0123), f16::from_f32(-0.1));
        let mut b = vec![];
        q4_1_block(d, m, &codes, &mut b);
        let mut y = vec![0f32; QK];
        dequantize(GgmlType::Q4_1, &b, &mut y);
        for (q, y) in codes.iter().zip(&y) {
            assert_eq!(y.to_bits(), (*q as f32 * d.to_f32() + m.to_f32()).to_bits());
        }
        let mut b = vec![];
        q4_0_block(d, &codes, &mut b);
        dequantize(GgmlType::Q4_0, &b, &mut y);
        for (q, y) in codes.iter().zip(&y) {
            assert_eq!(y.to_bits(), ((*q as f32 - 8.0) * d.to_f32()).to_bits());
        }
    }
}
