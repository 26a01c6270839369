//! The registry under hostile or unlucky conditions (issue #15): private and gated
//! sources, jobs that kill the process, retries, and a second process on one data dir.
//! The Hub is the local stand-in (`tests/it/hub_standin.rs`), which speaks the Hub's
//! model-info, tree, resolve, repo-create and commit APIs.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[test]
fn restricted_sources_are_refused_or_published_privately_with_their_licence() {
    let Fixture { tmp, hub, model } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    std::fs::write(
        model.join("README.md"),
        "---\nlicense: llama3.2\nextra_gated_prompt: \"Agree to the Acme licence\"\n\
         tags:\n- text-generation\n---\n\n# Tiny\n",
    )
    .expect("card");
    hub.hub.set_access(REPO, false, Some("manual"));
    let data = tmp.path().join("data");
    let mut reg = Registry::start(&data, &hub.url, &[]);
    let cl = client();

    // The Studio API refuses at once, with a stable code.
    let r = cl
        .post(format!("{}/compress", reg.url))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({ "model_id": REPO }))
        .send()
        .expect("compress");
    assert_eq!(r.status().as_u16(), 403);
    let v: Value = r.json().expect("json");
    assert_eq!(v["code"], "restricted_source", "{v}");
    // A webhook (whose payload says nothing of gating) makes a job that fails with the
    // reason, on its first attempt, and nothing reaches the Hub.
    let id = reg.deliver();
    let job = reg.wait_job(id, Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1);
    assert!(
        job["error"].as_str().unwrap_or("").contains("gated"),
        "{job}"
    );
    assert!(hub.hub.commits().is_empty() && hub.hub.created().is_empty());
    reg.kill();

    // With allow_private the redelivery retries the failed job, and the companion is
    // created private, carries the source's licence and gating terms, and is not served
    // to anyone without the API token.
    let reg = Registry::start_with_config(&data, &hub.url, &[], "allow_private = true\n");
    let v: Value = reg
        .webhook(&content_update(REPO, SHA), Some(SECRET))
        .json()
        .expect("json");
    assert_eq!(
        (v["action"].as_str(), v["job_id"].as_i64()),
        (Some("retry"), Some(id))
    );
    let job = reg.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(hub.hub.created_private(), vec![COMPANION.to_string()]);
    let commits = hub.hub.commits();
    assert_eq!(commits.len(), 1);
    let card = String::from_utf8_lossy(&commits[0].files["README.md"]).into_owned();
    let front = tenpak::hub::card::front_matter(&card).expect("front matter");
    assert!(front.contains("license: llama3.2"), "{front}");
    assert!(
        front.contains("extra_gated_prompt: Agree to the Acme licence"),
        "{front}"
    );
    assert!(
        card.contains("The source is gated (manual approval)"),
        "{card}"
    );

    let artifact = job["artifacts"][0]["id"]
        .as_str()
        .expect("artifact")
        .to_string();
    for path in [
        format!("/api/models/{COMPANION}"),
        format!("/api/models/{COMPANION}/tree/main"),
        format!("/{COMPANION}/resolve/main/README.md"),
        format!("/artifact/{artifact}"),
    ] {
        let open = reg.get(&path);
        assert_eq!(open.status().as_u16(), 404, "{path} without a token");
        let authed = cl
            .get(format!("{}{path}", reg.url))
            .bearer_auth(API_TOKEN)
            .send()
            .expect("GET");
        assert!(
            authed.status().is_success(),
            "{path} with the token: {}",
            authed.status()
        );
        if path == format!("/api/models/{COMPANION}") {
            let v: Value = authed.json().expect("json");
            assert_eq!(v["private"], true);
        }
    }
}

