//! The runtime against the independent reference (transformers, float32, on the same
//! bf16 imports): logits of the probe window, and perplexity on a slice of text.

use std::path::PathBuf;

use tenpak::runtime::{perplexity, Model, Tokenizer, Windows};
use tenpak::source::HfModelDir;

use crate::util::{fixtures, tenpak_ok};

/// Max |logit - reference| allowed (issue #4).
const LOGIT_TOL: f32 = 1e-2;

/// The committed reference of one fixture model (`tests/data/reference/<model>`).
fn reference_dir(model: &str) -> PathBuf {
    let d = crate::util::data(&format!("reference/{model}"));
    assert!(
        d.join("logits.safetensors").exists(),
        "reference logits missing from the repository: {}",
        d.display()
    );
    d
}

fn read_ref(dir: &std::path::Path) -> (Vec<u32>, Vec<usize>, Vec<f32>, usize) {
    let t = HfModelDir::open_file(&dir.join("logits.safetensors")).expect("logits file");
    let ids: Vec<u32> = t
        .read_i64("input_ids")
        .expect("ids")
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let pos: Vec<usize> = t
        .read_i64("positions")
        .expect("pos")
        .into_iter()
        .map(|x| x as usize)
        .collect();
    let (logits, shape) = t.read_f32_with_shape("logits").expect("logits");
    (ids, pos, logits, shape[1])
}

#[test]
fn logits_match_transformers_on_the_probe_window() {
    let Some(fx) = fixtures() else { return };
    for (name, gguf) in [
        ("smollm2-135m", "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("gemma3-270m", "models/gemma-3-270m-q4_k_m.gguf"),
    ] {
        let rdir = reference_dir(name);
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("m");
        tenpak_ok(&[
            "import",
            fx.join(gguf).to_str().expect("p"),
            "-o",
            out.to_str().expect("p"),
        ]);
        let model = Model::load(&HfModelDir::open(&out).expect("open")).expect("load");
        let (ids, pos, want, vocab) = read_ref(&rdir);
        let logits: Vec<Vec<f32>> = model
            .forward(&ids)
            .expect("forward")
            .to_vec2()
            .expect("vec");
        let mut worst = 0f32;
        for (k, &p) in pos.iter().enumerate() {
            for v in 0..vocab {
                worst = worst.max((logits[p][v] - want[k * vocab + v]).abs());
            }
        }
        eprintln!(
            "{name}: max |logit diff| = {worst:.2e} over {} positions",
            pos.len()
        );
        assert!(
            worst <= LOGIT_TOL,
            "{name}: max abs logit difference {worst}"
        );
        // And the perplexity of a slice of emma: the tokenizer from the import, the
        // window rule of the reference (1 window of 512 here).
        let tok = Tokenizer::from_dir(&out).expect("tokenizer");
        let text = std::fs::read_to_string(fx.join("text/emma.txt")).expect("emma");
        let ids = tok.encode(&text).expect("encode");
        let r = perplexity(
            &model,
            &ids,
            tok.default_bos(),
            Windows {
                ctx: 512,
                stride: 512,
                max_tokens: 512,
            },
            &|_, _| {},
        )
        .expect("ppl");
        assert_eq!(
            r.tokens,
            if tok.default_bos().is_some() {
                512
            } else {
                511
            }
        );
        assert!(r.ppl > 5.0 && r.ppl < 100.0, "{name}: PPL {}", r.ppl);
    }
}

#[test]
fn calibration_statistics_have_the_documented_names_and_shapes() {
    use tenpak::calib::{self, CalibOptions};
    use tenpak::dtype::DType;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("m");
    crate::util::tiny_llama(&dir, DType::F32);
    let model = Model::load(&HfModelDir::open(&dir).expect("open")).expect("load");
    let ids: Vec<u32> = (0..400u32).map(|i| (i * 37 + 11) % 128).collect();
    let opts = CalibOptions {
        samples: 3,
        seq: 64,
        xtx_max_width: 256,
    };
    let w = calib::windows(&ids, opts).expect("windows");
    assert_eq!(w.len(), 3);
    let stats = calib::collect(&model, &w, None, opts, &|_, _| {}).expect("collect");
    assert_eq!(stats.tokens, 192);
    let out = tmp.path().join("stats.safetensors");
    stats.save(&out, &[("samples", "3".into())]).expect("save");
    let f = HfModelDir::open_file(&out).expect("read back");
    for l in 0..2 {
        for (lin, width) in [
            ("self_attn.q_proj", 256),
            ("self_attn.k_proj", 256),
            ("self_attn.v_proj", 256),
            ("self_attn.o_proj", 256),
            ("mlp.gate_proj", 256),
            ("mlp.up_proj", 256),
            ("mlp.down_proj", 512),
        ] {
            let p = format!("model.layers.{l}.{lin}");
            let (abs, s1) = f
                .read_f32_with_shape(&format!("{p}.input_abs_mean"))
                .expect("abs");
            let (sq, s2) = f
                .read_f32_with_shape(&format!("{p}.input_sq_mean"))
                .expect("sq");
            assert_eq!((s1, s2), (vec![width], vec![width]), "{p}");
            // E[x²] ≥ E[|x|]² (Jensen), per channel.
            for (a, q) in abs.iter().zip(&sq) {
                assert!(*q >= a * a * 0.999, "{p}: {q} < {a}²");
            }
            let xtx = f.read_f32_with_shape(&format!("{p}.input_xtx"));
            let first = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj"].contains(&lin);
            assert_eq!(
                xtx.is_ok(),
                first,
                "{p}: xtx stored once per input, and only ≤ 256 wide"
            );
            if let Ok((x, shape)) = xtx {
                assert_eq!(shape, vec![width, width]);
                for c in 0..width {
                    let (d, s) = (x[c * width + c], sq[c]);
                    assert!(
                        (d - s).abs() <= 1e-4 * s.max(1e-6),
                        "{p}: diag {d} vs sq_mean {s}"
                    );
                }
            }
        }
    }
}

#[test]
fn models_load_from_tnpk_exactly_as_from_the_quantized_directory() {
    use tenpak::dtype::DType;
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("m");
    crate::util::tiny_llama(&src, DType::BF16);
    let s = |p: &std::path::Path| p.to_str().expect("p").to_string();
    let (tnpk, q) = (tmp.path().join("m.tnpk"), tmp.path().join("q"));
    tenpak_ok(&[
        "pack",
        &s(&src),
        "-o",
        &s(&tnpk),
        "--codec",
        "int4",
        "--group-size",
        "64",
    ]);
    tenpak_ok(&[
        "quantize",
        &s(&src),
        "-o",
        &s(&q),
        "--codec",
        "int4",
        "--group-size",
        "64",
    ]);
    let from_tnpk = Model::load(&tenpak::artifact::ArtifactSource::open(&s(&tnpk)).expect("open"))
        .expect("load");
    let from_dir = Model::load(&HfModelDir::open(&q).expect("open")).expect("load");
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 13 + 5) % 128).collect();
    let a: Vec<Vec<f32>> = from_tnpk.forward(&ids).expect("fwd").to_vec2().expect("v");
    let b: Vec<Vec<f32>> = from_dir.forward(&ids).expect("fwd").to_vec2().expect("v");
    assert_eq!(a, b);
}
