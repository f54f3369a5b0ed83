//! Tokenizers for the models `pipe` trains and exports.
//!
//! - [`load`]: a tokenizer with its special tokens and chat template from a `tokenizer.json`, a
//!   Hugging Face model folder, or a GGUF file.
//! - [`gguf`]: a Hugging Face [`tokenizers::Tokenizer`] built from GGUF `tokenizer.ggml.*`
//!   metadata that produces the same ids as llama.cpp (byte-level BPE vocabularies).
//! - [`fast`]: an ids-only encoder for byte-level BPE tokenizers; [`encoder`]: it, with the
//!   general tokenizer as the fallback (what `tokenize` encodes with).
//! - [`save`]: a tokenizer as the tokenizer files of a Hugging Face folder.
//! - [`template`]: prompt formats, the tutorial's and Jinja chat templates.
//! - [`to_gguf`]: the inverse of [`gguf`]: GGUF `tokenizer.*` metadata from a Hugging Face
//!   tokenizer, as llama.cpp's `convert_hf_to_gguf.py` writes it.

pub mod encoder;
pub mod fast;
pub mod gguf;
pub mod load;
pub mod save;
pub mod template;
pub mod to_gguf;
