//! What each tensor of a fine-tune becomes in a delta: the candidates, their exact cost
//! in bytes and their measured error, and the choice under a bit budget.
//!
//! Error is measured on the whole tensor as the plan measures codecs: the squared error of
//! the reconstruction against the fine-tune, weighted per input channel by the layer's
//! input second moment `E[x_j²]` when calibration statistics are given (the layer's output
//! error), relative to the fine-tune tensor's own weighted energy and scaled by its weight
//! count, so that tensors of any size compare. [`crate::plan::allocate`] then picks one
//! candidate per tensor for the least total error within the budget.

use std::sync::Arc;

use serde::Serialize;

use crate::calib::Calib;
use crate::codec::delta_add::DeltaAdd;
use crate::codec::delta_exact::{DeltaExact, Layout};
use crate::codec::delta_grid::DeltaGrid;
use crate::codec::delta_sign::DeltaSign;
use crate::codec::factored::QuantLowRank;
use crate::codec::lowrank::{LowRank, Stages};
use crate::codec::{self, BaseView, DeltaCodec, Int4};
use crate::dtype::DType;
use crate::Result;

/// How `pack --base` stores a fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaMode {
    /// Lossless: every tensor reproduced bit for bit (`delta_exact`, or a reference where
    /// the fine-tune left it unchanged).
    Exact,
    /// Per tensor, the candidate that loses least within `--delta-bits-per-weight`
    /// (references, sign × scale, INTn / low rank of the difference, the base's grid,
    /// exact), chosen by measured error.
    Auto,
    /// BitDelta's sign × scale (per row) for every matrix; vectors exact. A baseline.
    Sign,
    /// Every tensor the base stores with a codec re-quantized on the base's grid (an
    /// XOR patch of its codes, groups refitted per `--delta-grid-refit`); the others
    /// (embeddings the base keeps raw) as `auto` chooses within `--delta-bits-per-weight`
    /// (exact when the budget allows).
    Grid,
    /// A PEFT LoRA adapter: `B·A·α/r` added to the base's adapted matrices, every other
    /// tensor a reference (made from adapter repositories, not chosen with `--delta`).
    #[value(skip)]
    Adapter,
}

/// The entropy stage of the lossless delta encodings: zstd level (1..=22) and
/// `delta_exact`'s layout.
#[derive(Debug, Clone, Copy)]
pub struct Entropy {
    /// zstd level of the zstd-coded parts (decode speed does not depend on it).
    pub level: i32,
    /// `delta_exact`'s layout.
    pub layout: Layout,
}

impl Default for Entropy {
    fn default() -> Self {
        Self {
            level: codec::delta_exact::DEFAULT_LEVEL,
            layout: Layout::Coded,
        }
    }
}

/// Options of a delta pack.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    /// The mode.
    pub mode: DeltaMode,
    /// `auto`'s budget: bits per weight of the whole delta file (every byte counted).
    pub bits_per_weight: f64,
    /// The entropy stage of the lossless encodings.
    pub entropy: Entropy,
    /// Calibration statistics (weights the error by each input channel's energy).
    pub calib: Option<Arc<Calib>>,
    /// On the base's grid, a group takes its own scale and offset where they lose less
    /// than this times the error on the base's (0: never; 1: wherever they are better).
    pub grid_refit: f32,
}

impl DeltaMode {
    /// Whether the mode chooses among measured candidates under the budget (two passes).
    pub fn allocates(self) -> bool {
        matches!(self, DeltaMode::Auto | DeltaMode::Grid)
    }
}

impl Default for DeltaOptions {
    fn default() -> Self {
        Self {
            mode: DeltaMode::Auto,
            bits_per_weight: 2.0,
            entropy: Entropy::default(),
            calib: None,
            grid_refit: DEFAULT_GRID_REFIT,
        }
    }
}

/// [`DeltaOptions::grid_refit`]'s default: on the fixture pair (bench/results/delta.md) 1.5
/// gave the fine-tune's own `balanced` perplexity or better for 13% more patch bytes than 0.
pub const DEFAULT_GRID_REFIT: f32 = 1.5;

