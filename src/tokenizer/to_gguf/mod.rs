//! GGUF tokenizer metadata from a Hugging Face tokenizer: the inverse of [`super::gguf`].
//!
//! # What
//!
//! [`to_gguf`] turns an [`HfTokenizer`] (a `tokenizer.json` with the `tokenizer_config.json`,
//! `config.json` and chat-template files beside it) into the `tokenizer.*` key/values that
//! llama.cpp's `convert_hf_to_gguf.py` writes for the same folder, as a [`TokenizerMetadata`]
//! (ordered `(key, GgufValue)` pairs for the GGUF writer). The reference is the converter vendored
//! in llama-cpp-python 0.3.36 (`conversion/base.py` and gguf-py's `vocab.py`).
//!
//! # How
//!
//! 1. **Model.** A BPE `tokenizer.json` with `byte_fallback` and a `Sequence` decoder is a
//!    SentencePiece-style vocabulary (`"llama"`, the converter's `_set_vocab_llama_hf`); any other
//!    BPE is byte-level (`"gpt2"`, `_set_vocab_gpt2`). WordPiece, Unigram and the rest are
//!    [`ToGgufError::Unsupported`].
//! 2. **Tokens and types** (`get_vocab_base`). Ids `0..vocab_size` (`config.json`'s `vocab_size`,
//!    else the vocabulary's size); an id with no token becomes `[PAD{id}]` of type unused (5). An
//!    added token that is `special`, or looks special (`<|...|>`, `<pad>`, ...), is control (3);
//!    another added token is user-defined (4), with `▁` written as a space; an added token that is
//!    not `normalized` is first encoded and decoded, as the converter does. Everything else is
//!    normal (1).
//! 3. **Pre-tokenizer** (`get_vocab_base_pre`). The converter's fixed text [`CHKTXT`] is encoded
//!    (with special tokens, as `AutoTokenizer.encode` does), Python's `str()` of the id list is
//!    hashed with SHA-256 and looked up in the converter's table ([`PRE_BY_HASH`]). An unknown hash
//!    is [`ToGgufError::UnknownPreTokenizer`] (naming the hash) unless the caller passes the name.
//! 4. **Special vocabulary** (gguf-py's `SpecialVocab`). Merges from `tokenizer.json` (pairs with a
//!    space written as `Ġ`, as gguf-py does); `add_bos`/`add_eos`/`add_sep` from the post-processor
//!    (`ByteLevel`, `RobertaProcessing`, `TemplateProcessing`) and then `tokenizer_config.json`;
//!    special-token ids from `tokenizer_config.json`'s `*_token` (looked up among the added tokens)
//!    and then `config.json`'s `*_token_id`; the chat template from `tokenizer_config.json`, else
//!    `chat_template.jinja` / `chat_template.json`; normalizer lowercasing / accent stripping.
//! 5. **Architecture extras.** For `LlamaForCausalLM` (what `pipe` trains) the converter's
//!    `LlamaModel.set_vocab` also writes `add_space_prefix` from `tokenizer_config.json`'s
//!    `add_prefix_space`, and forces `add_bos_token = false` for 49152-token vocabularies
//!    (SmolLM/Granite); both are reproduced. Other architectures get no extras.
//!
//! Keys are in the order the converter writes them; a key written twice keeps its first position
//! and its last value, as gguf-py's writer does. [`to_gguf_with`] takes [`ExportOptions`].
//!
//! # Checked against the converter
//!
//! `scripts/gguf_tokenizer_reference.py` runs the converter's own methods (taken from its source,
//! no torch needed) on a folder; the tests compare every key, its position, type and value with
//! that output for the fixtures under `tests/data/to-gguf/` (made by
//! `scripts/make_to_gguf_fixtures.py`) and for the `merge` node's SmolLM2 folder.
//!
//! # Limits
//!
//! * Only the `tokenizer.json` route: a `tokenizer.model` (SentencePiece protobuf), tiktoken
//!   vocabularies (`_set_vocab_qwen` for the original Qwen) and Mistral's `tekken.json` are not read.
//! * **Deliberate difference: `"llama"` scores.** The converter writes its placeholder `-1000.0`
//!   for every token (`LlamaHfVocab.get_token_score`) and no merges. llama.cpp's SentencePiece
//!   tokenizer merges the adjacent pair with the highest score, the leftmost on ties, so with
//!   equal scores it merges by position, not by rank, and tokenizes differently from Hugging Face
//!   wherever merge order matters. Here a token made by merge `r` scores `-r` (others `0.0`), which
//!   makes llama.cpp merge in rank order (`scripts/spm_scores_check.py` compares the two on random
//!   texts; BENCHMARKS.md section 13 has its counts). [`ExportOptions::with_converter_scores`]
//!   restores the converter's.
//! * `AutoTokenizer` is emulated on `tokenizer.json` alone: transformers' own rewriting of the
//!   post-processor from `add_bos_token` (Llama, Gemma tokenizer classes) is not done, so a
//!   `tokenizer.json` whose post-processor disagrees with its config hashes the way the file says.
//! * `all_special_tokens` (used by the `"llama"` route) is taken from `tokenizer_config.json`
//!   and `special_tokens_map.json` as transformers 4.x does.
//!
//! # Files
//!
//! | file | |
//! |---|---|
//! | [`hf_folder`] | [`HfTokenizer`]: a `tokenizer.json` with the config and chat-template files beside it |
//! | [`pre_tokenizer`] | the converter's pre-tokenizer fingerprint ([`CHKTXT`], [`PRE_BY_HASH`]) and the names llama.cpp knows |
//! | [`special_vocab`] | gguf-py's `SpecialVocab`: merges, special-token ids, add-token flags, chat templates |
//! | [`vocab`] | the converter's two vocabulary routes, `"gpt2"` (byte-level) and `"llama"` (SentencePiece-style) |

