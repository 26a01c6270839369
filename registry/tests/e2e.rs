//! End-to-end: the registry as a real process, the Hub as a local stand-in speaking the
//! Hub's wire format (see `common/hub.rs`), a small Llama-shaped model.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tenpak::artifact::source::MemorySource;
use tenpak::artifact::Artifact;
use tenpak::dtype::DType;

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*x as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn registry_key(reg: &Registry) -> ed25519_dalek::VerifyingKey {
    let keys = reg.get_json("/keys");
    let hex = keys["keys"][0]["public_key"].as_str().expect("key");
    let bytes: [u8; 32] = hex::decode(hex).expect("hex").try_into().expect("32 bytes");
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).expect("key")
}

/// Checks an artifact's bytes: signed by `key`, every chunk intact, every tensor within
/// the codec's error bound of the source (kept tensors exact).
fn check_artifact(bytes: &[u8], key: &ed25519_dalek::VerifyingKey, model: &std::path::Path) {
    let a = Artifact::open(Box::new(MemorySource::new(bytes.to_vec()))).expect("open artifact");
    a.verify_signature(key).expect("signed by the registry");
    a.verify_chunks(&|_| {}).expect("chunks verify");
    let src = tenpak::models::open(model, DType::BF16).expect("source");
    assert_eq!(a.manifest().tensors.len(), src.tensors().len());
    for t in src.tensors() {
        let want = src.read_f32(&t.name).expect("source tensor");
        let got = a.load_tensor(&t.name).expect("decoded tensor");
        assert_eq!(got.len(), want.len(), "{}", t.name);
        let err = relative_error(&want, &got);
        if t.shape.len() == 1 || t.name.contains("embed_tokens") {
            assert_eq!(err, 0.0, "{} is kept as is", t.name);
        } else {
            // INT4 at g64/g128 on N(0, σ²) weights: ≈0.10 relative error.
            assert!(err < 0.13, "{}: relative error {err}", t.name);
        }
    }
}

