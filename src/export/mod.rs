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
use crate::gguf::quant::{GgmlKind, QuantError};
use crate::gguf::quantize;
use crate::gguf::writer::{self, TensorPlan};
use crate::gguf::{GgmlType, GgufValue};
use crate::model::config::Config;
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

/// Values quantized and written at a time: a tensor goes to the file in runs of whole rows of
/// about this many values, each quantized into one reused buffer (a few MB, warm in cache),
/// so an export touches no fresh memory for its output beyond the file's own pages.
const CHUNK_VALUES: usize = 1 << 20;

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
    write_tensors(&model.cfg, &tensors, tokenizer_kv, file_type, name, path)
}

/// [`write_gguf`] for the model of `cfg` in the Hugging Face folder `dir`, without loading it:
/// the tensors stream from the memory-mapped safetensors files
/// ([`to_gguf::tensors_from_folder`]), and the file is byte for byte the one [`write_gguf`]
/// writes for the loaded model. `Ok(None)` when the folder holds a dtype only a loaded model
/// can take.
pub fn write_gguf_from_folder(
    dir: &Path,
    cfg: &Config,
    tokenizer_kv: Vec<(String, GgufValue)>,
    file_type: FileType,
    name: &str,
    path: &Path,
) -> Result<Option<Written>, ExportError> {
    let Some(tensors) = to_gguf::tensors_from_folder(dir, cfg).map_err(ExportError::Unsupported)? else {
        return Ok(None);
    };
    write_tensors(cfg, &tensors, tokenizer_kv, file_type, name, path).map(Some)
}

fn write_tensors(
    c: &Config,
    tensors: &[to_gguf::ExportTensor],
    tokenizer_kv: Vec<(String, GgufValue)>,
    file_type: FileType,
    name: &str,
    path: &Path,
) -> Result<Written, ExportError> {
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
    let mut metadata = vec![("general.architecture".to_string(), GgufValue::String(to_gguf::arch_name(c.arch).into()))];
    metadata.push(("general.type".into(), GgufValue::String("model".into())));
    metadata.push(("general.name".into(), GgufValue::String(name.into())));
    metadata.extend(to_gguf::arch_metadata(c).into_iter().filter(|(k, _)| k != "general.architecture"));
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
    let mut buf = Vec::new();
    writer::write_file(path, &metadata, &plans, |i, sink| {
        let values = tensors[i].values().map_err(|e| e.to_string())?;
        let row = *tensors[i].shape.last().unwrap_or(&1);
        write_quantized(kinds[i], &values, row, &mut buf, sink)
    })?;
    let mut types = BTreeMap::new();
    for k in &kinds {
        *types.entry(k.name().to_string()).or_insert(0) += 1;
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Written { metadata, types, bytes })
}

/// Quantizes `values` (rows of `row` values) to `kind` into `sink`, [`CHUNK_VALUES`] at a
/// time through `buf`. The bytes are [`quantize::quantize`]'s for the whole tensor: every row
/// is quantized on its own.
fn write_quantized(
    kind: GgmlKind,
    values: &[f32],
    row: usize,
    buf: &mut Vec<u8>,
    sink: &mut writer::TensorSink<'_>,
) -> Result<(), String> {
    let rows_per_chunk = (CHUNK_VALUES / row.max(1)).max(1);
    let chunk = rows_per_chunk * row.max(1);
    for (c, part) in values.chunks(chunk).enumerate() {
        let n = kind.byte_len(part.len()).map_err(|e| e.to_string())?;
        buf.resize(n, 0);
        quantize::quantize_into(kind, part, row, buf).map_err(|e| match e {
            // The index within the tensor, as a whole-tensor quantize reports it.
            QuantError::NonFinite { kind, index } => QuantError::NonFinite { kind, index: index + c * chunk }.to_string(),
            e => e.to_string(),
        })?;
        sink.write(buf)?;
    }
    Ok(())
}
