//! Loading a model from what a pipeline points at: a GGUF file or a Hugging Face folder.
//!
//! GGUF: hyper-parameters from `{arch}.*` metadata; every tensor dequantized to f32; llama.cpp
//! tensor names mapped to Hugging Face names; and for the Llama architecture the Q/K rows are
//! un-permuted (llama.cpp's converter reorders them for its interleaved RoPE), so the weights,
//! and every LoRA adapter trained on them, are in Hugging Face order and load in peft. A
//! `rope_freqs.weight` tensor (Llama 3.1 style frequency factors) goes into
//! [`Config::rope_freq_factors`].
//!
//! [`load_as`] stores the weights in a narrower dtype (bf16, f16) for mixed-precision training,
//! converting tensor by tensor so the f32 copy of the whole model never exists at once.
//!
//! Hugging Face folder: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::arch::{self, Arch};
use super::config::Config;
use super::error::ModelError;
use super::gguf_order::unpermute;
use super::base_quant::{BaseQuant, QuantWeight};
use super::llama::{Model, Weight};
use super::safetensors;
use crate::gguf::quant::{dequantize, GgmlKind};
use crate::gguf::GgufFile;

/// Loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// I/O or format trouble with a file.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The model in the file is one pipe cannot run, or not the model its configuration says.
    #[error("{path}: {source}")]
    Model { path: PathBuf, source: Box<ModelError> },
}

pub(super) fn file_err(path: &Path, message: impl std::fmt::Display) -> LoadError {
    LoadError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// Wraps a [`ModelError`] with the file or folder it is about.
pub(super) fn model_err(path: &Path) -> impl FnOnce(ModelError) -> LoadError + '_ {
    move |source| LoadError::Model { path: path.to_path_buf(), source: Box::new(source) }
}

/// Loads a model from a GGUF file or a Hugging Face folder, in f32.
pub fn load(path: &Path, device: &Device) -> Result<Model, LoadError> {
    load_as(path, device, DType::F32)
}

/// Loads a model with its weights stored in `dtype` (f32, bf16 or f16).
pub fn load_as(path: &Path, device: &Device, dtype: DType) -> Result<Model, LoadError> {
    load_with(path, device, dtype, BaseQuant::None)
}

/// Loads a model with its projection weights stored as `quant` says and the rest in `dtype`.
///
/// Each projection is quantized on the host as it is read and only its quantized form goes to
/// `device`, so a model whose dense weights would not fit there loads. `gguf` keeps a GGUF
/// file's blocks as they are (rows reordered where the file permutes Q/K; float-typed tensors
/// stay dense); it needs a GGUF file.
pub fn load_with(path: &Path, device: &Device, dtype: DType, quant: BaseQuant) -> Result<Model, LoadError> {
    if path.is_dir() {
        if quant == BaseQuant::Gguf {
            return Err(file_err(
                path,
                "base_quant `gguf` keeps a GGUF file's own blocks, and this is a Hugging Face folder (use nf4, q8_0 or q4_k)",
            ));
        }
        load_hf(path, device, dtype, quant)
    } else {
        load_gguf(path, device, dtype, quant)
    }
}

/// A projection weight given as f32 values, stored as `quant` says (dense in `dtype` where it
/// leaves the weight unquantized).
fn store(values: Vec<f32>, shape: &[usize], quant: BaseQuant, device: &Device, dtype: DType) -> candle_core::Result<Weight> {
    match (shape, quant.format_for(*shape.last().unwrap_or(&0))) {
        ([rows, cols], Some(format)) => QuantWeight::quantize(&values, *rows, *cols, format, device).map(Weight::Quant),
        _ => Tensor::from_vec(values, shape, device)?.to_dtype(dtype).map(Weight::Dense),
    }
}

fn is_projection(spec: &arch::TensorSpec) -> bool {
    matches!(spec.slot, arch::Slot::Layer(_, arch::LayerSlot::Weight(_)))
}

