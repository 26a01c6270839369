//! The decoder forward pass on candle (CPU, f32): Llama-family and Gemma 3 in one
//! implementation, following transformers' `modeling_llama.py` and `modeling_gemma3.py`:
//!
//! - Llama: `x += attn(norm(x)); x += mlp(norm(x))`, RMSNorm `w · x̂`, SiLU gated MLP.
//! - Gemma 3: embeddings scaled by √hidden; RMSNorm `(1 + w) · x̂`; norms after attention
//!   and after the MLP as well as before; q/k RMSNorm per head; GELU-tanh; sliding-window
//!   layers with their own rotary base; scores scaled by `query_pre_attn_scalar^-½`.
//!
//! Rotary embeddings use the rotate-half convention (GGUF imports have their Q/K rows
//! un-permuted to match). Weights are read from any [`TensorSource`] (HF directory,
//! GGUF, `.tnpk`) and upcast to f32; compute is f32.

use candle_core::{Device, Module, Tensor, D};
use candle_nn::Linear;

use super::config::{Act, Family, ModelConfig};
use crate::source::TensorSource;
use crate::{Error, Result};

pub(crate) fn ce(e: candle_core::Error) -> Error {
    Error::Compute {
        message: e.to_string(),
    }
}

/// Observes the input of every linear layer (calibration).
pub trait Observer {
    /// `x` is `[tokens, in_features]`, the input of the linears listed in `consumers`.
    fn observe(&mut self, consumers: &[String], x: &Tensor) -> Result<()>;
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

struct Block {
    prefix: String,
    input_norm: Tensor,
    post_attn_norm: Tensor,
    pre_ff_norm: Option<Tensor>,
    post_ff_norm: Option<Tensor>,
    attn: Attention,
    gate: Linear,
    up: Linear,
    down: Linear,
    sliding: bool,
}

/// A loaded model.
pub struct Model {
    cfg: ModelConfig,
    embed: Tensor,
    lm_head: Tensor,
    norm: Tensor,
    blocks: Vec<Block>,
    device: Device,
    /// Differentiable ops (candle's composite RMSNorm, softmax and rotary embedding,
    /// which have backward passes) instead of the fused ones: set by
    /// [`Model::trainable_linears`].
    grad: bool,
}

fn load(src: &dyn TensorSource, name: &str, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let meta = src.meta(name)?;
    if meta.shape != shape {
        return Err(Error::ShapeMismatch {
            tensor: name.to_string(),
            expected: shape.to_vec(),
            got: meta.shape.clone(),
        });
    }
    let v = src.read_f32(name)?;
    Tensor::from_vec(v, shape, dev).map_err(ce)
}

impl Model {
    /// Loads every weight from `src` (decoding them as they are read).
    pub fn load(src: &dyn TensorSource) -> Result<Self> {
        let cfg = ModelConfig::from_hf(src.config())?;
        let dev = Device::Cpu;
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let gemma = cfg.family == Family::Gemma3;
        // Gemma's norms multiply by (1 + w): fold the 1 in at load time.
        let norm = |name: &str, n: usize| -> Result<Tensor> {
            let t = load(src, name, &[n], &dev)?;
            if gemma {
                t.affine(1.0, 1.0).map_err(ce)
            } else {
                Ok(t)
            }
        };
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let w = load(src, &format!("{name}.weight"), &[out, inp], &dev)?;
            let b = match src.meta(&format!("{name}.bias")) {
                Ok(_) => Some(load(src, &format!("{name}.bias"), &[out], &dev)?),
                Err(_) => None,
            };
            Ok(Linear::new(w, b))
        };
        let embed = load(src, "model.embed_tokens.weight", &[cfg.vocab, h], &dev)?;
        let lm_head = if cfg.tied || src.meta("lm_head.weight").is_err() {
            embed.clone()
        } else {
            load(src, "lm_head.weight", &[cfg.vocab, h], &dev)?
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            blocks.push(Block {
                input_norm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                post_attn_norm: norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
                pre_ff_norm: if gemma {
                    Some(norm(&format!("{p}.pre_feedforward_layernorm.weight"), h)?)
                } else {
                    None
                },
                post_ff_norm: if gemma {
                    Some(norm(&format!("{p}.post_feedforward_layernorm.weight"), h)?)
                } else {
                    None
                },
                attn: Attention {
                    q: linear(&format!("{a}.q_proj"), cfg.heads * hd, h)?,
                    k: linear(&format!("{a}.k_proj"), cfg.kv_heads * hd, h)?,
                    v: linear(&format!("{a}.v_proj"), cfg.kv_heads * hd, h)?,
                    o: linear(&format!("{a}.o_proj"), h, cfg.heads * hd)?,
                    q_norm: if gemma {
                        Some(norm(&format!("{a}.q_norm.weight"), hd)?)
                    } else {
                        None
                    },
                    k_norm: if gemma {
                        Some(norm(&format!("{a}.k_norm.weight"), hd)?)
                    } else {
                        None
                    },
                },
                gate: linear(&format!("{m}.gate_proj"), cfg.intermediate, h)?,
                up: linear(&format!("{m}.up_proj"), cfg.intermediate, h)?,
                down: linear(&format!("{m}.down_proj"), h, cfg.intermediate)?,
                sliding: cfg.sliding[i],
                prefix: p,
            });
        }
        let norm_w = norm("model.norm.weight", h)?;
        Ok(Self {
            cfg,
            embed,
            lm_head,
            norm: norm_w,
            blocks,
            device: dev,
            grad: false,
        })
    }

