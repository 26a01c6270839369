//! `.tnpk` end to end: pack/unpack round trips, tamper and truncation detection, keys,
//! and streaming through the range server.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tenpak::artifact::{Artifact, FormatError};
use tenpak::dtype::DType;
use tenpak::Error;

use crate::util::{serve, tenpak, tenpak_ok, tiny_llama};

struct Packed {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    src: PathBuf,
    tnpk: PathBuf,
    key: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn packed(extra: &[&str]) -> Packed {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let src = dir.join("src");
    tiny_llama(&src, DType::BF16);
    let key = dir.join("key");
    tenpak_ok(&["keygen", "-o", s(&key)]);
    let tnpk = dir.join("m.tnpk");
    let mut args = vec!["pack", s(&src), "-o", s(&tnpk), "--sign", s(&key)];
    args.extend_from_slice(extra);
    tenpak_ok(&args);
    Packed {
        _tmp: tmp,
        dir,
        src,
        tnpk,
        key,
    }
}

fn open_err(p: &Path) -> FormatError {
    match Artifact::open_location(s(p)) {
        Err(Error::Artifact { error, .. }) => error,
        Err(e) => panic!("expected an artifact error, got {e}"),
        Ok(_) => panic!("tampered artifact opened"),
    }
}

#[test]
fn unpack_equals_quantize_bit_for_bit() {
    let p = packed(&["--codec", "int4_residual", "--outliers", "0.5"]);
    let un = p.dir.join("un");
    tenpak_ok(&[
        "unpack",
        s(&p.tnpk),
        "-o",
        s(&un),
        "--key",
        &format!("{}.pub", s(&p.key)),
    ]);
    let q = p.dir.join("q");
    tenpak_ok(&[
        "quantize",
        s(&p.src),
        "-o",
        s(&q),
        "--codec",
        "int4_residual",
        "--outliers",
        "0.5",
    ]);
    assert_eq!(
        std::fs::read(un.join("model.safetensors")).expect("un"),
        std::fs::read(q.join("model.safetensors")).expect("q")
    );
    for f in ["config.json", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(un.join(f)).expect("un"),
            std::fs::read(p.src.join(f)).expect("src"),
            "{f}"
        );
    }
    let info: Value =
        serde_json::from_str(&tenpak_ok(&["info", s(&p.tnpk), "--json"])).expect("json");
    assert_eq!(info["tensors"].as_array().expect("t").len(), 20);
    assert!(info["digest"].as_str().expect("d").starts_with("sha256:"));
    assert_eq!(info["signers"].as_array().expect("s").len(), 1);
    // Packing is deterministic: same content, same digest.
    let again = p.dir.join("again.tnpk");
    tenpak_ok(&[
        "pack",
        s(&p.src),
        "-o",
        s(&again),
        "--codec",
        "int4_residual",
        "--outliers",
        "0.5",
        "--sign",
        s(&p.key),
    ]);
    let a = Artifact::open_location(s(&p.tnpk)).expect("a");
    let b = Artifact::open_location(s(&again)).expect("b");
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn every_tampered_region_is_caught_and_named() {
    let p = packed(&[]);
    let bytes = std::fs::read(&p.tnpk).expect("read");
    let art = Artifact::open_location(s(&p.tnpk)).expect("open");
    let m = art.manifest().clone();
    let h = *art.header();
    drop(art);
    let bad = p.dir.join("bad.tnpk");
    let write = |b: &[u8]| std::fs::write(&bad, b).expect("write");

    // One byte in the chunk of a quantized tensor: named by tensor and chunk.
    let t = m
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.1.mlp.up_proj.weight")
        .expect("tensor");
    let c = t.chunks[0] as usize;
    let mut b = bytes.clone();
    b[m.chunks[c].offset as usize + 100] ^= 0x40;
    write(&b);
    let art = Artifact::open_location(s(&bad)).expect("manifest intact");
    match art.load_tensor(&t.name) {
        Err(Error::Artifact {
            error: FormatError::ChunkDigest { chunk, owner, .. },
            ..
        }) => {
            assert_eq!((chunk, owner.as_str()), (c, t.name.as_str()))
        }
        other => panic!("expected ChunkDigest, got {other:?}"),
    }
    let out = tenpak(&["verify", s(&bad)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&t.name) && err.contains(&format!("chunk {c}")),
        "{err}"
    );
    // The other tensors still load: damage is contained and located.
    assert!(art.load_tensor("model.layers.0.mlp.up_proj.weight").is_ok());

    // Manifest byte: digest mismatch.
    let mut b = bytes.clone();
    b[h.manifest_offset as usize + 20] ^= 1;
    write(&b);
    assert!(matches!(open_err(&bad), FormatError::ManifestDigest { .. }));

    // Signature byte: opens, but the signature check fails.
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    write(&b);
    let art = Artifact::open_location(s(&bad)).expect("opens");
    let pk = tenpak::artifact::sign::load_public_key(&p.dir.join("key.pub")).expect("pk");
    assert!(matches!(
        art.verify_signature(&pk),
        Err(Error::Artifact {
            error: FormatError::BadSignature { .. },
            ..
        })
    ));

    // Wrong key.
    let other = p.dir.join("other");
    tenpak_ok(&["keygen", "-o", s(&other)]);
    let out = tenpak(&["verify", s(&p.tnpk), "--key", &format!("{}.pub", s(&other))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed by key"));

    // Truncated anywhere: a clear error, never a panic.
    for cut in [0, 10, 127, 128, 5000, bytes.len() / 2, bytes.len() - 1] {
        write(&bytes[..cut]);
        match Artifact::open_location(s(&bad)) {
            Err(Error::Artifact {
                error: FormatError::Layout(m),
                ..
            }) => {
                assert!(
                    m.contains("truncated") || m.contains("shorter"),
                    "{cut}: {m}"
                )
            }
            Err(e) => panic!("{cut}: unexpected {e}"),
            Ok(_) => panic!("{cut}: truncated file opened"),
        }
    }
    // Header byte: the magic.
    let mut b = bytes.clone();
    b[1] = b'X';
    write(&b);
    assert_eq!(open_err(&bad), FormatError::BadMagic);
    // The good file verifies fully.
    tenpak_ok(&["verify", s(&p.tnpk), "--key", &format!("{}.pub", s(&p.key))]);
}

#[test]
fn identical_tensors_are_stored_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    tiny_llama(&src, DType::BF16);
    let tnpk = tmp.path().join("m.tnpk");
    let r: Value = serde_json::from_str(&tenpak_ok(&["pack", s(&src), "-o", s(&tnpk), "--json"]))
        .expect("json");
    // The norms of the tiny model are all ones: identical chunks.
    assert!(r["deduplicated_bytes"].as_u64().expect("d") > 0);
    let art = Artifact::open_location(s(&tnpk)).expect("open");
    let a = art
        .manifest()
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.0.input_layernorm.weight")
        .expect("a");
    let b = art
        .manifest()
        .tensors
        .iter()
        .find(|t| t.name == "model.norm.weight")
        .expect("b");
    assert_eq!(a.chunks, b.chunks);
    assert_eq!(
        art.load_tensor("model.norm.weight").expect("load"),
        vec![1.0; 256]
    );
}

#[test]
fn streaming_unpack_fetches_only_what_it_needs() {
    let p = packed(&[]);
    let (url, served) = serve(&p.tnpk);
    let art = Artifact::open_location(s(&p.tnpk)).expect("open");
    let m = art.manifest();
    let h = art.header();
    let wanted: Vec<_> = m
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("model.layers.0."))
        .collect();
    let chunk_bytes: u64 = wanted
        .iter()
        .flat_map(|t| &t.chunks)
        .map(|&c| m.chunks[c as usize].length)
        .sum();
    let padding = wanted.iter().map(|t| t.chunks.len() as u64).sum::<u64>() * m.alignment;
    let meta = 128 + h.manifest_len + h.signature_len + 1; // + the 1-byte range probe
    let out = p.dir.join("layer0");
    tenpak_ok(&[
        "unpack",
        &url,
        "-o",
        s(&out),
        "--tensors",
        "model.layers.0.*",
        "--key",
        &format!("{}.pub", s(&p.key)),
    ]);
    let n = served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        n >= chunk_bytes + meta - 1,
        "served {n} < needed {}",
        chunk_bytes + meta
    );
    assert!(
        n <= chunk_bytes + meta + padding,
        "served {n}, more than header+manifest+chunks {}",
        chunk_bytes + meta + padding
    );
    assert!(
        n < art.len() / 2,
        "one layer of two is under half the file: {n} of {}",
        art.len()
    );
    let got = tenpak::source::HfModelDir::open(&out).expect("open");
    assert_eq!(
        tenpak::source::TensorSource::tensors(&got).len(),
        wanted.len()
    );
    // And the whole artifact over HTTP equals the local unpack.
    let (all_http, all_local) = (p.dir.join("http"), p.dir.join("local"));
    tenpak_ok(&["unpack", &url, "-o", s(&all_http)]);
    tenpak_ok(&["unpack", s(&p.tnpk), "-o", s(&all_local)]);
    assert_eq!(
        std::fs::read(all_http.join("model.safetensors")).expect("h"),
        std::fs::read(all_local.join("model.safetensors")).expect("l")
    );
    let info = tenpak_ok(&["info", &url]);
    assert!(info.contains("digest") && info.contains(art.digest()));
}

