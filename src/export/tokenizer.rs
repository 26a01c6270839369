//! A Hugging Face `tokenizer.json` as GGUF tokenizer metadata (`tokenizer.ggml.*`): the
//! inverse of the import's [`crate::source::gguf::tokenizer`].
//!
//! Two kinds of BPE map:
//! - **byte-level BPE** (GPT-2 style: a `ByteLevel` pre-tokenizer or decoder) is
//!   `tokenizer.ggml.model = "gpt2"` with the merges as `"left right"` strings and
//!   `tokenizer.ggml.pre` naming the pre-tokenizer the way llama.cpp does (`gpt2`,
//!   `smollm` for digits split one by one, `llama-bpe` for Llama 3's regex);
//! - **SentencePiece BPE with byte fallback** (Gemma, Llama 2) is `"llama"`, which stores
//!   pieces and *scores*, not merges: SentencePiece merges the adjacent pair whose merged
//!   piece scores highest. A piece's score is minus the rank of the first merge that
//!   makes it, so that merging by score replays the merge list (the import, and
//!   transformers' GGUF loader, rebuild the merges from the scores in that order).
//!
//! Token types: added special tokens are control (3), other added tokens user-defined
//! (4), `<0xNN>` pieces of a byte-fallback model bytes (6), the unknown token 2, ids the
//! tokenizer does not define (the embedding is larger than the vocabulary) unused (5).

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::source::gguf::write::Meta;
use crate::{Error, Result};

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

fn err(reason: String) -> Error {
    Error::Export {
        format: "GGUF",
        reason: format!("tokenizer.json: {reason}"),
    }
}

/// Whether a tokenizer.json component (or any in its sequence) has this `type`.
fn has_type(v: &Json, ty: &str) -> bool {
    if v["type"].as_str() == Some(ty) {
        return true;
    }
    ["pretokenizers", "decoders", "normalizers"]
        .iter()
        .filter_map(|k| v[k].as_array())
        .flatten()
        .any(|c| has_type(c, ty))
}

/// llama.cpp's name for a byte-level pre-tokenizer (`tokenizer.ggml.pre`).
fn pre_name(pre: &Json) -> Result<&'static str> {
    let parts: Vec<&Json> = match pre["pretokenizers"].as_array() {
        Some(a) => a.iter().collect(),
        None => vec![pre],
    };
    let types: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
    match types.as_slice() {
        ["ByteLevel"] => Ok("gpt2"),
        ["Digits", "ByteLevel"] if parts[0]["individual_digits"].as_bool() == Some(true) => {
            Ok("smollm")
        }
        ["Split", "ByteLevel"]
            if parts[0]["pattern"]["Regex"]
                .as_str()
                .is_some_and(|r| r.contains(r"\p{N}{1,3}")) =>
        {
            Ok("llama-bpe")
        }
        other => Err(err(format!(
            "a byte-level pre-tokenizer {other:?} that llama.cpp has no name for (known: ByteLevel, Digits+ByteLevel, Llama 3's Split+ByteLevel)"
        ))),
    }
}