/// Reads only the hyper-parameters.
pub fn config(path: &Path) -> Result<Config, LoadError> {
    if path.is_dir() {
        let p = path.join("config.json");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).map_err(|e| file_err(&p, e))?).map_err(|e| file_err(&p, e))?;
        Config::from_hf_json(&v).map_err(model_err(&p))
    } else {
        let f = GgufFile::open(path).map_err(|e| file_err(path, e))?;
        gguf_config(&f, path)
    }
}

fn gguf_config(f: &GgufFile, path: &Path) -> Result<Config, LoadError> {
    let arch_name = f.get_str("general.architecture").unwrap_or("llama").to_string();
    let arch = Arch::from_gguf_name(&arch_name)
        .ok_or_else(|| model_err(path)(ModelError::UnknownGgufArch { name: arch_name.clone() }))?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let u = |k: &str| {
        f.get_u32(&key(k)).map(|x| x as usize).ok_or_else(|| file_err(path, format!("metadata `{}` is missing", key(k))))
    };
    let hidden = u("embedding_length")?;
    let heads = u("attention.head_count")?;
    for k in ["attention.head_count", "attention.head_count_kv"] {
        if f.get_u32(&key(k)) == Some(0) {
            return Err(model_err(path)(ModelError::ZeroHeads { key: key(k) }));
        }
    }
    let vocab = f
        .get_u32(&key("vocab_size"))
        .map(|x| x as usize)
        .or_else(|| f.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map(|a| a.len()))
        .ok_or_else(|| file_err(path, "cannot tell the vocabulary size"))?;
    // llama.cpp: the head size is `attention.key_length` (default hidden / heads), and RoPE
    // turns `rope.dimension_count` of its dimensions (default all of them).
    let opt = |k: &str| f.get_u32(&key(k)).map(|x| x as usize);
    let rotated = opt("rope.dimension_count");
    let head_dim = opt("attention.key_length").or(rotated).unwrap_or(hidden / heads);
    if let Some(rotated) = rotated.filter(|&r| r != head_dim) {
        return Err(model_err(path)(ModelError::PartialRotary { rotated, head_dim }));
    }
    let rope_scaling = match f.get_str(&key("rope.scaling.type")) {
        Some(kind @ ("linear" | "yarn")) => {
            return Err(model_err(path)(ModelError::UnsupportedRopeScaling { kind: kind.to_string() }))
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
        rope_freq_factors: rope_freq_factors(f, path, head_dim)?,
        rms_norm_eps: f64::from(f.get_f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5)),
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        max_position_embeddings: f.get_u32(&key("context_length")).map(|x| x as usize).unwrap_or(2048),
    })
}

/// The per-dimension RoPE frequency factors of a Llama 3.1 style GGUF (`rope_freqs.weight`, one
/// f32 per rotated pair; llama.cpp's converter computes them from the Llama 3 scaling of
/// config.json and leaves `rope.scaling.type` unset). llama.cpp divides each pair's base frequency
/// by its factor ([`Config::inv_freq`] does the same) and reads only the first `head_dim / 2`.
fn rope_freq_factors(f: &GgufFile, path: &Path, head_dim: usize) -> Result<Option<Vec<f32>>, LoadError> {
    let Some(t) = f.tensor("rope_freqs.weight") else { return Ok(None) };
    let kind = GgmlKind::from_id(t.ggml_type.id())
        .ok_or_else(|| file_err(path, format!("`rope_freqs.weight` has type {}, which pipe cannot read", t.ggml_type)))?;
    let n = t.n_elements() as usize;
    if n < head_dim / 2 {
        return Err(file_err(path, format!("`rope_freqs.weight` has {n} factors, the model rotates {} pairs", head_dim / 2)));
    }
    let bytes = f.tensor_bytes(t).map_err(|e| file_err(path, e))?;
    let mut factors = dequantize(kind, &bytes, n).map_err(|e| file_err(path, format!("`rope_freqs.weight`: {e}")))?;
    factors.truncate(head_dim / 2);
    if let Some(bad) = factors.iter().find(|x| !x.is_finite() || **x <= 0.0) {
        return Err(file_err(path, format!("`rope_freqs.weight` holds {bad}, a frequency factor must be positive")));
    }
    Ok(Some(factors))
}

