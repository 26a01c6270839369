//! PEFT LoRA adapters as delta artifacts against their base artifact.
//!
//! An adapter repository holds `adapter_config.json` (`r`, `lora_alpha`, `use_rslora`,
//! `base_model_name_or_path`, ...) and `adapter_model.safetensors` with, per adapted
//! module `M`, `base_model.model.M.lora_A.weight` (`r × in`) and `…lora_B.weight`
//! (`out × r`). PEFT merges `W = W_base + s·B·A` with `s = α/r` (`α/√r` with rsLoRA).
//!
//! The artifact lists every tensor of the base: adapted matrices as `delta_add` of a
//! `low rank` encoding whose factors are the adapter's own (`L = s·B`, `R = A`, fp16), the
//! others as references; tensors the adapter replaces whole (`modules_to_save`) are
//! stored in full. [`super::DeltaSource`] therefore merges the adapter on load, tensor by
//! tensor, like any delta. DoRA magnitudes, LoRA on embeddings and `fan_in_fan_out`
//! layouts are refused with a typed error rather than merged wrongly.

use std::path::Path;

use ed25519_dalek::SigningKey;

use super::choose::{Choice, DeltaMode, Measured};
use super::pack::{base_entry, require_full_base, write_delta, DeltaReport};
use crate::artifact::Artifact;
use crate::codec::{delta_add, lowrank};
use crate::source::{HfModelDir, TensorMeta};
use crate::{Error, Result};

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What `adapter_config.json` says that merging needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// `base_model_name_or_path`.
    pub base: Option<String>,
    /// `r`.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `use_rslora`: scale `α/√r` instead of `α/r`.
    pub rslora: bool,
}

impl AdapterConfig {
    /// The merge scale `s` of `W + s·B·A`.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Parses `adapter_config.json`; refuses what this module does not merge.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::Json {
            path: CONFIG_FILE.into(),
            message: m,
        };
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let peft = v
            .get("peft_type")
            .and_then(|p| p.as_str())
            .unwrap_or("LORA");
        if !peft.eq_ignore_ascii_case("lora") {
            return Err(unsupported(format!("peft_type {peft} (only LORA merges)")));
        }
        if v.get("fan_in_fan_out").and_then(|x| x.as_bool()) == Some(true) {
            return Err(unsupported("fan_in_fan_out (Conv1D layouts)".into()));
        }
        if v.get("use_dora").and_then(|x| x.as_bool()) == Some(true) {
            return Err(unsupported("use_dora (DoRA magnitudes)".into()));
        }
        let rank = v
            .get("r")
            .and_then(|x| x.as_u64())
            .filter(|&r| (1..=65535).contains(&r))
            .ok_or_else(|| bad("r is missing or not a rank in 1..=65535".into()))?
            as usize;
        let alpha = match v.get("lora_alpha") {
            None | Some(serde_json::Value::Null) => rank as f64,
            Some(a) => a
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| bad("lora_alpha is not a number".into()))?,
        };
        if v.get("rank_pattern")
            .and_then(|x| x.as_object())
            .is_some_and(|m| !m.is_empty())
            || v.get("alpha_pattern")
                .and_then(|x| x.as_object())
                .is_some_and(|m| !m.is_empty())
        {
            return Err(unsupported(
                "rank_pattern / alpha_pattern (per-module ranks)".into(),
            ));
        }
        Ok(Self {
            base: v
                .get("base_model_name_or_path")
                .and_then(|b| b.as_str())
                .map(str::to_string),
            rank,
            alpha,
            rslora: v.get("use_rslora").and_then(|x| x.as_bool()) == Some(true),
        })
    }
}

fn unsupported(what: String) -> Error {
    Error::InvalidOption {
        option: "adapter",
        reason: format!("{what} is not supported"),
    }
}

/// Whether `dir` holds a PEFT adapter (its config and weights).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() && dir.join(WEIGHTS_FILE).is_file()
}

/// Reads `dir/adapter_config.json`.
pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let p = dir.join(CONFIG_FILE);
    AdapterConfig::parse(&std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?)
}

/// The base tensor an adapter key adapts: `base_model.model.M.lora_A.weight` → `M.weight`.
fn module_of(key: &str) -> Option<(&str, &str)> {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    for part in ["lora_A", "lora_B"] {
        for tail in [format!(".{part}.weight"), format!(".{part}.default.weight")] {
            if let Some(m) = k.strip_suffix(tail.as_str()) {
                return Some((m, part));
            }
        }
    }
    None
}

