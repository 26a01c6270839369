//! Planning: which codec, with which parameters, for each tensor.
//!
//! **What gets quantized.** The linear layers of the transformer blocks (attention
//! `q/k/v/o_proj`, MLP `gate/up/down_proj`) always; the token embeddings and the LM head
//! only with `quantize_embeddings`; norms, biases, and any tensor that is not a matrix or
//! has fewer than [`MIN_QUANT_NUMEL`] weights stay in their source dtype.
//!
//! **Targets** (asymmetric INT4, fp16 scale and offset, 5 refinement iterations); attention
//! projections get smaller groups than the MLP, as they are the more sensitive:
//!
//! | target | attention group | MLP group | bits/weight (attn / MLP) |
//! |---|---|---|---|
//! | `quality` | 32 | 64 | 5.0 / 4.5 |
//! | `balanced` | 64 | 128 | 4.5 / 4.25 |
//! | `size` | 128 | 256 | 4.25 / 4.125 |
//!
//! **Bit budget** (`--bits-per-weight B`): the average bits per weight over the blocks'
//! linear layers (the GPTQ/AWQ convention; every byte of each encoding counted) must not
//! exceed B. Each such tensor picks one candidate from [`budget_candidates`]; the planner
//! minimises the total weighted error Σₜ nₜ · ‖Wₜ − Ŵₜ‖² / ‖Wₜ‖² (each tensor's relative
//! squared error, weighted by its size) subject to the budget: a Lagrangian sweep picks,
//! for a multiplier λ, the candidate minimising error + λ·bits per tensor, bisecting λ to
//! the budget, then spends what is left on the upgrades with the best error drop per bit.
//! Errors are measured by encoding up to [`SAMPLE_ROWS`] evenly spaced rows of each tensor.
//!
//! **With calibration statistics** the budget is spent by sensitivity: a candidate's error
//! is the layer's relative *output* error on the calibration inputs,
//! `Σ_rj E[x_j²]·(W − Ŵ)²_rj / Σ_rj E[x_j²]·W²_rj` (the error weighted by the Hessian
//! diagonal), so weights fed by loud input channels count for more, and `calibrated_vq`
//! candidates join the list. When the statistics hold the empirical Fisher diagonal
//! (`tenpak calibrate --fisher`; [`Sensitivity::Auto`], the default, then uses it) the
//! error is instead the loss increase `Σ_rj F_rj·(W − Ŵ)²_rj`, comparable across
//! tensors, so the layers the loss is most sensitive to get the bits
//! (`bench/results/fisher.md`: better at 3.25 bits/weight on SmolLM2). The calibrated options of [`Tuning`] (AWQ, GPTQ) apply to the
//! picks; candidates are measured without them (their bits include AWQ's multipliers).

use serde::Serialize;

use crate::codec::CodecSpec;
use crate::source::{TensorMeta, TensorSource};
use crate::{Error, Result};

/// Tensors smaller than this stay in their source dtype.
pub const MIN_QUANT_NUMEL: usize = 4096;
/// Rows sampled per tensor when measuring candidate errors for a bit budget.
pub const SAMPLE_ROWS: usize = 256;

/// A tensor's role in the model, from its HF name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Attention projection inside a block.
    Attention,
    /// MLP projection inside a block.
    Mlp,
    /// Token embeddings.
    Embedding,
    /// Output projection.
    LmHead,
    /// Anything else (norms, biases, ...).
    Other,
}

impl Role {
    /// Classifies a transformers tensor name.
    pub fn of(name: &str) -> Role {
        let in_block =
            name.contains(".layers.") || name.contains(".h.") || name.contains(".blocks.");
        let is_weight = name.ends_with(".weight");
        let has = |s: &[&str]| s.iter().any(|p| name.contains(p));
        if in_block
            && is_weight
            && has(&[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "qkv_proj",
                "c_attn",
                "attn.c_proj",
            ])
        {
            Role::Attention
        } else if in_block
            && is_weight
            && has(&[
                "gate_proj",
                "up_proj",
                "down_proj",
                "c_fc",
                "mlp.c_proj",
                "fc1",
                "fc2",
            ])
        {
            Role::Mlp
        } else if has(&["embed_tokens", "wte", "word_embeddings"]) {
            Role::Embedding
        } else if name.starts_with("lm_head") {
            Role::LmHead
        } else {
            Role::Other
        }
    }

