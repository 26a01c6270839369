//! Reading a `.tnpk` from any [`RangeSource`]: header and manifest first (two reads), the
//! signature checked once, then only the chunks of the tensors asked for, each verified
//! against its sha256 *before* its bytes are decoded.

use std::path::Path;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::format::{self, Encoding, FileEntry, FormatError, Header, Manifest, TensorEntry};
use super::select::Selection;
use super::sign;
use super::source::RangeSource;
use crate::dtype::DType;
use crate::source::{HfDirWriter, TensorMeta, DEFAULT_MAX_SHARD_BYTES};
use crate::{codec, Error, Result};

/// Largest batch of encoded bytes fetched at once when streaming many tensors.
pub const BATCH_BYTES: u64 = 64 << 20;
/// The first batch, kept small so the first tensor arrives early.
pub const FIRST_BATCH_BYTES: u64 = 4 << 20;

/// An opened artifact.
pub struct Artifact {
    src: Box<dyn RangeSource>,
    header: Header,
    manifest: Manifest,
    signature: Vec<u8>,
    digest: String,
}

impl Artifact {
    /// Reads and validates header and manifest (the manifest digest is checked here).
    /// To trust only one signer's artifacts, use [`Artifact::open_verified`], which checks
    /// the signature before the manifest is parsed.
    pub fn open(src: Box<dyn RangeSource>) -> Result<Self> {
        Self::open_with(src, None)
    }

    /// [`Artifact::open`] that checks `key` signed the artifact *before* the manifest is
    /// parsed: the digest of the manifest bytes is signed, so a file from anyone else is
    /// refused with no more of it read or parsed than the header and the signature.
    pub fn open_verified(src: Box<dyn RangeSource>, key: &VerifyingKey) -> Result<Self> {
        Self::open_with(src, Some(key))
    }

    fn open_with(src: Box<dyn RangeSource>, key: Option<&VerifyingKey>) -> Result<Self> {
        let loc = src.location().to_string();
        let fail = |error: FormatError| Error::Artifact {
            location: loc.clone(),
            error,
        };
        let len = src.len();
        if len < format::HEADER_LEN as u64 {
            return Err(fail(FormatError::Layout(format!(
                "{len} bytes, shorter than the 128-byte header (truncated?)"
            ))));
        }
        let head = src
            .read_ranges(&[(0, format::HEADER_LEN as u64)])?
            .remove(0);
        let header = Header::parse(&head, len).map_err(fail)?;
        let tail = src
            .read_ranges(&[(
                header.manifest_offset,
                header.manifest_len + header.signature_len,
            )])?
            .remove(0);
        let (mbytes, sig) = tail.split_at(header.manifest_len as usize);
        let actual: [u8; 32] = Sha256::digest(mbytes).into();
        if actual != header.manifest_sha256 {
            return Err(fail(FormatError::ManifestDigest {
                expected: hex::encode(header.manifest_sha256),
                actual: hex::encode(actual),
            }));
        }
        sign::parse_block(sig).map_err(fail)?;
        if let Some(key) = key {
            sign::verify(sig, &header.manifest_sha256, key).map_err(fail)?;
        }
        let manifest = Manifest::parse(mbytes, format::HEADER_LEN as u64, header.manifest_offset)
            .map_err(fail)?;
        Ok(Self {
            digest: Manifest::digest_of(mbytes),
            src,
            header,
            manifest,
            signature: sig.to_vec(),
        })
    }

    /// Opens a path or URL with default HTTP settings.
    pub fn open_location(location: &str) -> Result<Self> {
        Self::open(super::source::open(location, Default::default())?)
    }

    /// Opens a path or URL, verified against `key` when one is given (see
    /// [`Artifact::open_verified`]).
    pub fn open_location_verified(location: &str, key: Option<&VerifyingKey>) -> Result<Self> {
        Self::open_with(super::source::open(location, Default::default())?, key)
    }

    fn fail(&self, error: FormatError) -> Error {
        Error::Artifact {
            location: self.src.location().to_string(),
            error,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// `sha256:<hex>` of the manifest.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// File size.
    pub fn len(&self) -> u64 {
        self.src.len()
    }
    /// Whether the artifact holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.manifest.tensors.is_empty()
    }
    /// Bytes fetched from the source so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.src.bytes_fetched()
    }
    /// Key ids of the signers (not verified).
    pub fn signers(&self) -> Vec<String> {
        sign::signers(&self.signature).unwrap_or_default()
    }

