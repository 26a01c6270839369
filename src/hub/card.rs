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

/// The terms a derivative must carry over from its source's card: `license`,
/// `license_name`, `license_link`, and the gating terms (`extra_gated_*`), as front-matter
/// lines (`key: value`, the value re-emitted as YAML, so lists and mappings survive). A
/// card without front matter, or front matter that is not YAML, gives none.
pub fn licence_lines(card: &str) -> Vec<String> {
    let Some(yaml) = front_matter(card) else {
        return vec![];
    };
    let Ok(docs) = YamlLoader::load_from_str(yaml) else {
        return vec![];
    };
    let Some(Yaml::Hash(h)) = docs.into_iter().next() else {
        return vec![];
    };
    let mut out = vec![];
    for (k, v) in &h {
        let Some(key) = k.as_str() else { continue };
        let carried = matches!(key, "license" | "license_name" | "license_link")
            || key.starts_with("extra_gated_");
        if !carried {
            continue;
        }
        let mut doc = yaml_rust2::yaml::Hash::new();
        doc.insert(k.clone(), v.clone());
        let mut text = String::new();
        if yaml_rust2::YamlEmitter::new(&mut text)
            .dump(&Yaml::Hash(doc))
            .is_ok()
        {
            // The emitter starts the document with `---`.
            let body = text
                .strip_prefix("---")
                .unwrap_or(&text)
                .trim_start_matches('\n');
            out.push(body.to_string());
        }
    }
    out
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

/// `owner/name` with the Hub's characters (the rule lives in `tenpak-hooks`).
pub use tenpak_hooks::is_repo_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licence_and_gating_terms_are_carried_as_yaml() {
        let card = "---\nlicense: other\nlicense_name: acme-community\nlicense_link: LICENSE.md\n\
                    tags:\n- x\nextra_gated_prompt: \"Agree: no misuse\"\nextra_gated_fields:\n  \
                    Company: text\n  I agree: checkbox\nbase_model: a/b\n---\n# Card\n";
        let lines = licence_lines(card);
        let joined = lines.join("\n");
        for want in [
            "license: other",
            "license_name: acme-community",
            "license_link: LICENSE.md",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want} in {joined}");
        }
        assert!(
            !joined.contains("tags") && !joined.contains("base_model"),
            "{joined}"
        );
        // Re-read as YAML, the gating terms are what the source said.
        let doc = &YamlLoader::load_from_str(&joined).expect("yaml")[0];
        assert_eq!(doc["extra_gated_prompt"].as_str(), Some("Agree: no misuse"));
        assert_eq!(
            doc["extra_gated_fields"]["I agree"].as_str(),
            Some("checkbox")
        );
        assert!(licence_lines("# no front matter").is_empty());
        assert!(licence_lines("---\n: : bad\n  - [\n---\n").is_empty());
    }

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
