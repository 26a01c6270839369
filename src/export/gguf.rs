//! `.tnpk` → GGUF, the file llama.cpp (and transformers' `gguf_file=` loader) reads.
//!
//! Each tensor maps to a ggml type:
//! - **exactly**, where our encoding *is* a ggml block format: `int4` with groups of a
//!   multiple of 32 values, fp16 scale and offset (asymmetric) is `Q4_1` (a group of 64
//!   or 128 becomes 2 or 4 blocks with the same scale and offset); symmetric `int4` is
//!   `Q4_0` (our `q·s − 8s` equals llama.cpp's `(q − 8)·d` bit for bit: every product and
//!   sum is exact in f32); raw bf16/f16/f32 tensors are `BF16`/`F16`/`F32`, and 1-D
//!   tensors (norms) `F32`;
//! - **re-encoded** otherwise (`int4_residual`, `int3`/`int2`, AWQ-scaled, VQ,
//!   `tenpak_x`, int4 with fp16 outliers, rows not a multiple of 32): decoded, then
//!   quantized to the fallback type (`Q8_0` unless asked; `F16`/`BF16` for ragged rows)
//!   with llama.cpp's reference quantizer, and the error this adds reported.
//!
//! Every tensor is checked after conversion: the GGUF block data is dequantized the way
//! llama.cpp does ([`crate::source::gguf::dequant`]) and compared with our decode; the
//! report says, per tensor, whether the two are equal (and bit-identical: they differ
//! only in the sign of zeros, for `Q4_0`), and the relative RMS error where they are not.
//!
//! What llama.cpp's converter changes is changed the same way (the import undoes it):
//! Llama's Q/K rows are permuted per head ([`permuted_row_order`]); Gemma 3's norm
//! weights get `+1`. The metadata (`{arch}.*`) is rebuilt from `config.json`, the
//! tokenizer (`tokenizer.ggml.*`) from `tokenizer.json` ([`super::tokenizer`]).
//!
//! A delta artifact exports with its base ([`Model::Delta`]): the fine-tune it
//! reconstructs, every tensor in its own dtype (`BF16`/`F16`/`F32`), equal to the
//! fine-tune's values.
//!
//! Memory: one tensor at a time (its encoded bytes, its decode, its GGUF bytes).

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::Path;

use half::f16;
use serde_json::Value as Json;

use super::{Compare, Model, Report};
use crate::artifact::format::{Encoding, TensorEntry};
use crate::codec::header::{Header, HEADER_LEN};
use crate::source::gguf::dequant::dequantize;
use crate::source::gguf::quant::{q4_0_block, q4_1_block, quantize_row, QK};
use crate::source::gguf::write::{GgufWriter, Meta, TensorDecl};
use crate::source::gguf::{gguf_name, permuted_row_order, Arch, GgmlType, SUPPORTED_ARCHS};
use crate::{Error, Result};

/// Options of a GGUF export.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The type of tensors whose encoding has no exact ggml equivalent: `Q8_0` (the
    /// default: adds the least error), `Q4_1`, `Q4_0`, `F16`, `BF16` or `F32`.
    pub fallback: GgmlType,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fallback: GgmlType::Q8_0,
        }
    }
}

/// The types a fallback may be.
pub const FALLBACKS: [GgmlType; 6] = [
    GgmlType::Q8_0,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

fn export_err(reason: String) -> Error {
    Error::Export {
        format: "GGUF",
        reason,
    }
}

/// How one tensor is converted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// `int4` blocks repacked as `Q4_1` (asymmetric) or `Q4_0` (symmetric).
    Int4Blocks,
    /// Decoded, then written as this type (exact for raw tensors in their own dtype).
    Convert(GgmlType),
}

struct Planned<'a> {
    entry: &'a TensorEntry,
    decl: TensorDecl,
    plan: Plan,
    /// GGUF row `r` holds our row `order[r]` (Llama Q/K).
    order: Option<Vec<usize>>,
    /// Added to every value (Gemma 3 norms).
    shift: f32,
}

/// The GGUF type that holds a dtype's values exactly.
fn own_type(dtype: crate::dtype::DType) -> GgmlType {
    match dtype {
        crate::dtype::DType::BF16 => GgmlType::BF16,
        crate::dtype::DType::F16 => GgmlType::F16,
        crate::dtype::DType::F32 => GgmlType::F32,
    }
}

