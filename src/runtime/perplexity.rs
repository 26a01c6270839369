//! Perplexity with the window rule of the reference files (`reference.json`, `protocol`):
//!
//! the text is tokenized once without special tokens; the first `max_tokens` tokens are
//! cut into windows of `ctx` tokens starting every `stride` tokens (default `stride = ctx`:
//! non-overlapping; a trailing partial window is dropped). Where the tokenizer adds a BOS
//! by default (Gemma) each window is fed as `[BOS] + ctx tokens` and all `ctx` tokens are
//! scored; otherwise the window is fed as is and its last `ctx − 1` tokens are scored.
//! With `stride < ctx`, a window scores only the tokens no earlier window scored.
//! PPL = exp(Σ NLL / scored tokens), NLL summed in f64.

use std::time::Instant;

use serde::Serialize;

use super::model::{ce, Model};
use crate::{Error, Result};

/// Window settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Tokens per window (without BOS).
    pub ctx: usize,
    /// Distance between window starts.
    pub stride: usize,
    /// Tokens of the text to use at most.
    pub max_tokens: usize,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Perplexity {
    /// exp(mean NLL).
    pub ppl: f64,
    /// Σ NLL (nats).
    pub nll_sum: f64,
    /// Scored tokens.
    pub tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Whether a BOS was prepended to each window.
    pub bos_prepended: bool,
    /// Tokens fed through the model per second (scored or not).
    pub tokens_per_s: f64,
    /// Wall time.
    pub seconds: f64,
}

/// The windows of `ids`: (start, end) of each, and the index from which it is scored.
pub fn plan_windows(n: usize, w: Windows) -> Result<Vec<(usize, usize, usize)>> {
    if w.ctx < 2 || w.stride == 0 || w.stride > w.ctx {
        return Err(Error::InvalidOption {
            option: "ctx/stride",
            reason: format!(
                "ctx {} / stride {}: need ctx ≥ 2 and 1 ≤ stride ≤ ctx",
                w.ctx, w.stride
            ),
        });
    }
    let n = n.min(w.max_tokens);
    let mut out = vec![];
    let mut start = 0;
    let mut scored_until = 0;
    while start + w.ctx <= n {
        let end = start + w.ctx;
        out.push((start, end, scored_until.max(start)));
        scored_until = end;
        start += w.stride;
    }
    if out.is_empty() {
        return Err(Error::TextTooShort {
            tokens: n,
            window: w.ctx,
        });
    }
    Ok(out)
}

/// log p(input[p+1] | input[..=p]) for every position p < t − 1, from logits `[t, vocab]`:
/// one parallel pass per row (max, log-sum-exp in f64, the target's logit), instead of a
/// full log-softmax matrix.
fn target_log_probs(logits: &candle_core::Tensor, input: &[u32]) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    let (t, vocab) = logits.dims2().map_err(ce)?;
    let flat: Vec<f32> = logits.flatten_all().and_then(|l| l.to_vec1()).map_err(ce)?;
    Ok(flat
        .par_chunks(vocab)
        .take(t - 1)
        .zip(input[1..].par_iter())
        .map(|(row, &target)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            (row[target as usize] - max) as f64 - sum.ln()
        })
        .map(|v| v as f32)
        .collect())
}

/// Evaluates `model` on `ids` (the text's token ids).
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    bos: Option<u32>,
    w: Windows,
    progress: &dyn Fn(usize, usize),
) -> Result<Perplexity> {
    let windows = plan_windows(ids.len(), w)?;
    let t0 = Instant::now();
    let (mut nll, mut scored, mut fed) = (0f64, 0usize, 0usize);
    for (k, &(start, end, from)) in windows.iter().enumerate() {
        let mut input: Vec<u32> = bos.into_iter().collect();
        input.extend_from_slice(&ids[start..end]);
        let off = input.len() - (end - start); // 1 with BOS, else 0
        let logits = model.forward(&input)?;
        let picked = target_log_probs(&logits, &input)?;
        for (p, lp) in picked.iter().enumerate() {
            let text_idx = start + p + 1 - off;
            if text_idx >= from {
                nll -= *lp as f64;
                scored += 1;
            }
        }
        fed += input.len();
        progress(k + 1, windows.len());
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Perplexity {
        ppl: (nll / scored as f64).exp(),
        nll_sum: nll,
        tokens: scored,
        windows: windows.len(),
        bos_prepended: bos.is_some(),
        tokens_per_s: fed as f64 / seconds,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_rule() {
        let w = Windows {
            ctx: 4,
            stride: 4,
            max_tokens: 100,
        };
        assert_eq!(plan_windows(10, w).expect("w"), vec![(0, 4, 0), (4, 8, 4)]);
        let w = Windows {
            ctx: 4,
            stride: 2,
            max_tokens: 8,
        };
        assert_eq!(
            plan_windows(100, w).expect("w"),
            vec![(0, 4, 0), (2, 6, 4), (4, 8, 6)]
        );
        assert!(plan_windows(
            3,
            Windows {
                ctx: 4,
                stride: 4,
                max_tokens: 100
            }
        )
        .is_err());
        assert!(plan_windows(
            30,
            Windows {
                ctx: 4,
                stride: 5,
                max_tokens: 100
            }
        )
        .is_err());
    }
}
