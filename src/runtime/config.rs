//! The model configuration the runtime needs, read from an HF `config.json`
//! (transformers' `LlamaConfig` / `Gemma3TextConfig` field names, both the 4.x
//! `rope_theta` and the 5.x `rope_parameters` spellings).

use serde_json::Value;

use crate::{Error, Result};

/// Decoder family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, Mistral, SmolLM2, TinyLlama.
    Llama,
    /// Gemma 3 (text).
    Gemma3,
}

/// Activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// SiLU (Llama).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// Everything the forward pass depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub family: Family,
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Rotary base of global-attention layers.
    pub rope_theta: f64,
    /// Rotary base of sliding-window layers (Gemma 3).
    pub rope_local_theta: f64,
    /// Sliding window width, when some layers use one.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub sliding: Vec<bool>,
    /// Attention scores are multiplied by this.
    pub attn_scale: f64,
    /// Output head tied to the embeddings.
    pub tied: bool,
    /// MLP activation.
    pub act: Act,
    /// Final logit soft-capping (Gemma 2 style), if any.
    pub final_softcap: Option<f64>,
    /// Attention logit soft-capping, if any.
    pub attn_softcap: Option<f64>,
}

/// The largest value accepted for a size in a config (far above any published model:
/// Llama 3.1 405B has 126 layers, hidden 16384, vocabulary 128256).
fn size_cap(key: &str) -> u64 {
    match key {
        "num_hidden_layers" => 1 << 10,
        "num_attention_heads" | "num_key_value_heads" => 1 << 12,
        "hidden_size" | "head_dim" => 1 << 17,
        "intermediate_size" => 1 << 20,
        "vocab_size" => 1 << 23,
        _ => 1 << 24,
    }
}

fn num(c: &Value, k: &str) -> Option<f64> {
    c.get(k).and_then(Value::as_f64)
}

