//! The library's one error type. Variants carry the facts a user needs to fix the
//! problem (which file, which tensor, which limit), never a dependency's error type.

use std::path::PathBuf;

/// Result alias for every fallible TenPak library call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the TenPak library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {message}")]
    Io {
        /// What was being done ("open", "read", "write", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },
    /// A file is shorter than its own header says.
    #[error("{path}: truncated: {what} needs {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Offset of the read.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// A file's structure is invalid (bad magic, overlapping tensors, unknown type...).
    #[error("{path}: malformed {format}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format ("GGUF", "safetensors", "config.json").
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A declared size exceeds a safety cap; checked before allocating.
    #[error("{path}: {what} is {value}, above the limit of {limit}")]
    LimitExceeded {
        /// The file.
        path: PathBuf,
        /// What was too large.
        what: &'static str,
        /// Declared value.
        value: u64,
        /// The cap.
        limit: u64,
    },
    /// A tensor type or dtype that this code path does not handle.
    #[error("tensor {tensor}: unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// Tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// A model architecture TenPak cannot import.
    #[error("unsupported architecture {arch:?} (supported: {supported})")]
    UnsupportedArchitecture {
        /// Architecture name found.
        arch: String,
        /// Supported list.
        supported: &'static str,
    },
    /// A required metadata key or file is missing.
    #[error("{path}: missing {what}")]
    Missing {
        /// File or directory.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// No tensor of that name in the source.
    #[error("no tensor named {name:?}")]
    TensorNotFound {
        /// Name asked for.
        name: String,
    },
    /// Shapes disagree.
    #[error("tensor {tensor}: shape mismatch: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// Input to a codec contains NaN or infinity.
    #[error("non-finite value ({value}) at index {index}; refusing to quantize")]
    NonFinite {
        /// Flat index of the first bad element.
        index: usize,
        /// The value, as text (NaN, inf, -inf).
        value: String,
    },
    /// Codec parameters out of range, or a codec name that does not exist.
    #[error("invalid codec parameters: {0}")]
    InvalidCodec(String),
    /// Encoded bytes do not decode (wrong length, header mismatch).
    #[error("corrupt encoded tensor: {0}")]
    CorruptEncoding(String),
    /// A planning request cannot be met (e.g. a bit budget below the cheapest codec).
    #[error("cannot plan: {0}")]
    Plan(String),
    /// A `.tnpk` artifact is malformed, corrupt, or fails verification.
    #[error("{location}: {error}")]
    Artifact {
        /// File path or URL.
        location: String,
        /// What is wrong.
        error: crate::artifact::FormatError,
    },
    /// An HTTP request failed.
    #[error("{url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// HTTP status, when one was received.
        status: Option<u16>,
        /// What happened.
        message: String,
    },
    /// A Hugging Face Hub call failed.
    #[error("Hub {op} {repo}: {message}")]
    Hub {
        /// `owner/name` (empty when no repository is concerned).
        repo: String,
        /// What was being done ("download", "commit", ...).
        op: &'static str,
        /// HTTP status, when the Hub answered with one.
        status: Option<u16>,
        /// What happened.
        message: String,
    },
    /// A signing or public key file is unusable.
    #[error("key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The GPU path failed or is not compiled in.
    #[error("GPU: {0}")]
    Gpu(String),
    /// JSON that is syntactically or structurally wrong.
    #[error("{path}: invalid JSON: {message}")]
    Json {
        /// File.
        path: PathBuf,
        /// serde_json's message.
        message: String,
    },
}

impl Error {
    /// Wraps an `std::io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            message: err.to_string(),
        }
    }

    /// A malformed-file error.
    pub fn malformed(
        path: impl Into<PathBuf>,
        format: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            path: path.into(),
            format,
            reason: reason.into(),
        }
    }
}
