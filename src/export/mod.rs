//! Export to llama.cpp and Ollama: a model and its tokenizer to one GGUF file plus a Modelfile,
//! then a gate that checks the file before anyone serves it.
//!
//! | file | |
//! |---|---|
//! | [`mod@self`] | [`write_gguf`]: metadata (architecture, tokenizer, chat template) and tensors, quantized per llama.cpp's rules |
//! | [`gate`] | the verification gate: re-read, tokenizer equality, and llama.cpp's own tokenizer, greedy decoding and perplexity |
//! | [`llamacpp`] | running llama.cpp's command-line tools |
//!
//! The model code ([`crate::model::to_gguf`]) says what the tensors are called and how their rows
//! are ordered; the tokenizer code ([`crate::tokenizer::to_gguf`]) says what the vocabulary
//! looks like to llama.cpp; the quantizers ([`crate::gguf::quantize`]) say which type each
//! tensor gets and produce its bytes. This module puts them together.

pub mod gate;
pub mod llamacpp;

use std::collections::BTreeMap;
use std::path::Path;

use crate::gguf::ftype::{self, FileType, ModelInfo};
use crate::gguf::quant::GgmlKind;
use crate::gguf::quantize;
use crate::gguf::writer::{self, TensorPlan};
use crate::gguf::{GgmlType, GgufValue};
use crate::model::llama::Model;
use crate::model::to_gguf;

/// An export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing the file failed.
    #[error(transparent)]
    Write(#[from] writer::WriteError),
    /// The model or tokenizer cannot be expressed in GGUF.
    #[error("{0}")]
    Unsupported(String),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Every metadata pair, in file order (the gate checks they read back equal).
    pub metadata: Vec<(String, GgufValue)>,
    /// Tensor count per type name (`q4_K: 120`).
    pub types: BTreeMap<String, usize>,
    /// File size in bytes.
    pub bytes: u64,
}

/// Writes `model` with the tokenizer metadata `tokenizer_kv` to `path` as `file_type`.
///
/// Metadata order: `general.*`, the architecture keys, then the tokenizer keys, as llama.cpp's
/// converter writes them. Each tensor is quantized only when the writer reaches it.
pub fn write_gguf(
    model: &Model,
    tokenizer_kv: Vec<(String, GgufValue)>,
    file_type: FileType,
    name: &str,
    path: &Path,
) -> Result<Written, ExportError> {
    let tensors = to_gguf::tensors(model).map_err(ExportError::Unsupported)?;
    let c = &model.cfg;
    let arch = match c.arch {
        crate::model::config::Arch::Llama => ftype::Arch::Llama,
        crate::model::config::Arch::Qwen2 => ftype::Arch::Qwen2,
    };
    let info = ModelInfo::new(arch, c.num_layers as u32, c.num_heads as u32, c.num_kv_heads as u32)
        .with_tied_embeddings(c.tie_word_embeddings);
    let kinds: Vec<GgmlKind> = tensors
        .iter()
        .map(|t| {
            let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
            ftype::tensor_kind(file_type, &info, &t.name, &dims)
        })
        .collect();
    let mut metadata = vec![("general.architecture".to_string(), GgufValue::String(to_gguf::arch_name(model.cfg.arch).into()))];
    metadata.push(("general.type".into(), GgufValue::String("model".into())));
    metadata.push(("general.name".into(), GgufValue::String(name.into())));
    metadata.extend(to_gguf::arch_metadata(&model.cfg).into_iter().filter(|(k, _)| k != "general.architecture"));
    metadata.push(("general.file_type".into(), GgufValue::U32(file_type.id())));
    if !matches!(file_type, FileType::F32 | FileType::F16 | FileType::BF16) {
        // GGML_QNT_VERSION: the block layouts of today's quantized types.
        metadata.push(("general.quantization_version".into(), GgufValue::U32(2)));
    }
    metadata.extend(tokenizer_kv);
    let plans: Vec<TensorPlan> = tensors
        .iter()
        .zip(&kinds)
        .map(|(t, k)| TensorPlan { name: t.name.clone(), shape: t.shape.clone(), ty: GgmlType::from_id(k.id()) })
        .collect();
    writer::write_file(path, &metadata, &plans, |i| {
        let values = tensors[i].values().map_err(|e| e.to_string())?;
        let row = *tensors[i].shape.last().unwrap_or(&1);
        quantize::quantize(kinds[i], &values, row).map_err(|e| e.to_string())
    })?;
    let mut types = BTreeMap::new();
    for k in &kinds {
        *types.entry(k.name().to_string()).or_insert(0) += 1;
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Written { metadata, types, bytes })
}
