//! Tokenizing with a model's own `tokenizer.json`, which comes from the Hub and is
//! untrusted: its pre-tokenizer regexes run in Oniguruma, where a pattern with nested
//! quantifiers backtracks for seconds per position (and, past Oniguruma's retry limit,
//! panics inside the `onig` crate). A registry evaluating such a model would spend hours
//! on one card column. So the registry tokenizes in a child process of its own binary
//! (`tenpak-registry tokenize`, hidden) under a wall-clock limit, and kills it at the
//! limit: the column then says why it was not measured, and the job goes on.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the child prints: the ids and the tokenizer's default BOS.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Tokenized {
    /// Token ids of the text.
    pub ids: Vec<u32>,
    /// The id prepended to every window, if the tokenizer has one.
    pub bos: Option<u32>,
}

/// The child's side: tokenizes `text` with `tokenizer` and prints [`Tokenized`] as JSON.
pub fn child_main(tokenizer: &Path, text: &Path) -> anyhow::Result<()> {
    let tok = tenpak::runtime::Tokenizer::from_bytes(&std::fs::read(tokenizer)?)?;
    let s = std::fs::read_to_string(text)?;
    let out = Tokenized {
        ids: tok.encode(&s)?,
        bos: tok.default_bos(),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The first `max_tokens` worth of `text` (16 characters per token, far more than any
/// tokenizer needs), cut at a character boundary: the evaluation reads no more tokens
/// than that, so the child gets no more text than that.
pub fn prefix_for(text: &str, max_tokens: usize) -> &str {
    let want = max_tokens.saturating_mul(16);
    if text.len() <= want {
        return text;
    }
    let mut end = want;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Tokenizes `text` with the untrusted `tokenizer` bytes in a child process running
/// `exe tokenize`, killed after `limit`. Files go to `scratch` (removed after).
pub fn isolated(
    exe: &Path,
    tokenizer: &[u8],
    text: &str,
    scratch: &Path,
    limit: Duration,
) -> Result<Tokenized, String> {
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let (tok_path, text_path) = (scratch.join("tokenizer.json"), scratch.join("text.txt"));
    let wrote = std::fs::write(&tok_path, tokenizer).and_then(|_| std::fs::write(&text_path, text));
    let r = wrote
        .map_err(|e| format!("writing the tokenizer's input: {e}"))
        .and_then(|_| run(exe, &tok_path, &text_path, limit));
    let _ = std::fs::remove_file(&tok_path);
    let _ = std::fs::remove_file(&text_path);
    r
}

fn run(exe: &Path, tok: &Path, text: &Path, limit: Duration) -> Result<Tokenized, String> {
    let mut child = Command::new(exe)
        .arg("tokenize")
        .arg(tok)
        .arg(text)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the tokenizer process: {e}"))?;
    // Read both pipes while waiting (the ids can exceed a pipe's buffer).
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut err).take(64 << 10).read_to_end(&mut b);
        b
    });
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t0.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the model's tokenizer took longer than {:.0} s on the evaluation text and was stopped (a pathological pre-tokenizer regex?)",
                    limit.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for the tokenizer process: {e}")),
        }
    };
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let msg = String::from_utf8_lossy(&stderr);
        let last = msg.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("the model's tokenizer failed ({status}): {last}"));
    }
    serde_json::from_slice(&stdout).map_err(|e| format!("the tokenizer process's output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cut_at_character_boundaries() {
        assert_eq!(prefix_for("abc", 10), "abc");
        let s = "é".repeat(100);
        let p = prefix_for(&s, 1);
        assert!(p.len() <= 16 && p.chars().all(|c| c == 'é'));
    }
}