impl ModelConfig {
    /// Reads an HF config.
    pub fn from_hf(c: &Value) -> Result<Self> {
        let bad = |m: String| Error::malformed("config.json", "config.json", m);
        let model_type = c
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let family = match model_type {
            "llama" | "mistral" => Family::Llama,
            "gemma3_text" | "gemma3" => Family::Gemma3,
            other => {
                return Err(Error::UnsupportedArchitecture {
                    arch: other.to_string(),
                    supported: "llama, mistral, gemma3_text",
                })
            }
        };
        // Every size is capped far above any real model before anything is allocated
        // from it: a config is untrusted input (`num_hidden_layers: 1e15` must be an
        // error, not an allocation that aborts the process).
        let cap = |k: &'static str, v: u64| -> Result<usize> {
            let limit = size_cap(k);
            if v > limit {
                return Err(Error::LimitExceeded {
                    path: "config.json".into(),
                    what: k,
                    value: v,
                    limit,
                });
            }
            Ok(v as usize)
        };
        let opt = |k: &'static str| -> Result<Option<usize>> {
            match c.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(v) => cap(k, v).map(Some),
                    None => Err(bad(format!("{k} is not a non-negative integer"))),
                },
            }
        };
        let req = |k: &'static str| -> Result<usize> {
            opt(k)?.ok_or_else(|| bad(format!("missing integer {k}")))
        };
        let hidden = req("hidden_size")?;
        let heads = req("num_attention_heads")?;
        let kv_heads = opt("num_key_value_heads")?.unwrap_or(heads);
        let head_dim = opt("head_dim")?.unwrap_or(hidden / heads.max(1));
        let layers = req("num_hidden_layers")?;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "{heads} heads, {kv_heads} KV heads, head_dim {head_dim}"
            )));
        }
        let rp = c.get("rope_parameters");
        let theta_of =
            |v: Option<&Value>| v.and_then(|v| v.get("rope_theta")).and_then(Value::as_f64);
        for (name, v) in [
            ("rope_scaling", c.get("rope_scaling")),
            ("rope_parameters", rp),
        ] {
            let ty = v
                .and_then(|v| v.get("rope_type").or_else(|| v.get("type")))
                .and_then(Value::as_str);
            if let Some(t) = ty {
                if t != "default" {
                    return Err(bad(format!("{name}: rope type {t:?} is not supported yet")));
                }
            }
        }
        let (rope_theta, rope_local_theta) = match family {
            Family::Llama => {
                let t = num(c, "rope_theta").or(theta_of(rp)).unwrap_or(10000.0);
                (t, t)
            }
            Family::Gemma3 => (
                theta_of(rp.and_then(|r| r.get("full_attention")))
                    .or(num(c, "rope_theta"))
                    .unwrap_or(1e6),
                theta_of(rp.and_then(|r| r.get("sliding_attention")))
                    .or(num(c, "rope_local_base_freq"))
                    .unwrap_or(1e4),
            ),
        };
        let sliding_window = opt("sliding_window")?;
        let sliding: Vec<bool> = match (family, c.get("layer_types").and_then(Value::as_array)) {
            (_, Some(t)) => t
                .iter()
                .map(|x| x.as_str() == Some("sliding_attention"))
                .collect(),
            (Family::Gemma3, None) => {
                let p = opt("sliding_window_pattern")?.unwrap_or(6);
                if p == 0 {
                    return Err(bad("sliding_window_pattern is 0".into()));
                }
                (0..layers).map(|i| (i + 1) % p != 0).collect()
            }
            // Mistral-style: every layer slides when a window is set.
            (Family::Llama, None) => vec![sliding_window.is_some(); layers],
        };
        if sliding.len() != layers {
            return Err(bad(format!(
                "{} layer_types for {layers} layers",
                sliding.len()
            )));
        }
        let attn_scale = match family {
            Family::Llama => 1.0 / (head_dim as f64).sqrt(),
            Family::Gemma3 => {
                1.0 / num(c, "query_pre_attn_scalar")
                    .unwrap_or(head_dim as f64)
                    .sqrt()
            }
        };
        let act = match c
            .get("hidden_activation")
            .or_else(|| c.get("hidden_act"))
            .and_then(Value::as_str)
            .unwrap_or("silu")
        {
            "silu" | "swish" => Act::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh" => Act::GeluTanh,
            other => return Err(bad(format!("activation {other:?} is not supported"))),
        };
        Ok(Self {
            family,
            hidden,
            intermediate: req("intermediate_size")?,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab: req("vocab_size")?,
            eps: num(c, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_local_theta,
            sliding_window,
            sliding,
            attn_scale,
            tied: c
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(family == Family::Gemma3),
            act,
            final_softcap: num(c, "final_logit_softcapping"),
            attn_softcap: num(c, "attn_logit_softcapping"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128,
            "vocab_size": 256
        })
    }

    #[test]
    fn hostile_sizes_are_typed_errors_before_any_allocation() {
        ModelConfig::from_hf(&llama()).expect("a sane config");
        for (k, v) in [
            ("num_hidden_layers", json!(1e15)),
            ("num_hidden_layers", json!(1_000_000_000_000_000u64)),
            ("vocab_size", json!(u64::MAX)),
            ("hidden_size", json!(1u64 << 40)),
            ("intermediate_size", json!(1u64 << 33)),
        ] {
            let mut c = llama();
            c[k] = v.clone();
            let e = ModelConfig::from_hf(&c).expect_err(k);
            assert!(
                matches!(e, Error::LimitExceeded { .. } | Error::Malformed { .. }),
                "{k}={v}: {e}"
            );
        }
        let mut g = llama();
        g["model_type"] = json!("gemma3_text");
        g["sliding_window_pattern"] = json!(0);
        assert!(
            ModelConfig::from_hf(&g).is_err(),
            "a zero pattern is no panic"
        );
        let mut n = llama();
        n["num_key_value_heads"] = json!("two");
        assert!(ModelConfig::from_hf(&n).is_err());
    }
}