#[test]
fn webhook_to_signed_companion_repo_and_range_serving() {
    let Fixture { tmp, model, hub } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    let root = reg.get_json("/");
    assert_eq!(root["service"], "tenpak-registry");
    assert_eq!(root["targets"], serde_json::json!(["balanced"]));

    // Secrets: missing → 401, wrong → 403, neither makes a job.
    let body = content_update(REPO, SHA);
    assert_eq!(reg.webhook(&body, None).status().as_u16(), 401);
    assert_eq!(reg.webhook(&body, Some("nope")).status().as_u16(), 403);
    assert_eq!(reg.get_json("/jobs")["total"], 0);
    // Malformed body with the right secret: 400, no job.
    assert_eq!(
        reg.webhook("{not json", Some(SECRET)).status().as_u16(),
        400
    );

    // The delivery: acknowledged at once, the work queued.
    let t0 = Instant::now();
    let r = reg.webhook(&body, Some(SECRET));
    let ack = t0.elapsed();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().expect("json");
    assert_eq!(v["action"], "compress");
    let id = v["job_id"].as_i64().expect("job id");
    assert!(ack < Duration::from_secs(2), "ack took {ack:?}");

    // Redelivery (the Hub retries; an operator replays): same job, no second one.
    for _ in 0..3 {
        let r = reg.webhook(&body, Some(SECRET));
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().expect("json");
        assert_eq!(v["action"], "duplicate");
        assert_eq!(v["job_id"].as_i64(), Some(id));
    }
    // Events that change nothing: ignored, no job.
    let pr = body.replace("refs/heads/main", "refs/pr/7");
    let v: Value = reg.webhook(&pr, Some(SECRET)).json().expect("json");
    assert_eq!(v["action"], "ignore");

    let job = reg.wait_job(id, Duration::from_secs(120));
    let published_in = t0.elapsed();
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["progress"], 1.0);
    assert_eq!(job["revision"], SHA);
    eprintln!("webhook → published: {:.2} s", published_in.as_secs_f64());
    assert_eq!(reg.get_json("/jobs")["total"], 1);

    // The Hub received one commit on the companion repo, with the artifact and a card.
    assert_eq!(hub.hub.created(), vec![COMPANION.to_string()]);
    let commits = hub.hub.commits();
    assert_eq!(commits.len(), 1);
    let c = &commits[0];
    assert_eq!(c.repo, COMPANION);
    assert_eq!(c.revision, "main");
    let names: Vec<&String> = c.files.keys().collect();
    assert_eq!(names, vec!["README.md", "tiny-llama-balanced.tnpk"]);
    let card = String::from_utf8(c.files["README.md"].clone()).expect("utf8");
    assert!(
        card.starts_with("---\nbase_model: \"acme/tiny-llama\"\nbase_model_relation: quantized\n"),
        "{card}"
    );
    assert!(
        card.contains("| `tiny-llama-balanced.tnpk` | balanced |"),
        "{card}"
    );
    let published = &c.files["tiny-llama-balanced.tnpk"];
    let key = registry_key(&reg);
    check_artifact(published, &key, &model);

    // A wrong key does not verify it.
    let other = tenpak::artifact::sign::generate()
        .expect("key")
        .verifying_key();
    let a = Artifact::open(Box::new(MemorySource::new(published.clone()))).expect("open");
    assert!(a.verify_signature(&other).is_err());

    // The Studio API serves the stored artifact, reassembled from the chunk store.
    let art_id = job["artifacts"][0]["id"]
        .as_str()
        .expect("artifact id")
        .to_string();
    let full = reg.get(&format!("/artifact/{art_id}"));
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(full.bytes().expect("body").as_ref(), published.as_slice());
    let cl = client();
    let url = format!("{}/artifact/{art_id}", reg.url);
    for (range, lo, hi) in [
        ("bytes=0-127", 0usize, 128usize),
        ("bytes=4000-9000", 4000, 9001),
    ] {
        let r = cl.get(&url).header("range", range).send().expect("range");
        assert_eq!(r.status().as_u16(), 206, "{range}");
        assert_eq!(
            r.bytes().expect("body").as_ref(),
            &published[lo..hi],
            "{range}"
        );
    }
    let n = published.len();
    let r = cl
        .get(&url)
        .header("range", "bytes=-100")
        .send()
        .expect("suffix");
    assert_eq!(r.bytes().expect("body").as_ref(), &published[n - 100..]);
    let r = cl
        .get(&url)
        .header("range", format!("bytes={n}-"))
        .send()
        .expect("416");
    assert_eq!(r.status().as_u16(), 416);
    assert_eq!(reg.get("/artifact/00").status().as_u16(), 404);

    // The Hub-compatible read API.
    let info = reg.get_json(&format!("/api/models/{COMPANION}"));
    assert_eq!(info["id"], COMPANION);
    let sib: Vec<&str> = info["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["rfilename"].as_str().expect("name"))
        .collect();
    assert_eq!(sib, vec!["tiny-llama-balanced.tnpk", "README.md"]);
    let resolve = format!(
        "{}/{COMPANION}/resolve/main/tiny-llama-balanced.tnpk",
        reg.url
    );
    let head = cl.head(&resolve).send().expect("HEAD");
    assert_eq!(head.status().as_u16(), 200);
    let h = head.headers();
    assert_eq!(
        h["x-repo-commit"].to_str().expect("commit"),
        info["sha"].as_str().expect("sha")
    );
    assert_eq!(h["x-linked-size"].to_str().expect("size"), n.to_string());
    assert_eq!(h["content-length"].to_str().expect("len"), n.to_string());
    assert_eq!(h["accept-ranges"], "bytes");
    let etag = h["etag"].to_str().expect("etag").to_string();
    assert_eq!(etag, h["x-linked-etag"].to_str().expect("linked etag"));
    assert_eq!(
        etag.trim_matches('"'),
        hex::encode(sha2::Sha256::digest(published)).as_str()
    );
    let r = cl
        .get(&resolve)
        .header("range", "bytes=128-1151")
        .header("if-range", &etag)
        .send()
        .expect("ranged resolve");
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().expect("body").as_ref(), &published[128..1152]);
    assert_eq!(
        cl.get(format!("{}/{COMPANION}/resolve/main/nope.bin", reg.url))
            .send()
            .expect("404")
            .status()
            .as_u16(),
        404
    );
    // tenpak's own HTTP reader streams it from the registry and verifies every chunk.
    let remote = Artifact::open_location(&resolve).expect("open over HTTP");
    remote.verify_signature(&key).expect("signature over HTTP");
    remote.verify_chunks(&|_| {}).expect("chunks over HTTP");

    // A second target of the same model: its kept tensors' chunks are already stored.
    let data_dir = tmp.path().join("data");
    let before = chunk_store_bytes(&data_dir);
    // Identical pieces (alignment padding) are stored once even within one artifact.
    assert!(
        before > n as u64 / 2 && before < n as u64 + 4096,
        "store {before} vs artifact {n}"
    );
    let r = cl
        .post(format!("{}/compress", reg.url))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({ "model_id": REPO, "target": "size" }))
        .send()
        .expect("compress");
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().expect("json");
    assert_eq!(v["revision"], SHA, "main resolved to the exact commit");
    let job2 = reg.wait_job(v["job_id"].as_i64().expect("id"), Duration::from_secs(120));
    assert_eq!(job2["state"], "done", "{job2}");
    let commits = hub.hub.commits();
    assert_eq!(commits.len(), 2);
    let size_art = &commits[1].files["tiny-llama-size.tnpk"];
    check_artifact(size_art, &key, &model);
    let after = chunk_store_bytes(&data_dir);
    let embed = 128 * 256 * 2; // bf16 embedding, kept as is in both
    assert!(
        after + embed as u64 <= before + size_art.len() as u64 + 8192,
        "shared chunks stored once: store grew {} for a {}-byte artifact",
        after - before,
        size_art.len()
    );

    // The Prometheus endpoint counts what happened: jobs by state, requests by route
    // pattern (not by path), stage durations, bytes served.
    let r = reg.get("/metrics");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("application/openmetrics-text"));
    let m = r.text().expect("text");
    for want in [
        r#"tenpak_jobs{state="done"} 2"#,
        r#"tenpak_jobs{state="failed"} 0"#,
        r#"tenpak_http_requests_total{route="/webhooks/hub",method="POST",status="401"} 1"#,
        r#"tenpak_http_requests_total{route="/webhooks/hub",method="POST",status="403"} 1"#,
        r#"tenpak_job_stage_duration_seconds_count{stage="pack"} 2"#,
        r#"tenpak_jobs_finished_total{outcome="published"} 2"#,
        "tenpak_http_response_bytes_total{route=\"/artifact/{id}\"}",
        "# EOF",
    ] {
        assert!(m.contains(want), "/metrics lacks {want}:\n{m}");
    }
}