fn plan_tensor<'a>(
    arch: Arch,
    config: &Json,
    t: &'a TensorEntry,
    opts: &Options,
    delta: bool,
) -> Result<Planned<'a>> {
    let gguf = gguf_name(arch, &t.name).ok_or_else(|| {
        export_err(format!(
            "tensor {} has no GGUF name for {}",
            t.name,
            arch.gguf()
        ))
    })?;
    let dims: Vec<u64> = t.shape.iter().rev().copied().collect();
    let row = dims.first().copied().unwrap_or(1);
    let whole_blocks = row % QK as u64 == 0;
    let plan = if t.shape.len() < 2 {
        Plan::Convert(GgmlType::F32)
    } else {
        match &t.encoding {
            // Raw tensors, and every tensor of a delta (the fine-tune's values), in
            // their own dtype.
            Encoding::Raw => Plan::Convert(own_type(t.dtype)),
            _ if delta => Plan::Convert(own_type(t.dtype)),
            Encoding::Int4 {
                group,
                outliers_ppm: 0,
                ..
            } if whole_blocks && (*group as usize).is_multiple_of(QK) => Plan::Int4Blocks,
            _ if whole_blocks || opts.fallback.block_elems() == 1 => Plan::Convert(opts.fallback),
            _ => Plan::Convert(match t.dtype {
                crate::dtype::DType::F16 => GgmlType::F16,
                _ => GgmlType::BF16,
            }),
        }
    };
    let ty = match plan {
        Plan::Int4Blocks => match t.encoding {
            Encoding::Int4 {
                symmetric: true, ..
            } => GgmlType::Q4_0,
            _ => GgmlType::Q4_1,
        },
        Plan::Convert(ty) => ty,
    };
    let heads = |k: &str| config[k].as_u64().map(|h| h as usize);
    let order = match (arch, t.name.rsplit('.').nth(1)) {
        (Arch::Llama, Some("q_proj")) => heads("num_attention_heads"),
        (Arch::Llama, Some("k_proj")) => {
            heads("num_key_value_heads").or_else(|| heads("num_attention_heads"))
        }
        _ => None,
    }
    .map(|h| {
        let rows = t.shape[0] as usize;
        if t.shape.len() != 2 || h == 0 || !rows.is_multiple_of(2 * h) {
            return Err(export_err(format!(
                "tensor {}: shape {:?} does not split into {h} rotary heads",
                t.name, t.shape
            )));
        }
        Ok(permuted_row_order(rows, h))
    })
    .transpose()?;
    let shift = if arch == Arch::Gemma3 && t.name.ends_with("norm.weight") {
        1.0
    } else {
        0.0
    };
    Ok(Planned {
        entry: t,
        decl: TensorDecl {
            name: gguf,
            dims,
            ty,
        },
        plan,
        order,
        shift,
    })
}

/// Appends the `Q4_1`/`Q4_0` blocks of an `int4` encoding to `out`, our rows in `order`.
fn int4_blocks(name: &str, bytes: &[u8], order: &[usize], out: &mut Vec<u8>) -> Result<()> {
    let h = Header::parse(bytes).map_err(|e| e.in_tensor(name))?;
    let bad = |why: String| export_err(format!("tensor {name}: {why}"));
    if h.id != crate::codec::int4::ID {
        return Err(bad(format!(
            "the manifest says int4, the encoding is codec {}",
            h.id
        )));
    }
    let (rows, cols, group) = (h.rows as usize, h.cols as usize, h.group as usize);
    if group == 0 || group % QK != 0 || cols % QK != 0 {
        return Err(bad(format!(
            "int4 group {group} over {cols} columns is not whole blocks of {QK}"
        )));
    }
    let per_row = cols.div_ceil(group);
    let groups = rows * per_row;
    let params = if h.symmetric { 1 } else { 2 };
    let codes_at = HEADER_LEN + groups * 2 * params;
    let expected = codes_at + rows * cols / 2;
    if bytes.len() != expected {
        return Err(bad(format!(
            "{} bytes, an int4 encoding of {rows}x{cols} in groups of {group} has {expected}",
            bytes.len()
        )));
    }
    let f16_at = |i: usize| f16::from_bits(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
    let scale = |g: usize| f16_at(HEADER_LEN + 2 * g);
    let offset = |g: usize| f16_at(HEADER_LEN + 2 * (groups + g));
    if order.len() != rows {
        return Err(bad(format!(
            "{} rows in the header, {} expected",
            rows,
            order.len()
        )));
    }
    for &r in order {
        // Codes are packed group after group, two per byte, low nibble first; a row's
        // codes start at r·cols/2 (every group, the last included, has an even count).
        let row_codes = &bytes[codes_at + r * cols / 2..][..cols / 2];
        for b in 0..cols / QK {
            let g = r * per_row + b * QK / group;
            let codes: [u8; QK] = std::array::from_fn(|k| {
                let i = b * QK + k;
                (row_codes[i / 2] >> (4 * (i % 2))) & 15
            });
            if h.symmetric {
                q4_0_block(scale(g), &codes, out);
            } else {
                q4_1_block(scale(g), offset(g), &codes, out);
            }
        }
    }
    Ok(())
}

/// Converts one tensor: its GGUF data, and its report.
/// `ours`: the tensor as we decode it; `bytes`: its encoding (for the int4 repacking).
fn convert(
    p: &Planned<'_>,
    mut ours: Vec<f32>,
    bytes: &[u8],
) -> Result<(Vec<u8>, super::TensorReport)> {
    let t = p.entry;
    if p.shift != 0.0 {
        ours.iter_mut().for_each(|x| *x += p.shift);
    }
    let row_len = p.decl.dims.first().copied().unwrap_or(1) as usize;
    let rows = ours.len() / row_len.max(1);
    let mut data = Vec::with_capacity(p.decl.data_len()? as usize);
    let order: Vec<usize> = p.order.clone().unwrap_or_else(|| (0..rows).collect());
    match p.plan {
        Plan::Int4Blocks => int4_blocks(&t.name, bytes, &order, &mut data)?,
        Plan::Convert(ty) => {
            for &r in &order {
                quantize_row(ty, &ours[r * row_len..(r + 1) * row_len], &mut data);
            }
        }
    }
    // The check: llama.cpp's dequantization of what was written, against our decode.
    let mut back = vec![0f32; ours.len()];
    dequantize(p.decl.ty, &data, &mut back);
    let mut cmp = Compare::default();
    for (k, &r) in order.iter().enumerate() {
        cmp.add(
            &ours[r * row_len..(r + 1) * row_len],
            &back[k * row_len..(k + 1) * row_len],
        );
    }
    let report = cmp.report(
        t,
        p.decl.name.clone(),
        p.decl.ty.to_string(),
        data.len() as u64,
    );
    Ok((data, report))
}

/// llama.cpp's `LLAMA_FTYPE_*` for a file whose matrices are mostly `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4_K => 15,
        GgmlType::Q5_K => 17,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
    }
}

