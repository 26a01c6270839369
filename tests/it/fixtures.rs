//! GGUF import of the two real fixture models, checked against the independent reference
//! files (transformers' config and tokenizer output, gguf-py's dequantization).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::bf16;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tenpak::dtype::DType;
use tenpak::source::gguf::GgufSource;
use tenpak::source::{HfModelDir, TensorSource};
use tokenizers::Tokenizer;

use crate::util::{data, fixtures, tenpak_ok};

struct Imported {
    smol: PathBuf,
    gemma: PathBuf,
    fixtures: PathBuf,
}

const SMOL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "models/gemma-3-270m-q4_k_m.gguf";

/// Both fixture models imported (through the CLI) for all tests of this module, into
/// Cargo's per-target scratch dir, keyed by the GGUF and the `tenpak` binary (size and
/// modification time), older imports removed: a static is never dropped, so a temporary
/// directory here would leak 0.8 GB per run.
fn imported() -> Option<&'static Imported> {
    static CELL: OnceLock<Option<Imported>> = OnceLock::new();
    CELL.get_or_init(|| {
        let fx = fixtures()?;
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-imports");
        let stamp = |p: &Path| {
            let meta = std::fs::metadata(p).expect("stat");
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{}-{mtime}", meta.len())
        };
        let bin = stamp(Path::new(env!("CARGO_BIN_EXE_tenpak")));
        let mut dirs = vec![];
        for (m, name) in [(SMOL, "smol"), (GEMMA, "gemma")] {
            let gguf = fx.join(m);
            let key = format!("{name}-{}-{bin}", stamp(&gguf));
            let d = root.join(&key);
            if !d.join("config.json").exists() {
                for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                    let n = old.file_name().to_string_lossy().into_owned();
                    if n.starts_with(&format!("{name}-")) && n != key {
                        let _ = std::fs::remove_dir_all(old.path());
                    }
                }
                let part = root.join(format!("{name}.partial-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&part);
                tenpak_ok(&[
                    "import",
                    gguf.to_str().expect("path"),
                    "-o",
                    part.to_str().expect("path"),
                ]);
                let _ = std::fs::remove_dir_all(&d);
                std::fs::rename(&part, &d).expect("rename import");
            }
            dirs.push(d);
        }
        let gemma = dirs.pop().expect("gemma");
        let smol = dirs.pop().expect("smol");
        Some(Imported {
            smol,
            gemma,
            fixtures: fx,
        })
    })
    .as_ref()
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
}