#[test]
fn range_server_speaks_rfc9110() {
    let p = packed(&[]);
    let (url, _) = serve(&p.tnpk);
    let len = std::fs::metadata(&p.tnpk).expect("m").len();
    let bytes = std::fs::read(&p.tnpk).expect("read");
    let c = reqwest::blocking::Client::new();
    let get = |range: Option<&str>, if_range: Option<&str>| {
        let mut r = c.get(&url);
        if let Some(v) = range {
            r = r.header("Range", v);
        }
        if let Some(v) = if_range {
            r = r.header("If-Range", v);
        }
        r.send().expect("send")
    };
    let full = get(None, None);
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let etag = full.headers()["etag"].to_str().expect("etag").to_string();
    assert_eq!(full.bytes().expect("body").len() as u64, len);
    let r = get(Some("bytes=10-19"), None);
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{len}").as_str()
    );
    assert_eq!(&r.bytes().expect("b")[..], &bytes[10..20]);
    let r = get(Some("bytes=-7"), None);
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().expect("b")[..], &bytes[bytes.len() - 7..]);
    let r = get(Some(&format!("bytes={}-", len - 3)), None);
    assert_eq!(&r.bytes().expect("b")[..], &bytes[bytes.len() - 3..]);
    let r = get(Some(&format!("bytes={len}-")), None);
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    assert_eq!(get(Some("bytes=0-3"), Some(&etag)).status(), 206);
    assert_eq!(get(Some("bytes=0-3"), Some("\"stale\"")).status(), 200);
    let head = c.head(&url).send().expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], len.to_string().as_str());
    assert_eq!(head.bytes().expect("b").len(), 0);
}

