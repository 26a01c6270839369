//! The codec table: every codec TenPak has, in one place.
//!
//! Two tables, one per level:
//! - [`ENCODINGS`]: one row per *encoding* (the codec id in the header's first byte): its
//!   name, its CPU decoder, and how the GPU decodes it ([`super::spec::GpuDecode`]: a kernel, or
//!   "decoded on the CPU, then uploaded as values", stated per row). [`super::Header::parse`]
//!   parses any id, [`decode`] accepts only these and dispatches through them, and
//!   `tenpak::gpu` chooses kernels by them.
//! - [`FAMILIES`]: one row per *codec family* a user or the planner picks (`int4`,
//!   `calibrated_vq`, ...): its [`CodecKind`], its parameters' defaults and checks, how it
//!   is built, labelled and calibrated. [`NAMES`] adds the presets the CLI accepts.
//!
//! Adding a codec: write its file (encoder implementing [`super::Codec`], `pub const ID`,
//! `decode`, and for a family its `FAMILY` row), add its rows here (and its [`CodecKind`]
//! variant), and document the encoding in `docs/FORMAT.md`. Nothing else dispatches on
//! codec ids. The row types live in [`super::spec`] so that codec files need nothing
//! from this file; the decoders of nested encodings get [`decode`] handed in.

use super::header::{CodecId, Header};
use super::spec::{CodecKind, CodecSpec, EncodingRow, Family, Name};
use super::traits::BaseView;
use super::{
    awq, delta_add, delta_exact, delta_grid, delta_sign, factored, int4, int4_residual, lowrank,
    outliers, vq,
};
use crate::error::Corruption;
use crate::{Error, Result};

/// Every encoding, by id.
pub const ENCODINGS: &[EncodingRow] = &[
    int4::ENCODING,
    int4_residual::ENCODING,
    outliers::ENCODING,
    int4::ENCODING_N,
    awq::ENCODING,
    vq::ENCODING,
    lowrank::ENCODING,
    lowrank::ENCODING_SUM,
    delta_exact::ENCODING,
    delta_exact::ENCODING_CODED,
    delta_sign::ENCODING,
    delta_add::ENCODING,
    delta_grid::ENCODING,
    factored::ENCODING,
];

/// The row of codec id `id`.
pub fn row(id: CodecId) -> Option<&'static EncodingRow> {
    ENCODINGS.iter().find(|r| r.id == id)
}

/// Every family, one row per [`CodecKind`] variant.
pub const FAMILIES: &[Family] = &[
    int4::FAMILY_4,
    int4_residual::FAMILY,
    int4::FAMILY_3,
    int4::FAMILY_2,
    vq::FAMILY,
    lowrank::FAMILY,
];

impl CodecKind {
    /// The family's row.
    pub fn family(self) -> &'static Family {
        // Every kind has a row (the table test proves it); a missing one is a bug to see,
        // not a family to stand in for silently.
        FAMILIES
            .iter()
            .find(|f| f.kind == self)
            .expect("every CodecKind has a row in FAMILIES")
    }

    /// Bits per code of the grouped scalar kinds.
    pub fn scalar_bits(self) -> Option<u32> {
        self.family().scalar_bits
    }
}

/// Presets beside the family names.
pub const PRESETS: &[Name] = &[
    Name {
        name: "int4_awq",
        spec: awq::int4_awq_preset,
    },
    Name {
        name: "int4_g8_fp16",
        spec: |g| CodecSpec::int4(g.unwrap_or(8)),
    },
    Name {
        name: "int4_opt_llama",
        spec: |g| CodecSpec::int4(g.unwrap_or(128)),
    },
];

/// Every name `--codec` accepts, in the order help texts list them.
pub fn names() -> impl Iterator<Item = Name> {
    FAMILIES
        .iter()
        .map(|f| Name {
            name: f.name,
            spec: f.preset,
        })
        .chain(PRESETS.iter().copied())
}

/// The names, comma-separated (for help and errors).
pub fn name_list() -> String {
    names().map(|n| n.name).collect::<Vec<_>>().join(", ")
}

/// Decodes any encoding in the table into `out`, checking its header against
/// `out.len()` and its length against the header: the row of the header's codec id decodes
/// it (and gets this function for the encodings nested inside).
pub fn decode(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let (h, row) = checked_row(bytes, out.len())?;
    (row.decode)(&h, bytes, out, decode)
}

/// The header of `bytes` and its row, checked against `n` output values.
fn checked_row(bytes: &[u8], n: usize) -> Result<(Header, &'static EncodingRow)> {
    let h = Header::parse(bytes)?;
    let Some(row) = row(h.id) else {
        return Err(Error::corrupt(
            "unknown",
            Corruption::UnknownCodecId { id: h.id.0 },
        ));
    };
    if h.numel() != n {
        return Err(Error::corrupt(
            row.name,
            Corruption::Length {
                what: "weights",
                expected: n as u64,
                actual: h.numel() as u64,
            },
        ));
    }
    Ok((h, row))
}

/// Whether `bytes` is a delta encoding (one that needs its base tensor).
pub fn is_delta(bytes: &[u8]) -> bool {
    Header::parse(bytes)
        .ok()
        .and_then(|h| row(h.id))
        .is_some_and(|r| r.apply.is_some())
}

