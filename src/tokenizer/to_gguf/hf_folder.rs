//! A Hugging Face tokenizer folder as the converter reads it: `tokenizer.json` (required), and
//! when present `tokenizer_config.json`, `config.json`, `special_tokens_map.json`, and the chat
//! template files (`chat_template.jinja` with `additional_chat_templates/*.jinja`, or
//! `chat_template.json`). [`HfTokenizer::files`] lists every file read, for the caller's key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::ToGgufError;

/// A Hugging Face tokenizer with the files beside it that the converter reads.
#[derive(Clone)]
pub struct HfTokenizer {
    pub(super) source: PathBuf,
    pub(super) files: Vec<PathBuf>,
    pub(super) tokenizer: Tokenizer,
    pub(super) json: Json,
    pub(super) tokenizer_config: Option<Json>,
    pub(super) model_config: Option<Json>,
    pub(super) special_tokens_map: Option<Json>,
    /// `chat_template.jinja` (a string, or a `[{name, template}]` list with the additional
    /// templates) or `chat_template.json`'s `chat_template`: used when the config has none.
    pub(super) chat_template_file: Option<Json>,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("source", &self.source).finish_non_exhaustive()
    }
}

fn read_text(path: &Path) -> Result<String, ToGgufError> {
    std::fs::read_to_string(path).map_err(|source| ToGgufError::Io { path: path.to_path_buf(), source })
}

fn read_json_if_exists(path: &Path) -> Result<Option<Json>, ToGgufError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_text(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| ToGgufError::Invalid { path: path.to_path_buf(), message: e.to_string() })
}

impl HfTokenizer {
    /// Reads a Hugging Face model folder: `tokenizer.json` (required), and when present
    /// `tokenizer_config.json`, `config.json`, `special_tokens_map.json`, `chat_template.jinja`
    /// (with `additional_chat_templates/*.jinja`) or `chat_template.json`.
    pub fn from_dir(dir: &Path) -> Result<HfTokenizer, ToGgufError> {
        let json_path = dir.join("tokenizer.json");
        if !json_path.is_file() {
            return Err(ToGgufError::Invalid {
                path: dir.to_path_buf(),
                message: "this folder has no tokenizer.json (a GGUF export needs one)".into(),
            });
        }
        let mut t = HfTokenizer::from_json(dir, &read_text(&json_path)?)?;
        t.files.push(json_path);
        let mut optional = |name: &str| -> Result<Option<Json>, ToGgufError> {
            let path = dir.join(name);
            let json = read_json_if_exists(&path)?;
            if json.is_some() {
                t.files.push(path);
            }
            Ok(json)
        };
        let tokenizer_config = optional("tokenizer_config.json")?;
        let model_config = optional("config.json")?;
        let special_tokens_map = optional("special_tokens_map.json")?;
        (t.tokenizer_config, t.model_config, t.special_tokens_map) = (tokenizer_config, model_config, special_tokens_map);
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            t.files.push(jinja.clone());
            let default = read_text(&jinja)?;
            let mut extra: Vec<PathBuf> = match std::fs::read_dir(dir.join("additional_chat_templates")) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                    .collect(),
                Err(_) => Vec::new(),
            };
            extra.sort();
            t.chat_template_file = Some(if extra.is_empty() {
                Json::String(default)
            } else {
                let mut list = vec![serde_json::json!({"name": "default", "template": default})];
                for p in extra {
                    t.files.push(p.clone());
                    let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    list.push(serde_json::json!({"name": name, "template": read_text(&p)?}));
                }
                Json::Array(list)
            });
        } else if let Some(j) = read_json_if_exists(&dir.join("chat_template.json"))? {
            t.files.push(dir.join("chat_template.json"));
            t.chat_template_file = j.get("chat_template").cloned();
        }
        Ok(t)
    }

    /// A tokenizer from the text of a `tokenizer.json`, without configs (add them with the
    /// `with_*` methods). `source` names it in errors.
    pub fn from_json(source: impl Into<PathBuf>, tokenizer_json: &str) -> Result<HfTokenizer, ToGgufError> {
        let source = source.into();
        let invalid = |message: String| ToGgufError::Invalid { path: source.clone(), message };
        let json: Json = serde_json::from_str(tokenizer_json).map_err(|e| invalid(format!("tokenizer.json: {e}")))?;
        let tokenizer: Tokenizer = tokenizer_json.parse().map_err(|e| invalid(format!("tokenizer.json: {e}")))?;
        Ok(HfTokenizer {
            source,
            files: Vec::new(),
            tokenizer,
            json,
            tokenizer_config: None,
            model_config: None,
            special_tokens_map: None,
            chat_template_file: None,
        })
    }

    /// Sets the contents of `tokenizer_config.json`.
    pub fn with_tokenizer_config(mut self, config: Json) -> Self {
        self.tokenizer_config = Some(config);
        self
    }

    /// Sets the contents of the model's `config.json` (`vocab_size`, `*_token_id`, `architectures`).
    pub fn with_model_config(mut self, config: Json) -> Self {
        self.model_config = Some(config);
        self
    }

    /// Every file [`Self::from_dir`] read, for the caller's cache key.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The folder or file this tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The loaded tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The loaded tokenizer, kept after the conversion (building it again from the same
    /// `tokenizer.json` costs about as much as reading the folder did).
    pub fn into_tokenizer(self) -> Tokenizer {
        self.tokenizer
    }

    pub(super) fn err_tok(&self, action: &'static str, e: impl std::fmt::Display) -> ToGgufError {
        ToGgufError::Tokenizers { tokenizer: self.source.clone(), action, error: e.to_string() }
    }

    pub(super) fn inconsistent(&self, reason: String) -> ToGgufError {
        ToGgufError::Inconsistent { tokenizer: self.source.clone(), reason }
    }

    pub(super) fn architecture(&self) -> Option<&str> {
        self.model_config.as_ref()?.get("architectures")?.get(0)?.as_str()
    }

    /// `config.json`'s `vocab_size` (or `text_config.vocab_size`).
    pub(super) fn config_vocab_size(&self) -> Option<usize> {
        let c = self.model_config.as_ref()?;
        c.get("vocab_size").or_else(|| c.get("text_config")?.get("vocab_size"))?.as_u64().map(|v| v as usize)
    }

    /// `tokenizers`' added tokens by id (transformers' `added_tokens_decoder`).
    pub(super) fn added_tokens_decoder(&self) -> HashMap<u32, tokenizers::AddedToken> {
        self.tokenizer.get_added_tokens_decoder().into_iter().collect()
    }
}