/// The architecture metadata (`general.*`, `{arch}.*`) from `config.json`.
fn model_meta(arch: Arch, config: &Json, name: &str) -> Result<Vec<(String, Meta)>> {
    let p = arch.gguf();
    let u = |k: &str| -> Result<u32> {
        config[k]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| export_err(format!("config.json has no integer {k}")))
    };
    let f = |k: &str| config[k].as_f64();
    let hidden = u("hidden_size")?;
    let heads = u("num_attention_heads")?;
    let theta = f("rope_theta")
        .or_else(|| config["rope_parameters"]["rope_theta"].as_f64())
        .or_else(|| config["rope_parameters"]["full_attention"]["rope_theta"].as_f64());
    let mut m = vec![
        ("general.architecture".into(), Meta::Str(p.into())),
        ("general.type".into(), Meta::Str("model".into())),
        ("general.name".into(), Meta::Str(name.into())),
        (
            format!("{p}.block_count"),
            Meta::U32(u("num_hidden_layers")?),
        ),
        (
            format!("{p}.context_length"),
            Meta::U32(u("max_position_embeddings").unwrap_or(4096)),
        ),
        (format!("{p}.embedding_length"), Meta::U32(hidden)),
        (
            format!("{p}.feed_forward_length"),
            Meta::U32(u("intermediate_size")?),
        ),
        (format!("{p}.attention.head_count"), Meta::U32(heads)),
        (
            format!("{p}.attention.head_count_kv"),
            Meta::U32(u("num_key_value_heads").unwrap_or(heads)),
        ),
        (
            format!("{p}.attention.layer_norm_rms_epsilon"),
            Meta::F32(f("rms_norm_eps").unwrap_or(1e-6) as f32),
        ),
    ];
    let head_dim = u("head_dim").unwrap_or(hidden / heads.max(1));
    match arch {
        Arch::Llama => {
            m.push((
                format!("{p}.rope.freq_base"),
                Meta::F32(theta.unwrap_or(10000.0) as f32),
            ));
            m.push((format!("{p}.rope.dimension_count"), Meta::U32(head_dim)));
            m.push((format!("{p}.vocab_size"), Meta::U32(u("vocab_size")?)));
        }
        Arch::Gemma3 => {
            m.push((
                format!("{p}.rope.freq_base"),
                Meta::F32(theta.unwrap_or(1_000_000.0) as f32),
            ));
            m.push((format!("{p}.attention.key_length"), Meta::U32(head_dim)));
            m.push((format!("{p}.attention.value_length"), Meta::U32(head_dim)));
            m.push((
                format!("{p}.attention.sliding_window"),
                Meta::U32(u("sliding_window").unwrap_or(512)),
            ));
            if config["rope_scaling"]["rope_type"].as_str() == Some("linear") {
                if let Some(factor) = config["rope_scaling"]["factor"].as_f64() {
                    m.push((format!("{p}.rope.scaling.type"), Meta::Str("linear".into())));
                    m.push((format!("{p}.rope.scaling.factor"), Meta::F32(factor as f32)));
                }
            }
        }
    }
    Ok(m)
}