#[test]
fn a_job_that_kills_the_registry_fails_after_max_attempts_and_a_retry_runs_it() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, false, hub::Mode::Regular);
    let data = tmp.path().join("data");
    let config = "max_attempts = 2\n";
    // Two starts, each killed while the job downloads (as an out-of-memory kill would).
    let mut reg = Registry::start_with_config(&data, &hub.url, &[], config);
    let id = reg.deliver();
    for n in 1..=2 {
        if n > 1 {
            reg = Registry::start_with_config(&data, &hub.url, &[], config);
        }
        wait_downloads(&hub, n);
        reg.kill();
    }
    // The third start does not run it again: failed, with the reason; the service is up.
    let t0 = Instant::now();
    let reg = Registry::start_with_config(&data, &hub.url, &[], config);
    let job = reg.get_json(&format!("/status/{id}"));
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 2);
    // Its partial downloads leave the Hub cache with the start-up housekeeping.
    while dir_bytes(&data.join("hub-cache")) > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "downloads left in the Hub cache"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fault_row(
        "the process dies in every attempt (as an OOM kill would), max_attempts = 2",
        "download",
        &job,
        hub.hub.commits().len(),
        &data,
        t0.elapsed(),
    );
    assert!(
        job["error"].as_str().unwrap_or("").contains("2 attempts"),
        "{job}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        hub.hub.weight_gets.load(Ordering::Relaxed),
        2,
        "not claimed again"
    );
    let dead = reg.get_json("/jobs?state=failed");
    assert_eq!(dead["total"], 1);
    assert_eq!(dead["jobs"][0]["id"], id);
    assert_eq!(reg.get("/jobs?state=bogus").status().as_u16(), 400);

    // A retry needs the token, puts it back with its attempts counted afresh, and it
    // completes once the Hub lets the download through.
    let url = format!("{}/jobs/{id}/retry", reg.url);
    let cl = client();
    assert_eq!(cl.post(&url).send().expect("retry").status().as_u16(), 401);
    let r = cl.post(&url).bearer_auth(API_TOKEN).send().expect("retry");
    assert_eq!(r.status().as_u16(), 202);
    hub.hub.set_gate(true);
    let job = reg.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(hub.hub.commits().len(), 1);
    let again = cl.post(&url).bearer_auth(API_TOKEN).send().expect("retry");
    assert_eq!(again.status().as_u16(), 409, "a done job is not retried");
}

#[test]
fn a_second_registry_on_the_same_data_dir_is_refused_and_the_cli_retries() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let data = tmp.path().join("data");
    let first = Registry::start(&data, &hub.url, &[]);
    let second = Registry::try_start(&data, &hub.url, &[], &[]);
    let log = second.err().expect("the second process must not start");
    assert!(log.contains("another tenpak-registry is running"), "{log}");
    // The data dir (Hub cache, database, secrets) is its owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&data).expect("data").permissions().mode();
    assert_eq!(mode & 0o077, 0, "data dir mode {mode:o}");
    // The CLI's retry refuses a job that has not failed, and an unknown one.
    let id = first.deliver();
    first.wait_job(id, Duration::from_secs(120));
    let (store_args, store_env) = stores_of(&data);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenpak-registry"))
        .args(["retry", &id.to_string(), "--data-dir"])
        .arg(&data)
        .args(&store_args)
        .envs(store_env.clone())
        .output()
        .expect("retry");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only a failed job is retried"));
    // Housekeeping while it runs: an orphan piece (a failed job's) is swept, every piece
    // an artifact or revision names is kept, and the artifact still reads back whole.
    let orphan_there = plant_orphan(&data);
    let before = first
        .get(&format!("/status/{id}"))
        .json::<Value>()
        .expect("json");
    let art = before["artifacts"][0]["id"]
        .as_str()
        .expect("artifact")
        .to_string();
    let bytes_before = first
        .get(&format!("/artifact/{art}"))
        .bytes()
        .expect("bytes");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenpak-registry"))
        .args(["gc", "--grace-hours", "0", "--data-dir"])
        .arg(&data)
        .args(&store_args)
        .envs(store_env)
        .output()
        .expect("gc");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(" 1 removed"), "{said}");
    assert!(!orphan_there());
    let bytes_after = first
        .get(&format!("/artifact/{art}"))
        .bytes()
        .expect("bytes");
    assert_eq!(bytes_before, bytes_after);
    assert!(first
        .get(&format!("/{COMPANION}/resolve/main/README.md"))
        .status()
        .is_success());
    drop(first);
    // Killed (no cleanup at all): the lock goes with the process.
    Registry::start(&data, &hub.url, &[]);
}

/// Reads from `s` until the server closes it (or answers); `None` if it is still open
/// after `wait`.
fn closed_within(s: &mut std::net::TcpStream, wait: Duration) -> Option<String> {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Some(String::from_utf8_lossy(&buf).into_owned()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&buf).into_owned())
            }
            Err(_) => return None, // timed out: still open
        }
    }
}

