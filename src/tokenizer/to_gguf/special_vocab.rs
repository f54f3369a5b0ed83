//! gguf-py's `SpecialVocab`, read from `tokenizer.json`, `tokenizer_config.json` and
//! `config.json`: the BPE merges (a space inside a piece written as `Ġ`, as gguf-py does),
//! `add_bos`/`add_eos`/`add_sep` from the post-processor (`ByteLevel`, `RobertaProcessing`,
//! `TemplateProcessing`) and then `tokenizer_config.json`, special-token ids from
//! `tokenizer_config.json`'s `*_token` (looked up among the added tokens) and then `config.json`'s
//! `*_token_id`, the chat template (the config's, else the folder's template files), and the
//! normalizer's lowercasing / accent stripping.

use serde_json::{Map, Value as Json};

use super::{extra_keys, HfTokenizer, ToGgufError, TokenizerMetadata};
use crate::gguf::GgufValue;
use crate::tokenizer::gguf::keys;

/// Python truthiness of a JSON value (`None`, `""`, `{}`, `[]`, `0` and `false` are false).
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
    }
}

/// The `id` of a post-processor template piece `{"SpecialToken": {"id": ...}}` (or `Sequence`).
fn piece_id<'a>(piece: &'a Json, kind: &str) -> Option<&'a str> {
    piece.get(kind)?.get("id")?.as_str().filter(|s| !s.is_empty())
}

/// Python `a in (b, c)` for JSON values, where an absent value is `None`.
fn is_one_of(a: &Json, b: Option<&Json>, c: Option<&Json>) -> bool {
    b == Some(a) || c == Some(a)
}

/// gguf-py's `SpecialVocab`: merges, special-token ids, add-token flags, chat template and
/// normalizer flags, read from `tokenizer.json`, `tokenizer_config.json` and `config.json`.
#[derive(Debug, Default)]
pub(super) struct SpecialVocab {
    pub(super) merges: Vec<String>,
    /// `(type, id)` in insertion order (`bos`, `eos`, `unk`, `sep`, `pad`, `cls`, `mask`, `eot`, `eom`).
    pub(super) special_token_ids: Vec<(String, u32)>,
    /// `(type, add)` in insertion order.
    pub(super) add_special_token: Vec<(String, bool)>,
    pub(super) chat_template: Option<Json>,
    pub(super) normalizer_lowercase: Option<bool>,
    pub(super) normalizer_strip_accents: Option<bool>,
}

