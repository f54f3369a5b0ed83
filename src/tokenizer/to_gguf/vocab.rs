//! The converter's two vocabulary routes for a BPE `tokenizer.json`: byte-level BPE as
//! `"gpt2"` (`_set_vocab_gpt2`) and SentencePiece-style BPE with byte fallback as `"llama"`
//! (`_set_vocab_llama_hf`). Each writes the tokens, their types, the scores (`"llama"`) and
//! the pre-tokenizer, then the [`SpecialVocab`].

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

use super::pre_tokenizer::check_pre_name;
use super::special_vocab::{merge_pairs, SpecialVocab};
use super::{extra_keys, pre_for_hash, token_type, HfTokenizer, ToGgufError, TokenizerMetadata};
use crate::gguf::GgufValue;
use crate::tokenizer::gguf::keys;

/// `does_token_look_special`: added tokens that some models forget to mark special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// transformers' `clean_up_tokenization` (applied by `decode` when the config asks for it).
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Which of the converter's vocabulary routes a `tokenizer.json` takes.
pub(super) fn tokenizer_model(hf: &HfTokenizer) -> Result<&'static str, ToGgufError> {
    let model = hf.json.get("model").unwrap_or(&Json::Null);
    let ty = model.get("type").and_then(Json::as_str).unwrap_or("");
    if ty != "BPE" {
        return Err(ToGgufError::Unsupported {
            tokenizer: hf.source.clone(),
            model: if ty.is_empty() { "untyped".into() } else { ty.to_string() },
            reason: "only BPE tokenizer.json files are exported (byte-level as \"gpt2\", byte-fallback as \"llama\")",
        });
    }
    // LlamaHfVocab's test: byte fallback and a Sequence decoder is SentencePiece-style BPE
    // (Llama 2, TinyLlama, Mistral v0.1); Llama 3 (`ignore_merges`, no byte fallback) is byte-level.
    let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let seq_decoder = hf.json.get("decoder").and_then(|d| d.get("type")).and_then(Json::as_str) == Some("Sequence");
    Ok(if byte_fallback && seq_decoder { "llama" } else { "gpt2" })
}

fn strings(v: impl IntoIterator<Item = String>) -> GgufValue {
    GgufValue::Array(v.into_iter().map(GgufValue::String).collect())
}

fn ints(v: &[i32]) -> GgufValue {
    GgufValue::Array(v.iter().map(|&t| GgufValue::I32(t)).collect())
}

/// `_set_vocab_gpt2`: `get_vocab_base`, the detected pre-tokenizer, and `SpecialVocab` with merges.
pub(super) fn set_vocab_gpt2(hf: &HfTokenizer, pre: Option<&str>, meta: &mut TokenizerMetadata) -> Result<(), ToGgufError> {
    let vocab = hf.tokenizer.get_vocab(true);
    let vocab_size = hf.config_vocab_size().unwrap_or(vocab.len());
    let max_id = vocab.values().copied().max().unwrap_or(0);
    if !vocab.is_empty() && max_id as usize >= vocab_size {
        return Err(hf.inconsistent(format!("token id {max_id} is not below the vocabulary size {vocab_size} (config.json)")));
    }

    let (hash, n_ids) = hf.chkhsh()?;
    let pre = match pre {
        Some(name) => {
            check_pre_name(hf, name)?;
            if let Some(detected) = pre_for_hash(&hash).filter(|d| *d != name) {
                tracing::warn!(given = name, detected, "explicit pre-tokenizer differs from the detected one");
            }
            name.to_string()
        }
        None => match pre_for_hash(&hash) {
            Some(name) => name.to_string(),
            None => return Err(ToGgufError::UnknownPreTokenizer { tokenizer: hf.source.clone(), hash, n_ids }),
        },
    };
    tracing::debug!(chkhsh = %hash, pre, "BPE pre-tokenizer");

    let mut reverse: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (tok, id) in &vocab {
        reverse.insert(*id, tok.as_str());
    }
    let decoder = hf.added_tokens_decoder();
    let added_vocab: HashSet<&str> = decoder.values().map(|t| t.content.as_str()).collect();
    let clean_up =
        hf.tokenizer_config.as_ref().and_then(|c| c.get("clean_up_tokenization_spaces")).and_then(Json::as_bool).unwrap_or(false);

    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size as u32 {
        let Some(&token) = reverse.get(&i) else {
            tokens.push(format!("[PAD{i}]"));
            types.push(token_type::UNUSED);
            continue;
        };
        let mut token = token.to_string();
        if added_vocab.contains(token.as_str()) {
            let Some(added) = decoder.get(&i) else {
                return Err(hf.inconsistent(format!(
                    "added token {token:?} has id {i} in the vocabulary but another id as an added token"
                )));
            };
            if !added.normalized {
                // The converter's "pre-normalization": llama.cpp matches these tokens in raw text.
                let ids = hf.tokenizer.encode(token.as_str(), false).map_err(|e| hf.err_tok("encoding an added token", e))?;
                let mut text = hf.tokenizer.decode(ids.get_ids(), false).map_err(|e| hf.err_tok("decoding an added token", e))?;
                if clean_up {
                    text = clean_up_tokenization(&text);
                }
                if text != token {
                    tracing::info!(from = token, to = text, "added token changed by encoding and decoding");
                }
                token = text;
            }
            if added.special || looks_special(&token) {
                types.push(token_type::CONTROL);
            } else {
                token = token.replace('\u{2581}', " ");
                types.push(token_type::USER_DEFINED);
            }
        } else {
            types.push(token_type::NORMAL);
        }
        tokens.push(token);
    }

    meta.set(keys::MODEL, GgufValue::String("gpt2".into()));
    meta.set(keys::PRE, GgufValue::String(pre));
    meta.set(keys::TOKENS, strings(tokens));
    meta.set(keys::TOKEN_TYPE, ints(&types));
    let sv = SpecialVocab::load(hf, true, None)?;
    if sv.merges.is_empty() {
        return Err(hf.inconsistent(
            "tokenizer.json has no BPE merges; llama.cpp cannot load a \"gpt2\" vocabulary without tokenizer.ggml.merges".into(),
        ));
    }
    sv.add_to(meta);
    Ok(())
}

