//! Loading a tokenizer from whatever the pipeline points at.
//!
//! | input | tokenizer | end-of-sentence token | chat template |
//! |---|---|---|---|
//! | `tokenizer.json` | the file | `eos_token` of a `tokenizer_config.json` beside it | `chat_template` of that config |
//! | a Hugging Face folder | its `tokenizer.json` | its `tokenizer_config.json` (`generation_config.json` as fallback) | its config |
//! | a `.gguf` file | built from `tokenizer.ggml.*` metadata | `tokenizer.ggml.eos_token_id` | `tokenizer.chat_template` |
//!
//! Every file read here is listed in [`Bundle::files`], so the caller can make them part of a key.
//!
//! [`load`] builds the general `tokenizers` tokenizer; [`load_encoder`] is for encoding ids only
//! and skips it where the ids-only [`FastBpe`] covers the tokenizer.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::encoder::Encoder;
use super::fast::FastBpe;

/// Loading a tokenizer failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file is not a valid tokenizer or config.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// Building a tokenizer from GGUF metadata failed.
    #[error(transparent)]
    Gguf(#[from] super::gguf::TokenizerError),
}

use LoadError as TokenizerError;

/// A tokenizer with the special tokens and template that travel with it.
pub struct Bundle {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// End-of-sentence token id and text, when known.
    pub eos: Option<(u32, String)>,
    /// Beginning-of-sentence token id and text, when known.
    pub bos: Option<(u32, String)>,
    /// Padding token id, when known.
    pub pad: Option<u32>,
    /// The Jinja chat template, when the model has one.
    pub chat_template: Option<String>,
    /// Every file the bundle was read from.
    pub files: Vec<PathBuf>,
}

pub(crate) fn token_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(m) => m.get("content").and_then(Json::as_str).map(String::from),
        _ => None,
    }
}

pub(crate) fn chat_template_of(cfg: &Json) -> Option<String> {
    match cfg.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Json, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|e| TokenizerError::Io { path: path.to_path_buf(), source: e })?;
    serde_json::from_slice(&bytes).map_err(|e| TokenizerError::Invalid { path: path.to_path_buf(), message: e.to_string() })
}

/// What a tokenizer input is.
enum Kind {
    /// A `tokenizer.json` (given, or the one in a model folder).
    Json(PathBuf),
    /// A GGUF model.
    Gguf,
}

fn kind_of(path: &Path) -> Result<Kind, TokenizerError> {
    if path.is_dir() {
        let json = path.join("tokenizer.json");
        if !json.exists() {
            return Err(TokenizerError::Invalid {
                path: path.to_path_buf(),
                message: "this folder has no tokenizer.json (a Hugging Face model folder needs one)".into(),
            });
        }
        return Ok(Kind::Json(json));
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| TokenizerError::Io { path: path.to_path_buf(), source: e })?;
    let n = f.read(&mut magic).map_err(|e| TokenizerError::Io { path: path.to_path_buf(), source: e })?;
    Ok(if n == 4 && &magic == b"GGUF" { Kind::Gguf } else { Kind::Json(path.to_path_buf()) })
}

/// Loads a tokenizer from a `tokenizer.json`, a model folder, or a GGUF file.
pub fn load(path: &Path) -> Result<Bundle, TokenizerError> {
    match kind_of(path)? {
        Kind::Json(json) => load_json(&json),
        Kind::Gguf => load_gguf(path),
    }
}

/// A tokenizer loaded to encode ids only (the `tokenize` node): [`Bundle`]'s special tokens
/// and template, with an [`Encoder`] in place of the tokenizer.
pub struct EncoderBundle {
    /// The encoder.
    pub encoder: Encoder,
    /// End-of-sentence token id and text, when known.
    pub eos: Option<(u32, String)>,
    /// Beginning-of-sentence token id and text, when known.
    pub bos: Option<(u32, String)>,
    /// Padding token id, when known.
    pub pad: Option<u32>,
    /// The Jinja chat template, when the model has one.
    pub chat_template: Option<String>,
    /// Every file the bundle was read from.
    pub files: Vec<PathBuf>,
}

