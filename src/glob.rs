//! `*` / `?` glob matching, shared by tensor selection (`--tensors 'model.layers.0.*'`)
//! and the Hub download filter (`*.safetensors`). A leaf module.

/// Whether `text` matches `pattern`: `?` matches one byte, `*` any run of bytes. With
/// `sep`, neither crosses that byte (path segments: `*.json` matches `config.json`, not
/// `sub/config.json`). Iterative, backtracking to the last star: linear in practice, no
/// recursion on hostile patterns.
pub fn matches(pattern: &str, text: &str, sep: Option<u8>) -> bool {
    let (p, s) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == s[si] || (p[pi] == b'?' && Some(s[si]) != sep)) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            if Some(s[ss]) == sep {
                return false;
            }
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_questions_and_separators() {
        assert!(matches(
            "model.layers.0.*",
            "model.layers.0.mlp.up_proj.weight",
            None
        ));
        assert!(!matches("model.layers.0.*", "model.layers.10.mlp", None));
        assert!(matches("*.weight", "a.b.weight", None));
        assert!(matches("a?c", "abc", None));
        assert!(!matches("a?c", "abbc", None));
        assert!(matches("*", "", None));
        assert!(matches("*.safetensors", "model.safetensors", Some(b'/')));
        assert!(!matches(
            "*.safetensors",
            "sub/model.safetensors",
            Some(b'/')
        ));
        assert!(!matches("a?b", "a/b", Some(b'/')));
        assert!(matches(
            "model-*-of-*.safetensors",
            "model-00001-of-00002.safetensors",
            Some(b'/')
        ));
        // Many stars on a long non-matching text stay fast (no exponential backtracking).
        let text = "a".repeat(10_000);
        assert!(!matches(
            &"*a".repeat(50).replace("*a*a", "*a*b"),
            &text,
            None
        ));
    }
}