impl SpecialVocab {
    pub(super) fn load(hf: &HfTokenizer, load_merges: bool, n_vocab: Option<usize>) -> Result<SpecialVocab, ToGgufError> {
        let mut sv = SpecialVocab::default();
        let mut types: Vec<String> = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"].iter().map(|s| s.to_string()).collect();
        let json = &hf.json;
        if load_merges {
            sv.merges = merges_of(hf)?;
        }
        if let Some(n) = json.get("normalizer") {
            sv.parse_normalizer(n);
        }
        let added_tokens: &[Json] = json.get("added_tokens").and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]);

        // `tokenizer_config` as a mutable dict, as the converter mutates it while reading the post-processor.
        let mut cfg: Option<Map<String, Json>> = hf.tokenizer_config.as_ref().and_then(Json::as_object).cloned();
        let cfg_truthy = |cfg: &Option<Map<String, Json>>| cfg.as_ref().is_some_and(|c| !c.is_empty());
        let get = |cfg: &Option<Map<String, Json>>, k: &str| cfg.as_ref().and_then(|c| c.get(k)).cloned();
        let mut special_bos = get(&cfg, "bos_token");
        let mut special_cls = get(&cfg, "cls_token");
        let mut special_eos = get(&cfg, "eos_token");
        let mut special_sep = get(&cfg, "sep_token");
        if !truthy(special_bos.as_ref()) && truthy(special_cls.as_ref()) && cfg_truthy(&cfg) {
            special_bos = special_cls.clone();
            cfg.as_mut().expect("truthy config").insert("bos_token".into(), special_bos.clone().expect("truthy cls"));
        }
        if !truthy(special_eos.as_ref()) && truthy(special_sep.as_ref()) && cfg_truthy(&cfg) {
            special_eos = special_sep.clone();
            cfg.as_mut().expect("truthy config").insert("eos_token".into(), special_eos.clone().expect("truthy sep"));
        }

        if let Some(post) = json.get("post_processor").filter(|p| truthy(Some(p))) {
            let processors: Vec<&Json> = match post.get("processors").and_then(Json::as_array) {
                Some(list) => list.iter().collect(),
                None => vec![post],
            };
            for processor in processors {
                match processor.get("type").and_then(Json::as_str) {
                    Some("ByteLevel") => {
                        sv.set_add_default("bos", false);
                        sv.set_add_default("eos", false);
                    }
                    Some("RobertaProcessing") => {
                        sv.set_add("bos", true);
                        sv.set_add("eos", true);
                        sv.set_add("sep", true);
                        if !truthy(special_cls.as_ref()) && cfg_truthy(&cfg) {
                            let cls = processor.get("cls").and_then(|c| c.get(0)).cloned().or_else(|| special_bos.clone());
                            special_cls = cls.clone();
                            cfg.as_mut().expect("truthy config").insert("cls_token".into(), cls.unwrap_or(Json::Null));
                        }
                        if !truthy(special_sep.as_ref()) && cfg_truthy(&cfg) {
                            let sep = processor.get("sep").and_then(|c| c.get(0)).cloned().or_else(|| special_eos.clone());
                            special_sep = sep.clone();
                            cfg.as_mut().expect("truthy config").insert("sep_token".into(), sep.unwrap_or(Json::Null));
                        }
                    }
                    Some("TemplateProcessing") => {
                        let empty = Vec::new();
                        let single = processor.get("single").and_then(Json::as_array).unwrap_or(&empty);
                        let pair = processor.get("pair").and_then(Json::as_array).unwrap_or(&empty);
                        let mut special_first: Option<Json> = None;
                        let mut special_last: Option<Json> = None;
                        if single.len() > 1 {
                            if let Some(first) = piece_id(&single[0], "SpecialToken") {
                                let first = Json::String(first.to_string());
                                special_first = Some(first.clone());
                                if !cfg_truthy(&cfg) {
                                    special_bos = Some(first.clone());
                                } else if !is_one_of(&first, special_bos.as_ref(), special_cls.as_ref()) {
                                    if !truthy(special_bos.as_ref()) {
                                        special_bos = Some(first.clone());
                                        cfg.as_mut().expect("truthy config").insert("bos_token".into(), first.clone());
                                    }
                                    if !truthy(special_cls.as_ref()) {
                                        special_cls = Some(first.clone());
                                        cfg.as_mut().expect("truthy config").insert("cls_token".into(), first.clone());
                                    }
                                }
                                sv.set_add("bos", is_one_of(&first, special_bos.as_ref(), special_cls.as_ref()));
                            }
                            if let Some(last) = piece_id(&single[single.len() - 1], "SpecialToken") {
                                let last = Json::String(last.to_string());
                                special_last = Some(last.clone());
                                if !cfg_truthy(&cfg) {
                                    special_eos = Some(last.clone());
                                } else if special_eos.as_ref() != Some(&last) {
                                    let c = cfg.as_mut().expect("truthy config");
                                    let old_eos = special_eos.clone().unwrap_or(Json::Null);
                                    if !types.iter().any(|t| t == "eot") {
                                        types.push("eot".into());
                                        c.insert("eot_token".into(), old_eos);
                                    } else if !types.iter().any(|t| t == "eom") {
                                        types.push("eom".into());
                                        c.insert("eom_token".into(), old_eos);
                                    }
                                    special_eos = Some(last.clone());
                                    c.insert("eos_token".into(), last.clone());
                                }
                                sv.set_add("eos", special_eos.as_ref() == Some(&last));
                            }
                        }
                        if !pair.is_empty() {
                            let first_matches =
                                special_first.as_ref().is_some_and(|f| piece_id(&pair[0], "SpecialToken") == f.as_str());
                            let last_matches = special_last
                                .as_ref()
                                .is_some_and(|l| piece_id(&pair[pair.len() - 1], "SpecialToken") == l.as_str());
                            let start = usize::from(first_matches);
                            let stop = pair.len() - usize::from(last_matches);
                            let inner = if start < stop { &pair[start..stop] } else { &[][..] };
                            if !inner.is_empty() {
                                let a = piece_id(&inner[0], "Sequence");
                                let b = piece_id(&inner[inner.len() - 1], "Sequence");
                                let middle = if inner.len() >= 2 { &inner[1..inner.len() - 1] } else { &[][..] };
                                if a == Some("A") && b == Some("B") && !middle.is_empty() {
                                    let mut add_sep = false;
                                    if let Some(entry) = piece_id(&middle[0], "SpecialToken") {
                                        let entry = Json::String(entry.to_string());
                                        if is_one_of(&entry, special_sep.as_ref(), special_eos.as_ref()) && special_last.is_none()
                                        {
                                            add_sep = true;
                                        }
                                    }
                                    if middle.len() == 2 {
                                        if let Some(entry) = piece_id(&middle[1], "SpecialToken") {
                                            let entry = Json::String(entry.to_string());
                                            if is_one_of(&entry, special_sep.as_ref(), special_eos.as_ref()) {
                                                add_sep = true;
                                            }
                                        }
                                    }
                                    sv.set_add("sep", add_sep);
                                    if add_sep && !truthy(special_sep.as_ref()) && cfg_truthy(&cfg) {
                                        cfg.as_mut()
                                            .expect("truthy config")
                                            .insert("sep_token".into(), special_eos.clone().unwrap_or(Json::Null));
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }

        if cfg_truthy(&cfg) {
            let cfg = cfg.as_ref().expect("truthy config");
            sv.chat_template = match cfg.get("chat_template") {
                Some(t @ (Json::String(_) | Json::Array(_))) => Some(t.clone()),
                Some(Json::Null) => None,
                // The converter warns about other types and ignores them.
                Some(_) => None,
                None => hf.chat_template_file.clone(),
            };
            for typ in &types {
                if let Some(Json::Bool(add)) = cfg.get(&format!("add_{typ}_token")) {
                    if !sv.add_special_token.iter().any(|(t, _)| t == typ) {
                        sv.add_special_token.push((typ.clone(), *add));
                    }
                }
                let content = match cfg.get(&format!("{typ}_token")) {
                    Some(Json::String(s)) => s.as_str(),
                    Some(Json::Object(o)) => match o.get("content") {
                        Some(Json::String(s)) => s.as_str(),
                        _ => continue,
                    },
                    _ => continue,
                };
                let id = added_tokens
                    .iter()
                    .find(|t| t.get("content").and_then(Json::as_str) == Some(content))
                    .and_then(|t| t.get("id"));
                sv.set_special_token(hf, typ, id, n_vocab)?;
            }
        }

        if let Some(config) = &hf.model_config {
            for typ in &types {
                let key = format!("{typ}_token_id");
                let id = match config.get(&key) {
                    Some(Json::Null) | None => config.get("text_config").and_then(|t| t.get(&key)),
                    v => v,
                };
                sv.set_special_token(hf, typ, id, n_vocab)?;
            }
        }
        Ok(sv)
    }

    fn set_add(&mut self, typ: &str, add: bool) {
        match self.add_special_token.iter_mut().find(|(t, _)| t == typ) {
            Some((_, v)) => *v = add,
            None => self.add_special_token.push((typ.to_string(), add)),
        }
    }

    fn set_add_default(&mut self, typ: &str, add: bool) {
        if !self.add_special_token.iter().any(|(t, _)| t == typ) {
            self.add_special_token.push((typ.to_string(), add));
        }
    }

    /// `_set_special_token`: the first id set for a type wins; non-integers are ignored.
    fn set_special_token(
        &mut self,
        hf: &HfTokenizer,
        typ: &str,
        id: Option<&Json>,
        n_vocab: Option<usize>,
    ) -> Result<(), ToGgufError> {
        let Some(Json::Number(n)) = id else { return Ok(()) };
        let Some(id) = n.as_i64() else { return Ok(()) };
        if id < 0 {
            return Err(hf.inconsistent(format!("invalid value for special token type {typ}: {id}")));
        }
        if n_vocab.is_some_and(|n| id as u64 >= n as u64) {
            tracing::warn!(typ, id, "special token id out of range of the vocabulary; skipped");
            return Ok(());
        }
        let Ok(id) = u32::try_from(id) else { return Ok(()) };
        if !self.special_token_ids.iter().any(|(t, _)| t == typ) {
            self.special_token_ids.push((typ.to_string(), id));
        }
        Ok(())
    }

    fn parse_normalizer(&mut self, n: &Json) {
        match n.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.normalizer_lowercase = Some(true),
            Some("StripAccents") => self.normalizer_strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.normalizer_lowercase = v.as_bool();
                }
                if let Some(v) = n.get("strip_accents") {
                    self.normalizer_strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for sub in n.get("normalizers").and_then(Json::as_array).into_iter().flatten() {
                    self.parse_normalizer(sub);
                }
            }
            _ => {}
        }
    }

    /// `add_to_gguf`.
    pub(super) fn add_to(&self, meta: &mut TokenizerMetadata) {
        if !self.merges.is_empty() {
            meta.set(keys::MERGES, GgufValue::Array(self.merges.iter().map(|m| GgufValue::String(m.clone())).collect()));
        }
        for (typ, id) in &self.special_token_ids {
            let key = match typ.as_str() {
                "bos" => keys::BOS_ID,
                "eos" => keys::EOS_ID,
                "unk" => keys::UNK_ID,
                "sep" => extra_keys::SEP_ID,
                "pad" => keys::PAD_ID,
                "mask" => extra_keys::MASK_ID,
                "eot" => extra_keys::EOT_ID,
                "eom" => extra_keys::EOM_ID,
                // gguf-py has no writer method for `cls` ids; the converter skips them.
                _ => continue,
            };
            meta.set(key, GgufValue::U32(*id));
        }
        for (typ, add) in &self.add_special_token {
            let key = match typ.as_str() {
                "bos" => keys::ADD_BOS,
                "eos" => keys::ADD_EOS,
                "sep" => extra_keys::ADD_SEP,
                _ => continue,
            };
            meta.set(key, GgufValue::Bool(*add));
        }
        match &self.chat_template {
            Some(Json::String(t)) => meta.set(keys::CHAT_TEMPLATE, GgufValue::String(t.clone())),
            Some(Json::Array(list)) => {
                // gguf-py's add_chat_template: the `default` one is tokenizer.chat_template, the
                // others tokenizer.chat_template.{name} with their names listed.
                let mut default = None;
                let mut names = Vec::new();
                for choice in list {
                    let name: String = choice
                        .get("name")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    let Some(template) = choice.get("template").and_then(Json::as_str) else { continue };
                    if name.is_empty() {
                        continue;
                    }
                    if name == "default" {
                        default = Some(template.to_string());
                    } else {
                        meta.set(&format!("{}.{name}", keys::CHAT_TEMPLATE), GgufValue::String(template.to_string()));
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                if !names.is_empty() {
                    meta.set(extra_keys::CHAT_TEMPLATES, GgufValue::Array(names.into_iter().map(GgufValue::String).collect()));
                }
                if let Some(t) = default {
                    meta.set(keys::CHAT_TEMPLATE, GgufValue::String(t));
                }
            }
            _ => {}
        }
        if let Some(v) = self.normalizer_lowercase {
            meta.set(extra_keys::NORMALIZER_LOWERCASE, GgufValue::Bool(v));
        }
        if let Some(v) = self.normalizer_strip_accents {
            meta.set(extra_keys::NORMALIZER_STRIP_ACCENTS, GgufValue::Bool(v));
        }
    }
}

/// `tokenizer.json`'s merges as `"left right"` strings. The pair form (tokenizers >= 0.20) writes a
/// space inside a piece as U+0120, as gguf-py does, so the string splits unambiguously.
fn merges_of(hf: &HfTokenizer) -> Result<Vec<String>, ToGgufError> {
    let Some(merges) = hf.json.get("model").and_then(|m| m.get("merges")).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let bad = || hf.inconsistent("tokenizer.json: model.merges is neither strings nor [left, right] pairs".into());
    merges
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let enc =
                    |p: &Json| p.as_str().map(|s| s.chars().map(|c| if c == ' ' { '\u{120}' } else { c }).collect::<String>());
                match (enc(&pair[0]), enc(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        })
        .collect()
}

/// `tokenizer.json`'s merges as `(left, right)` pairs, in rank order.
pub(super) fn merge_pairs(hf: &HfTokenizer) -> Result<Vec<(String, String)>, ToGgufError> {
    let Some(merges) = hf.json.get("model").and_then(|m| m.get("merges")).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    let bad = || hf.inconsistent("tokenizer.json: model.merges is neither \"left right\" strings nor [left, right] pairs".into());
    merges
        .iter()
        .map(|m| match m {
            Json::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(bad),
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_in_pair_form_write_spaces_as_u0120() {
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-tokenizer");
        let mut json: Json =
            serde_json::from_str(&std::fs::read_to_string(tiny.join("tokenizer.json")).expect("read")).expect("json");
        json["model"]["merges"] = serde_json::json!([["a b", "c"], ["d", "e"]]);
        let hf = HfTokenizer { json, ..HfTokenizer::from_dir(&tiny).expect("load") };
        assert_eq!(merges_of(&hf).expect("merges"), vec!["a\u{120}b c".to_string(), "d e".to_string()]);
    }
}