    /// Checks that `key` signed this manifest.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<()> {
        sign::verify(&self.signature, &self.header.manifest_sha256, key).map_err(|e| self.fail(e))
    }

    /// Tensors chosen by `sel`, in manifest order.
    pub fn select(&self, sel: &Selection) -> Vec<&TensorEntry> {
        self.manifest
            .tensors
            .iter()
            .filter(|t| sel.matches(&t.name))
            .collect()
    }

    /// Fetches the chunks of several owners at once (one coalesced read), verifies every
    /// chunk's sha256 (in parallel), and returns each owner's bytes.
    fn fetch_many(&self, owners: &[(&str, &[u32])]) -> Result<Vec<Bytes>> {
        let mut ranges = vec![];
        let mut who = vec![];
        for (k, (_, refs)) in owners.iter().enumerate() {
            for &r in *refs {
                let c = &self.manifest.chunks[r as usize];
                ranges.push((c.offset, c.length));
                who.push((k, r));
            }
        }
        let pieces = self.src.read_ranges(&ranges)?;
        pieces
            .par_iter()
            .zip(&who)
            .try_for_each(|(piece, &(k, r))| {
                let c = &self.manifest.chunks[r as usize];
                let actual = format::sha256_hex(piece);
                if actual == c.sha256 {
                    Ok(())
                } else {
                    Err(self.fail(FormatError::ChunkDigest {
                        chunk: r as usize,
                        owner: owners[k].0.to_string(),
                        expected: c.sha256.clone(),
                        actual,
                    }))
                }
            })?;
        let mut pieces = pieces.into_iter();
        Ok(owners
            .iter()
            .map(|(_, refs)| {
                if refs.len() == 1 {
                    pieces.next().unwrap_or_default()
                } else {
                    let parts: Vec<Bytes> = pieces.by_ref().take(refs.len()).collect();
                    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
                    parts.iter().for_each(|p| buf.extend_from_slice(p));
                    Bytes::from(buf)
                }
            })
            .collect())
    }

    /// A side file's bytes, verified.
    pub fn read_file(&self, f: &FileEntry) -> Result<Vec<u8>> {
        Ok(self.fetch_many(&[(&f.name, &f.chunks)])?.remove(0).to_vec())
    }

    /// Decodes a tensor's verified bytes to f32. The output is allocated only once the
    /// encoding is known to fill it: a raw tensor's length matches its shape (the
    /// manifest's validation), an encoded one's header claims its shape and it has bytes
    /// enough for that ([`codec::check_output`]).
    pub fn decode(&self, t: &TensorEntry, bytes: &[u8]) -> Result<Vec<f32>> {
        let numel = self.checked(t, bytes)?;
        let mut out = vec![0f32; numel];
        self.decode_checked(t, bytes, &mut out)?;
        Ok(out)
    }

    /// [`Artifact::decode`] into `out`, which must hold exactly the tensor's elements
    /// (callers that keep the output elsewhere: a buffer handed to Python, a reused one).
    pub fn decode_into(&self, t: &TensorEntry, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        let numel = self.checked(t, bytes)?;
        if out.len() != numel {
            return Err(Error::ShapeMismatch {
                tensor: t.name.clone(),
                expected: t.shape.iter().map(|&d| d as usize).collect(),
                got: vec![out.len()],
            });
        }
        self.decode_checked(t, bytes, out)
    }

    /// The element count of `t`, once its bytes are known to fill it.
    fn checked(&self, t: &TensorEntry, bytes: &[u8]) -> Result<usize> {
        let numel = usize::try_from(t.numel()).map_err(|_| Error::LimitExceeded {
            path: self.src.location().into(),
            what: "tensor elements",
            value: t.numel(),
            limit: usize::MAX as u64,
        })?;
        if bytes.len() as u64 != t.encoded_length {
            return Err(self.fail(FormatError::Layout(format!(
                "tensor {}: {} bytes given, the manifest says {}",
                t.name,
                bytes.len(),
                t.encoded_length
            ))));
        }
        if matches!(
            t.encoding,
            Encoding::Int4 { .. } | Encoding::Int4Residual { .. } | Encoding::Composite { .. }
        ) {
            codec::check_output(bytes, numel).map_err(|e| e.in_tensor(&t.name))?;
        }
        Ok(numel)
    }

    fn decode_checked(&self, t: &TensorEntry, bytes: &[u8], out: &mut [f32]) -> Result<()> {
        match &t.encoding {
            Encoding::Raw => t.dtype.decode_into(bytes, out),
            Encoding::Int4 { .. } | Encoding::Int4Residual { .. } | Encoding::Composite { .. } => {
                codec::decode(bytes, out).map_err(|e| e.in_tensor(&t.name))?
            }
            Encoding::Unknown => {
                return Err(Error::UnknownCodec {
                    tensor: t.name.clone(),
                })
            }
            Encoding::Base | Encoding::Delta { .. } => return Err(self.needs_base()),
        }
        Ok(())
    }

    /// The error for decoding a delta's tensor without its base.
    fn needs_base(&self) -> Error {
        Error::DeltaNeedsBase {
            base: self
                .manifest
                .base
                .as_ref()
                .map_or_else(String::new, |b| b.digest.clone()),
        }
    }

    /// The manifest entry of a tensor.
    pub fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.manifest
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::TensorNotFound {
                name: name.to_string(),
            })
    }

    /// Fetches one tensor's bytes, every chunk verified.
    pub fn fetch_tensor(&self, t: &TensorEntry) -> Result<Bytes> {
        if t.chunks.is_empty() {
            return Ok(Bytes::new());
        }
        Ok(self.fetch_many(&[(&t.name, &t.chunks)])?.remove(0))
    }

    /// Fetches, verifies and decodes one tensor.
    pub fn load_tensor(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.entry(name)?;
        let bytes = self.fetch_tensor(t)?;
        self.decode(t, &bytes)
    }

    /// Streams `tensors` in batches (one coalesced, parallel read per batch), calling `each`
    /// with every tensor's verified bytes, in order. The next batch is fetched while the
    /// current one is processed; batches start at [`FIRST_BATCH_BYTES`] (a short time to
    /// the first tensor) and double up to [`BATCH_BYTES`] (bounded memory: at most two
    /// batches are held).
    pub fn for_each_encoded(
        &self,
        tensors: &[&TensorEntry],
        mut each: impl FnMut(&TensorEntry, Bytes) -> Result<()>,
    ) -> Result<()> {
        let mut batches = vec![];
        let (mut i, mut limit) = (0, FIRST_BATCH_BYTES);
        while i < tensors.len() {
            let mut j = i;
            let mut size = 0;
            while j < tensors.len() && (j == i || size + tensors[j].encoded_length <= limit) {
                size += tensors[j].encoded_length;
                j += 1;
            }
            batches.push(i..j);
            i = j;
            limit = (limit * 2).min(BATCH_BYTES);
        }
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Bytes>>>(1);
            let fetcher = scope.spawn({
                let batches = batches.clone();
                move || {
                    for r in batches {
                        let owners: Vec<(&str, &[u32])> = tensors[r]
                            .iter()
                            .map(|t| (t.name.as_str(), t.chunks.as_slice()))
                            .collect();
                        let fetched = self.fetch_many(&owners);
                        let failed = fetched.is_err();
                        if tx.send(fetched).is_err() || failed {
                            break;
                        }
                    }
                }
            });
            let mut result = Ok(());
            for r in batches {
                let Ok(fetched) = rx.recv() else { break };
                match fetched.and_then(|bufs| {
                    tensors[r]
                        .iter()
                        .zip(bufs)
                        .try_for_each(|(t, bytes)| each(t, bytes))
                }) {
                    Ok(()) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            drop(rx);
            let _ = fetcher.join();
            result
        })
    }

    /// Reads every chunk and checks its sha256 (after which every byte is vouched for).
    pub fn verify_chunks(&self, progress: &dyn Fn(u64)) -> Result<()> {
        let all: Vec<&TensorEntry> = self.manifest.tensors.iter().collect();
        self.for_each_encoded(&all, |t, _| {
            progress(t.encoded_length);
            Ok(())
        })?;
        for f in &self.manifest.files {
            self.read_file(f)?;
        }
        Ok(())
    }

    /// Writes the selected tensors, decoded, as an HF directory (config and tokenizer
    /// included), in `dtype` or each tensor's source dtype.
    pub fn unpack(
        &self,
        out: &Path,
        sel: &Selection,
        dtype: Option<DType>,
        progress: &dyn Fn(&TensorEntry),
    ) -> Result<Vec<String>> {
        if let Some(base) = &self.manifest.base {
            return Err(Error::DeltaNeedsBase {
                base: base.digest.clone(),
            });
        }
        let chosen = self.select(sel);
        if chosen.is_empty() {
            return Err(Error::NothingSelected);
        }
        let metas: Vec<TensorMeta> = chosen
            .iter()
            .map(|t| TensorMeta {
                dtype: dtype.unwrap_or(t.dtype),
                ..t.meta()
            })
            .collect();
        let mut writer = HfDirWriter::new(out, metas, DEFAULT_MAX_SHARD_BYTES)?;
        self.for_each_encoded(&chosen, |t, bytes| {
            let values = self.decode(t, &bytes)?;
            drop(bytes);
            writer.write(&t.name, &values)?;
            progress(t);
            Ok(())
        })?;
        let files = writer.finish()?;
        for f in &self.manifest.files {
            let bytes = self.read_file(f)?;
            let mut bytes = bytes;
            if f.name == "config.json" {
                if let Some(dt) = dtype {
                    bytes = retag_config(&bytes, dt).unwrap_or(bytes);
                }
            }
            crate::source::write_atomic(&out.join(&f.name), &bytes)?;
        }
        Ok(files)
    }
}

/// `config.json` with its dtype fields set to `dt` (when it parses as a JSON object).
fn retag_config(bytes: &[u8], dt: DType) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let o = v.as_object_mut()?;
    o.insert("torch_dtype".into(), dt.torch_name().into());
    if o.contains_key("dtype") {
        o.insert("dtype".into(), dt.torch_name().into());
    }
    serde_json::to_vec_pretty(&v).ok()
}