#[test]
fn slow_clients_are_cut_off_and_the_connection_cap_holds() {
    use std::io::Write;
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let reg = Registry::start_with_config(
        &tmp.path().join("data"),
        &hub.url,
        &[],
        "max_connections = 8\nheader_timeout_s = 1\nbody_timeout_s = 1\nidle_timeout_s = 1\n",
    );
    let addr = reg.url.trim_start_matches("http://").to_string();
    // Slowloris: eight connections that send half a request's headers and stop.
    let mut slow: Vec<_> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The cap is reached: one more connection is closed at once, unanswered.
    let mut extra = std::net::TcpStream::connect(&addr).expect("connect");
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = closed_within(&mut extra, Duration::from_secs(5)).expect("closed over the cap");
    assert!(got.is_empty(), "over the cap, answered: {got}");
    // The header timeout closes the slow ones, and the service answers again.
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)).is_some(),
            "a slow client kept its connection"
        );
    }
    assert!(reg.get("/").status().is_success());
    // A connection that never sends a byte is closed too (the idle timeout), so silent
    // sockets do not pile up.
    let mut idle = std::net::TcpStream::connect(&addr).expect("connect");
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).is_some(),
        "an idle connection was kept"
    );
    // A body that trickles: cut off after the body timeout.
    let mut trickle = std::net::TcpStream::connect(&addr).expect("connect");
    trickle
        .write_all(
            format!(
                "POST /webhooks/hub HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {SECRET}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"event\":"
            )
            .as_bytes(),
        )
        .expect("write");
    let t0 = Instant::now();
    let got = closed_within(&mut trickle, Duration::from_secs(8)).expect("trickle cut off");
    assert!(t0.elapsed() < Duration::from_secs(8));
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408") || got.starts_with("HTTP/1.1 400"),
        "{got}"
    );
    // A body over the cap is refused before it is read.
    let big = vec![b' '; 5 << 20];
    let r = client()
        .post(format!("{}/webhooks/hub", reg.url))
        .header("X-Webhook-Secret", SECRET)
        .body(big)
        .send();
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }
    assert_eq!(reg.get_json("/")["status"], "ok");
}

#[test]
fn a_model_over_the_size_caps_is_refused_before_any_byte_is_downloaded() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    for (n, (config, what)) in [
        ("max_model_bytes = 1000\n", "weight bytes"),
        ("max_side_file_bytes = 16\n", "side-file bytes"),
    ]
    .into_iter()
    .enumerate()
    {
        let data = tmp.path().join(format!("data{n}"));
        let reg = Registry::start_with_config(&data, &hub.url, &[], config);
        let job = reg.wait_job(reg.deliver(), Duration::from_secs(60));
        assert_eq!(job["state"], "failed", "{job}");
        assert_eq!(job["attempts"], 1, "not retried: {job}");
        let err = job["error"].as_str().unwrap_or("");
        assert!(
            err.contains(what) && err.contains("above the limit"),
            "{err}"
        );
    }
    assert_eq!(
        hub.hub.weight_gets.load(Ordering::Relaxed),
        0,
        "nothing downloaded"
    );
    assert!(hub.hub.commits().is_empty());
}

#[test]
fn an_older_commit_finishing_last_does_not_replace_the_newer_one() {
    let Fixture { tmp, hub, model } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    // main is at SHA; its job publishes.
    let newer = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    assert_eq!(newer["state"], "done", "{newer}");
    assert_eq!(hub.hub.commits().len(), 1);
    // An older commit of the same repo arrives late (a replayed delivery, a slow worker).
    let old = "0000000000000000000000000000000000000001";
    hub.hub.add_model(hub::ModelRepo {
        repo: REPO.into(),
        sha: old.into(),
        dir: model.clone(),
    });
    let v: Value = reg
        .webhook(&content_update(REPO, old), Some(SECRET))
        .json()
        .expect("json");
    let job = reg.wait_job(v["job_id"].as_i64().expect("id"), Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert!(
        job["note"].as_str().unwrap_or("").contains("superseded"),
        "{job}"
    );
    assert!(job["published_commit"].is_null(), "{job}");
    assert!(!job["artifacts"].as_array().expect("artifacts").is_empty());
    assert_eq!(
        hub.hub.commits().len(),
        1,
        "the companion keeps the newer commit's files"
    );
}

#[test]
fn a_hub_that_accepts_and_then_stalls_fails_the_job_instead_of_holding_the_worker() {
    // Weight downloads are held at the stand-in's gate, which stays closed: the Hub
    // accepted the request and sends nothing more.
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, false, hub::Mode::Regular);
    let reg = Registry::start_with_config(
        &tmp.path().join("data"),
        &hub.url,
        &[],
        "hub_read_timeout_s = 1\nmax_attempts = 2\n",
    );
    let t0 = Instant::now();
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "a stall is transient: retried, then failed: {job}"
    );
    let err = job["error"].as_str().unwrap_or("").to_lowercase();
    assert!(err.contains("time") || err.contains("download"), "{err}");
    fault_row(
        "Hub accepts the download, then sends nothing (hub_read_timeout_s = 1)",
        "download",
        &job,
        hub.hub.commits().len(),
        &tmp.path().join("data"),
        t0.elapsed(),
    );
    assert!(hub.hub.weight_gets.load(Ordering::Relaxed) >= 2);
    assert!(hub.hub.commits().is_empty());
    eprintln!(
        "stalled job failed after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // The service answered throughout and answers now.
    assert_eq!(reg.get_json("/")["status"], "ok");
}