fn load_gguf(path: &Path, device: &Device, dtype: DType, quant: BaseQuant) -> Result<Model, LoadError> {
    let f = GgufFile::open(path).map_err(|e| file_err(path, e))?;
    let cfg = gguf_config(&f, path)?;
    // The model's tensors by llama.cpp name; the file's others (`rope_freqs.weight`) are not
    // weights of a block.
    let specs: HashMap<String, arch::TensorSpec> = arch::tensors(&cfg).into_iter().map(|s| (s.gguf.clone(), s)).collect();
    let mut tensors = HashMap::new();
    for t in &f.tensors {
        let Some(spec) = specs.get(&t.name) else { continue };
        let kind = GgmlKind::from_id(t.ggml_type.id()).ok_or_else(|| {
            model_err(path)(ModelError::UnsupportedTensorType { name: t.name.clone(), ty: t.ggml_type.to_string() })
        })?;
        let n = t.n_elements() as usize;
        let bytes = f.tensor_bytes(t).map_err(|e| file_err(path, e))?;
        // GGUF dims are innermost-first: [cols, rows].
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let permuted = spec.gguf_permute_heads(&cfg);
        let tensor_err = |e: candle_core::Error| file_err(path, format!("tensor `{}`: {e}", t.name));
        let blocks = !matches!(kind, GgmlKind::F32 | GgmlKind::F16 | GgmlKind::BF16);
        let weight = match (quant, shape.as_slice()) {
            (BaseQuant::Gguf, &[rows, cols]) if blocks && is_projection(spec) => {
                let mut bytes = bytes;
                if let Some(heads) = permuted {
                    let row_bytes = bytes.len() / rows.max(1);
                    bytes = unpermute(&bytes, rows, row_bytes, heads);
                }
                Weight::Quant(QuantWeight::from_ggml(kind, bytes, rows, cols, device).map_err(tensor_err)?)
            }
            _ => {
                let mut data = dequantize(kind, &bytes, n).map_err(|e| file_err(path, format!("tensor `{}`: {e}", t.name)))?;
                if let (Some(heads), [rows, cols]) = (permuted, shape.as_slice()) {
                    data = unpermute(&data, *rows, *cols, heads);
                }
                let q = if is_projection(spec) && quant != BaseQuant::Gguf { quant } else { BaseQuant::None };
                store(data, &shape, q, device, dtype).map_err(tensor_err)?
            }
        };
        tensors.insert(spec.hf.clone(), weight);
    }
    Model::from_hf_weights(cfg, tensors, device, dtype).map_err(model_err(path))
}

fn load_hf(dir: &Path, device: &Device, dtype: DType, quant: BaseQuant) -> Result<Model, LoadError> {
    let cfg = config(dir)?;
    let mut tensors = HashMap::new();
    if quant == BaseQuant::None {
        for f in safetensors::weight_files(dir)? {
            tensors.extend(read_safetensors(&f, device)?.into_iter().map(|(k, v)| (k, Weight::Dense(v))));
        }
        return Model::from_hf_weights(cfg, tensors, device, dtype).map_err(model_err(dir));
    }
    // Read on the host, quantize the projections there, and move only what is kept to the device.
    let projections: std::collections::HashSet<String> =
        arch::tensors(&cfg).into_iter().filter(is_projection).map(|s| s.hf).collect();
    for f in safetensors::weight_files(dir)? {
        for (name, t) in read_safetensors(&f, &Device::Cpu)? {
            let tensor_err = |e: candle_core::Error| file_err(&f, format!("tensor `{name}`: {e}"));
            let w = if projections.contains(&name) {
                let shape = t.dims().to_vec();
                let values: Vec<f32> = t.to_dtype(DType::F32).and_then(|t| t.flatten_all()?.to_vec1()).map_err(tensor_err)?;
                store(values, &shape, quant, device, dtype).map_err(tensor_err)?
            } else {
                Weight::Dense(t.to_device(device).map_err(tensor_err)?)
            };
            tensors.insert(name, w);
        }
    }
    Model::from_hf_weights(cfg, tensors, device, dtype).map_err(model_err(dir))
}

