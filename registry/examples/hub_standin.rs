//! The tests' local Hub stand-in as a program, for benchmarks: serves one model
//! directory as `REPO` at commit `SHA` and accepts companion-repo commits with `TOKEN`.
//!
//! `cargo run --release -p tenpak-registry --example hub_standin -- REPO SHA DIR TOKEN`
//! prints `listening on http://127.0.0.1:PORT`, then serves until killed; each commit
//! it receives is logged as `commit REPO FILE=BYTES ...`.

#[path = "../../tests/it/hub_standin.rs"]
mod hub;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [repo, sha, dir, token] = a.as_slice() else {
        eprintln!("usage: hub_standin REPO SHA DIR TOKEN");
        std::process::exit(2);
    };
    let running = hub::start(
        vec![hub::ModelRepo {
            repo: repo.clone(),
            sha: sha.clone(),
            dir: dir.into(),
        }],
        token,
        true,
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
                .collect();
            println!("commit {} {}", c.repo, files.join(" "));
        }
        seen = commits.len();
    }
}
