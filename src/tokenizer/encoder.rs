//! Encoding text to ids only, as the `tokenize` node does: the ids-only [`FastBpe`] where it
//! covers the tokenizer, the general `tokenizers` path everywhere else.
//!
//! The general tokenizer is the reference and the fallback: a text the fast encoder cannot
//! encode (a character outside the vocabulary, which byte-level vocabularies never have) goes
//! through it. When the encoder was made from a `tokenizer.json` ([`Encoder::lazy`]), the
//! general tokenizer is only built on that first need, once, shared by all threads.

use std::path::PathBuf;
use std::sync::OnceLock;

use tokenizers::Tokenizer;

use super::fast::{FastBpe, Scratch};

/// Text -> ids, without special tokens added.
pub struct Encoder {
    fast: Option<FastBpe>,
    general: OnceLock<Result<Tokenizer, String>>,
    /// The `tokenizer.json` the general tokenizer is built from when it was not given.
    source: Option<PathBuf>,
}

impl Encoder {
    /// The fast encoder, with the general tokenizer read from `tokenizer_json` on first need.
    pub fn lazy(fast: FastBpe, tokenizer_json: PathBuf) -> Encoder {
        Encoder { fast: Some(fast), general: OnceLock::new(), source: Some(tokenizer_json) }
    }

    /// The general tokenizer, and the fast encoder when `tok` has a shape it supports.
    pub fn general(tok: Tokenizer) -> Encoder {
        Encoder { fast: FastBpe::from_tokenizer(&tok), general: OnceLock::from(Ok(tok)), source: None }
    }

    /// Whether the ids-only fast path is in use.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The general tokenizer (built now if it was not yet).
    pub fn tokenizer(&self) -> Result<&Tokenizer, tokenizers::Error> {
        let built = self.general.get_or_init(|| {
            let path = self.source.as_ref().expect("an encoder without a tokenizer has a source file");
            super::load::tokenizer_from_file(path).map_err(|e| e.to_string())
        });
        built.as_ref().map_err(|e| e.clone().into())
    }

    /// The id of a token's text (added tokens first), as `Tokenizer::token_to_id`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.fast {
            Some(f) => f.token_to_id(token),
            None => self.tokenizer().ok()?.token_to_id(token),
        }
    }

    /// Appends the ids of `text` to `out`. `scratch` is per-thread working memory, kept from
    /// one call to the next.
    pub fn encode_into(&self, text: &str, scratch: &mut Scratch, out: &mut Vec<u32>) -> Result<(), tokenizers::Error> {
        let start = out.len();
        if let Some(f) = &self.fast {
            if f.encode_into(text, scratch, out).is_some() {
                return Ok(());
            }
            out.truncate(start);
        }
        let enc = self.tokenizer()?.encode_fast(text, false)?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-tokenizer/tokenizer.json");

    #[test]
    fn the_lazy_encoder_builds_the_general_tokenizer_only_when_a_text_needs_it() {
        // The tiny tokenizer without the token for byte 0x01 (and the merges that use it).
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(TINY).unwrap()).unwrap();
        let gone = "\u{101}";
        v["model"]["vocab"].as_object_mut().unwrap().remove(gone);
        v["model"]["merges"].as_array_mut().unwrap().retain(|m| !m.to_string().contains(gone));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let t = Tokenizer::from_file(&path).unwrap();
        let enc = Encoder::lazy(FastBpe::from_json(&std::fs::read(&path).unwrap()).unwrap(), path.clone());
        let mut scratch = Scratch::new();
        let mut out = vec![7];
        enc.encode_into("hello there", &mut scratch, &mut out).unwrap();
        assert_eq!(out[1..], *t.encode_fast("hello there", false).unwrap().get_ids());
        assert!(enc.general.get().is_none(), "not built for a text the fast path covers");
        out.truncate(1);
        enc.encode_into("hello\u{1} there", &mut scratch, &mut out).unwrap();
        assert_eq!(out[1..], *t.encode_fast("hello\u{1} there", false).unwrap().get_ids());
        assert!(enc.general.get().is_some(), "built for the text with a byte outside the vocabulary");
    }
}