pub mod hf_folder;
pub mod pre_tokenizer;
pub mod special_vocab;
pub mod vocab;

use std::path::PathBuf;

use serde_json::Value as Json;

use super::gguf::keys;
use crate::gguf::GgufValue;
pub use hf_folder::HfTokenizer;
pub use pre_tokenizer::{pre_for_hash, CHKTXT, PRE_BY_HASH};
use vocab::{set_vocab_gpt2, set_vocab_llama_hf, tokenizer_model};

/// GGUF keys written here and not read by [`super::gguf::from_gguf`].
pub mod extra_keys {
    /// Token scores (SentencePiece vocabularies).
    pub const SCORES: &str = "tokenizer.ggml.scores";
    /// End-of-turn token id.
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    /// End-of-message token id.
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    /// Separator token id (llama.cpp's spelling).
    pub const SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
    /// Mask token id.
    pub const MASK_ID: &str = "tokenizer.ggml.mask_token_id";
    /// Whether to add the separator token.
    pub const ADD_SEP: &str = "tokenizer.ggml.add_sep_token";
    /// Whether to prepend a space (SentencePiece's dummy prefix).
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// Normalizer lowercases.
    pub const NORMALIZER_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
    /// Normalizer strips accents.
    pub const NORMALIZER_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";
    /// Names of the extra chat templates (`tokenizer.chat_template.{name}`).
    pub const CHAT_TEMPLATES: &str = "tokenizer.chat_templates";
}

/// llama.cpp token types (`enum llama_token_type`), as written in `tokenizer.ggml.token_type`.
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token (SentencePiece).
    pub const UNKNOWN: i32 = 2;
    /// A special token: BOS, EOS, `<|im_start|>`...
    pub const CONTROL: i32 = 3;
    /// An added token that is not special.
    pub const USER_DEFINED: i32 = 4;
    /// A placeholder id with no token (`[PAD{id}]`).
    pub const UNUSED: i32 = 5;
    /// A byte-fallback token `<0xXX>` (SentencePiece).
    pub const BYTE: i32 = 6;
}