fn merge_pair(m: &Json) -> Option<(String, String)> {
    match m {
        Json::String(s) => s.split_once(' ').map(|(a, b)| (a.into(), b.into())),
        Json::Array(a) => match a.as_slice() {
            [Json::String(a), Json::String(b)] => Some((a.clone(), b.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// The token id of a special token named in `tokenizer_config.json` (a string or an
/// `AddedToken` object), or given as an id in `config.json`.
fn special_id(
    config: &Json,
    tok_config: &Json,
    ids: &HashMap<&str, usize>,
    key: &str,
) -> Option<u32> {
    let from_config = match &config[format!("{key}_id")] {
        Json::Array(a) => a.first().and_then(Json::as_u64),
        v => v.as_u64(),
    };
    from_config.map(|v| v as u32).or_else(|| {
        let t = &tok_config[key];
        let name = t.as_str().or_else(|| t["content"].as_str())?;
        ids.get(name).map(|&i| i as u32)
    })
}

/// The `tokenizer.ggml.*` (and `tokenizer.chat_template`) metadata of a tokenizer,
/// for a model with `n_vocab` embedding rows.
pub fn gguf_metadata(
    tokenizer: &Json,
    tok_config: &Json,
    config: &Json,
    n_vocab: usize,
) -> Result<Vec<(String, Meta)>> {
    let model = &tokenizer["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(err(format!(
            "model type {} (only BPE models map to GGUF here)",
            model["type"]
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| err("model.vocab is not an object".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![UNUSED; n_vocab];
    let mut put = |id: u64, t: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            err(format!(
                "token {t:?} has id {id}, beyond the {n_vocab} embedding rows"
            ))
        })?;
        *slot = Some(t.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("vocab entry {t:?} has no integer id")))?;
        put(id, t, NORMAL)?;
    }
    for a in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(err("an added token without id or content".into()));
        };
        let special = a["special"].as_bool().unwrap_or(false);
        put(id, t, if special { CONTROL } else { USER_DEFINED })?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    if ids.len() != tokens.len() {
        return Err(err("two ids share a token".into()));
    }
    let merges: Vec<(String, String)> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| merge_pair(m).ok_or_else(|| err(format!("merge {m} is not a pair"))))
        .collect::<Result<_>>()?;

    let byte_level = has_type(&tokenizer["pre_tokenizer"], "ByteLevel")
        || has_type(&tokenizer["decoder"], "ByteLevel");
    let byte_fallback = model["byte_fallback"].as_bool() == Some(true);
    let mut m: Vec<(String, Meta)> = vec![];
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    if byte_level {
        m.push((key("model"), Meta::Str("gpt2".into())));
        m.push((
            key("pre"),
            Meta::Str(pre_name(&tokenizer["pre_tokenizer"])?.into()),
        ));
    } else if byte_fallback {
        m.push((key("model"), Meta::Str("llama".into())));
        m.push((key("pre"), Meta::Str("default".into())));
        let unk = model["unk_token"]
            .as_str()
            .and_then(|u| ids.get(u).copied());
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == NORMAL && is_byte_piece(t) {
                types[i] = BYTE;
            } else if types[i] == NORMAL && !t.is_empty() && t.chars().all(|c| c == ' ') {
                // Runs of plain spaces never match after the ' ' -> '▁' normalizer; GGUF
                // (and the import, which leaves them out of the added tokens) has them
                // user-defined, so that no merge is made for them.
                types[i] = USER_DEFINED;
            }
        }
        // The unknown token is UNKNOWN unless it is a special (control) token already,
        // as Gemma's is.
        if let Some(u) = unk.filter(|&u| types[u] == NORMAL) {
            types[u] = UNKNOWN;
        }
    } else {
        return Err(err(
            "a BPE model that is neither byte-level nor SentencePiece-like (byte_fallback)".into(),
        ));
    }
    m.push((key("tokens"), Meta::Strs(tokens.clone())));
    if byte_level {
        m.push((
            key("merges"),
            Meta::Strs(merges.iter().map(|(a, b)| format!("{a} {b}")).collect()),
        ));
    } else {
        m.push((
            key("scores"),
            Meta::F32s(spm_scores(&tokens, &types, &merges)),
        ));
    }
    m.push((key("token_type"), Meta::I32s(types)));
    for (k, name) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(id) = special_id(config, tok_config, &ids, k) {
            m.push((key(name), Meta::U32(id)));
        }
    }
    let post = &tokenizer["post_processor"];
    let template_has = |k: &str| {
        special_id(config, tok_config, &ids, k).is_some_and(|id| {
            post["single"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["SpecialToken"]["id"].as_str())
                .any(|name| ids.get(name) == Some(&(id as usize)))
        })
    };
    let add_bos = tok_config["add_bos_token"]
        .as_bool()
        .unwrap_or_else(|| template_has("bos_token"));
    let add_eos = tok_config["add_eos_token"]
        .as_bool()
        .unwrap_or_else(|| template_has("eos_token"));
    m.push((key("add_bos_token"), Meta::Bool(add_bos)));
    m.push((key("add_eos_token"), Meta::Bool(add_eos)));
    let prepends = has_type(&tokenizer["normalizer"], "Prepend")
        || tokenizer["pre_tokenizer"]["prepend_scheme"].as_str() == Some("always");
    m.push((key("add_space_prefix"), Meta::Bool(prepends)));
    if let Some(t) = tok_config["chat_template"].as_str() {
        m.push(("tokenizer.chat_template".into(), Meta::Str(t.into())));
    }
    Ok(m)
}

