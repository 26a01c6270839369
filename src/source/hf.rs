//! Hugging Face model directories: `config.json` plus `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`. Each shard is memory-mapped and its header
//! parsed and validated by the `safetensors` crate (the format's reference
//! implementation): an 8-byte little-endian header length, a JSON header, then a byte
//! buffer the tensors cover exactly, with no holes and no overlaps.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::mmap::MappedFile;
use super::{TensorMeta, TensorSource};
use crate::dtype::DType;
use crate::{Error, Result};

/// Largest safetensors JSON header accepted (the reference implementation's cap).
pub const MAX_HEADER_LEN: u64 = 100 << 20;

/// Files copied verbatim when a directory is written back (those present).
pub const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
];

/// One tensor of a validated header.
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

struct Entry {
    shard: usize,
    start: u64,
    end: u64,
}

/// An opened HF model directory.
pub struct HfModelDir {
    dir: PathBuf,
    config: serde_json::Value,
    shards: Vec<MappedFile>,
    metas: Vec<TensorMeta>,
    entries: HashMap<String, Entry>,
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Parses and validates one safetensors header; returns entries in offset order and the
/// absolute offset where data begins.
///
/// What is ours and why: the 8-byte length, the cap on it (checked before the header is
/// touched) and the comparison of the tensors' extent with the file (so a truncated file
/// is named as such, apart from trailing bytes) — the crate folds these into one error
/// and wants the whole buffer. What is the crate's: parsing the JSON header and
/// validating it ([`safetensors::tensor::Metadata`]: known dtypes, offsets sorted,
/// contiguous from 0, each tensor exactly the size its shape and dtype imply, no overflow).
/// All of it runs on the memory map, without copying the data.
fn parse_header(file: &MappedFile) -> Result<(Vec<(String, RawEntry)>, u64)> {
    let path = file.path();
    let n = u64::from_le_bytes(
        file.range(0, 8, "header length")?
            .try_into()
            .map_err(|_| Error::malformed(path, "safetensors", "header length"))?,
    );
    if n > MAX_HEADER_LEN {
        return Err(Error::LimitExceeded {
            path: path.to_path_buf(),
            what: "safetensors header length",
            value: n,
            limit: MAX_HEADER_LEN,
        });
    }
    let header = file.range(8, n, "header")?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(header)
        .map_err(|e| Error::malformed(path, "safetensors", e.to_string()))?;
    let data_start = 8 + n;
    let buffer_len = file.bytes().len() as u64 - data_start;
    let data_len = meta.data_len() as u64;
    if data_len > buffer_len {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            what: "tensor data".into(),
            offset: data_start,
            needed: data_len,
            len: file.bytes().len() as u64,
        });
    }
    if data_len < buffer_len {
        return Err(Error::malformed(
            path,
            "safetensors",
            format!(
                "{} trailing bytes after the last tensor",
                buffer_len - data_len
            ),
        ));
    }
    let entries = meta
        .offset_keys()
        .into_iter()
        .filter_map(|name| {
            let info = meta.info(&name)?;
            let e = RawEntry {
                dtype: info.dtype.to_string(),
                shape: info.shape.clone(),
                data_offsets: (info.data_offsets.0 as u64, info.data_offsets.1 as u64),
            };
            Some((name, e))
        })
        .collect();
    Ok((entries, data_start))
}

impl HfModelDir {
    /// Opens a directory holding `config.json` and safetensors weights.
    pub fn open(dir: &Path) -> Result<Self> {
        let config: serde_json::Value = read_json(&dir.join("config.json"))?;
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (shard_names, weight_map): (Vec<String>, Option<BTreeMap<String, String>>) =
            if index.exists() {
                let idx: Index = read_json(&index)?;
                let mut names: Vec<String> = idx.weight_map.values().cloned().collect();
                names.sort();
                names.dedup();
                for n in &names {
                    if n.contains('/') || n.contains('\\') || n.starts_with('.') {
                        return Err(Error::malformed(
                            &index,
                            "safetensors index",
                            format!("shard name {n:?} is not a plain file name"),
                        ));
                    }
                }
                (names, Some(idx.weight_map))
            } else if single.exists() {
                (vec!["model.safetensors".into()], None)
            } else {
                return Err(Error::Missing {
                    path: dir.to_path_buf(),
                    what: "model.safetensors or model.safetensors.index.json".into(),
                });
            };
        let mut shards = Vec::new();
        let mut metas = Vec::new();
        let mut entries = HashMap::new();
        for (si, sname) in shard_names.iter().enumerate() {
            let file = MappedFile::open(&dir.join(sname))?;
            let (list, data_start) = parse_header(&file)?;
            for (name, e) in list {
                if let Some(wm) = &weight_map {
                    if wm.get(&name) != Some(sname) {
                        return Err(Error::malformed(
                            &index,
                            "safetensors index",
                            format!(
                                "tensor {name} is in {sname} but the index says {:?}",
                                wm.get(&name)
                            ),
                        ));
                    }
                }
                let dtype = DType::from_safetensors_name(&e.dtype).ok_or_else(|| {
                    Error::UnsupportedDtype {
                        tensor: name.clone(),
                        dtype: e.dtype.clone(),
                    }
                })?;
                metas.push(TensorMeta {
                    name: name.clone(),
                    shape: e.shape,
                    dtype,
                    stored_as: dtype.to_string(),
                });
                let entry = Entry {
                    shard: si,
                    start: data_start + e.data_offsets.0,
                    end: data_start + e.data_offsets.1,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(Error::malformed(
                        dir,
                        "safetensors",
                        format!("tensor {name} appears in two shards"),
                    ));
                }
            }
            shards.push(file);
        }
        if let Some(wm) = &weight_map {
            if let Some(missing) = wm.keys().find(|k| !entries.contains_key(*k)) {
                return Err(Error::Missing {
                    path: index,
                    what: format!("tensor {missing} listed in the index"),
                });
            }
        }
        metas.sort_by_cached_key(|m| natural_key(&m.name));
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            shards,
            metas,
            entries,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The raw little-endian bytes of a tensor, straight from the map.
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::TensorNotFound {
                name: name.to_string(),
            })?;
        self.shards[e.shard].range(e.start, e.end - e.start, name)
    }
}

