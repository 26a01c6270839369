//! `int4`: grouped 4-bit quantization with fp16 scale (and offset, asymmetric), with
//! iterative scale refinement (see [`super::group`]).
//!
//! Layout after the header: `scales f16[G] | offsets f16[G] (asymmetric only) | codes`,
//! `G = rows · ceil(cols / group)`; codes packed two per byte, low nibble first, each
//! group starting on a byte boundary.
//!
//! The same codec at 3 or 2 bits (`int3`, `int2`; header id `IntN`, bits in `group2`)
//! packs codes as a little-endian bit stream, each group starting on a byte boundary.

use rayon::prelude::*;

use super::group::{Stage, StageData, ROWS_PER_TASK};
use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{
    check_group, CodecKind, CodecSpec, EncodingRow, Family, GpuDecode, ResidualGroup,
};
use super::traits::{f16_bytes, Codec, Decoder};
use crate::error::{CodecProblem, Corruption};
use crate::{Error, Result};

/// Codec id of `int4`.
pub const ID: CodecId = CodecId(1);
/// Codec id of the same quantizer at 2 or 3 bits (`group2` = bits).
pub const ID_N: CodecId = CodecId(4);

/// The `int4` row of the codec table.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "int4",
    decode,
    gpu: GpuDecode::GroupedInt,
    apply: None,
    regrid: Some(|h, b, w, refit, _| requantize(h, b, w, refit)),
};

/// The `int3`/`int2` row: no kernel yet, so decoded on the CPU and uploaded.
pub const ENCODING_N: EncodingRow = EncodingRow {
    id: ID_N,
    name: "int3/int2",
    decode,
    gpu: GpuDecode::CpuThenUpload,
    apply: None,
    regrid: Some(|h, b, w, refit, _| requantize(h, b, w, refit)),
};

/// Code bits of the int kinds (4 for any other).
fn int_bits(k: CodecKind) -> u32 {
    match k {
        CodecKind::Int3 => 3,
        CodecKind::Int2 => 2,
        _ => 4,
    }
}

/// A corrupt-encoding error naming this file's codec of `h`.
fn corrupt(h: &Header, problem: Corruption) -> Error {
    let name = if h.id == ID_N {
        ENCODING_N.name
    } else {
        ENCODING.name
    };
    Error::corrupt(name, problem)
}

const fn family(kind: CodecKind, name: &'static str, bits: u32) -> Family {
    Family {
        kind,
        name,
        preset: match bits {
            4 => |g| CodecSpec::int(4, g.unwrap_or(128)),
            3 => |g| CodecSpec::int(3, g.unwrap_or(128)),
            _ => |g| CodecSpec::int(2, g.unwrap_or(64)),
        },
        build: |s, _| {
            let bits = int_bits(s.kind);
            Ok(Box::new(Int4::with_bits(
                bits,
                s.group,
                s.symmetric,
                s.refine_iters,
            )?))
        },
        label: |s| format!("int{} g{}", int_bits(s.kind), s.group),
        scalar_bits: Some(bits),
        vq: false,
        residual_group: ResidualGroup::No,
        weighted: false,
        gptq: None,
    }
}

/// The `int4` family: grouped INT4 (default g128).
pub const FAMILY_4: Family = family(CodecKind::Int4, "int4", 4);
/// The `int3` family (default g128).
pub const FAMILY_3: Family = family(CodecKind::Int3, "int3", 3);
/// The `int2` family (default g64).
pub const FAMILY_2: Family = family(CodecKind::Int2, "int2", 2);

/// The `int4` codec.
#[derive(Debug, Clone)]
pub struct Int4 {
    stage: Stage,
}

impl Int4 {
    /// Creates the codec; `group` within [`super::spec::MIN_GROUP`]..=[`super::spec::MAX_GROUP`].
    pub fn new(group: usize, symmetric: bool, refine_iters: u32) -> Result<Self> {
        Self::with_bits(4, group, symmetric, refine_iters)
    }

    /// The same codec with `bits` (2, 3 or 4) per code.
    pub fn with_bits(bits: u32, group: usize, symmetric: bool, refine_iters: u32) -> Result<Self> {
        check_group("int", "group size", group)?;
        if !(2..=4).contains(&bits) {
            return Err(Error::invalid_codec(
                "int",
                CodecProblem::OutOfRange {
                    parameter: "code bits",
                    value: bits as f64,
                    min: 2.0,
                    max: 4.0,
                },
            ));
        }
        Ok(Self {
            stage: Stage {
                bits,
                group,
                symmetric,
                refine_iters,
            },
        })
    }
}