#[test]
fn fuzz_seed_corpus_never_panics() {
    // The fuzz targets' inputs, run through the same entry points in every test run (the
    // fuzzers themselves need `cargo fuzz`; see fuzz/).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let files = |d: &str| -> Vec<Vec<u8>> {
        std::fs::read_dir(root.join(d))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let tnpk = files("tnpk_open");
    assert!(!tnpk.is_empty(), "seed corpus missing");
    for data in tnpk {
        let art = Artifact::open(Box::new(tenpak::artifact::source::MemorySource::new(
            data.clone(),
        )))
        .expect("seed opens");
        for t in &art.manifest().tensors {
            art.load_tensor(&t.name).expect("seed tensors load");
        }
        // Every single-byte corruption of the header and manifest is an error or a valid
        // artifact, never a panic.
        for i in (0..data.len()).step_by(7) {
            let mut d = data.clone();
            d[i] ^= 0x5A;
            if let Ok(a) = Artifact::open(Box::new(tenpak::artifact::source::MemorySource::new(d)))
            {
                for t in &a.manifest().tensors {
                    let _ = a.load_tensor(&t.name);
                }
            }
        }
    }
    // The structure-aware target's seeds: manifest and data region, laid out again with the
    // digest recomputed; every byte flip of the manifest reaches validation or decoding.
    let structured = files("tnpk_structured");
    assert!(!structured.is_empty(), "structured seed corpus missing");
    for data in structured {
        let n = u32::from_le_bytes(data[..4].try_into().expect("4")) as usize;
        let (m, region) = data[4..].split_at(n);
        let file = tenpak::artifact::format::assemble(region, m, &[]);
        let art = Artifact::open(Box::new(tenpak::artifact::source::MemorySource::new(file)))
            .expect("structured seed opens");
        for t in &art.manifest().tensors {
            art.load_tensor(&t.name)
                .expect("structured seed tensors load");
        }
        for i in 0..m.len() {
            let mut m = m.to_vec();
            m[i] ^= 0x01;
            let file = tenpak::artifact::format::assemble(region, &m, &[]);
            if let Ok(a) =
                Artifact::open(Box::new(tenpak::artifact::source::MemorySource::new(file)))
            {
                for t in &a.manifest().tensors {
                    let _ = a.load_tensor(&t.name);
                }
            }
        }
    }
    for data in files("gguf_header") {
        tenpak::source::gguf::GgufFile::check_bytes(&data).expect("seed gguf parses");
    }
    for data in files("codec_decode") {
        tenpak::codec::decode_vec(&data).expect("seed encoding decodes");
    }
}