/// One way to store a tensor of a fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Choice {
    /// The base's tensor, bit-identical: no bytes.
    Reference,
    /// The base's tensor although the fine-tune changed it (the change is not worth its
    /// bytes under the budget): no bytes, lossy.
    Drop,
    /// A full tensor (the base has none of this name and shape): raw in its dtype.
    Full,
    /// `delta_exact`.
    Exact,
    /// `delta_sign`.
    Sign,
    /// `delta_add` of grouped INT (asymmetric, refined) of the difference.
    Int {
        /// Bits per code (2, 3, 4).
        bits: u32,
        /// Group size.
        group: usize,
    },
    /// `delta_add` of a rank-`rank` factorisation of the difference.
    LowRank {
        /// Rank.
        rank: usize,
    },
    /// `delta_add` of a rank-`rank` factorisation whose factors are `bits`-bit INT.
    QuantLowRank {
        /// Rank.
        rank: usize,
        /// Bits of the factors.
        bits: u32,
    },
    /// `delta_add` of low rank plus grouped INT of what it leaves.
    LowRankInt {
        /// Rank.
        rank: usize,
        /// Bits of the residual stage.
        bits: u32,
        /// Its group size.
        group: usize,
    },
    /// `delta_grid`.
    Grid,
    /// `delta_add` of a LoRA adapter's own factors (scaled `B`, `A`).
    Adapter {
        /// The adapter's rank.
        rank: usize,
    },
}

impl Choice {
    /// For reports.
    pub fn label(&self) -> String {
        match *self {
            Choice::Reference => "= base".into(),
            Choice::Drop => "= base (change dropped)".into(),
            Choice::Full => "full (not in base)".into(),
            Choice::Exact => "exact".into(),
            Choice::Sign => "sign x scale/row".into(),
            Choice::Int { bits, group } => format!("+ int{bits} g{group}"),
            Choice::LowRank { rank } => format!("+ rank {rank}"),
            Choice::QuantLowRank { rank, bits } => format!("+ rank {rank} int{bits}"),
            Choice::LowRankInt { rank, bits, group } => {
                format!("+ rank {rank} + int{bits} g{group}")
            }
            Choice::Grid => "on the base's grid".into(),
            Choice::Adapter { rank } => format!("+ LoRA rank {rank}"),
        }
    }

    /// The delta codec (`None` for the choices without bytes, and for `Full`).
    /// `grid_refit`: [`DeltaGrid::refit`].
    pub fn codec(
        &self,
        dtype: DType,
        entropy: Entropy,
        grid_refit: f32,
    ) -> Result<Option<Box<dyn DeltaCodec>>> {
        let level = entropy.level;
        let int = |bits: u32, group: usize| -> Result<Box<dyn codec::Codec>> {
            Ok(Box::new(Int4::with_bits(
                bits,
                group,
                false,
                codec::DEFAULT_REFINE_ITERS,
            )?))
        };
        let add = |inner: Box<dyn codec::Codec>| -> Box<dyn DeltaCodec> {
            Box::new(DeltaAdd {
                label: self.label(),
                inner,
            })
        };
        Ok(match *self {
            Choice::Reference | Choice::Drop | Choice::Full | Choice::Adapter { .. } => None,
            Choice::Exact => Some(Box::new(DeltaExact {
                dtype,
                level,
                layout: entropy.layout,
            })),
            Choice::Sign => Some(Box::new(DeltaSign)),
            Choice::Int { bits, group } => Some(add(int(bits, group)?)),
            Choice::LowRank { rank } => Some(add(Box::new(LowRank::new(rank)?))),
            Choice::QuantLowRank { rank, bits } => Some(add(Box::new(QuantLowRank {
                rank,
                bits,
                group: 128,
                decode: codec::decode,
            }))),
            Choice::LowRankInt { rank, bits, group } => Some(add(Box::new(Stages {
                parts: vec![Box::new(LowRank::new(rank)?), int(bits, group)?],
                decode: codec::decode,
            }))),
            Choice::Grid => Some(Box::new(DeltaGrid {
                requantize: codec::requantize,
                level,
                refit: grid_refit,
            })),
        })
    }

    /// Whether the reconstruction is the fine-tune exactly.
    pub fn lossless(&self) -> bool {
        matches!(self, Choice::Reference | Choice::Full | Choice::Exact)
    }
}

