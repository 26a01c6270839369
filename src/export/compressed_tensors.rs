//! `.tnpk` → a compressed-tensors directory (`pack-quantized`), the layout vLLM and
//! transformers load quantized safetensors from (`quantization_config` with
//! `quant_method: compressed-tensors` in `config.json`).
//!
//! Each Linear weight of the transformer blocks (`model.layers.N.*_proj.weight`) becomes
//! `weight_packed` (int32: 32/bits codes per word, element `i` of a row at bit `i·bits`,
//! stored as `q + 2^(bits−1)`), `weight_scale` (f32, one per group), `weight_shape`
//! (int64) and, when asymmetric, `weight_zero_point` (int32, packed along the rows); the
//! library dequantizes `(q − zp) · scale` in the scale's dtype. Our encodings map:
//! - **exactly**: symmetric `int4` (no outliers, rows a multiple of 32 columns, whole
//!   groups): our codes *are* the packed words, byte for byte, and `(q − 8)·s` equals our
//!   `q·s − 8s` in f32 (every product and sum is exact; the fp16 scales are kept in f32
//!   so that nothing rounds);
//! - **re-gridded**: asymmetric `int4` (fp16 scale and fp16 offset) has no exact
//!   equivalent, since compressed-tensors' zero point is an integer; each group gets the
//!   integer zero point and f32 scale of least squared error against our decode
//!   (asymmetric int4, same groups), and the error this adds is reported;
//! - **re-encoded** to `--fallback` otherwise (AWQ-scaled, VQ, `tenpak_x`,
//!   `int4_residual`, `int3`/`int2`, outliers): `int8` (symmetric, groups of 128, the
//!   least added error), `int4` (our symmetric int4 encoder at groups of 128, then
//!   packed exactly) or `dense` (the decode in the model's dtype, the module listed in
//!   `ignore`).
//!
//! Embeddings, `lm_head`, norms and every other tensor are written densely in their dtype
//! (`lm_head` listed in `ignore`), as llm-compressor does. Scales are f32: vLLM casts
//! them to the model's dtype on load (for a bf16 model that rounds each fp16 scale to
//! bf16, a relative change below 2^-8), transformers keeps them.
//!
//! A delta artifact exports with its base: the fine-tune, every tensor dense in its own
//! dtype (exact), without a `quantization_config` (as when every Linear falls back to
//! `dense`).
//!
//! Memory: one tensor at a time (its encoding, its decode, its packed form).

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use serde_json::{json, Value as Json};

use super::{Compare, Model, Report, TensorReport};
use crate::artifact::format::{Encoding, TensorEntry};
use crate::codec::header::{Header, HEADER_LEN};
use crate::dtype::DType;
use crate::source::{HfDirWriter, RawDecl, DEFAULT_MAX_SHARD_BYTES};
use crate::{Error, Result};

/// What a quantized Linear without an exact equivalent becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// Symmetric int8 in groups of 128 (the least added error).
    #[default]
    Int8,
    /// Symmetric int4 in groups of 128 (our encoder with scale refinement).
    Int4,
    /// The decode in the model's dtype, unquantized (listed in `ignore`).
    Dense,
}

impl std::str::FromStr for Fallback {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "int8" => Ok(Fallback::Int8),
            "int4" => Ok(Fallback::Int4),
            "dense" => Ok(Fallback::Dense),
            _ => Err(format!("{s}: one of int8, int4, dense")),
        }
    }
}

/// Options of a compressed-tensors export.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// What quantized Linears without an exact equivalent become.
    pub fallback: Fallback,
}

/// Group size of re-encoded Linears.
const FALLBACK_GROUP: usize = 128;

fn export_err(reason: String) -> Error {
    Error::Export {
        format: "compressed-tensors",
        reason,
    }
}

/// How a packed Linear gets its codes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    /// Our symmetric int4 codes, as they are.
    Exact,
    /// Our asymmetric int4 decode, on an integer zero point per group.
    Regrid,
    /// Our decode, re-encoded (int8 by round to nearest, int4 by our encoder).
    Requant,
}

