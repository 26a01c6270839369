//! `delta_add` (id 11): a fine-tune as its base plus any weight encoding of the
//! difference `Δ = W_ft − W_base`: grouped INT2/3/4 of Δ (a fine-tune's update is small
//! and centred, so symmetric groups fit it), a low-rank factorisation of Δ (updates are
//! close to low rank), or a sum of both (low rank plus a quantized residual).
//!
//! Layout after the header: the inner encoding (any non-delta encoding of the same shape,
//! `docs/FORMAT.md` §4). Value = base + inner value.

use rayon::prelude::*;

use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{delta_needs_base, EncodingRow, GpuDecode};
use super::traits::{BaseView, Codec, Decoder, DeltaCodec};
use crate::error::Corruption;
use crate::{Error, Result};

/// Codec id of `delta_add`.
pub const ID: CodecId = CodecId(11);

/// The `delta_add` row: the inner encoding's path, then an add on the CPU.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "delta_add",
    decode: delta_needs_base,
    gpu: GpuDecode::CpuThenUpload,
    apply: Some(apply),
    regrid: None,
};

/// Base + `inner`(Δ).
pub struct DeltaAdd {
    /// The codec of the difference.
    pub inner: Box<dyn Codec>,
    /// Its label.
    pub label: String,
}

impl DeltaCodec for DeltaAdd {
    fn describe(&self) -> String {
        format!("delta + {}", self.label)
    }

    fn encode_checked(
        &self,
        ft: &[f32],
        base: &BaseView<'_>,
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Option<Vec<u8>>> {
        let d: Vec<f32> = ft.par_iter().zip(base.values).map(|(f, b)| f - b).collect();
        let inner = self.inner.encode_checked(&d, rows, cols, importance)?;
        Ok(Some(wrap(&inner, rows, cols)))
    }
}

/// `delta_add` of an inner encoding of the difference (made by any codec, or built from
/// known factors such as a LoRA adapter's).
pub fn wrap(inner: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + inner.len());
    buf.extend_from_slice(&Header::new(ID, rows, cols).to_bytes());
    buf.extend_from_slice(inner);
    buf
}

fn apply(
    h: &Header,
    bytes: &[u8],
    base: &BaseView<'_>,
    out: &mut [f32],
    inner: Decoder,
) -> Result<()> {
    let body = &bytes[HEADER_LEN..];
    let ih = Header::parse(body)?;
    if ih.rows != h.rows || ih.cols != h.cols {
        return Err(Error::corrupt(
            ENCODING.name,
            Corruption::Structure("the inner encoding has another shape"),
        ));
    }
    // The dispatcher refuses delta encodings (they need a base), so nesting is refused.
    inner(body, out)?;
    out.par_iter_mut()
        .zip(base.values)
        .for_each(|(o, b)| *o += b);
    Ok(())
}