/// A hostile file: a manifest of our choosing with a correct digest around `data`.
fn hostile(data: &[u8], manifest: &Value, sig: &[u8]) -> Vec<u8> {
    let bytes = serde_json::to_vec(manifest).expect("json");
    tenpak::artifact::format::assemble(data, &bytes, sig)
}

fn chunk_of(data: &[u8]) -> Value {
    serde_json::json!({"offset": 128, "length": data.len(), "sha256": tenpak::artifact::format::sha256_hex(data)})
}

fn one_tensor(data: &[u8], tensor: Value) -> Value {
    serde_json::json!({
        "alignment": 64, "base": null, "chunk_size": 4194304, "chunks": [chunk_of(data)],
        "created_by": "hostile", "files": [], "format": "tnpk", "metadata": {},
        "tensors": [tensor]
    })
}

#[test]
fn hostile_manifests_cannot_make_a_reader_allocate_what_the_file_does_not_hold() {
    let open =
        |b: Vec<u8>| Artifact::open(Box::new(tenpak::artifact::source::MemorySource::new(b)));
    // An int4 header claiming 2^20 x 2^20 weights in 4 KiB: before the check, the reader
    // allocated 4 TiB of f32 (an abort, not an error) before the decoder saw the bytes short.
    let mut data = vec![0u8; 4096];
    let h = tenpak::codec::Header::new(tenpak::codec::int4::ID, 1 << 20, 1 << 20);
    data[..16].copy_from_slice(&h.to_bytes());
    data[2..4].copy_from_slice(&128u16.to_le_bytes());
    let m = one_tensor(
        &data,
        serde_json::json!({"chunks": [0], "dtype": "bf16", "encoded_length": 4096,
            "encoding": {"codec": "int4", "group": 128, "symmetric": false, "refine_iters": 0,
                         "outliers_ppm": 0},
            "name": "w", "shape": [1u64 << 20, 1u64 << 20]}),
    );
    let art = open(hostile(&data, &m, &[])).expect("the manifest itself is consistent");
    match art.load_tensor("w") {
        Err(Error::CorruptEncoding { .. }) => {}
        other => panic!(
            "expected a corrupt-encoding error, got {:?}",
            other.map(|v| v.len())
        ),
    }
    // One chunk referenced a million times: 4 GiB asked of a 4 KiB file. Refused at open.
    let m = one_tensor(
        &data,
        serde_json::json!({"chunks": vec![0; 1 << 20], "dtype": "bf16",
            "encoded_length": 4096u64 << 20, "encoding": {"codec": "raw"},
            "name": "w", "shape": [2048u64 << 20]}),
    );
    match open(hostile(&data, &m, &[])) {
        Err(Error::Artifact {
            error: FormatError::Manifest(e),
            ..
        }) => assert!(e.contains("decompression bomb"), "{e}"),
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|a| a.digest().to_string())
        ),
    }
}