/// Packs the adapter in `dir` against the base artifact `base` into `out`, signed by
/// `keys`. Every adapted matrix must exist in the base with the shape `B·A` has.
pub fn pack_adapter(
    dir: &Path,
    base: &Artifact,
    out: &Path,
    keys: &[&SigningKey],
    metadata: &[(&str, &str)],
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<DeltaReport> {
    require_full_base(base)?;
    let t0 = std::time::Instant::now();
    let cfg = read_config(dir)?;
    let scale = cfg.scale() as f32;
    let st = HfModelDir::open_file(&dir.join(WEIGHTS_FILE))?;
    // adapted base tensor → (A key, B key); whole replacements → (key, base tensor).
    let mut adapted: std::collections::BTreeMap<String, [Option<String>; 2]> = Default::default();
    let mut replaced: std::collections::BTreeMap<String, String> = Default::default();
    for key in st.names() {
        if let Some((m, part)) = module_of(key) {
            let slot = &mut adapted.entry(format!("{m}.weight")).or_default();
            slot[usize::from(part == "lora_B")] = Some(key.to_string());
        } else if key.contains("lora_") {
            return Err(unsupported(format!(
                "adapter tensor {key} (DoRA magnitudes, LoRA on embeddings)"
            )));
        } else {
            let name = key
                .strip_prefix("base_model.model.")
                .unwrap_or(key)
                .replace(".modules_to_save.default.", ".");
            replaced.insert(name, key.to_string());
        }
    }
    if adapted.is_empty() {
        return Err(Error::InvalidOption {
            option: "adapter",
            reason: format!("{WEIGHTS_FILE} holds no lora_A/lora_B pairs"),
        });
    }
    for (name, [a, b]) in &adapted {
        if a.is_none() || b.is_none() {
            return Err(Error::InvalidOption {
                option: "adapter",
                reason: format!("{name}: lora_A and lora_B must both be present"),
            });
        }
        if base.manifest().tensors.iter().all(|t| &t.name != name) {
            return Err(Error::BaseMismatch {
                tensor: name.clone(),
                shape: vec![],
            });
        }
    }
    for name in replaced.keys() {
        if base.manifest().tensors.iter().all(|t| &t.name != name) {
            return Err(Error::BaseMismatch {
                tensor: name.clone(),
                shape: vec![],
            });
        }
    }
    let metas: Vec<TensorMeta> = base.manifest().tensors.iter().map(|t| t.meta()).collect();
    let files = vec![(CONFIG_FILE.to_string(), {
        let p = dir.join(CONFIG_FILE);
        std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?
    })];
    let none = || Measured {
        bytes: vec![],
        error: 0.0,
        rel_error: 0.0,
        rel_delta_error: 0.0,
    };
    let meta_rank = cfg.rank;
    write_delta(
        base,
        out,
        DeltaMode::Adapter,
        keys,
        &[metadata, &[("adapter_rank", &meta_rank.to_string())]].concat(),
        &metas,
        files,
        t0,
        &mut |_, m| {
            progress("encode", &m.name);
            if let Some(key) = replaced.get(&m.name) {
                let (v, shape, _) = st.read_float(key)?;
                if shape != m.shape {
                    return Err(Error::BaseMismatch {
                        tensor: m.name.clone(),
                        shape,
                    });
                }
                let mut got = none();
                got.bytes = m.dtype.encode(&v);
                return Ok((Choice::Full, "replaced (modules_to_save)".into(), got));
            }
            let Some([Some(ka), Some(kb)]) = adapted.get(&m.name) else {
                return Ok((Choice::Reference, Choice::Reference.label(), none()));
            };
            let (a, sa, _) = st.read_float(ka)?;
            let (mut b, sb, _) = st.read_float(kb)?;
            let (rows, cols) = match m.shape.as_slice() {
                [r, c] => (*r, *c),
                _ => {
                    return Err(Error::BaseMismatch {
                        tensor: m.name.clone(),
                        shape: m.shape.clone(),
                    })
                }
            };
            let r = sa.first().copied().unwrap_or(0);
            if sa != [r, cols] || sb != [rows, r] || base_entry(base, &m.name, &m.shape).is_none() {
                return Err(Error::BaseMismatch {
                    tensor: format!("{} (lora_A {sa:?}, lora_B {sb:?})", m.name),
                    shape: m.shape.clone(),
                });
            }
            b.iter_mut().for_each(|x| *x *= scale);
            let inner =
                lowrank::encode_factors(&b, &a, rows, cols, r).map_err(|e| e.in_tensor(&m.name))?;
            let mut got = none();
            got.bytes = delta_add::wrap(&inner, rows, cols);
            let choice = Choice::Adapter { rank: r };
            Ok((choice, choice.label(), got))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_keys() {
        let c = AdapterConfig::parse(
            br#"{"peft_type":"LORA","r":8,"lora_alpha":16,"base_model_name_or_path":"a/b","target_modules":["q_proj"]}"#,
        )
        .expect("config");
        assert_eq!(c.scale(), 2.0);
        assert_eq!(c.base.as_deref(), Some("a/b"));
        let c = AdapterConfig::parse(br#"{"r":4,"lora_alpha":8,"use_rslora":true}"#).expect("rs");
        assert_eq!(c.scale(), 4.0);
        for bad in [
            &br#"{"r":0}"#[..],
            br#"{"peft_type":"IA3","r":4}"#,
            br#"{"r":4,"use_dora":true}"#,
            br#"{"r":4,"fan_in_fan_out":true}"#,
            br#"{"r":4,"rank_pattern":{"q_proj":8}}"#,
            b"not json",
        ] {
            assert!(AdapterConfig::parse(bad).is_err());
        }
        assert_eq!(
            module_of("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.0.self_attn.q_proj", "lora_A"))
        );
        assert_eq!(module_of("base_model.model.lm_head.weight"), None);
    }
}