fn is_byte_piece(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// SentencePiece scores that replay `merges`: a piece made by merge `r` (its first)
/// scores `-r`; normal pieces no merge makes score below every merged one, in id order;
/// other tokens −1000 (as SentencePiece's converters write for control tokens).
fn spm_scores(tokens: &[String], types: &[i32], merges: &[(String, String)]) -> Vec<f32> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, (a, b)) in merges.iter().enumerate() {
        rank.entry(format!("{a}{b}")).or_insert(r);
    }
    let n = merges.len();
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (t, &ty))| match (ty, rank.get(t.as_str())) {
            (NORMAL, Some(&r)) => -(r as f32),
            (NORMAL, None) => -((n + i) as f32),
            _ => -1000.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn byte_level_bpe_maps_to_gpt2_with_merges_and_types() {
        let tok = json!({
            "added_tokens": [{"id": 3, "content": "<|end|>", "special": true}],
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false}]},
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
        });
        let m = gguf_metadata(&tok, &json!({"eos_token": "<|end|>"}), &json!({}), 5).expect("maps");
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("tokenizer.ggml.model"), Some(Meta::Str("gpt2".into())));
        assert_eq!(get("tokenizer.ggml.pre"), Some(Meta::Str("smollm".into())));
        assert_eq!(
            get("tokenizer.ggml.merges"),
            Some(Meta::Strs(vec!["a b".into()]))
        );
        assert_eq!(
            get("tokenizer.ggml.token_type"),
            Some(Meta::I32s(vec![1, 1, 1, 3, 5]))
        );
        assert_eq!(get("tokenizer.ggml.eos_token_id"), Some(Meta::U32(3)));
        let Some(Meta::Strs(t)) = get("tokenizer.ggml.tokens") else {
            panic!("tokens")
        };
        assert_eq!(t[4], "[PAD4]");
        // An id beyond the embedding is refused, not truncated.
        assert!(gguf_metadata(&tok, &json!({}), &json!({}), 3).is_err());
    }

    #[test]
    fn sentencepiece_bpe_scores_replay_the_merges() {
        let tok = json!({
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                      "vocab": {"<unk>": 0, "<0x41>": 1, "a": 2, "b": 3, "c": 4, "bc": 5, "abc": 6},
                      "merges": ["b c", "a bc"]},
        });
        let m = gguf_metadata(&tok, &json!({}), &json!({}), 7).expect("maps");
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("tokenizer.ggml.model"), Some(Meta::Str("llama".into())));
        assert_eq!(
            get("tokenizer.ggml.token_type"),
            Some(Meta::I32s(vec![2, 6, 1, 1, 1, 1, 1]))
        );
        let Some(Meta::F32s(s)) = get("tokenizer.ggml.scores") else {
            panic!("scores")
        };
        // bc (merge 0) outranks abc (merge 1), which outranks the unmerged pieces.
        assert!(s[5] > s[6] && s[6] > s[2] && s[2] > s[3]);
        assert_eq!(
            get("tokenizer.ggml.add_space_prefix"),
            Some(Meta::Bool(false))
        );
        // Unigram models do not map.
        assert!(gguf_metadata(
            &json!({"model": {"type": "Unigram"}}),
            &json!({}),
            &json!({}),
            1
        )
        .is_err());
    }
}