#[test]
fn killed_after_the_hub_took_the_commit_it_records_that_commit_instead_of_making_another() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let data = tmp.path().join("data");
    // The Hub records the commit, then its answer is held: the registry is killed before
    // it hears (and records) that its commit is in.
    hub.hub.set_answer_gate(false);
    let mut reg = Registry::start(&data, &hub.url, &[]);
    let id = reg.deliver();
    let t0 = Instant::now();
    while hub.hub.answers_held.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no commit arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.kill();
    let t_kill = Instant::now();
    hub.hub.set_answer_gate(true);
    assert_eq!(hub.hub.commits().len(), 1);
    let reg = Registry::start(&data, &hub.url, &[]);
    let job = reg.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let commits = hub.hub.commits();
    assert_eq!(
        commits.len(),
        1,
        "one Hub commit, whatever the stage of the kill"
    );
    assert_eq!(job["published_commit"], commits[0].oid.as_str(), "{job}");
    fault_row(
        "SIGKILL after the Hub took the commit, before it was recorded",
        "publish",
        &job,
        commits.len(),
        &data,
        t_kill.elapsed(),
    );
    assert!(
        reg.log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains("already holds these artifacts")),
        "the restart found its earlier commit"
    );
    // The companion is served as published.
    assert_eq!(
        reg.get(&format!("/api/models/{COMPANION}"))
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn a_push_to_the_companion_while_the_registry_commits_is_not_overwritten_blindly() {
    // The registry's commit waits at the gate, made on top of the head it saw; a person
    // pushes meanwhile. The Hub refuses the registry's commit (412, parentCommit), the
    // registry looks again and commits on top of the person's commit.
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    hub.hub.set_commit_gate(false);
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    let id = reg.deliver();
    let t0 = Instant::now();
    while hub.hub.commit_requests.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no commit arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let theirs = hub
        .hub
        .push_commit(COMPANION, "NOTES.md", b"a person's notes\n");
    hub.hub.set_commit_gate(true);
    let job = reg.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    let commits = hub.hub.commits();
    assert_eq!(commits.len(), 2, "the person's commit and the registry's");
    assert_eq!(commits[0].oid, theirs);
    assert!(commits[1].files.contains_key("tiny-llama-balanced.tnpk"));
    assert_eq!(
        hub.hub.commit_requests.load(Ordering::SeqCst),
        2,
        "one refused, one taken"
    );
    assert!(reg
        .log
        .lock()
        .expect("log")
        .iter()
        .any(|l| l.contains("412")));
}

#[test]
fn two_commits_racing_end_at_the_newer_one() {
    // An older and a newer commit of one repo are compressed at once by two workers; the
    // older one must not publish over (or after) the newer one, whichever ends first.
    let Fixture { tmp, hub, model } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let old = "0000000000000000000000000000000000000001";
    hub.hub.add_model(hub::ModelRepo {
        repo: REPO.into(),
        sha: old.into(),
        dir: model.clone(),
    });
    hub.hub.set_commit_gate(false);
    let reg = Registry::start_args(&tmp.path().join("data"), &hub.url, &[], &["--workers", "2"]);
    let v: Value = reg
        .webhook(&content_update(REPO, old), Some(SECRET))
        .json()
        .expect("json");
    let old_id = v["job_id"].as_i64().expect("id");
    let new_id = reg.deliver();
    let old_job = reg.wait_job(old_id, Duration::from_secs(120));
    assert_eq!(old_job["state"], "done", "{old_job}");
    assert!(
        old_job["note"]
            .as_str()
            .unwrap_or("")
            .contains("superseded"),
        "{old_job}"
    );
    hub.hub.set_commit_gate(true);
    let new_job = reg.wait_job(new_id, Duration::from_secs(120));
    assert_eq!(new_job["state"], "done", "{new_job}");
    let commits = hub.hub.commits();
    assert_eq!(
        commits.len(),
        1,
        "{:?}",
        commits.iter().map(|c| &c.summary).collect::<Vec<_>>()
    );
    assert!(
        commits[0].summary.contains(&SHA[..12]),
        "{}",
        commits[0].summary
    );
}

#[test]
fn killed_at_every_stage_it_ends_with_one_hub_commit_and_nothing_left_over() {
    // SIGKILL at each stage of the pipeline (the job is held at the stage by the
    // registry's fault-injection hook), then a restart: the job is requeued, completes,
    // and the companion gets exactly one commit; the work area is empty.
    for stage in ["resolve", "download", "pack", "verify", "store", "publish"] {
        let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
        let data = tmp.path().join("data");
        let mut reg = Registry::start(&data, &hub.url, &[("TENPAK_REGISTRY_PAUSE_AT", stage)]);
        let id = reg.deliver();
        reg.wait_log("fault injection", Duration::from_secs(120));
        reg.kill();
        let t0 = Instant::now();
        assert!(
            hub.hub.commits().is_empty(),
            "{stage}: nothing committed yet"
        );
        let reg = Registry::start(&data, &hub.url, &[]);
        let job = reg.wait_job(id, Duration::from_secs(120));
        assert_eq!(job["state"], "done", "{stage}: {job}");
        assert_eq!(job["attempts"], 2, "{stage}: {job}");
        assert_eq!(hub.hub.commits().len(), 1, "{stage}: one Hub commit");
        assert_eq!(
            dir_bytes(&data.join("work")),
            0,
            "{stage}: work area left over"
        );
        fault_row(
            "SIGKILL",
            stage,
            &job,
            hub.hub.commits().len(),
            &data,
            t0.elapsed(),
        );
    }
}

/// A WordLevel tokenizer whose pre-tokenizer regex backtracks exponentially on runs of
/// `a` that end in `b` (Oniguruma, as the Hub's tokenizers crate runs it).
const HOSTILE_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(a|aa)+$"},"behavior":"Isolated","invert":false},
"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"a":0,"b":1,"[UNK]":2},"unk_token":"[UNK]"}}"#;

#[test]
fn a_hostile_tokenizer_costs_the_perplexity_column_not_the_job() {
    let text_of = |tmp: &std::path::Path| {
        let text = tmp.join("eval.txt");
        std::fs::write(&text, format!("{}b ", "a".repeat(27)).repeat(400)).expect("text");
        format!(
            "eval_text = {:?}\neval_tokens = 256\ntokenize_timeout_s = 2\n",
            text.display().to_string()
        )
    };
    // A benign tokenizer (the same, splitting on spaces) is measured through the child
    // process as before.
    {
        let Fixture { tmp, hub, model } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
        let benign = HOSTILE_TOKENIZER.replace("(a|aa)+$", "\\\\s+");
        std::fs::write(model.join("tokenizer.json"), benign).expect("tokenizer");
        let config = text_of(tmp.path());
        let reg = Registry::start_with_config(&tmp.path().join("data"), &hub.url, &[], &config);
        let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
        assert_eq!(job["state"], "done", "{job}");
        let card = String::from_utf8_lossy(&hub.hub.commits()[0].files["README.md"]).into_owned();
        let row = card
            .lines()
            .find(|l| l.starts_with("| `tiny-llama-balanced.tnpk`"))
            .expect("row")
            .to_string();
        assert!(row.contains('%') && !row.contains("not measured"), "{row}");
    }
    let Fixture { tmp, hub, model } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    std::fs::write(model.join("tokenizer.json"), HOSTILE_TOKENIZER).expect("tokenizer");
    let config = text_of(tmp.path());
    let reg = Registry::start_with_config(&tmp.path().join("data"), &hub.url, &[], &config);
    let t0 = Instant::now();
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    let took = t0.elapsed();
    assert_eq!(job["state"], "done", "{job}");
    let commits = hub.hub.commits();
    let card = String::from_utf8_lossy(&commits[0].files["README.md"]).into_owned();
    assert!(
        card.contains("not measured (the model's tokenizer took longer than 2 s"),
        "{card}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    fault_row(
        "a tokenizer.json whose regex backtracks exponentially (tokenize_timeout_s = 2)",
        "evaluate",
        &job,
        commits.len(),
        &tmp.path().join("data"),
        took,
    );
}

/// Mounts a tmpfs of `size` at `dir`; false where this machine does not allow mounts.
fn mount_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).expect("dir");
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn remount(dir: &std::path::Path, size: &str) {
    let ok = std::process::Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "remount {}", dir.display());
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_pack_or_chunk_ingest_is_retried_not_fatal() {
    // The work area (where pack writes) and then the chunk store (where artifacts are
    // ingested) on a 64 KiB tmpfs: the attempt fails with ENOSPC, is retried, and once
    // the operator has made room (a remount to 64 MiB) the job completes.
    for (area, stage) in [("work", "pack"), ("chunks", "store")] {
        if area == "chunks" && scaled_stores() {
            eprintln!("[skip] the chunk store is a bucket in this mode: no local disk to fill");
            continue;
        }
        let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
        let data = tmp.path().join("data");
        let small = data.join(area);
        if !mount_tmpfs(&small, "64k") {
            eprintln!("[skip] cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): ENOSPC test skipped");
            return;
        }
        let _unmount = Unmount(small.clone());
        let reg = Registry::start_with_config(&data, &hub.url, &[], "max_attempts = 6\n");
        let id = reg.deliver();
        let t0 = Instant::now();
        // The attempt's failure is in the log (the job's `error` lasts only until the
        // next attempt claims it).
        reg.wait_log("No space left on device", Duration::from_secs(60));
        let j = reg.get_json(&format!("/status/{id}"));
        assert!(
            j["state"] != "failed" && j["state"] != "done",
            "{area}: {j}"
        );
        let t_fault = t0.elapsed();
        remount(&small, "64m");
        let job = reg.wait_job(id, Duration::from_secs(180));
        assert_eq!(job["state"], "done", "{area}: {job}");
        assert!(job["attempts"].as_i64().expect("attempts") >= 2, "{job}");
        assert_eq!(hub.hub.commits().len(), 1);
        fault_row(
            &format!("ENOSPC: {area}/ on a 64 KiB tmpfs, remounted at 64 MiB once seen"),
            stage,
            &job,
            hub.hub.commits().len(),
            &data,
            t0.elapsed() - t_fault,
        );
        drop(reg);
    }
}

