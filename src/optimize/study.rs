//! The measuring half of the optimizer, shared by `tenpak optimize` and the registry's
//! `POST /optimize` jobs: each candidate is packed (cached by model digest + candidate +
//! calibration text digest), then measured (size and bits/weight, perplexity on exactly
//! the source's windows, the time to verify and decode it here). Measurements are cached
//! beside the artifacts (keyed also by the evaluation text and windows), so a rerun costs
//! nothing, and [`Report`] is handed to the caller after every candidate, so an
//! interrupted run resumes from the cache.
//!
//! Texts come in already tokenized ([`Text`]): the CLI tokenizes in-process, the registry
//! in a child process under a time limit (a Hub model's tokenizer is untrusted).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{decide, Candidate, Constraints, Decision, Hardware, Measured, CANDIDATES};
use crate::calib::{self, CalibOptions};
use crate::dtype::DType;
use crate::runtime::{perplexity, Model, Windows};
use crate::source::TensorSource;
use crate::{Error, Result};

/// A tokenized text.
#[derive(Debug, Clone)]
pub struct Text {
    /// What it is, for people (a path, `builtin:NAME`, `upload`).
    pub label: String,
    /// sha256 hex of its UTF-8 bytes.
    pub digest: String,
    /// Its token ids (no special tokens).
    pub ids: Vec<u32>,
}

impl Text {
    /// `ids` of `text`, labelled, with the text's digest.
    pub fn new(label: impl Into<String>, text: &str, ids: Vec<u32>) -> Self {
        Self {
            label: label.into(),
            digest: hex::encode(Sha256::digest(text.as_bytes())),
            ids,
        }
    }
}

/// What to measure and decide.
#[derive(Debug, Clone)]
pub struct Study {
    /// The model (HF directory or `.gguf`).
    pub model: PathBuf,
    /// The model as the report names it.
    pub model_label: String,
    /// sha256 hex of the model ([`model_digest`]): the cache's key.
    pub model_digest: String,
    /// The evaluation text.
    pub text: Text,
    /// The token prepended to each window (the tokenizer's default BOS), if any.
    pub bos: Option<u32>,
    /// The evaluation windows.
    pub windows: Windows,
    /// Calibration text for the candidates that need it; without it they are skipped.
    pub calib: Option<Text>,
    /// Cache root (packed candidates and measurements under `<root>/<digest16>/`).
    pub cache: PathBuf,
    /// Candidates to measure (the source is measured first in any case).
    pub candidates: Vec<Candidate>,
    /// Hardware considered.
    pub hardware: Vec<Hardware>,
    /// Constraints of the choice.
    pub constraints: Constraints,
}

/// Progress of [`Study::run`].
#[derive(Debug)]
pub enum Event<'a> {
    /// Candidate `index` of `total` starts.
    Candidate {
        /// Its name.
        name: &'a str,
        /// 0-based.
        index: usize,
        /// Candidates to measure (source included).
        total: usize,
    },
    /// A step of the current candidate moved: `done` of `total`.
    Step {
        /// `calibrate`, `pack`, `load` or `ppl`.
        what: &'static str,
        /// Units done.
        done: usize,
        /// Units in all (0: not known yet).
        total: usize,
    },
    /// A candidate was measured (or read from the cache).
    Measured {
        /// What was measured.
        m: &'a Measured,
        /// Served from the cache.
        cached: bool,
    },
}

/// A candidate not measured, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Its name.
    pub candidate: String,
    /// Why.
    pub reason: String,
}

/// A text as the report names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRef {
    /// What it is (a path, `builtin:NAME`, `upload`).
    pub path: String,
    /// `sha256:...` of its bytes.
    pub digest: String,
}

/// The evaluation windows as the report states them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowsRef {
    /// Tokens per window.
    pub ctx: usize,
    /// Tokens of the text evaluated.
    pub max_tokens: usize,
    /// Whether BOS is prepended to each window.
    pub bos: bool,
}

/// The chosen pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    /// Candidate name.
    pub candidate: String,
    /// Hardware name.
    pub hardware: String,
}

/// The results file (`tenpak optimize --output`, the registry's `/optimize` result):
/// rewritten after every candidate (`complete: false` until the last).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The model as given.
    pub model: String,
    /// `sha256:...` of the model.
    pub model_digest: String,
    /// The evaluation text.
    pub text: String,
    /// `sha256:...` of the evaluation text.
    pub text_digest: String,
    /// The calibration text, if one was given.
    pub calib_text: Option<TextRef>,
    /// The evaluation windows.
    pub windows: WindowsRef,
    /// The constraints.
    pub constraints: Constraints,
    /// Hardware considered.
    pub hardware: Vec<Hardware>,
    /// What the serving figures are.
    pub estimates_are: String,
    /// Every candidate asked for was measured or skipped.
    pub complete: bool,
    /// One row per measured candidate, the source first.
    pub rows: Vec<super::Row>,
    /// Candidates not measured, with the reason.
    pub skipped: Vec<Skipped>,
    /// The chosen (candidate, hardware), if any meets every constraint.
    pub chosen: Option<Chosen>,
    /// When nothing is chosen: why.
    pub none_because: Option<String>,
}