/// A packed Linear's quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quant {
    bits: u32,
    group: usize,
    symmetric: bool,
    how: How,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    Dense(DType),
    Packed(Quant),
}

/// Whether a tensor is a Linear weight of a transformer block (what vLLM quantizes).
fn is_block_linear(t: &TensorEntry) -> bool {
    t.shape.len() == 2 && t.name.contains(".layers.") && t.name.ends_with("_proj.weight")
}

fn plan_tensor(t: &TensorEntry, opts: &Options, delta: bool) -> Plan {
    let dense = Plan::Dense(t.dtype);
    if delta || !is_block_linear(t) {
        return dense;
    }
    let cols = t.shape[1] as usize;
    let packs = |group: usize| {
        cols.is_multiple_of(32) && group.is_multiple_of(8) && cols.is_multiple_of(group)
    };
    let requant = |bits| Quant {
        bits,
        group: FALLBACK_GROUP,
        symmetric: true,
        how: How::Requant,
    };
    match &t.encoding {
        Encoding::Raw => dense,
        Encoding::Int4 {
            group,
            symmetric,
            outliers_ppm: 0,
            ..
        } if packs(*group as usize) => Plan::Packed(Quant {
            bits: 4,
            group: *group as usize,
            symmetric: *symmetric,
            how: if *symmetric { How::Exact } else { How::Regrid },
        }),
        _ if !packs(FALLBACK_GROUP) => dense,
        _ => match opts.fallback {
            Fallback::Int8 => Plan::Packed(requant(8)),
            Fallback::Int4 => Plan::Packed(requant(4)),
            Fallback::Dense => dense,
        },
    }
}

/// The module name of a weight (`...q_proj.weight` → `...q_proj`).
fn module(name: &str) -> &str {
    name.strip_suffix(".weight").unwrap_or(name)
}

/// The safetensors entries a plan writes for `t`.
fn decls(t: &TensorEntry, plan: Plan) -> Vec<(RawDecl, Option<DType>)> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    match plan {
        Plan::Dense(dt) => vec![(
            RawDecl {
                name: t.name.clone(),
                shape,
                dtype: dt.safetensors_dtype(),
            },
            Some(dt),
        )],
        Plan::Packed(q) => {
            let (rows, cols) = (shape[0], shape[1]);
            let m = module(&t.name);
            let decl = |suffix: &str, shape: Vec<usize>, dtype| {
                (
                    RawDecl {
                        name: format!("{m}.{suffix}"),
                        shape,
                        dtype,
                    },
                    None,
                )
            };
            let groups = cols / q.group;
            let mut v = vec![
                decl(
                    "weight_packed",
                    vec![rows, cols * q.bits as usize / 32],
                    safetensors::Dtype::I32,
                ),
                decl("weight_scale", vec![rows, groups], safetensors::Dtype::F32),
                decl("weight_shape", vec![2], safetensors::Dtype::I64),
            ];
            if !q.symmetric {
                v.push(decl(
                    "weight_zero_point",
                    vec![(rows * q.bits as usize).div_ceil(32), groups],
                    safetensors::Dtype::I32,
                ));
            }
            v
        }
    }
}

/// A packed Linear: signed codes (`q − 2^(bits−1)`, row-major), scales (row-major
/// `[rows, groups]`) and integer zero points (asymmetric only).
struct Packed {
    codes: Vec<i8>,
    scales: Vec<f32>,
    zero_points: Option<Vec<i8>>,
}

impl Packed {
    /// compressed-tensors' dequantization (`_dequantize`): `(q − zp) · scale` in f32.
    fn dequantize(&self, cols: usize, group: usize) -> Vec<f32> {
        let gpr = cols / group;
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let g = (i / cols) * gpr + (i % cols) / group;
                let zp = self.zero_points.as_ref().map_or(0.0, |z| f32::from(z[g]));
                (f32::from(q) - zp) * self.scales[g]
            })
            .collect()
    }
}