    /// Whether the bit budget counts this role (the blocks' linear layers).
    pub fn in_budget(self) -> bool {
        matches!(self, Role::Attention | Role::Mlp)
    }
}

/// A preset quality/size trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Smallest error: g32 attention, g64 MLP.
    Quality,
    /// The default: g64 attention, g128 MLP.
    Balanced,
    /// Smallest size: g128 attention, g256 MLP.
    Size,
}

impl Target {
    /// (attention group, MLP group).
    pub fn groups(self) -> (usize, usize) {
        match self {
            Target::Quality => (32, 64),
            Target::Balanced => (64, 128),
            Target::Size => (128, 256),
        }
    }

    /// The codec for a role under this target.
    pub fn spec_for(self, role: Role) -> CodecSpec {
        let (attn, mlp) = self.groups();
        CodecSpec::int4(if role == Role::Attention { attn } else { mlp })
    }
}

/// How the user asked to choose codecs.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// A preset target.
    Target(Target),
    /// One codec for every quantized tensor.
    Codec(CodecSpec),
    /// A bit budget over the blocks' linear layers.
    BitsPerWeight(f64),
}

/// What happens to one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Kept in the source dtype.
    Keep,
    /// Encoded with this codec.
    Quantize(CodecSpec),
}

/// The plan for one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorPlan {
    /// HF name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Decision.
    pub action: Action,
}

/// Whether a tensor is quantized at all, per the rules in the module docs.
pub fn quantizable(meta: &TensorMeta, quantize_embeddings: bool) -> bool {
    let role = Role::of(&meta.name);
    let eligible = match role {
        Role::Attention | Role::Mlp => true,
        Role::Embedding | Role::LmHead => quantize_embeddings,
        Role::Other => false,
    };
    eligible && meta.shape.len() == 2 && meta.numel() >= MIN_QUANT_NUMEL
}

/// Candidates for a bit budget, cheapest first by kind (with statistics, `calibrated_vq`
/// joins: see [`calibrated_candidates`]).
pub fn budget_candidates() -> Vec<CodecSpec> {
    vec![
        CodecSpec::int(2, 64),
        CodecSpec::int(2, 32),
        CodecSpec::int(3, 128),
        CodecSpec::int(3, 64),
        CodecSpec::int4(256),
        CodecSpec::int4(128),
        CodecSpec::int4(64),
        CodecSpec::int4(32),
        CodecSpec::int4(16),
        CodecSpec::int4_residual(64, 64),
        CodecSpec::int4_residual(32, 32),
        CodecSpec::int4_residual(16, 16),
    ]
}

/// The `calibrated_vq` candidates a bit budget adds when statistics are given
/// (about 2.3, 3.3 and 4.3 bits/weight).
pub fn calibrated_candidates() -> Vec<CodecSpec> {
    vec![
        CodecSpec::vq(4, 8, 64),
        CodecSpec::vq(2, 6, 64),
        CodecSpec::vq(2, 8, 64),
    ]
}

/// Options that apply to every codec the planner picks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Fraction of weights kept as fp16 outliers (None = the codec's default).
    pub outlier_fraction: Option<f64>,
    /// Scale-refinement iterations (0 = round-to-nearest).
    pub refine_iters: u32,
    /// AWQ scaling for the scalar codecs.
    pub awq: bool,
    /// GPTQ error feedback for the scalar codecs.
    pub gptq: bool,
    /// What a bit budget spends by, with calibration statistics.
    pub sensitivity: Sensitivity,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            outlier_fraction: None,
            refine_iters: crate::codec::DEFAULT_REFINE_ITERS,
            awq: false,
            gptq: false,
            sensitivity: Sensitivity::default(),
        }
    }
}

