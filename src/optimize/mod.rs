//! The cost optimizer: named compression candidates, each measured on the model (size,
//! bits per weight, perplexity on the same windows as the source, load time), serving
//! speed and cost estimated per hardware from bytes moved per token, and the cheapest
//! (hardware, candidate) pair that meets the constraints chosen, with the reason every
//! other candidate lost. `docs/OPTIMIZE.md` states the model and its assumptions; the
//! `tenpak optimize` command measures (packing, evaluation, caching) and calls
//! [`decide`]; [`plot::pareto_svg`] draws the result.

pub mod plot;
pub mod study;

use serde::{Deserialize, Serialize};

use crate::codec::CodecSpec;
use crate::plan::{Selection, Target, Tuning};
use crate::quantize::Options;
use crate::{Error, Result};

/// One named candidate.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Its name (`--candidates`).
    pub name: &'static str,
    /// What it is, for people.
    pub about: &'static str,
    /// Whether it needs calibration statistics (`--calib-text`).
    pub needs_calibration: bool,
    /// Its pack options (None: the uncompressed source).
    build: fn() -> Option<Options>,
}

impl Candidate {
    /// The pack options (None for the source itself).
    pub fn options(&self) -> Option<Options> {
        (self.build)()
    }
}

fn codec(kind: &str, group: Option<usize>, awq: bool, gptq: bool) -> Option<Options> {
    let spec = CodecSpec::from_name(kind, group).ok()?;
    Some(Options {
        selection: Selection::Codec(spec),
        tuning: Tuning {
            awq,
            gptq,
            ..Tuning::default()
        },
        ..Options::default()
    })
}

fn target(t: Target) -> Option<Options> {
    Some(Options {
        selection: Selection::Target(t),
        ..Options::default()
    })
}

fn budget(bits: f64) -> Option<Options> {
    Some(Options {
        selection: Selection::BitsPerWeight(bits),
        ..Options::default()
    })
}

/// Every candidate, in the order they are measured.
pub const CANDIDATES: &[Candidate] = &[
    Candidate {
        name: "source",
        about: "the uncompressed source (its own dtype): the baseline",
        needs_calibration: false,
        build: || None,
    },
    Candidate {
        name: "int4_residual",
        about: "int4 g128 + int2 residual g128",
        needs_calibration: false,
        build: || codec("int4_residual", None, false, false),
    },
    Candidate {
        name: "int4-g64",
        about: "int4, groups of 64, scale refinement",
        needs_calibration: false,
        build: || codec("int4", Some(64), false, false),
    },
    Candidate {
        name: "int4-g128",
        about: "int4, groups of 128",
        needs_calibration: false,
        build: || codec("int4", Some(128), false, false),
    },
    Candidate {
        name: "int4-g256",
        about: "int4, groups of 256",
        needs_calibration: false,
        build: || codec("int4", Some(256), false, false),
    },
    Candidate {
        name: "awq-g128",
        about: "int4 g128 with AWQ activation scaling",
        needs_calibration: true,
        build: || codec("int4", Some(128), true, false),
    },
    Candidate {
        name: "awq-g256",
        about: "int4 g256 with AWQ activation scaling",
        needs_calibration: true,
        build: || codec("int4", Some(256), true, false),
    },
    Candidate {
        name: "awq-gptq-g128",
        about: "int4 g128, AWQ + GPTQ error feedback",
        needs_calibration: true,
        build: || codec("int4", Some(128), true, true),
    },
    Candidate {
        name: "awq-gptq-g256",
        about: "int4 g256, AWQ + GPTQ error feedback",
        needs_calibration: true,
        build: || codec("int4", Some(256), true, true),
    },
    Candidate {
        name: "calibrated_vq",
        about: "Hessian-weighted VQ (codebook per tensor)",
        needs_calibration: true,
        build: || codec("calibrated_vq", None, false, false),
    },
    Candidate {
        name: "calibrated_vq-gptq",
        about: "Hessian-weighted VQ with GPTQ error feedback",
        needs_calibration: true,
        build: || codec("calibrated_vq", None, false, true),
    },
    Candidate {
        name: "tenpak_x",
        about: "low rank + VQ + int2 (TenPak-X)",
        needs_calibration: true,
        build: || codec("tenpak_x", None, false, false),
    },
    Candidate {
        name: "target-quality",
        about: "--target quality (int4 g32 attention, g64 MLP)",
        needs_calibration: false,
        build: || target(Target::Quality),
    },
    Candidate {
        name: "target-balanced",
        about: "--target balanced (int4 g64 attention, g128 MLP)",
        needs_calibration: false,
        build: || target(Target::Balanced),
    },
    Candidate {
        name: "target-size",
        about: "--target size (int4 g128 attention, g256 MLP)",
        needs_calibration: false,
        build: || target(Target::Size),
    },
    Candidate {
        name: "bpw-4.25",
        about: "bit budget: 4.25 bits/weight over the blocks' linears, codecs chosen per tensor",
        needs_calibration: false,
        build: || budget(4.25),
    },
    Candidate {
        name: "bpw-3.25",
        about: "bit budget: 3.25 bits/weight",
        needs_calibration: false,
        build: || budget(3.25),
    },
];

