//! The codec trait and the input checks every codec shares. A leaf of `codec`.

use crate::error::CodecProblem;
use crate::{Error, Result};

/// A decoder of any encoding (bytes → values): the codec table's dispatcher, handed to
/// the codecs that hold or produce other encodings (wrappers, sums, searches), so that no
/// codec file depends on the table that lists it.
pub type Decoder = fn(&[u8], &mut [f32]) -> Result<()>;

/// A weight codec: encodes a row-major `[rows, cols]` f32 matrix to bytes and back.
pub trait Codec: Send + Sync {
    /// Name and parameters for reports (`int4 g128 asym refine5`).
    fn describe(&self) -> String;

    /// Encodes `w` (`rows * cols` values). `importance`, when given, weights each
    /// element's squared error in the fit (0 excludes it). NaN or infinity, a shape that
    /// does not match, or an importance of the wrong length is an error. The checks live
    /// here, once, for every codec; implementations provide [`Codec::encode_checked`].
    fn encode(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>> {
        check_shape(w, rows, cols)?;
        check_finite(w)?;
        if let Some(h) = importance {
            if h.len() != w.len() {
                return Err(Error::ShapeMismatch {
                    tensor: "importance".into(),
                    expected: vec![rows, cols],
                    got: vec![h.len()],
                });
            }
        }
        self.encode_checked(w, rows, cols, importance)
    }

    /// [`Codec::encode`] on inputs it has validated (shape, finiteness, importance
    /// length). Codecs that wrap others call this on the inner codec, so the checks run once.
    fn encode_checked(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<u8>>;

    /// Exact encoded size in bytes for a `[rows, cols]` matrix.
    fn encoded_len(&self, rows: usize, cols: usize) -> usize;

    /// Bits per weight for a `[rows, cols]` matrix, everything counted.
    fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        self.encoded_len(rows, cols) as f64 * 8.0 / (rows * cols).max(1) as f64
    }
}

/// Fails with [`Error::NonFinite`] on the first NaN or infinity.
pub fn check_finite(w: &[f32]) -> Result<()> {
    match w.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            index,
            value: w[index].to_string(),
        }),
    }
}

/// Fails unless `w` holds `rows × cols` values and both fit the header's u32 fields.
pub(crate) fn check_shape(w: &[f32], rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(w.len()) {
        return Err(Error::ShapeMismatch {
            tensor: String::new(),
            expected: vec![rows, cols],
            got: vec![w.len()],
        });
    }
    if rows > u32::MAX as usize || cols > u32::MAX as usize {
        return Err(Error::invalid_codec(
            "any",
            CodecProblem::Geometry {
                rows,
                cols,
                reason: "a dimension exceeds the header's u32 fields".into(),
            },
        ));
    }
    Ok(())
}

pub(crate) fn f16_bytes(v: &[half::f16]) -> impl Iterator<Item = u8> + '_ {
    v.iter().flat_map(|x| x.to_bits().to_le_bytes())
}

/// A re-quantizer of any encoding on its own grid (the codec table's dispatcher for the
/// rows that can): `(base encoding, new values) → encoding` with the base's scales,
/// offsets, multipliers and outlier positions, only the codes and kept values recomputed.
pub type Requantizer = fn(&[u8], &[f32], f32) -> Result<Vec<u8>>;

/// The base tensor a delta encoding applies to: its values as the base artifact decodes
/// them, and, where the base stores it with a codec, that encoding (what `delta_grid`
/// patches).
#[derive(Debug, Clone, Copy)]
pub struct BaseView<'a> {
    /// The base's decoded values (row-major, `rows × cols`).
    pub values: &'a [f32],
    /// The base's encoding, when it is not stored raw.
    pub encoded: Option<&'a [u8]>,
}

/// A delta codec: encodes a fine-tuned matrix against its base and reports exactly what
/// that costs. Decoding is the encoding row's `apply` (base in, fine-tune out).
pub trait DeltaCodec: Send + Sync {
    /// Name and parameters for reports (`delta int2 g64`).
    fn describe(&self) -> String;

    /// Encodes `ft` against `base`. `importance`, when given, weights each element's
    /// squared error. Shapes are checked here for every delta codec; implementations
    /// provide [`DeltaCodec::encode_checked`]. `Ok(None)`: this codec cannot encode
    /// against this base (a grid delta over a raw base).
    fn encode(
        &self,
        ft: &[f32],
        base: &BaseView<'_>,
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Option<Vec<u8>>> {
        check_shape(ft, rows, cols)?;
        check_finite(ft)?;
        if base.values.len() != ft.len() {
            return Err(Error::ShapeMismatch {
                tensor: "base".into(),
                expected: vec![rows, cols],
                got: vec![base.values.len()],
            });
        }
        if importance.is_some_and(|h| h.len() != ft.len()) {
            return Err(Error::ShapeMismatch {
                tensor: "importance".into(),
                expected: vec![rows, cols],
                got: vec![importance.map_or(0, |h| h.len())],
            });
        }
        self.encode_checked(ft, base, rows, cols, importance)
    }

    /// [`DeltaCodec::encode`] on validated inputs.
    fn encode_checked(
        &self,
        ft: &[f32],
        base: &BaseView<'_>,
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Option<Vec<u8>>>;
}