/// `_set_vocab_llama_hf` (gguf-py's `LlamaHfVocab`): a SentencePiece-style BPE `tokenizer.json`.
///
/// Scores: the converter writes `-1000.0` for every token; unless `converter_scores`, a token made
/// by merge `r` (its first, lowest-ranked one) scores `-r` and every other token `0.0`.
pub(super) fn set_vocab_llama_hf(
    hf: &HfTokenizer,
    pre: Option<&str>,
    converter_scores: bool,
    meta: &mut TokenizerMetadata,
) -> Result<(), ToGgufError> {
    if let Some(name) = pre.filter(|n| *n != "default") {
        return Err(hf.inconsistent(format!(
            "pre-tokenizer '{name}' was given, but this is a SentencePiece-style (\"llama\") vocabulary, whose pre-tokenizer is always \"default\""
        )));
    }
    let vocab = hf.tokenizer.get_vocab(true);
    let base_size = hf.tokenizer.get_vocab_size(false);
    let mut reverse: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (tok, id) in &vocab {
        reverse.insert(*id, tok.as_str());
    }
    // Added tokens beyond the base vocabulary, by id.
    let mut added: Vec<(u32, String)> = hf
        .added_tokens_decoder()
        .into_iter()
        .filter(|(id, _)| *id as usize >= base_size)
        .map(|(id, t)| (id, t.content))
        .collect();
    added.sort_unstable_by_key(|(id, _)| *id);

    // transformers' all_special_tokens: the named special tokens and additional_special_tokens.
    let mut special_texts: Vec<String> = Vec::new();
    for source in [hf.tokenizer_config.as_ref(), hf.special_tokens_map.as_ref()].into_iter().flatten() {
        for key in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
            if let Some(text) = token_content(source.get(key)) {
                special_texts.push(text);
            }
        }
        for t in source.get("additional_special_tokens").and_then(Json::as_array).into_iter().flatten() {
            if let Some(text) = token_content(Some(t)) {
                special_texts.push(text);
            }
        }
    }
    let special_ids: HashSet<u32> = special_texts.iter().filter_map(|t| vocab.get(t).copied()).collect();

    let mut tokens = Vec::with_capacity(base_size + added.len());
    let mut types = Vec::with_capacity(base_size + added.len());
    for id in 0..base_size as u32 {
        let Some(&text) = reverse.get(&id) else {
            return Err(hf.inconsistent(format!("the base vocabulary has no token with id {id}")));
        };
        types.push(if is_byte_token(text) {
            token_type::BYTE
        } else if special_ids.contains(&id) {
            token_type::CONTROL
        } else {
            token_type::NORMAL
        });
        tokens.push(text.to_string());
    }
    for (id, text) in added {
        if id as usize != tokens.len() {
            return Err(hf.inconsistent(format!(
                "added token {text:?} has id {id}, but added tokens must follow the {} base tokens without gaps",
                tokens.len()
            )));
        }
        types.push(if special_texts.contains(&text) { token_type::CONTROL } else { token_type::USER_DEFINED });
        tokens.push(text);
    }
    let n_vocab = tokens.len();

    let scores = if converter_scores {
        vec![GgufValue::F32(-1000.0); n_vocab]
    } else {
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (r, (a, b)) in merge_pairs(hf)?.into_iter().enumerate() {
            rank.entry(a + &b).or_insert(r);
        }
        tokens.iter().map(|t| GgufValue::F32(rank.get(t).map_or(0.0, |&r| -(r as f32)))).collect()
    };

    meta.set(keys::MODEL, GgufValue::String("llama".into()));
    meta.set(keys::PRE, GgufValue::String("default".into()));
    meta.set(keys::TOKENS, strings(tokens));
    meta.set(extra_keys::SCORES, GgufValue::Array(scores));
    meta.set(keys::TOKEN_TYPE, ints(&types));
    SpecialVocab::load(hf, false, Some(n_vocab))?.add_to(meta);
    Ok(())
}

/// The text of a special-token entry of a config: a string or `{"content": ...}`.
fn token_content(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// `<0xXX>`: a SentencePiece byte-fallback token.
fn is_byte_token(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6 && text.starts_with("<0x") && b[5] == b'>' && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}
