//! GGUF import: a llama.cpp model file seen as an HF model.
//!
//! [`GgufSource`] maps GGUF tensor names to transformers names, dequantizes each tensor
//! on read, and undoes what llama.cpp's `convert_hf_to_gguf.py` changed:
//! - Llama: the Q/K row permutation (`LlamaModel.permute`, which interleaves the two
//!   rotary halves of every head);
//! - Gemma 3: the `+1` folded into every RMSNorm weight (`Gemma3Model.norm_shift`).
//!
//! It also rebuilds `config.json` and the tokenizer from the metadata
//! ([`tokenizer`]), so an import yields a directory that transformers loads.

pub mod dequant;
pub mod file;
pub mod quant;
pub mod tokenizer;
pub mod types;
pub mod write;

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value as Json};

pub use file::{GgufFile, TensorInfo, Value};
pub use types::GgmlType;

use super::{TensorMeta, TensorSource};
use crate::dtype::DType;
use crate::{Error, Result};

/// Architectures that import.
pub const SUPPORTED_ARCHS: &str = "llama, gemma3";

/// An architecture GGUF import and export handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama` (`LlamaForCausalLM`; SmolLM2).
    Llama,
    /// `gemma3` (`Gemma3ForCausalLM`, text only).
    Gemma3,
}