/// Applies a delta encoding to its base tensor: the fine-tune's values into `out`.
pub fn apply(bytes: &[u8], base: &BaseView<'_>, out: &mut [f32]) -> Result<()> {
    let (h, row) = checked_row(bytes, out.len())?;
    if base.values.len() != out.len() {
        return Err(Error::corrupt(
            row.name,
            Corruption::BaseTensor("the base tensor has another number of weights"),
        ));
    }
    match row.apply {
        Some(apply) => apply(&h, bytes, base, out, decode),
        None => Err(Error::corrupt(
            row.name,
            Corruption::Structure("not a delta encoding"),
        )),
    }
}

/// `w` on the grid of the encoding `enc` (its scales, offsets, multipliers and outlier
/// positions kept, its codes recomputed); `None` where the encoding has no grid to keep
/// (VQ, low rank). With `refit` > 0, a group whose own fit (scale, offset) loses less
/// than `refit` times the error on the kept grid takes its own parameters ("scales that
/// moved"; `delta_grid` then patches those bytes too).
pub fn requantize(enc: &[u8], w: &[f32], refit: f32) -> Result<Option<Vec<u8>>> {
    let (h, row) = checked_row(enc, w.len())?;
    match row.regrid {
        Some(regrid) => regrid(&h, enc, w, refit, requantize_nested).map(Some),
        None => Ok(None),
    }
}

fn requantize_nested(enc: &[u8], w: &[f32], refit: f32) -> Result<Vec<u8>> {
    requantize(enc, w, refit)?.ok_or_else(|| {
        Error::corrupt(
            "regrid",
            Corruption::Structure("a wrapper around an encoding without a grid"),
        )
    })
}

/// Checks, before anything is allocated, that `bytes` can decode to `n` weights: its
/// header claims `n`, and the bytes are not too few for that many. No encoding here holds
/// more than 4096 weights per byte (a rank-1 factor of a 4096-wide square matrix is
/// 2048); a claim beyond that is corrupt (a tiny input must not make a reader allocate
/// gigabytes before the decoder finds the bytes missing).
pub fn check_output(bytes: &[u8], n: usize) -> Result<()> {
    let (h, row) = checked_row(bytes, n)?;
    if h.numel() / 4096 > bytes.len() {
        return Err(Error::corrupt(
            row.name,
            Corruption::Length {
                what: "bytes for the weights the header claims",
                expected: (h.numel() / 4096) as u64,
                actual: bytes.len() as u64,
            },
        ));
    }
    Ok(())
}

/// Decodes into a new vector.
pub fn decode_vec(bytes: &[u8]) -> Result<Vec<f32>> {
    let n = Header::parse(bytes)?.numel();
    check_output(bytes, n)?;
    let mut out = vec![0f32; n];
    decode(bytes, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_unique_and_families_cover_every_kind() {
        let mut ids: Vec<u8> = ENCODINGS.iter().map(|r| r.id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ENCODINGS.len(), "duplicate codec id");
        let mut all: Vec<&str> = names().map(|n| n.name).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), names().count(), "duplicate codec name");
        for (i, f) in FAMILIES.iter().enumerate() {
            assert_eq!(f.kind.family().name, f.name, "row {i}");
            let spec = (f.preset)(None);
            assert_eq!(spec.kind, f.kind, "{}: preset of another kind", f.name);
            spec.validate().expect("presets are valid");
        }
        // Every variant has a row (this match fails to compile when a variant is added).
        for k in [
            CodecKind::Int4,
            CodecKind::Int4Residual,
            CodecKind::Int3,
            CodecKind::Int2,
            CodecKind::CalibratedVq,
            CodecKind::TenpakX,
        ] {
            match k {
                CodecKind::Int4
                | CodecKind::Int4Residual
                | CodecKind::Int3
                | CodecKind::Int2
                | CodecKind::CalibratedVq
                | CodecKind::TenpakX => {
                    assert!(FAMILIES.iter().any(|f| f.kind == k), "{k:?} has no row")
                }
            }
        }
    }

    #[test]
    fn decode_writes_every_output_value_whatever_the_buffer_held() {
        // Callers decode into reused or uninitialized buffers (the Python package writes
        // f32 straight into a new bytearray): no codec may read or accumulate into what
        // `out` held before. Decodes into a NaN-filled and a zeroed buffer must agree.
        let (rows, cols) = (32, 256);
        let w = crate::rng::weights(rows * cols, 7, 0.02);
        let mut specs: Vec<crate::codec::CodecSpec> =
            FAMILIES.iter().map(|f| (f.preset)(None)).collect();
        let mut outliers = (FAMILIES[0].preset)(None);
        outliers.outlier_fraction = 0.01;
        specs.push(outliers);
        let mut sym = (FAMILIES[0].preset)(None);
        sym.symmetric = true;
        specs.push(sym);
        for spec in specs {
            let bytes = spec
                .build()
                .expect("build")
                .encode(&w, rows, cols, None)
                .expect("encode");
            let mut zeroed = vec![0f32; w.len()];
            let mut dirty = vec![f32::NAN; w.len()];
            decode(&bytes, &mut zeroed).expect("decode");
            decode(&bytes, &mut dirty).expect("decode");
            let same = zeroed
                .iter()
                .zip(&dirty)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{}: decode depends on the buffer's contents",
                spec.label()
            );
        }
    }
}
