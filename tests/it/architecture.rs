//! The dependency rules of `docs/ARCHITECTURE.md`, checked on the source: no cycles among
//! the top-level modules of `src/`, nor among the files of `src/codec/`.
//!
//! Each file's references are read from its text (test modules and comments left out):
//! `crate::a::b`, `super::x`, grouped `use crate::{..}` / `use super::{..}`, and a parent
//! module's references to its own children. Names a parent re-exports (`pub use
//! child::Name`) resolve to the child that defines them, so a dependency cannot hide
//! behind a facade.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

struct Source {
    module: Module,
    text: String,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    walk(&root, &mut files);
    files
        .into_iter()
        .filter(|p| {
            !p.starts_with(root.join("cli")) && p.file_name().is_some_and(|n| n != "main.rs")
        })
        .map(|p| {
            let rel = p.strip_prefix(&root).expect("under src").with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let raw = std::fs::read_to_string(&p).expect("read");
            let code = raw.split("#[cfg(test)]").next().unwrap_or_default();
            let text = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            Source { module, text }
        })
        .collect()
}

fn idents(s: &str) -> Vec<String> {
    s.split("::")
        .map(|p| {
            p.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|p| !p.is_empty())
        .collect()
}

/// Every path a file names, made absolute (a list of identifiers from the crate root).
fn references(src: &Source, children: &BTreeSet<String>) -> Vec<Module> {
    let parent: Module = src.module[..src.module.len().saturating_sub(1)].to_vec();
    let t = &src.text;
    let mut out = vec![];
    let mut push = |base: &Module, tail: &str| {
        let mut m = base.clone();
        m.extend(idents(tail));
        out.push(m);
    };
    // Grouped imports: `use crate::{a, b::c}` and `use super::x::{a, b}`.
    for (i, _) in t.match_indices("use ") {
        let stmt = &t[i + 4..t[i..].find(';').map_or(t.len(), |e| i + e)];
        let stmt: String = stmt.split_whitespace().collect();
        let (base, rest) = if let Some(r) = stmt.strip_prefix("crate::") {
            (vec![], r.to_string())
        } else if let Some(r) = stmt.strip_prefix("super::") {
            (parent.clone(), r.to_string())
        } else {
            continue;
        };
        if let Some((pre, group)) = rest.split_once('{') {
            let mut b = base.clone();
            b.extend(idents(pre));
            for item in group.trim_end_matches('}').split(',') {
                if !item.is_empty() && item != "self" {
                    push(&b, item);
                } else if item == "self" {
                    push(&b, "");
                }
            }
        }
    }
    // Plain paths anywhere.
    for (i, _) in t.match_indices("crate::") {
        push(&vec![], &t[i + 7..]);
    }
    for (i, _) in t.match_indices("super::") {
        if t[..i].ends_with("super::") {
            continue;
        }
        let mut base = parent.clone();
        let mut rest = &t[i + 7..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        push(&base, rest);
    }
    // A parent's references to its children (`table::row(..)` in `codec/mod.rs`).
    for c in children {
        for (i, _) in t.match_indices(&format!("{c}::")) {
            let before = t[..i].chars().last();
            if before.is_some_and(|b| b.is_alphanumeric() || b == '_' || b == ':') {
                continue;
            }
            push(&src.module, &t[i..]);
        }
    }
    out
}

/// The graph at depth `depth` under `within` (top-level modules: depth 1, within []).
fn graph(within: &[&str], depth: usize) -> BTreeMap<Module, BTreeSet<Module>> {
    let srcs = sources();
    let modules: BTreeSet<Module> = srcs.iter().map(|s| s.module.clone()).collect();
    // Re-exports of each module: name → the module it comes from.
    let mut reexports: BTreeMap<Module, Module> = BTreeMap::new();
    for s in &srcs {
        for (i, _) in s.text.match_indices("pub use ") {
            let stmt: String = s.text[i + 8..]
                .split(';')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            let (pre, names) = match stmt.split_once('{') {
                Some((p, n)) => (p.to_string(), n.trim_end_matches('}').to_string()),
                None => match stmt.rsplit_once("::") {
                    Some((p, n)) => (format!("{p}::"), n.to_string()),
                    None => continue,
                },
            };
            let mut from = s.module.clone();
            from.extend(idents(&pre));
            for n in names.split(',').filter(|n| !n.is_empty()) {
                let mut key = s.module.clone();
                key.extend(idents(n));
                reexports.insert(key, from.clone());
            }
        }
    }
    let node_of = |path: &Module| -> Option<Module> {
        let path = reexports.get(path).cloned().unwrap_or_else(|| path.clone());
        let m = (1..=path.len())
            .rev()
            .map(|k| path[..k].to_vec())
            .find(|p| modules.contains(p))?;
        (m.len() >= depth && m[..within.len()] == *within).then(|| m[..depth].to_vec())
    };
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for s in &srcs {
        let Some(from) = node_of(&s.module) else {
            continue;
        };
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == s.module.len() + 1 && m.starts_with(&s.module))
            .map(|m| m[m.len() - 1].clone())
            .collect();
        for r in references(s, &children) {
            if let Some(to) = node_of(&r) {
                if to != from {
                    g.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    g
}

/// The cycles of `g` (strongly connected components of two or more nodes).
fn cycles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    let nodes: Vec<&Module> = g.keys().collect();
    let reach = |a: &Module| -> BTreeSet<Module> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![a.clone()];
        while let Some(n) = stack.pop() {
            for m in g.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let mut out: Vec<Vec<String>> = vec![];
    for a in &nodes {
        let r = reach(a);
        if !r.contains(*a) {
            continue;
        }
        let mut comp: Vec<String> = nodes
            .iter()
            .filter(|b| r.contains(**b) && reach(b).contains(*a))
            .map(|b| b.join("::"))
            .collect();
        comp.sort();
        if !out.contains(&comp) {
            out.push(comp);
        }
    }
    out
}

#[test]
fn top_level_modules_form_a_dag() {
    let g = graph(&[], 1);
    assert!(g.len() > 8, "the reader found too few modules: {g:?}");
    assert!(
        g.get(&vec!["artifact".to_string()])
            .is_some_and(|d| d.contains(&vec!["codec".to_string()])),
        "the reader misses plain references"
    );
    let c = cycles(&g);
    assert!(c.is_empty(), "import cycles among src/ modules: {c:?}");
    // The leaves depend on nothing in the crate.
    for leaf in ["error", "rng", "glob", "dtype"] {
        assert!(
            g.get(&vec![leaf.to_string()]).is_none_or(|d| d.is_empty()),
            "{leaf} must be a leaf: {:?}",
            g.get(&vec![leaf.to_string()])
        );
    }
}

#[test]
fn codec_files_form_a_dag() {
    let g = graph(&["codec"], 2);
    let c = cycles(&g);
    assert!(c.is_empty(), "import cycles among src/codec files: {c:?}");
    // The codec files reach the table only through the dispatcher they are handed.
    let table = vec!["codec".to_string(), "table".to_string()];
    for (from, to) in &g {
        if from[1] != "choice" {
            assert!(!to.contains(&table), "{from:?} depends on the codec table");
        }
    }
}