/// The error a bit budget minimises, with calibration statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// `fisher` when the statistics hold the Fisher diagonal, else `hessian` (the
    /// default: Fisher allocated better on SmolLM2, `bench/results/fisher.md`).
    #[default]
    Auto,
    /// Each tensor's relative output error on the calibration inputs (the Hessian
    /// diagonal `E[x_j²]` weights column j), weighted by its size.
    Hessian,
    /// The loss increase estimated from the empirical Fisher diagonal, `Σ F_ij·δ_ij²`
    /// (`tenpak calibrate --fisher`): comparable across tensors, so layers the loss
    /// is more sensitive to get more bits.
    Fisher,
}

impl Sensitivity {
    /// What `self` means with `calib`: `Auto` resolved.
    pub fn resolve(self, calib: Option<&crate::calib::Calib>) -> Self {
        match self {
            Sensitivity::Auto if calib.is_some_and(|c| c.has_fisher()) => Sensitivity::Fisher,
            Sensitivity::Auto => Sensitivity::Hessian,
            s => s,
        }
    }
}

impl Tuning {
    /// `s` with these options.
    pub fn apply(&self, mut s: CodecSpec) -> CodecSpec {
        if let Some(f) = self.outlier_fraction {
            s.outlier_fraction = f;
        }
        s.refine_iters = self.refine_iters;
        if s.kind.scalar_bits().is_some() {
            s.awq |= self.awq;
            s.gptq |= self.gptq;
        }
        if matches!(
            s.kind,
            crate::codec::CodecKind::CalibratedVq | crate::codec::CodecKind::TenpakX
        ) {
            s.gptq |= self.gptq;
        }
        s
    }
}

/// Plans every tensor of `src`.
pub fn plan(
    src: &dyn TensorSource,
    selection: &Selection,
    quantize_embeddings: bool,
    tuning: Tuning,
    calib: Option<&crate::calib::Calib>,
) -> Result<Vec<TensorPlan>> {
    let with_outliers = |s: CodecSpec| tuning.apply(s);
    let mut plans: Vec<TensorPlan> = src
        .tensors()
        .iter()
        .map(|m| {
            let role = Role::of(&m.name);
            let action = if !quantizable(m, quantize_embeddings) {
                Action::Keep
            } else {
                match selection {
                    Selection::Target(t) => Action::Quantize(with_outliers(t.spec_for(role))),
                    Selection::Codec(c) => Action::Quantize(with_outliers(c.clone())),
                    // Embeddings under a budget use the balanced MLP setting; they are
                    // outside the budget's scope.
                    Selection::BitsPerWeight(_) => {
                        Action::Quantize(with_outliers(Target::Balanced.spec_for(role)))
                    }
                }
            };
            TensorPlan {
                name: m.name.clone(),
                role,
                action,
            }
        })
        .collect();
    if let Selection::BitsPerWeight(budget) = selection {
        allocate_budget(src, &mut plans, *budget, tuning, calib)?;
    }
    for p in &plans {
        if let Action::Quantize(s) = &p.action {
            s.validate()?;
        }
    }
    Ok(plans)
}

