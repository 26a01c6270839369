//! `delta_grid` (id 12): a fine-tune quantized on its *base artifact's* grid.
//!
//! When the base is itself a quantized `.tnpk` (an `int4` `balanced` artifact, say), an
//! inference host holding it wants the fine-tune as a patch to those bytes. The fine-tune
//! is re-quantized with the base encoding's own scales, offsets, AWQ multipliers and
//! outlier positions (the codec table's `regrid`), so a code changes only where the
//! fine-tune crossed a rounding boundary; the result is stored as the XOR of the two
//! encodings (nearly all zero bytes), compressed with zstd. Decoding XORs the patch onto
//! the base encoding and decodes that as any encoding: the GPU and every reader of the
//! base codec apply unchanged.
//!
//! Layout after the header: the encoding's length (u64, equal to the base encoding's),
//! then one zstd frame of the XOR.

use super::header::{CodecId, Header, HEADER_LEN};
use super::spec::{delta_needs_base, EncodingRow, GpuDecode};
use super::traits::{BaseView, Decoder, DeltaCodec};
use crate::error::Corruption;
use crate::{Error, Result};

/// Codec id of `delta_grid`.
pub const ID: CodecId = CodecId(12);

/// The `delta_grid` row: the patch is applied on the CPU, then the patched encoding takes
/// its own codec's path.
pub const ENCODING: EncodingRow = EncodingRow {
    id: ID,
    name: "delta_grid",
    decode: delta_needs_base,
    gpu: GpuDecode::CpuThenUpload,
    apply: Some(apply),
    regrid: None,
};

/// The codec table's re-quantizer: an encoding and new values → the values on its grid,
/// `None` where the encoding has none.
pub type OnGrid = fn(&[u8], &[f32], f32) -> Result<Option<Vec<u8>>>;

/// Re-quantize on the base's grid, store the XOR patch.
#[derive(Debug, Clone, Copy)]
pub struct DeltaGrid {
    /// The codec table's re-quantizer (`Ok(None)`: the base encoding has no grid).
    pub requantize: OnGrid,
    /// zstd level.
    pub level: i32,
    /// Refit a group's own scale and offset where that loses less than this times the
    /// error on the base's (0: keep every group's; see [`crate::codec::table::requantize`]).
    pub refit: f32,
}

/// The fine-tune's encoding on the base's grid, or `None` where the base has no
/// encoding with a grid.
pub fn on_grid(
    requantize: OnGrid,
    ft: &[f32],
    base: &BaseView<'_>,
    refit: f32,
) -> Result<Option<Vec<u8>>> {
    match base.encoded {
        Some(enc) => requantize(enc, ft, refit),
        None => Ok(None),
    }
}

impl DeltaCodec for DeltaGrid {
    fn describe(&self) -> String {
        "delta on the base's grid".into()
    }

    fn encode_checked(
        &self,
        ft: &[f32],
        base: &BaseView<'_>,
        rows: usize,
        cols: usize,
        _: Option<&[f32]>,
    ) -> Result<Option<Vec<u8>>> {
        let (Some(enc), Some(base_enc)) = (
            on_grid(self.requantize, ft, base, self.refit)?,
            base.encoded,
        ) else {
            return Ok(None);
        };
        let xor: Vec<u8> = enc.iter().zip(base_enc).map(|(a, b)| a ^ b).collect();
        let z = zstd::bulk::compress(&xor, self.level)
            .map_err(|e| Error::corrupt(ENCODING.name, Corruption::Stream(e.to_string())))?;
        let mut buf = Vec::with_capacity(HEADER_LEN + 8 + z.len());
        buf.extend_from_slice(&Header::new(ID, rows, cols).to_bytes());
        buf.extend_from_slice(&(enc.len() as u64).to_le_bytes());
        buf.extend_from_slice(&z);
        Ok(Some(buf))
    }
}

fn apply(
    h: &Header,
    bytes: &[u8],
    base: &BaseView<'_>,
    out: &mut [f32],
    decode: Decoder,
) -> Result<()> {
    let fail = |p| Error::corrupt(ENCODING.name, p);
    let Some(base_enc) = base.encoded else {
        return Err(fail(Corruption::BaseTensor(
            "a grid delta patches the base's encoding; the base stores this tensor raw",
        )));
    };
    let Some(len) = bytes.get(HEADER_LEN..HEADER_LEN + 8) else {
        return Err(fail(Corruption::Truncated {
            what: "encoding length",
            needed: (HEADER_LEN + 8) as u64,
            len: bytes.len() as u64,
        }));
    };
    let mut l8 = [0u8; 8];
    l8.copy_from_slice(len);
    if u64::from_le_bytes(l8) != base_enc.len() as u64 {
        return Err(fail(Corruption::BaseTensor(
            "the base encoding's length differs from the one the patch was made for",
        )));
    }
    let mut patched = vec![0u8; base_enc.len()];
    let got = zstd::bulk::decompress_to_buffer(&bytes[HEADER_LEN + 8..], &mut patched)
        .map_err(|e| fail(Corruption::Stream(e.to_string())))?;
    if got != base_enc.len() {
        return Err(fail(Corruption::Stream(format!(
            "{got} bytes where the encoding has {}",
            base_enc.len()
        ))));
    }
    patched.iter_mut().zip(base_enc).for_each(|(p, b)| *p ^= b);
    let ph = Header::parse(&patched)?;
    if ph.rows != h.rows || ph.cols != h.cols {
        return Err(fail(Corruption::Structure(
            "the patched encoding has another shape",
        )));
    }
    decode(&patched, out)
}
