//! The HTTP range source against a hostile server (the stand-in for any host or CDN that
//! lies). The input is `mode byte | file bytes`: the server serves the file, lying as the
//! mode's bits say (a bogus total, short or long bodies, another range than asked, 200
//! instead of 206, a Content-Range without a total). Opening and loading every tensor must
//! end in an artifact or an error: no panic, no allocation beyond the bytes that arrive.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use tenpak::artifact::source::{HttpOptions, HttpSource};
use tenpak::artifact::Artifact;

static INPUT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn answer(start: u64, end: u64) -> Vec<u8> {
    let input = INPUT.lock().map(|g| g.clone()).unwrap_or_default();
    let (mode, file) = input.split_first().map_or((0, &[][..]), |(m, f)| (*m, f));
    let len = file.len() as u64;
    let total = if mode & 1 != 0 { len.saturating_mul(1 << 20) + 7 } else { len };
    let (s, e) = if mode & 8 != 0 { (start + 1, end + 1) } else { (start, end) };
    let mut body: Vec<u8> = file
        .get(s.min(len) as usize..(e.saturating_add(1)).min(len) as usize)
        .unwrap_or_default()
        .to_vec();
    if mode & 2 != 0 {
        body.truncate(body.len() / 2);
    }
    if mode & 4 != 0 {
        body.extend_from_slice(&[0x5a; 100]);
    }
    let status = if mode & 16 != 0 { "200 OK" } else { "206 Partial Content" };
    let total = if mode & 32 != 0 { "*".to_string() } else { total.to_string() };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Range: bytes {s}-{e}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

fn server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| tenpak::serve::scripted_server(answer))
}

fuzz_target!(|data: &[u8]| {
    let url = server();
    if let Ok(mut g) = INPUT.lock() {
        *g = data.to_vec();
    }
    let opts = HttpOptions {
        attempts: 1,
        parallel: 2,
        ..Default::default()
    };
    let Ok(src) = HttpSource::open(url, opts) else { return };
    if let Ok(art) = Artifact::open(Box::new(src)) {
        for t in &art.manifest().tensors {
            let _ = art.load_tensor(&t.name);
        }
    }
});
