//! Writing dense HF directories the way `save_pretrained` does: `model.safetensors`,
//! or `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json`
//! when the weights exceed the shard size.
//!
//! The header of each shard depends only on names, shapes and dtypes, all known before
//! the first byte of data, so tensors stream to disk one at a time in declaration order.
//! The header is built and serialized by the `safetensors` crate; the streaming of the
//! data is ours (the crate serializes from buffers it holds all at once).
//! Shards are written to temporary names and renamed into place only by
//! [`HfDirWriter::finish`]: an interrupted write never leaves a loadable half-model.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::TensorMeta;
use crate::error::WriterMisuse;
use crate::{Error, Result};

/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// A named f32 tensor held in memory: (name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Elements converted per write.
const WRITE_CHUNK: usize = 1 << 20;

struct Shard {
    file_name: String,
    tensors: Vec<usize>,
    header: Vec<u8>,
}

/// A tensor written as stored bytes (packed integers, shapes: what quantized layouts such
/// as compressed-tensors keep beside float weights).
#[derive(Debug, Clone)]
pub struct RawDecl {
    /// Tensor name.
    pub name: String,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Its safetensors dtype.
    pub dtype: safetensors::Dtype,
}

impl RawDecl {
    fn len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

impl From<&TensorMeta> for RawDecl {
    fn from(m: &TensorMeta) -> Self {
        RawDecl {
            name: m.name.clone(),
            shape: m.shape.clone(),
            dtype: m.dtype.safetensors_dtype(),
        }
    }
}

/// Streams tensors into a sharded safetensors HF directory.
pub struct HfDirWriter {
    dir: PathBuf,
    metas: Vec<RawDecl>,
    /// Per tensor: the float dtype `write` converts f32 values to (`None`: bytes only).
    floats: Vec<Option<crate::dtype::DType>>,
    shard_of: Vec<usize>,
    shards: Vec<Shard>,
    next: usize,
    open: Option<(usize, BufWriter<File>)>,
    total_bytes: u64,
}

impl HfDirWriter {
    /// Plans the shards for `metas` (written in this order) under `dir`, creating it.
    pub fn new(dir: &Path, metas: Vec<TensorMeta>, max_shard_bytes: u64) -> Result<Self> {
        let floats = metas.iter().map(|m| Some(m.dtype)).collect();
        Self::with_decls(
            dir,
            metas.iter().map(RawDecl::from).collect(),
            floats,
            max_shard_bytes,
        )
    }

    /// Plans the shards for tensors of any safetensors dtype, each written as bytes by
    /// [`HfDirWriter::write_bytes`] or, where `floats` names a dtype, from f32 by `write`.
    pub fn with_decls(
        dir: &Path,
        metas: Vec<RawDecl>,
        floats: Vec<Option<crate::dtype::DType>>,
        max_shard_bytes: u64,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let mut groups: Vec<Vec<usize>> = vec![];
        let mut size = 0u64;
        let mut total = 0u64;
        for (i, m) in metas.iter().enumerate() {
            let bytes = m.len() as u64;
            total += bytes;
            match groups.last_mut() {
                Some(g) if size + bytes <= max_shard_bytes => g.push(i),
                _ => {
                    groups.push(vec![i]);
                    size = 0;
                }
            }
            size += bytes;
        }
        let n = groups.len().max(1);
        let mut shard_of = vec![0; metas.len()];
        let mut shards = Vec::with_capacity(n);
        for (si, g) in groups.into_iter().enumerate() {
            let file_name = if n == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", si + 1, n)
            };
            // The header through the safetensors crate's own `Metadata` (validated as it
            // is built: offsets contiguous, sizes matching shapes); the data is streamed by
            // `write` below, which the crate's whole-buffer serializer cannot do.
            let mut infos = Vec::with_capacity(g.len());
            let mut off = 0usize;
            for &i in &g {
                let m = &metas[i];
                let len = m.len();
                infos.push((
                    m.name.clone(),
                    safetensors::tensor::TensorInfo {
                        dtype: m.dtype,
                        shape: m.shape.clone(),
                        data_offsets: (off, off + len),
                    },
                ));
                off += len;
                shard_of[i] = si;
            }
            let format = [("format".to_string(), "pt".to_string())].into();
            let header = safetensors::tensor::Metadata::new(Some(format), infos).map_err(|e| {
                Error::malformed(dir.join(&file_name), "safetensors", e.to_string())
            })?;
            let mut hb = serde_json::to_vec(&header).map_err(|e| Error::Json {
                path: dir.join(&file_name),
                message: e.to_string(),
            })?;
            while hb.len() % 8 != 0 {
                hb.push(b' ');
            }
            shards.push(Shard {
                file_name,
                tensors: g,
                header: hb,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            metas,
            floats,
            shard_of,
            shards,
            next: 0,
            open: None,
            total_bytes: total,
        })
    }

