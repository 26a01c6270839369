//! `tenpak._tenpak`: the compiled half of the Python package (`python/tenpak/__init__.py`
//! is the API users see). An [`Artifact`] is a `.tnpk` opened from a file or an http(s)
//! URL (range requests: only the chunks a load needs are fetched), optionally checked
//! against an ed25519 public key, and, for a delta, opened with its base. `load` fetches,
//! verifies (sha256 per chunk) and decodes the selected tensors with the GIL released,
//! converting each straight into a Python `bytearray` in the requested dtype, which torch
//! then wraps without a copy (`torch.frombuffer`).
//!
//! Errors become typed Python exceptions (see [`raise`]).

#[cfg(feature = "cuda")]
mod dlpack;

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use rayon::prelude::*;

use tenpak::artifact::format::{Encoding, TensorEntry};
use tenpak::artifact::source::HttpOptions;
use tenpak::artifact::Selection;

use tenpak::delta::Opened;
use tenpak::dtype::DType;
use tenpak::error::FormatError as Fe;
use tenpak::export::Model;
use tenpak::source::TensorSource;

create_exception!(
    _tenpak,
    TenpakError,
    PyException,
    "Any error of tenpak (the others derive from it)."
);
create_exception!(
    _tenpak,
    SignatureError,
    TenpakError,
    "The artifact is not signed by the given key, or its signature does not verify."
);
create_exception!(
    _tenpak,
    IntegrityError,
    TenpakError,
    "A chunk or the manifest does not hash to its recorded sha256 (corrupt or altered bytes)."
);
create_exception!(
    _tenpak,
    FormatError,
    TenpakError,
    "Not a valid .tnpk (bad magic, truncated, malformed manifest, unsupported version)."
);
create_exception!(
    _tenpak,
    MissingBaseError,
    TenpakError,
    "The artifact is a delta: open it with its base (base=...)."
);
create_exception!(
    _tenpak,
    WrongBaseError,
    TenpakError,
    "The base given is not the one the delta names (or does not fit it), or the artifact is not a delta."
);
create_exception!(
    _tenpak,
    FetchError,
    TenpakError,
    "Reading the file or fetching the URL failed."
);
create_exception!(
    _tenpak,
    TensorNotFoundError,
    TenpakError,
    "No tensor of that name, or the selection matched nothing."
);

/// The Python exception for an error of tenpak.
fn raise(e: tenpak::Error) -> PyErr {
    use tenpak::Error as E;
    let msg = e.to_string();
    match &e {
        E::Artifact { error, .. } => match error {
            Fe::NotSignedBy { .. } | Fe::BadSignature { .. } | Fe::SignatureBlock(_) => {
                SignatureError::new_err(msg)
            }
            Fe::ChunkDigest { .. } | Fe::ManifestDigest { .. } => IntegrityError::new_err(msg),
            _ => FormatError::new_err(msg),
        },
        E::Key { .. } => SignatureError::new_err(msg),
        E::DeltaNeedsBase { .. } => MissingBaseError::new_err(msg),
        E::WrongBase { .. }
        | E::NotADelta { .. }
        | E::IncompatibleBase { .. }
        | E::BaseMismatch { .. } => WrongBaseError::new_err(msg),
        E::Io { .. } | E::Http { .. } => FetchError::new_err(msg),
        E::Truncated { .. } | E::Malformed { .. } | E::LimitExceeded { .. } => {
            FormatError::new_err(msg)
        }
        E::TensorNotFound { .. } | E::NothingSelected => TensorNotFoundError::new_err(msg),
        _ => TenpakError::new_err(msg),
    }
}

/// A `.tnpk` artifact (a full model, or a delta with its base), opened.
#[pyclass(frozen, module = "tenpak._tenpak")]
struct Artifact {
    opened: Opened,
    location: String,
}

impl Artifact {
    /// The artifact whose manifest lists the tensors (the delta's, for a delta).
    fn art(&self) -> &tenpak::artifact::Artifact {
        match &self.opened {
            Opened::Full(a) => a,
            Opened::Delta(d) => d.delta(),
        }
    }