fn models(imp: &Imported) -> [(&'static str, &Path); 2] {
    [("smollm2-135m", &imp.smol), ("gemma3-270m", &imp.gemma)]
}

#[test]
fn config_matches_reference() {
    let Some(imp) = imported() else { return };
    for (name, dir) in models(imp) {
        let got = json(&dir.join("config.json"));
        let want = json(&data(&format!("reference/{name}/config.json")));
        for key in [
            "architectures",
            "model_type",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "num_hidden_layers",
            "head_dim",
            "vocab_size",
            "max_position_embeddings",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "unk_token_id",
            "rope_parameters",
            "hidden_act",
            "hidden_activation",
            "sliding_window",
            "layer_types",
            "query_pre_attn_scalar",
            "attention_bias",
            "final_logit_softcapping",
            "attn_logit_softcapping",
        ] {
            assert_eq!(got.get(key), want.get(key), "{name}: config key {key}");
        }
        let (g, w) = (
            got["rms_norm_eps"].as_f64().expect("eps"),
            want["rms_norm_eps"].as_f64().expect("eps"),
        );
        assert!((g - w).abs() <= w * 1e-6, "{name}: rms_norm_eps {g} vs {w}");
    }
}

fn probe_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn tokenizer_matches_reference_probes_and_whole_texts() {
    let Some(imp) = imported() else { return };
    let whole = json(&data("reference/whole_text_tokens.json"));
    for (name, dir) in models(imp) {
        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer loads");
        let reference = json(&data(&format!("reference/{name}/reference.json")));
        let probes = reference["probes"].as_array().expect("probes");
        for p in probes {
            if let Some(text) = p["text"].as_str() {
                let with = tok.encode(text, true).expect("encode");
                let without = tok.encode(text, false).expect("encode");
                assert_eq!(
                    with.get_ids(),
                    probe_ids(&p["input_ids_with_special"]),
                    "{name}: {text:?}"
                );
                assert_eq!(
                    without.get_ids(),
                    probe_ids(&p["input_ids_no_special"]),
                    "{name}: {text:?}"
                );
            }
        }
        // The emma probe: the first 64 text tokens (BOS prepended where the tokenizer adds one).
        let emma = std::fs::read_to_string(imp.fixtures.join("text/emma.txt")).expect("emma");
        let first = &probes[0];
        let want = probe_ids(&first["input_ids"]);
        let ids = tok
            .encode(emma.as_str(), false)
            .expect("encode")
            .get_ids()
            .to_vec();
        let bos: Vec<u32> = if want.len() == 65 {
            vec![want[0]]
        } else {
            vec![]
        };
        let got: Vec<u32> = bos.iter().chain(&ids[..64]).copied().collect();
        assert_eq!(got, want, "{name}: emma probe");
        for text in ["emma", "brown"] {
            let content = std::fs::read_to_string(imp.fixtures.join(format!("text/{text}.txt")))
                .expect("text");
            let ids = tok
                .encode(content.as_str(), false)
                .expect("encode")
                .get_ids()
                .to_vec();
            let want = &whole["texts"][name][text];
            assert_eq!(
                ids.len() as u64,
                want["count"].as_u64().expect("count"),
                "{name} {text}: token count"
            );
            let mut h = Sha256::new();
            for i in &ids {
                h.update(i.to_le_bytes());
            }
            let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                digest,
                want["sha256_u32le"].as_str().expect("sha"),
                "{name} {text}: token ids differ"
            );
        }
    }
}

#[test]
fn dequantization_matches_gguf_py_spot_checks() {
    let Some(imp) = imported() else { return };
    for (spot, gguf, dir) in [
        ("spot_smollm2.json", SMOL, &imp.smol),
        ("spot_gemma3.json", GEMMA, &imp.gemma),
    ] {
        let checks = json(&data(spot));
        let exact = GgufSource::open(&imp.fixtures.join(gguf), DType::F32).expect("open gguf");
        let written = HfModelDir::open(dir).expect("open imported dir");
        let mut types = vec![];
        for c in checks["checks"].as_array().expect("checks") {
            let hf = c["hf"].as_str().expect("hf name");
            types.push(c["type"].as_str().expect("type").to_string());
            let f32s = exact.read_f32(hf).expect("read gguf");
            let bf16s = written.read_f32(hf).expect("read imported");
            for (i, v) in c["index"]
                .as_array()
                .expect("index")
                .iter()
                .zip(c["value"].as_array().expect("values"))
            {
                let (i, v) = (
                    i.as_u64().expect("i") as usize,
                    v.as_f64().expect("v") as f32,
                );
                assert!(
                    (f32s[i] - v).abs() <= 1e-6 * v.abs().max(1e-3),
                    "{hf}[{i}]: {} vs gguf-py {v}",
                    f32s[i]
                );
                assert_eq!(
                    bf16s[i],
                    bf16::from_f32(v).to_f32(),
                    "{hf}[{i}] in the bf16 import"
                );
            }
        }
        eprintln!("{spot}: checked types {types:?}");
    }
}

#[test]
fn every_fixture_tensor_type_is_covered() {
    let Some(imp) = imported() else { return };
    let mut seen = std::collections::BTreeSet::new();
    for spot in ["spot_smollm2.json", "spot_gemma3.json"] {
        for c in json(&data(spot))["checks"].as_array().expect("checks") {
            seen.insert(c["type"].as_str().expect("type").to_string());
        }
    }
    for t in ["F32", "Q8_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K"] {
        assert!(seen.contains(t), "no spot check for {t}");
    }
    let _ = imp;
}