#[test]
fn studio_api_auth_validation_and_paging() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    let cl = client();
    let url = format!("{}/compress", reg.url);
    let body = serde_json::json!({ "model_id": REPO, "revision": SHA });
    assert_eq!(
        cl.post(&url)
            .json(&body)
            .send()
            .expect("post")
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        cl.post(&url)
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .expect("post")
            .status()
            .as_u16(),
        403
    );
    for (bad, code) in [
        (serde_json::json!({ "model_id": "no-slash" }), 400),
        (
            serde_json::json!({ "model_id": REPO, "target": "tiny" }),
            400,
        ),
        (serde_json::json!({ "model_id": REPO, "extra": 1 }), 400),
        (serde_json::json!({ "model_id": "acme/missing" }), 404),
    ] {
        let r = cl
            .post(&url)
            .bearer_auth(API_TOKEN)
            .json(&bad)
            .send()
            .expect("post");
        assert_eq!(r.status().as_u16(), code, "{bad}");
    }
    assert_eq!(reg.get_json("/jobs")["total"], 0);
    assert_eq!(reg.get("/status/999").status().as_u16(), 404);
    assert_eq!(reg.get("/status/x").status().as_u16(), 400);
    let r = cl
        .post(&url)
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
    let r = cl
        .post(&url)
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .expect("post");
    assert_eq!(
        r.status().as_u16(),
        200,
        "same model, commit and targets: same job"
    );
    let keyfile = reg.get("/keys/registry.pub").text().expect("text");
    assert!(keyfile.starts_with("tenpak-ed25519-public "));
    let page = reg.get_json("/jobs?limit=1&offset=0");
    assert_eq!(page["jobs"].as_array().expect("jobs").len(), 1);
    assert_eq!(page["total"], 1);
    assert!(page["next"].is_null());
    assert_eq!(
        reg.get(&format!("/api/models/{COMPANION}"))
            .status()
            .as_u16(),
        404
    );
}

