//! `tenpak optimize` end to end on the SmolLM2 fixture: candidates packed and measured on
//! the source's windows, the choice and every loser's reason in the results file, the
//! Pareto plot, a second run served from the cache, and the bad requests.

use serde_json::Value;

use crate::util::{fixtures, tenpak, tenpak_ok};

#[test]
fn optimize_measures_chooses_caches_and_explains() {
    let Some(fx) = fixtures() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| tmp.path().join(n).to_str().expect("p").to_string();
    let model = fx.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let text = fx.join("text/emma.txt");
    let args = |out: &str, delta: &str| -> Vec<String> {
        [
            "optimize",
            model.to_str().expect("p"),
            "--text",
            text.to_str().expect("p"),
            "--candidates",
            "int4-g64,int4-g256,awq-g128",
            "--max-tokens",
            "1024",
            "--max-ppl-delta",
            delta,
            "--hardware",
            "t4,a10g,cpu",
            "--cache",
            &p("cache"),
            "--output",
            &p(out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: &[String]| tenpak_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(&args("r.json", "40"));
    assert!(
        out.contains("3 candidates measured (0 from the cache)"),
        "{out}"
    );
    assert!(
        out.contains("awq-g128") && out.contains("skipped: needs calibration"),
        "{out}"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(p("r.json")).expect("r")).expect("json");
    assert_eq!(r["complete"], true);
    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["measured"]["candidate"], "source");
    assert_eq!(rows[0]["ppl_delta_pct"], 0.0);
    // Every row has an estimate per hardware and a verdict; g64 beats g256 on PPL.
    for row in rows {
        assert_eq!(row["estimates"].as_array().expect("e").len(), 3);
        assert!(!row["verdict"].as_str().expect("v").is_empty());
        assert!(row["measured"]["bits_per_weight"].as_f64().expect("b") > 0.0);
    }
    let delta = |i: usize| rows[i]["ppl_delta_pct"].as_f64().expect("d");
    assert!(delta(1) < delta(2), "{} {}", delta(1), delta(2));
    let chosen = &r["chosen"];
    assert!(chosen["candidate"].is_string(), "{r}");
    let chosen_row = rows
        .iter()
        .find(|row| row["measured"]["candidate"] == chosen["candidate"])
        .expect("chosen row");
    assert_eq!(chosen_row["verdict"], "chosen");
    assert_eq!(chosen_row["on_frontier"], true);
    assert!(chosen_row["ppl_delta_pct"].as_f64().expect("d") <= 40.0);
    let svg = std::fs::read_to_string(p("r.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("(chosen)") && svg.contains("polyline"));

    // The same inputs again: everything from the cache; a tighter bound changes only the
    // decision, and the loser says by how much it missed.
    let out = run(&args("r2.json", "0.5"));
    assert!(
        out.contains("3 candidates measured (3 from the cache)"),
        "{out}"
    );
    let r2: Value = serde_json::from_slice(&std::fs::read(p("r2.json")).expect("r")).expect("json");
    assert_eq!(r2["chosen"]["candidate"], "source", "{r2}");
    assert!(r2["rows"][2]["verdict"]
        .as_str()
        .expect("v")
        .contains("exceeds the allowed +0.50%"));

    // Impossible constraints: a clear answer, exit status 0.
    let mut a = args("r3.json", "0.5");
    a.extend(["--max-latency".into(), "0.001".into()]);
    let out = run(&a);
    assert!(
        out.contains("no candidate meets PPL delta <= 0.5%, <= 0.001 ms/token"),
        "{out}"
    );
    let r3: Value = serde_json::from_slice(&std::fs::read(p("r3.json")).expect("r")).expect("json");
    assert!(r3["chosen"].is_null() && r3["none_because"].is_string());
}

#[test]
fn optimize_refuses_bad_requests_clearly() {
    let out = tenpak(&["optimize", "--list"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && s.contains("int4-g128") && s.contains("a100_80"),
        "{s}"
    );
    assert!(s.contains("awq-gptq-g256") && s.contains("[needs --calib-text]"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "hello").expect("w");
    for (extra, says) in [
        (
            vec!["--candidates", "int5-magic"],
            "unknown candidate int5-magic",
        ),
        (vec!["--hardware", "tpu9"], "unknown hardware tpu9"),
        (
            vec!["--max-latency=-3"],
            "--max-latency must be a positive number",
        ),
    ] {
        let mut a = vec![
            "optimize",
            tmp.path().to_str().expect("p"),
            "--text",
            text.to_str().expect("p"),
        ];
        a.extend(extra);
        let out = tenpak(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
}