/// What [`Study::run`] returns.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final report (`complete: true`).
    pub report: Report,
    /// The decision it states.
    pub decision: Decision,
    /// Candidates served from the cache.
    pub from_cache: usize,
    /// Seconds the run took.
    pub seconds: f64,
}

impl Report {
    /// The decision the report states (what [`plot::pareto_svg`](super::plot::pareto_svg)
    /// draws).
    pub fn decision(&self) -> Decision {
        Decision {
            rows: self.rows.clone(),
            chosen: self
                .chosen
                .as_ref()
                .map(|c| (c.candidate.clone(), c.hardware.clone())),
            none_because: self.none_because.clone(),
        }
    }

    /// The Pareto plot (SVG), titled with the model, tokens and text.
    pub fn plot_svg(&self) -> String {
        let name = |s: &str| {
            Path::new(s)
                .file_name()
                .map_or_else(|| s.to_string(), |n| n.to_string_lossy().into_owned())
        };
        let title = format!(
            "{}: bits/weight vs PPL change ({} tokens of {})",
            name(&self.model),
            self.rows.first().map_or(0, |r| r.measured.tokens),
            name(&self.text)
        );
        super::plot::pareto_svg(&self.decision(), &title)
    }
}

/// What the report says of the serving figures.
pub const ESTIMATES_ARE: &str = "estimates from bytes moved per token, the hardware's bandwidth and efficiency factors (docs/OPTIMIZE.md), not measurements on that hardware";

/// sha256 hex of a file, streamed.
pub fn file_digest(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).map_err(|e| Error::io("opening", p, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io("reading", p, e))?;
    Ok(hex::encode(h.finalize()))
}

