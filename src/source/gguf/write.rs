//! Writing GGUF files (version 3, the layout llama.cpp's `gguf.c` reads): header, typed
//! metadata, the tensor table, then each tensor's data at a 32-byte aligned offset.
//!
//! The tensor table holds every tensor's type and dimensions, so the sizes are known
//! before any data is written: [`GgufWriter::begin`] writes everything up to the data,
//! then each tensor's bytes are written in table order ([`GgufWriter::tensor`]), one at
//! a time, so that memory stays one tensor's worth.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::types::GgmlType;
use crate::{Error, Result};

/// Alignment of the data section and of every tensor in it (`GGUF_DEFAULT_ALIGNMENT`).
pub const ALIGNMENT: u64 = 32;

/// A metadata value as written (the on-disk type is the variant's).
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_FLOAT32`.
    F32(f32),
    /// `GGUF_TYPE_BOOL`.
    Bool(bool),
    /// `GGUF_TYPE_STRING`.
    Str(String),
    /// An array of strings.
    Strs(Vec<String>),
    /// An array of `INT32`.
    I32s(Vec<i32>),
    /// An array of `FLOAT32`.
    F32s(Vec<f32>),
}

/// One tensor of the table: GGUF name, dimensions in GGUF order (`dims[0]` the row
/// length), storage type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDecl {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, fastest-varying first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
}

impl TensorDecl {
    /// Bytes of the tensor's data. `Err` when the row length is not a whole number of
    /// the type's blocks.
    pub fn data_len(&self) -> Result<u64> {
        let be = self.ty.block_elems();
        let row = self.dims.first().copied().unwrap_or(1);
        if row % be != 0 {
            return Err(export(format!(
                "tensor {}: rows of {row} values are not whole {} blocks of {be}",
                self.name, self.ty
            )));
        }
        Ok(self.dims.iter().product::<u64>() / be * self.ty.block_bytes())
    }
}

/// The on-disk id of a storage type (`enum ggml_type`).
pub fn type_id(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q5_1 => 7,
        GgmlType::Q8_0 => 8,
        GgmlType::Q4_K => 12,
        GgmlType::Q5_K => 13,
        GgmlType::Q6_K => 14,
        GgmlType::BF16 => 30,
    }
}

fn export(reason: String) -> Error {
    Error::Export {
        format: "GGUF",
        reason,
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io("write", path, e)
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_meta(b: &mut Vec<u8>, v: &Meta) {
    let array = |b: &mut Vec<u8>, ty: u32, n: usize| {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&(n as u64).to_le_bytes());
    };
    match v {
        Meta::U32(x) => {
            b.extend_from_slice(&4u32.to_le_bytes());
            b.extend_from_slice(&x.to_le_bytes());
        }
        Meta::F32(x) => {
            b.extend_from_slice(&6u32.to_le_bytes());
            b.extend_from_slice(&x.to_le_bytes());
        }
        Meta::Bool(x) => {
            b.extend_from_slice(&7u32.to_le_bytes());
            b.push(u8::from(*x));
        }
        Meta::Str(s) => {
            b.extend_from_slice(&8u32.to_le_bytes());
            put_str(b, s);
        }
        Meta::Strs(v) => {
            array(b, 8, v.len());
            v.iter().for_each(|s| put_str(b, s));
        }
        Meta::I32s(v) => {
            array(b, 5, v.len());
            v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
        Meta::F32s(v) => {
            array(b, 6, v.len());
            v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
    }
}

/// Streams a GGUF file: [`Self::begin`], then [`Self::tensor`] once per declared
/// tensor in order, then [`Self::finish`].
pub struct GgufWriter<W: Write> {
    out: W,
    path: PathBuf,
    tensors: Vec<(TensorDecl, u64)>,
    next: usize,
    written: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, `metadata` (in order) and the tensor table; returns the writer
    /// positioned at the first tensor's data. `path` names the output in errors.
    pub fn begin(
        mut out: W,
        path: &Path,
        metadata: &[(String, Meta)],
        tensors: Vec<TensorDecl>,
    ) -> Result<Self> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut b, k);
            put_meta(&mut b, v);
        }
        let mut offset = 0u64;
        let mut table = Vec::with_capacity(tensors.len());
        for t in tensors {
            let len = t.data_len()?;
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&type_id(t.ty).to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += len.div_ceil(ALIGNMENT) * ALIGNMENT;
            table.push((t, len));
        }
        b.resize(
            (b.len() as u64).div_ceil(ALIGNMENT) as usize * ALIGNMENT as usize,
            0,
        );
        out.write_all(&b).map_err(|e| io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            written: b.len() as u64,
            out,
            tensors: table,
            next: 0,
        })
    }

    /// Writes the next tensor's data; `Err` when its length is not the declared one or
    /// every declared tensor is written.
    pub fn tensor(&mut self, data: &[u8]) -> Result<()> {
        let Some((decl, len)) = self.tensors.get(self.next) else {
            return Err(export(
                "more tensors written than the table declares".into(),
            ));
        };
        if data.len() as u64 != *len {
            return Err(export(format!(
                "tensor {}: {} bytes of data for a declared {len}",
                decl.name,
                data.len()
            )));
        }
        let pad = len.div_ceil(ALIGNMENT) * ALIGNMENT - len;
        self.out
            .write_all(data)
            .and_then(|()| {
                self.out
                    .write_all(&[0u8; ALIGNMENT as usize][..pad as usize])
            })
            .map_err(|e| io(&self.path, e))?;
        self.written += len + pad;
        self.next += 1;
        Ok(())
    }

    /// Checks that every declared tensor was written; returns the output and the bytes
    /// written.
    pub fn finish(mut self) -> Result<(W, u64)> {
        if self.next != self.tensors.len() {
            return Err(export(format!(
                "{} of {} tensors written",
                self.next,
                self.tensors.len()
            )));
        }
        self.out.flush().map_err(|e| io(&self.path, e))?;
        Ok((self.out, self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::super::file::GgufFile;
    use super::*;

    #[test]
    fn what_is_written_parses_back_with_every_value_and_tensor() {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Meta::Str("llama".into()),
            ),
            ("n".to_string(), Meta::U32(7)),
            ("eps".to_string(), Meta::F32(1e-5)),
            ("flag".to_string(), Meta::Bool(true)),
            (
                "toks".to_string(),
                Meta::Strs(vec!["a".into(), "b c".into()]),
            ),
            ("types".to_string(), Meta::I32s(vec![1, -3])),
            ("scores".to_string(), Meta::F32s(vec![0.5, -2.0])),
        ];
        let tensors = vec![
            TensorDecl {
                name: "a".into(),
                dims: vec![3, 1],
                ty: GgmlType::F32,
            },
            TensorDecl {
                name: "b".into(),
                dims: vec![32, 2],
                ty: GgmlType::Q8_0,
            },
        ];
        let mut w =
            GgufWriter::begin(Vec::new(), Path::new("t.gguf"), &meta, tensors).expect("begin");
        w.tensor(
            &[1f32, 2.0, 3.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .expect("a");
        assert!(w.tensor(&[0u8; 3]).is_err(), "a wrong length is refused");
        let mut q8 = vec![0u8; 68];
        q8[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        q8[2] = 4; // 4 * 0.5
        w.tensor(&q8).expect("b");
        assert!(w.tensor(&q8).is_err(), "more tensors than declared");
        let (bytes, n) = w.finish().expect("finish");
        assert_eq!(n, bytes.len() as u64);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.gguf");
        std::fs::write(&path, &bytes).expect("write");
        let f = GgufFile::open(&path).expect("parses");
        assert_eq!(f.get("n").and_then(|v| v.as_u64()), Some(7));
        assert_eq!(f.get("flag").and_then(|v| v.as_bool()), Some(true));
        assert_eq!(f.get("eps").and_then(|v| v.as_f64()), Some(1e-5f32 as f64));
        assert_eq!(
            f.get("toks").and_then(|v| v.as_array()).map(|a| a.len()),
            Some(2)
        );
        let a = f.tensor("a").expect("a");
        assert_eq!(f.dequantize(a).expect("a data"), vec![1.0, 2.0, 3.0]);
        let b = f.tensor("b").expect("b");
        assert_eq!(b.shape(), vec![2, 32]);
        assert_eq!(f.dequantize(b).expect("b data")[0], 2.0);
    }

    #[test]
    fn unfinished_files_and_ragged_rows_are_errors() {
        let t = TensorDecl {
            name: "x".into(),
            dims: vec![33, 1],
            ty: GgmlType::Q4_1,
        };
        assert!(GgufWriter::begin(Vec::new(), Path::new("t.gguf"), &[], vec![t]).is_err());
        let t = TensorDecl {
            name: "x".into(),
            dims: vec![1],
            ty: GgmlType::F32,
        };
        let w = GgufWriter::begin(Vec::new(), Path::new("t.gguf"), &[], vec![t]).expect("begin");
        assert!(w.finish().is_err());
    }
}
