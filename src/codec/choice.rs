//! What a [`CodecSpec`] does, through the codec table: parse a name, validate,
//! build the encoder, price it, encode it (with calibration statistics where the family
//! uses them) and label it. Family-specific parts come from the family's row.

use super::awq;
use super::int4::Int4;
use super::outliers::WithOutliers;
use super::spec::{check_group, CodecSpec, Encoded, ResidualGroup, TensorCalib};
use super::table::{decode, name_list, names};
use super::traits::{check_finite, check_shape, Codec};
use crate::error::CodecProblem;
use crate::{Error, Result};

impl CodecSpec {
    /// Parses a codec name (see [`name_list`]); `group` overrides the
    /// default group size.
    pub fn from_name(name: &str, group: Option<usize>) -> Result<Self> {
        let Some(n) = names().find(|n| n.name == name) else {
            return Err(Error::invalid_codec(
                name,
                CodecProblem::UnknownName { known: name_list() },
            ));
        };
        let spec = (n.spec)(group);
        spec.validate()?;
        Ok(spec)
    }

    /// Checks parameter ranges and option combinations.
    pub fn validate(&self) -> Result<()> {
        let f = self.kind.family();
        let name = f.name;
        check_group(name, "group size", self.group)?;
        match f.residual_group {
            ResidualGroup::Required => {
                check_group(name, "residual group size", self.residual_group)?
            }
            ResidualGroup::Optional if self.residual_group > 0 => {
                check_group(name, "residual group size", self.residual_group)?
            }
            _ => {}
        }
        let not_applicable = |option, reason| {
            Err(Error::invalid_codec(
                name,
                CodecProblem::NotApplicable { option, reason },
            ))
        };
        if !(0.0..=0.5).contains(&self.outlier_fraction) {
            return Err(Error::invalid_codec(
                name,
                CodecProblem::OutOfRange {
                    parameter: "outlier fraction",
                    value: self.outlier_fraction,
                    min: 0.0,
                    max: 0.5,
                },
            ));
        }
        if self.refine_iters > 255 {
            return Err(Error::invalid_codec(
                name,
                CodecProblem::OutOfRange {
                    parameter: "refinement iterations",
                    value: self.refine_iters as f64,
                    min: 0.0,
                    max: 255.0,
                },
            ));
        }
        let scalar = f.scalar_bits.is_some();
        if self.awq && !scalar {
            return not_applicable("AWQ scaling", "applies to int4/int3/int2");
        }
        if self.gptq && !scalar && f.gptq.is_none() {
            return not_applicable(
                "GPTQ error feedback",
                "applies to int4/int3/int2, calibrated_vq and tenpak_x",
            );
        }
        if self.gptq && self.outlier_fraction > 0.0 {
            return not_applicable(
                "GPTQ error feedback",
                "does not combine with fp16 outliers; drop --outliers",
            );
        }
        self.build().map(|_| ())
    }

    /// Builds the codec (without the calibrated options: AWQ and GPTQ need
    /// [`CodecSpec::encode`] with statistics).
    pub fn build(&self) -> Result<Box<dyn Codec>> {
        let base = (self.kind.family().build)(self, decode)?;
        Ok(if self.outlier_fraction > 0.0 {
            Box::new(WithOutliers::new(base, self.outlier_fraction)?)
        } else {
            base
        })
    }

    /// Whether encoding needs calibration statistics.
    pub fn needs_calibration(&self) -> bool {
        self.awq || self.gptq
    }

    /// Whether statistics, when present, change the encoding.
    pub fn uses_calibration(&self) -> bool {
        self.needs_calibration() || self.kind.family().weighted
    }

    /// Exact encoded bytes for a `[rows, cols]` matrix.
    pub fn encoded_len(&self, rows: usize, cols: usize) -> Result<usize> {
        let f = self.kind.family();
        if f.vq && !cols.is_multiple_of(self.vq_dim.max(1)) {
            return Err(Error::invalid_codec(
                self.label(),
                CodecProblem::Geometry {
                    rows,
                    cols,
                    reason: format!(
                        "columns are not a multiple of the vector length {}",
                        self.vq_dim
                    ),
                },
            ));
        }
        let inner = self.build()?.encoded_len(rows, cols);
        Ok(inner + if self.awq { awq::overhead(cols) } else { 0 })
    }

