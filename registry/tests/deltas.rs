//! Fine-tunes and adapters through the registry: a model whose card names `base_model`
//! is packed as deltas against its base's artifacts (the base packed and published
//! first when the registry has none, once however many fine-tunes arrive); a base the
//! registry cannot use gives a full artifact with the reason on the card; a PEFT LoRA
//! repository becomes an adapter artifact merged on load. The Hub is the local stand-in
//! (`common/hub.rs`, the Hub's wire format); the models are tiny synthetic Llamas.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tenpak::artifact::source::MemorySource;
use tenpak::artifact::Artifact;
use tenpak::delta::DeltaSource;
use tenpak::dtype::DType;

const BASE: &str = REPO; // acme/tiny-llama at SHA
const FT: &str = "acme/tiny-llama-ft";
const FT2: &str = "acme/tiny-llama-ft2";
const FT_SHA: &str = "1111111111111111111111111111111111111111";
const FT2_SHA: &str = "2222222222222222222222222222222222222222";

fn companion(repo: &str) -> String {
    format!("{repo}-tnpk")
}

fn file_of(repo: &str) -> String {
    format!("{}-balanced.tnpk", repo.rsplit('/').next().expect("name"))
}

fn repo(name: &str, sha: &str, dir: &Path) -> hub::ModelRepo {
    hub::ModelRepo {
        repo: name.into(),
        sha: sha.into(),
        dir: dir.to_path_buf(),
    }
}

fn deliver(reg: &Registry, repo: &str, sha: &str) -> i64 {
    let v: Value = reg
        .webhook(&content_update(repo, sha), Some(SECRET))
        .json()
        .expect("json");
    v["job_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job: {v}"))
}

fn registry_key(reg: &Registry) -> ed25519_dalek::VerifyingKey {
    let keys = reg.get_json("/keys");
    let hex = keys["keys"][0]["public_key"].as_str().expect("key");
    let bytes: [u8; 32] = hex::decode(hex).expect("hex").try_into().expect("32 bytes");
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).expect("key")
}

/// The last commit's files of `repo` on the stand-in.
fn published(h: &hub::Running, repo: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    h.hub
        .commits()
        .into_iter()
        .rev()
        .find(|c| c.repo == repo)
        .unwrap_or_else(|| panic!("nothing published to {repo}"))
        .files
}

fn open(bytes: &[u8]) -> Artifact {
    Artifact::open(Box::new(MemorySource::new(bytes.to_vec()))).expect("open")
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let (mut n, mut d) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        n += ((x - y) as f64).powi(2);
        d += (*x as f64).powi(2);
    }
    (n / d.max(1e-30)).sqrt()
}

fn poll(reg: &Registry, id: i64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = reg.get_json(&format!("/status/{id}"));
        if ok(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job {id}: {what}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn base_then_fine_tune_gives_two_companions_the_fine_tune_holding_only_deltas() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = model_dir(tmp.path());
    let ft = finetune(&base, &tmp.path().join("ft"), 1, BASE);
    let h = hub::start_with(
        vec![repo(BASE, SHA, &base), repo(FT, FT_SHA, &ft)],
        HUB_TOKEN,
        true,
        hub::Mode::Regular,
    );
    let reg = Registry::start(&tmp.path().join("data"), &h.url, &[]);
    let b = reg.wait_job(deliver(&reg, BASE, SHA), Duration::from_secs(120));
    assert_eq!(b["state"], "done", "{b}");
    assert_eq!(b["kind"], "full");
    let f = reg.wait_job(deliver(&reg, FT, FT_SHA), Duration::from_secs(120));
    assert_eq!(f["state"], "done", "{f}");
    assert_eq!(f["kind"], "delta");
    assert_eq!(f["base"], format!("{BASE}@{SHA}"));
    assert_eq!(reg.get_json("/jobs")["total"], 2, "no second base job");

    let base_files = published(&h, &companion(BASE));
    let ft_files = published(&h, &companion(FT));
    let base_bytes = &base_files[&file_of(BASE)];
    let delta_bytes = &ft_files[&file_of(FT)];
    let base_art = open(base_bytes);
    let delta = open(delta_bytes);
    // The delta names the base artifact's digest, and holds only deltas and references.
    assert_eq!(
        delta.manifest().base.as_ref().expect("a delta").digest,
        base_art.digest()
    );
    for t in &delta.manifest().tensors {
        assert!(
            !matches!(t.encoding, tenpak::artifact::format::Encoding::Raw),
            "{} stored in full",
            t.name
        );
    }
    eprintln!(
        "fine-tune delta {} bytes vs the base's balanced artifact {} bytes ({:.3}x)",
        delta_bytes.len(),
        base_bytes.len(),
        delta_bytes.len() as f64 / base_bytes.len() as f64
    );
    assert!(delta_bytes.len() * 2 < base_bytes.len());

    // Opened with its base: signed by the registry, every chunk intact, and the
    // fine-tune as its own balanced artifact would give it.
    let key = registry_key(&reg);
    let d = DeltaSource::new(delta, base_art).expect("pair");
    d.verify_signatures(&key).expect("signatures");
    d.verify_chunks(&|_| {}).expect("chunks");
    let src = tenpak::models::open(&ft, DType::BF16).expect("fine-tune");
    for m in src.tensors() {
        let want = src.read_f32(&m.name).expect("ft");
        let got = d.tensor(&m.name).expect("delta tensor");
        let e = rel(&want, &got);
        let bound = if m.shape.len() == 1 || m.name.contains("embed") {
            0.0
        } else {
            0.13
        };
        assert!(e <= bound, "{}: {e}", m.name);
    }

    // The card names the base artifact (repo, file, digest).
    let card = String::from_utf8(ft_files["README.md"].clone()).expect("utf8");
    assert!(card.contains("## Against the base"), "{card}");
    assert!(card.contains(&format!("{}/blob/main/{}", companion(BASE), file_of(BASE))));
    assert!(card.contains(&format!("digest `{}`", d.base().digest())));

    // The Hub-compatible read API serves the delta as the Hub would.
    let url = format!("{}/{}/resolve/main/{}", reg.url, companion(FT), file_of(FT));
    let got = client().get(&url).send().expect("GET");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().expect("body").as_ref(), delta_bytes.as_slice());
}

