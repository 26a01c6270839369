//! The library's one error type. Variants carry the facts a user needs to fix the
//! problem (which file, which tensor, which codec, which limit, expected and actual), as
//! typed fields rather than pre-formatted strings, so callers can match on them and add
//! context (a tensor name) without rewriting messages.
//!
//! A leaf module: it depends on nothing else in the crate (the format and codec errors
//! are defined here and re-exported where they belong).

use std::path::PathBuf;

/// Result alias for every fallible TenPak library call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the TenPak library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "read", "write", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
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
    /// A selection (`--tensors`, `--layers`) that matches no tensor.
    #[error("no tensor matches the selection")]
    NothingSelected,
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
    /// Codec parameters out of range, a codec name that does not exist, or options that
    /// do not apply to the codec.
    #[error("codec {codec}: {problem}")]
    InvalidCodec {
        /// The codec (its name or label).
        codec: String,
        /// What is wrong.
        problem: CodecProblem,
    },
    /// Encoded bytes do not decode (wrong length, header mismatch, values out of range).
    #[error("{}corrupt {codec} encoding: {problem}", tensor_prefix(.tensor))]
    CorruptEncoding {
        /// The tensor, where the caller knows it ([`Error::in_tensor`]).
        tensor: Option<String>,
        /// The codec of the encoding (its table name, or "unknown").
        codec: &'static str,
        /// What is wrong.
        problem: Corruption,
    },
    /// A tensor whose codec this version does not know (an artifact of a newer minor
    /// version): it can be listed, not decoded.
    #[error("tensor {tensor} uses a codec this version of tenpak does not know")]
    UnknownCodec {
        /// Tensor name.
        tensor: String,
    },
    /// A bit budget that no choice of codecs meets.
    #[error("{requested} bits/weight is below the cheapest codec ({cheapest:.3} bits/weight over the blocks' linear layers)")]
    BudgetTooSmall {
        /// The budget asked for.
        requested: f64,
        /// The cheapest the candidates allow.
        cheapest: f64,
    },
    /// A bit budget for a model without the tensors it applies to.
    #[error("no linear layers in the transformer blocks to spend a bit budget on")]
    NothingToBudget,
    /// An option value out of its range (windows, samples, alignment, ...).
    #[error("{option}: {reason}")]
    InvalidOption {
        /// The option (`ctx/stride`, `samples/seq`, `alignment`, ...).
        option: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// A text too short for one window of the requested length.
    #[error("the text has {tokens} tokens, fewer than one window of {window}")]
    TextTooShort {
        /// Tokens in the text (after the token cap).
        tokens: usize,
        /// The window length.
        window: usize,
    },
    /// A token id the model's vocabulary does not have, or no tokens at all.
    #[error("{}", match .id { Some(id) => format!("token id {id} outside the vocabulary of {}", .vocab), None => "empty token sequence".into() })]
    BadTokens {
        /// The first id outside the vocabulary (`None`: the sequence is empty).
        id: Option<u32>,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The tokenizer failed.
    #[error("tokenization failed: {message}")]
    Tokenizer {
        /// The tokenizer's message.
        message: String,
    },
    /// A tensor computation of the runtime (candle) failed.
    #[error("tensor computation failed: {message}")]
    Compute {
        /// candle's message.
        message: String,
    },
    /// A writer (HF directory or `.tnpk`) used out of order.
    #[error("writer misuse: {0}")]
    Writer(WriterMisuse),
    /// A delta artifact opened without its base.
    #[error("this artifact is a delta against {base}; open it with that base")]
    DeltaNeedsBase {
        /// The base's digest (`sha256:<hex>`).
        base: String,
    },
    /// A delta artifact paired with a base it was not made against.
    #[error("wrong base: this delta was made against {expected}, but the base given is {found}")]
    WrongBase {
        /// The digest the delta names (`sha256:<hex>`).
        expected: String,
        /// The digest of the base given.
        found: String,
    },
    /// A base given with an artifact that is not a delta.
    #[error("{location} is a full model, not a delta; it needs no --base")]
    NotADelta {
        /// The artifact.
        location: String,
    },
    /// A base that is not the fine-tune's: too few of the fine-tune's weights have a base
    /// tensor of the same name and shape (another architecture, other sizes).
    #[error("the base is not this model's: only {matched} of {weights} weights have a base tensor of the same name and shape (for example {example})")]
    IncompatibleBase {
        /// Weights with a counterpart in the base.
        matched: u64,
        /// Weights of the fine-tune.
        weights: u64,
        /// A tensor without a counterpart, and what the base holds under its name.
        example: String,
    },
    /// A delta's base lacks a tensor the delta applies to, or holds it in another shape.
    #[error("the base has no tensor {tensor} of shape {shape:?}, which the delta applies to")]
    BaseMismatch {
        /// The tensor.
        tensor: String,
        /// Its shape in the fine-tune.
        shape: Vec<usize>,
    },
    /// A `.tnpk` artifact is malformed, corrupt, or fails verification.
    #[error("{location}: {error}")]
    Artifact {
        /// File path or URL.
        location: String,
        /// What is wrong.
        error: FormatError,
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
    /// An export to another format (GGUF, compressed-tensors) that cannot be made.
    #[error("export to {format}: {reason}")]
    Export {
        /// The target format ("GGUF", "compressed-tensors").
        format: &'static str,
        /// Why.
        reason: String,
    },
    /// JSON that is syntactically or structurally wrong.
    #[error("{path}: invalid JSON: {message}")]
    Json {
        /// File.
        path: PathBuf,
        /// serde_json's message.
        message: String,
    },
}

fn tensor_prefix(t: &Option<String>) -> String {
    t.as_ref()
        .map(|t| format!("tensor {t}: "))
        .unwrap_or_default()
}

/// Why codec parameters are refused ([`Error::InvalidCodec`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecProblem {
    /// No codec of that name.
    #[error("unknown codec (known: {known})")]
    UnknownName {
        /// The names that exist.
        known: String,
    },
    /// A parameter outside its range.
    #[error("{parameter} {value} outside {min}..={max}")]
    OutOfRange {
        /// The parameter ("group size", "rank", ...).
        parameter: &'static str,
        /// The value given.
        value: f64,
        /// Smallest accepted.
        min: f64,
        /// Largest accepted.
        max: f64,
    },
    /// An option that does not apply to this codec, or two that do not combine.
    #[error("{option} {reason}")]
    NotApplicable {
        /// The option ("AWQ scaling", "GPTQ error feedback", ...).
        option: &'static str,
        /// Why ("applies to int4/int3/int2").
        reason: &'static str,
    },
    /// Calibration statistics are needed and were not given, or lack what is needed.
    #[error("needs calibration statistics{detail} (tenpak calibrate, then --stats; or --calibrate TEXT)")]
    NeedsCalibration {
        /// What exactly is missing ("" or ": XᵀX of 2048 inputs").
        detail: String,
    },
    /// A matrix shape the codec's geometry cannot take.
    #[error("{rows}x{cols}: {reason}")]
    Geometry {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Why ("columns are not a multiple of the vector length 4").
        reason: String,
    },
    /// A group whose weight range an fp16 scale cannot hold.
    #[error("group {group}: weight range exceeds what an fp16 scale can hold; keep such weights as outliers")]
    ScaleOverflow {
        /// The group's index (row-major over the matrix's groups).
        group: usize,
    },
    /// A stored fp16 value (codebook entry, scale, factor) out of fp16's range.
    #[error("{what} exceeds the fp16 range")]
    Fp16Range {
        /// What overflowed.
        what: &'static str,
    },
    /// Calibration statistics that do not fit the matrix (wrong width, not positive definite).
    #[error("calibration statistics: {reason}")]
    Statistics {
        /// What is wrong.
        reason: String,
    },
}

/// Why encoded bytes do not decode ([`Error::CorruptEncoding`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// A codec id no row of the codec table has.
    #[error("unknown codec id {id}")]
    UnknownCodecId {
        /// The id byte.
        id: u8,
    },
    /// Reserved header bits or flags set.
    #[error("reserved header bits set")]
    ReservedBits,
    /// Fewer bytes than a part of the encoding needs.
    #[error("{what}: {len} bytes, {needed} needed")]
    Truncated {
        /// The part ("header", "outlier arrays", ...).
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes there.
        len: u64,
    },
    /// A length that disagrees with what the header implies.
    #[error("{what}: expected {expected}, got {actual}")]
    Length {
        /// What was measured ("bytes", "weights", ...).
        what: &'static str,
        /// Implied by the header.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// A header field or stored value outside what the codec allows.
    #[error("{field} = {value} is not valid")]
    Field {
        /// The field ("group size", "code bits", "rank", ...).
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// An index (outlier position, codebook entry) past the end of what it indexes.
    #[error("{what} index {index} out of range (< {bound})")]
    Index {
        /// What is indexed.
        what: &'static str,
        /// The index.
        index: u64,
        /// The exclusive bound.
        bound: u64,
    },
    /// A wrapper nested inside itself, or parts whose shapes disagree with the whole.
    #[error("{0}")]
    Structure(&'static str),
    /// A delta encoding decoded without its base (see `docs/FORMAT.md` §6).
    #[error("a delta encoding decodes only against its base tensor")]
    NeedsBase,
    /// A delta encoding whose base tensor is not what it was made against (another
    /// length, or not the encoding a grid delta patches).
    #[error("the base tensor does not match: {0}")]
    BaseTensor(&'static str),
    /// An entropy-coded stream that does not decode to what its header says.
    #[error("compressed stream: {0}")]
    Stream(String),
}

/// How a writer was misused ([`Error::Writer`]); each is a bug in the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriterMisuse {
    /// A tensor written out of its declared order.
    #[error("tensor {got} written where {expected} was expected")]
    OutOfOrder {
        /// The next declared tensor (empty: none left).
        expected: String,
        /// The tensor written.
        got: String,
    },
    /// A declared tensor never written.
    #[error("tensor {0} was never written")]
    NeverWritten(String),
    /// A tensor declared as stored bytes written from float values.
    #[error("tensor {0} is declared as stored bytes, not float values")]
    NotFloat(String),
    /// A tensor added twice.
    #[error("tensor {0} added twice")]
    Duplicate(String),
    /// Nothing declared.
    #[error("no tensors to write")]
    Empty,
    /// Used after `finish`.
    #[error("writer already finished")]
    Finished,
    /// More chunks than the format's u32 indices address.
    #[error("more than 2^32 chunks")]
    TooManyChunks,
}

/// Why a `.tnpk` is rejected (wrapped into [`crate::Error::Artifact`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Not a `.tnpk` at all.
    #[error("not a .tnpk file (bad magic)")]
    BadMagic,
    /// A major version this reader does not know.
    #[error("unsupported .tnpk major version {found} (this reader handles {supported})")]
    UnsupportedVersion {
        /// The file's major version.
        found: u16,
        /// The one this reader handles.
        supported: u16,
    },
    /// Flags set that this version does not define.
    #[error("unknown header flags {0:#x}")]
    UnknownFlags(u32),
    /// Reserved header bytes not zero.
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    /// Header regions do not fit the file or each other.
    #[error("bad layout: {0}")]
    Layout(String),
    /// The manifest does not hash to the digest in the header.
    #[error("manifest digest mismatch: header says {expected}, manifest hashes to {actual}")]
    ManifestDigest {
        /// From the header.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Manifest JSON invalid, non-canonical or inconsistent.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// A chunk's bytes do not hash to its recorded sha256.
    #[error("chunk {chunk} (of {owner}) is corrupt: sha256 {actual}, manifest says {expected}")]
    ChunkDigest {
        /// Chunk index in the chunk table.
        chunk: usize,
        /// The tensor or file that uses it.
        owner: String,
        /// Recorded.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Signature block malformed.
    #[error("invalid signature block: {0}")]
    SignatureBlock(String),
    /// No signature by the requested key.
    #[error("not signed by key {key_id}{}", if .signers.is_empty() { " (the artifact is unsigned)".to_string() } else { format!(" (signed by: {})", .signers.join(", ")) })]
    NotSignedBy {
        /// Requested key id.
        key_id: String,
        /// Key ids that did sign.
        signers: Vec<String>,
    },
    /// A signature by the right key that does not verify.
    #[error(
        "signature by key {key_id} does not verify: the manifest or the signature was altered"
    )]
    BadSignature {
        /// Key id.
        key_id: String,
    },
}

impl Error {
    /// Wraps an `std::io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: err,
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

    /// A corrupt-encoding error of `codec` (tensor unknown yet; see [`Error::in_tensor`]).
    pub fn corrupt(codec: &'static str, problem: Corruption) -> Self {
        Error::CorruptEncoding {
            tensor: None,
            codec,
            problem,
        }
    }

    /// An invalid-codec error.
    pub fn invalid_codec(codec: impl Into<String>, problem: CodecProblem) -> Self {
        Error::InvalidCodec {
            codec: codec.into(),
            problem,
        }
    }

    /// Names the tensor an encoding or value error is about, where the error does not
    /// already name one; other errors pass through unchanged.
    pub fn in_tensor(self, name: &str) -> Self {
        match self {
            Error::CorruptEncoding {
                tensor: None,
                codec,
                problem,
            } => Error::CorruptEncoding {
                tensor: Some(name.to_string()),
                codec,
                problem,
            },
            Error::ShapeMismatch {
                tensor,
                expected,
                got,
            } if tensor.is_empty() => Error::ShapeMismatch {
                tensor: name.to_string(),
                expected,
                got,
            },
            e => e,
        }
    }
}