/// Packs signed `bits`-bit values, rows of `per_row`, the way `pack_to_int32` does: each
/// row on its own, value `v` stored as `v + 2^(bits−1)`, element `i` at bit `i·bits` of
/// the row's little-endian int32 words. `per_row · bits` must be a multiple of 32.
fn pack_rows(values: &[i8], per_row: usize, bits: u32) -> Vec<u8> {
    let half = 1i32 << (bits - 1);
    let mut out = Vec::with_capacity(values.len() * bits as usize / 8);
    for row in values.chunks(per_row) {
        let (mut acc, mut n) = (0u64, 0u32);
        for &v in row {
            acc |= ((i32::from(v) + half) as u64) << n;
            n += bits;
            while n >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                n -= 8;
            }
        }
    }
    out
}

/// Packs `[rows, groups]` values (row-major) along the rows, as `pack_to_int32(...,
/// packed_dim=0)` does: each group column packed on its own (padded to whole words with
/// the value that packs as 0), the words laid out `[ceil(rows·bits/32), groups]`.
fn pack_columns(z: &[i8], rows: usize, groups: usize, bits: u32) -> Vec<u8> {
    let per_word = 32 / bits as usize;
    let padded = rows.div_ceil(per_word) * per_word;
    let mut columns = vec![-(1i8 << (bits - 1)); padded * groups];
    for r in 0..rows {
        for g in 0..groups {
            columns[g * padded + r] = z[r * groups + g];
        }
    }
    let words = pack_rows(&columns, padded, bits);
    let per_column = padded / per_word;
    let mut out = vec![0u8; words.len()];
    for g in 0..groups {
        for k in 0..per_column {
            let from = (g * per_column + k) * 4;
            let to = (k * groups + g) * 4;
            out[to..to + 4].copy_from_slice(&words[from..from + 4]);
        }
    }
    out
}

/// Our symmetric int4 encoding's codes and scales, as they are.
fn from_sym_int4(name: &str, bytes: &[u8], rows: usize, cols: usize) -> Result<Packed> {
    let h = Header::parse(bytes).map_err(|e| e.in_tensor(name))?;
    let bad = |why: String| export_err(format!("tensor {name}: {why}"));
    if h.id != crate::codec::int4::ID || !h.symmetric {
        return Err(bad(format!(
            "the manifest says symmetric int4, the encoding is codec {} ({})",
            h.id,
            if h.symmetric { "sym" } else { "asym" }
        )));
    }
    let group = h.group as usize;
    if (h.rows as usize, h.cols as usize) != (rows, cols)
        || group == 0
        || !cols.is_multiple_of(group)
    {
        return Err(bad(format!(
            "header {}x{} g{group} does not match the manifest's {rows}x{cols}",
            h.rows, h.cols
        )));
    }
    let groups = rows * cols / group;
    let codes_at = HEADER_LEN + 2 * groups;
    if bytes.len() != codes_at + rows * cols / 2 {
        return Err(bad(format!(
            "{} bytes, a symmetric int4 encoding of {rows}x{cols} in groups of {group} has {}",
            bytes.len(),
            codes_at + rows * cols / 2
        )));
    }
    let scales = (0..groups)
        .map(|g| {
            f16::from_bits(u16::from_le_bytes([
                bytes[HEADER_LEN + 2 * g],
                bytes[HEADER_LEN + 2 * g + 1],
            ]))
            .to_f32()
        })
        .collect();
    let codes = bytes[codes_at..]
        .iter()
        .flat_map(|b| [(b & 15) as i8 - 8, (b >> 4) as i8 - 8])
        .collect();
    Ok(Packed {
        codes,
        scales,
        zero_points: None,
    })
}

/// Codes of `x` on scale `s` and zero point `zp` (range `[lo, hi]`), and their squared error.
fn fit(x: &[f32], s: f32, zp: i32, lo: i32, hi: i32, codes: &mut [i8]) -> f64 {
    let mut err = 0f64;
    for (c, &v) in codes.iter_mut().zip(x) {
        let q = if s > 0.0 {
            ((v / s).round() as i32 + zp).clamp(lo, hi)
        } else {
            zp.clamp(lo, hi)
        };
        *c = q as i8;
        let d = f64::from(v) - f64::from((q - zp) as f32 * s);
        err += d * d;
    }
    err
}