/// The candidates named (all when `names` is empty), in table order; an unknown name
/// is an error that lists the known ones.
pub fn select(names: &[String]) -> Result<Vec<Candidate>> {
    for n in names {
        if !CANDIDATES.iter().any(|c| c.name == n) {
            return Err(Error::InvalidOption {
                option: "--candidates",
                reason: format!(
                    "unknown candidate {n} (known: {}; `tenpak optimize --list` describes them)",
                    CANDIDATES
                        .iter()
                        .map(|c| c.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    Ok(CANDIDATES
        .iter()
        .filter(|c| names.is_empty() || names.iter().any(|n| n == c.name))
        .copied()
        .collect())
}

/// Checks that every candidate but the source builds its options (the table's codec
/// names and groups stay valid as codecs change).
pub fn check_table() -> Result<()> {
    match CANDIDATES
        .iter()
        .find(|c| c.name != "source" && c.options().is_none())
    {
        Some(c) => Err(Error::InvalidOption {
            option: "candidate table",
            reason: format!("{} does not build a codec", c.name),
        }),
        None => Ok(()),
    }
}

/// A machine to serve on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    /// Its name (`--hardware`).
    pub name: String,
    /// Price, US dollars per hour.
    pub usd_per_hour: f64,
    /// Memory for weights, GB (1e9 bytes).
    pub memory_gb: f64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gb_s: f64,
    /// Share of the bandwidth a batch-1 decode step reaches on bf16 weights.
    pub efficiency_dense: f64,
    /// Share it reaches reading compressed (int4-class) weights in a fused kernel.
    pub efficiency_compressed: f64,
    /// Where the figures come from.
    pub source: String,
}

/// The default hardware table (prices from the original TenPak design; bandwidths and
/// memory from the vendors' data sheets; efficiencies in `docs/OPTIMIZE.md`).
pub fn default_hardware() -> Vec<Hardware> {
    let gpu = |name: &str, usd: f64, mem: f64, bw: f64| Hardware {
        name: name.into(),
        usd_per_hour: usd,
        memory_gb: mem,
        bandwidth_gb_s: bw,
        efficiency_dense: DENSE_EFFICIENCY,
        efficiency_compressed: COMPRESSED_EFFICIENCY,
        source: "data sheet; efficiencies: docs/OPTIMIZE.md".into(),
    };
    vec![
        gpu("t4", 0.50, 16.0, 320.0),
        gpu("a10g", 1.00, 24.0, 600.0),
        gpu("a100_40", 3.50, 40.0, 1555.0),
        gpu("a100_80", 5.00, 80.0, 2039.0),
        gpu("h100", 8.00, 80.0, 3350.0),
        gpu("h200", 10.00, 141.0, 4800.0),
        Hardware {
            name: "cpu".into(),
            usd_per_hour: 0.10,
            memory_gb: 16.0,
            bandwidth_gb_s: 20.0,
            efficiency_dense: 0.5,
            efficiency_compressed: 0.5,
            source: "a 2-vCPU cloud instance; `tenpak optimize` replaces the bandwidth with \
                     this machine's measured copy bandwidth"
                .into(),
        },
    ]
}

/// bf16 GEMV (cuBLAS) at batch 1 reaches about this share of HBM bandwidth.
pub const DENSE_EFFICIENCY: f64 = 0.85;
/// A fused int4 dequant-GEMV (Marlin-class kernels report 70–75%).
pub const COMPRESSED_EFFICIENCY: f64 = 0.70;
/// Memory beyond the weights (KV cache, activations, runtime) as a share of them.
pub const MEMORY_HEADROOM: f64 = 0.2;

/// Reads a hardware file (a JSON list of [`Hardware`]) replacing or adding entries by
/// name.
pub fn hardware_with_overrides(file: Option<&std::path::Path>) -> Result<Vec<Hardware>> {
    let mut hw = default_hardware();
    if let Some(p) = file {
        let bytes = std::fs::read(p).map_err(|e| Error::io("read", p, e))?;
        let extra: Vec<Hardware> = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            path: p.into(),
            message: e.to_string(),
        })?;
        for h in extra {
            match hw.iter_mut().find(|x| x.name == h.name) {
                Some(x) => *x = h,
                None => hw.push(h),
            }
        }
    }
    Ok(hw)
}

/// The hardware named (all when `names` is empty).
pub fn pick_hardware(all: &[Hardware], names: &[String]) -> Result<Vec<Hardware>> {
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|h| &h.name == n)
                .cloned()
                .ok_or_else(|| Error::InvalidOption {
                    option: "--hardware",
                    reason: format!(
                        "unknown hardware {n} (known: {}; add others with --hardware-file)",
                        all.iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
        })
        .collect::<Result<Vec<_>>>()
        .map(|v| if v.is_empty() { all.to_vec() } else { v })
}

/// What was measured of one candidate on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Candidate name.
    pub candidate: String,
    /// Bytes of weights as stored (the artifact's tensors; the source's in its dtype).
    pub weight_bytes: u64,
    /// Bytes of the `.tnpk` file (0 for the source).
    pub file_bytes: u64,
    /// Weights counted.
    pub weights: u64,
    /// weight_bytes · 8 / weights.
    pub bits_per_weight: f64,
    /// Perplexity on the evaluation windows.
    pub ppl: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Seconds to open, verify and decode every tensor into memory (this machine).
    pub load_s: f64,
    /// Seconds packing took when it was measured (0 for the source).
    pub pack_s: f64,
}

/// Serving estimates of one candidate on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Hardware name.
    pub hardware: String,
    /// Whether the weights plus headroom fit in its memory.
    pub fits: bool,
    /// Estimated decode tokens/s at batch 1.
    pub tokens_per_s: f64,
    /// Estimated ms per token at batch 1.
    pub latency_ms: f64,
    /// US dollars per million tokens at that rate.
    pub usd_per_m_tokens: f64,
}

/// Estimates for `m` on `hw`: every token reads every weight once (batch 1 decode is
/// bandwidth-bound), at the hardware's efficiency for the weights' form.
pub fn estimate(m: &Measured, hw: &Hardware, compressed: bool) -> Estimate {
    let eff = if compressed {
        hw.efficiency_compressed
    } else {
        hw.efficiency_dense
    };
    let bytes = m.weight_bytes.max(1) as f64;
    let tps = eff * hw.bandwidth_gb_s * 1e9 / bytes;
    Estimate {
        hardware: hw.name.clone(),
        fits: bytes * (1.0 + MEMORY_HEADROOM) <= hw.memory_gb * 1e9,
        tokens_per_s: tps,
        latency_ms: 1000.0 / tps,
        usd_per_m_tokens: hw.usd_per_hour / (tps * 3600.0) * 1e6,
    }
}

/// The constraints a choice must meet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    /// Largest PPL increase over the source, percent.
    pub max_ppl_delta_pct: Option<f64>,
    /// Largest ms per token.
    pub max_latency_ms: Option<f64>,
    /// Fewest tokens/s.
    pub min_tokens_per_s: Option<f64>,
}

