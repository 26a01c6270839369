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

/// Writes a PEFT LoRA adapter of the Llama model in `base` to `dir`
/// (`adapter_config.json` naming `base_repo`, `adapter_model.safetensors` in f32 with
/// PEFT's key names) on `q_proj` and `v_proj` of every layer, rank `rank`, `lora_alpha`
/// `alpha`; returns the adapted tensor names. For tests: real layout, synthetic values.
pub fn write_lora_adapter(
    base: &std::path::Path,
    dir: &std::path::Path,
    base_repo: &str,
    rank: usize,
    alpha: f64,
    seed: u64,
) -> crate::Result<Vec<String>> {
    use crate::source::{HfModelDir, TensorSource};
    let src = HfModelDir::open(base)?;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io("create", dir, e))?;
    let mut adapted = vec![];
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (i, m) in src.tensors().iter().enumerate() {
        if !(m.name.ends_with("q_proj.weight") || m.name.ends_with("v_proj.weight")) {
            continue;
        }
        let (rows, cols) = (m.shape[0], m.shape[1]);
        let module = format!("base_model.model.{}", m.name.trim_end_matches(".weight"));
        let s = seed.wrapping_mul(7919) + i as u64;
        let a = randn(rank * cols, s, 0.02);
        let b = randn(rows * rank, s + 1, 0.01);
        tensors.push((
            format!("{module}.lora_A.weight"),
            vec![rank, cols],
            crate::dtype::DType::F32.encode(&a),
        ));
        tensors.push((
            format!("{module}.lora_B.weight"),
            vec![rows, rank],
            crate::dtype::DType::F32.encode(&b),
        ));
        adapted.push(m.name.clone());
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| crate::Error::Compute {
                    message: format!("{n}: {e}"),
                })
        })
        .collect::<crate::Result<_>>()?;
    let path = dir.join("adapter_model.safetensors");
    safetensors::serialize_to_file(views, None, &path).map_err(|e| crate::Error::Compute {
        message: format!("{}: {e}", path.display()),
    })?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "base_model_name_or_path": base_repo,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
    });
    let p = dir.join("adapter_config.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&config).unwrap_or_default())
        .map_err(|e| crate::Error::io("write", &p, e))?;
    Ok(adapted)
}
