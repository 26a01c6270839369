//! Publishing the way the real Hub accepts large files: through Xet (the stand-in's LFS
//! batch answers `transfer: "xet"` and its write token points at a real Xet CAS server,
//! xet-client's `LocalServer`, so the bytes go through Hugging Face's own Xet protocol
//! code), and through classic LFS `basic` and `multipart` transfers. In every mode the
//! companion commit carries the `.tnpk` as an `lfsFile` (the stand-in refuses it inline),
//! and the published file downloads back through the Hub API byte-identical and verifies.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::hub::{self, Mode};
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tenpak::artifact::source::MemorySource;
use tenpak::artifact::Artifact;

use common::cas::start_cas;

/// The Xet file hash of `bytes` (what the CAS server knows the file by).
fn xet_hash(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ctx = xet_runtime::core::XetContext::default().expect("xet context");
        let info = xet::legacy::hash_files_async(&ctx, vec![p.display().to_string()])
            .await
            .expect("hash");
        info[0].hash().to_string()
    })
}

fn key_of(reg: &Registry) -> ed25519_dalek::VerifyingKey {
    let hex = reg.get_json("/keys")["keys"][0]["public_key"]
        .as_str()
        .expect("key")
        .to_string();
    let b: [u8; 32] = hex::decode(hex).expect("hex").try_into().expect("32");
    ed25519_dalek::VerifyingKey::from_bytes(&b).expect("key")
}

/// Downloads `file` of the companion repo through the Hub API with tenpak's Hub client.
fn download_back(hub_url: &str, cache: &std::path::Path, file: &str) -> Vec<u8> {
    let h = tenpak::hub::Hub::new(&tenpak::hub::HubConfig {
        endpoint: Some(hub_url.to_string()),
        token: Some(HUB_TOKEN.into()),
        cache_dir: Some(cache.to_path_buf()),
        read_timeout: None,
    })
    .expect("hub");
    let path = tenpak::hub::block_on(h.download_file(COMPANION, "main", file))
        .expect("runtime")
        .expect("download");
    std::fs::read(path).expect("read")
}

fn check(bytes: &[u8], key: &ed25519_dalek::VerifyingKey) {
    let a = Artifact::open(Box::new(MemorySource::new(bytes.to_vec()))).expect("open");
    a.verify_signature(key).expect("signature");
    a.verify_chunks(&|_| {}).expect("chunks");
}

fn publish(reg: &Registry) -> Value {
    reg.wait_job(reg.deliver(), Duration::from_secs(120))
}

#[test]
fn xet_publish_downloads_back_and_a_restart_resends_almost_nothing() {
    let Fixture { tmp, hub, .. } = fixture(
        HUB_TOKEN,
        true,
        Mode::Xet {
            cas_url: start_cas(),
        },
    );
    // Commits wait at the gate: the registry is killed after its Xet upload finished
    // and before the commit landed, the worst moment for a crash.
    hub.hub.set_commit_gate(false);
    let data = tmp.path().join("data");
    let mut reg = Registry::start(&data, &hub.url, &[]);
    let id = reg.deliver();
    let t0 = Instant::now();
    while hub.hub.commit_requests.load(Ordering::Relaxed) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no commit arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.kill();
    // The killed process's commit never lands: its request may still be held at the
    // gate on the server side, so it is released as refused.
    hub.hub.drop_held.store(true, Ordering::SeqCst);
    hub.hub.set_commit_gate(true);
    let t0 = Instant::now();
    while hub.hub.dropped.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    hub.hub.drop_held.store(false, Ordering::SeqCst);
    assert!(
        hub.hub.commits().is_empty(),
        "the killed attempt committed nothing"
    );

    let reg = Registry::start(&data, &hub.url, &[]);
    let job = reg.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 2);
    let up = &job["upload"];
    assert_eq!(up["transfer"], "xet", "{job}");
    let total = up["bytes"].as_u64().expect("bytes");
    let sent = up["bytes_sent"].as_u64().expect("sent");
    eprintln!("second attempt: {sent} of {total} bytes sent");
    assert!(
        sent * 10 < total,
        "the CAS had the chunks: {sent} of {total} bytes re-sent"
    );

    let commits = hub.hub.commits();
    assert_eq!(commits.len(), 1);
    let c = &commits[0];
    assert!(c.files.contains_key("README.md"), "the card travels inline");
    let (oid, size) = c.lfs_files["tiny-llama-balanced.tnpk"].clone();
    // The stored artifact, its Xet hash, and the download back through the Hub API
    // (HEAD with X-Xet-Hash → xet-read-token → the CAS server).
    let art = job["artifacts"][0]["id"].as_str().expect("id").to_string();
    let bytes = reg
        .get(&format!("/artifact/{art}"))
        .bytes()
        .expect("artifact")
        .to_vec();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), oid);
    hub.hub.register_xet(&oid, &xet_hash(&bytes));
    let back = download_back(&hub.url, &tmp.path().join("dl"), "tiny-llama-balanced.tnpk");
    assert!(back == bytes, "downloaded back byte-identical");
    check(&back, &key_of(&reg));
}