/// Loads a tokenizer for encoding, as [`load`] does, but a `tokenizer.json` whose shape the
/// ids-only [`FastBpe`] supports is read once, straight into it: the general tokenizer is then
/// built only if a text needs it (a character outside the vocabulary).
pub fn load_encoder(path: &Path) -> Result<EncoderBundle, TokenizerError> {
    if let Kind::Json(json) = kind_of(path)? {
        let bytes = std::fs::read(&json).map_err(|e| TokenizerError::Io { path: json.clone(), source: e })?;
        if let Some(fast) = FastBpe::from_json(&bytes) {
            let side = side_files(&json, &|t| fast.token_to_id(t), &|id| fast.id_to_token(id))?;
            return Ok(EncoderBundle {
                encoder: Encoder::lazy(fast, json),
                eos: side.eos,
                bos: side.bos,
                pad: side.pad,
                chat_template: side.chat_template,
                files: side.files,
            });
        }
    }
    let b = load(path)?;
    Ok(EncoderBundle {
        encoder: Encoder::general(b.tokenizer),
        eos: b.eos,
        bos: b.bos,
        pad: b.pad,
        chat_template: b.chat_template,
        files: b.files,
    })
}

/// What the files beside a `tokenizer.json` say.
struct Side {
    eos: Option<(u32, String)>,
    bos: Option<(u32, String)>,
    pad: Option<u32>,
    chat_template: Option<String>,
    files: Vec<PathBuf>,
}

/// Reads `tokenizer_config.json` (and `generation_config.json` for a missing end token) beside
/// the tokenizer file `path`; `to_id` and `to_token` look tokens up in the tokenizer.
fn side_files(
    path: &Path,
    to_id: &dyn Fn(&str) -> Option<u32>,
    to_token: &dyn Fn(u32) -> Option<String>,
) -> Result<Side, TokenizerError> {
    let mut files = vec![path.to_path_buf()];
    let dir = path.parent().unwrap_or(Path::new("."));
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.exists() {
        files.push(cfg_path.clone());
        Some(read_json(&cfg_path)?)
    } else {
        None
    };
    let special = |key: &str| -> Option<(u32, String)> {
        let text = cfg.as_ref().and_then(|c| c.get(key)).and_then(token_text)?;
        Some((to_id(&text)?, text))
    };
    let mut eos = special("eos_token");
    if eos.is_none() {
        let gen = dir.join("generation_config.json");
        if gen.exists() {
            files.push(gen.clone());
            if let Some(id) = read_json(&gen)?.get("eos_token_id").and_then(|v| v.as_u64().or_else(|| v.get(0)?.as_u64())) {
                eos = to_token(id as u32).map(|t| (id as u32, t));
            }
        }
    }
    let bos = special("bos_token");
    let pad = special("pad_token").map(|(id, _)| id);
    let chat_template = cfg.as_ref().and_then(chat_template_of);
    Ok(Side { eos, bos, pad, chat_template, files })
}

fn load_json(path: &Path) -> Result<Bundle, TokenizerError> {
    let tokenizer = tokenizer_from_file(path)?;
    with_tokenizer(path, tokenizer)
}

/// The `tokenizers` tokenizer of the `tokenizer.json` bytes `bytes`. They are parsed as JSON
/// first and the tokenizer is built from that value: read as a stream, `tokenizers` panics on
/// a syntax error inside the `decoder` object (an `expect` in its decoder deserializer) instead
/// of returning an error.
pub fn tokenizer_from_json(bytes: &[u8]) -> Result<Tokenizer, serde_json::Error> {
    serde_json::from_value(serde_json::from_slice(bytes)?)
}

/// [`tokenizer_from_json`] of the file at `path`.
pub fn tokenizer_from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
    tokenizer_from_json(&bytes).map_err(|e| TokenizerError::Invalid { path: path.to_path_buf(), message: e.to_string() })
}

/// What [`load`] gives for the `tokenizer.json` at `path`, from `tokenizer`, which the caller
/// has already built from that file (the special tokens and template come from the files
/// beside it, as in [`load`]).
pub fn with_tokenizer(path: &Path, tokenizer: Tokenizer) -> Result<Bundle, TokenizerError> {
    let side = side_files(path, &|t| tokenizer.token_to_id(t), &|id| tokenizer.id_to_token(id))?;
    Ok(Bundle { tokenizer, eos: side.eos, bos: side.bos, pad: side.pad, chat_template: side.chat_template, files: side.files })
}

fn load_gguf(path: &Path) -> Result<Bundle, TokenizerError> {
    let file = crate::gguf::GgufFile::open(path)
        .map_err(|e| TokenizerError::Invalid { path: path.to_path_buf(), message: e.to_string() })?;
    let g = super::gguf::from_gguf(&file)?;
    let text = |id: Option<u32>| id.and_then(|i| g.tokenizer.id_to_token(i).map(|t| (i, t)));
    Ok(Bundle {
        eos: text(g.eos_id),
        bos: text(g.bos_id),
        pad: g.pad_id,
        chat_template: g.chat_template.clone(),
        tokenizer: g.tokenizer,
        files: vec![path.to_path_buf()],
    })
}