#[test]
fn jobs_are_admitted_by_their_memory_estimate() {
    // A budget smaller than any job: refused before a byte is downloaded.
    let Fixture { tmp, hub, model } = fixture(HUB_TOKEN, false, hub::Mode::Regular);
    let reg = Registry::start_with_config(
        &tmp.path().join("data-small"),
        &hub.url,
        &[],
        "memory_budget_bytes = 1048576\n",
    );
    let job = reg.wait_job(reg.deliver(), Duration::from_secs(60));
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "not worth retrying: {job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("memory_budget_bytes"),
        "{job}"
    );
    assert_eq!(hub.hub.weight_gets.load(Ordering::Relaxed), 0);
    drop(reg);

    // A budget for one job at a time (each tiny job is estimated at ~261 MiB): with two
    // workers, the second job waits for the first to end, then runs.
    let other = "acme/other-llama";
    let other_sha = "1111111111111111111111111111111111111111";
    hub.hub.add_model(hub::ModelRepo {
        repo: other.into(),
        sha: other_sha.into(),
        dir: model.clone(),
    });
    let reg = Registry::start_with_config(
        &tmp.path().join("data"),
        &hub.url,
        &[],
        "memory_budget_bytes = 419430400\nworkers = 2\n",
    );
    let first = reg.deliver();
    wait_downloads(&hub, 1);
    let v: Value = reg
        .webhook(&content_update(other, other_sha), Some(SECRET))
        .json()
        .expect("json");
    let second = v["job_id"].as_i64().expect("id");
    reg.wait_log("waiting for memory", Duration::from_secs(60));
    assert_eq!(
        reg.get_json(&format!("/status/{second}"))["stage"],
        "waiting for memory"
    );
    hub.hub.set_gate(true);
    for id in [first, second] {
        let job = reg.wait_job(id, Duration::from_secs(120));
        assert_eq!(job["state"], "done", "{job}");
    }
}