    /// Encodes `w` (`rows × cols`) with this spec. `calib`, the layer's input statistics,
    /// is required for AWQ and GPTQ and weights the fit of the families that take
    /// importance (without it they weigh every weight alike). GPTQ falls back to the plain
    /// encode for a layer whose statistics lack XᵀX, and says so in the label.
    pub fn encode(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        calib: Option<&TensorCalib>,
    ) -> Result<Encoded> {
        check_shape(w, rows, cols)?;
        check_finite(w)?;
        let f = self.kind.family();
        let codec = self.build()?;
        let mut label = self.label();
        if self.needs_calibration() && calib.is_none() {
            return Err(Error::invalid_codec(
                label,
                CodecProblem::NeedsCalibration {
                    detail: String::new(),
                },
            ));
        }
        let gptq_skipped = |label: &mut String| {
            *label = label.replace(" gptq", " (gptq skipped: no XᵀX)");
        };
        let bytes = match (f.scalar_bits, calib) {
            (Some(bits), Some(c)) if self.needs_calibration() => {
                let base = Int4::with_bits(bits, self.group, self.symmetric, self.refine_iters)?;
                let hessian = if self.gptq {
                    if c.hessian.as_ref().is_some_and(|h| h.cols() == cols) {
                        c.hessian.clone()
                    } else {
                        gptq_skipped(&mut label);
                        None
                    }
                } else {
                    None
                };
                if self.awq {
                    c.check(cols)?;
                    let act = awq::Activations {
                        abs_mean: &c.abs_mean,
                        sq_mean: &c.sq_mean,
                        xtx: c.xtx.as_deref().map(|v| &v[..]),
                    };
                    let feedback = |ws: &[f32], s: &[f32]| -> Result<Vec<u8>> {
                        let h = hessian.as_ref().expect("only passed with a Hessian");
                        base.encode_gptq(ws, rows, cols, &h.scale_inputs(s))
                    };
                    let (alpha, bytes) = awq::encode(
                        codec.as_ref(),
                        w,
                        rows,
                        cols,
                        &act,
                        hessian.is_some().then_some(&feedback as awq::Feedback<'_>),
                        decode,
                    )?;
                    label = label.replace(" awq", &format!(" awq α{alpha:.2}"));
                    bytes
                } else if let Some(h) = &hessian {
                    base.encode_gptq(w, rows, cols, h)?
                } else {
                    codec.encode_checked(w, rows, cols, None)?
                }
            }
            (None, Some(c)) if self.uses_calibration() => {
                let imp = c.importance(rows, cols)?;
                match (&c.hessian, f.gptq) {
                    (Some(h), Some(gptq)) if self.gptq && h.cols() == cols => {
                        gptq(self, w, rows, cols, &imp, h, decode)?
                    }
                    _ => {
                        if self.gptq {
                            gptq_skipped(&mut label);
                        }
                        codec.encode_checked(w, rows, cols, Some(&imp))?
                    }
                }
            }
            _ => codec.encode_checked(w, rows, cols, None)?,
        };
        Ok(Encoded { bytes, label })
    }

    /// Short label for reports: the family's part, then the common options.
    pub fn label(&self) -> String {
        let mut s = (self.kind.family().label)(self);
        if self.symmetric {
            s.push_str(" sym");
        }
        if self.refine_iters == 0 {
            s.push_str(" rtn");
        }
        if self.awq {
            s.push_str(" awq");
        }
        if self.gptq {
            s.push_str(" gptq");
        }
        if self.outlier_fraction > 0.0 {
            s.push_str(&format!(" +{}% fp16", self.outlier_fraction * 100.0));
        }
        s
    }
}