/// Candidate costs of one tensor: (bits, weighted error) per candidate.
fn measure(
    src: &dyn TensorSource,
    meta: &TensorMeta,
    cands: &[CodecSpec],
    calib: Option<&crate::calib::Calib>,
    sensitivity: Sensitivity,
) -> Result<Vec<(f64, f64)>> {
    let (rows, cols) = (meta.shape[0], meta.shape[1]);
    let take = rows.min(SAMPLE_ROWS);
    let rows_of = |w: &[f32]| {
        let mut sample = Vec::with_capacity(take * cols);
        for k in 0..take {
            let r = k * rows / take;
            sample.extend_from_slice(&w[r * cols..(r + 1) * cols]);
        }
        sample
    };
    let sample = rows_of(&src.read_f32(&meta.name)?);
    // The Fisher diagonal of the same rows: errors in loss units.
    let fisher = match (sensitivity.resolve(calib), calib) {
        (Sensitivity::Hessian | Sensitivity::Auto, _) => None,
        (Sensitivity::Fisher, Some(c)) => match c.fisher(&meta.name, meta.numel())? {
            Some(f) => Some(rows_of(&f)),
            None => {
                return Err(Error::InvalidOption {
                    option: "--sensitivity fisher",
                    reason: format!(
                        "{} has no Fisher information in {} (tenpak calibrate --fisher N)",
                        meta.name,
                        c.describe()
                    ),
                })
            }
        },
        (Sensitivity::Fisher, None) => {
            return Err(Error::InvalidOption {
                option: "--sensitivity fisher",
                reason: "needs calibration statistics with the Fisher diagonal (tenpak calibrate \
                         --fisher N, then --stats; or --calibrate TEXT)"
                    .into(),
            })
        }
    };
    let stats = match calib {
        // Candidates are measured without AWQ and GPTQ (see below): no XᵀX, no factor.
        Some(c) => c.tensor(&meta.name, false, false)?,
        None => None,
    };
    // Error weights: the Hessian diagonal per column with statistics, else 1.
    let h: Vec<f64> = match &stats {
        Some(s) if s.sq_mean.len() == cols => s.sq_mean.iter().map(|&v| v as f64).collect(),
        _ => vec![1.0; cols],
    };
    let norm: f64 = sample
        .iter()
        .enumerate()
        .map(|(i, x)| h[i % cols] * (*x as f64).powi(2))
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let n = (rows * cols) as f64;
    cands
        .iter()
        .map(|c| {
            // Bits are the candidate's own (AWQ's multipliers counted); its error is measured
            // without AWQ's search and GPTQ's feedback, which would cost a full encode of
            // every candidate — they are applied to the picks at encode time.
            let Ok(len) = c.encoded_len(rows, cols) else {
                return Ok((f64::INFINITY, f64::INFINITY));
            };
            let c = CodecSpec {
                awq: false,
                gptq: false,
                ..c.clone()
            };
            let enc = c.encode(&sample, take, cols, stats.as_ref())?;
            let dec = crate::codec::decode_vec(&enc.bytes)?;
            let err = match &fisher {
                Some(f) => {
                    let s: f64 = dec
                        .iter()
                        .zip(&sample)
                        .zip(f)
                        .map(|((a, b), f)| *f as f64 * ((a - b) as f64).powi(2))
                        .sum();
                    s * rows as f64 / take as f64
                }
                None => {
                    let sse: f64 = dec
                        .iter()
                        .zip(&sample)
                        .enumerate()
                        .map(|(i, (a, b))| h[i % cols] * ((a - b) as f64).powi(2))
                        .sum();
                    n * sse / norm
                }
            };
            Ok((len as f64 * 8.0, err))
        })
        .collect()
}

fn allocate_budget(
    src: &dyn TensorSource,
    plans: &mut [TensorPlan],
    budget: f64,
    tuning: Tuning,
    calib: Option<&crate::calib::Calib>,
) -> Result<()> {
    let mut cands: Vec<CodecSpec> = budget_candidates()
        .into_iter()
        .map(|c| tuning.apply(c))
        .collect();
    if calib.is_some() {
        cands.extend(calibrated_candidates().into_iter().map(|c| tuning.apply(c)));
    }
    let idx: Vec<usize> = plans
        .iter()
        .enumerate()
        .filter(|(_, p)| p.role.in_budget() && matches!(p.action, Action::Quantize(_)))
        .map(|(i, _)| i)
        .collect();
    if idx.is_empty() {
        return Err(Error::NothingToBudget);
    }
    let mut costs = Vec::with_capacity(idx.len());
    let mut total_weights = 0f64;
    for &i in &idx {
        let meta = src.meta(&plans[i].name)?;
        total_weights += meta.numel() as f64;
        costs.push(measure(src, meta, &cands, calib, tuning.sensitivity)?);
    }
    let limit = budget * total_weights;
    let Some(best) = allocate(&costs, limit) else {
        let min_bits: f64 = costs
            .iter()
            .map(|c| c.iter().map(|x| x.0).fold(f64::INFINITY, f64::min))
            .sum();
        return Err(Error::BudgetTooSmall {
            requested: budget,
            cheapest: min_bits / total_weights,
        });
    };
    for (&i, &k) in idx.iter().zip(&best) {
        plans[i].action = Action::Quantize(cands[k].clone());
    }
    Ok(())
}

