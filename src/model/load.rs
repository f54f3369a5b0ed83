//! Loading a model from what a pipeline points at: a GGUF file or a Hugging Face folder.
//!
//! GGUF: hyper-parameters from `{arch}.*` metadata; every tensor dequantized to f32; llama.cpp
//! tensor names mapped to Hugging Face names; and for the Llama architecture the Q/K rows are
//! un-permuted (llama.cpp's converter reorders them for its interleaved RoPE), so the weights,
//! and every LoRA adapter trained on them, are in Hugging Face order and load in peft.
//!
//! Hugging Face folder: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::config::{Arch, Config};
use super::gguf_names::{hf_name, unpermute};
use super::llama::Model;
use crate::gguf::quant::{dequantize, GgmlKind};
use crate::gguf::GgufFile;

/// Loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// I/O or format trouble with a file.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The model is of a kind this build cannot run.
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> LoadError {
    LoadError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// Loads a model from a GGUF file or a Hugging Face folder.
pub fn load(path: &Path, device: &Device) -> Result<Model, LoadError> {
    if path.is_dir() {
        load_hf(path, device)
    } else {
        load_gguf(path, device)
    }
}

/// Reads only the hyper-parameters.
pub fn config(path: &Path) -> Result<Config, LoadError> {
    if path.is_dir() {
        let p = path.join("config.json");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).map_err(|e| file_err(&p, e))?).map_err(|e| file_err(&p, e))?;
        Config::from_hf_json(&v).map_err(|m| LoadError::Unsupported { path: p, message: m })
    } else {
        let f = GgufFile::open(path).map_err(|e| file_err(path, e))?;
        gguf_config(&f, path)
    }
}

fn gguf_config(f: &GgufFile, path: &Path) -> Result<Config, LoadError> {
    let arch_name = f.get_str("general.architecture").unwrap_or("llama").to_string();
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(LoadError::Unsupported {
                path: path.to_path_buf(),
                message: format!("architecture `{other}` is not supported (supported: llama, qwen2)"),
            })
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let u = |k: &str| {
        f.get_u32(&key(k)).map(|x| x as usize).ok_or_else(|| file_err(path, format!("metadata `{}` is missing", key(k))))
    };
    let hidden = u("embedding_length")?;
    let heads = u("attention.head_count")?;
    let vocab = f
        .get_u32(&key("vocab_size"))
        .map(|x| x as usize)
        .or_else(|| f.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map(|a| a.len()))
        .ok_or_else(|| file_err(path, "cannot tell the vocabulary size"))?;
    let head_dim = f.get_u32(&key("rope.dimension_count")).map(|x| x as usize).unwrap_or(hidden / heads);
    let rope_scaling = match (f.get_str(&key("rope.scaling.type")), f.get_f32(&key("rope.scaling.factor"))) {
        (Some("linear"), _) | (Some("yarn"), _) => {
            return Err(LoadError::Unsupported {
                path: path.to_path_buf(),
                message: "linear/yarn RoPE scaling is not supported".into(),
            })
        }
        _ => None,
    };
    Ok(Config {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: u("feed_forward_length")?,
        num_layers: u("block_count")?,
        num_heads: heads,
        num_kv_heads: f.get_u32(&key("attention.head_count_kv")).map(|x| x as usize).unwrap_or(heads),
        head_dim,
        rope_theta: f64::from(f.get_f32(&key("rope.freq_base")).unwrap_or(10000.0)),
        rope_scaling,
        rms_norm_eps: f64::from(f.get_f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5)),
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        max_position_embeddings: f.get_u32(&key("context_length")).map(|x| x as usize).unwrap_or(2048),
    })
}

