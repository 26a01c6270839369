//! `tenpak export --to gguf`: exact mappings checked bit for bit against the artifact's
//! decode, through our GGUF importer and through an independent reader (the `gguf`
//! Python package, gguf-py, which llama.cpp maintains); the real fixture models round
//! trip GGUF -> .tnpk -> GGUF to the same values and the same tokenizer.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use tenpak::artifact::Artifact;
use tenpak::dtype::DType;
use tenpak::source::gguf::{hf_name, unpermute_rows, Arch, GgufFile, GgufSource};
use tenpak::source::TensorSource;

use crate::util::{fixtures, tenpak, tenpak_ok, tiny_llama};

/// A byte-level BPE tokenizer over the tiny model's 128 ids (one special token).
fn tiny_tokenizer() -> Value {
    let mut vocab = serde_json::Map::new();
    let letters = "abcdefghijklmnop";
    let mut id = 1;
    for a in letters.chars() {
        for b in letters.chars().take(8) {
            if id < 126 {
                vocab.insert(format!("{a}{b}"), json!(id));
                id += 1;
            }
        }
    }
    vocab.insert("a".into(), json!(126));
    vocab.insert("b".into(), json!(127));
    json!({
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true}],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]},
    })
}

fn tiny_model(dir: &Path) {
    tiny_llama(dir, DType::BF16);
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer().to_string()).expect("tokenizer");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"eos_token": "<|endoftext|>", "add_bos_token": false}).to_string(),
    )
    .expect("tokenizer config");
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("report")).expect("json")
}

/// Our decode of every tensor against the GGUF's values (read back by our importer,
/// which undoes the Q/K permutation): bit-identical where the report says exact.
fn check_against_artifact(tnpk: &Path, gguf: &Path, rep: &Value) {
    let art = Artifact::open_location(tnpk.to_str().expect("p")).expect("artifact");
    let back = GgufSource::open(gguf, DType::F32).expect("our importer reads the export");
    let tensors = rep["tensors"].as_array().expect("tensors");
    assert_eq!(tensors.len(), art.manifest().tensors.len());
    for t in tensors {
        let name = t["name"].as_str().expect("name");
        let ours = art.load_tensor(name).expect("decode");
        let theirs = back.read_f32(name).expect("gguf tensor");
        if t["exact"].as_bool() == Some(true) {
            let first = ours.iter().zip(&theirs).position(|(a, b)| a != b);
            assert_eq!(ours.len(), theirs.len(), "{name}");
            let bits = ours
                .iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert_eq!(t["bit_identical"].as_bool(), Some(bits), "{name}");
            assert!(
                first.is_none(),
                "{name}: marked exact, differs at {first:?}: {:?} vs {:?}",
                first.map(|i| ours[i]),
                first.map(|i| theirs[i])
            );
        } else {
            let (d2, n2) = ours
                .iter()
                .zip(&theirs)
                .fold((0f64, 0f64), |(d, n), (a, b)| {
                    (d + f64::from(a - b).powi(2), n + f64::from(*a).powi(2))
                });
            let rel = (d2 / n2).sqrt();
            let reported = t["rel_rms_error"].as_f64().expect("error");
            assert!(
                (rel - reported).abs() <= 1e-6 + 1e-3 * reported,
                "{name}: measured {rel}, reported {reported}"
            );
        }
    }
}

#[test]
fn int4_maps_exactly_to_q4_1_and_q4_0_and_the_rest_reencodes_with_its_error_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("m");
    tiny_model(&model);
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    let m = model.to_str().expect("p");
    for (label, codec, expect_ty, all_exact) in [
        (
            "asym g64",
            &["--codec", "int4", "--group-size", "64"][..],
            "Q4_1",
            true,
        ),
        (
            "sym g32",
            &["--codec", "int4", "--group-size", "32", "--symmetric"][..],
            "Q4_0",
            true,
        ),
        ("residual", &["--codec", "int4_residual"][..], "Q8_0", false),
    ] {
        let tnpk = p(&format!("{label}.tnpk"));
        let gguf = p(&format!("{label}.gguf"));
        let rep_path = p(&format!("{label}.json"));
        tenpak_ok(&[&["pack", m, "-o", &tnpk], codec].concat());
        let out = tenpak_ok(&[
            "export", &tnpk, "--to", "gguf", "-o", &gguf, "--report", &rep_path,
        ]);
        assert!(out.contains("exact (equal to"), "{out}");
        let rep = report(Path::new(&rep_path));
        let linears: Vec<&Value> = rep["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .filter(|t| t["name"].as_str().is_some_and(|n| n.contains("_proj")))
            .collect();
        assert_eq!(linears.len(), 14, "{label}");
        for t in &linears {
            assert_eq!(t["ty"], expect_ty, "{label}: {t}");
            assert_eq!(t["exact"].as_bool(), Some(all_exact), "{label}: {t}");
            if !all_exact {
                let e = t["rel_rms_error"].as_f64().expect("error");
                assert!(e > 0.0 && e < 0.02, "{label}: Q8_0 re-encoding error {e}");
            }
        }
        // Norms and the raw bf16 embedding are exact either way.
        for t in rep["tensors"].as_array().expect("tensors") {
            if !t["name"].as_str().is_some_and(|n| n.contains("_proj")) {
                assert_eq!(t["exact"].as_bool(), Some(true), "{label}: {t}");
            }
        }
        check_against_artifact(Path::new(&tnpk), Path::new(&gguf), &rep);
        // The architecture survives: the importer's config from the export.
        let back = GgufSource::open(Path::new(&gguf), DType::F32).expect("reimport");
        let c = back.config();
        for (k, v) in [
            ("hidden_size", 256),
            ("intermediate_size", 512),
            ("num_hidden_layers", 2),
            ("num_attention_heads", 4),
            ("vocab_size", 128),
        ] {
            assert_eq!(c[k], json!(v), "{label}: {k}");
        }
    }
}