/// The model's digest: its file's sha256, or for a directory the sha256 of its files'
/// names and digests (weights, config, tokenizer).
pub fn model_digest(p: &Path) -> Result<String> {
    if p.is_file() {
        return file_digest(p);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::io("reading", p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for f in names {
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(file_digest(&f)?.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// This machine's copy bandwidth, GB/s counting bytes read + written (the `cpu`
/// hardware entry's bandwidth).
pub fn copy_bandwidth() -> f64 {
    let n = 64 << 20;
    let a = vec![1u8; n];
    let mut b = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        b.copy_from_slice(&a);
        std::hint::black_box(&b);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * n as f64 / best / 1e9
}

/// The hardware table with the `cpu` entry's bandwidth measured here (unless a
/// hardware file set it to something else).
pub fn hardware_measured_here(file: Option<&Path>) -> Result<Vec<Hardware>> {
    let mut all = super::hardware_with_overrides(file)?;
    if let Some(cpu) = all.iter_mut().find(|h| h.name == "cpu") {
        if file.is_none() || cpu.source.contains("measured copy bandwidth") {
            cpu.bandwidth_gb_s = copy_bandwidth();
            cpu.source = format!(
                "this machine: {:.1} GB/s measured copy bandwidth (read + write); price assumed",
                cpu.bandwidth_gb_s
            );
        }
    }
    Ok(all)
}

/// Checks constraint values: finite, and latency/throughput positive.
pub fn check_constraints(c: &Constraints) -> Result<()> {
    for (v, what) in [
        (c.max_ppl_delta_pct, "max_ppl_delta"),
        (c.max_latency_ms, "max_latency"),
        (c.min_tokens_per_s, "min_throughput"),
    ] {
        if v.is_some_and(|v| !v.is_finite() || (what != "max_ppl_delta" && v <= 0.0)) {
            return Err(Error::InvalidOption {
                option: what,
                reason: "must be a positive number".into(),
            });
        }
    }
    Ok(())
}

/// A name part no other writer uses at the same time: this process and a counter.
fn unique() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Perplexity of a model source on the windows.
fn ppl(
    src: &dyn TensorSource,
    ids: &[u32],
    bos: Option<u32>,
    w: Windows,
    on: &(dyn Fn(Event<'_>) + Sync),
) -> Result<(f64, usize)> {
    let model = Model::load(src)?;
    let r = perplexity(&model, ids, bos, w, &|k, n| {
        on(Event::Step {
            what: "ppl",
            done: k,
            total: n,
        })
    })?;
    Ok((r.ppl, r.tokens))
}

impl Study {
    /// The cache directory of this model.
    pub fn dir(&self) -> PathBuf {
        self.cache
            .join(&self.model_digest[..16.min(self.model_digest.len())])
    }

    fn eval_key(&self) -> String {
        hex::encode(Sha256::digest(
            format!(
                "{}/{}/{}",
                self.text.digest, self.windows.ctx, self.windows.max_tokens
            )
            .as_bytes(),
        ))
    }

    /// The report of `measured` so far.
    pub fn report(
        &self,
        measured: &[Measured],
        skipped: &[Skipped],
        complete: bool,
    ) -> Result<(Report, Decision)> {
        let decision = decide(measured, &self.hardware, &self.constraints)?;
        let report = Report {
            model: self.model_label.clone(),
            model_digest: format!("sha256:{}", self.model_digest),
            text: self.text.label.clone(),
            text_digest: format!("sha256:{}", self.text.digest),
            calib_text: self.calib.as_ref().map(|c| TextRef {
                path: c.label.clone(),
                digest: format!("sha256:{}", c.digest),
            }),
            windows: WindowsRef {
                ctx: self.windows.ctx,
                max_tokens: self.windows.max_tokens,
                bos: self.bos.is_some(),
            },
            constraints: self.constraints,
            hardware: self.hardware.clone(),
            estimates_are: ESTIMATES_ARE.into(),
            complete,
            rows: decision.rows.clone(),
            skipped: skipped.to_vec(),
            chosen: decision.chosen.as_ref().map(|(c, h)| Chosen {
                candidate: c.clone(),
                hardware: h.clone(),
            }),
            none_because: decision.none_because.clone(),
        };
        Ok((report, decision))
    }

    /// Measures every candidate (the source first), calling `on` with progress and
    /// `save` with the report after each candidate; returns the final report.
    pub fn run(
        &self,
        on: &(dyn Fn(Event<'_>) + Sync),
        save: &mut dyn FnMut(&Report) -> Result<()>,
    ) -> Result<Outcome> {
        let t0 = Instant::now();
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let mut order = vec![CANDIDATES[0]];
        order.extend(
            self.candidates
                .iter()
                .filter(|c| c.name != "source")
                .copied(),
        );
        let (mut measured, mut skipped, mut from_cache) = (vec![], vec![], 0);
        let total = order.len();
        for (index, c) in order.iter().enumerate() {
            on(Event::Candidate {
                name: c.name,
                index,
                total,
            });
            if c.needs_calibration && self.calib.is_none() {
                skipped.push(Skipped {
                    candidate: c.name.into(),
                    reason: "needs calibration: add a calibration text".into(),
                });
                continue;
            }
            // An error is the candidate's (the last `Event::Candidate` names it).
            let (m, cached) = self.measure(c, &dir, on)?;
            from_cache += usize::from(cached);
            on(Event::Measured { m: &m, cached });
            measured.push(m);
            save(&self.report(&measured, &skipped, false)?.0)?;
        }
        let (report, decision) = self.report(&measured, &skipped, true)?;
        save(&report)?;
        Ok(Outcome {
            report,
            decision,
            from_cache,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Measures one candidate (or reads its cached measurement).
    fn measure(
        &self,
        c: &Candidate,
        dir: &Path,
        on: &(dyn Fn(Event<'_>) + Sync),
    ) -> Result<(Measured, bool)> {
        let calib_key = match (&self.calib, c.needs_calibration) {
            (Some(t), true) => t.digest[..12].to_string(),
            _ => "nocal".into(),
        };
        let json = dir.join(format!(
            "{}.{calib_key}.{}.json",
            c.name,
            &self.eval_key()[..16]
        ));
        if let Ok(bytes) = std::fs::read(&json) {
            if let Ok(m) = serde_json::from_slice::<Measured>(&bytes) {
                return Ok((m, true));
            }
        }
        let save = |m: &Measured| {
            let bytes = serde_json::to_vec_pretty(m).map_err(|e| Error::InvalidOption {
                option: "measurement",
                reason: e.to_string(),
            })?;
            crate::source::write_atomic(&json, &bytes)
        };
        let Some(mut opts) = c.options() else {
            // The source itself.
            on(Event::Step {
                what: "load",
                done: 0,
                total: 1,
            });
            let t0 = Instant::now();
            let src = crate::models::open(&self.model, DType::BF16)?;
            let mut weights = 0u64;
            for m in src.tensors() {
                weights += src.read_f32(&m.name)?.len() as u64;
            }
            let load_s = t0.elapsed().as_secs_f64();
            let weight_bytes: u64 = src
                .tensors()
                .iter()
                .map(|m| (m.numel() * m.dtype.size()) as u64)
                .sum();
            let (p, tokens) = ppl(src.as_ref(), &self.text.ids, self.bos, self.windows, on)?;
            let m = Measured {
                candidate: c.name.into(),
                weight_bytes,
                file_bytes: 0,
                weights,
                bits_per_weight: weight_bytes as f64 * 8.0 / weights.max(1) as f64,
                ppl: p,
                tokens,
                load_s,
                pack_s: 0.0,
            };
            save(&m)?;
            return Ok((m, false));
        };
        let tnpk = dir.join(format!("{}.{calib_key}.tnpk", c.name));
        let mut pack_s = 0.0;
        if !tnpk.exists() {
            if let (true, Some(t)) = (c.needs_calibration, &self.calib) {
                let stats = dir.join(format!("calib.{}.stats.safetensors", &t.digest[..12]));
                if !stats.exists() {
                    // Written under a name of this process's own, then renamed: two
                    // studies of the same model (registry workers) never share a
                    // half-written file.
                    let tmp = dir.join(format!(".calib.{}.{}", &t.digest[..12], unique()));
                    let src = crate::models::open(&self.model, DType::BF16)?;
                    let mut model = Model::load(src.as_ref())?;
                    drop(src);
                    calib::calibrate_to(
                        &mut model,
                        &t.ids,
                        self.bos,
                        CalibOptions {
                            samples: calib::DEFAULT_SAMPLES,
                            seq: calib::DEFAULT_SEQ,
                            xtx_max_width: calib::DEFAULT_XTX_MAX_WIDTH,
                        },
                        0,
                        &[
                            ("samples", calib::DEFAULT_SAMPLES.to_string()),
                            ("seq", calib::DEFAULT_SEQ.to_string()),
                            ("text", t.label.clone()),
                            ("text_sha256", t.digest.clone()),
                            ("model", self.model_label.clone()),
                        ],
                        &tmp,
                        &|_, k, n| {
                            on(Event::Step {
                                what: "calibrate",
                                done: k,
                                total: n,
                            })
                        },
                    )
                    .and_then(|_| {
                        std::fs::rename(&tmp, &stats)
                            .map_err(|e| Error::io("renaming to", &stats, e))
                    })
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })?;
                }
                opts.calib = Some(std::sync::Arc::new(crate::calib::Calib::open(
                    &stats,
                    crate::codec::gptq::DEFAULT_DAMP,
                )?));
            }
            let src = crate::models::open(&self.model, DType::BF16)?;
            let n = src.tensors().len();
            let done = std::sync::atomic::AtomicUsize::new(0);
            let t0 = Instant::now();
            let tmp = dir.join(format!(".{}.{calib_key}.{}.tnpk.partial", c.name, unique()));
            let packed = crate::artifact::pack::pack(
                src.as_ref(),
                &tmp,
                &opts,
                &[],
                &[("source", &self.model_label), ("selection", c.about)],
                &|_| {
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    on(Event::Step {
                        what: "pack",
                        done: d,
                        total: n,
                    })
                },
            );
            if let Err(e) = packed {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &tnpk).map_err(|e| Error::io("renaming to", &tnpk, e))?;
            pack_s = t0.elapsed().as_secs_f64();
        }
        on(Event::Step {
            what: "load",
            done: 0,
            total: 1,
        });
        let t0 = Instant::now();
        let art = crate::artifact::Artifact::open(Box::new(
            crate::artifact::source::LocalFile::open(&tnpk)?,
        ))?;
        let all: Vec<_> = art.manifest().tensors.iter().collect();
        let mut weights = 0u64;
        art.for_each_encoded(&all, |t, bytes| {
            weights += art.decode(t, &bytes)?.len() as u64;
            Ok(())
        })?;
        let load_s = t0.elapsed().as_secs_f64();
        let weight_bytes: u64 = all.iter().map(|t| t.encoded_length).sum();
        let file_bytes = std::fs::metadata(&tnpk)
            .map_err(|e| Error::io("reading", &tnpk, e))?
            .len();
        let src = crate::models::open(&tnpk, DType::BF16)?;
        let (p, tokens) = ppl(src.as_ref(), &self.text.ids, self.bos, self.windows, on)?;
        let m = Measured {
            candidate: c.name.into(),
            weight_bytes,
            file_bytes,
            weights,
            bits_per_weight: weight_bytes as f64 * 8.0 / weights.max(1) as f64,
            ppl: p,
            tokens,
            load_s,
            pack_s,
        };
        save(&m)?;
        Ok((m, false))
    }
}
