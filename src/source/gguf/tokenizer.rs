//! Rebuilds a Hugging Face `tokenizer.json` from GGUF tokenizer metadata.
//!
//! Two GGUF tokenizer models occur:
//! - `gpt2`: byte-level BPE whose merges are stored (`tokenizer.ggml.merges`); the
//!   pre-tokenizer is chosen by `tokenizer.ggml.pre` (SmolLM2's `smollm` splits digits
//!   individually before the GPT-2 byte-level regex).
//! - `llama`: a SentencePiece model. Gemma 3's is SentencePiece **BPE** with byte fallback;
//!   GGUF stores pieces and scores, not merges. SentencePiece BPE merges the adjacent pair
//!   whose merged piece scores highest, so the equivalent HF merge list is every split of
//!   every normal piece into two vocabulary pieces, ranked by the merged piece's score, then
//!   by longer left part, then longer right part (the order of transformers'
//!   `SentencePieceExtractor`/`generate_merges`, which the reference files were made with).
//!
//! Control tokens (type 3) become special added tokens and user-defined tokens (type 4)
//! non-special ones, except user-defined runs of plain spaces, which can never match
//! after the `' ' -> '▁'` normalizer and which the reference tokenizer leaves out.

use std::collections::HashMap;

use serde_json::{json, Value as Json};

use super::file::{GgufFile, Value};
use crate::{Error, Result};

/// The files that make the tokenizer loadable.
pub struct BuiltTokenizer {
    /// `tokenizer.json`.
    pub tokenizer_json: Json,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Json,
}

const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

fn strings<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    f.require(key)?
        .as_array()
        .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        .ok_or_else(|| {
            Error::malformed(
                f.path(),
                "GGUF",
                format!("{key} is not an array of strings"),
            )
        })
}