impl Int4 {
    /// Encodes with GPTQ error feedback from `h` (see [`super::gptq`]); the bytes are an
    /// ordinary `int4` encoding and decode with the plain decoder.
    pub fn encode_gptq(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &super::gptq::Hessian,
    ) -> Result<Vec<u8>> {
        super::traits::check_shape(w, rows, cols)?;
        super::traits::check_finite(w)?;
        let d = super::gptq::encode(&self.stage, w, cols, h)?;
        check_scales_finite(&d)?;
        let mut buf = Vec::with_capacity(self.encoded_len(rows, cols));
        buf.extend_from_slice(&self.header(rows, cols).to_bytes());
        push_stage(&mut buf, &d);
        Ok(buf)
    }

    fn header(&self, rows: usize, cols: usize) -> Header {
        let four = self.stage.bits == 4;
        Header {
            id: if four { ID } else { ID_N },
            symmetric: self.stage.symmetric,
            group: self.stage.group as u16,
            rows: rows as u32,
            cols: cols as u32,
            group2: if four { 0 } else { self.stage.bits as u16 },
            refine: self.stage.refine_iters as u8,
        }
    }
}

/// Encodes `w` with `stage` using all cores; rows are independent.
pub(crate) fn encode_stage(stage: &Stage, w: &[f32], h: Option<&[f32]>, cols: usize) -> StageData {
    if cols == 0 || w.is_empty() {
        return StageData::default();
    }
    let parts: Vec<StageData> = w
        .par_chunks(cols * ROWS_PER_TASK)
        .enumerate()
        .map(|(i, chunk)| {
            let hc =
                h.map(|h| &h[i * cols * ROWS_PER_TASK..i * cols * ROWS_PER_TASK + chunk.len()]);
            stage.encode_rows(chunk, hc, cols)
        })
        .collect();
    StageData::concat(parts)
}

/// Appends a stage's arrays to `buf`.
pub(crate) fn push_stage(buf: &mut Vec<u8>, d: &StageData) {
    buf.extend(f16_bytes(&d.scales));
    buf.extend(f16_bytes(&d.offsets));
    buf.extend_from_slice(&d.codes);
}

/// One stage's arrays inside an encoding.
pub(crate) struct StageView<'a> {
    stage: Stage,
    scales: &'a [u8],
    offsets: &'a [u8],
    codes: &'a [u8],
}

/// Locates a stage's arrays at the start of `bytes`; returns them and the bytes they span.
pub(crate) fn split_stage<'a>(
    codec: &'static str,
    stage: Stage,
    bytes: &'a [u8],
    rows: usize,
    cols: usize,
) -> Result<(StageView<'a>, usize)> {
    let need = stage.encoded_len(rows, cols);
    if bytes.len() < need {
        return Err(Error::corrupt(
            codec,
            Corruption::Truncated {
                what: "stage arrays",
                needed: need as u64,
                len: bytes.len() as u64,
            },
        ));
    }
    let groups = rows * stage.groups_per_row(cols);
    let scales = &bytes[..2 * groups];
    let (offsets, codes) = if stage.symmetric {
        (&bytes[0..0], &bytes[2 * groups..need])
    } else {
        (&bytes[2 * groups..4 * groups], &bytes[4 * groups..need])
    };
    Ok((
        StageView {
            stage,
            scales,
            offsets,
            codes,
        },
        need,
    ))
}