#[test]
fn fine_tunes_first_pack_and_publish_their_base_once_and_wait_for_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = model_dir(tmp.path());
    let ft = finetune(&base, &tmp.path().join("ft"), 1, BASE);
    let ft2 = finetune(&base, &tmp.path().join("ft2"), 2, BASE);
    // Weight downloads held: the base's job stays in its download while we look.
    let h = hub::start_with(
        vec![
            repo(BASE, SHA, &base),
            repo(FT, FT_SHA, &ft),
            repo(FT2, FT2_SHA, &ft2),
        ],
        HUB_TOKEN,
        false,
        hub::Mode::Regular,
    );
    let reg = Registry::start(&tmp.path().join("data"), &h.url, &[]);
    let a = deliver(&reg, FT, FT_SHA);
    let b = deliver(&reg, FT2, FT2_SHA);
    let va = poll(&reg, a, "waits", |v| v["state"] == "waiting");
    let vb = poll(&reg, b, "waits", |v| v["state"] == "waiting");
    let base_job = va["waits_on"].as_i64().expect("waits on a job");
    assert_eq!(
        vb["waits_on"].as_i64(),
        Some(base_job),
        "one base job for both"
    );
    assert!(va["stage"]
        .as_str()
        .expect("stage")
        .contains(&base_job.to_string()));
    let vbase = reg.get_json(&format!("/status/{base_job}"));
    assert_eq!(vbase["repo"], BASE);
    assert_eq!(vbase["revision"], SHA);
    assert_eq!(vbase["origin"], "base");
    assert_eq!(vbase["waited_on_by"], serde_json::json!([a, b]));
    let listed: Vec<i64> = reg.get_json("/jobs")["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["waits_on"].as_i64())
        .collect();
    assert_eq!(listed, vec![base_job, base_job]);

    // The base's own webhook now finds its job instead of making another.
    let v: Value = reg
        .webhook(&content_update(BASE, SHA), Some(SECRET))
        .json()
        .expect("json");
    assert_eq!(v["job_id"].as_i64(), Some(base_job), "{v}");

    h.hub.set_gate(true);
    for id in [a, b] {
        let v = reg.wait_job(id, Duration::from_secs(120));
        assert_eq!(v["state"], "done", "{v}");
        assert_eq!(v["kind"], "delta");
    }
    assert_eq!(
        reg.wait_job(base_job, Duration::from_secs(10))["state"],
        "done"
    );
    assert_eq!(reg.get_json("/jobs")["total"], 3);
    let base_commits = h
        .hub
        .commits()
        .iter()
        .filter(|c| c.repo == companion(BASE))
        .count();
    assert_eq!(base_commits, 1, "the base is published once");
    let base_digest = open(&published(&h, &companion(BASE))[&file_of(BASE)])
        .digest()
        .to_string();
    for r in [FT, FT2] {
        let d = open(&published(&h, &companion(r))[&file_of(r)]);
        assert_eq!(
            d.manifest().base.as_ref().expect("delta").digest,
            base_digest
        );
    }
}