impl Arch {
    /// The architecture of a transformers `config.json`'s `model_type`.
    pub fn of_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Arch::Llama),
            "gemma3_text" | "gemma3" => Some(Arch::Gemma3),
            _ => None,
        }
    }

    /// The GGUF `general.architecture` (and metadata key prefix).
    pub fn gguf(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// llama.cpp's `permute(w, n_head)` as a row order: entry `r` is the transformers row
/// that GGUF row `r` holds (each head's rotary halves interleaved). Rows move whole, so
/// the order applies to quantized rows as well.
pub fn permuted_row_order(rows: usize, n_head: usize) -> Vec<usize> {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    (0..rows)
        .map(|r| {
            let (h, k) = (r / head_dim, r % head_dim);
            h * head_dim + (k % 2) * half + k / 2
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fixup {
    None,
    /// Undo llama.cpp's rotary permutation with this many heads.
    Unpermute(usize),
    /// Subtract the folded-in 1.0 (Gemma norms).
    MinusOne,
}

struct Mapped {
    gguf: usize,
    fixup: Fixup,
}

/// A GGUF file presented as an HF model.
pub struct GgufSource {
    file: GgufFile,
    metas: Vec<TensorMeta>,
    mapped: HashMap<String, Mapped>,
    config: Json,
}

/// Whole-model tensors: (GGUF name, transformers name).
const TOP_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Block tensors: (architecture, or `None` for both; GGUF stem; transformers stem), as
/// llama.cpp's `convert_hf_to_gguf.py` names them. Import and export read this one table.
const BLOCK_NAMES: [(Option<Arch>, &str, &str); 14] = [
    (None, "attn_q", "self_attn.q_proj"),
    (None, "attn_k", "self_attn.k_proj"),
    (None, "attn_v", "self_attn.v_proj"),
    (None, "attn_output", "self_attn.o_proj"),
    (None, "attn_q_norm", "self_attn.q_norm"),
    (None, "attn_k_norm", "self_attn.k_norm"),
    (None, "ffn_gate", "mlp.gate_proj"),
    (None, "ffn_up", "mlp.up_proj"),
    (None, "ffn_down", "mlp.down_proj"),
    (None, "attn_norm", "input_layernorm"),
    (Some(Arch::Llama), "ffn_norm", "post_attention_layernorm"),
    (Some(Arch::Gemma3), "ffn_norm", "pre_feedforward_layernorm"),
    (
        Some(Arch::Gemma3),
        "post_attention_norm",
        "post_attention_layernorm",
    ),
    (
        Some(Arch::Gemma3),
        "post_ffw_norm",
        "post_feedforward_layernorm",
    ),
];

/// Maps a name through the tables: `from_gguf` picks the direction.
fn map_name(arch: Arch, name: &str, from_gguf: bool) -> Option<String> {
    let pick = |pair: (&'static str, &'static str)| if from_gguf { pair } else { (pair.1, pair.0) };
    if let Some(&(_, to)) = TOP_NAMES
        .iter()
        .map(|&p| pick(p))
        .find(|(from, _)| *from == name)
        .as_ref()
    {
        return Some(to.to_string());
    }
    let (prefix_from, prefix_to) = pick(("blk.", "model.layers."));
    let rest = name.strip_prefix(prefix_from)?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (stem, suffix) = part.rsplit_once('.')?;
    let to = BLOCK_NAMES
        .iter()
        .filter(|(a, _, _)| a.is_none_or(|a| a == arch))
        .map(|&(_, g, h)| pick((g, h)))
        .find(|(from, _)| *from == stem)?
        .1;
    Some(format!("{prefix_to}{layer}.{to}.{suffix}"))
}

/// The transformers name of a GGUF tensor name (`None`: no equivalent).
pub fn hf_name(arch: Arch, gguf: &str) -> Option<String> {
    map_name(arch, gguf, true)
}

/// The GGUF name of a transformers tensor name: the inverse of [`hf_name`] (`None` for
/// a tensor GGUF has no name for).
pub fn gguf_name(arch: Arch, hf: &str) -> Option<String> {
    map_name(arch, hf, false)
}

/// Inverse of llama.cpp's `permute(w, n_head)`: rows were reordered per head from
/// `[half, pair]` to `[pair, half]`; put them back. `w` is row-major `[rows, cols]`.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for p in 0..2 {
                // GGUF row h*hd + 2*i + p holds HF row h*hd + p*half + i.
                let src = h * head_dim + 2 * i + p;
                let dst = h * head_dim + p * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

impl GgufSource {
    /// Opens a GGUF file; tensors will be written back as `dtype`.
    pub fn open(path: &Path, dtype: DType) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let arch_name = file
            .require("general.architecture")?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            _ => {
                return Err(Error::UnsupportedArchitecture {
                    arch: arch_name,
                    supported: SUPPORTED_ARCHS,
                })
            }
        };
        let config = build_config(&file, arch)?;
        let n_head = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let n_kv = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
        let mut metas = Vec::new();
        let mut mapped = HashMap::new();
        for (gi, t) in file.tensors().iter().enumerate() {
            let Some(name) = hf_name(arch, &t.name) else {
                return Err(Error::malformed(
                    file.path(),
                    "GGUF",
                    format!(
                        "tensor {} has no transformers equivalent for {arch_name}",
                        t.name
                    ),
                ));
            };
            let shape = t.shape();
            let fixup = match (arch, t.name.rsplit_once('.').map(|x| x.0).unwrap_or("")) {
                (Arch::Llama, s) if s.ends_with("attn_q") => Fixup::Unpermute(n_head),
                (Arch::Llama, s) if s.ends_with("attn_k") => Fixup::Unpermute(n_kv),
                (Arch::Gemma3, s) if s.ends_with("norm") => Fixup::MinusOne,
                _ => Fixup::None,
            };
            if let Fixup::Unpermute(h) = fixup {
                if shape.len() != 2 || h == 0 || shape[0] % (2 * h) != 0 {
                    return Err(Error::malformed(
                        file.path(),
                        "GGUF",
                        format!(
                            "tensor {}: shape {shape:?} does not split into {h} rotary heads",
                            t.name
                        ),
                    ));
                }
            }
            metas.push(TensorMeta {
                name: name.clone(),
                shape,
                dtype,
                stored_as: t.ty.to_string(),
            });
            mapped.insert(name, Mapped { gguf: gi, fixup });
        }
        metas.sort_by_cached_key(|m| super::hf::natural_key(&m.name));
        Ok(Self {
            file,
            metas,
            mapped,
            config: {
                let mut c = config;
                c["torch_dtype"] = json!(dtype.torch_name());
                c["dtype"] = json!(dtype.torch_name());
                c
            },
        })
    }

    /// The underlying GGUF file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl TensorSource for GgufSource {
    fn tensors(&self) -> &[TensorMeta] {
        &self.metas
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let m = self.mapped.get(name).ok_or_else(|| Error::TensorNotFound {
            name: name.to_string(),
        })?;
        let t = &self.file.tensors()[m.gguf];
        let mut w = self.file.dequantize(t)?;
        match m.fixup {
            Fixup::None => {}
            Fixup::MinusOne => w.iter_mut().for_each(|x| *x -= 1.0),
            Fixup::Unpermute(h) => {
                let shape = t.shape();
                w = unpermute_rows(&w, shape[0], shape[1], h);
            }
        }
        Ok(w)
    }

    fn config(&self) -> &Json {
        &self.config
    }

    fn write_side_files(&self, dir: &Path) -> Result<()> {
        super::write_json(&dir.join("config.json"), &self.config)?;
        let tok = tokenizer::build(&self.file)?;
        super::write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json)?;
        super::write_json(&dir.join("tokenizer_config.json"), &tok.tokenizer_config)?;
        let mut gen = json!({ "_from_model_config": true });
        for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if !self.config[k].is_null() {
                gen[k] = self.config[k].clone();
            }
        }
        super::write_json(&dir.join("generation_config.json"), &gen)
    }
}

