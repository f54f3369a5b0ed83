//! Writing a tokenizer as the files of a Hugging Face model folder: `tokenizer.json`,
//! `tokenizer_config.json` (special tokens and chat template) and `generation_config.json`.
//! From a Hugging Face folder the files are copied; from a GGUF file they are built from its
//! `tokenizer.*` metadata ([`super::gguf`]). `merge` and `random-model` write their folders'
//! tokenizers with it.

use std::path::{Path, PathBuf};

use super::load::{load, LoadError};

/// Writing the tokenizer files failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Copying or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// `"copying"` or `"writing"`.
        action: &'static str,
        /// The file copied, or the folder written to.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The base's tokenizer could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// `tokenizers` could not write `tokenizer.json`.
    #[error("writing tokenizer.json: {0}")]
    TokenizerJson(tokenizers::Error),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SaveError + 'a {
    move |source| SaveError::Io { action, path: path.to_path_buf(), source }
}

/// Writes the tokenizer files of `base` (a GGUF file or a Hugging Face folder) into the folder `out`.
pub fn write_hf_tokenizer(base: &Path, out: &Path) -> Result<(), SaveError> {
    if base.is_dir() {
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
            if base.join(f).exists() {
                std::fs::copy(base.join(f), out.join(f)).map_err(io("copying", &base.join(f)))?;
            }
        }
        return Ok(());
    }
    let b = load(base)?;
    b.tokenizer.save(out.join("tokenizer.json"), false).map_err(SaveError::TokenizerJson)?;
    let mut cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "model_max_length": 8192,
        "add_bos_token": false,
    });
    if let Some((_, t)) = &b.eos {
        cfg["eos_token"] = t.clone().into();
    }
    if let Some((_, t)) = &b.bos {
        cfg["bos_token"] = t.clone().into();
    }
    if let Some(id) = b.pad {
        if let Some(t) = b.tokenizer.id_to_token(id) {
            cfg["pad_token"] = t.into();
        }
    }
    if let Some(t) = &b.chat_template {
        cfg["chat_template"] = t.clone().into();
    }
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg).expect("json"))
        .map_err(io("writing", out))?;
    let gen = serde_json::json!({"bos_token_id": b.bos.as_ref().map(|x| x.0), "eos_token_id": b.eos.as_ref().map(|x| x.0), "do_sample": false});
    std::fs::write(out.join("generation_config.json"), serde_json::to_string_pretty(&gen).expect("json"))
        .map_err(io("writing", out))?;
    Ok(())
}