#[test]
fn gguf_py_reads_the_export_to_our_decode() {
    let have = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "the gguf Python package is missing under CI (scripts/test.sh installs it)"
        );
        eprintln!("skipping: pip install gguf");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("m");
    tiny_model(&model);
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    tenpak_ok(&[
        "pack",
        model.to_str().expect("p"),
        "-o",
        &p("m.tnpk"),
        "--codec",
        "int4",
        "--group-size",
        "128",
    ]);
    tenpak_ok(&["export", &p("m.tnpk"), "--to", "gguf", "-o", &p("m.gguf")]);
    let dump = tmp.path().join("dump");
    std::fs::create_dir(&dump).expect("dump dir");
    // gguf-py: parse the file, dequantize every tensor (its own numpy code), write f32.
    let script = r#"
import sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
assert r.fields["general.architecture"].contents() == "llama"
assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
for t in r.tensors:
    dequantize(t.data, t.tensor_type).astype(np.float32).tofile(f"{sys.argv[2]}/{t.name}")
print(len(r.tensors))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &p("m.gguf"), dump.to_str().expect("p")])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "20");
    let art = Artifact::open_location(&p("m.tnpk")).expect("artifact");
    let file = GgufFile::open(Path::new(&p("m.gguf"))).expect("ours");
    for t in file.tensors() {
        let bytes = std::fs::read(dump.join(&t.name)).expect("dumped");
        let mut theirs: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let name = hf_name(Arch::Llama, &t.name).expect("a transformers name");
        if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            theirs = unpermute_rows(&theirs, 256, 256, 4);
        }
        let ours = art.load_tensor(&name).expect("decode");
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: gguf-py's dequantization differs from our decode"
        );
    }
}

