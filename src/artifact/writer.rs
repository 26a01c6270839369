//! Streams tensors and files into a `.tnpk`: chunks are hashed and written as they come
//! (memory holds one tensor's encoding at most), identical chunks are stored once, and
//! the manifest, signature block and header are written at the end. The file is built
//! under a temporary name and renamed into place by [`ArtifactWriter::finish`], so a
//! failed pack never leaves a `.tnpk` behind.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::format::{self, Chunk, Encoding, FileEntry, Header, Manifest, TensorEntry};
use super::sign;
use crate::dtype::DType;
use crate::error::WriterMisuse;
use crate::{Error, Result};

/// What [`ArtifactWriter::finish`] reports.
#[derive(Debug, Clone)]
pub struct Written {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// File size.
    pub file_bytes: u64,
    /// Bytes of chunk payload (unique chunks, no padding).
    pub payload_bytes: u64,
    /// Bytes not written because an identical chunk was already stored.
    pub deduplicated_bytes: u64,
    /// Number of unique chunks.
    pub chunks: usize,
    /// Key ids that signed.
    pub signers: Vec<String>,
}

/// Writes one `.tnpk`.
pub struct ArtifactWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    pos: u64,
    alignment: u64,
    chunk_size: u64,
    chunks: Vec<Chunk>,
    by_hash: HashMap<String, u32>,
    tensors: Vec<TensorEntry>,
    files: Vec<FileEntry>,
    metadata: BTreeMap<String, String>,
    base: Option<format::BaseRef>,
    payload: u64,
    deduplicated: u64,
}

impl ArtifactWriter {
    /// Starts writing `path` with the default alignment and chunk size.
    pub fn create(path: &Path) -> Result<Self> {
        Self::with_layout(path, format::DEFAULT_ALIGNMENT, format::DEFAULT_CHUNK_SIZE)
    }

    /// Starts writing with an explicit alignment (power of two ≥ 64) and chunk size.
    pub fn with_layout(path: &Path, alignment: u64, chunk_size: u64) -> Result<Self> {
        if !alignment.is_power_of_two() || alignment < 64 || chunk_size == 0 {
            return Err(Error::InvalidOption {
                option: "alignment/chunk size",
                reason: format!(
                    "alignment {alignment} must be a power of two ≥ 64 and chunk size {chunk_size} positive"
                ),
            });
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.partial"));
        let f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let mut out = BufWriter::with_capacity(4 << 20, f);
        out.write_all(&[0u8; format::HEADER_LEN])
            .map_err(|e| Error::io("write", &tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            pos: format::HEADER_LEN as u64,
            alignment,
            chunk_size,
            chunks: vec![],
            by_hash: HashMap::new(),
            tensors: vec![],
            files: vec![],
            metadata: BTreeMap::new(),
            base: None,
            payload: 0,
            deduplicated: 0,
        })
    }

    /// Sets a metadata entry.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        self.metadata.insert(key.to_string(), value.to_string());
    }

    /// Makes this a delta artifact against the base artifact `digest` (`sha256:<hex>`).
    pub fn set_base(&mut self, digest: &str) {
        self.base = Some(format::BaseRef {
            digest: digest.to_string(),
        });
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or(Error::Writer(WriterMisuse::Finished))?;
        out.write_all(bytes)
            .map_err(|e| Error::io("write", &self.tmp, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn add_chunks(&mut self, bytes: &[u8]) -> Result<Vec<u32>> {
        let mut refs = Vec::with_capacity(bytes.len().div_ceil(self.chunk_size as usize).max(1));
        for piece in bytes.chunks(self.chunk_size as usize) {
            let sha = format::sha256_hex(piece);
            if let Some(&i) = self.by_hash.get(&sha) {
                refs.push(i);
                self.deduplicated += piece.len() as u64;
                continue;
            }
            let pad = self.pos.next_multiple_of(self.alignment) - self.pos;
            self.write_bytes(&vec![0u8; pad as usize])?;
            let i = u32::try_from(self.chunks.len())
                .map_err(|_| Error::Writer(WriterMisuse::TooManyChunks))?;
            self.chunks.push(Chunk {
                offset: self.pos,
                length: piece.len() as u64,
                sha256: sha.clone(),
            });
            self.write_bytes(piece)?;
            self.by_hash.insert(sha, i);
            self.payload += piece.len() as u64;
            refs.push(i);
        }
        Ok(refs)
    }

    /// Adds a tensor whose bytes are `encoded` (codec output, or raw `dtype` bytes).
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        encoding: Encoding,
        encoded: &[u8],
    ) -> Result<()> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::Writer(WriterMisuse::Duplicate(name.to_string())));
        }
        let chunks = self.add_chunks(encoded)?;
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            dtype,
            encoding,
            encoded_length: encoded.len() as u64,
            chunks,
        });
        Ok(())
    }

    /// Adds a side file (`config.json`, `tokenizer.json`, ...).
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let chunks = self.add_chunks(bytes)?;
        self.files.push(FileEntry {
            name: name.to_string(),
            length: bytes.len() as u64,
            chunks,
        });
        Ok(())
    }

    /// Writes manifest, signatures and header; renames the file into place.
    pub fn finish(mut self, keys: &[&SigningKey]) -> Result<Written> {
        let manifest = Manifest {
            format: "tnpk".into(),
            alignment: self.alignment,
            chunk_size: self.chunk_size,
            created_by: format!("tenpak {}", env!("CARGO_PKG_VERSION")),
            metadata: std::mem::take(&mut self.metadata),
            base: self.base.take(),
            chunks: std::mem::take(&mut self.chunks),
            tensors: std::mem::take(&mut self.tensors),
            files: std::mem::take(&mut self.files),
        };
        let bytes = manifest.to_canonical();
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        let block = sign::sign_block(keys, &sha);
        let header = Header {
            minor: format::MINOR,
            manifest_offset: self.pos,
            manifest_len: bytes.len() as u64,
            signature_offset: self.pos + bytes.len() as u64,
            signature_len: block.len() as u64,
            manifest_sha256: sha,
        };
        self.write_bytes(&bytes)?;
        self.write_bytes(&block)?;
        let out = self
            .out
            .take()
            .ok_or(Error::Writer(WriterMisuse::Finished))?;
        let placed = out
            .into_inner()
            .map_err(|e| Error::io("flush", &self.tmp, e.into_error()))
            .and_then(|mut f| {
                f.seek(SeekFrom::Start(0))
                    .and_then(|_| f.write_all(&header.to_bytes()))
                    .and_then(|_| f.sync_all())
                    .map_err(|e| Error::io("write header", &self.tmp, e))
            })
            .and_then(|_| {
                std::fs::rename(&self.tmp, &self.path)
                    .map_err(|e| Error::io("rename", &self.path, e))
            });
        if let Err(e) = placed {
            // Nothing half-written is left behind.
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        Ok(Written {
            digest: Manifest::digest_of(&bytes),
            file_bytes: self.pos,
            payload_bytes: self.payload,
            deduplicated_bytes: self.deduplicated,
            chunks: manifest.chunks.len(),
            signers: keys
                .iter()
                .map(|k| sign::key_id(&k.verifying_key()))
                .collect(),
        })
    }
}

impl Drop for ArtifactWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
