//! Shared helpers: fixture location, running the CLI, small synthetic HF models.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tenpak::dtype::DType;
use tenpak::source::{HfDirWriter, TensorMeta};

/// The fixture directory (`$TENPAK_FIXTURES` or `~/.cache/tenpak-fixtures`) if the fetch
/// script has filled it. Under `CI=true` a missing fixture is a failure, not a skip.
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("TENPAK_FIXTURES")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tenpak-fixtures"))
        })?;
    let ok = dir.join("models/SmolLM2-135M-Instruct.Q4_1.gguf").exists()
        && dir.join("models/gemma-3-270m-q4_k_m.gguf").exists()
        && dir.join("text/emma.txt").exists();
    if ok {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "fixtures missing in {} under CI: run ../shared/fixtures/fetch.sh",
            dir.display()
        );
    }
    eprintln!(
        "skipping: fixtures not found in {} (run ../shared/fixtures/fetch.sh)",
        dir.display()
    );
    None
}

/// The repository's `tests/data`.
pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// Runs the `tenpak` binary.
pub fn tenpak(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenpak"))
        .args(args)
        .output()
        .expect("run tenpak")
}

/// Runs `tenpak` and asserts success, returning stdout.
pub fn tenpak_ok(args: &[&str]) -> String {
    let out = tenpak(args);
    assert!(
        out.status.success(),
        "tenpak {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

/// Deterministic pseudo-random values (xorshift), roughly N(0, scale²)-shaped.
pub fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next().max(1e-7), next());
            scale * (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
        })
        .collect()
}

/// Writes a tiny Llama-shaped HF model (2 layers) and returns the tensor names.
pub fn tiny_llama(dir: &Path, dtype: DType) -> Vec<String> {
    let (h, ff, vocab) = (256usize, 512usize, 128usize);
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
    for l in 0..2 {
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
    let mut w = HfDirWriter::new(dir, metas.clone(), 1 << 40).expect("writer");
    for (i, m) in metas.iter().enumerate() {
        let v = if m.shape.len() == 1 {
            vec![1.0; m.numel()]
        } else {
            randn(m.numel(), i as u64 + 1, 0.02)
        };
        w.write(&m.name, &v).expect("write");
    }
    w.finish().expect("finish");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": ff, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_hidden_layers": 2, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": true, "torch_dtype": dtype.torch_name(),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    std::fs::write(dir.join("tokenizer.json"), "{}").expect("tokenizer");
    metas.into_iter().map(|m| m.name).collect()
}
