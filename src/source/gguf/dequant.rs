//! Dequantization of ggml block formats to f32, following llama.cpp's reference C
//! (`ggml-quants.c`: `dequantize_row_q4_0`, `dequantize_row_q4_K`, `dequantize_row_q6_K`, ...)
//! element for element, so that an imported model equals what llama.cpp computes.

use half::{bf16, f16};

use super::types::GgmlType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `raw` (whole blocks of `ty`) into `out`.
///
/// The caller guarantees `raw.len() == out.len() / block_elems * block_bytes`
/// ([`super::GgufFile`] checks it when parsing the tensor table).
pub fn dequantize(ty: GgmlType, raw: &[u8], out: &mut [f32]) {
    let be = ty.block_elems() as usize;
    let bb = ty.block_bytes() as usize;
    debug_assert_eq!(raw.len() / bb * be, out.len());
    for (b, y) in raw.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => y[0] = f16_at(b, 0),
            GgmlType::BF16 => y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            GgmlType::Q4_0 => q4_0(b, y),
            GgmlType::Q4_1 => q4_1(b, y),
            GgmlType::Q5_0 => q5_0(b, y),
            GgmlType::Q5_1 => q5_1(b, y),
            GgmlType::Q8_0 => q8_0(b, y),
            GgmlType::Q4_K => q4_k(b, y),
            GgmlType::Q5_K => q5_k(b, y),
            GgmlType::Q6_K => q6_k(b, y),
        }
    }
}

/// `block_q4_0`: d (f16), qs[16]; x = (nibble - 8) * d, low nibbles first.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1`: d, m (f16), qs[16]; x = nibble * d + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0xF) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `block_q5_0`: d (f16), qh (u32 high bits), qs[16]; x = (q5 - 16) * d.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as i32;
        let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
        y[j] = (((qs[j] & 0xF) as i32 | xh0) - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as i32 | xh1) - 16) as f32 * d;
    }
}

/// `block_q5_1`: d, m (f16), qh (u32), qs[16]; x = q5 * d + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((qs[j] & 0xF) as u32 | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | xh1) as f32 * d + m;
    }
}

/// `block_q8_0`: d (f16), qs[32] (i8); x = q * d.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K`: d, dmin (f16), scales[12], qs[128]; 8 sub-blocks of 32.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (c, chunk) in y.chunks_exact_mut(64).enumerate() {
        let q = &qs[c * 32..c * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            chunk[l] = d1 * (q[l] & 0xF) as f32 - m1;
            chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K`: d, dmin (f16), scales[12], qh[32], qs[128].
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (c, chunk) in y.chunks_exact_mut(64).enumerate() {
        let ql = &qs[c * 32..c * 32 + 32];
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            chunk[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
            chunk[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `block_q6_K`: ql[128], qh[64], scales[16] (i8), d (f16); two halves of 128.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (half, chunk) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            chunk[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            chunk[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            chunk[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            chunk[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn q4_0_block_by_hand() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y);
        assert_eq!(y[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(y[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(y[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(y[31], -4.0);
    }

    #[test]
    fn q4_1_and_q8_0_by_hand() {
        let mut b = f16b(2.0).to_vec();
        b.extend(f16b(-1.0));
        b.extend([0x31u8; 16]);
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y);
        assert_eq!((y[0], y[16]), (1.0, 5.0));
        let mut b = f16b(0.25).to_vec();
        b.extend((0..32).map(|i: i32| (i - 16) as i8 as u8));
        dequantize(GgmlType::Q8_0, &b, &mut y);
        assert_eq!((y[0], y[31]), (-4.0, 3.75));
    }

    #[test]
    fn q5_0_uses_high_bits() {
        let mut b = f16b(1.0).to_vec();
        b.extend(0x0001_0001u32.to_le_bytes()); // bit 0 (elem 0) and bit 16 (elem 16)
        b.extend([0u8; 16]);
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q5_0, &b, &mut y);
        assert_eq!(y[0], 0.0); // 16 - 16
        assert_eq!(y[1], -16.0);
        assert_eq!(y[16], 0.0);
        assert_eq!(y[17], -16.0);
    }

    #[test]
    fn q4_k_scales_and_mins() {
        // d = 1, dmin = 1, sub-block 0 scale 2 min 3, nibbles 5: 2*5 - 3 = 7.
        let mut b = f16b(1.0).to_vec();
        b.extend(f16b(1.0));
        let mut scales = [0u8; 12];
        scales[0] = 2;
        scales[4] = 3;
        b.extend(scales);
        b.extend([0x55u8; 128]);
        let mut y = [0f32; 256];
        dequantize(GgmlType::Q4_K, &b, &mut y);
        assert_eq!(y[0], 7.0);
        assert_eq!(y[32], 0.0); // sub-block 1: scale 0, min 0
    }

    #[test]
    fn q6_k_signed_scales() {
        let mut b = vec![0u8; 210];
        b[..128].fill(0x11); // ql nibbles = 1
        b[192] = (-2i8) as u8; // scale of elems 0..16
        b[208..210].copy_from_slice(&f16b(0.5));
        let mut y = [0f32; 256];
        dequantize(GgmlType::Q6_K, &b, &mut y);
        assert_eq!(y[0], 0.5 * -2.0 * (1 - 32) as f32);
        assert_eq!(y[16], 0.0); // scale index 1 is 0
    }
}