/// Writes the GGUF file at `tmp`; returns the reports and the bytes written.
fn write_file(
    model: Model<'_>,
    tmp: &Path,
    path: &Path,
    meta: &[(String, Meta)],
    planned: &[Planned<'_>],
    progress: &dyn Fn(&str),
) -> Result<(Vec<super::TensorReport>, u64)> {
    let file = std::fs::File::create(tmp).map_err(|e| Error::io("create", tmp, e))?;
    let mut w = GgufWriter::begin(
        BufWriter::with_capacity(1 << 20, file),
        path,
        meta,
        planned.iter().map(|p| p.decl.clone()).collect(),
    )?;
    let mut reports = Vec::with_capacity(planned.len());
    let entries: Vec<&TensorEntry> = planned.iter().map(|p| p.entry).collect();
    let mut next = planned.iter();
    model.for_each_decoded(&entries, |t, ours, bytes| {
        let p = next
            .next()
            .filter(|p| std::ptr::eq(p.entry, t))
            .ok_or_else(|| export_err("tensors came back out of order".into()))?;
        progress(&t.name);
        let (data, report) = convert(p, ours, bytes)?;
        w.tensor(&data)?;
        reports.push(report);
        Ok(())
    })?;
    let (out, file_bytes) = w.finish()?;
    out.into_inner()
        .map_err(|e| Error::io("write", tmp, e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io("sync", tmp, e))?;
    Ok((reports, file_bytes))
}

/// Writes `art` as a GGUF file at `path` (through a temporary file beside it, renamed
/// at the end: an interrupted export leaves no partial `path`). `progress` is called
/// with each tensor's name as it starts.
pub fn export(
    model: Model<'_>,
    path: &Path,
    opts: &Options,
    progress: &dyn Fn(&str),
) -> Result<Report> {
    if !FALLBACKS.contains(&opts.fallback) {
        return Err(export_err(format!(
            "{} is not a fallback type (one of q8_0, q4_1, q4_0, f16, bf16, f32)",
            opts.fallback
        )));
    }
    let art = model.artifact();
    let is_delta = matches!(model, Model::Delta(_));
    model.check_not_bare_delta("GGUF")?;
    let config = model.required_json("config.json", "the architecture metadata GGUF needs")?;
    let model_type = config["model_type"].as_str().unwrap_or_default();
    let arch = Arch::of_model_type(model_type).ok_or_else(|| Error::UnsupportedArchitecture {
        arch: model_type.to_string(),
        supported: SUPPORTED_ARCHS,
    })?;
    let tokenizer = model.required_json("tokenizer.json", "GGUF carries the tokenizer")?;
    let tok_config = model
        .side_json("tokenizer_config.json")?
        .unwrap_or(Json::Null);
    let tensors = &art.manifest().tensors;
    let planned: Vec<Planned<'_>> = tensors
        .iter()
        .map(|t| plan_tensor(arch, &config, t, opts, is_delta))
        .collect::<Result<_>>()?;
    let embed_rows = tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .map(|t| t.shape[0] as usize)
        .ok_or_else(|| export_err("no model.embed_tokens.weight".into()))?;

    // Mostly: the type holding the most weights among matrices.
    let mut by_type: BTreeMap<u32, u64> = BTreeMap::new();
    for p in planned.iter().filter(|p| p.decl.dims.len() == 2) {
        *by_type.entry(file_type(p.decl.ty)).or_default() += p.entry.numel();
    }
    let ftype = by_type
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or(0, |(t, _)| *t);
    let name = config["_name_or_path"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| art.manifest().metadata.get("source").map(String::as_str))
        .unwrap_or("tenpak export")
        .to_string();
    let mut meta = model_meta(arch, &config, &name)?;
    meta.push(("general.file_type".into(), Meta::U32(ftype)));
    meta.push(("general.quantization_version".into(), Meta::U32(2)));
    meta.push((
        "general.source.tnpk".into(),
        Meta::Str(art.digest().to_string()),
    ));
    if let Model::Delta(d) = model {
        meta.push((
            "general.source.tnpk_base".into(),
            Meta::Str(d.base().digest().to_string()),
        ));
    }
    meta.extend(super::tokenizer::gguf_metadata(
        &tokenizer,
        &tok_config,
        &config,
        embed_rows,
    )?);

    // Written under a temporary name beside `path` (File::create: the umask's
    // permissions), renamed into place once complete; removed on any error.
    let (reports, file_bytes) = super::atomically("GGUF", path, |tmp| {
        write_file(model, tmp, path, &meta, &planned, progress)
    })?;
    Ok(Report {
        tensors: reports,
        file_bytes,
        weights: tensors.iter().map(TensorEntry::numel).sum(),
        file_type: ftype,
    })
}