/// Re-encodes `w` (rows of `cols`) at `bits` in groups of `group` on integer zero points
/// (asymmetric) or none (symmetric), least squared error per group over a small search
/// of scales around the range's (and, asymmetric, the two nearest zero points of each),
/// then the least-squares scale for the chosen codes.
fn requantize(w: &[f32], cols: usize, bits: u32, group: usize, symmetric: bool) -> Packed {
    let (lo, hi) = (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1);
    let groups = w.len() / group;
    let mut p = Packed {
        codes: vec![0; w.len()],
        scales: vec![0.0; groups],
        zero_points: (!symmetric).then(|| vec![0; groups]),
    };
    let mut trial = vec![0i8; group];
    debug_assert_eq!(cols % group, 0);
    for (g, x) in w.chunks_exact(group).enumerate() {
        let (mn, mx) = x
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let base = if symmetric {
            mn.abs().max(mx.abs()) / hi as f32
        } else {
            (mx - mn) / (hi - lo) as f32
        };
        let mut best = (f64::INFINITY, 0f32, 0i32);
        let codes = &mut p.codes[g * group..(g + 1) * group];
        for k in -6..=2 {
            let s = base * (1.0 + k as f32 / 32.0);
            let zps: Vec<i32> = if symmetric || s <= 0.0 {
                vec![0]
            } else {
                let z = lo as f32 - mn / s;
                vec![z.floor() as i32, z.ceil() as i32]
            };
            for zp in zps {
                let zp = zp.clamp(lo, hi);
                let e = fit(x, s, zp, lo, hi, &mut trial);
                if e < best.0 {
                    best = (e, s, zp);
                    codes.copy_from_slice(&trial);
                }
            }
        }
        let (_, mut s, zp) = best;
        // The least-squares scale for these codes: Σ x·(q − zp) / Σ (q − zp)².
        let (num, den) = codes.iter().zip(x).fold((0f64, 0f64), |(n, d), (&q, &v)| {
            let k = f64::from(i32::from(q) - zp);
            (n + f64::from(v) * k, d + k * k)
        });
        if den > 0.0 {
            let ls = (num / den) as f32;
            if fit(x, ls, zp, lo, hi, &mut trial) < best.0 {
                s = ls;
                codes.copy_from_slice(&trial);
            }
        }
        p.scales[g] = s;
        if let Some(z) = p.zero_points.as_mut() {
            z[g] = zp as i8;
        }
    }
    p
}

/// The packed form of one Linear.
fn quantize_linear(t: &TensorEntry, q: Quant, ours: &[f32], bytes: &[u8]) -> Result<Packed> {
    let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
    match q.how {
        How::Exact => from_sym_int4(&t.name, bytes, rows, cols),
        How::Regrid => Ok(requantize(ours, cols, q.bits, q.group, false)),
        How::Requant if q.bits == 4 => {
            let codec = crate::codec::int4::Int4::new(q.group, true, 2)?;
            let enc = crate::codec::Codec::encode(&codec, ours, rows, cols, None)?;
            from_sym_int4(&t.name, &enc, rows, cols)
        }
        How::Requant => Ok(requantize(ours, cols, q.bits, q.group, true)),
    }
}

/// The `quantization_config` for the packed Linears (one config group per distinct
/// quantization, its targets the module names) and the Linears left dense.
fn quantization_config(
    groups: &BTreeMap<(u32, usize, bool), Vec<String>>,
    ignore: &[String],
) -> Json {
    let mut config_groups = serde_json::Map::new();
    for (i, ((bits, group, symmetric), targets)) in groups.iter().enumerate() {
        config_groups.insert(
            format!("group_{i}"),
            json!({
                "targets": targets,
                "weights": {
                    "num_bits": bits,
                    "type": "int",
                    "symmetric": symmetric,
                    "strategy": "group",
                    "group_size": group,
                    "dynamic": false,
                    "actorder": null,
                    "observer": "minmax",
                },
                "input_activations": null,
                "output_activations": null,
                "format": "pack-quantized",
            }),
        );
    }
    json!({
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "global_compression_ratio": null,
    })
}