    /// The tensors `names` (exact names or globs) and `layers` select, in manifest order.
    fn selection(names: Option<Vec<String>>, layers: Option<Vec<usize>>) -> Selection {
        Selection::from_lists(names.unwrap_or_default(), layers)
    }
}

/// Converts f32 values into `out` (little-endian `dtype`), in parallel slices, written
/// in place.
fn convert_into(values: &[f32], dtype: DType, out: &mut [u8]) {
    use half::slice::HalfFloatSliceExt;
    const SLICE: usize = 1 << 16;
    let size = dtype.size();
    values
        .par_chunks(SLICE)
        .zip(out.par_chunks_mut(SLICE * size))
        .for_each(|(v, o)| match dtype {
            DType::F32 => o.copy_from_slice(bytemuck_f32(v)),
            DType::BF16 | DType::F16 => {
                let mut h = [0u16; 1024];
                for (vv, oo) in v.chunks(1024).zip(o.chunks_mut(2048)) {
                    let h = &mut h[..vv.len()];
                    if dtype == DType::BF16 {
                        let b: &mut [half::bf16] = bytemuck::cast_slice_mut(h);
                        b.convert_from_f32_slice(vv);
                    } else {
                        let b: &mut [half::f16] = bytemuck::cast_slice_mut(h);
                        b.convert_from_f32_slice(vv);
                    }
                    for (d, x) in oo.chunks_exact_mut(2).zip(h.iter()) {
                        d.copy_from_slice(&x.to_le_bytes());
                    }
                }
            }
        });
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// A new bytearray of `len` bytes filled by `fill`, which must write every byte. Unlike
/// `PyByteArray::new_with`, the buffer is not zeroed first: the output is written once.
#[allow(unsafe_code)]
fn with_new_bytearray<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> PyResult<()>,
) -> PyResult<Bound<'py, PyByteArray>> {
    let len_py = pyo3::ffi::Py_ssize_t::try_from(len)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("tensor too large"))?;
    // SAFETY: PyByteArray_FromStringAndSize(NULL, n) returns a new bytearray of n bytes
    // (or NULL with an exception set); nothing else holds it until `fill` has written
    // all of it, and bytes are plain data (any value is valid).
    unsafe {
        let ptr = pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), len_py);
        let ba = Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked::<PyByteArray>();
        fill(ba.as_bytes_mut())?;
        Ok(ba)
    }
}

/// The dtype a caller named (`bf16`, `f16`, `f32`), if any.
fn parse_dtype(dtype: Option<String>) -> PyResult<Option<DType>> {
    dtype
        .map(|d| {
            DType::parse(&d).ok_or_else(|| {
                pyo3::exceptions::PyValueError::new_err(format!("dtype {d}: use bf16, f16 or f32"))
            })
        })
        .transpose()
}

/// Decodes into the reused f32 buffer.
fn decode_via(
    a: &tenpak::artifact::Artifact,
    t: &TensorEntry,
    bytes: &[u8],
    scratch: &mut Vec<f32>,
) -> tenpak::Result<()> {
    scratch.clear();
    scratch.resize(t.numel() as usize, 0.0);
    a.decode_into(t, bytes, scratch)
}

/// One loaded tensor: name, shape, dtype name, its bytes.
type Loaded = (String, Vec<usize>, String, Py<PyByteArray>);

#[pymethods]
impl Artifact {
    /// Opens `location` (a `.tnpk` path or an http(s) URL served with Range support).
    /// `key`: a public key file (`KEY.pub` from `tenpak keygen`) the artifact must be
    /// signed by (checked before the manifest is parsed). `base`: the base artifact of a
    /// delta. `parallel`: concurrent HTTP range requests.
    #[new]
    #[pyo3(signature = (location, key=None, base=None, parallel=4))]
    fn new(
        py: Python<'_>,
        location: String,
        key: Option<PathBuf>,
        base: Option<String>,
        parallel: usize,
    ) -> PyResult<Self> {
        py.detach(|| {
            let key = key
                .as_deref()
                .map(tenpak::artifact::sign::load_public_key)
                .transpose()?;
            let http = HttpOptions {
                parallel: parallel.max(1),
                ..HttpOptions::default()
            };
            let opened = tenpak::delta::open_model(&location, base.as_deref(), http, key.as_ref())?;
            Ok(Artifact { opened, location })
        })
        .map_err(raise)
    }