/// One candidate's row of the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// What was measured.
    pub measured: Measured,
    /// PPL change against the source on the same windows, percent.
    pub ppl_delta_pct: f64,
    /// Per hardware.
    pub estimates: Vec<Estimate>,
    /// "chosen", or why it lost.
    pub verdict: String,
    /// Whether it lies on the Pareto frontier of (bits/weight, PPL delta).
    pub on_frontier: bool,
}

impl Row {
    /// The hardware where it costs least per token, among those it fits in.
    pub fn cheapest(&self) -> Option<&Estimate> {
        self.estimates
            .iter()
            .filter(|e| e.fits)
            .min_by(|p, q| p.usd_per_m_tokens.total_cmp(&q.usd_per_m_tokens))
    }

    /// [`Row::cheapest`] for people: `t4 (1234, $0.1126)` (estimated tokens/s, $ per
    /// million tokens), or `fits nowhere`.
    pub fn cheapest_text(&self) -> String {
        self.cheapest().map_or("fits nowhere".into(), |e| {
            format!(
                "{} ({:.0}, ${:.4})",
                e.hardware, e.tokens_per_s, e.usd_per_m_tokens
            )
        })
    }
}

impl Constraints {
    /// Each constraint set, for people (`PPL delta <= 2%`, `<= 100 ms/token`, ...).
    pub fn describe(&self) -> Vec<String> {
        let mut parts = vec![];
        if let Some(m) = self.max_ppl_delta_pct {
            parts.push(format!("PPL delta <= {m}%"));
        }
        if let Some(m) = self.max_latency_ms {
            parts.push(format!("<= {m} ms/token"));
        }
        if let Some(m) = self.min_tokens_per_s {
            parts.push(format!(">= {m} tokens/s"));
        }
        parts
    }
}

