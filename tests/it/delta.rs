//! Fine-tunes as deltas: exact reconstruction, budgets, the base's grid, the errors of a
//! missing, wrong or tampered base, the CLI, and streaming one layer of a delta over HTTP.
//! The pair is synthetic (`tenpak::synthetic::write_finetune`): a tiny Llama and a copy
//! changed the way fine-tunes change (most tensors a little, some not at all, a few a lot).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tenpak::artifact::{pack, Artifact, FormatError};
use tenpak::delta::{pack_delta, Choice, DeltaMode, DeltaOptions, DeltaReport, DeltaSource};
use tenpak::dtype::DType;
use tenpak::source::{HfModelDir, TensorSource};
use tenpak::Error;

use crate::util::{serve, tenpak, tenpak_ok, tiny_llama};

struct Pair {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ft: PathBuf,
    base: PathBuf,
    untouched: Vec<String>,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A tiny base (packed losslessly to `base.tnpk`) and its synthetic fine-tune.
fn pair() -> Pair {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    tiny_llama(&dir.join("base"), DType::BF16);
    let untouched =
        tenpak::synthetic::write_finetune(&dir.join("base"), &dir.join("ft"), 1).expect("ft");
    let src = HfModelDir::open(&dir.join("base")).expect("base");
    pack::pack_raw(&src, &dir.join("base.tnpk"), &[], &[], &|_| {}).expect("pack base");
    Pair {
        ft: dir.join("ft"),
        base: dir.join("base.tnpk"),
        dir,
        _tmp: tmp,
        untouched,
    }
}

fn delta(p: &Pair, base: &Path, name: &str, opts: &DeltaOptions) -> (PathBuf, DeltaReport) {
    let ft = HfModelDir::open(&p.ft).expect("ft");
    let base = Artifact::open_location(s(base)).expect("base");
    let out = p.dir.join(name);
    let r = pack_delta(&ft, &base, &out, opts, &[], &[], &|_, _| {}).expect("pack delta");
    (out, r)
}

fn opts(mode: DeltaMode, bits: f64) -> DeltaOptions {
    DeltaOptions {
        mode,
        bits_per_weight: bits,
        entropy: tenpak::delta::choose::Entropy {
            level: 9,
            ..Default::default()
        },
        calib: None,
        grid_refit: 0.0,
    }
}

/// Σ‖W_ft − Ŵ‖² over every tensor.
fn total_sq_error(p: &Pair, d: &DeltaSource) -> f64 {
    let ft = HfModelDir::open(&p.ft).expect("ft");
    ft.tensors()
        .iter()
        .map(|m| {
            let a = ft.read_f32(&m.name).expect("ft tensor");
            let b = d.read_f32(&m.name).expect("delta tensor");
            a.iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn exact_delta_reconstructs_the_fine_tune_bit_for_bit_and_references_untouched_tensors() {
    let p = pair();
    let (out, r) = delta(&p, &p.base, "exact.tnpk", &opts(DeltaMode::Exact, 0.0));
    let d = DeltaSource::open(s(&out), s(&p.base)).expect("open with base");
    let ft = HfModelDir::open(&p.ft).expect("ft");
    for m in ft.tensors() {
        let want = DType::BF16.encode(&ft.read_f32(&m.name).expect("ft"));
        let got = DType::BF16.encode(&d.tensor(&m.name).expect("delta"));
        assert!(want == got, "{} differs", m.name);
    }
    for t in &r.tensors {
        let is_ref = t.choice == Choice::Reference;
        assert_eq!(is_ref, p.untouched.contains(&t.name), "{}", t.name);
        if is_ref {
            assert_eq!(t.bytes, 0);
        }
    }
    // Small updates of a few units in the last place compress far below the tensor.
    assert!(
        r.ratio_vs_source < 0.5,
        "exact delta is {:.3}x",
        r.ratio_vs_source
    );
    let m = Artifact::open_location(s(&out)).expect("delta");
    let base = Artifact::open_location(s(&p.base)).expect("base");
    assert_eq!(
        m.manifest().base.as_ref().map(|b| b.digest.as_str()),
        Some(base.digest())
    );
    // The side files equal the base's: none is repeated.
    assert!(m.manifest().files.is_empty(), "{:?}", m.manifest().files);
    assert_eq!(m.header().minor, tenpak::artifact::format::MINOR);
}

#[test]
fn auto_fits_its_budget_and_beats_sign_times_scale_at_the_same_bytes() {
    let p = pair();
    let (sign_out, sign) = delta(&p, &p.base, "sign.tnpk", &opts(DeltaMode::Sign, 0.0));
    let bits = sign.bits_per_weight;
    let (auto_out, auto) = delta(&p, &p.base, "auto.tnpk", &opts(DeltaMode::Auto, bits));
    assert!(
        auto.bits_per_weight <= bits,
        "{} > {bits}",
        auto.bits_per_weight
    );
    let e_sign = total_sq_error(&p, &DeltaSource::open(s(&sign_out), s(&p.base)).expect("o"));
    let e_auto = total_sq_error(&p, &DeltaSource::open(s(&auto_out), s(&p.base)).expect("o"));
    assert!(e_auto < e_sign, "auto {e_auto:e} vs sign {e_sign:e}");
    // A tighter budget is honoured (every byte of the file counted), a looser one is
    // spent for less error.
    let (_, half) = delta(&p, &p.base, "half.tnpk", &opts(DeltaMode::Auto, 0.5));
    assert!(half.bits_per_weight <= 0.5, "{}", half.bits_per_weight);
    let (loose_out, _) = delta(&p, &p.base, "loose.tnpk", &opts(DeltaMode::Auto, 6.0));
    let e_loose = total_sq_error(
        &p,
        &DeltaSource::open(s(&loose_out), s(&p.base)).expect("o"),
    );
    assert!(e_loose < e_auto, "{e_loose:e} vs {e_auto:e}");
    // Below what the file's own overhead needs: a typed error, nothing written.
    let ft = HfModelDir::open(&p.ft).expect("ft");
    let base = Artifact::open_location(s(&p.base)).expect("base");
    let out = p.dir.join("none.tnpk");
    let e = pack_delta(
        &ft,
        &base,
        &out,
        &opts(DeltaMode::Auto, 0.001),
        &[],
        &[],
        &|_, _| {},
    );
    assert!(matches!(e, Err(Error::BudgetTooSmall { .. })), "{e:?}");
    assert!(!out.exists());
}

#[test]
fn grid_delta_patches_a_quantized_base_and_decodes_to_the_fine_tune_on_its_grid() {
    let p = pair();
    let q = p.dir.join("base-balanced.tnpk");
    tenpak_ok(&["pack", s(&p.dir.join("base")), "-o", s(&q)]);
    let mut o = opts(DeltaMode::Grid, 16.0);
    o.grid_refit = 0.0;
    let (out, r) = delta(&p, &q, "grid.tnpk", &o);
    let base = Artifact::open_location(s(&q)).expect("base");
    let d = DeltaSource::open(s(&out), s(&q)).expect("open");
    let ft = HfModelDir::open(&p.ft).expect("ft");
    let mut grid = 0;
    for t in &r.tensors {
        if t.choice != Choice::Grid {
            continue;
        }
        grid += 1;
        // The reconstruction is the fine-tune re-quantized on the base's scales.
        let e = base.entry(&t.name).expect("entry");
        let enc = base.fetch_tensor(e).expect("fetch");
        let w = ft.read_f32(&t.name).expect("ft");
        let on_grid = tenpak::codec::requantize(&enc, &w, 0.0)
            .expect("regrid")
            .expect("has grid");
        let want = tenpak::codec::decode_vec(&on_grid).expect("decode");
        assert_eq!(d.tensor(&t.name).expect("delta"), want, "{}", t.name);
        // Few codes move: the patch is a small fraction of the base encoding.
        assert!(
            t.bytes * 4 < e.encoded_length,
            "{}: {} of {}",
            t.name,
            t.bytes,
            e.encoded_length
        );
    }
    assert!(grid >= 10, "{grid} grid tensors");

    // Scales that moved: with refit, groups whose own fit is better take it; the error
    // never grows, and the reconstruction is the re-quantization with refit.
    o.grid_refit = 1.0;
    let (out2, r2) = delta(&p, &q, "grid-refit.tnpk", &o);
    let d2 = DeltaSource::open(s(&out2), s(&q)).expect("open");
    let (mut e0, mut e1, mut moved) = (0f64, 0f64, 0);
    for t in r2.tensors.iter().filter(|t| t.choice == Choice::Grid) {
        let e = base.entry(&t.name).expect("entry");
        let enc = base.fetch_tensor(e).expect("fetch");
        let w = ft.read_f32(&t.name).expect("ft");
        let refit = tenpak::codec::requantize(&enc, &w, 1.0)
            .expect("regrid")
            .expect("has grid");
        let got = d2.tensor(&t.name).expect("delta");
        assert_eq!(
            got,
            tenpak::codec::decode_vec(&refit).expect("decode"),
            "{}",
            t.name
        );
        let kept = d.tensor(&t.name).expect("delta");
        let sq = |v: &[f32]| {
            w.iter()
                .zip(v)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
        };
        let (a, b) = (sq(&kept), sq(&got));
        assert!(b <= a * (1.0 + 1e-9), "{}: {b} > {a}", t.name);
        e0 += a;
        e1 += b;
        moved += usize::from(got != kept);
    }
    assert!(
        moved > 0 && e1 < e0,
        "refit changed {moved} tensors: {e1} vs {e0}"
    );
}

#[test]
fn a_delta_needs_its_own_base_and_tampering_is_caught() {
    let p = pair();
    let (out, _) = delta(&p, &p.base, "exact.tnpk", &opts(DeltaMode::Exact, 0.0));
    // Without a base: decoding a tensor names the base it needs.
    let alone = Artifact::open_location(s(&out)).expect("opens and lists");
    let base = Artifact::open_location(s(&p.base)).expect("base");
    let name = "model.layers.1.mlp.up_proj.weight";
    match alone.load_tensor(name) {
        Err(Error::DeltaNeedsBase { base: b }) => assert_eq!(b, base.digest()),
        other => panic!("{other:?}"),
    }
    // Another base (the fine-tune itself packed): typed error naming the expected digest.
    let other = p.dir.join("other.tnpk");
    let ft = HfModelDir::open(&p.ft).expect("ft");
    pack::pack_raw(&ft, &other, &[], &[], &|_| {}).expect("pack");
    match DeltaSource::open(s(&out), s(&other)) {
        Err(Error::WrongBase { expected, found }) => {
            assert_eq!(expected, base.digest());
            assert_ne!(found, expected);
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("wrong base accepted"),
    }
    // A full artifact given a base, and a delta given as a base, are refused.
    assert!(matches!(
        DeltaSource::open(s(&p.base), s(&p.base)),
        Err(Error::NotADelta { .. })
    ));
    // A byte of the base's chunk region flipped: that tensor's chunk fails its sha256.
    let tampered = p.dir.join("tampered-base.tnpk");
    let mut bytes = std::fs::read(&p.base).expect("read");
    let e = base.entry(name).expect("entry");
    let c = &base.manifest().chunks[e.chunks[0] as usize];
    bytes[c.offset as usize + 7] ^= 0x10;
    std::fs::write(&tampered, &bytes).expect("write");
    let d = DeltaSource::open(s(&out), s(&tampered)).expect("same manifest, same digest");
    match d.tensor(name) {
        Err(Error::Artifact {
            error: FormatError::ChunkDigest { owner, .. },
            ..
        }) => assert_eq!(owner, name),
        other => panic!("{other:?}"),
    }
    // A byte of the delta's own chunk flipped: caught the same way.
    let delta = Artifact::open_location(s(&out)).expect("delta");
    let e = delta.entry(name).expect("entry");
    let c = &delta.manifest().chunks[e.chunks[0] as usize];
    let mut bytes = std::fs::read(&out).expect("read");
    bytes[c.offset as usize + c.length as usize / 2] ^= 1;
    let bad = p.dir.join("tampered-delta.tnpk");
    std::fs::write(&bad, &bytes).expect("write");
    let d = DeltaSource::open(s(&bad), s(&p.base)).expect("opens");
    assert!(matches!(
        d.tensor(name),
        Err(Error::Artifact {
            error: FormatError::ChunkDigest { .. },
            ..
        })
    ));
}

#[test]
fn cli_packs_inspects_verifies_and_unpacks_a_delta() {
    let p = pair();
    let key = p.dir.join("k");
    tenpak_ok(&["keygen", "-o", s(&key)]);
    let out = p.dir.join("ft.tnpk");
    // An HF directory as the base: packed losslessly beside the output first.
    let report = tenpak_ok(&[
        "pack",
        s(&p.ft),
        "-o",
        s(&out),
        "--base",
        s(&p.dir.join("base")),
        "--delta",
        "exact",
        "--sign",
        s(&key),
    ]);
    assert!(report.contains("bits per fine-tune weight"), "{report}");
    let base = p.dir.join("ft.tnpk.base.tnpk");
    let base_digest = Artifact::open_location(s(&base))
        .expect("base")
        .digest()
        .to_string();
    // info shows the base without needing it.
    let info = tenpak_ok(&["info", s(&out)]);
    assert!(
        info.contains(&format!("delta against {base_digest}")),
        "{info}"
    );
    // Reading without --base is a clear error naming the base.
    let o = tenpak(&["unpack", s(&out), "-o", s(&p.dir.join("x"))]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&base_digest));
    let pubkey = p.dir.join("k.pub");
    let v = tenpak_ok(&["verify", s(&out), "--base", s(&base), "--key", s(&pubkey)]);
    assert!(v.contains("delta and base"), "{v}");
    let dir = p.dir.join("unpacked");
    tenpak_ok(&[
        "unpack",
        s(&out),
        "--base",
        s(&base),
        "-o",
        s(&dir),
        "--key",
        s(&pubkey),
    ]);
    let a = HfModelDir::open(&dir).expect("unpacked");
    let b = HfModelDir::open(&p.ft).expect("ft");
    for m in b.tensors() {
        assert_eq!(
            a.read_f32(&m.name).expect("a"),
            b.read_f32(&m.name).expect("b"),
            "{}",
            m.name
        );
    }
    assert!(dir.join("config.json").exists() && dir.join("tokenizer.json").exists());
    // --base on a full artifact is refused.
    let o = tenpak(&["load", s(&base), "--base", s(&base)]);
    assert!(!o.status.success());
}

#[test]
fn streaming_one_layer_of_a_delta_fetches_only_that_layer_of_delta_and_base() {
    let p = pair();
    let (out, _) = delta(&p, &p.base, "auto.tnpk", &opts(DeltaMode::Auto, 3.0));
    let (durl, dserved) = serve(&out);
    let (burl, bserved) = serve(&p.base);
    let d = DeltaSource::open(&durl, &burl).expect("open over http");
    let opened = (
        dserved.load(Ordering::Relaxed),
        bserved.load(Ordering::Relaxed),
    );
    let layer: Vec<String> = d
        .tensors()
        .iter()
        .filter(|m| m.name.starts_with("model.layers.1."))
        .map(|m| m.name.clone())
        .collect();
    for n in &layer {
        d.tensor(n).expect("tensor");
    }
    let need = |a: &Artifact| -> u64 {
        a.manifest()
            .tensors
            .iter()
            .filter(|t| t.name.starts_with("model.layers.1."))
            .map(|t| t.encoded_length)
            .sum()
    };
    let (dn, bn) = (
        dserved.load(Ordering::Relaxed) - opened.0,
        bserved.load(Ordering::Relaxed) - opened.1,
    );
    let delta = Artifact::open_location(s(&out)).expect("delta");
    let base = Artifact::open_location(s(&p.base)).expect("base");
    assert_eq!(dn, need(&delta), "delta bytes served for one layer");
    assert_eq!(bn, need(&base), "base bytes served for one layer");
    assert!(bn < base.len() / 2);
}

#[test]
fn a_lora_adapter_packs_against_its_base_and_merges_on_unpack() {
    let p = pair();
    let lora = p.dir.join("lora");
    let adapted =
        tenpak::synthetic::write_lora_adapter(&p.dir.join("base"), &lora, "acme/base", 4, 8.0, 5)
            .expect("adapter");
    // Without --base: a clear error naming the base the adapter config gives.
    let o = tenpak(&["pack", s(&lora), "-o", s(&p.dir.join("x.tnpk"))]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("PEFT adapter") && e.contains("acme/base"), "{e}");
    let out = p.dir.join("lora.tnpk");
    let report = tenpak_ok(&["pack", s(&lora), "-o", s(&out), "--base", s(&p.base)]);
    assert!(report.contains("+ LoRA rank 4"), "{report}");
    let dir = p.dir.join("merged");
    tenpak_ok(&["unpack", s(&out), "--base", s(&p.base), "-o", s(&dir)]);
    let merged = HfModelDir::open(&dir).expect("merged");
    let base = HfModelDir::open(&p.dir.join("base")).expect("base");
    let st = HfModelDir::open_file(&lora.join("adapter_model.safetensors")).expect("weights");
    for m in base.tensors() {
        let b = base.read_f32(&m.name).expect("base");
        let got = merged.read_f32(&m.name).expect("merged");
        if !adapted.contains(&m.name) {
            assert_eq!(got, b, "{} is the base's", m.name);
            continue;
        }
        let module = format!("base_model.model.{}", m.name.trim_end_matches(".weight"));
        let (a, _, _) = st
            .read_float(&format!("{module}.lora_A.weight"))
            .expect("A");
        let (bb, _, _) = st
            .read_float(&format!("{module}.lora_B.weight"))
            .expect("B");
        let (rows, cols) = (m.shape[0], m.shape[1]);
        let mut worst = 0f32;
        for i in 0..rows {
            for j in 0..cols {
                let u: f32 = (0..4).map(|k| bb[i * 4 + k] * a[k * cols + j]).sum::<f32>() * 2.0;
                let size: f32 = (0..4)
                    .map(|k| (bb[i * 4 + k] * a[k * cols + j]).abs())
                    .sum::<f32>()
                    * 2.0;
                let want = half::bf16::from_f32(b[i * cols + j] + u).to_f32();
                // bf16 output: within one unit in the last place of the merged value
                // (of the larger of base and merged, where they nearly cancel), plus the
                // fp16 rounding of the factors.
                let ulp =
                    want.abs().max(b[i * cols + j].abs()) * 2f32.powi(-7) + 2e-3 * size + 1e-9;
                worst = worst.max((got[i * cols + j] - want).abs() / ulp);
            }
        }
        assert!(worst <= 1.0, "{}: off by {worst} ulp", m.name);
    }
    // An adapter whose matrices the base lacks is refused with the tensor's name.
    let other = p.dir.join("other");
    tenpak::synthetic::write_llama(
        &other,
        DType::BF16,
        tenpak::synthetic::LlamaShape {
            hidden: 128,
            ff: 256,
            vocab: 64,
            layers: 2,
        },
    )
    .expect("other");
    let src = HfModelDir::open(&other).expect("other");
    let other_tnpk = p.dir.join("other.tnpk");
    pack::pack_raw(&src, &other_tnpk, &[], &[], &|_| {}).expect("pack other");
    let o = tenpak(&[
        "pack",
        s(&lora),
        "-o",
        s(&p.dir.join("y.tnpk")),
        "--base",
        s(&other_tnpk),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("q_proj"));
    // A fine-tune against a base of other sizes: a typed error, nothing written.
    let ft = HfModelDir::open(&p.ft).expect("ft");
    let base = Artifact::open_location(s(&other_tnpk)).expect("base");
    let out = p.dir.join("z.tnpk");
    let e = pack_delta(
        &ft,
        &base,
        &out,
        &opts(DeltaMode::Exact, 2.0),
        &[],
        &[],
        &|_, _| {},
    )
    .expect_err("not its base");
    assert!(matches!(e, Error::IncompatibleBase { .. }), "{e}");
    assert!(!out.exists());
}
