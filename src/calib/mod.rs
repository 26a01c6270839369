//! Calibration statistics: what the inputs of every linear layer look like on real text.
//!
//! For the input `x` of each linear layer (over all calibration tokens) this records
//! - `mean |x|` per input channel — AWQ's activation scale;
//! - `mean x²` per input channel — the diagonal of the Hessian proxy `E[xxᵀ]`;
//! - for inputs no wider than `xtx_max_width`, the full `E[xxᵀ] = XᵀX / n` — what
//!   GPTQ-style error feedback needs.
//!
//! **File format** (safetensors, f32): for every linear `L` (e.g.
//! `model.layers.3.mlp.up_proj`): `L.input_abs_mean` `[in]`, `L.input_sq_mean` `[in]`;
//! and `L.input_xtx` `[in, in]` for the *first* consumer of each input (q_proj for q/k/v,
//! gate_proj for gate/up, o_proj, down_proj) — the others share it, which metadata key
//! `xtx_shared` records as JSON (`{"…k_proj": "…q_proj", …}`). Metadata also gives
//! `format = tenpak-calib`, `version = 1`, `tokens`, `samples`, `seq`, `text_sha256`.
//!
//! Windows are `samples` evenly spaced spans of `seq` tokens of the text; where the
//! tokenizer adds a BOS it is prepended (as in use) but its position is left out of the
//! statistics (its activations are attention-sink outliers, not text).
//!
//! With `--fisher`, the file also holds the empirical Fisher diagonal of every block
//! linear (`<linear>.fisher`, `[out, in]`: mean squared loss gradients, [`fisher`]), what
//! `--sensitivity fisher` spends a bit budget by.

mod file;
pub mod fisher;

pub use file::Calib;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;

use crate::runtime::model::{ce, Model, Observer};
use crate::source::writer::NamedTensor;
use crate::{Error, Result};

/// Calibration settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibOptions {
    /// Windows.
    pub samples: usize,
    /// Tokens per window (without BOS).
    pub seq: usize,
    /// Widest input whose full XᵀX is kept.
    pub xtx_max_width: usize,
}

impl Default for CalibOptions {
    fn default() -> Self {
        Self {
            samples: 128,
            seq: 512,
            xtx_max_width: 1024,
        }
    }
}

struct Site {
    consumers: Vec<String>,
    abs: Vec<f64>,
    sq: Vec<f64>,
    xtx: Option<Vec<f64>>,
    rows: u64,
}

/// Accumulated statistics.
pub struct Stats {
    sites: Vec<Site>,
    index: HashMap<String, usize>,
    skip_rows: usize,
    xtx_max_width: usize,
    /// Tokens observed per site.
    pub tokens: u64,
}

impl Stats {
    fn new(xtx_max_width: usize) -> Self {
        Self {
            sites: vec![],
            index: HashMap::new(),
            skip_rows: 0,
            xtx_max_width,
            tokens: 0,
        }
    }
}

impl Observer for Stats {
    fn observe(&mut self, consumers: &[String], x: &Tensor) -> Result<()> {
        let x = if self.skip_rows > 0 {
            let t = x.dim(0).map_err(ce)?;
            x.narrow(0, self.skip_rows, t - self.skip_rows)
                .map_err(ce)?
        } else {
            x.clone()
        };
        let (rows, width) = x.dims2().map_err(ce)?;
        let key = &consumers[0];
        let si = match self.index.get(key) {
            Some(&i) => i,
            None => {
                self.sites.push(Site {
                    consumers: consumers.to_vec(),
                    abs: vec![0.0; width],
                    sq: vec![0.0; width],
                    xtx: (width <= self.xtx_max_width).then(|| vec![0.0; width * width]),
                    rows: 0,
                });
                self.index.insert(key.clone(), self.sites.len() - 1);
                self.sites.len() - 1
            }
        };
        let site = &mut self.sites[si];
        let abs: Vec<f32> = x
            .abs()
            .and_then(|a| a.sum(0))
            .and_then(|a| a.to_vec1())
            .map_err(ce)?;
        let sq: Vec<f32> = x
            .sqr()
            .and_then(|a| a.sum(0))
            .and_then(|a| a.to_vec1())
            .map_err(ce)?;
        for (acc, v) in site.abs.iter_mut().zip(&abs) {
            *acc += *v as f64;
        }
        for (acc, v) in site.sq.iter_mut().zip(&sq) {
            *acc += *v as f64;
        }
        if let Some(xtx) = site.xtx.as_mut() {
            // One window's XᵀX in f32 by matmul, accumulated across windows in f64.
            let m: Vec<f32> = x
                .t()
                .and_then(|t| t.contiguous())
                .and_then(|t| t.matmul(&x))
                .and_then(|m| m.flatten_all())
                .and_then(|m| m.to_vec1())
                .map_err(ce)?;
            for (acc, v) in xtx.iter_mut().zip(&m) {
                *acc += *v as f64;
            }
        }
        site.rows += rows as u64;
        Ok(())
    }
}