#[test]
fn a_base_the_registry_cannot_use_gives_a_full_artifact_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = model_dir(tmp.path());
    // Names a base the Hub does not have.
    let lost = finetune(&base, &tmp.path().join("lost"), 1, "acme/no-such-model");
    // Names another model as its base: same family, other sizes.
    let other = tmp.path().join("other");
    tenpak::synthetic::write_llama(
        &other,
        DType::BF16,
        tenpak::synthetic::LlamaShape {
            hidden: 128,
            ff: 256,
            vocab: 128,
            layers: 2,
        },
    )
    .expect("other model");
    let wrong = finetune(&base, &tmp.path().join("wrong"), 2, "acme/other");
    let h = hub::start_with(
        vec![
            repo("acme/lost-ft", FT_SHA, &lost),
            repo("acme/other", SHA, &other),
            repo("acme/wrong-ft", FT2_SHA, &wrong),
        ],
        HUB_TOKEN,
        true,
        hub::Mode::Regular,
    );
    let reg = Registry::start(&tmp.path().join("data"), &h.url, &[]);
    for (r, sha, why) in [
        ("acme/lost-ft", FT_SHA, "cannot be read"),
        ("acme/wrong-ft", FT2_SHA, "is not this model's base"),
    ] {
        let v = reg.wait_job(deliver(&reg, r, sha), Duration::from_secs(120));
        assert_eq!(v["state"], "done", "{v}");
        assert_eq!(v["kind"], "full", "{v}");
        assert!(v["note"].as_str().expect("a reason").contains(why), "{v}");
        let files = published(&h, &companion(r));
        let a = open(&files[&file_of(r)]);
        assert!(a.manifest().base.is_none(), "{r}: a full artifact");
        let card = String::from_utf8(files["README.md"].clone()).expect("utf8");
        assert!(
            card.contains("is packed in full, not against its base"),
            "{card}"
        );
        assert!(card.contains(why), "{card}");
    }
}

#[test]
fn a_lora_adapter_becomes_an_adapter_artifact_merged_on_load() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = model_dir(tmp.path());
    let dir = tmp.path().join("lora");
    let adapted =
        tenpak::synthetic::write_lora_adapter(&base, &dir, BASE, 8, 16.0, 3).expect("adapter");
    // No card: the adapter config's base_model_name_or_path names the base.
    let h = hub::start_with(
        vec![repo(BASE, SHA, &base), repo("acme/tiny-lora", FT_SHA, &dir)],
        HUB_TOKEN,
        true,
        hub::Mode::Regular,
    );
    let reg = Registry::start(&tmp.path().join("data"), &h.url, &[]);
    let v = reg.wait_job(
        deliver(&reg, "acme/tiny-lora", FT_SHA),
        Duration::from_secs(120),
    );
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["kind"], "adapter");
    let base_art = open(&published(&h, &companion(BASE))[&file_of(BASE)]);
    let files = published(&h, &companion("acme/tiny-lora"));
    let bytes = &files[&file_of("acme/tiny-lora")];
    let d = DeltaSource::new(open(bytes), base_art).expect("pair");
    d.verify_signatures(&registry_key(&reg)).expect("signed");
    assert!(String::from_utf8_lossy(&files["README.md"])
        .contains("merged into the base's matrices on load"));

    // Merged on load: base + (α/r)·B·A on the adapted matrices, the base elsewhere.
    let st = tenpak::source::HfModelDir::open_file(&dir.join("adapter_model.safetensors"))
        .expect("adapter weights");
    for m in d.base().manifest().tensors.clone() {
        let b = d.base().load_tensor(&m.name).expect("base");
        let got = d.tensor(&m.name).expect("merged");
        if !adapted.contains(&m.name) {
            assert_eq!(got, b, "{} is the base's", m.name);
            continue;
        }
        let module = format!("base_model.model.{}", m.name.trim_end_matches(".weight"));
        let (a, sa, _) = st
            .read_float(&format!("{module}.lora_A.weight"))
            .expect("A");
        let (bb, _, _) = st
            .read_float(&format!("{module}.lora_B.weight"))
            .expect("B");
        let (rows, cols, r) = (m.shape[0] as usize, m.shape[1] as usize, sa[0]);
        let mut want = b.clone();
        for i in 0..rows {
            for j in 0..cols {
                let s: f32 = (0..r).map(|k| bb[i * r + k] * a[k * cols + j]).sum();
                want[i * cols + j] += 2.0 * s;
            }
        }
        let diff: Vec<f32> = want.iter().zip(&b).map(|(w, x)| w - x).collect();
        let got_diff: Vec<f32> = got.iter().zip(&b).map(|(w, x)| w - x).collect();
        let e = rel(&diff, &got_diff);
        assert!(e < 2e-3, "{}: the merged update is off by {e}", m.name);
    }
    eprintln!(
        "adapter artifact: {} bytes for {} adapted matrices",
        bytes.len(),
        adapted.len()
    );
}
