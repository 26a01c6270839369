//! The tests' local Hub stand-in as a program, for benchmarks: serves one model
//! directory as `REPO` at commit `SHA` and accepts companion-repo commits with `TOKEN`.
//!
//! `cargo run --release -p tenpak-registry --example hub_standin -- REPO SHA DIR TOKEN [MODE]`
//! with MODE `regular` (files inline, the default), `xet` (LFS batch answers `xet`; a real
//! Xet CAS server, xet-client's LocalServer, runs in this process), `basic` or
//! `multipart` (LFS transfers, parts of 8 MiB). Prints `listening on http://127.0.0.1:PORT`
//! and serves until killed; each commit received is logged as `commit REPO FILE=BYTES ...`.

#[path = "../tests/common/cas.rs"]
mod cas;
#[path = "../../tests/it/hub_standin.rs"]
mod hub;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (repo, sha, dir, token, mode) = match a.as_slice() {
        [r, s, d, t] => (r, s, d, t, "regular"),
        [r, s, d, t, m] => (r, s, d, t, m.as_str()),
        _ => {
            eprintln!("usage: hub_standin REPO SHA DIR TOKEN [regular|xet|basic|multipart]");
            std::process::exit(2);
        }
    };
    let mode = match mode {
        "regular" => hub::Mode::Regular,
        "xet" => hub::Mode::Xet {
            cas_url: cas::start_cas(),
        },
        "basic" => hub::Mode::LfsBasic,
        "multipart" => hub::Mode::LfsMultipart { part_size: 8 << 20 },
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    let running = hub::start_with(
        vec![hub::ModelRepo {
            repo: repo.clone(),
            sha: sha.clone(),
            dir: dir.into(),
        }],
        token,
        true,
        mode,
    );
    println!("listening on {}", running.url);
    let mut seen = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let commits = running.hub.commits();
        for c in &commits[seen..] {
            let files: Vec<String> = c
                .files
                .iter()
                .map(|(k, v)| format!("{k}={}", v.len()))
                .chain(
                    c.lfs_files
                        .iter()
                        .map(|(k, (_, n))| format!("{k}={n}(lfs)")),
                )
                .collect();
            println!("commit {} {}", c.repo, files.join(" "));
        }
        seen = commits.len();
    }
}