/// Reads one safetensors file tensor by tensor, each straight into the buffer its tensor keeps.
///
/// candle's `safetensors::load` reads the whole file into one buffer and then copies every
/// tensor out of it: twice the weights in freshly touched memory. On the 2-core VM of
/// BENCHMARKS.md the kernel zeroing fresh pages was most of an export's time (about 70% of an
/// F16 export of the default model, a third of it that buffer). Here a small staging buffer
/// carries the bytes from the page cache into each tensor's own `Vec`. The values are the
/// same bits. A file holding a dtype other than F32, F16 or BF16 goes through candle's loader.
fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, LoadError> {
    use std::io::{Seek, SeekFrom};
    let ferr = |e: std::io::Error| file_err(path, e);
    let mut file = std::fs::File::open(path).map_err(ferr)?;
    let Some(entries) = safetensors::read_index(&mut file, path)? else {
        return candle_core::safetensors::load(path, device).map_err(|e| file_err(path, e));
    };
    let mut stage = vec![0u8; 1 << 18];
    let mut at = None;
    let mut out = HashMap::with_capacity(entries.len());
    for e in entries {
        if at != Some(e.offset) {
            file.seek(SeekFrom::Start(e.offset)).map_err(ferr)?;
        }
        let count = e.shape.iter().product::<usize>();
        let shape = e.shape.clone();
        let t = match e.dtype {
            DType::F32 => {
                Tensor::from_vec(read_values(&mut file, count, &mut stage, f32::from_le_bytes).map_err(ferr)?, shape, device)
            }
            DType::F16 => Tensor::from_vec(
                read_values(&mut file, count, &mut stage, |b| half::f16::from_bits(u16::from_le_bytes(b))).map_err(ferr)?,
                shape,
                device,
            ),
            _ => Tensor::from_vec(
                read_values(&mut file, count, &mut stage, |b| half::bf16::from_bits(u16::from_le_bytes(b))).map_err(ferr)?,
                shape,
                device,
            ),
        }
        .map_err(|err| file_err(path, format!("tensor `{}`: {err}", e.name)))?;
        at = Some(e.offset + e.byte_len() as u64);
        out.insert(e.name, t);
    }
    Ok(out)
}