#[test]
fn a_signature_is_checked_before_the_manifest_is_parsed() {
    use ed25519_dalek::SigningKey;
    let ours = SigningKey::from_bytes(&[7; 32]);
    let theirs = SigningKey::from_bytes(&[9; 32]);
    // Not even JSON, but with the right digest and signed by someone.
    let garbage = b"{\"format\": not json at all".to_vec();
    let sha: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        &garbage,
    ))
    .into();
    let sig = tenpak::artifact::sign::sign_block(&[&theirs], &sha);
    let file = tenpak::artifact::format::assemble(&[], &garbage, &sig);
    let src = || Box::new(tenpak::artifact::source::MemorySource::new(file.clone()));
    // Trusting our key only: refused for the signature; the manifest never reached the parser.
    assert!(matches!(
        Artifact::open_verified(src(), &ours.verifying_key()),
        Err(Error::Artifact {
            error: FormatError::NotSignedBy { .. },
            ..
        })
    ));
    // A signature by the key that does not match these manifest bytes: refused too.
    let forged = tenpak::artifact::sign::sign_block(&[&ours], &[0; 32]);
    let file = tenpak::artifact::format::assemble(&[], &garbage, &forged);
    assert!(matches!(
        Artifact::open_verified(
            Box::new(tenpak::artifact::source::MemorySource::new(file)),
            &ours.verifying_key()
        ),
        Err(Error::Artifact {
            error: FormatError::BadSignature { .. },
            ..
        })
    ));
    // The signer's key passes the signature and only then meets the bad manifest.
    assert!(matches!(
        Artifact::open_verified(src(), &theirs.verifying_key()),
        Err(Error::Artifact {
            error: FormatError::Manifest(_),
            ..
        })
    ));
}

/// A hostile range server (stand-in for any HTTP host that lies): answers every range
/// request with what `answer` gives (status line and headers, then a body), one
/// connection per request.
fn liar(answer: impl Fn(u64, u64) -> (String, Vec<u8>) + Send + 'static) -> String {
    tenpak::serve::scripted_server(move |start, end| {
        let (head, body) = answer(start, end);
        let mut out = format!(
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    })
}

#[test]
fn a_lying_range_server_gives_errors_not_allocations_or_wrong_bytes() {
    use tenpak::artifact::source::{HttpOptions, HttpSource, RangeSource};
    let opts = || HttpOptions {
        attempts: 1,
        ..Default::default()
    };
    // A total of 2^60 bytes: opens (a length is only a claim), but a header read asks for
    // 128 bytes and gets a 206 of the right range only; the claimed manifest is capped.
    let total = 1u64 << 60;
    let url = liar(move |s, e| {
        let mut head = vec![0u8; (e - s + 1).min(1 << 20) as usize];
        if s == 0 && head.len() >= 128 {
            let h = tenpak::artifact::format::Header {
                minor: 2,
                manifest_offset: 128,
                manifest_len: total - 1000,
                signature_offset: total - 872,
                signature_len: 872,
                manifest_sha256: [0; 32],
            };
            head[..128].copy_from_slice(&h.to_bytes());
        }
        (
            format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{e}/{total}"),
            head,
        )
    });
    let src = HttpSource::open(&url, opts()).expect("opens");
    assert_eq!(src.len(), total);
    match Artifact::open(Box::new(src)) {
        Err(Error::Artifact {
            error: FormatError::Layout(m),
            ..
        }) => assert!(m.contains("manifest length"), "{m}"),
        other => panic!("expected a layout error, got {:?}", other.map(|_| ())),
    }
    // Another range than asked for: refused, not returned under the asked range's name.
    let url = liar(|s, e| {
        let (s2, e2) = if s == 0 { (0, 0) } else { (s + 1, e + 1) };
        (
            format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s2}-{e2}/100000"),
            vec![1; (e2 - s2 + 1) as usize],
        )
    });
    let src = HttpSource::open(&url, opts()).expect("opens");
    let err = src.read_ranges(&[(10, 10)]).expect_err("wrong range");
    assert!(err.to_string().contains("answered Content-Range"), "{err}");
    // Short and long bodies for the right range.
    for extra in [-3i64, 5] {
        let url = liar(move |s, e| {
            let n = if s == 0 {
                1
            } else {
                (e - s + 1) as i64 + extra
            };
            (
                format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{e}/100000"),
                vec![1; n as usize],
            )
        });
        let src = HttpSource::open(&url, opts()).expect("opens");
        assert!(src.read_ranges(&[(10, 10)]).is_err(), "extra {extra}");
    }
    // A first answer that is not bytes 0-0 of a known total.
    for cr in ["bytes 0-0/*", "bytes 5-5/100", "bytes 0-0/0", "bytes 0-9/5"] {
        let cr = cr.to_string();
        let url = liar(move |_, _| {
            (
                format!("HTTP/1.1 206 Partial Content\r\nContent-Range: {cr}"),
                vec![1],
            )
        });
        assert!(HttpSource::open(&url, opts()).is_err());
    }
}