/// Exporting a tokenizer to GGUF metadata failed. Each variant names the tokenizer's source.
#[derive(Debug, thiserror::Error)]
pub enum ToGgufError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON, or `tokenizer.json` is not a tokenizer `tokenizers` can load.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer model has no GGUF export here.
    #[error("{}: cannot export a {model} tokenizer to GGUF: {reason}", tokenizer.display())]
    Unsupported {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// `model.type` of `tokenizer.json` (`"WordPiece"`, `"Unigram"`...).
        model: String,
        /// What is supported.
        reason: &'static str,
    },
    /// The pre-tokenizer fingerprint is not in the converter's table.
    #[error(
        "{}: unknown BPE pre-tokenizer: convert_hf_to_gguf.py does not know chkhsh {hash} ({n_ids} ids for its check text); \
         set the pre-tokenizer explicitly (llama.cpp's tokenizer.ggml.pre name, e.g. \"llama-bpe\", \"qwen2\", \"smollm\", \"gpt-2\") \
         after checking that the tokenizer splits text the way that family does",
        tokenizer.display()
    )]
    UnknownPreTokenizer {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// SHA-256 of Python's `str()` of the check text's ids.
        hash: String,
        /// How many ids the check text encoded to.
        n_ids: usize,
    },
    /// An explicit pre-tokenizer name that llama.cpp does not know.
    #[error("{}: pre-tokenizer '{name}' is not one llama.cpp knows (did you mean {suggestion}?)", tokenizer.display())]
    UnknownPreName {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// The name given.
        name: String,
        /// The closest known name.
        suggestion: String,
    },
    /// The tokenizer is inconsistent with itself or its configs (ids beyond `vocab_size`...).
    #[error("{}: {reason}", tokenizer.display())]
    Inconsistent {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Encoding or decoding with the tokenizer failed.
    #[error("{}: {action} with the tokenizer failed: {error}", tokenizer.display())]
    Tokenizers {
        /// The tokenizer's folder or file.
        tokenizer: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error from `tokenizers`.
        error: String,
    },
}

/// GGUF `tokenizer.*` metadata, in the order the converter writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerMetadata {
    /// The `(key, value)` pairs, each key once.
    pub kv: Vec<(String, GgufValue)>,
}

impl TokenizerMetadata {
    /// The value of `key`, if written.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The pairs, for the GGUF writer.
    pub fn into_pairs(self) -> Vec<(String, GgufValue)> {
        self.kv
    }

    /// Writes `key`: in place when already written (the value changes, the position does not),
    /// else at the end. That is gguf-py's `add_key_value` on a dict.
    pub(super) fn set(&mut self, key: &str, value: GgufValue) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.kv.push((key.to_string(), value)),
        }
    }

    fn token_text(&self, id: u32) -> Option<&str> {
        self.get(keys::TOKENS)?.as_array()?.get(id as usize)?.as_str()
    }

    /// The texts of the tokens llama.cpp stops generating at (its end-of-generation set): the
    /// EOS, EOT and EOM tokens, and control or user-defined tokens whose text llama.cpp's
    /// `llama_vocab::load` recognizes as an end of turn (`<|im_end|>`, `<|eot_id|>`,
    /// `<|endoftext|>`, `<end_of_turn>`...). In id order, each once: the `stop` parameters of
    /// an Ollama Modelfile.
    pub fn end_of_generation_tokens(&self) -> Vec<String> {
        // llama-vocab.cpp (llama-cpp-python 0.3.36): the texts that mark a token as EOG.
        const EOG_TEXTS: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<|return|>",
            "<|call|>",
            "<|flush|>",
            "<|calls|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
            "<end_of_utterance>",
        ];
        let mut ids: Vec<u32> = [keys::EOS_ID, extra_keys::EOT_ID, extra_keys::EOM_ID]
            .iter()
            .filter_map(|k| self.get(k).and_then(GgufValue::as_u32))
            .collect();
        if let (Some(tokens), Some(types)) =
            (self.get(keys::TOKENS).and_then(GgufValue::as_array), self.get(keys::TOKEN_TYPE).and_then(GgufValue::as_array))
        {
            for ((id, tok), ty) in (0u32..).zip(tokens).zip(types) {
                let special = matches!(ty.as_i32(), Some(token_type::CONTROL | token_type::USER_DEFINED));
                if special && tok.as_str().is_some_and(|t| EOG_TEXTS.contains(&t)) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().filter_map(|id| self.token_text(id).map(str::to_string)).collect()
    }
}

/// Choices [`to_gguf_with`] makes where the converter's output is not the only sensible one.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pre: Option<String>,
    converter_scores: bool,
}

impl ExportOptions {
    /// Sets `tokenizer.ggml.pre` instead of detecting it (a name llama.cpp knows).
    pub fn with_pre(mut self, pre: impl Into<String>) -> Self {
        self.pre = Some(pre.into());
        self
    }