/// The candidates of a tensor under `mode`: `matrix` for 2-D tensors large enough to be
/// worth a lossy encoding (vectors and small tensors are stored exactly), `encoded` when
/// the base stores the tensor with a codec (a grid exists).
pub fn candidates(mode: DeltaMode, matrix: bool, encoded: bool) -> Vec<Choice> {
    if !matrix {
        return vec![Choice::Exact];
    }
    match mode {
        DeltaMode::Exact => vec![Choice::Exact],
        DeltaMode::Sign => vec![Choice::Sign],
        DeltaMode::Grid if encoded => vec![Choice::Grid],
        DeltaMode::Adapter => vec![Choice::Exact],
        DeltaMode::Auto | DeltaMode::Grid => {
            let mut c = vec![
                Choice::Drop,
                Choice::LowRank { rank: 4 },
                Choice::QuantLowRank { rank: 16, bits: 4 },
                Choice::QuantLowRank { rank: 32, bits: 4 },
                Choice::QuantLowRank { rank: 64, bits: 4 },
                Choice::QuantLowRank { rank: 128, bits: 4 },
                Choice::Sign,
                Choice::Int {
                    bits: 2,
                    group: 128,
                },
                Choice::LowRankInt {
                    rank: 16,
                    bits: 2,
                    group: 128,
                },
                Choice::Int {
                    bits: 3,
                    group: 128,
                },
                Choice::Int {
                    bits: 4,
                    group: 128,
                },
                Choice::Exact,
            ];
            if encoded && mode == DeltaMode::Auto {
                c.push(Choice::Grid);
            }
            c
        }
    }
}

/// A candidate encoded and measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The encoding (empty for the choices without bytes).
    pub bytes: Vec<u8>,
    /// Weighted squared error × weights / weighted energy (see the module docs).
    pub error: f64,
    /// ‖W_ft − Ŵ‖ / ‖W_ft‖, unweighted.
    pub rel_error: f64,
    /// ‖Δ − Δ̂‖ / ‖Δ‖ (0 when the fine-tune did not change the tensor).
    pub rel_delta_error: f64,
}

/// Encodes `ft` against `base` with `choice` and measures the reconstruction. `h` is the
/// per-input-channel weight of the error (length `cols`), when known. `Ok(None)`: the
/// choice does not apply (a grid over a raw base).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    choice: Choice,
    ft: &[f32],
    base: &BaseView<'_>,
    rows: usize,
    cols: usize,
    dtype: DType,
    entropy: Entropy,
    grid_refit: f32,
    h: Option<&[f32]>,
) -> Result<Option<Measured>> {
    let importance: Option<Vec<f32>> = h.map(|h| {
        let mut v = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            v.extend_from_slice(h);
        }
        v
    });
    let (bytes, recon): (Vec<u8>, std::borrow::Cow<'_, [f32]>) =
        match choice.codec(dtype, entropy, grid_refit)? {
            None => (vec![], std::borrow::Cow::Borrowed(base.values)),
            Some(c) => {
                let Some(bytes) = c.encode(ft, base, rows, cols, importance.as_deref())? else {
                    return Ok(None);
                };
                let mut out = vec![0f32; ft.len()];
                codec::apply(&bytes, base, &mut out)?;
                (bytes, std::borrow::Cow::Owned(out))
            }
        };
    let (mut sse, mut energy, mut plain, mut norm, mut dnorm) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (i, ((&f, &r), &b)) in ft.iter().zip(recon.iter()).zip(base.values).enumerate() {
        let w = h.map_or(1.0, |h| h[i % cols.max(1)] as f64);
        let e = (f - r) as f64;
        sse += w * e * e;
        energy += w * (f as f64) * (f as f64);
        plain += e * e;
        norm += (f as f64) * (f as f64);
        dnorm += ((f - b) as f64).powi(2);
    }
    let n = ft.len() as f64;
    Ok(Some(Measured {
        bytes,
        error: n * sse / energy.max(f64::MIN_POSITIVE),
        rel_error: (plain / norm.max(f64::MIN_POSITIVE)).sqrt(),
        rel_delta_error: if dnorm > 0.0 {
            (plain / dnorm).sqrt()
        } else {
            0.0
        },
    }))
}