#[test]
fn bad_requests_fail_cleanly_and_leave_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("m");
    tiny_model(&model);
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    tenpak_ok(&["pack", model.to_str().expect("p"), "-o", &p("m.tnpk")]);
    // A fallback that is not a type.
    let out = tenpak(&[
        "export",
        &p("m.tnpk"),
        "--to",
        "gguf",
        "-o",
        &p("x.gguf"),
        "--fallback",
        "q3_k",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("q8_0"));
    // An architecture GGUF export does not know: a typed error, no file, no temporary.
    let config = model.join("config.json");
    let mut c: Value =
        serde_json::from_slice(&std::fs::read(&config).expect("config")).expect("json");
    c["model_type"] = json!("mamba");
    std::fs::write(&config, c.to_string()).expect("write");
    tenpak_ok(&["pack", model.to_str().expect("p"), "-o", &p("mamba.tnpk")]);
    let out = tenpak(&[
        "export",
        &p("mamba.tnpk"),
        "--to",
        "gguf",
        "-o",
        &p("mamba.gguf"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mamba") && err.contains("llama"), "{err}");
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("gguf"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A truncated artifact: an error naming the problem, no output.
    let bytes = std::fs::read(p("m.tnpk")).expect("read");
    std::fs::write(p("cut.tnpk"), &bytes[..bytes.len() / 2]).expect("write");
    let out = tenpak(&[
        "export",
        &p("cut.tnpk"),
        "--to",
        "gguf",
        "-o",
        &p("cut.gguf"),
    ]);
    assert!(!out.status.success());
    assert!(!Path::new(&p("cut.gguf")).exists());
}

/// The real models: SmolLM2's Q4_1 GGUF packed at int4 g32 (its own grid) exports back
/// to the same values in every tensor and the same tokenizer metadata; Gemma 3's
/// export re-imports to the same tokenizer (its merges rebuilt from our scores).
#[test]
fn fixture_models_round_trip_gguf_tnpk_gguf() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    let smol = fx.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    tenpak_ok(&[
        "pack",
        smol.to_str().expect("p"),
        "--gguf-dtype",
        "f32",
        "-o",
        &p("smol.tnpk"),
        "--codec",
        "int4",
        "--group-size",
        "32",
    ]);
    let out = tenpak_ok(&[
        "export",
        &p("smol.tnpk"),
        "--to",
        "gguf",
        "-o",
        &p("smol.gguf"),
    ]);
    assert!(
        out.contains("272 of 272 tensors exact (equal to the .tnpk's decode, 272 bit for bit)"),
        "{out}"
    );
    let a = GgufFile::open(&smol).expect("original");
    let b = GgufFile::open(Path::new(&p("smol.gguf"))).expect("export");
    for k in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "llama.rope.freq_base",
        "llama.attention.head_count_kv",
        "llama.rope.dimension_count",
    ] {
        assert_eq!(a.get(k), b.get(k), "{k}");
    }
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in a.tensors() {
        let u = b.tensor(&t.name).expect("same names");
        let (x, y) = (a.dequantize(t).expect("a"), b.dequantize(u).expect("b"));
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{}: values differ from the original GGUF",
            t.name
        );
    }

    let gemma = fx.join("models/gemma-3-270m-q4_k_m.gguf");
    tenpak_ok(&[
        "pack",
        gemma.to_str().expect("p"),
        "-o",
        &p("g.tnpk"),
        "--codec",
        "int4",
        "--group-size",
        "64",
    ]);
    let out = tenpak_ok(&["export", &p("g.tnpk"), "--to", "gguf", "-o", &p("g.gguf")]);
    assert!(
        out.contains("236 of 236 tensors exact (equal to the .tnpk's decode, 236 bit for bit)"),
        "{out}"
    );
    let orig =
        tenpak::source::gguf::tokenizer::build(&GgufFile::open(&gemma).expect("a")).expect("a");
    let back = tenpak::source::gguf::tokenizer::build(
        &GgufFile::open(Path::new(&p("g.gguf"))).expect("b"),
    )
    .expect("b");
    // Compared entry by entry (the values are large: a failure names the first few).
    for key in ["merges", "vocab"] {
        let (a, b) = (
            &orig.tokenizer_json["model"][key],
            &back.tokenizer_json["model"][key],
        );
        assert!(a == b, "Gemma's {key} differ after the round trip");
    }
    let (a, b) = (
        orig.tokenizer_json["added_tokens"].as_array().expect("a"),
        back.tokenizer_json["added_tokens"].as_array().expect("b"),
    );
    let differ: Vec<String> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .take(3)
        .map(|(x, y)| format!("{x} vs {y}"))
        .collect();
    assert!(
        differ.is_empty() && a.len() == b.len(),
        "{} vs {} added tokens; {differ:?}",
        a.len(),
        b.len()
    );
}

/// A fine-tune shipped as a delta exports, with its base, to the fine-tune itself: every
/// tensor in its dtype, equal to the fine-tune's own files; without the base it is refused.
#[test]
fn a_delta_with_its_base_exports_the_fine_tune_exactly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    tiny_model(&base);
    let ft = tmp.path().join("ft");
    tenpak::synthetic::write_finetune(&base, &ft, 3).expect("fine-tune");
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    tenpak_ok(&[
        "pack",
        ft.to_str().expect("p"),
        "-o",
        &p("ft.tnpk"),
        "--base",
        base.to_str().expect("p"),
        "--delta",
        "exact",
    ]);
    let out = tenpak(&["export", &p("ft.tnpk"), "--to", "gguf", "-o", &p("ft.gguf")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("delta against"));
    assert!(!Path::new(&p("ft.gguf")).exists());
    let out = tenpak_ok(&[
        "export",
        &p("ft.tnpk"),
        "--base",
        &p("ft.tnpk.base.tnpk"),
        "--to",
        "gguf",
        "-o",
        &p("ft.gguf"),
        "--report",
        &p("ft.json"),
    ]);
    assert!(out.contains("20 of 20 tensors exact"), "{out}");
    let rep = report(Path::new(&p("ft.json")));
    let back = GgufSource::open(Path::new(&p("ft.gguf")), DType::F32).expect("reimport");
    let want = tenpak::source::HfModelDir::open(&ft).expect("fine-tune");
    for t in rep["tensors"].as_array().expect("tensors") {
        let name = t["name"].as_str().expect("name");
        let ty = t["ty"].as_str().expect("ty");
        assert!(ty == "BF16" || ty == "F32", "{name}: {ty}");
        let (a, b) = (
            back.read_f32(name).expect("gguf"),
            want.read_f32(name).expect("ft"),
        );
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: the exported fine-tune differs from the fine-tune"
        );
    }
}
