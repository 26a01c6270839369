//! Choosing tensors by name: comma-separated glob patterns (`*` any run, `?` one
//! character) and/or a range of transformer layers (`.layers.N.` in the name).

use std::ops::RangeInclusive;

/// A tensor selection; the default selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    patterns: Vec<String>,
    /// Layer ranges, any of which selects (None: every tensor, with or without a layer).
    layers: Option<Vec<RangeInclusive<usize>>>,
}

impl Selection {
    /// From `--tensors 'a*,b?'` and `--layers 0-3` (or `5`).
    pub fn new(patterns: Option<&str>, layers: Option<&str>) -> Result<Self, String> {
        let patterns = patterns
            .map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let layers = match layers {
            None => None,
            Some(s) => {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                let a: usize = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad layer range {s:?} (expected N or A-B)"))?;
                let b: usize = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad layer range {s:?} (expected N or A-B)"))?;
                if a > b {
                    return Err(format!("empty layer range {s:?}"));
                }
                Some(vec![a..=b])
            }
        };
        Ok(Self { patterns, layers })
    }

    /// From lists, as an API takes them: names or globs (any matches; empty: all), and
    /// layer numbers (any matches; None: all).
    pub fn from_lists(patterns: Vec<String>, layers: Option<Vec<usize>>) -> Self {
        Self {
            patterns,
            layers: layers.map(|ls| ls.into_iter().map(|l| l..=l).collect()),
        }
    }

    /// Whether a tensor name is selected.
    pub fn matches(&self, name: &str) -> bool {
        let by_pattern = self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|p| crate::glob::matches(p, name, None));
        let by_layer = match &self.layers {
            None => true,
            Some(rs) => layer_of(name).is_some_and(|l| rs.iter().any(|r| r.contains(&l))),
        };
        by_pattern && by_layer
    }
}

/// The block index in `...layers.N...`, if any.
pub fn layer_of(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" || p == "h" || p == "blocks" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_layers() {
        let s = Selection::new(Some("model.layers.0.*"), None).expect("sel");
        assert!(s.matches("model.layers.0.mlp.up_proj.weight"));
        assert!(!s.matches("model.layers.10.mlp.up_proj.weight"));
        let s = Selection::new(Some("*q_proj*,model.norm.weight"), None).expect("sel");
        assert!(s.matches("model.layers.3.self_attn.q_proj.weight"));
        assert!(s.matches("model.norm.weight"));
        assert!(!s.matches("model.layers.3.self_attn.k_proj.weight"));
        let s = Selection::new(None, Some("2-3")).expect("sel");
        assert!(s.matches("model.layers.2.x") && s.matches("model.layers.3.y"));
        assert!(!s.matches("model.layers.4.x") && !s.matches("model.embed_tokens.weight"));
        assert!(Selection::new(None, Some("3-1")).is_err());
        assert!(Selection::default().matches("anything"));
    }
}
