//! The `tenpak` CLI on small generated models: reports, budgets, and clear errors.

use serde_json::Value;
use tenpak::dtype::DType;
use tenpak::source::{HfModelDir, TensorSource};

use crate::util::{tenpak, tenpak_ok, tiny_llama};

fn quantize_json(src: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "quantize",
        src.to_str().expect("p"),
        "-o",
        out.to_str().expect("p"),
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&tenpak_ok(&args)).expect("json report")
}

#[test]
fn quantize_writes_a_loadable_model_and_an_honest_report() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    let names = tiny_llama(&src, DType::BF16);
    let out = tmp.path().join("out");
    let r = quantize_json(&src, &out, &["--codec", "int4", "--group-size", "32"]);
    for key in [
        "bits_per_weight_quantized",
        "bits_per_weight_file",
        "tensors",
        "ratio_vs_source",
        "mean_rel_error",
    ] {
        assert!(r.get(key).is_some(), "report lacks {key}");
    }
    // Linear layers: 4 bits + 32/32 scale bits + 128 header bits per tensor.
    let q: Vec<&Value> = r["tensors"]
        .as_array()
        .expect("t")
        .iter()
        .filter(|t| t["role"] != "other" && t["role"] != "embedding")
        .collect();
    assert_eq!(q.len(), 14);
    let (bits, n) = q.iter().fold((0f64, 0f64), |(b, n), t| {
        (
            b + t["bits"].as_f64().expect("b"),
            n + t["numel"].as_f64().expect("n"),
        )
    });
    assert!((r["bits_per_weight_quantized"].as_f64().expect("bpw") - bits / n).abs() < 1e-9);
    assert!((bits / n - 5.0) > 0.0 && (bits / n - 5.0) < 0.05);
    // Embeddings and norms kept at bf16: whole-file bpw between the two.
    let file = r["bits_per_weight_file"].as_f64().expect("f");
    assert!(file > 5.0 && file < 16.0, "{file}");
    assert!((r["source_bits_per_weight"].as_f64().expect("s") - 16.0).abs() < 1e-9);
    // The written model loads, keeps the source dtype and the same tensors, and the
    // kept tensors are bit-identical.
    let a = HfModelDir::open(&src).expect("src");
    let b = HfModelDir::open(&out).expect("out");
    assert_eq!(b.tensors().len(), names.len());
    for m in b.tensors() {
        assert_eq!(m.dtype, DType::BF16);
        if m.name.contains("norm") || m.name.contains("embed") {
            assert_eq!(
                a.read_f32(&m.name).expect("a"),
                b.read_f32(&m.name).expect("b"),
                "{}",
                m.name
            );
        }
    }
    assert!(out.join("config.json").exists() && out.join("tokenizer.json").exists());
    // The table form prints totals.
    let table = tenpak_ok(&[
        "quantize",
        src.to_str().expect("p"),
        "-o",
        out.to_str().expect("p"),
    ]);
    assert!(
        table.contains("bits/weight (quantized)") && table.contains("smaller"),
        "{table}"
    );
}

#[test]
fn targets_order_by_size() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    tiny_llama(&src, DType::F32);
    let bpw = |t: &str| {
        let r = quantize_json(&src, &tmp.path().join(t), &["--target", t]);
        (
            r["bits_per_weight_quantized"].as_f64().expect("b"),
            r["mean_rel_error"].as_f64().expect("e"),
        )
    };
    let (q, b, s) = (bpw("quality"), bpw("balanced"), bpw("size"));
    assert!(q.0 > b.0 && b.0 > s.0, "{q:?} {b:?} {s:?}");
    assert!(q.1 < b.1 && b.1 < s.1, "{q:?} {b:?} {s:?}");
}

#[test]
fn bit_budget_is_met_and_spent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    tiny_llama(&src, DType::F32);
    let mut last_err = f64::INFINITY;
    for budget in [4.3, 5.0, 6.5, 10.5] {
        let r = quantize_json(
            &src,
            &tmp.path().join(format!("b{budget}")),
            &["--bits-per-weight", &budget.to_string()],
        );
        let got = r["bits_per_weight_quantized"].as_f64().expect("b");
        assert!(got <= budget + 1e-9, "budget {budget}: got {got}");
        assert!(
            got > budget - 1.0,
            "budget {budget} left mostly unspent: {got}"
        );
        let err = r["mean_rel_error"].as_f64().expect("e");
        assert!(err <= last_err, "more bits, more error: {err} > {last_err}");
        last_err = err;
    }
    let out = tenpak(&[
        "quantize",
        src.to_str().expect("p"),
        "-o",
        tmp.path().join("x").to_str().expect("p"),
        "--bits-per-weight",
        "3",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("below the cheapest codec"));
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let o = out.to_str().expect("p");
    let fail = |args: &[&str], needle: &str| {
        let r = tenpak(args);
        assert!(!r.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{err}");
    };
    fail(&["quantize", "/nonexistent/model", "-o", o], "no such file");
    let src = tmp.path().join("src");
    tiny_llama(&src, DType::F32);
    let s = src.to_str().expect("p");
    fail(
        &["quantize", s, "-o", o, "--codec", "int7"],
        "unknown codec",
    );
    fail(
        &[
            "quantize",
            s,
            "-o",
            o,
            "--codec",
            "int4",
            "--group-size",
            "3",
        ],
        "group size 3",
    );
    // A truncated weight file.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::copy(src.join("config.json"), broken.join("config.json")).expect("cp");
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    std::fs::write(
        broken.join("model.safetensors"),
        &bytes[..bytes.len() - 100],
    )
    .expect("write");
    fail(
        &["quantize", broken.to_str().expect("p"), "-o", o],
        "truncated",
    );
    // A NaN in a weight: refused, and no model is left behind.
    let nan = tmp.path().join("nan");
    tiny_llama(&nan, DType::F32);
    let mut b = std::fs::read(nan.join("model.safetensors")).expect("read");
    let linear = "model.layers.1.mlp.down_proj.weight";
    let header_len = u64::from_le_bytes(b[..8].try_into().expect("8")) as usize;
    let header: Value = serde_json::from_slice(&b[8..8 + header_len]).expect("header");
    let start = 8 + header_len + header[linear]["data_offsets"][0].as_u64().expect("off") as usize;
    b[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(nan.join("model.safetensors"), &b).expect("write");
    let nan_out = tmp.path().join("nan-out");
    fail(
        &[
            "quantize",
            nan.to_str().expect("p"),
            "-o",
            nan_out.to_str().expect("p"),
        ],
        "non-finite",
    );
    let leftovers: Vec<_> = std::fs::read_dir(&nan_out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "partial output left: {leftovers:?}");
}

#[test]
fn help_explains_the_flags() {
    let h = tenpak_ok(&["quantize", "--help"]);
    for flag in [
        "--target",
        "--codec",
        "--group-size",
        "--bits-per-weight",
        "--outliers",
        "--quantize-embeddings",
        "--json",
    ] {
        assert!(h.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn gpu_commands_explain_a_build_without_cuda() {
    if cfg!(feature = "cuda") {
        return;
    }
    let out = tenpak(&["bench-gpu", "--model-params", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("built without CUDA support"));
}