/// Reads `count` little-endian values of `N` bytes each through `stage`.
fn read_values<T, const N: usize>(
    r: &mut impl std::io::Read,
    count: usize,
    stage: &mut [u8],
    conv: impl Fn([u8; N]) -> T,
) -> std::io::Result<Vec<T>> {
    let mut out = Vec::with_capacity(count);
    let per = stage.len() / N;
    let mut left = count;
    while left > 0 {
        let k = left.min(per);
        let buf = &mut stage[..k * N];
        r.read_exact(buf)?;
        out.extend(buf.chunks_exact(N).map(|c| conv(c.try_into().expect("chunks of N bytes"))));
        left -= k;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::gguf::writer::{write_file, TensorPlan};
    use crate::gguf::{GgmlType, GgufValue};
    use crate::model::gguf_order::permute;

    /// Writes `model` as an f32 llama GGUF the way llama.cpp's converter would (names, Q/K row
    /// order, metadata), with `rope_freqs.weight` when `factors` is given.
    fn write_tiny_gguf(path: &Path, model: &Model, factors: Option<&[f32]>) {
        write_gguf_with(path, model, factors, llama_kvs(&model.cfg));
    }

    /// The `llama.*` metadata llama.cpp's converter writes for a model of `c`.
    fn llama_kvs(c: &Config) -> Vec<(String, GgufValue)> {
        let u = |x: usize| GgufValue::U32(x as u32);
        vec![
            ("general.architecture".into(), GgufValue::String("llama".into())),
            ("llama.vocab_size".into(), u(c.vocab_size)),
            ("llama.embedding_length".into(), u(c.hidden_size)),
            ("llama.feed_forward_length".into(), u(c.intermediate_size)),
            ("llama.block_count".into(), u(c.num_layers)),
            ("llama.attention.head_count".into(), u(c.num_heads)),
            ("llama.attention.head_count_kv".into(), u(c.num_kv_heads)),
            ("llama.rope.dimension_count".into(), u(c.head_dim)),
            ("llama.context_length".into(), u(c.max_position_embeddings)),
            ("llama.rope.freq_base".into(), GgufValue::F32(c.rope_theta as f32)),
            ("llama.attention.layer_norm_rms_epsilon".into(), GgufValue::F32(c.rms_norm_eps as f32)),
        ]
    }

    /// Writes `model` as an f32 GGUF with the metadata `kvs` (see [`write_tiny_gguf`]).
    fn write_gguf_with(path: &Path, model: &Model, factors: Option<&[f32]>, kvs: Vec<(String, GgufValue)>) {
        let c = &model.cfg;
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = model
            .named_tensors()
            .into_iter()
            .map(|(spec, t)| {
                let shape = t.dims().to_vec();
                let mut data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                if let Some(heads) = spec.gguf_permute_heads(c) {
                    data = permute(&data, shape[0], shape[1], heads);
                }
                (spec.gguf, shape, data)
            })
            .collect();
        if let Some(f) = factors {
            tensors.push(("rope_freqs.weight".into(), vec![f.len()], f.to_vec()));
        }
        let plans: Vec<TensorPlan> = tensors
            .iter()
            .map(|(name, shape, _)| TensorPlan { name: name.clone(), shape: shape.clone(), ty: GgmlType::F32 })
            .collect();
        write_file(path, &kvs, &plans, |i, sink| {
            sink.write(&tensors[i].2.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
        })
        .unwrap();
    }

    fn logits(model: &Model, ids: &[u32]) -> Vec<f32> {
        let mut cache = crate::model::llama::KvCache::new(model.cfg.num_layers);
        model.forward_infer(ids, &mut cache).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Llama 3.1's factors as llama.cpp's converter computes them (`LlamaModel.generate_extra_tensors`).
    fn llama31_factors(cfg: &Config) -> Vec<f32> {
        let (factor, low, high, orig) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
        (0..cfg.head_dim / 2)
            .map(|i| {
                let freq = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < orig / high {
                    1.0
                } else if wavelen > orig / low {
                    factor as f32
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect()
    }

    /// A GGUF with `rope_freqs.weight` loads (it used to be refused): factors of 1.0 give exactly
    /// the logits of no factors, Llama 3.1's factors reach the config and change the logits, and
    /// `merge` can express them in config.json as the llama3 scaling they came from.
    #[test]
    fn gguf_rope_freq_factors_load_and_all_ones_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // head_dim 64, theta 500000 (Llama 3.1's): 32 pairs with wavelengths from 6 to ~1.6e6,
        // three of them between Llama 3.1's bounds 2048 and 8192.
        let cfg = Config { rope_theta: 500000.0, ..Config::tiny(Arch::Llama, 40, 128) };
        let cfg = Config { num_heads: 2, num_kv_heads: 1, head_dim: 64, ..cfg };
        let model = Model::random_with_std(cfg.clone(), 5, 0.3, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..24).map(|i| (i * 7 % 40) as u32).collect();
        let (none, ones, l31) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"), dir.path().join("c.gguf"));
        write_tiny_gguf(&none, &model, None);
        write_tiny_gguf(&ones, &model, Some(&[1.0; 32]));
        let factors = llama31_factors(&cfg);
        assert!(factors.iter().any(|&f| f > 1.0 && f < 8.0), "some pairs must be in the smooth region: {factors:?}");
        write_tiny_gguf(&l31, &model, Some(&factors));
        let (a, b, c) =
            (load(&none, &Device::Cpu).unwrap(), load(&ones, &Device::Cpu).unwrap(), load(&l31, &Device::Cpu).unwrap());
        assert_eq!(a.cfg.rope_freq_factors, None);
        assert_eq!(c.cfg.rope_freq_factors.as_deref(), Some(&factors[..]));
        assert_eq!(config(&l31).unwrap(), c.cfg, "config() reads the factors too");
        assert_eq!(logits(&a, &ids), logits(&model, &ids), "the GGUF round trip is exact");
        assert_eq!(logits(&b, &ids), logits(&a, &ids), "factors of 1.0 must equal no factors");
        let (la, lc) = (logits(&a, &ids), logits(&c, &ids));
        assert!(la.iter().zip(&lc).any(|(x, y)| (x - y).abs() > 1e-3), "Llama 3.1 factors must change the logits");
        // For a Hugging Face config.json: the llama3 scaling the factors came from.
        let fit = c.cfg.hf_rope_scaling().unwrap().expect("a llama3 scaling");
        assert_eq!((fit.factor, fit.original_max_position_embeddings), (8.0, 8192));
        assert!((fit.low_freq_factor - 1.0).abs() < 1e-9 && (fit.high_freq_factor - 4.0).abs() < 1e-3, "{fit:?}");
        let hf = Config { rope_freq_factors: None, rope_scaling: Some(fit), ..c.cfg.clone() };
        for (x, y) in hf.inv_freq().iter().zip(c.cfg.inv_freq()) {
            assert!((x - y).abs() <= 1e-6 * y, "{x} vs {y}");
        }
        assert_eq!(b.cfg.hf_rope_scaling().unwrap(), None);
        let odd = Config { rope_freq_factors: Some((0..32).map(|i| 1.0 + (i % 3) as f32).collect()), ..cfg };
        assert!(odd.hf_rope_scaling().is_err(), "factors that are no llama3 scaling cannot go into config.json");
    }

    /// The head size is `attention.key_length` when the file has it (llama.cpp's converter
    /// writes it, and no `rope.dimension_count`, for models whose config.json gives `head_dim`),
    /// and a RoPE over part of each head is refused rather than misread.
    /// `base_quant: gguf` keeps a Q8_0 GGUF's projection blocks as stored (Q/K rows moved whole,
    /// blocks and all) and computes exactly what the dequantized load computes; nf4 quantizes
    /// the dequantized values. A Hugging Face folder has no blocks to keep.
    #[test]
    fn gguf_base_quant_keeps_the_files_blocks_and_equals_the_dense_load() {
        use crate::gguf::quantize::quantize;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config { intermediate_size: 64, ..Config::tiny(Arch::Llama, 40, 32) };
        let model = Model::random_with_std(cfg.clone(), 3, 0.2, &Device::Cpu).unwrap();
        let tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)> = model
            .named_tensors()
            .into_iter()
            .map(|(spec, t)| {
                let shape = t.dims().to_vec();
                let mut data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                if let Some(heads) = spec.gguf_permute_heads(&cfg) {
                    data = permute(&data, shape[0], shape[1], heads);
                }
                if is_projection(&spec) {
                    (spec.gguf, shape.clone(), GgmlType::Q8_0, quantize(GgmlKind::Q8_0, &data, shape[1]).unwrap())
                } else {
                    (spec.gguf, shape, GgmlType::F32, data.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            })
            .collect();
        let plans: Vec<TensorPlan> =
            tensors.iter().map(|(name, shape, ty, _)| TensorPlan { name: name.clone(), shape: shape.clone(), ty: *ty }).collect();
        let path = dir.path().join("q8.gguf");
        write_file(&path, &llama_kvs(&cfg), &plans, |i, sink| sink.write(&tensors[i].3)).unwrap();

        let dense = load(&path, &Device::Cpu).unwrap();
        let kept = load_with(&path, &Device::Cpu, DType::F32, BaseQuant::Gguf).unwrap();
        let (bytes, n) = kept.quantized_bytes();
        assert_eq!((bytes, n), (GgmlKind::Q8_0.byte_len(2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 64 * 32)).unwrap(), 14));
        let ids = [1, 5, 9, 13, 2, 7];
        assert_eq!(logits(&kept, &ids), logits(&dense, &ids));
        let nf4 = load_with(&path, &Device::Cpu, DType::F32, BaseQuant::Nf4).unwrap();
        assert_eq!(nf4.quantized_bytes().1, 14);
        assert_ne!(logits(&nf4, &ids), logits(&dense, &ids));

        let hf = dir.path().join("hf");
        std::fs::create_dir_all(&hf).unwrap();
        let map: HashMap<String, Tensor> = model.hf_tensors().into_iter().collect();
        candle_core::safetensors::save(&map, hf.join("model.safetensors")).unwrap();
        std::fs::write(hf.join("config.json"), cfg.to_hf_json(None, None, "float32").to_string()).unwrap();
        let e = load_with(&hf, &Device::Cpu, DType::F32, BaseQuant::Gguf).unwrap_err().to_string();
        assert!(e.contains("keeps a GGUF file's own blocks, and this is a Hugging Face folder"), "{e}");
        // nf4 from a folder quantizes the same values as from the GGUF's dequantized f32 tensors
        // (here the folder holds the original f32 weights, the GGUF their Q8_0 blocks).
        let from_hf = load_with(&hf, &Device::Cpu, DType::F32, BaseQuant::Nf4).unwrap();
        let mut twin = model.clone();
        twin.quantize_base(BaseQuant::Nf4).unwrap();
        assert_eq!(logits(&from_hf, &ids), logits(&twin, &ids));
    }

    #[test]
    fn gguf_head_size_is_the_key_length_as_llama_cpp_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        // Heads of 16 on a hidden size of 32: hidden / heads (8) is not the head size.
        let cfg = Config { head_dim: 16, ..Config::tiny(Arch::Llama, 40, 32) };
        let model = Model::random_with_std(cfg.clone(), 3, 0.3, &Device::Cpu).unwrap();
        let with = |kvs: &[(&str, usize)]| {
            let mut all: Vec<(String, GgufValue)> =
                llama_kvs(&cfg).into_iter().filter(|(k, _)| k != "llama.rope.dimension_count").collect();
            all.extend(kvs.iter().map(|(k, v)| (format!("llama.{k}"), GgufValue::U32(*v as u32))));
            let path = dir.path().join(format!("{}.gguf", kvs.len()));
            write_gguf_with(&path, &model, None, all);
            load(&path, &Device::Cpu)
        };
        let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6];
        let loaded = with(&[("attention.key_length", 16), ("attention.value_length", 16)]).unwrap();
        assert_eq!((loaded.cfg.head_dim, loaded.cfg.q_dim()), (16, 64));
        assert_eq!(logits(&loaded, &ids), logits(&model, &ids));
        let e = with(&[("attention.key_length", 16), ("attention.value_length", 16), ("rope.dimension_count", 8)]).unwrap_err();
        assert!(e.to_string().ends_with("RoPE over 8 of each head's 16 dimensions is not supported"), "{e}");
    }

    #[test]
    fn safetensors_read_tensor_by_tensor_equal_candles_loader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..3 * 70).map(|i| ((i as f32) * 0.37).sin() * 1e3).collect();
        let mut map = HashMap::new();
        let f32s = Tensor::from_vec(vals.clone(), (3, 70), &dev).unwrap();
        map.insert("a.weight".to_string(), f32s.clone());
        map.insert("b.bf16".to_string(), f32s.to_dtype(candle_core::DType::BF16).unwrap());
        map.insert("c.f16".to_string(), f32s.narrow(1, 0, 5).unwrap().to_dtype(candle_core::DType::F16).unwrap());
        map.insert("d.scalar".to_string(), Tensor::new(7.5f32, &dev).unwrap());
        candle_core::safetensors::save(&map, &path).unwrap();
        let want = candle_core::safetensors::load(&path, &dev).unwrap();
        let got = read_safetensors(&path, &dev).unwrap();
        assert_eq!(got.len(), want.len());
        for (name, w) in &want {
            let g = &got[name];
            assert_eq!((g.dtype(), g.dims()), (w.dtype(), w.dims()), "{name}");
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(bits(g), bits(w), "{name}");
        }
        // Other dtypes go through candle's loader.
        map.insert("e.u8".to_string(), Tensor::new(&[1u8, 2, 3], &dev).unwrap());
        candle_core::safetensors::save(&map, &path).unwrap();
        let got = read_safetensors(&path, &dev).unwrap();
        assert_eq!(got["e.u8"].to_vec1::<u8>().unwrap(), vec![1, 2, 3]);
        assert_eq!(got["a.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap(), vals);
    }

    #[test]
    fn a_truncated_safetensors_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let t = Tensor::from_vec(vec![1f32; 64], 64, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let e = read_safetensors(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("tensor `w` has data offsets"), "{e}");
        std::fs::write(&path, &bytes[..4]).unwrap();
        assert!(read_safetensors(&path, &Device::Cpu).is_err());
    }

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