#[test]
fn sigterm_during_a_stalled_download_stops_within_a_bound_and_the_job_resumes() {
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, false, hub::Mode::Regular);
    let data = tmp.path().join("data");
    let mut reg = Registry::start(&data, &hub.url, &[]);
    let id = reg.deliver();
    wait_downloads(&hub, 1);
    // A reader holding a keep-alive connection open, too.
    let mut idle =
        std::net::TcpStream::connect(reg.url.trim_start_matches("http://")).expect("tcp");
    std::io::Write::write_all(&mut idle, b"GET /jobs HTTP/1.1\r\nHost: x\r\n").expect("write");
    let t0 = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &reg.child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let status = loop {
        if let Some(s) = reg.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    eprintln!("SIGTERM to exit: {:.2} s ({status})", took.as_secs_f64());
    // The job was interrupted, not failed: the next start resumes it.
    hub.hub.set_gate(true);
    let reg = Registry::start(&data, &hub.url, &[]);
    let job = reg.wait_job(id, Duration::from_secs(120));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(hub.hub.commits().len(), 1);
    fault_row(
        "SIGTERM while the Hub stalls a download (and a client holds a half-sent request)",
        "download",
        &job,
        hub.hub.commits().len(),
        &data,
        took,
    );
}

#[test]
fn status_and_range_reads_answer_while_a_pack_runs() {
    // A model big enough that packing it keeps a core busy for a while (debug build; 58 M
    // weights: with 4 layers a loaded CI machine once finished the pack within 5 polls).
    let Fixture { tmp, hub, .. } = fixture(HUB_TOKEN, true, hub::Mode::Regular);
    let medium = tmp.path().join("medium");
    tenpak::synthetic::write_llama(
        &medium,
        tenpak::dtype::DType::BF16,
        tenpak::synthetic::LlamaShape {
            hidden: 512,
            ff: 1536,
            vocab: 4096,
            layers: 16,
        },
    )
    .expect("model");
    let msha = "2222222222222222222222222222222222222222";
    hub.hub.add_model(hub::ModelRepo {
        repo: "acme/medium-llama".into(),
        sha: msha.into(),
        dir: medium,
    });
    let reg = Registry::start(&tmp.path().join("data"), &hub.url, &[]);
    let first = reg.wait_job(reg.deliver(), Duration::from_secs(120));
    let art = first["artifacts"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();
    let v: Value = reg
        .webhook(&content_update("acme/medium-llama", msha), Some(SECRET))
        .json()
        .expect("json");
    let id = v["job_id"].as_i64().expect("id");
    let t0 = Instant::now();
    while !reg.get_json(&format!("/status/{id}"))["stage"]
        .as_str()
        .unwrap_or("")
        .starts_with("pack")
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "never packed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // 32 readers of 64 KiB ranges and one /status poller, while the pack runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers: Vec<_> = (0..32)
        .map(|k| {
            let (url, stop, errors, reads) = (
                format!("{}{art}", reg.url),
                stop.clone(),
                errors.clone(),
                reads.clone(),
            );
            std::thread::spawn(move || {
                let c = client();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let start = (n * 7919 + k * 104729) % 200_000;
                    n += 1;
                    let r = c
                        .get(&url)
                        .header("range", format!("bytes={start}-{}", start + 65535))
                        .send();
                    let ok = r.is_ok_and(|r| {
                        r.status().as_u16() == 206 && r.bytes().is_ok_and(|b| b.len() == 65536)
                    });
                    if ok {
                        reads.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut lat = vec![];
    let packing = |reg: &Registry| {
        reg.get_json(&format!("/status/{id}"))["stage"]
            .as_str()
            .unwrap_or("")
            .starts_with("pack")
    };
    while packing(&reg) && lat.len() < 2000 {
        let t = Instant::now();
        assert_eq!(reg.get(&format!("/status/{id}")).status().as_u16(), 200);
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    let job = reg.wait_job(id, Duration::from_secs(300));
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "failed range reads");
    assert!(lat.len() >= 5, "the pack ended before it could be watched");
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "LOAD | /status while a pack runs, 32 range readers beside it | {} polls, p50 {:.1} ms, p99 {:.1} ms | {} range reads of 64 KiB, 0 errors |",
        lat.len(),
        pct(0.5),
        pct(0.99),
        reads.load(Ordering::Relaxed)
    );
}