#[test]
fn smollm2_grid_is_reproduced_by_int4_g32() {
    // SmolLM2's weights lie on a Q4_1 grid (group 32, fp16 scale and min): imported as f32,
    // asymmetric INT4 at g32 must find that grid again — a check that the fit is exact
    // where an exact answer exists.
    let Some(imp) = imported() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let f32_dir = tmp.path().join("f32");
    let gguf = imp.fixtures.join(SMOL);
    tenpak_ok(&[
        "import",
        gguf.to_str().expect("p"),
        "-o",
        f32_dir.to_str().expect("p"),
        "--dtype",
        "f32",
    ]);
    let out = tmp.path().join("q");
    let report: Value = serde_json::from_str(&tenpak_ok(&[
        "quantize",
        f32_dir.to_str().expect("p"),
        "-o",
        out.to_str().expect("p"),
        "--codec",
        "int4",
        "--group-size",
        "32",
        "--json",
    ]))
    .expect("json report");
    let tensors = report["tensors"].as_array().expect("tensors");
    let quantized: Vec<&Value> = tensors
        .iter()
        .filter(|t| !t["codec"].as_str().expect("c").starts_with("keep"))
        .collect();
    assert_eq!(quantized.len(), 210);
    for t in quantized {
        let e = t["rel_error"].as_f64().expect("err");
        assert!(
            e < 1e-6,
            "{}: rel error {e} on an exact Q4_1 grid",
            t["name"]
        );
    }
}

#[test]
fn pack_unpack_reproduces_quantize_on_both_models() {
    let Some(imp) = imported() else { return };
    for (name, dir) in models(imp) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
        let d = dir.to_str().expect("p");
        let settings = ["--target", "balanced"];
        tenpak_ok(&[&["pack", d, "-o", &p("m.tnpk")], &settings[..]].concat());
        tenpak_ok(&["unpack", &p("m.tnpk"), "-o", &p("un")]);
        tenpak_ok(&[&["quantize", d, "-o", &p("q")], &settings[..]].concat());
        let a = HfModelDir::open(&tmp.path().join("un")).expect("unpacked");
        let b = HfModelDir::open(&tmp.path().join("q")).expect("quantized");
        assert_eq!(a.tensors().len(), b.tensors().len(), "{name}");
        for m in b.tensors() {
            assert_eq!(
                a.raw(&m.name).expect("a"),
                b.raw(&m.name).expect("b"),
                "{name}: {}",
                m.name
            );
        }
    }
}

/// `pack --calibrate TEXT`: calibration runs on the text first (its statistics kept beside
/// the artifact), `int4_awq` encodes every linear of SmolLM2, and the artifact records which
/// text (by sha256) and statistics were used; it verifies and decodes through `unpack`.
#[test]
fn pack_with_calibration_records_text_and_statistics() {
    let Some(imp) = imported() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    let text = imp.fixtures.join("text/brown.txt");
    let out = tenpak_ok(&[
        "pack",
        imp.smol.to_str().expect("p"),
        "-o",
        &p("m.tnpk"),
        "--codec",
        "int4_awq",
        "--group-size",
        "64",
        "--calibrate",
        text.to_str().expect("p"),
        "--calib-samples",
        "2",
        "--calib-seq",
        "64",
        "--json",
    ]);
    let rep: Value = serde_json::from_str(&out).expect("json");
    let tensors = rep["tensors"].as_array().expect("tensors");
    let calibrated = tensors
        .iter()
        .filter_map(|t| t["codec"].as_str())
        .filter(|c| c.contains("awq α") && c.ends_with("fp16"))
        .count();
    assert_eq!(calibrated, 30 * 7, "every linear of the 30 blocks");
    assert!(tmp.path().join("m.tnpk.stats.safetensors").exists());
    let info: Value =
        serde_json::from_str(&tenpak_ok(&["info", &p("m.tnpk"), "--json"])).expect("info");
    let sel = info["metadata"]["selection"].as_str().expect("selection");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&text).expect("text")))
    };
    assert!(sel.contains("int4_awq") || sel.contains("awq"), "{sel}");
    assert!(sel.contains("brown.txt") && sel.contains(&sha), "{sel}");
    tenpak_ok(&["verify", &p("m.tnpk")]);
    tenpak_ok(&["unpack", &p("m.tnpk"), "-o", &p("un")]);
    let a = HfModelDir::open(&tmp.path().join("un")).expect("unpacked");
    assert_eq!(a.tensors().len(), tensors.len());
}
