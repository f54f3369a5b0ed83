//! Export to llama.cpp and Ollama: a model and its tokenizer to one GGUF file plus a Modelfile,
//! then a gate that checks the file before anyone serves it.
//!
//! | file | |
//! |---|---|
//! | [`mod@self`] | [`write_gguf`]: metadata (architecture, tokenizer, chat template) and tensors, quantized per llama.cpp's rules |
//! | [`gate`] | the verification gate: re-read, tokenizer equality, and llama.cpp's own tokenizer, greedy decoding and perplexity |
//! | [`llamacpp`] | running llama.cpp's command-line tools |
//! | [`modelfile`] | the Ollama Modelfile, with the Jinja chat template translated to a Go TEMPLATE |
//! | [`go_template`] | the subset of Go's `text/template` those TEMPLATEs use, evaluated as Ollama does |
//!
//! The model code ([`crate::model::to_gguf`]) says what the tensors are called and how their rows
//! are ordered; the tokenizer code ([`crate::tokenizer::to_gguf`]) says what the vocabulary
//! looks like to llama.cpp; the quantizers ([`crate::gguf::quantize`]) say which type each
//! tensor gets and produce its bytes. This module puts them together.

pub mod gate;
pub mod go_template;
pub mod llamacpp;
pub mod modelfile;

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
    /// The model's folder cannot be read.
    #[error(transparent)]
    Load(#[from] crate::model::load::LoadError),
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
    let tensors = to_gguf::tensors(model);
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
    let Some(tensors) = to_gguf::tensors_from_folder(dir, cfg)? else {
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
    let info = ModelInfo::new(c.num_layers as u32)
        .with_llama_cpp_70b(c.arch.is_llama_cpp_70b(c.num_layers, c.num_heads, c.num_kv_heads))
        .with_tied_embeddings(c.tie_word_embeddings);
    let kinds: Vec<GgmlKind> = tensors
        .iter()
        .map(|t| {
            let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
            ftype::tensor_kind(file_type, &info, &t.name, &dims)
        })
        .collect();
    let mut metadata = vec![("general.architecture".to_string(), GgufValue::String(c.arch.spec().gguf_name.into()))];
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
        write_quantized(kinds[i], &values, row, CHUNK_VALUES, &mut buf, sink)
    })?;
    let mut types = BTreeMap::new();
    for k in &kinds {
        *types.entry(k.name().to_string()).or_insert(0) += 1;
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Written { metadata, types, bytes })
}

/// Quantizes `values` (rows of `row` values) to `kind` into `sink`, whole rows of about
/// `chunk_values` values at a time through `buf`. The bytes are [`quantize::quantize`]'s for
/// the whole tensor: every row is quantized on its own.
fn write_quantized(
    kind: GgmlKind,
    values: &[f32],
    row: usize,
    chunk_values: usize,
    buf: &mut Vec<u8>,
    sink: &mut writer::TensorSink<'_>,
) -> Result<(), String> {
    let rows_per_chunk = (chunk_values / row.max(1)).max(1);
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::model::config::Arch;

    /// A random model saved as a Hugging Face folder with `dtype` weights, and that folder
    /// loaded back as a model.
    fn folder(arch: Arch, dtype: DType) -> (tempfile::TempDir, Model) {
        let cfg = Config::tiny(arch, 64, 256);
        let model = Model::random(cfg.clone(), 7, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let map: HashMap<String, Tensor> = model.hf_tensors().into_iter().map(|(n, t)| (n, t.to_dtype(dtype).unwrap())).collect();
        candle_core::safetensors::save(&map, dir.path().join("model.safetensors")).unwrap();
        std::fs::write(dir.path().join("config.json"), cfg.to_hf_json(Some(1), Some(2), "float32").to_string()).unwrap();
        let loaded = crate::model::load::load(dir.path(), &Device::Cpu).unwrap();
        (dir, loaded)
    }

    #[test]
    fn a_folder_streams_to_the_bytes_its_loaded_model_writes_for_every_type() {
        for (arch, dtype) in
            [(Arch::Llama, DType::F32), (Arch::Qwen2, DType::F32), (Arch::Llama, DType::BF16), (Arch::Qwen3, DType::BF16)]
        {
            let (dir, model) = folder(arch, dtype);
            let kv = vec![("tokenizer.ggml.model".to_string(), GgufValue::String("gpt2".into()))];
            for ft in FileType::ALL {
                let (a, b) = (dir.path().join("loaded.gguf"), dir.path().join("streamed.gguf"));
                let wa = write_gguf(&model, kv.clone(), ft, "t", &a).unwrap();
                let wb = write_gguf_from_folder(dir.path(), &model.cfg, kv.clone(), ft, "t", &b).unwrap().expect("streamable");
                assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{arch:?} {dtype:?} {}", ft.name());
                assert_eq!((wa.types, wa.bytes, wa.metadata), (wb.types, wb.bytes, wb.metadata));
            }
        }
    }

    #[test]
    fn a_tensor_written_in_runs_of_rows_is_the_whole_tensor_quantized() {
        let (rows, row) = (7, 512);
        let mut values: Vec<f32> = (0..rows * row).map(|i| ((i as f32) * 0.731).sin()).collect();
        for kind in [GgmlKind::F16, GgmlKind::Q8_0, GgmlKind::Q4_K, GgmlKind::Q6_K] {
            let want = quantize::quantize(kind, &values, row).unwrap();
            let plan = TensorPlan { name: "w".into(), shape: vec![rows, row], ty: GgmlType::from_id(kind.id()) };
            let mut out = std::io::Cursor::new(Vec::new());
            let mut buf = Vec::new();
            writer::write(&mut out, &[], std::slice::from_ref(&plan), |_, sink| {
                write_quantized(kind, &values, row, 2 * row + 1, &mut buf, sink)
            })
            .unwrap();
            let out = out.into_inner();
            let start = out.len() - want.len().next_multiple_of(32);
            assert_eq!(&out[start..start + want.len()], &want[..], "{}", kind.name());
        }
        // A bad value in a later run is reported at its place in the tensor.
        values[5 * row + 3] = f32::NAN;
        let want = quantize::quantize(GgmlKind::Q8_0, &values, row).unwrap_err().to_string();
        let plan = TensorPlan { name: "w".into(), shape: vec![rows, row], ty: GgmlType::Q8_0 };
        let e = writer::write(&mut std::io::Cursor::new(Vec::new()), &[], &[plan], |_, sink| {
            write_quantized(GgmlKind::Q8_0, &values, row, 2 * row, &mut Vec::new(), sink)
        })
        .unwrap_err();
        assert!(e.to_string().ends_with(&want), "{e} vs {want}");
    }
}