    /// For a `"llama"` vocabulary, writes the converter's placeholder scores (`-1000.0` for every
    /// token) instead of merge-rank scores. Only for comparing with the converter: llama.cpp then
    /// merges by position and tokenizes differently from Hugging Face (see the module docs).
    pub fn with_converter_scores(mut self, yes: bool) -> Self {
        self.converter_scores = yes;
        self
    }
}

/// The GGUF `tokenizer.*` metadata `convert_hf_to_gguf.py` writes for `hf`.
///
/// `pre` overrides the pre-tokenizer detection (for a `"gpt2"` model); it must be a name llama.cpp
/// knows. Without it, an unrecognized pre-tokenizer is [`ToGgufError::UnknownPreTokenizer`].
/// Same as [`to_gguf_with`] with only the pre-tokenizer set.
pub fn to_gguf(hf: &HfTokenizer, pre: Option<&str>) -> Result<TokenizerMetadata, ToGgufError> {
    let mut opts = ExportOptions::default();
    if let Some(p) = pre {
        opts = opts.with_pre(p);
    }
    to_gguf_with(hf, &opts)
}

/// The GGUF `tokenizer.*` metadata for `hf`, with [`ExportOptions`].
pub fn to_gguf_with(hf: &HfTokenizer, opts: &ExportOptions) -> Result<TokenizerMetadata, ToGgufError> {
    let pre = opts.pre.as_deref();
    let model = tokenizer_model(hf)?;
    let mut meta = TokenizerMetadata { kv: Vec::new() };
    let llama_arch = hf.architecture() == Some("LlamaForCausalLM");
    if llama_arch {
        if let Some(Json::Bool(prefix)) = hf.tokenizer_config.as_ref().and_then(|c| c.get("add_prefix_space")) {
            meta.set(extra_keys::ADD_SPACE_PREFIX, GgufValue::Bool(*prefix));
        }
    }
    match model {
        "gpt2" => set_vocab_gpt2(hf, pre, &mut meta)?,
        _ => set_vocab_llama_hf(hf, pre, opts.converter_scores, &mut meta)?,
    }
    if llama_arch && hf.config_vocab_size() == Some(49152) {
        meta.set(keys::ADD_BOS, GgufValue::Bool(false));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::pre_tokenizer::sha256_hex;
    use super::*;
    use crate::gguf::reader::{parse, test_writer::gguf_bytes};
    use crate::gguf::GgufFile;
    use crate::tokenizer::gguf::from_gguf;
    use std::io::Cursor;
    use std::path::Path;

    fn fixture_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/to-gguf").join(name)
    }

    /// gguf-py's name of a value's type, as scripts/gguf_tokenizer_reference.py prints it.
    fn py_type(v: &GgufValue) -> &'static str {
        match v {
            GgufValue::String(_) => "STRING",
            GgufValue::U32(_) => "UINT32",
            GgufValue::I32(_) => "INT32",
            GgufValue::F32(_) => "FLOAT32",
            GgufValue::Bool(_) => "BOOL",
            GgufValue::Array(_) => "ARRAY",
            _ => "OTHER",
        }
    }

    /// A scalar as Python's `json.dumps` writes it.
    fn py_json(v: &GgufValue) -> String {
        match v {
            GgufValue::String(s) => serde_json::to_string(s).expect("json"),
            GgufValue::F32(f) if f.fract() == 0.0 => format!("{f:.1}"),
            GgufValue::F32(f) => f.to_string(),
            GgufValue::Bool(b) => if *b { "true" } else { "false" }.into(),
            other => other.as_int().map(|i| i.to_string()).unwrap_or_default(),
        }
    }

    /// The reference script's summary of a value: arrays over 64 elements as `{len, sha256}` of
    /// Python's `json.dumps(list, ensure_ascii=False)`.
    fn summary(v: &GgufValue) -> Json {
        match v {
            GgufValue::Array(items) if items.len() > 64 => {
                let text = format!("[{}]", items.iter().map(py_json).collect::<Vec<_>>().join(", "));
                serde_json::json!({"len": items.len(), "sha256": sha256_hex(text.as_bytes())})
            }
            GgufValue::Array(items) => {
                Json::Array(items.iter().map(|i| serde_json::from_str(&py_json(i)).expect("json")).collect())
            }
            other => serde_json::from_str(&py_json(other)).expect("json"),
        }
    }

    /// `to_gguf` on a fixture folder equals the converter's output (tests/data/to-gguf/NAME/expected.json,
    /// from scripts/make_to_gguf_fixtures.py): same keys, order, types and values.
    fn check_against_converter(name: &str, opts: ExportOptions) -> (HfTokenizer, TokenizerMetadata) {
        let (dir, expected) = match name {
            "tiny" => (tiny_dir(), fixture_dir("tiny-expected.json")),
            _ => (fixture_dir(name), fixture_dir(name).join("expected.json")),
        };
        let hf = HfTokenizer::from_dir(&dir).expect("load fixture");
        let meta = to_gguf_with(&hf, &opts).expect("to_gguf");
        assert_matches_reference(&hf, &meta, &expected);
        (hf, meta)
    }

    fn tiny_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-tokenizer")
    }

    /// `meta` equals the output of scripts/gguf_tokenizer_reference.py saved at `expected`.
    fn assert_matches_reference(hf: &HfTokenizer, meta: &TokenizerMetadata, expected: &Path) {
        let name = expected.display();
        let expected: Json = serde_json::from_str(&std::fs::read_to_string(expected).expect("read")).expect("json");
        if let Some(h) = expected["chkhsh"].as_str() {
            assert_eq!(hf.chkhsh().expect("chkhsh").0, h, "{name}: chkhsh");
        }
        let want: Vec<(String, Json, String)> = expected["kv"]
            .as_array()
            .expect("kv")
            .iter()
            .map(|e| (e[0].as_str().expect("key").to_string(), e[1].clone(), e[2].as_str().expect("type").to_string()))
            .collect();
        let got: Vec<(String, Json, String)> =
            meta.kv.iter().map(|(k, v)| (k.clone(), summary(v), py_type(v).to_string())).collect();
        assert_eq!(got.iter().map(|g| &g.0).collect::<Vec<_>>(), want.iter().map(|w| &w.0).collect::<Vec<_>>(), "{name}: keys");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{name}: {}", g.0);
        }
    }

    fn gguf_of(meta: &TokenizerMetadata) -> GgufFile {
        let kv: Vec<(&str, GgufValue)> = meta.kv.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let bytes = gguf_bytes(&kv, &[], 32);
        parse(Cursor::new(&bytes), "exported.gguf".into(), bytes.len() as u64).expect("parse exported metadata")
    }

    const SAMPLES: &[&str] = &[
        "Hello, world! It's a dog's life, isn't it? WE'LL see.",
        "你今年的运势很好，事业上会有贵人相助。",
        "2024年3月14日，圆周率约为3.14159。 12345",
        "  leading spaces\n\n\ttabs and\r\nnewlines   ",
        "emoji 🚀😶\u{200d}🌫️ and ✅",
        "<|im_start|>user\n算命<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>text<|im_end|><|im_end|>",
    ];

    /// `from_gguf` on the exported metadata encodes `texts` like the Hugging Face tokenizer.
    fn check_encodes_like_hf(hf: &HfTokenizer, meta: &TokenizerMetadata, texts: &[&str]) {
        let back = from_gguf(&gguf_of(meta)).expect("from_gguf on exported metadata");
        for text in texts {
            let want = hf.tokenizer().encode(*text, false).expect("encode").get_ids().to_vec();
            assert_eq!(back.encode(text, false).expect("encode"), want, "{text:?}");
        }
    }

    #[test]
    fn matches_the_converter_on_the_tiny_tokenizer() {
        let (hf, meta) = check_against_converter("tiny", ExportOptions::default().with_pre("gpt-2"));
        check_encodes_like_hf(&hf, &meta, SAMPLES);
    }

    #[test]
    fn matches_the_converter_on_a_llama3_shaped_tokenizer() {
        let (hf, meta) = check_against_converter("llama3ish", ExportOptions::default().with_pre("llama-bpe"));
        // Unused ids up to config.json's vocab_size, user-defined tokens with ▁ as spaces.
        let tokens = meta.get(keys::TOKENS).and_then(GgufValue::as_array).expect("tokens");
        assert_eq!(tokens.last().and_then(GgufValue::as_str), Some("[PAD1011]"));
        assert!(tokens.iter().any(|t| t.as_str() == Some(" x ")));
        let mut texts = SAMPLES.to_vec();
        texts.push("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<tool>你好<|eot_id|>");
        check_encodes_like_hf(&hf, &meta, &texts);
        let back = from_gguf(&gguf_of(&meta)).expect("from_gguf");
        assert!(back.add_bos);
        assert_eq!(back.encode("hi", true).expect("encode")[0], 1000);
    }

    #[test]
    fn matches_the_converter_on_a_sentencepiece_style_bpe_but_for_the_scores() {
        let (hf, meta) = check_against_converter("spmbpe", ExportOptions::default().with_converter_scores(true));
        let ours = to_gguf(&hf, None).expect("to_gguf");
        let without_scores =
            |m: &TokenizerMetadata| m.kv.iter().filter(|(k, _)| k != extra_keys::SCORES).cloned().collect::<Vec<_>>();
        assert_eq!(without_scores(&ours), without_scores(&meta));
        // Merge-rank scores: "bc" is merge 0, "ab" merge 9 (see scripts/make_to_gguf_fixtures.py).
        let tokens = ours.get(keys::TOKENS).and_then(GgufValue::as_array).expect("tokens");
        let scores = ours.get(extra_keys::SCORES).and_then(GgufValue::as_array).expect("scores");
        let score = |text: &str| scores[tokens.iter().position(|t| t.as_str() == Some(text)).expect("token")].as_f32();
        assert_eq!(
            (score("bc"), score("er"), score("ab"), score("a"), score("<s>")),
            (Some(-0.0), Some(-1.0), Some(-9.0), Some(0.0), Some(0.0))
        );
        let types = meta.get(keys::TOKEN_TYPE).and_then(GgufValue::as_array).expect("types");
        let ty = |id: usize| types[id].as_i32().expect("i32");
        assert_eq!(
            (ty(0), ty(1), ty(3), ty(3 + 255)),
            (token_type::CONTROL, token_type::CONTROL, token_type::BYTE, token_type::BYTE)
        );
        assert_eq!(ty(types.len() - 2), token_type::CONTROL, "<|user|> is an additional special token");
        assert_eq!(ty(types.len() - 1), token_type::USER_DEFINED, "<|assistant|> is not");
    }

    #[test]
    fn an_unknown_pre_tokenizer_is_an_error_naming_the_hash_and_the_tokenizer() {
        let hf = HfTokenizer::from_dir(&tiny_dir()).expect("load");
        let e = to_gguf(&hf, None).unwrap_err();
        let hash = "4308a7e053c997e458d932f62135ba6331f5db7029bf7a8633fb607dd5695b38";
        assert!(matches!(&e, ToGgufError::UnknownPreTokenizer { hash: h, .. } if h == hash), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(hash) && msg.contains("tiny-tokenizer") && msg.contains("llama-bpe"), "{msg}");
    }

    #[test]
    fn an_explicit_pre_tokenizer_llama_cpp_does_not_know_is_an_error() {
        let hf = HfTokenizer::from_dir(&tiny_dir()).expect("load");
        let e = to_gguf(&hf, Some("gpt2")).unwrap_err();
        assert!(matches!(&e, ToGgufError::UnknownPreName { name, .. } if name == "gpt2"), "{e}");
        assert!(e.to_string().contains("\"gpt-2\""), "{e}");
        let spm = HfTokenizer::from_dir(&fixture_dir("spmbpe")).expect("load");
        assert!(matches!(to_gguf(&spm, Some("llama-bpe")), Err(ToGgufError::Inconsistent { .. })));
    }

    /// The default model's GGUF (`PIPE_TEST_GGUF`), or `None` (the test is skipped) when unset.
    fn default_gguf() -> Option<GgufFile> {
        let Some(path) = std::env::var_os("PIPE_TEST_GGUF") else {
            // scripts/test.sh (and so CI) always provides the model and sets PIPE_REQUIRE_MODELS.
            assert!(std::env::var_os("PIPE_REQUIRE_MODELS").is_none(), "PIPE_TEST_GGUF must be set");
            eprintln!("skipping: PIPE_TEST_GGUF is not set");
            return None;
        };
        Some(GgufFile::open(Path::new(&path)).expect("open GGUF"))
    }

    fn tokenizer_kv(file: &GgufFile) -> Vec<(String, GgufValue)> {
        let mut kv: Vec<_> = file.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect();
        kv.sort_by(|a, b| a.0.cmp(&b.0));
        kv
    }

    fn sorted(meta: &TokenizerMetadata) -> Vec<(String, GgufValue)> {
        let mut kv = meta.kv.clone();
        kv.sort_by(|a, b| a.0.cmp(&b.0));
        kv
    }

    fn assert_same_keys(got: &[(String, GgufValue)], want: &[(String, GgufValue)]) {
        let names = |kv: &[(String, GgufValue)]| kv.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(got), names(want));
        for ((k, a), (_, b)) in got.iter().zip(want) {
            assert!(a == b, "{k} differs: {} vs {}", summary(a), summary(b));
        }
    }

    /// GGUF -> from_gguf -> Hugging Face tokenizer (with SmolLM2-135M-Instruct's own
    /// tokenizer_config.json and config.json fields) -> to_gguf gives back the GGUF's tokenizer
    /// metadata key for key, and the exported metadata tokenizes like llama.cpp.
    #[test]
    fn smollm2_round_trip_gives_back_the_gguf_tokenizer_metadata() {
        let Some(file) = default_gguf() else { return };
        let original = from_gguf(&file).expect("from_gguf");
        let hf = HfTokenizer::from_json("SmolLM2-135M-Instruct (from GGUF)", &original.to_tokenizer_json())
            .expect("tokenizer.json")
            .with_tokenizer_config(serde_json::json!({
                "add_prefix_space": false,
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>",
                "clean_up_tokenization_spaces": false,
                "tokenizer_class": "GPT2Tokenizer",
                "chat_template": original.chat_template.clone().expect("chat template"),
            }))
            .with_model_config(serde_json::json!({
                "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2,
            }));
        let meta = to_gguf(&hf, None).expect("to_gguf");
        assert_eq!(meta.get(keys::PRE).and_then(GgufValue::as_str), Some("smollm"));
        assert_same_keys(&sorted(&meta), &tokenizer_kv(&file));

        let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2_tokens.json")).expect("read");
        let samples: Vec<Json> = serde_json::from_str(&json).expect("json");
        let texts: Vec<&str> = samples.iter().map(|s| s["text"].as_str().expect("text")).chain(SAMPLES.iter().copied()).collect();
        check_encodes_like_hf(&hf, &meta, &texts);
        let back = from_gguf(&gguf_of(&meta)).expect("from_gguf");
        for s in &samples {
            let want: Vec<u32> = s["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
            assert_eq!(back.encode(s["text"].as_str().expect("text"), false).expect("encode"), want, "llama.cpp ids of {s}");
        }
        assert_eq!(meta.end_of_generation_tokens(), vec!["<|endoftext|>".to_string(), "<|im_end|>".to_string()]);
    }

    /// The folder the `merge` node writes for a GGUF base exports with two keys fewer than the
    /// GGUF had: merge's tokenizer_config.json carries neither `unk_token` nor `add_prefix_space`.
    /// The converter itself gives the same on that folder (smollm2-merge-expected.json: its output
    /// on a merge node's folder, from scripts/gguf_tokenizer_reference.py --arch LlamaForCausalLM).
    #[test]
    fn smollm2_merge_folder_exports_all_but_unk_and_space_prefix() {
        let Some(file) = default_gguf() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        crate::tokenizer::save::write_hf_tokenizer(file.path(), dir.path()).expect("write_hf_tokenizer");
        let config =
            serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2});
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write config");
        let hf = HfTokenizer::from_dir(dir.path()).expect("load");
        let names: Vec<_> = hf.files().iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["tokenizer.json", "tokenizer_config.json", "config.json"]);
        let meta = to_gguf(&hf, None).expect("to_gguf");
        assert_matches_reference(&hf, &meta, &fixture_dir("smollm2-merge-expected.json"));
        let want: Vec<_> =
            tokenizer_kv(&file).into_iter().filter(|(k, _)| k != keys::UNK_ID && k != extra_keys::ADD_SPACE_PREFIX).collect();
        assert_same_keys(&sorted(&meta), &want);
    }
}