    /// Makes the blocks' linear weights variables (for gradients, e.g. the empirical
    /// Fisher in [`crate::calib::fisher`]) and switches the forward pass to ops with
    /// backward passes; returns each weight's name (`model.layers.N.mlp.up_proj.weight`)
    /// and variable, in block order.
    pub fn trainable_linears(&mut self) -> Result<Vec<(String, candle_core::Var)>> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            let p = b.prefix.clone();
            for (name, lin) in [
                ("self_attn.q_proj", &mut b.attn.q),
                ("self_attn.k_proj", &mut b.attn.k),
                ("self_attn.v_proj", &mut b.attn.v),
                ("self_attn.o_proj", &mut b.attn.o),
                ("mlp.gate_proj", &mut b.gate),
                ("mlp.up_proj", &mut b.up),
                ("mlp.down_proj", &mut b.down),
            ] {
                let var = candle_core::Var::from_tensor(lin.weight()).map_err(ce)?;
                *lin = Linear::new(var.as_tensor().clone(), lin.bias().cloned());
                out.push((format!("{p}.{name}.weight"), var));
            }
        }
        self.grad = true;
        Ok(out)
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let eps = self.cfg.eps as f32;
        if self.grad {
            candle_nn::ops::rms_norm_slow(x, w, eps).map_err(ce)
        } else {
            candle_nn::ops::rms_norm(x, w, eps).map_err(ce)
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn rope_tables(&self, t: usize, theta: f64) -> Result<(Tensor, Tensor)> {
        let half = self.cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / self.cfg.head_dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &self.device).map_err(ce)?,
            Tensor::from_vec(sin, (t, half), &self.device).map_err(ce)?,
        ))
    }

    fn mask(&self, t: usize, window: Option<usize>) -> Result<Tensor> {
        let mut m = vec![0f32; t * t];
        for i in 0..t {
            for j in 0..t {
                let too_far = window.is_some_and(|w| i >= j + w);
                if j > i || too_far {
                    m[i * t + j] = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(m, (t, t), &self.device).map_err(ce)
    }

    /// Logits `[tokens, vocab]` for one sequence.
    pub fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        self.forward_observed(tokens, None)
    }

    /// [`Model::forward`], reporting every linear layer's input to `obs`.
    pub fn forward_observed(
        &self,
        tokens: &[u32],
        mut obs: Option<&mut dyn Observer>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let t = tokens.len();
        if t == 0 {
            return Err(Error::BadTokens {
                id: None,
                vocab: cfg.vocab,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= cfg.vocab) {
            return Err(Error::BadTokens {
                id: Some(bad),
                vocab: cfg.vocab,
            });
        }
        let ids = Tensor::from_vec(tokens.to_vec(), t, &self.device).map_err(ce)?;
        let mut x = self.embed.index_select(&ids, 0).map_err(ce)?;
        if cfg.family == Family::Gemma3 {
            x = x.affine((cfg.hidden as f64).sqrt(), 0.0).map_err(ce)?;
        }
        let global = self.rope_tables(t, cfg.rope_theta)?;
        let local = if cfg.rope_local_theta != cfg.rope_theta {
            Some(self.rope_tables(t, cfg.rope_local_theta)?)
        } else {
            None
        };
        let causal = self.mask(t, None)?;
        let windowed = match cfg.sliding_window {
            Some(w) if w < t && cfg.sliding.iter().any(|&s| s) => Some(self.mask(t, Some(w))?),
            _ => None,
        };
        let rms = |x: &Tensor, w: &Tensor| self.rms(x, w);
        for b in &self.blocks {
            let names = |parts: &[&str]| {
                parts
                    .iter()
                    .map(|p| format!("{}.{p}", b.prefix))
                    .collect::<Vec<_>>()
            };
            let h = rms(&x, &b.input_norm)?;
            if let Some(o) = obs.as_deref_mut() {
                o.observe(
                    &names(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
                    &h,
                )?;
            }
            let (cos, sin) = if b.sliding {
                local.as_ref().unwrap_or(&global)
            } else {
                &global
            };
            let mask = if b.sliding {
                windowed.as_ref().unwrap_or(&causal)
            } else {
                &causal
            };
            let a = self.attention(b, &h, cos, sin, mask, obs.as_deref_mut())?;
            // Gemma normalises the attention output before the residual add and has its own
            // pre-MLP norm; Llama's `post_attention_layernorm` *is* its pre-MLP norm.
            let (a, h_norm) = match &b.pre_ff_norm {
                Some(pre) => (rms(&a, &b.post_attn_norm)?, pre),
                None => (a, &b.post_attn_norm),
            };
            x = (x + a).map_err(ce)?;
            let h = rms(&x, h_norm)?;
            if let Some(o) = obs.as_deref_mut() {
                o.observe(&names(&["mlp.gate_proj", "mlp.up_proj"]), &h)?;
            }
            let g = b.gate.forward(&h).map_err(ce)?;
            let g = match cfg.act {
                Act::Silu => candle_nn::ops::silu(&g).map_err(ce)?,
                Act::GeluTanh => g.gelu().map_err(ce)?,
            };
            let m = (g * b.up.forward(&h).map_err(ce)?).map_err(ce)?;
            if let Some(o) = obs.as_deref_mut() {
                o.observe(&names(&["mlp.down_proj"]), &m)?;
            }
            let m = b.down.forward(&m).map_err(ce)?;
            let m = match &b.post_ff_norm {
                Some(w) => rms(&m, w)?,
                None => m,
            };
            x = (x + m).map_err(ce)?;
        }
        let x = rms(&x, &self.norm)?;
        let mut logits = x.matmul(&self.lm_head.t().map_err(ce)?).map_err(ce)?;
        if let Some(c) = cfg.final_softcap {
            logits = ((logits / c).map_err(ce)?.tanh().map_err(ce)? * c).map_err(ce)?;
        }
        Ok(logits)
    }

    fn attention<'o>(
        &self,
        b: &Block,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        obs: Option<&mut (dyn Observer + 'o)>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (t, hd) = (h.dim(0).map_err(ce)?, cfg.head_dim);
        let a = &b.attn;
        let split = |x: Tensor, n: usize, norm: &Option<Tensor>| -> Result<Tensor> {
            let x = x.reshape((1, t, n, hd)).map_err(ce)?;
            let x = match norm {
                Some(w) => self.rms(&x, w)?,
                None => x,
            };
            x.transpose(1, 2).map_err(ce)?.contiguous().map_err(ce)
        };
        let q = split(a.q.forward(h).map_err(ce)?, cfg.heads, &a.q_norm)?;
        let k = split(a.k.forward(h).map_err(ce)?, cfg.kv_heads, &a.k_norm)?;
        let v = split(a.v.forward(h).map_err(ce)?, cfg.kv_heads, &None)?;
        let rope = |x: &Tensor| {
            if self.grad {
                candle_nn::rotary_emb::rope_slow(x, cos, sin).map_err(ce)
            } else {
                candle_nn::rotary_emb::rope(x, cos, sin).map_err(ce)
            }
        };
        let (q, k) = (rope(&q)?, rope(&k)?);
        let rep = cfg.heads / cfg.kv_heads;
        let expand = |x: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            x.unsqueeze(2)
                .and_then(|x| x.expand((1, cfg.kv_heads, rep, t, hd)))
                .and_then(|x| x.reshape((1, cfg.heads, t, hd)))
                .map_err(ce)
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let mut s = (q.matmul(&k.t().map_err(ce)?).map_err(ce)? * cfg.attn_scale).map_err(ce)?;
        if let Some(c) = cfg.attn_softcap {
            s = ((s / c).map_err(ce)?.tanh().map_err(ce)? * c).map_err(ce)?;
        }
        let s = s.broadcast_add(mask).map_err(ce)?;
        let p = if self.grad {
            candle_nn::ops::softmax(&s, D::Minus1).map_err(ce)?
        } else {
            candle_nn::ops::softmax_last_dim(&s).map_err(ce)?
        };
        let o = p.matmul(&v.contiguous().map_err(ce)?).map_err(ce)?;
        let o = o
            .transpose(1, 2)
            .and_then(|o| o.reshape((t, cfg.heads * hd)))
            .map_err(ce)?;
        if let Some(obs) = obs {
            obs.observe(&[format!("{}.self_attn.o_proj", b.prefix)], &o)?;
        }
        a.o.forward(&o).map_err(ce)
    }

    /// Log-softmax of logits, as f32 `[tokens, vocab]`.
    pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
        candle_nn::ops::log_softmax(logits, D::Minus1).map_err(ce)
    }

    /// The device (CPU).
    pub fn device(&self) -> &Device {
        &self.device
    }
}