#[test]
fn lfs_basic_and_multipart_publish_and_download_back() {
    for mode in [Mode::LfsBasic, Mode::LfsMultipart { part_size: 100_000 }] {
        let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, mode.clone());
        let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
        let job = publish(&reg);
        assert_eq!(job["state"], "done", "{mode:?}: {job}");
        let want = if mode == Mode::LfsBasic {
            "lfs_basic"
        } else {
            "lfs_multipart"
        };
        assert_eq!(job["upload"]["transfer"], want);
        let total = job["upload"]["bytes"].as_u64().expect("bytes");
        assert_eq!(job["upload"]["bytes_sent"].as_u64(), Some(total));
        let commits = hub.hub.commits();
        assert_eq!(commits.len(), 1);
        let (oid, size) = commits[0].lfs_files["tiny-llama-balanced.tnpk"].clone();
        assert!(hub.hub.lfs_bytes_received() >= size);
        let back = download_back(&hub.url, &tmp.path().join("dl"), "tiny-llama-balanced.tnpk");
        assert_eq!(hex::encode(Sha256::digest(&back)), oid);
        check(&back, &key_of(&reg));

        // The same object again (another registry, same model): the server has it, the
        // batch answer carries no upload action, nothing is re-sent.
        let received = hub.hub.lfs_bytes_received();
        let h = tenpak::hub::Hub::new(&tenpak::hub::HubConfig {
            endpoint: Some(hub.url.clone()),
            token: Some(HUB_TOKEN.into()),
            cache_dir: Some(tmp.path().join("c2")),
            read_timeout: None,
        })
        .expect("hub");
        let f = tmp.path().join("again.tnpk");
        std::fs::write(&f, &back).expect("write");
        let r = tenpak::hub::block_on(h.commit_files(
            COMPANION,
            vec![tenpak::hub::Upload::File {
                path_in_repo: "again.tnpk".into(),
                source: f,
            }],
            "again",
            None,
        ))
        .expect("runtime")
        .expect("commit");
        assert_eq!(r.bytes_sent, 0, "{mode:?}");
        assert_eq!(hub.hub.lfs_bytes_received(), received);
        assert_eq!(hub.hub.commits().len(), 2);

        // A new object: every byte sent, progress reported along the way.
        let mut other = back.clone();
        other.extend_from_slice(b"one more block of bytes");
        let f = tmp.path().join("other.tnpk");
        std::fs::write(&f, &other).expect("write");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ev = events.clone();
        let r = tenpak::hub::block_on(h.commit_files(
            COMPANION,
            vec![tenpak::hub::Upload::File {
                path_in_repo: "other.tnpk".into(),
                source: f,
            }],
            "other",
            Some(std::sync::Arc::new(move |p| {
                ev.lock().expect("lock").push(p)
            })),
        ))
        .expect("runtime")
        .expect("commit");
        assert_eq!(r.bytes_sent, other.len() as u64);
        let events = events.lock().expect("lock");
        let last = events.last().expect("progress events");
        assert_eq!(
            (last.bytes_done, last.bytes_total),
            (other.len() as u64, other.len() as u64)
        );
        assert!(events
            .windows(2)
            .all(|w| w[0].bytes_sent <= w[1].bytes_sent));
        if let Mode::LfsMultipart { part_size } = mode {
            assert!(events.len() as u64 >= (other.len() as u64).div_ceil(part_size));
        }
    }
}

#[test]
fn inline_tnpk_is_refused_where_the_hub_wants_lfs() {
    // A client that ignored preupload's "lfs" would be refused, as by the real Hub.
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = hub::start_with(vec![], HUB_TOKEN, true, Mode::LfsBasic);
    let cl = client();
    let r = cl
        .post(format!("{}/api/repos/create", hub.url))
        .bearer_auth(HUB_TOKEN)
        .json(&serde_json::json!({ "name": "x-tnpk", "organization": "acme", "type": "model" }))
        .send()
        .expect("create");
    assert!(r.status().is_success());
    let body = format!(
        "{}\n{}\n",
        serde_json::json!({ "key": "header", "value": { "summary": "s" } }),
        serde_json::json!({ "key": "file", "value": { "path": "a.tnpk", "content": "AAAA", "encoding": "base64" } })
    );
    let r = cl
        .post(format!("{}/api/models/acme/x-tnpk/commit/main", hub.url))
        .bearer_auth(HUB_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .expect("commit");
    assert_eq!(r.status().as_u16(), 400);
    drop(tmp);
}
