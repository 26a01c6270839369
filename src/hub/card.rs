//! What a repository says about its lineage: the model card's YAML front matter
//! (`base_model`, `base_model_relation`, as the Hub reads them) and, for PEFT adapter
//! repositories, `adapter_config.json`'s `base_model_name_or_path`.
//!
//! The Hub's rule for a card without `base_model_relation`: an adapter when the repo
//! holds adapter files, a merge when several bases are named, a quantization when it
//! holds GGUF files, a fine-tune otherwise. [`Lineage::derived_from`] applies the same
//! rule and says which of those TenPak can store against the base.

use yaml_rust2::{Yaml, YamlLoader};

/// What a card's front matter declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// `base_model`: one id, or several (merges); empty when absent.
    pub base_models: Vec<String>,
    /// `base_model_relation` as written (`finetune`, `adapter`, `merge`, `quantized`).
    pub relation: Option<String>,
}

/// How a repository relates to its base, for packing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derived {
    /// No base named: a model of its own.
    Standalone,
    /// A fine-tune of `base` (stored as a delta against it).
    FineTune {
        /// The base repository id.
        base: String,
    },
    /// A PEFT adapter of `base` (stored as an adapter artifact against it).
    Adapter {
        /// The base repository id.
        base: String,
    },
    /// Derived from a base, but not in a way a delta serves; the reason.
    Other {
        /// Why it is packed as a model of its own.
        reason: String,
    },
}

/// The YAML between the leading `---` lines of a model card, if any.
pub fn front_matter(card: &str) -> Option<&str> {
    let card = card.strip_prefix('\u{feff}').unwrap_or(card);
    let rest = card
        .strip_prefix("---\n")
        .or_else(|| card.strip_prefix("---\r\n"))?;
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some(&rest[..at]);
        }
        at += line.len();
    }
    None
}

impl Lineage {
    /// Reads a model card (`README.md`). A card without front matter declares nothing;
    /// front matter that is not YAML, or a `base_model` that is neither a string nor a
    /// list of strings, is an error.
    pub fn from_card(card: &str) -> Result<Self, String> {
        let Some(yaml) = front_matter(card) else {
            return Ok(Self::default());
        };
        let docs = YamlLoader::load_from_str(yaml)
            .map_err(|e| format!("the model card's front matter is not YAML: {e}"))?;
        let Some(doc) = docs.into_iter().next() else {
            return Ok(Self::default());
        };
        let base_models = match &doc["base_model"] {
            Yaml::BadValue | Yaml::Null => vec![],
            Yaml::String(s) => vec![s.trim().to_string()],
            Yaml::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                        "base_model lists something that is not a repo id".to_string()
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("base_model is neither a repo id nor a list of them".into()),
        };
        let relation = match &doc["base_model_relation"] {
            Yaml::String(s) => Some(s.trim().to_ascii_lowercase()),
            _ => None,
        };
        Ok(Self {
            base_models: base_models.into_iter().filter(|s| !s.is_empty()).collect(),
            relation,
        })
    }

    /// What the repository is, given whether it holds a PEFT adapter
    /// (`adapter_config.json` + `adapter_model.safetensors`) and the adapter config's
    /// own base (`base_model_name_or_path`), used when the card names none.
    pub fn derived_from(&self, adapter: bool, adapter_base: Option<&str>) -> Derived {
        let mut bases = self.base_models.clone();
        if bases.is_empty() {
            if let Some(b) = adapter_base.filter(|b| is_repo_id(b)) {
                bases.push(b.to_string());
            }
        }
        let relation = self.relation.as_deref();
        match (bases.as_slice(), relation) {
            ([], _) => without_base(adapter),
            (_, Some("quantized")) => Derived::Standalone,
            (_, Some("merge")) => Derived::Other {
                reason: format!("a merge of {} (base_model_relation: merge)", bases.join(", ")),
            },
            ([_, _, ..], _) => Derived::Other {
                reason: format!("several bases are named ({}): a merge", bases.join(", ")),
            },
            ([b], _) if !is_repo_id(b) => Derived::Other {
                reason: format!("base_model {b:?} is not a Hub repo id"),
            },
            ([b], Some("adapter")) | ([b], None) if adapter => Derived::Adapter { base: b.clone() },
            ([b], Some("finetune")) | ([b], None) => Derived::FineTune { base: b.clone() },
            ([b], Some("adapter")) => Derived::Other {
                reason: format!(
                    "the card says adapter of {b}, but the repo holds no adapter_config.json + adapter_model.safetensors"
                ),
            },
            ([b], Some(r)) => Derived::Other {
                reason: format!("base_model_relation {r:?} of {b} is not one a delta serves"),
            },
        }
    }
}

/// No base anywhere: a model of its own, unless it is an adapter (which needs one).
fn without_base(adapter: bool) -> Derived {
    if adapter {
        Derived::Other {
            reason: "an adapter whose base is named nowhere (no base_model in the card, no \
                     base_model_name_or_path in adapter_config.json)"
                .into(),
        }
    } else {
        Derived::Standalone
    }
}

/// `owner/name` with the Hub's characters.
pub fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.starts_with(['-', '.'])
            && !p.contains("..")
    };
    matches!(s.split_once('/'), Some((o, n)) if ok(o) && ok(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_base_model_as_string_list_and_relation() {
        let c = "---\nlicense: apache-2.0\nbase_model: HuggingFaceTB/SmolLM2-135M\n---\n# Hi\n";
        let l = Lineage::from_card(c).expect("card");
        assert_eq!(l.base_models, vec!["HuggingFaceTB/SmolLM2-135M"]);
        assert_eq!(l.relation, None);
        assert_eq!(
            l.derived_from(false, None),
            Derived::FineTune {
                base: "HuggingFaceTB/SmolLM2-135M".into()
            }
        );
        let c = "---\nbase_model:\n- \"a/b\"\nbase_model_relation: quantized\n---\n";
        let l = Lineage::from_card(c).expect("card");
        assert_eq!(l.derived_from(false, None), Derived::Standalone);
        let c = "---\r\nbase_model: [a/b, c/d]\r\n---\r\n";
        let l = Lineage::from_card(c).expect("card");
        assert!(matches!(l.derived_from(false, None), Derived::Other { .. }));
        let c = "---\nbase_model: a/b\nbase_model_relation: adapter\n---\n";
        let l = Lineage::from_card(c).expect("card");
        assert_eq!(
            l.derived_from(true, None),
            Derived::Adapter { base: "a/b".into() }
        );
        assert!(matches!(l.derived_from(false, None), Derived::Other { .. }));
    }

    #[test]
    fn cards_without_front_matter_and_adapter_configs() {
        assert_eq!(
            Lineage::from_card("# no metadata\n"),
            Ok(Lineage::default())
        );
        let l = Lineage::default();
        assert_eq!(l.derived_from(false, None), Derived::Standalone);
        assert_eq!(
            l.derived_from(true, Some("acme/base")),
            Derived::Adapter {
                base: "acme/base".into()
            }
        );
        // A local path in the adapter config is not a base the Hub can give.
        assert!(matches!(
            l.derived_from(true, Some("/home/me/base")),
            Derived::Other { .. }
        ));
        assert!(Lineage::from_card("---\nbase_model: {a: 1}\n---\n").is_err());
        assert!(Lineage::from_card("---\n: : [\n---\n").is_err());
        assert!(!is_repo_id("../x"));
        assert!(is_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
    }
}