    fn tmp_path(&self, si: usize) -> PathBuf {
        self.dir.join(format!("{}.tmp", self.shards[si].file_name))
    }

    /// The next tensor the writer expects, if any.
    pub fn next_tensor(&self) -> Option<&RawDecl> {
        self.metas.get(self.next)
    }

    /// Writes the next tensor (must be `name`, in declaration order) from f32 values,
    /// converting to its declared dtype.
    pub fn write(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let meta = self.expect(name)?;
        let Some(dtype) = self.floats[self.next] else {
            return Err(Error::Writer(WriterMisuse::NotFloat(name.to_string())));
        };
        if values.len() != meta.shape.iter().product::<usize>() {
            return Err(Error::ShapeMismatch {
                tensor: name.to_string(),
                expected: meta.shape.clone(),
                got: vec![values.len()],
            });
        }
        // Convert in slices so a large tensor never exists twice in memory.
        let mut buf = Vec::with_capacity(WRITE_CHUNK * dtype.size());
        for chunk in values.chunks(WRITE_CHUNK) {
            buf.clear();
            dtype.encode_into(chunk, &mut buf);
            self.put(&buf)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Writes the next tensor (must be `name`, in declaration order) as its stored bytes
    /// (little-endian, exactly the declared shape's size).
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let meta = self.expect(name)?;
        if bytes.len() != meta.len() {
            return Err(Error::ShapeMismatch {
                tensor: name.to_string(),
                expected: meta.shape.clone(),
                got: vec![bytes.len() * 8 / meta.dtype.bitsize().max(1)],
            });
        }
        self.put(bytes)?;
        self.next += 1;
        Ok(())
    }

    /// The declaration of the next tensor, checked to be `name`.
    fn expect(&self, name: &str) -> Result<&RawDecl> {
        match self.metas.get(self.next) {
            Some(m) if m.name == name => Ok(m),
            m => Err(Error::Writer(WriterMisuse::OutOfOrder {
                expected: m.map(|m| m.name.clone()).unwrap_or_default(),
                got: name.to_string(),
            })),
        }
    }

    /// Appends bytes of the next tensor to its shard, opening the shard when it starts.
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let si = self.shard_of[self.next];
        if self.open.as_ref().map(|(s, _)| *s) != Some(si) {
            self.close_current()?;
            let p = self.tmp_path(si);
            let f = File::create(&p).map_err(|e| Error::io("create", &p, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            let h = &self.shards[si].header;
            w.write_all(&(h.len() as u64).to_le_bytes())
                .and_then(|_| w.write_all(h))
                .map_err(|e| Error::io("write", &p, e))?;
            self.open = Some((si, w));
        }
        let p = self.tmp_path(si);
        if let Some((_, w)) = self.open.as_mut() {
            w.write_all(bytes).map_err(|e| Error::io("write", &p, e))?;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((si, w)) = self.open.take() {
            let p = self.tmp_path(si);
            let f = w
                .into_inner()
                .map_err(|e| Error::io("flush", &p, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io("sync", &p, e))?;
        }
        Ok(())
    }

    /// Checks every tensor was written, renames the shards into place and writes the
    /// index when sharded. Returns the weight file names.
    pub fn finish(mut self) -> Result<Vec<String>> {
        if let Some(m) = self.metas.get(self.next) {
            return Err(Error::Writer(WriterMisuse::NeverWritten(m.name.clone())));
        }
        self.close_current()?;
        if self.metas.is_empty() {
            return Err(Error::Writer(WriterMisuse::Empty));
        }
        // Remove weights a previous run left here, so loaders see only this model.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let ours = self.shards.iter().any(|s| s.file_name == n);
                if !ours
                    && (n == "model.safetensors.index.json"
                        || (n.starts_with("model") && n.ends_with(".safetensors")))
                {
                    std::fs::remove_file(e.path())
                        .map_err(|err| Error::io("remove", e.path(), err))?;
                }
            }
        }
        for si in 0..self.shards.len() {
            let to = self.dir.join(&self.shards[si].file_name);
            std::fs::rename(self.tmp_path(si), &to).map_err(|e| Error::io("rename", &to, e))?;
        }
        if self.shards.len() > 1 {
            let mut wm = serde_json::Map::new();
            for s in &self.shards {
                for &i in &s.tensors {
                    wm.insert(self.metas[i].name.clone(), json!(s.file_name));
                }
            }
            super::write_json(
                &self.dir.join("model.safetensors.index.json"),
                &json!({ "metadata": { "total_size": self.total_bytes }, "weight_map": wm }),
            )?;
        }
        Ok(self.shards.iter().map(|s| s.file_name.clone()).collect())
    }
}

impl Drop for HfDirWriter {
    fn drop(&mut self) {
        // An unfinished writer removes its temporary shards.
        self.open.take();
        for si in 0..self.shards.len() {
            let _ = std::fs::remove_file(self.tmp_path(si));
        }
    }
}

/// Writes one safetensors file of f32 tensors with string metadata, atomically. For
/// small outputs (statistics) that are built in memory, so the `safetensors` crate
/// serializes the whole file.
pub fn write_safetensors_f32(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let mut bytes = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::ShapeMismatch {
                tensor: name.clone(),
                expected: shape.clone(),
                got: vec![data.len()],
            });
        }
        bytes.push(
            data.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    let bad =
        |e: safetensors::SafeTensorError| Error::malformed(path, "safetensors", e.to_string());
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (name.as_str(), v))
                .map_err(bad)
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let out = safetensors::serialize(views, Some(meta)).map_err(bad)?;
    super::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::source::{HfModelDir, TensorSource};

