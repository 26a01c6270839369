//! Synthetic models for tests, benchmarks and GPU checks: real layouts, deterministic
//! values (from [`crate::rng`], re-exported here).

pub use crate::rng::{randn, weights};

/// The shape of a synthetic Llama model.
#[derive(Debug, Clone, Copy)]
pub struct LlamaShape {
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub ff: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Decoder layers.
    pub layers: usize,
}

impl LlamaShape {
    /// 2 layers, hidden 256, MLP 512, vocabulary 128: 1.6 M weights, for tests.
    pub const TINY: Self = Self {
        hidden: 256,
        ff: 512,
        vocab: 128,
        layers: 2,
    };
}

/// Writes a Llama-shaped HF model directory (safetensors in `dtype`, config.json, a
/// placeholder tokenizer.json) with N(0, 0.02²) weights and unit norms; returns the
/// tensor names. For tests and stand-ins: real layout, synthetic values.
pub fn write_llama(
    dir: &std::path::Path,
    dtype: crate::dtype::DType,
    shape: LlamaShape,
) -> crate::Result<Vec<String>> {
    use crate::source::{HfDirWriter, TensorMeta};
    let LlamaShape {
        hidden: h,
        ff,
        vocab,
        layers,
    } = shape;
    let mut metas = vec![];
    let mut push = |name: String, shape: Vec<usize>| {
        metas.push(TensorMeta {
            name,
            shape,
            dtype,
            stored_as: dtype.to_string(),
        })
    };
    push("model.embed_tokens.weight".into(), vec![vocab, h]);
    for l in 0..layers {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            push(format!("model.layers.{l}.self_attn.{p}.weight"), vec![h, h]);
        }
        push(
            format!("model.layers.{l}.mlp.gate_proj.weight"),
            vec![ff, h],
        );
        push(format!("model.layers.{l}.mlp.up_proj.weight"), vec![ff, h]);
        push(
            format!("model.layers.{l}.mlp.down_proj.weight"),
            vec![h, ff],
        );
        push(format!("model.layers.{l}.input_layernorm.weight"), vec![h]);
        push(
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![h],
        );
    }
    push("model.norm.weight".into(), vec![h]);
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io("create", dir, e))?;
    let mut w = HfDirWriter::new(dir, metas.clone(), 1 << 40)?;
    for (i, m) in metas.iter().enumerate() {
        let v = if m.shape.len() == 1 {
            vec![1.0; m.numel()]
        } else {
            randn(m.numel(), i as u64 + 1, 0.02)
        };
        w.write(&m.name, &v)?;
    }
    w.finish()?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": ff, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_hidden_layers": layers, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": true, "torch_dtype": dtype.torch_name(),
    });
    let p = dir.join("config.json");
    std::fs::write(&p, config.to_string()).map_err(|e| crate::Error::io("write", &p, e))?;
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, "{}").map_err(|e| crate::Error::io("write", &p, e))?;
    Ok(metas.into_iter().map(|m| m.name).collect())
}

/// Writes a synthetic fine-tune of the HF model at `base` into `dir`, with the structure
/// real fine-tunes have: most matrices moved a little (a few units in the last bf16
/// place, as an optimiser's small steps leave them), some tensors untouched (layer 0's
/// attention and every norm but the last), a low-rank change on top in the MLPs, and
/// the embedding rows of a few "seen" tokens moved a lot. Returns the names of the
/// tensors left bit-identical.
pub fn write_finetune(
    base: &std::path::Path,
    dir: &std::path::Path,
    seed: u64,
) -> crate::Result<Vec<String>> {
    use crate::source::{HfDirWriter, HfModelDir, TensorSource};
    let src = HfModelDir::open(base)?;
    let metas = src.tensors().to_vec();
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io("create", dir, e))?;
    let mut w = HfDirWriter::new(dir, metas.clone(), 1 << 40)?;
    let mut untouched = vec![];
    for (i, m) in metas.iter().enumerate() {
        let mut v = src.read_f32(&m.name)?;
        let s = seed.wrapping_mul(1000) + i as u64;
        let keep = (m.name.contains("layers.0.self_attn") || m.name.contains("layernorm"))
            && m.name != "model.norm.weight";
        if keep {
            untouched.push(m.name.clone());
        } else if m.name.contains("embed_tokens") {
            let cols = m.shape[1];
            let d = randn(v.len(), s, 4e-4);
            for (k, (x, e)) in v.iter_mut().zip(&d).enumerate() {
                // Every fourth token row was "seen" by the fine-tune: a large update.
                let row = k / cols;
                *x += if row % 4 == 0 { e * 12.0 } else { *e };
            }
        } else if m.shape.len() == 2 {
            let (rows, cols) = (m.shape[0], m.shape[1]);
            let d = randn(v.len(), s, 3e-4);
            let a = randn(rows * 4, s + 7, 1.0);
            let b = randn(4 * cols, s + 11, 1.0);
            let lowrank = m.name.contains("mlp");
            for r in 0..rows {
                for c in 0..cols {
                    let mut u = d[r * cols + c];
                    if lowrank {
                        u += (0..4).map(|k| a[r * 4 + k] * b[k * cols + c]).sum::<f32>() * 2e-4;
                    }
                    v[r * cols + c] += u;
                }
            }
        } else {
            for (x, e) in v.iter_mut().zip(randn(m.numel(), s, 1e-2)) {
                *x += e;
            }
        }
        w.write(&m.name, &v)?;
    }
    w.finish()?;
    src.write_side_files(dir)?;
    Ok(untouched)
}