/// Builds `tokenizer.json` and `tokenizer_config.json` for a GGUF model.
pub fn build(f: &GgufFile) -> Result<BuiltTokenizer> {
    let model = f
        .require("tokenizer.ggml.model")?
        .as_str()
        .unwrap_or_default()
        .to_string();
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|v| match v {
                Value::I64(i) => *i,
                Value::U64(u) => *u as i64,
                _ => TOKEN_NORMAL,
            })
            .collect(),
        None => vec![TOKEN_NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(Error::malformed(
            f.path(),
            "GGUF",
            "token_type and tokens differ in length",
        ));
    }
    let id = |k: &str| {
        f.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
    };
    let flag = |k: &str| {
        f.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_bool)
    };
    let tok_at = |i: Option<u64>| {
        i.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let bos = tok_at(id("bos_token_id"));
    let eos = tok_at(id("eos_token_id"));
    let unk = tok_at(id("unknown_token_id"));
    let pad = tok_at(id("padding_token_id"));
    let spm = model == "llama";
    let add_bos = flag("add_bos_token").unwrap_or(spm);
    let add_eos = flag("add_eos_token").unwrap_or(false);

    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(Error::malformed(
            f.path(),
            "GGUF",
            "duplicate tokens in the vocabulary",
        ));
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (t, ty))| {
            **ty == TOKEN_CONTROL
                || (**ty == TOKEN_USER_DEFINED && !(spm && t.chars().all(|c| c == ' ')))
        })
        .map(|(i, (t, ty))| {
            json!({ "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": *ty == TOKEN_CONTROL })
        })
        .collect();

    let mut template_single = vec![];
    let mut special_tokens = serde_json::Map::new();
    let mut special = |name: &Option<String>, idk: &str| -> Result<Json> {
        let name = name.clone().ok_or_else(|| Error::Missing {
            path: f.path().to_path_buf(),
            what: format!("tokenizer.ggml.{idk}"),
        })?;
        let i = id(idk).unwrap_or_default();
        special_tokens.insert(
            name.clone(),
            json!({ "id": name, "ids": [i], "tokens": [name] }),
        );
        Ok(json!({ "SpecialToken": { "id": name, "type_id": 0 } }))
    };
    if add_bos {
        template_single.push(special(&bos, "bos_token_id")?);
    }
    template_single.push(json!({ "Sequence": { "id": "A", "type_id": 0 } }));
    if add_eos {
        template_single.push(special(&eos, "eos_token_id")?);
    }
    let mut pair = template_single.clone();
    for item in template_single.iter() {
        let mut item = item.clone();
        for k in ["SpecialToken", "Sequence"] {
            if let Some(o) = item.get_mut(k) {
                o["type_id"] = json!(1);
                if k == "Sequence" {
                    o["id"] = json!("B");
                }
            }
        }
        pair.push(item);
    }
    let post_processor = json!({ "type": "TemplateProcessing", "single": template_single,
                                 "pair": pair, "special_tokens": special_tokens });

    let (normalizer, pre_tokenizer, decoder, bpe) = if spm {
        let scores: Vec<f32> = f
            .require("tokenizer.ggml.scores")?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_f64().map(|x| x as f32))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                Error::malformed(
                    f.path(),
                    "GGUF",
                    "tokenizer.ggml.scores is not an array of floats",
                )
            })?;
        if scores.len() != tokens.len() {
            return Err(Error::malformed(
                f.path(),
                "GGUF",
                "scores and tokens differ in length",
            ));
        }
        let merges = spm_merges(&tokens, &types, &scores);
        let replace =
            json!({ "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" });
        let normalizer = if flag("add_space_prefix").unwrap_or(true) {
            json!({ "type": "Sequence", "normalizers": [ { "type": "Prepend", "prepend": "\u{2581}" }, replace ] })
        } else {
            replace
        };
        (
            normalizer,
            json!({ "type": "Split", "pattern": { "String": " " }, "behavior": "MergedWithPrevious", "invert": false }),
            json!({ "type": "Sequence", "decoders": [
                { "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " },
                { "type": "ByteFallback" }, { "type": "Fuse" } ] }),
            json!({ "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                    "ignore_merges": false, "vocab": vocab, "merges": merges }),
        )
    } else if model == "gpt2" {
        let merges: Vec<Json> = strings(f, "tokenizer.ggml.merges")?
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| json!([a, b]))
                    .ok_or_else(|| {
                        Error::malformed(f.path(), "GGUF", format!("merge {m:?} has no space"))
                    })
            })
            .collect::<Result<_>>()?;
        let byte_level = json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true });
        let pre = f
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let pre_tokenizer = match pre {
            "default" | "gpt2" => byte_level,
            "smollm" => json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Digits", "individual_digits": true }, byte_level ] }),
            "llama-bpe" | "llama3" => json!({ "type": "Sequence", "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": LLAMA3_REGEX }, "behavior": "Isolated", "invert": false },
                { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false } ] }),
            other => {
                return Err(Error::malformed(
                    f.path(),
                    "GGUF",
                    format!("pre-tokenizer {other:?} is not supported (supported: default, gpt2, smollm, llama-bpe)"),
                ))
            }
        };
        (
            Json::Null,
            pre_tokenizer,
            json!({ "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true }),
            json!({ "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                    "ignore_merges": false, "vocab": vocab, "merges": merges }),
        )
    } else {
        return Err(Error::malformed(
            f.path(),
            "GGUF",
            format!("tokenizer model {model:?} is not supported (supported: gpt2, llama)"),
        ));
    };

    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post_processor,
        "decoder": decoder, "model": bpe,
    });
    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656f64,
    });
    if let Some(t) = f.get("tokenizer.chat_template").and_then(Value::as_str) {
        tokenizer_config["chat_template"] = json!(t);
    }
    Ok(BuiltTokenizer {
        tokenizer_json,
        tokenizer_config,
    })
}

/// Llama 3's pre-tokenizer regex (as in its `tokenizer.json`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// HF BPE merges equivalent to SentencePiece BPE scores (see the module docs).
fn spm_merges(tokens: &[&str], types: &[i64], scores: &[f32]) -> Vec<Json> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    // (score, left chars, right chars, sequence) -> (left, right)
    let mut merges: Vec<(f32, usize, usize, usize, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types[i] != TOKEN_NORMAL {
            continue;
        }
        let mut local: Vec<(usize, usize, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(k, _)| {
                let (l, r) = piece.split_at(k);
                Some((*index.get(l)?, *index.get(r)?, l, r))
            })
            .collect();
        local.sort();
        for (_, _, l, r) in local {
            let seq = merges.len();
            merges.push((scores[i], l.chars().count(), r.chars().count(), seq, l, r));
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
    });
    merges.into_iter().map(|m| json!([m.4, m.5])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_merges_rank_by_score_then_longer_left() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let types = [1; 6];
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let m = spm_merges(&tokens, &types, &scores);
        // abc (-0.5): splits ab+c and a+bc, longer left first; then ab (-1), then bc (-2).
        assert_eq!(
            m,
            vec![
                json!(["ab", "c"]),
                json!(["a", "bc"]),
                json!(["a", "b"]),
                json!(["b", "c"])
            ]
        );
    }
}