    fn meta(name: &str, shape: &[usize], dtype: DType) -> TensorMeta {
        TensorMeta {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            stored_as: dtype.to_string(),
        }
    }

    #[test]
    fn sharded_round_trip_and_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), "{}").expect("config");
        let metas = vec![
            meta("a.weight", &[4, 8], DType::F32),
            meta("b.weight", &[16], DType::BF16),
            meta("c.weight", &[3, 5], DType::F16),
        ];
        let mut w = HfDirWriter::new(dir.path(), metas.clone(), 100).expect("writer");
        let vals: Vec<Vec<f32>> = metas
            .iter()
            .map(|m| (0..m.numel()).map(|i| i as f32 * 0.5 - 3.0).collect())
            .collect();
        assert!(w.write("b.weight", &vals[1]).is_err(), "out of order");
        for (m, v) in metas.iter().zip(&vals) {
            w.write(&m.name, v).expect("write");
        }
        let files = w.finish().expect("finish");
        assert_eq!(files.len(), 2, "128 bytes of f32 exceed a 100-byte shard");
        assert!(dir.path().join("model.safetensors.index.json").exists());
        let src = HfModelDir::open(dir.path()).expect("open");
        for (m, v) in metas.iter().zip(&vals) {
            assert_eq!(&src.meta(&m.name).expect("meta").shape, &m.shape);
            assert_eq!(&src.read_f32(&m.name).expect("read"), v);
        }
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = HfDirWriter::new(
            dir.path(),
            vec![meta("a", &[2], DType::F32), meta("b", &[2], DType::F32)],
            1 << 20,
        )
        .expect("writer");
        w.write("a", &[1.0, 2.0]).expect("write");
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn rejects_hostile_safetensors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), "{}").expect("config");
        let write = |header: &str, data: usize| {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header.as_bytes());
            b.extend(std::iter::repeat_n(0u8, data));
            std::fs::write(dir.path().join("model.safetensors"), b).expect("write");
        };
        write(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            4,
        );
        assert!(matches!(
            HfModelDir::open(dir.path()),
            Err(Error::Truncated { .. })
        ));
        write(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        );
        assert!(matches!(
            HfModelDir::open(dir.path()),
            Err(Error::Malformed { .. })
        ));
        write(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(matches!(
            HfModelDir::open(dir.path()),
            Err(Error::Malformed { .. })
        ));
        write(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            12,
        );
        assert!(matches!(
            HfModelDir::open(dir.path()),
            Err(Error::Malformed { .. })
        ));
        write(
            r#"{"a":{"dtype":"I8","shape":[8],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(matches!(
            HfModelDir::open(dir.path()),
            Err(Error::UnsupportedDtype { .. })
        ));
        let mut b = u64::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        std::fs::write(dir.path().join("model.safetensors"), b).expect("write");
        assert!(matches!(
            HfModelDir::open(dir.path()),
            Err(Error::LimitExceeded { .. })
        ));
    }
}