/// Calibration windows and their length, the defaults of `tenpak calibrate` and the optimizer.
pub const DEFAULT_SAMPLES: usize = 32;
/// Tokens per calibration window.
pub const DEFAULT_SEQ: usize = 512;
/// Widest input whose full `XᵀX` is kept (as `tenpak calibrate --xtx-max-width`).
pub const DEFAULT_XTX_MAX_WIDTH: usize = 2048;

/// Runs `model` over the calibration windows of `ids` and writes the statistics file
/// (`tenpak calibrate`'s, with `extra` metadata); with `fisher_samples > 0`, also the
/// empirical Fisher diagonal from that many windows (a backward pass each; `model` is
/// left switched to differentiable ops). Returns the tokens observed.
#[allow(clippy::too_many_arguments)]
pub fn calibrate_to(
    model: &mut Model,
    ids: &[u32],
    bos: Option<u32>,
    opts: CalibOptions,
    fisher_samples: usize,
    extra: &[(&str, String)],
    out: &Path,
    progress: &dyn Fn(&str, usize, usize),
) -> Result<u64> {
    let wins = windows(ids, opts)?;
    let stats = collect(model, &wins, bos, opts, &|k, n| {
        progress("statistics", k, n)
    })?;
    let mut more = Vec::new();
    let mut extra = extra.to_vec();
    if fisher_samples > 0 {
        let fw = windows(
            ids,
            CalibOptions {
                samples: fisher_samples,
                ..opts
            },
        )?;
        for (name, shape, v) in fisher::collect(model, &fw, bos, &|k, n| progress("fisher", k, n))?
        {
            let linear = name.strip_suffix(".weight").unwrap_or(&name).to_string();
            more.push((format!("{linear}.fisher"), shape, v));
        }
        extra.push(("fisher_samples", fisher_samples.to_string()));
    }
    stats.save_with(out, &extra, more)?;
    Ok(stats.tokens)
}

/// Evenly spaced windows of `seq` tokens over `ids`.
pub fn windows(ids: &[u32], opts: CalibOptions) -> Result<Vec<&[u32]>> {
    if opts.samples == 0 || opts.seq == 0 {
        return Err(Error::InvalidOption {
            option: "samples/seq",
            reason: "must be positive".into(),
        });
    }
    if ids.len() < opts.seq {
        return Err(Error::TextTooShort {
            tokens: ids.len(),
            window: opts.seq,
        });
    }
    let span = ids.len() - opts.seq;
    let n = opts.samples;
    Ok((0..n)
        .map(|k| {
            let start = if n == 1 { 0 } else { k * span / (n - 1) };
            &ids[start..start + opts.seq]
        })
        .collect())
}

/// Runs `model` over the windows and accumulates statistics.
pub fn collect(
    model: &Model,
    windows: &[&[u32]],
    bos: Option<u32>,
    opts: CalibOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<Stats> {
    let mut stats = Stats::new(opts.xtx_max_width);
    stats.skip_rows = usize::from(bos.is_some());
    for (k, w) in windows.iter().enumerate() {
        let mut input: Vec<u32> = bos.into_iter().collect();
        input.extend_from_slice(w);
        model.forward_observed(&input, Some(&mut stats))?;
        stats.tokens += w.len() as u64;
        progress(k + 1, windows.len());
    }
    Ok(stats)
}

impl Stats {
    /// The tensors of the statistics file, by name (see the module docs).
    pub fn tensors(&self) -> (Vec<NamedTensor>, BTreeMap<String, String>) {
        let mut out = vec![];
        let mut shared = BTreeMap::new();
        for s in &self.sites {
            let n = s.rows.max(1) as f64;
            let w = s.abs.len();
            let abs: Vec<f32> = s.abs.iter().map(|v| (v / n) as f32).collect();
            let sq: Vec<f32> = s.sq.iter().map(|v| (v / n) as f32).collect();
            for c in &s.consumers {
                out.push((format!("{c}.input_abs_mean"), vec![w], abs.clone()));
                out.push((format!("{c}.input_sq_mean"), vec![w], sq.clone()));
            }
            if let Some(x) = &s.xtx {
                out.push((
                    format!("{}.input_xtx", s.consumers[0]),
                    vec![w, w],
                    x.iter().map(|v| (v / n) as f32).collect(),
                ));
                for c in &s.consumers[1..] {
                    shared.insert(c.clone(), s.consumers[0].clone());
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let mut md = BTreeMap::new();
        md.insert("format".into(), "tenpak-calib".into());
        md.insert("version".into(), "1".into());
        md.insert("tokens".into(), self.tokens.to_string());
        md.insert(
            "xtx_shared".into(),
            serde_json::to_string(&shared).unwrap_or_default(),
        );
        (out, md)
    }

    /// Writes the statistics file (safetensors), adding `extra` metadata.
    pub fn save(&self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        self.save_with(path, extra, Vec::new())
    }

    /// [`Stats::save`] with more tensors (the Fisher diagonal).
    pub fn save_with(
        &self,
        path: &Path,
        extra: &[(&str, String)],
        more: Vec<NamedTensor>,
    ) -> Result<()> {
        let (mut tensors, mut md) = self.tensors();
        tensors.extend(more);
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in extra {
            md.insert(k.to_string(), v.clone());
        }
        crate::source::writer::write_safetensors_f32(path, &tensors, &md)
    }
}