/// Picks one candidate per item to minimise the total error with the total cost at most
/// `limit`: a Lagrangian relaxation (for a multiplier λ each item takes its candidate of
/// least `error + λ·cost`; λ bisected to the smallest that fits), then a greedy pass that
/// spends what is left on the best error drop per unit of cost. `costs[i]` lists item
/// `i`'s candidates as (cost, error). `None` when even the cheapest choice exceeds `limit`.
pub fn allocate(costs: &[Vec<(f64, f64)>], limit: f64) -> Option<Vec<usize>> {
    let min_bits: f64 = costs
        .iter()
        .map(|c| c.iter().map(|x| x.0).fold(f64::INFINITY, f64::min))
        .sum();
    if min_bits > limit {
        return None;
    }
    let choose = |lambda: f64| -> Vec<usize> {
        costs
            .iter()
            .map(|c| {
                (0..c.len())
                    .min_by(|&a, &b| {
                        (c[a].1 + lambda * c[a].0).total_cmp(&(c[b].1 + lambda * c[b].0))
                    })
                    .unwrap_or(0)
            })
            .collect()
    };
    let bits_of = |ch: &[usize]| -> f64 { ch.iter().zip(costs).map(|(&k, c)| c[k].0).sum() };
    let (mut lo, mut hi) = (0f64, 1f64);
    while bits_of(&choose(hi)) > limit && hi < 1e30 {
        hi *= 4.0;
    }
    let mut best = choose(hi);
    if bits_of(&choose(lo)) <= limit {
        best = choose(lo);
    } else {
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            let ch = choose(mid);
            if bits_of(&ch) <= limit {
                hi = mid;
                best = ch;
            } else {
                lo = mid;
            }
        }
    }
    if bits_of(&best) > limit {
        // λ = 1e30 still over: take each item's cheapest candidate (fits, checked above).
        best = costs
            .iter()
            .map(|c| {
                (0..c.len())
                    .min_by(|&a, &b| c[a].0.total_cmp(&c[b].0).then(c[a].1.total_cmp(&c[b].1)))
                    .unwrap_or(0)
            })
            .collect();
    }
    // Greedy: spend the remaining budget on the best error drop per extra unit.
    let mut used = bits_of(&best);
    loop {
        let mut pick: Option<(usize, usize, f64)> = None;
        for (t, c) in costs.iter().enumerate() {
            let cur = c[best[t]];
            for (k, cand) in c.iter().enumerate() {
                let extra = cand.0 - cur.0;
                let gain = cur.1 - cand.1;
                if extra > 0.0 && gain > 0.0 && used + extra <= limit {
                    let ratio = gain / extra;
                    if pick.is_none_or(|p| ratio > p.2) {
                        pick = Some((t, k, ratio));
                    }
                }
            }
        }
        let Some((t, k, _)) = pick else { break };
        used += costs[t][k].0 - costs[t][best[t]].0;
        best[t] = k;
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_fits_the_limit_and_prefers_the_best_error_per_cost() {
        // Two items: the first gains a lot from its second candidate, the second little.
        let costs = vec![vec![(1.0, 10.0), (3.0, 1.0)], vec![(1.0, 2.0), (3.0, 1.9)]];
        assert_eq!(allocate(&costs, 2.0), Some(vec![0, 0]));
        assert_eq!(allocate(&costs, 4.0), Some(vec![1, 0]));
        assert_eq!(allocate(&costs, 6.0), Some(vec![1, 1]));
        assert_eq!(allocate(&costs, 1.5), None);
        // Free candidates with an error are still chosen against costly exact ones.
        let costs = vec![vec![(0.0, 5.0), (10.0, 0.0)], vec![(0.0, 0.0)]];
        assert_eq!(allocate(&costs, 5.0), Some(vec![0, 0]));
    }

    #[test]
    fn roles_from_names() {
        assert_eq!(
            Role::of("model.layers.0.self_attn.q_proj.weight"),
            Role::Attention
        );
        assert_eq!(Role::of("model.layers.11.mlp.down_proj.weight"), Role::Mlp);
        assert_eq!(Role::of("model.embed_tokens.weight"), Role::Embedding);
        assert_eq!(Role::of("lm_head.weight"), Role::LmHead);
        assert_eq!(
            Role::of("model.layers.0.input_layernorm.weight"),
            Role::Other
        );
        assert_eq!(
            Role::of("model.layers.0.self_attn.q_norm.weight"),
            Role::Other
        );
    }
}