    /// Where it was opened from.
    #[getter]
    fn location(&self) -> &str {
        &self.location
    }

    /// The artifact's digest (`sha256:…` of its manifest).
    #[getter]
    fn digest(&self) -> String {
        self.art().digest().to_string()
    }

    /// The base's digest, for a delta.
    #[getter]
    fn base_digest(&self) -> Option<String> {
        match &self.opened {
            Opened::Full(_) => None,
            Opened::Delta(d) => Some(d.base().digest().to_string()),
        }
    }

    /// The manifest's metadata (source, method, calibration…).
    fn metadata(&self) -> BTreeMap<String, String> {
        self.art().manifest().metadata.clone()
    }

    /// Every tensor: (name, shape, dtype, encoding, layer or None, encoded bytes).
    #[allow(clippy::type_complexity)]
    fn tensors(&self) -> Vec<(String, Vec<u64>, String, String, Option<usize>, u64)> {
        self.art()
            .manifest()
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.shape.clone(),
                    t.dtype.to_string(),
                    t.encoding.label(t.dtype),
                    tenpak::artifact::select::layer_of(&t.name),
                    t.encoded_length,
                )
            })
            .collect()
    }

    /// The side files (config.json, tokenizer.json, …) by name.
    fn files(&self) -> Vec<String> {
        Model::from(&self.opened).side_file_names()
    }

    /// A side file's bytes (verified), the delta's own or else its base's.
    fn read_file<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        match py
            .detach(|| Model::from(&self.opened).side_file(name))
            .map_err(raise)?
        {
            Some((_, bytes)) => Ok(PyBytes::new(py, &bytes)),
            None => Err(TensorNotFoundError::new_err(format!(
                "{}: no side file {name}",
                self.location
            ))),
        }
    }

    /// Bytes fetched so far (the delta's and its base's).
    fn bytes_fetched(&self) -> u64 {
        match &self.opened {
            Opened::Full(a) => a.bytes_fetched(),
            Opened::Delta(d) => d.delta().bytes_fetched() + d.base().bytes_fetched(),
        }
    }

    /// Fetches, verifies and decodes the selected tensors into the memory of GPU 0
    /// (`tenpak::gpu::load_artifact`: encodings with a kernel are uploaded as stored and
    /// decoded there), all in `dtype` (default bf16); each comes back as (name, DLPack
    /// capsule). Full artifacts only (a delta loads through `load`).
    #[cfg(feature = "cuda")]
    #[pyo3(signature = (names=None, layers=None, dtype=None))]
    fn load_cuda(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        layers: Option<Vec<usize>>,
        dtype: Option<String>,
    ) -> PyResult<Vec<(String, Py<PyAny>)>> {
        let Opened::Full(art) = &self.opened else {
            return Err(TenpakError::new_err(
                "a delta loads on the CPU (load), then moves to the GPU",
            ));
        };
        let dtype = parse_dtype(dtype)?.unwrap_or(DType::BF16);
        let sel = Self::selection(names, layers);
        if art.select(&sel).is_empty() {
            return Err(raise(tenpak::Error::NothingSelected));
        }
        let loaded = py
            .detach(|| tenpak::gpu::load_artifact(art, &sel, dtype))
            .map_err(raise)?;
        let loaded = std::sync::Arc::new(loaded);
        loaded
            .names()
            .into_iter()
            .map(|n| Ok((n.to_string(), dlpack::capsule(py, &loaded, n)?)))
            .collect()
    }

    /// The file's size in bytes (the delta's, for a delta).
    fn size(&self) -> u64 {
        self.art().len()
    }

    /// Fetches, verifies and decodes the tensors selected by `names` (exact names or
    /// globs) and `layers` (transformer layer numbers), all when both are None. Each
    /// comes back as (name, shape, dtype, bytearray), in `dtype` (`bf16`, `f16`, `f32`;
    /// None: each tensor's own dtype).
    #[pyo3(signature = (names=None, layers=None, dtype=None))]
    fn load(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        layers: Option<Vec<usize>>,
        dtype: Option<String>,
    ) -> PyResult<Vec<Loaded>> {
        let dtype = parse_dtype(dtype)?;
        let chosen = self.art().select(&Self::selection(names, layers));
        if chosen.is_empty() {
            return Err(raise(tenpak::Error::NothingSelected));
        }
        let mut out: Vec<Loaded> = Vec::with_capacity(chosen.len());
        let mut py_err: Option<PyErr> = None;
        // One f32 buffer reused across tensors (fewer fresh pages than one per tensor).
        let mut scratch: Vec<f32> = Vec::new();
        // Each tensor is fetched and verified without the GIL, then decoded and written
        // once into its bytearray with it: f32 straight from the decoder, a raw tensor in
        // its own dtype as its bytes, others through the reused f32 buffer.
        // `art`: decode `bytes` (a full artifact's tensor); None: `given` holds the values
        // (a delta's tensor, applied to its base).
        let mut put = |t: &TensorEntry,
                       bytes: &[u8],
                       art: Option<&tenpak::artifact::Artifact>,
                       given: &[f32]|
         -> tenpak::Result<()> {
            let dt = dtype.unwrap_or(t.dtype);
            let numel = t.numel() as usize;
            let mut failed: Option<tenpak::Error> = None;
            let ba = Python::attach(|py| {
                with_new_bytearray(py, numel * dt.size(), |buf| {
                    let done = match art {
                        Some(_) if matches!(t.encoding, Encoding::Raw) && t.dtype == dt => {
                            buf.copy_from_slice(bytes);
                            Ok(())
                        }
                        Some(a) if dt == DType::F32 => match bytemuck::try_cast_slice_mut(buf) {
                            Ok(f) => a.decode_into(t, bytes, f),
                            Err(_) => decode_via(a, t, bytes, &mut scratch)
                                .map(|()| convert_into(&scratch, dt, buf)),
                        },
                        Some(a) => decode_via(a, t, bytes, &mut scratch)
                            .map(|()| convert_into(&scratch, dt, buf)),
                        None => {
                            convert_into(given, dt, buf);
                            Ok(())
                        }
                    };
                    if let Err(e) = done {
                        failed = Some(e);
                    }
                    Ok(())
                })
                .map(Bound::unbind)
            })
            .map_err(|e| {
                let message = format!("allocating the output of {}: {e}", t.name);
                py_err = Some(e);
                tenpak::Error::Compute { message }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            out.push((t.name.clone(), shape, dt.to_string(), ba));
            Ok(())
        };
        let loaded = py.detach(|| match &self.opened {
            Opened::Full(a) => a.for_each_encoded(&chosen, |t, bytes| put(t, &bytes, Some(a), &[])),
            Opened::Delta(d) => {
                for t in &chosen {
                    put(t, &[], None, &d.read_f32(&t.name)?)?;
                }
                Ok(())
            }
        });
        match (loaded, py_err) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(raise(e)),
            (Ok(()), None) => Ok(out),
        }
    }
}

/// The compiled module.
#[pymodule]
fn _tenpak(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Artifact>()?;
    m.add("TenpakError", py.get_type::<TenpakError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("MissingBaseError", py.get_type::<MissingBaseError>())?;
    m.add("WrongBaseError", py.get_type::<WrongBaseError>())?;
    m.add("FetchError", py.get_type::<FetchError>())?;
    m.add("TensorNotFoundError", py.get_type::<TensorNotFoundError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Whether `load_cuda` exists (a wheel built with the `cuda` feature).
    m.add("HAS_CUDA", cfg!(feature = "cuda"))?;
    Ok(())
}
