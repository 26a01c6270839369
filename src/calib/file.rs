//! A statistics file opened for encoding: what the codecs' calibrated options read, one
//! tensor's input statistics at a time.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::codec;
use crate::Result;

/// Calibration statistics opened for encoding (see [`crate::calib`] for the file). The
/// last XᵀX read and the last GPTQ factor are cached, so q/k/v (and gate/up), which share
/// one input, read and factor it once.
pub struct Calib {
    file: crate::source::hf::SafetensorsFile,
    path: std::path::PathBuf,
    damp: f64,
    xtx: Mutex<Option<(String, Arc<Vec<f32>>)>>,
    factor: Mutex<Option<(String, Arc<codec::gptq::Hessian>)>>,
}

impl std::fmt::Debug for Calib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calib")
            .field("path", &self.path)
            .field("damp", &self.damp)
            .finish()
    }
}

impl Calib {
    /// Opens a statistics file; `damp` is GPTQ's damping.
    pub fn open(path: &Path, damp: f64) -> Result<Self> {
        let file = crate::source::HfModelDir::open_file(path)?;
        if !file.names().iter().any(|n| n.ends_with(".input_sq_mean")) {
            return Err(crate::Error::Missing {
                path: path.to_path_buf(),
                what: "calibration statistics (input_sq_mean; write them with tenpak calibrate)"
                    .into(),
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            damp,
            xtx: Mutex::new(None),
            factor: Mutex::new(None),
        })
    }

    /// Whether the file holds the empirical Fisher diagonal (`tenpak calibrate --fisher`).
    pub fn has_fisher(&self) -> bool {
        self.file.names().iter().any(|n| n.ends_with(".fisher"))
    }

    /// The empirical Fisher diagonal of weight `tensor` (`numel` values, row-major), when
    /// the file has it ([`crate::calib::fisher`]).
    pub fn fisher(&self, tensor: &str, numel: usize) -> Result<Option<Vec<f32>>> {
        let Some(linear) = tensor.strip_suffix(".weight") else {
            return Ok(None);
        };
        let key = format!("{linear}.fisher");
        if !self.file.names().contains(&key.as_str()) {
            return Ok(None);
        }
        let (v, _) = self.file.read_f32_with_shape(&key)?;
        if v.len() != numel {
            return Err(crate::Error::ShapeMismatch {
                tensor: key,
                expected: vec![numel],
                got: vec![v.len()],
            });
        }
        Ok(Some(v))
    }

    /// Whether any layer has its full XᵀX (what GPTQ needs).
    pub fn has_xtx(&self) -> bool {
        self.file.names().iter().any(|n| n.ends_with(".input_xtx"))
    }

    /// What the statistics were computed on, for artifact metadata:
    /// `FILE (text T sha256 H, N tokens)`.
    pub fn describe(&self) -> String {
        let md = self.file.metadata();
        let get = |k: &str| md.get(k).cloned().unwrap_or_else(|| "?".into());
        format!(
            "{} (text {} sha256 {}, {} tokens, {} windows of {})",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            get("text"),
            get("text_sha256"),
            get("tokens"),
            get("samples"),
            get("seq"),
        )
    }

    /// The statistics of the input of weight `tensor`, when the file has them: the
    /// per-channel means always; the input's XᵀX (AWQ's search) with `want_xtx`; GPTQ's
    /// factor with `want_factor` (both only when the file has that XᵀX).
    pub fn tensor(
        &self,
        tensor: &str,
        want_xtx: bool,
        want_factor: bool,
    ) -> Result<Option<codec::TensorCalib>> {
        let Some(linear) = tensor.strip_suffix(".weight") else {
            return Ok(None);
        };
        let names = self.file.names();
        let abs_key = format!("{linear}.input_abs_mean");
        if !names.contains(&abs_key.as_str()) {
            return Ok(None);
        }
        let abs_mean = self.file.read_f32_with_shape(&abs_key)?.0;
        let sq_mean = self
            .file
            .read_f32_with_shape(&format!("{linear}.input_sq_mean"))?
            .0;
        // The first consumer of a shared input holds its XᵀX (see `calib`).
        let first = linear
            .replace(".k_proj", ".q_proj")
            .replace(".v_proj", ".q_proj")
            .replace(".up_proj", ".gate_proj");
        let key = [format!("{linear}.input_xtx"), format!("{first}.input_xtx")]
            .into_iter()
            .find(|k| names.contains(&k.as_str()))
            .filter(|_| want_xtx || want_factor);
        let xtx = match &key {
            None => None,
            Some(key) => {
                let mut cache = self.xtx.lock().unwrap_or_else(|e| e.into_inner());
                match cache.as_ref() {
                    Some((k, v)) if k == key => Some(v.clone()),
                    _ => {
                        let v = Arc::new(self.file.read_f32_with_shape(key)?.0);
                        *cache = Some((key.clone(), v.clone()));
                        Some(v)
                    }
                }
            }
        };
        let hessian = match (&key, &xtx, want_factor) {
            (Some(key), Some(x), true) => {
                let mut cache = self.factor.lock().unwrap_or_else(|e| e.into_inner());
                match cache.as_ref() {
                    Some((k, h)) if k == key => Some(h.clone()),
                    _ => {
                        let h =
                            Arc::new(codec::gptq::Hessian::from_xtx(x, sq_mean.len(), self.damp)?);
                        *cache = Some((key.clone(), h.clone()));
                        Some(h)
                    }
                }
            }
            _ => None,
        };
        Ok(Some(codec::TensorCalib {
            abs_mean,
            sq_mean,
            xtx,
            hessian,
        }))
    }
}