/// The type label of a plan, for reports.
fn type_label(plan: Plan) -> String {
    match plan {
        Plan::Dense(dt) => dt.to_string(),
        Plan::Packed(q) => format!(
            "int{} g{} {}",
            q.bits,
            q.group,
            if q.symmetric { "sym" } else { "asym" }
        ),
    }
}

/// Writes `model` as a compressed-tensors directory at `dir` (built under a temporary
/// name beside it and renamed at the end: an interrupted export leaves no partial
/// `dir`; an existing non-empty `dir` is refused). `progress` is called with each
/// tensor's name as it starts.
pub fn export(
    model: Model<'_>,
    dir: &Path,
    opts: &Options,
    progress: &dyn Fn(&str),
) -> Result<Report> {
    let art = model.artifact();
    let is_delta = matches!(model, Model::Delta(_));
    model.check_not_bare_delta("compressed-tensors")?;
    let mut config = model.required_json("config.json", "transformers and vLLM need it")?;
    let tensors = &art.manifest().tensors;
    let plans: Vec<Plan> = tensors
        .iter()
        .map(|t| plan_tensor(t, opts, is_delta))
        .collect();
    let mut groups: BTreeMap<(u32, usize, bool), Vec<String>> = BTreeMap::new();
    let mut ignore = vec![];
    let mut all_decls = vec![];
    let mut floats = vec![];
    for (t, &plan) in tensors.iter().zip(&plans) {
        match plan {
            Plan::Packed(q) => groups
                .entry((q.bits, q.group, q.symmetric))
                .or_default()
                .push(module(&t.name).to_string()),
            Plan::Dense(_) if is_block_linear(t) || t.name == "lm_head.weight" => {
                ignore.push(module(&t.name).to_string())
            }
            Plan::Dense(_) => {}
        }
        for (d, f) in decls(t, plan) {
            all_decls.push(d);
            floats.push(f);
        }
    }
    if !ignore.iter().any(|m| m == "lm_head") {
        // Tied embeddings: transformers still builds an lm_head Linear.
        ignore.push("lm_head".into());
    }
    let object = config
        .as_object_mut()
        .ok_or_else(|| export_err("config.json is not a JSON object".into()))?;
    if groups.is_empty() {
        // Nothing packed (a delta's fine-tune, or every Linear dense): a plain dense model
        // that any loader reads, without a quantization_config.
        object.remove("quantization_config");
    } else {
        object.insert(
            "quantization_config".into(),
            quantization_config(&groups, &ignore),
        );
    }

    let (reports, file_bytes) = super::atomically("compressed-tensors", dir, |tmp| {
        let mut w = HfDirWriter::with_decls(tmp, all_decls, floats, DEFAULT_MAX_SHARD_BYTES)?;
        let mut reports: Vec<TensorReport> = Vec::with_capacity(tensors.len());
        let entries: Vec<&TensorEntry> = tensors.iter().collect();
        let mut next = plans.iter();
        model.for_each_decoded(&entries, |t, ours, bytes| {
            progress(&t.name);
            let plan = *next
                .next()
                .ok_or_else(|| export_err("more tensors than planned".into()))?;
            let mut cmp = Compare::default();
            let (out_name, written) = match plan {
                Plan::Dense(dt) => {
                    w.write(&t.name, &ours)?;
                    // What a loader reads back: our decode rounded to the dtype.
                    let mut buf = Vec::with_capacity(ours.len() * dt.size());
                    dt.encode_into(&ours, &mut buf);
                    let mut back = vec![0f32; ours.len()];
                    dt.decode_into(&buf, &mut back);
                    cmp.add(&ours, &back);
                    (t.name.clone(), buf.len() as u64)
                }
                Plan::Packed(q) => {
                    let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
                    let p = quantize_linear(t, q, &ours, bytes)?;
                    let m = module(&t.name);
                    let packed = pack_rows(&p.codes, cols, q.bits);
                    let scales: Vec<u8> = p.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                    let shape: Vec<u8> = [rows as i64, cols as i64]
                        .iter()
                        .flat_map(|d| d.to_le_bytes())
                        .collect();
                    w.write_bytes(&format!("{m}.weight_packed"), &packed)?;
                    w.write_bytes(&format!("{m}.weight_scale"), &scales)?;
                    w.write_bytes(&format!("{m}.weight_shape"), &shape)?;
                    let mut n = packed.len() + scales.len() + shape.len();
                    if let Some(z) = &p.zero_points {
                        let zb = pack_columns(z, rows, cols / q.group, q.bits);
                        w.write_bytes(&format!("{m}.weight_zero_point"), &zb)?;
                        n += zb.len();
                    }
                    cmp.add(&ours, &p.dequantize(cols, q.group));
                    (format!("{m}.weight_packed"), n as u64)
                }
            };
            reports.push(cmp.report(t, out_name, type_label(plan), written));
            Ok(())
        })?;
        let files = w.finish()?;
        let mut file_bytes = 0;
        for f in &files {
            file_bytes += std::fs::metadata(tmp.join(f))
                .map_err(|e| Error::io("stat", tmp.join(f), e))?
                .len();
        }
        crate::source::write_json(&tmp.join("config.json"), &config)?;
        for name in model.side_file_names() {
            if name == "config.json" || name.contains('/') || name.starts_with('.') {
                continue;
            }
            if let Some((_, b)) = model.side_file(&name)? {
                crate::source::write_atomic(&tmp.join(&name), &b)?;
            }
        }
        Ok((reports, file_bytes))
    })?;
    Ok(Report {
        tensors: reports,
        file_bytes,
        weights: tensors.iter().map(TensorEntry::numel).sum(),
        file_type: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_like_pack_to_int32() {
        // Values −8..7 at 4 bits: element i at bit 4i, stored +8.
        let v: Vec<i8> = (0..8).map(|i| i as i8 - 8).collect();
        let b = pack_rows(&v, 8, 4);
        assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), 0x7654_3210);
        // 8 bits: four per word, stored +128.
        let b = pack_rows(&[-128, -1, 0, 127], 4, 8);
        assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]), 0xFF80_7F00);
    }

    #[test]
    fn zero_points_pack_down_the_rows() {
        // 9 rows × 2 groups at 4 bits: column g's rows 0..8 fill word (0, g), row 8 and
        // seven padding values (stored as 0) word (1, g).
        let z: Vec<i8> = (0..18).map(|i| (i % 16) as i8 - 8).collect();
        let b = pack_columns(&z, 9, 2, 4);
        let word = |k: usize, g: usize| {
            u32::from_le_bytes(b[(k * 2 + g) * 4..][..4].try_into().expect("4"))
        };
        assert_eq!(b.len(), 2 * 2 * 4);
        // Column 0 holds z[0], z[2], ..., z[14] (stored +8: 0, 2, 4, ..., 14).
        assert_eq!(word(0, 0), 0xECA8_6420);
        assert_eq!(word(1, 0), 0x0); // z[16] = 16 % 16 − 8 + 8 = 0
        assert_eq!(word(1, 1), 0x1); // z[17] = 1
    }

    #[test]
    fn requantize_is_exact_on_its_own_grid_and_close_elsewhere() {
        // Values already on an integer-zero-point grid come back exactly.
        let s = 0.25f32;
        let w: Vec<f32> = (0..64)
            .map(|i: i32| ((i % 16) - 3 - 8) as f32 * s)
            .collect();
        let p = requantize(&w, 64, 4, 32, false);
        let back = p.dequantize(64, 32);
        let err: f32 = w
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-6, "{err}");
        // An asymmetric fp16-offset grid: within half a step.
        let w: Vec<f32> = (0..64).map(|i| (i % 16) as f32 * 0.1 + 0.037).collect();
        let p = requantize(&w, 64, 4, 32, false);
        let back = p.dequantize(64, 32);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() <= 0.051, "{a} {b}");
        }
        // Symmetric int8 RTN: within half a step of absmax/127.
        let w: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let p = requantize(&w, 256, 8, 128, true);
        let back = p.dequantize(256, 128);
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() <= 50.0 / 7.0 / 127.0 * 0.5 * 1.07, "{a} {b}");
        }
    }
}