fn build_config(f: &GgufFile, arch: Arch) -> Result<Json> {
    let p = match arch {
        Arch::Llama => "llama",
        Arch::Gemma3 => "gemma3",
    };
    let u = |k: &str| -> Result<u64> {
        let key = format!("{p}.{k}");
        f.require(&key)?
            .as_u64()
            .ok_or_else(|| Error::malformed(f.path(), "GGUF", format!("{key} is not an integer")))
    };
    let fl = |k: &str| f.get(&format!("{p}.{k}")).and_then(Value::as_f64);
    let hidden = u("embedding_length")?;
    let n_head = u("attention.head_count")?;
    let n_kv = u("attention.head_count_kv").unwrap_or(n_head);
    let layers = u("block_count")?;
    if n_head == 0 || n_kv == 0 || n_head % n_kv != 0 {
        return Err(Error::malformed(
            f.path(),
            "GGUF",
            format!("{n_head} heads and {n_kv} KV heads"),
        ));
    }
    let tok = |k: &str| {
        f.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
    };
    let vocab = f
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(|a| a.len() as u64)
        .or_else(|| f.get(&format!("{p}.vocab_size")).and_then(Value::as_u64))
        .ok_or_else(|| Error::Missing {
            path: f.path().to_path_buf(),
            what: "vocabulary (tokenizer.ggml.tokens)".into(),
        })?;
    let tied = f.tensor("output.weight").is_none();
    let eps = fl("attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
    let mut c = match arch {
        Arch::Llama => {
            let head_dim = u("rope.dimension_count").unwrap_or(hidden / n_head);
            let theta = fl("rope.freq_base").unwrap_or(10000.0);
            json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_act": "silu",
                "attention_bias": false,
                "mlp_bias": false,
                "head_dim": head_dim,
                "rope_theta": theta,
                "rope_parameters": { "rope_theta": theta, "rope_type": "default" },
                "rope_scaling": null,
                "pretraining_tp": 1,
            })
        }
        Arch::Gemma3 => {
            let head_dim = u("attention.key_length").unwrap_or(hidden / n_head);
            let theta = fl("rope.freq_base").unwrap_or(1_000_000.0);
            // llama.cpp hard-codes the local (sliding) rope base of Gemma 3 at 10000 and
            // every sixth layer global; GGUF stores neither.
            let pattern = 6;
            let layer_types: Vec<&str> = (0..layers)
                .map(|i| {
                    if (i + 1) % pattern == 0 {
                        "full_attention"
                    } else {
                        "sliding_attention"
                    }
                })
                .collect();
            let rope_scaling = match (
                f.get("gemma3.rope.scaling.type").and_then(Value::as_str),
                fl("rope.scaling.factor"),
            ) {
                (Some("linear"), Some(factor)) => {
                    json!({ "rope_type": "linear", "factor": factor })
                }
                _ => Json::Null,
            };
            json!({
                "architectures": ["Gemma3ForCausalLM"],
                "model_type": "gemma3_text",
                "hidden_activation": "gelu_pytorch_tanh",
                "head_dim": head_dim,
                "query_pre_attn_scalar": head_dim,
                "sliding_window": u("attention.sliding_window").unwrap_or(512),
                "_sliding_window_pattern": pattern,
                "layer_types": layer_types,
                "rope_theta": theta,
                "rope_local_base_freq": 10000.0,
                "rope_scaling": rope_scaling,
                "rope_parameters": {
                    "full_attention": { "rope_theta": theta, "rope_type": "default" },
                    "sliding_attention": { "rope_theta": 10000.0, "rope_type": "default" },
                },
                "attn_logit_softcapping": null,
                "final_logit_softcapping": null,
                "attention_bias": false,
                "use_bidirectional_attention": false,
            })
        }
    };
    c["hidden_size"] = json!(hidden);
    c["intermediate_size"] = json!(u("feed_forward_length")?);
    c["num_attention_heads"] = json!(n_head);
    c["num_key_value_heads"] = json!(n_kv);
    c["num_hidden_layers"] = json!(layers);
    c["max_position_embeddings"] = json!(u("context_length").unwrap_or(4096));
    c["rms_norm_eps"] = json!(eps);
    c["vocab_size"] = json!(vocab);
    c["tie_word_embeddings"] = json!(tied);
    c["bos_token_id"] = json!(tok("bos_token_id"));
    c["eos_token_id"] = json!(tok("eos_token_id"));
    c["pad_token_id"] = json!(tok("padding_token_id"));
    c["unk_token_id"] = json!(tok("unknown_token_id"));
    c["initializer_range"] = json!(0.02);
    c["attention_dropout"] = json!(0.0);
    c["use_cache"] = json!(true);
    if let Some(n) = f.get("general.name").and_then(Value::as_str) {
        c["_name_or_path"] = json!(n);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (n_head, hd, cols) = (3, 8, 2);
        let rows = n_head * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..n_head {
            for p in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + p * (hd / 2) + i; // [h, p, i]
                    let dst = h * hd + i * 2 + p; // [h, i, p]
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, rows, cols, n_head), hf);
        // The export's row order is the same permutation.
        let order = permuted_row_order(rows, n_head);
        let again: Vec<f32> = order
            .iter()
            .flat_map(|&r| hf[r * cols..(r + 1) * cols].to_vec())
            .collect();
        assert_eq!(again, permuted);
    }

    #[test]
    fn export_names_invert_import_names() {
        let stems = [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_q_norm",
            "attn_k_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_norm",
            "ffn_norm",
        ];
        for arch in [Arch::Llama, Arch::Gemma3] {
            let gemma = ["post_attention_norm", "post_ffw_norm"];
            let extra: &[&str] = if arch == Arch::Gemma3 { &gemma } else { &[] };
            let mut names: Vec<String> = stems
                .iter()
                .chain(extra)
                .map(|s| format!("blk.7.{s}.weight"))
                .collect();
            names.extend(
                ["token_embd.weight", "output_norm.weight", "output.weight"].map(String::from),
            );
            for g in names {
                let hf = hf_name(arch, &g).expect("maps");
                assert_eq!(gguf_name(arch, &hf).as_deref(), Some(g.as_str()), "{hf}");
            }
        }
        assert_eq!(
            gguf_name(Arch::Llama, "model.layers.0.mlp.experts.weight"),
            None
        );
        assert_eq!(Arch::of_model_type("gemma3_text"), Some(Arch::Gemma3));
    }

    #[test]
    fn names_map_for_both_architectures() {
        assert_eq!(
            hf_name(Arch::Llama, "blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name(Arch::Gemma3, "blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.pre_feedforward_layernorm.weight")
        );
        assert_eq!(
            hf_name(Arch::Gemma3, "blk.17.post_ffw_norm.weight").as_deref(),
            Some("model.layers.17.post_feedforward_layernorm.weight")
        );
        assert_eq!(hf_name(Arch::Llama, "blk.x.attn_q.weight"), None);
        assert_eq!(hf_name(Arch::Llama, "rope_freqs.weight"), None);
    }
}
