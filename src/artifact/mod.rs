//! The `.tnpk` artifact: chunked, content-addressed (sha256 per chunk, the manifest
//! digest names the artifact), signed (ed25519 over the manifest digest), and readable by
//! byte ranges, locally or over HTTP. `docs/FORMAT.md` specifies the bytes.

pub mod format;
pub mod model_source;
pub mod pack;
pub mod reader;
pub mod select;
pub mod sign;
pub mod source;
pub mod writer;

pub use format::{Encoding, FormatError, Manifest};
pub use model_source::ArtifactSource;
pub use reader::Artifact;
pub use select::Selection;
pub use writer::ArtifactWriter;