fn load_gguf(path: &Path, device: &Device) -> Result<Model, LoadError> {
    let f = GgufFile::open(path).map_err(|e| file_err(path, e))?;
    let cfg = gguf_config(&f, path)?;
    if f.tensor("rope_freqs.weight").is_some() {
        return Err(LoadError::Unsupported {
            path: path.to_path_buf(),
            message: "per-dimension RoPE frequency factors (`rope_freqs.weight`, Llama 3.1 style) are not supported yet".into(),
        });
    }
    let mut tensors = HashMap::new();
    for t in &f.tensors {
        let Some(name) = hf_name(&t.name) else { continue };
        let kind = GgmlKind::from_id(t.ggml_type.id()).ok_or_else(|| LoadError::Unsupported {
            path: path.to_path_buf(),
            message: format!("tensor `{}` has type {}, which pipe cannot dequantize", t.name, t.ggml_type),
        })?;
        let n = t.n_elements() as usize;
        let bytes = f.tensor_bytes(t).map_err(|e| file_err(path, e))?;
        let mut data = dequantize(kind, &bytes, n).map_err(|e| file_err(path, format!("tensor `{}`: {e}", t.name)))?;
        // GGUF dims are innermost-first: [cols, rows].
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        if cfg.arch == Arch::Llama && shape.len() == 2 {
            if t.name.ends_with("attn_q.weight") {
                data = unpermute(&data, shape[0], shape[1], cfg.num_heads);
            } else if t.name.ends_with("attn_k.weight") {
                data = unpermute(&data, shape[0], shape[1], cfg.num_kv_heads);
            }
        }
        let tensor = Tensor::from_vec(data, shape, device).map_err(|e| file_err(path, e))?;
        tensors.insert(name, tensor);
    }
    Model::from_hf_tensors(cfg, tensors, device).map_err(|m| file_err(path, m))
}

fn load_hf(dir: &Path, device: &Device) -> Result<Model, LoadError> {
    let cfg = config(dir)?;
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index).map_err(|e| file_err(&index, e))?).map_err(|e| file_err(&index, e))?;
        let mut names: Vec<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| file_err(&index, "no `weight_map`"))?
            .values()
            .filter_map(|x| x.as_str().map(String::from))
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        return Err(file_err(dir, "no model.safetensors or model.safetensors.index.json"));
    };
    let mut tensors = HashMap::new();
    for f in files {
        tensors.extend(candle_core::safetensors::load(&f, device).map_err(|e| file_err(&f, e))?);
    }
    Model::from_hf_tensors(cfg, tensors, device).map_err(|m| file_err(dir, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our logits for SmolLM2-135M-Instruct (the default model) against an independent numpy
    /// forward pass over the same GGUF (scripts/reference_forward.py, float64, llama.cpp's own
    /// interleaved RoPE on the stored weights, so the un-permutation here is checked too).
    #[test]
    fn smollm2_logits_match_the_numpy_reference() {
        let Some(gguf) = std::env::var_os("PIPE_TEST_GGUF") else {
            assert!(std::env::var_os("PIPE_REQUIRE_MODELS").is_none(), "PIPE_TEST_GGUF must be set");
            eprintln!("skipping: PIPE_TEST_GGUF is not set");
            return;
        };
        let ids: Vec<u32> = vec![504, 3575, 282, 4649, 314, 1345, 28, 2, 43, 5024, 17, 1132];
        let out = tempfile::NamedTempFile::new().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/reference_forward.py");
        let ids_arg = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let status = std::process::Command::new("python3")
            .args([script, "--gguf"])
            .arg(&gguf)
            .args(["--ids", &ids_arg, "--out"])
            .arg(out.path())
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                assert!(std::env::var_os("PIPE_REQUIRE_PYTHON").is_none(), "python3 with gguf and numpy is required: {other:?}");
                eprintln!("skipping: python3 with gguf and numpy is not available");
                return;
            }
        }
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap();
        let want: Vec<f32> = r["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let model = load(std::path::Path::new(&gguf), &Device::Cpu).unwrap();
        let mut cache = crate::model::llama::KvCache::new(model.cfg.num_layers);
        let logits = model.forward_infer(&ids, &mut cache).unwrap();
        let got: Vec<f32> = logits.get(ids.len() - 1).unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let max_diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_diff / scale < 1e-3, "max |diff| {max_diff} vs max |logit| {scale}");
        let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax(&got), argmax(&want));
    }
}