/// Decodes stages into `out` in parallel over row blocks: the first stage writes, later
/// stages add (residuals). A block stays in cache while all its stages are applied.
pub(crate) fn decode_stages(views: &[StageView<'_>], cols: usize, out: &mut [f32]) {
    if cols == 0 || out.is_empty() {
        return;
    }
    out.par_chunks_mut(cols * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(i, o)| {
            let r0 = i * ROWS_PER_TASK;
            let n = o.len() / cols;
            for (k, v) in views.iter().enumerate() {
                let gpr = v.stage.groups_per_row(cols);
                let cbr = v.stage.code_bytes_per_row(cols);
                let g = r0 * gpr..(r0 + n) * gpr;
                let off = if v.stage.symmetric {
                    &v.offsets[0..0]
                } else {
                    &v.offsets[2 * g.start..2 * g.end]
                };
                v.stage.decode_rows(
                    &v.scales[2 * g.start..2 * g.end],
                    off,
                    &v.codes[r0 * cbr..(r0 + n) * cbr],
                    cols,
                    o,
                    k > 0,
                );
            }
        });
}

/// Recomputes the codes of consecutive stages at the start of `body` (an encoding's
/// bytes after its header) for `w`, keeping every stage's scales and offsets: `w` put on
/// the grid of an existing encoding. A later stage is fitted to what the earlier ones
/// leave, as its encoder does. Returns the bytes the stages span.
pub(crate) fn regrid(
    codec: &'static str,
    stages: &[Stage],
    body: &mut [u8],
    rows: usize,
    cols: usize,
    w: &[f32],
    refit: f32,
) -> Result<usize> {
    let mut target = w.to_vec();
    let mut pos = 0;
    for (k, &stage) in stages.iter().enumerate() {
        let (_, used) = split_stage(codec, stage, &body[pos..], rows, cols)?;
        let groups = rows * stage.groups_per_row(cols);
        let params = if stage.symmetric { 2 } else { 4 } * groups;
        // Only the first stage refits: a residual's grid follows the stage before it.
        let codes = stage.codes_on_grid_refit(
            &mut body[pos..pos + params],
            &target,
            cols,
            if k == 0 { refit } else { 0.0 },
        );
        let start = pos + used - codes.len();
        body[start..pos + used].copy_from_slice(&codes);
        if k + 1 < stages.len() {
            let mut approx = vec![0f32; target.len()];
            decode_stage(stage, &body[pos..], rows, cols, &mut approx)?;
            target.iter_mut().zip(&approx).for_each(|(t, a)| *t -= a);
        }
        pos += used;
    }
    Ok(pos)
}

/// An `int4`/`intN` encoding with its codes recomputed for `w` on its own grid.
pub(crate) fn requantize(h: &Header, base: &[u8], w: &[f32], refit: f32) -> Result<Vec<u8>> {
    let stage = stage_from_header(h, h.group)?;
    let mut out = base.to_vec();
    let (rows, cols) = (h.rows as usize, h.cols as usize);
    let used = regrid(
        ENCODING.name,
        &[stage],
        &mut out[HEADER_LEN..],
        rows,
        cols,
        w,
        refit,
    )?;
    if HEADER_LEN + used != out.len() {
        return Err(corrupt(
            h,
            Corruption::Length {
                what: "bytes",
                expected: (HEADER_LEN + used) as u64,
                actual: out.len() as u64,
            },
        ));
    }
    Ok(out)
}

/// Decodes one stage into `out` (overwriting); returns the bytes it consumed.
pub(crate) fn decode_stage(
    stage: Stage,
    bytes: &[u8],
    rows: usize,
    cols: usize,
    out: &mut [f32],
) -> Result<usize> {
    let (v, used) = split_stage("int4", stage, bytes, rows, cols)?;
    decode_stages(&[v], cols, out);
    Ok(used)
}

impl Codec for Int4 {
    fn describe(&self) -> String {
        format!(
            "int{} g{} {} refine{}",
            self.stage.bits,
            self.stage.group,
            if self.stage.symmetric { "sym" } else { "asym" },
            self.stage.refine_iters
        )
    }

    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        let d = encode_stage(&self.stage, w, importance, cols);
        let mut buf = Vec::with_capacity(self.encoded_len(rows, cols));
        buf.extend_from_slice(&self.header(rows, cols).to_bytes());
        push_stage(&mut buf, &d);
        debug_assert_eq!(buf.len(), self.encoded_len(rows, cols));
        check_scales_finite(&d)?;
        Ok(buf)
    }

    fn encoded_len(&self, rows: usize, cols: usize) -> usize {
        HEADER_LEN + self.stage.encoded_len(rows, cols)
    }
}

/// fp16 scales overflow for weight ranges beyond ±65504: refuse rather than store inf.
pub(crate) fn check_scales_finite(d: &StageData) -> Result<()> {
    if let Some(i) = d
        .scales
        .iter()
        .chain(&d.offsets)
        .position(|x| !x.is_finite())
    {
        return Err(Error::invalid_codec(
            "int",
            CodecProblem::ScaleOverflow { group: i },
        ));
    }
    Ok(())
}

pub(crate) fn stage_from_header(h: &Header, group: u16) -> Result<Stage> {
    let group = group as usize;
    if !(super::spec::MIN_GROUP..=super::spec::MAX_GROUP).contains(&group) {
        return Err(corrupt(
            h,
            Corruption::Field {
                field: "group size",
                value: group as u64,
            },
        ));
    }
    let bits = match h.id {
        ID_N if matches!(h.group2, 2 | 3) => h.group2 as u32,
        ID_N => {
            return Err(corrupt(
                h,
                Corruption::Field {
                    field: "code bits",
                    value: h.group2 as u64,
                },
            ));
        }
        _ => 4,
    };
    Ok(Stage {
        bits,
        group,
        symmetric: h.symmetric,
        refine_iters: h.refine as u32,
    })
}

/// Decodes an `int4` (or `int3`/`int2`) encoding (header already parsed and checked
/// against `out`).
pub(crate) fn decode(h: &Header, bytes: &[u8], out: &mut [f32], _: Decoder) -> Result<()> {
    let stage = stage_from_header(h, h.group)?;
    let body = &bytes[HEADER_LEN..];
    let used = decode_stage(stage, body, h.rows as usize, h.cols as usize, out)?;
    if used != body.len() {
        return Err(corrupt(
            h,
            Corruption::Length {
                what: "bytes",
                expected: (HEADER_LEN + used) as u64,
                actual: bytes.len() as u64,
            },
        ));
    }
    Ok(())
}
