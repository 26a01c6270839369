//! Load generator for a running `tenpak-registry` (issue #15's load figure): many
//! concurrent keep-alive connections posting webhook deliveries and reading artifact
//! ranges, with slowloris clients beside them, while the registry's RSS and open file
//! descriptors are sampled from `/proc`.
//!
//! ```text
//! cargo run --release -p tenpak-registry --example load -- \
//!     --url http://127.0.0.1:8787 --artifact /artifact/ID --secret S --pid PID \
//!     [--connections 512] [--slowloris 64] [--seconds 15]
//! ```
//!
//! Half of the connections post the same `repo.content` delivery again and again (after
//! the first, the duplicate path: signature check, parse, decision, an SQLite lookup and a
//! delivery row); the other half read random 1 MiB ranges of the artifact. Each slowloris
//! client sends a request line and then one header byte every 2 s, never finishing. The
//! report gives p50/p99/max latency per kind, throughput, errors, how many slowloris
//! connections the server closed, and RSS/fd peaks against the idle baseline. Plain HTTP/1.1
//! over tokio sockets, so the generator itself adds little overhead.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    url: String,
    artifact: String,
    secret: String,
    pid: Option<u32>,
    connections: usize,
    slowloris: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        artifact: String::new(),
        secret: String::new(),
        pid: None,
        connections: 512,
        slowloris: 64,
        seconds: 15,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let val = v[i + 1].clone();
        match v[i].as_str() {
            "--url" => a.url = val,
            "--artifact" => a.artifact = val,
            "--secret" => a.secret = val,
            "--pid" => a.pid = val.parse().ok(),
            "--connections" => a.connections = val.parse().unwrap_or(512),
            "--slowloris" => a.slowloris = val.parse().unwrap_or(64),
            "--seconds" => a.seconds = val.parse().unwrap_or(15),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    assert!(
        !a.url.is_empty() && !a.artifact.is_empty(),
        "--url and --artifact are needed"
    );
    a
}

/// Reads one HTTP/1.1 response (status line, headers, Content-Length body); returns the
/// status and the body length.
async fn response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, u64)> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0u64;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("closed in the headers"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut left = len;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let n = r.read(&mut buf[..left.min(64 << 10) as usize]).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed in the body"));
        }
        left -= n as u64;
    }
    Ok((status, len))
}

#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u64>>,
    bytes: AtomicU64,
    errors: AtomicU64,
    non_2xx: AtomicU64,
}

fn proc_status(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let a = args();
    let host = a
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // The artifact's length, for random ranges.
    let len = {
        let s = TcpStream::connect(&host).await.expect("connect");
        let mut r = BufReader::new(s);
        let req = format!(
            "HEAD {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            a.artifact
        );
        r.get_mut().write_all(req.as_bytes()).await.expect("write");
        let mut line = String::new();
        let mut len = 0u64;
        while r.read_line(&mut line).await.expect("read") > 0 {
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
            line.clear();
        }
        assert!(len > 0, "HEAD {} gave no length", a.artifact);
        len
    };
    let body = serde_json::json!({
        "event": { "action": "update", "scope": "repo.content" },
        "repo": { "type": "model", "name": "load/test-model", "id": "6512aa01c2d3e4f5a6b7c8d9",
                  "private": false, "headSha": "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c" },
        "updatedRefs": [{ "ref": "refs/heads/main", "oldSha": "8f0e4b1c2d3a4f5e6d7c8b9a0f1e2d3c4b5a6978",
                          "newSha": "c7a1f5f4e3b2a1908f7e6d5c4b3a29180f7e6d5c" }],
        "webhook": { "id": "6390e855e30d9209411de93b", "version": 3 }
    })
    .to_string();
    let baseline = a.pid.map(proc_status).unwrap_or((0, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let (hooks, ranges) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let peak = Arc::new(Mutex::new(baseline));
    let mut tasks = vec![];
    if let Some(pid) = a.pid {
        let (stop, peak) = (stop.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (rss, fds) = proc_status(pid);
                {
                    let mut p = peak.lock().expect("peak");
                    *p = (p.0.max(rss), p.1.max(fds));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let closed = Arc::new(AtomicU64::new(0));
    for k in 0..a.slowloris {
        let (host, stop, closed) = (host.clone(), stop.clone(), closed.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&host).await else {
                return;
            };
            let _ = s
                .write_all(format!("GET /jobs HTTP/1.1\r\nHost: {host}\r\nX-Slow-{k}: ").as_bytes())
                .await;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if s.write_all(b"a").await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await
                {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    let t0 = Instant::now();
    for c in 0..a.connections {
        let webhook = c % 2 == 0;
        let (host, stop) = (host.clone(), stop.clone());
        let tally = if webhook {
            hooks.clone()
        } else {
            ranges.clone()
        };
        let (body, secret, path) = (body.clone(), a.secret.clone(), a.artifact.clone());
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ c as u64;
            let mut conn: Option<BufReader<TcpStream>> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    match TcpStream::connect(&host).await {
                        Ok(s) => conn = Some(BufReader::new(s)),
                        Err(_) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let r = conn.as_mut().expect("conn");
                let req = if webhook {
                    format!(
                        "POST /webhooks/hub HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-Webhook-Secret: {secret}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let n = (1u64 << 20).min(len);
                    let start = seed % (len - n + 1);
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={start}-{}\r\n\r\n",
                        start + n - 1
                    )
                };
                let t = Instant::now();
                let res = async {
                    r.get_mut().write_all(req.as_bytes()).await?;
                    response(r).await
                }
                .await;
                match res {
                    Ok((status, n)) => {
                        if !(200..300).contains(&status) {
                            tally.non_2xx.fetch_add(1, Ordering::Relaxed);
                        }
                        tally.bytes.fetch_add(n, Ordering::Relaxed);
                        tally
                            .latencies_us
                            .lock()
                            .expect("lat")
                            .push(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => {
                        if !stop.load(Ordering::Relaxed) {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        conn = None;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let peak = *peak.lock().expect("peak");
    let report = |name: &str, t: &Tally| {
        let mut l = t.latencies_us.lock().expect("lat").clone();
        l.sort_unstable();
        serde_json::json!({
            "kind": name, "requests": l.len(), "per_s": l.len() as f64 / secs,
            "p50_ms": pct(&l, 0.5), "p99_ms": pct(&l, 0.99), "max_ms": pct(&l, 1.0),
            "mb_per_s": t.bytes.load(Ordering::Relaxed) as f64 / secs / 1e6,
            "errors": t.errors.load(Ordering::Relaxed), "non_2xx": t.non_2xx.load(Ordering::Relaxed),
        })
    };
    let out = serde_json::json!({
        "connections": a.connections, "slowloris": a.slowloris, "seconds": secs,
        "webhooks": report("webhook", &hooks), "ranges": report("range 1 MiB", &ranges),
        "slowloris_closed_by_server": closed.load(Ordering::Relaxed),
        "rss_kib": { "idle": baseline.0, "peak": peak.0 },
        "fds": { "idle": baseline.1, "peak": peak.1 },
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
