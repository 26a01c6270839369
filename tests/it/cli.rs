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
        "2",
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
    if cfg!(feature = "bench-gpu") {
        return;
    }
    let out = tenpak(&["bench-gpu", "--model-params", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features bench-gpu"));
}

/// Calibrated encodes from statistics: every linear whose input the statistics cover is
/// encoded with GPTQ / AWQ / both / Hessian-weighted VQ / tenpak_x (labelled so), and the
/// layer output error on inputs drawn from those statistics is lower than plain int4's at
/// no more bits (GPTQ and AWQ at the same group) — what the calibration is for.
#[test]
fn calibrated_codecs_from_statistics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = tmp.path().join("m");
    let names = crate::util::tiny_llama(&model, tenpak::dtype::DType::F32);
    // Statistics of correlated inputs with uneven channel scales (as real activations
    // are): x = A z; E|x|, E[x²] for every consumer, E[x xᵀ] for each first consumer.
    let width = |n: &str| if n.contains("down_proj") { 512 } else { 256 };
    let inputs = |cols: usize| -> Vec<f32> {
        let z = crate::util::randn(512 * cols, 11, 1.0);
        let mut x = vec![0f32; 512 * cols];
        for (xr, zr) in x.chunks_mut(cols).zip(z.chunks(cols)) {
            for c in 0..cols {
                let s = 1.0 + 6.0 * ((c % 13) as f32 / 12.0);
                xr[c] = s * (zr[c] + 0.9 * zr[(c + 1) % cols] + 0.6 * zr[(c + 5) % cols]);
            }
        }
        x
    };
    let moments = |x: &[f32], cols: usize| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = (x.len() / cols) as f32;
        let (mut abs, mut sq, mut h) =
            (vec![0f32; cols], vec![0f32; cols], vec![0f32; cols * cols]);
        for r in x.chunks(cols) {
            for i in 0..cols {
                abs[i] += r[i].abs() / n;
                sq[i] += r[i] * r[i] / n;
                for j in 0..cols {
                    h[i * cols + j] += r[i] * r[j] / n;
                }
            }
        }
        (abs, sq, h)
    };
    let (x256, x512) = (inputs(256), inputs(512));
    let (m256, m512) = (moments(&x256, 256), moments(&x512, 512));
    let mut tensors = vec![];
    for n in names.iter().filter(|n| n.contains("proj")) {
        let lin = n.trim_end_matches(".weight");
        let (c, (abs, sq, h)) = if width(n) == 512 {
            (512, &m512)
        } else {
            (256, &m256)
        };
        tensors.push((format!("{lin}.input_abs_mean"), vec![c], abs.clone()));
        tensors.push((format!("{lin}.input_sq_mean"), vec![c], sq.clone()));
        let first = ["q_proj", "o_proj", "gate_proj", "down_proj"]
            .iter()
            .any(|p| n.contains(p));
        if first {
            tensors.push((format!("{lin}.input_xtx"), vec![c, c], h.clone()));
        }
    }
    let stats = tmp.path().join("stats.safetensors");
    tenpak::source::writer::write_safetensors_f32(&stats, &tensors, &Default::default())
        .expect("stats");
    let m = model.to_str().expect("utf8");
    let s = stats.to_str().expect("utf8");
    let run = |out: &str, extra: &[&str]| -> serde_json::Value {
        let o = tmp.path().join(out);
        let mut args = vec!["quantize", m, "-o", o.to_str().expect("utf8"), "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&crate::util::tenpak_ok(&args)).expect("json")
    };
    let labels = |v: &serde_json::Value, tag: &str| -> usize {
        v["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .filter_map(|t| t["codec"].as_str())
            .filter(|c| c.contains(tag))
            .count()
    };
    // Layer output error on the calibration inputs, summed over the linears.
    let src = tenpak::models::open(&model, tenpak::dtype::DType::F32).expect("src");
    let out_err = |dir: &str| -> f64 {
        let q = tenpak::models::open(&tmp.path().join(dir), tenpak::dtype::DType::F32)
            .expect("quantized");
        let mut e = 0f64;
        for n in names.iter().filter(|n| n.contains("proj")) {
            let cols = width(n);
            let x = if cols == 512 { &x512 } else { &x256 };
            let w = src.read_f32(n).expect("w");
            let q = q.read_f32(n).expect("q");
            let rows = w.len() / cols;
            for xr in x.chunks(cols).take(64) {
                for r in 0..rows {
                    let d: f64 = (0..cols)
                        .map(|c| ((w[r * cols + c] - q[r * cols + c]) * xr[c]) as f64)
                        .sum();
                    e += d * d;
                }
            }
        }
        e
    };
    let g64 = ["--codec", "int4", "--group-size", "64"];
    let plain = run("plain", &g64);
    let e_plain = out_err("plain");
    let bpw = |v: &serde_json::Value| v["bits_per_weight_quantized"].as_f64().expect("bpw");
    let cases: [(&str, Vec<&str>, &str, f64); 8] = [
        (
            "gptq",
            [&g64[..], &["--gptq", "--stats", s]].concat(),
            "gptq",
            0.85,
        ),
        (
            "awq",
            [&g64[..], &["--awq", "--stats", s]].concat(),
            "awq α",
            0.9,
        ),
        (
            "awqgptq",
            [&g64[..], &["--awq", "--gptq", "--stats", s]].concat(),
            "gptq",
            0.8,
        ),
        (
            "int4awq",
            vec!["--codec", "int4_awq", "--group-size", "64", "--stats", s],
            "fp16",
            0.9,
        ),
        (
            "vq",
            vec![
                "--codec",
                "calibrated_vq",
                "--group-size",
                "64",
                "--stats",
                s,
            ],
            "vq d2 8b",
            1.0,
        ),
        (
            "vqgptq",
            vec![
                "--codec",
                "calibrated_vq",
                "--group-size",
                "64",
                "--gptq",
                "--stats",
                s,
            ],
            "g64 gptq",
            0.7,
        ),
        (
            "x",
            vec![
                "--codec",
                "tenpak_x",
                "--rank",
                "4",
                "--vq-bits",
                "8",
                "--stats",
                s,
            ],
            "x r4",
            1.0,
        ),
        (
            "xgptq",
            vec![
                "--codec",
                "tenpak_x",
                "--rank",
                "4",
                "--vq-bits",
                "8",
                "--gptq",
                "--stats",
                s,
            ],
            "g64 gptq",
            0.7,
        ),
    ];
    for (dir, args, tag, ratio) in cases {
        let v = run(dir, &args);
        assert_eq!(labels(&v, tag), 14, "{dir}: all 7 linears of both layers");
        let e = out_err(dir);
        eprintln!(
            "{dir}: {:.4} bits/weight, output error {:.3} of plain int4 g64 ({:.4})",
            bpw(&v),
            e / e_plain,
            bpw(&plain)
        );
        assert!(e < ratio * e_plain, "{dir}: {e:.4e} vs plain {e_plain:.4e}");
        // The multipliers and salient weights are all the extra AWQ may spend.
        assert!(
            bpw(&v) <= bpw(&plain) + 0.6,
            "{dir}: {} bits/weight",
            bpw(&v)
        );
    }

    // Misuse, each refused with a message that names the problem: --gptq / --awq without
    // statistics; GPTQ with outliers; VQ parameters on an int codec; AWQ on VQ; statistics
    // without XᵀX for GPTQ.
    let bad = tmp.path().join("bad.safetensors");
    tenpak::source::writer::write_safetensors_f32(
        &bad,
        &[("a.input_sq_mean".to_string(), vec![2], vec![1.0, 2.0])],
        &Default::default(),
    )
    .expect("write");
    let b = bad.to_str().expect("utf8");
    let misuse: [(&[&str], &str); 6] = [
        (&["--gptq"], "--calibrate"),
        (&["--awq"], "--calibrate"),
        (&["--gptq", "--outliers", "1", "--stats", s], "outliers"),
        (&["--codec", "int4", "--vq-bits", "4"], "--vq-bits"),
        (
            &["--codec", "calibrated_vq", "--awq", "--stats", s],
            "--awq",
        ),
        (&["--gptq", "--stats", b], "input_xtx"),
    ];
    for (extra, needle) in misuse {
        let o = crate::util::tenpak(&[&["quantize", m, "-o", "x"], extra].concat());
        assert!(!o.status.success(), "{extra:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

/// `calibrate --fisher N` adds the empirical Fisher diagonal of every block linear
/// (finite, non-negative, not all zero) to the statistics; a bit budget spent by it
/// (`--sensitivity fisher`) meets the budget and allocates differently from the Hessian
/// one on the same file; without Fisher information `--sensitivity fisher` is refused
/// with the command that provides it. (The tiny Llama with a word-level tokenizer; the
/// comparison on real models is `bench/fisher.sh`.)
#[test]
fn a_bit_budget_spends_by_fisher_information() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = tmp.path().join("m");
    crate::util::tiny_llama(&model, tenpak::dtype::DType::BF16);
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), serde_json::json!(i)))
        .chain([("[UNK]".to_string(), serde_json::json!(100))])
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(model.join("tokenizer.json"), tok.to_string()).expect("tokenizer");
    let mut x: u64 = 3;
    let text: Vec<&str> = (0..3000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Zipf-like: small ids far more often.
            let u = ((x >> 11) as f64 / (1u64 << 53) as f64).max(1e-9);
            words[((1.0 / u) as usize).min(100) - 1].as_str()
        })
        .collect();
    let text_path = tmp.path().join("t.txt");
    std::fs::write(&text_path, text.join(" ")).expect("text");
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    let m = model.to_str().expect("p");
    let calibrate = |out: &str, fisher: &str| {
        crate::util::tenpak_ok(&[
            "calibrate",
            m,
            "--text",
            text_path.to_str().expect("p"),
            "--samples",
            "4",
            "--seq",
            "128",
            "--fisher",
            fisher,
            "-o",
            &p(out),
        ])
    };
    calibrate("f.safetensors", "4");
    calibrate("h.safetensors", "0");
    let c = tenpak::calib::Calib::open(tmp.path().join("f.safetensors").as_path(), 0.01)
        .expect("stats");
    assert!(c.has_fisher());
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ] {
        let numel = if name.contains("down") {
            256 * 512
        } else {
            256 * 256
        };
        let f = c.fisher(name, numel).expect("read").expect("fisher");
        assert!(f.iter().all(|v| v.is_finite() && *v >= 0.0) && f.iter().any(|v| *v > 0.0));
    }
    let no = tenpak::calib::Calib::open(tmp.path().join("h.safetensors").as_path(), 0.01)
        .expect("stats");
    assert!(!no.has_fisher());
    let pack = |out: &str, stats: &str, sens: &str| {
        crate::util::tenpak(&[
            "pack",
            m,
            "-o",
            &p(out),
            "--bits-per-weight",
            "3.25",
            "--stats",
            &p(stats),
            "--sensitivity",
            sens,
            "--json",
        ])
    };
    let report = |o: std::process::Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("json")
    };
    let fisher = report(pack("f.tnpk", "f.safetensors", "fisher"));
    let hessian = report(pack("h.tnpk", "f.safetensors", "hessian"));
    // The default (`auto`) is fisher with Fisher statistics, hessian without.
    let auto_f = report(pack("af.tnpk", "f.safetensors", "auto"));
    let auto_h = report(pack("ah.tnpk", "h.safetensors", "auto"));
    let codecs = |r: &serde_json::Value| -> Vec<String> {
        r["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .map(|t| t["codec"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for r in [&fisher, &hessian] {
        let b = r["bits_per_weight_quantized"].as_f64().expect("bits");
        assert!(b <= 3.25 + 1e-9 && b > 2.5, "{b}");
    }
    assert_ne!(
        codecs(&fisher),
        codecs(&hessian),
        "the two sensitivities allocate alike"
    );
    assert_eq!(codecs(&auto_f), codecs(&fisher));
    assert_eq!(codecs(&auto_h), codecs(&hessian));
    let refused = pack("x.tnpk", "h.safetensors", "fisher");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("no Fisher information")
            && err.contains("--fisher"),
        "{err}"
    );
}