/// Sort key that orders `layers.10` after `layers.9`.
pub fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}

impl TensorSource for HfModelDir {
    fn tensors(&self) -> &[TensorMeta] {
        &self.metas
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let meta = self.meta(name)?;
        let raw = self.raw(name)?;
        let mut out = vec![0f32; meta.numel()];
        meta.dtype.decode_into(raw, &mut out);
        let e = &self.entries[name];
        self.shards[e.shard].release(e.start, e.end - e.start);
        Ok(out)
    }

    fn config(&self) -> &serde_json::Value {
        &self.config
    }

    fn write_side_files(&self, dir: &Path) -> Result<()> {
        for f in SIDE_FILES {
            let src = self.dir.join(f);
            if src.exists() {
                let dst = dir.join(f);
                std::fs::copy(&src, &dst).map_err(|e| Error::io("copy", &src, e))?;
            }
        }
        Ok(())
    }
}

/// One safetensors file of any dtypes (used for statistics and reference files); tensors
/// are read by name. Shares header validation with [`HfModelDir`].
pub struct SafetensorsFile {
    file: MappedFile,
    entries: HashMap<String, (String, Vec<usize>, u64, u64)>,
}

impl HfModelDir {
    /// Opens a single safetensors file (any dtypes).
    pub fn open_file(path: &Path) -> Result<SafetensorsFile> {
        let file = MappedFile::open(path)?;
        let (list, start) = parse_header(&file)?;
        let entries = list
            .into_iter()
            .map(|(n, e)| {
                (
                    n,
                    (
                        e.dtype,
                        e.shape,
                        start + e.data_offsets.0,
                        start + e.data_offsets.1,
                    ),
                )
            })
            .collect();
        Ok(SafetensorsFile { file, entries })
    }
}

impl SafetensorsFile {
    fn get(&self, name: &str, dtype: &str) -> Result<(&[u8], Vec<usize>)> {
        let (dt, shape, s, e) = self
            .entries
            .get(name)
            .ok_or_else(|| Error::TensorNotFound {
                name: name.to_string(),
            })?;
        if dt != dtype {
            return Err(Error::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: format!("{dt} (expected {dtype})"),
            });
        }
        Ok((self.file.range(*s, e - s, name)?, shape.clone()))
    }

    /// Tensor names.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// The header's `__metadata__` (string values; empty when absent). The header was
    /// validated at open, so this only re-reads it.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let b = self.file.bytes();
        let n = b
            .get(..8)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0) as usize;
        b.get(8..8 + n)
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok())
            .and_then(|v| v.get("__metadata__").cloned())
            .and_then(|m| serde_json::from_value(m).ok())
            .unwrap_or_default()
    }

    /// The shape and safetensors dtype name of a tensor.
    pub fn info(&self, name: &str) -> Option<(&str, &[usize])> {
        self.entries
            .get(name)
            .map(|(dt, shape, _, _)| (dt.as_str(), shape.as_slice()))
    }

    /// A floating-point tensor (F32, F16 or BF16) as f32 values, with its shape and dtype.
    pub fn read_float(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>, DType)> {
        let dt =
            self.info(name)
                .map(|(d, _)| d.to_string())
                .ok_or_else(|| Error::TensorNotFound {
                    name: name.to_string(),
                })?;
        let dtype = DType::from_safetensors_name(&dt).ok_or_else(|| Error::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: dt.clone(),
        })?;
        let (b, shape) = self.get(name, &dt)?;
        let mut out = vec![0f32; b.len() / dtype.size()];
        dtype.decode_into(b, &mut out);
        Ok((out, shape, dtype))
    }

    /// An I64 tensor.
    pub fn read_i64(&self, name: &str) -> Result<Vec<i64>> {
        let (b, _) = self.get(name, "I64")?;
        Ok(b.chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    /// An F32 tensor and its shape.
    pub fn read_f32_with_shape(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (b, shape) = self.get(name, "F32")?;
        let mut out = vec![0f32; b.len() / 4];
        DType::F32.decode_into(b, &mut out);
        Ok((out, shape))
    }
}