#[test]
fn killed_mid_job_restarts_and_completes_once() {
    let Fixture { tmp, model, hub } = fixture(HUB_TOKEN, false, hub::Mode::Regular);
    let data = tmp.path().join("data");
    let mut reg = Registry::start(&data, &hub.url, &[]);
    let id = reg.deliver();
    wait_downloads(&hub, 1);
    let mid = reg.get_json(&format!("/status/{id}"));
    assert_eq!(mid["state"], "running");
    assert_eq!(mid["stage"], "download");
    reg.kill();
    hub.hub.set_gate(true);
    assert!(hub.hub.commits().is_empty());

    let reg = Registry::start(&data, &hub.url, &[]);
    assert!(reg
        .log
        .lock()
        .expect("log")
        .iter()
        .any(|l| l.contains("requeued 1 job")));
    let job = reg.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 2);
    // A redelivery after completion does not make a new job either.
    let v: Value = reg
        .webhook(&content_update(REPO, SHA), Some(SECRET))
        .json()
        .expect("json");
    assert_eq!(v["action"], "duplicate");
    std::thread::sleep(Duration::from_millis(300));
    let commits = hub.hub.commits();
    assert_eq!(commits.len(), 1, "published exactly once");
    check_artifact(
        &commits[0].files["tiny-llama-balanced.tnpk"],
        &registry_key(&reg),
        &model,
    );
    // Nothing left in the work area.
    let work = data.join("work");
    assert!(std::fs::read_dir(&work).map_or(true, |mut d| d.next().is_none()));
}

#[test]
fn hub_errors_fail_the_job_with_a_reason_and_publish_nothing() {
    let Fixture { tmp, hub, .. } = fixture("a-different-token", true, hub::Mode::Regular);
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    // A commit the stand-in does not have: 404 from the Hub, no retry.
    let other = "0123456789abcdef0123456789abcdef01234567";
    let v: Value = reg
        .webhook(&content_update(REPO, other), Some(SECRET))
        .json()
        .expect("json");
    let job = reg.wait_job(v["job_id"].as_i64().expect("id"), Duration::from_secs(60));
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"], 1);
    assert!(
        job["error"]
            .as_str()
            .expect("error")
            .contains("acme/tiny-llama"),
        "{job}"
    );
    // The right commit, but the Hub refuses the registry's token: packing succeeds,
    // publishing fails with 401, nothing is committed.
    let v: Value = reg
        .webhook(&content_update(REPO, SHA), Some(SECRET))
        .json()
        .expect("json");
    let job = reg.wait_job(v["job_id"].as_i64().expect("id"), Duration::from_secs(120));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().expect("error").contains("401")
            || job["error"]
                .as_str()
                .expect("error")
                .to_lowercase()
                .contains("auth"),
        "{job}"
    );
    assert!(hub.hub.commits().is_empty());
    assert!(
        hub.hub
            .unauthorized
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

use sha2::Digest;
