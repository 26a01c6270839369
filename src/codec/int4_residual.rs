//! `int4_residual`: INT4 (group g, default 16) then INT2 on what INT4 left over
//! (group g₂, default 16), both asymmetric with fp16 scale and offset and refined.
//! 6 bits of codes per weight; with g = g₂ = 16 the scales and offsets add 4 more.
//!
//! Layout after the header: the INT4 stage arrays, then the INT2 stage arrays
//! (each `scales | offsets | codes`, as in [`super::int4`]).

use super::group::Stage;
use super::header::{CodecId, Header, HEADER_LEN};
use super::int4::{
    check_scales_finite, decode_stage, decode_stages, encode_stage, push_stage, regrid,
    split_stage, stage_from_header,
};
use super::spec::{
    check_group, CodecKind, CodecSpec, EncodingRow, Family, GpuDecode, ResidualGroup,
};
use super::traits::{Codec, Decoder};
use crate::error::Corruption;
use crate::{Error, Result};

/// Codec id of `int4_residual`.
pub const ID: CodecId = CodecId(2);

/// The `int4_residual` row of the codec table: two grouped stages, decoded by the
/// grouped-INT kernels on the GPU.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "int4_residual",
    decode,
    gpu: GpuDecode::GroupedInt,
    apply: None,
    regrid: Some(|h, b, w, refit, _| requantize(h, b, w, refit)),
};

/// The `int4_residual` family (default g = g₂ = 16; `--group-size` sets both).
pub const FAMILY: Family = Family {
    kind: CodecKind::Int4Residual,
    name: "int4_residual",
    preset: |g| CodecSpec::int4_residual(g.unwrap_or(16), g.unwrap_or(16)),
    build: |s, _| {
        Ok(Box::new(Int4Residual::new(
            s.group,
            s.residual_group,
            s.refine_iters,
        )?))
    },
    label: |s| format!("int4+int2 g{}/{}", s.group, s.residual_group),
    scalar_bits: None,
    vq: false,
    residual_group: ResidualGroup::Required,
    weighted: false,
    gptq: None,
};

/// The `int4_residual` codec.
#[derive(Debug, Clone)]
pub struct Int4Residual {
    first: Stage,
    second: Stage,
}

impl Int4Residual {
    /// Creates the codec.
    pub fn new(group: usize, residual_group: usize, refine_iters: u32) -> Result<Self> {
        check_group("int4_residual", "group size", group)?;
        check_group("int4_residual", "residual group size", residual_group)?;
        Ok(Self {
            first: Stage {
                bits: 4,
                group,
                symmetric: false,
                refine_iters,
            },
            second: Stage {
                bits: 2,
                group: residual_group,
                symmetric: false,
                refine_iters,
            },
        })
    }
}

impl Codec for Int4Residual {
    fn describe(&self) -> String {
        format!(
            "int4_residual g{}/{} refine{}",
            self.first.group, self.second.group, self.first.refine_iters
        )
    }

    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        let d1 = encode_stage(&self.first, w, importance, cols);
        check_scales_finite(&d1)?;
        let mut buf = Vec::with_capacity(self.encoded_len(rows, cols));
        buf.extend_from_slice(
            &Header {
                id: ID,
                symmetric: false,
                group: self.first.group as u16,
                rows: rows as u32,
                cols: cols as u32,
                group2: self.second.group as u16,
                refine: self.first.refine_iters as u8,
            }
            .to_bytes(),
        );
        push_stage(&mut buf, &d1);
        // Residual of what the first stage will decode to, exactly.
        let mut approx = vec![0f32; w.len()];
        decode_stage(self.first, &buf[HEADER_LEN..], rows, cols, &mut approx)?;
        for (a, x) in approx.iter_mut().zip(w) {
            *a = x - *a;
        }
        let d2 = encode_stage(&self.second, &approx, importance, cols);
        check_scales_finite(&d2)?;
        push_stage(&mut buf, &d2);
        debug_assert_eq!(buf.len(), self.encoded_len(rows, cols));
        Ok(buf)
    }

    fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        HEADER_LEN + self.first.encoded_len(rows, cols) + self.second.encoded_len(rows, cols)
    }
}

/// The two stages a header describes.
fn stages(h: &Header) -> Result<[Stage; 2]> {
    if h.symmetric {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Field {
                field: "symmetric flag (int4_residual is asymmetric)",
                value: 1,
            },
        ));
    }
    let first = stage_from_header(h, h.group)?;
    let mut second = stage_from_header(h, h.group2)?;
    second.bits = 2;
    Ok([first, second])
}

/// An `int4_residual` encoding with both stages' codes recomputed for `w` on its grid.
pub(crate) fn requantize(h: &Header, base: &[u8], w: &[f32], refit: f32) -> Result<Vec<u8>> {
    let stages = stages(h)?;
    let mut out = base.to_vec();
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    let used = regrid(
        ENCODING.name,
        &stages,
        &mut out[HEADER_LEN..],
        rows,
        cols,
        w,
        refit,
    )?;
    if HEADER_LEN + used != out.len() {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Length {
                what: "bytes",
                expected: (HEADER_LEN + used) as u64,
                actual: out.len() as u64,
            },
        ));
    }
    Ok(out)
}

/// Decodes an `int4_residual` encoding.
pub(crate) fn decode(h: &Header, bytes: &[u8], out: &mut [f32], _: Decoder) -> Result<()> {
    let [first, second] = stages(h)?;
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    let body = &bytes[HEADER_LEN..];
    let (v1, n1) = split_stage(ENCODING.name, first, body, rows, cols)?;
    let (v2, n2) = split_stage(ENCODING.name, second, &body[n1..], rows, cols)?;
    if n1 + n2 != body.len() {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Length {
                what: "bytes",
                expected: (HEADER_LEN + n1 + n2) as u64,
                actual: bytes.len() as u64,
            },
        ));
    }
    decode_stages(&[v1, v2], cols, out);
    Ok(())
}