/// The decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// One row per measured candidate (the source first).
    pub rows: Vec<Row>,
    /// The chosen (candidate, hardware), if any meets every constraint.
    pub chosen: Option<(String, String)>,
    /// When nothing is chosen: why ("no candidate meets ...").
    pub none_because: Option<String>,
}

/// Rows on the frontier: no other row has both fewer bits/weight and a smaller PPL delta
/// (ties on both count as dominated only by an earlier row).
fn frontier(rows: &[(f64, f64)]) -> Vec<bool> {
    rows.iter()
        .enumerate()
        .map(|(i, &(b, d))| {
            !rows
                .iter()
                .enumerate()
                .any(|(j, &(b2, d2))| j != i && b2 <= b && d2 <= d && (b2 < b || d2 < d || j < i))
        })
        .collect()
}

/// Chooses the cheapest (hardware, candidate) meeting `c` among `measured` (the source
/// first, named "source"), and says why each other candidate lost.
pub fn decide(measured: &[Measured], hw: &[Hardware], c: &Constraints) -> Result<Decision> {
    let source = measured
        .iter()
        .find(|m| m.candidate == "source")
        .ok_or_else(|| Error::Missing {
            path: "optimize".into(),
            what: "the source's measurement (every comparison is against it)".into(),
        })?;
    let mut rows: Vec<Row> = measured
        .iter()
        .map(|m| Row {
            ppl_delta_pct: (m.ppl / source.ppl - 1.0) * 100.0,
            estimates: hw
                .iter()
                .map(|h| estimate(m, h, m.candidate != "source"))
                .collect(),
            measured: m.clone(),
            verdict: String::new(),
            on_frontier: false,
        })
        .collect();
    let points: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.measured.bits_per_weight, r.ppl_delta_pct))
        .collect();
    for (r, f) in rows.iter_mut().zip(frontier(&points)) {
        r.on_frontier = f;
    }
    // Each candidate's best feasible hardware, or the first constraint it fails.
    let mut best: Option<(usize, usize, f64)> = None;
    let mut why: Vec<String> = vec![String::new(); rows.len()];
    for (i, r) in rows.iter().enumerate() {
        if let Some(max) = c.max_ppl_delta_pct {
            if r.ppl_delta_pct > max {
                why[i] = format!(
                    "PPL {:+.2}% exceeds the allowed {max:+.2}% by {:.2} points",
                    r.ppl_delta_pct,
                    r.ppl_delta_pct - max
                );
                continue;
            }
        }
        let mut fails = vec![];
        let mut feasible: Option<(usize, f64)> = None;
        for (k, e) in r.estimates.iter().enumerate() {
            let h = &hw[k];
            if !e.fits {
                fails.push(format!(
                    "does not fit in {}'s {:.0} GB (needs {:.1} GB with {:.0}% headroom)",
                    h.name,
                    h.memory_gb,
                    r.measured.weight_bytes as f64 * (1.0 + MEMORY_HEADROOM) / 1e9,
                    MEMORY_HEADROOM * 100.0
                ));
            } else if c.max_latency_ms.is_some_and(|m| e.latency_ms > m) {
                fails.push(format!(
                    "{:.1} ms/token on {} exceeds {:.1} ms",
                    e.latency_ms,
                    h.name,
                    c.max_latency_ms.unwrap_or_default()
                ));
            } else if c.min_tokens_per_s.is_some_and(|m| e.tokens_per_s < m) {
                fails.push(format!(
                    "{:.0} tokens/s on {} is below {:.0}",
                    e.tokens_per_s,
                    h.name,
                    c.min_tokens_per_s.unwrap_or_default()
                ));
            } else if feasible.is_none_or(|(_, cost)| e.usd_per_m_tokens < cost) {
                feasible = Some((k, e.usd_per_m_tokens));
            }
        }
        match feasible {
            Some((k, cost)) => {
                if best.is_none_or(|(_, _, b)| cost < b) {
                    best = Some((i, k, cost));
                }
                why[i] = format!("${cost:.4}/1M tokens at best ({})", hw[k].name);
            }
            None => why[i] = fails.join("; "),
        }
    }
    let chosen = best.map(|(i, k, _)| (rows[i].measured.candidate.clone(), hw[k].name.clone()));
    for (i, r) in rows.iter_mut().enumerate() {
        r.verdict = match best {
            Some((b, _, _)) if b == i => "chosen".into(),
            Some((_, _, cost)) if why[i].starts_with('$') => {
                format!("costlier: {} vs ${cost:.4}/1M chosen", why[i])
            }
            _ => why[i].clone(),
        };
    }
    let none_because = chosen.is_none().then(|| {
        let mut parts = c.describe();
        parts.push("fitting in memory".into());
        format!(
            "no candidate meets {} on {}",
            parts.join(", "),
            hw.iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    Ok(Decision {
        rows,
        chosen,
        none_because,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, bytes: u64, ppl: f64) -> Measured {
        Measured {
            candidate: name.into(),
            weight_bytes: bytes,
            file_bytes: bytes,
            weights: 1_000_000_000,
            bits_per_weight: bytes as f64 * 8.0 / 1e9,
            ppl,
            tokens: 1000,
            load_s: 1.0,
            pack_s: 1.0,
        }
    }

    #[test]
    fn every_candidate_builds_and_names_are_unique() {
        check_table().expect("table");
        let mut names: Vec<&str> = CANDIDATES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CANDIDATES.len());
        for c in CANDIDATES.iter().skip(1) {
            let o = c.options().expect("options");
            // "Needs calibration" here: uses statistics (skipped without --calib-text),
            // which calibrated_vq and tenpak_x do even where they could run without.
            let cal = o.tuning.awq
                || o.tuning.gptq
                || matches!(&o.selection, Selection::Codec(s) if s.uses_calibration());
            assert_eq!(cal, c.needs_calibration, "{}", c.name);
        }
        assert!(select(&["nope".into()]).is_err());
        assert_eq!(select(&["int4-g128".into()]).expect("ok").len(), 1);
    }

    #[test]
    fn picks_the_cheapest_feasible_pair_and_explains_the_rest() {
        let hw = default_hardware();
        let ms = vec![
            m("source", 2_000_000_000, 10.0),
            m("int4-g128", 560_000_000, 10.15),
            m("int4-g64", 600_000_000, 10.1),
            m("bpw-3.25", 420_000_000, 11.0),
        ];
        let c = Constraints {
            max_ppl_delta_pct: Some(2.0),
            ..Constraints::default()
        };
        let d = decide(&ms, &hw, &c).expect("decide");
        let (cand, h) = d.chosen.clone().expect("a choice");
        assert_eq!(cand, "int4-g128");
        // Cost per token falls with price/bandwidth: t4 ($0.50, 320 GB/s) vs others.
        let e = &d.rows[1].estimates;
        let cheapest = e
            .iter()
            .filter(|e| e.fits)
            .min_by(|a, b| a.usd_per_m_tokens.total_cmp(&b.usd_per_m_tokens))
            .expect("one");
        assert_eq!(h, cheapest.hardware);
        assert!(
            d.rows[3].verdict.contains("exceeds the allowed"),
            "{}",
            d.rows[3].verdict
        );
        assert!(
            d.rows[2].verdict.starts_with("costlier"),
            "{}",
            d.rows[2].verdict
        );
        // The frontier: 3.25 (smallest), g128, g64 (best quality among compressed), source.
        assert!(d.rows.iter().all(|r| r.on_frontier));
        // Impossible constraints: a clear answer, not an error.
        let d = decide(
            &ms,
            &hw,
            &Constraints {
                max_ppl_delta_pct: Some(0.5),
                max_latency_ms: Some(0.01),
                ..Constraints::default()
            },
        )
        .expect("decide");
        assert!(d.chosen.is_none());
        assert!(d
            .none_because
            .as_deref()
            .is_some_and(|s| s.starts_with("no candidate meets PPL delta <= 0.5%")));
    }

    #[test]
    fn estimates_follow_bytes_and_bandwidth() {
        let h = &default_hardware()[1]; // a10g
        let e = estimate(&m("x", 600_000_000, 1.0), h, true);
        assert!((e.tokens_per_s - 0.7 * 600.0 / 0.6).abs() < 1e-6);
        assert!((e.usd_per_m_tokens - 1.0 / (e.tokens_per_s * 3600.0) * 1e6).abs() < 1e-9);
        assert!(e.fits);
        assert!(!estimate(&m("y", 30_000_000_000, 1.0), h, false).fits);
        assert!(frontier(&[(4.0, 1.0), (5.0, 2.0)]) == vec![true, false]);
    }
}
