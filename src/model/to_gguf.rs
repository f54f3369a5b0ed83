//! A model as llama.cpp expects it in a GGUF file: architecture metadata and f32 tensors under
//! llama.cpp names, in llama.cpp row order.
//!
//! What `convert_hf_to_gguf.py` writes for every architecture pipe runs, key for key:
//!
//! | key (`{arch}` is the architecture's llama.cpp name) | from |
//! |---|---|
//! | `general.architecture` | [`ArchSpec::gguf_name`](super::arch::ArchSpec::gguf_name) |
//! | `{arch}.context_length` | `max_position_embeddings` |
//! | `{arch}.embedding_length` / `feed_forward_length` / `block_count` | hidden / MLP size, layers |
//! | `{arch}.attention.head_count` / `head_count_kv` | query / key-value heads |
//! | `{arch}.rope.freq_base` / `rope.dimension_count` | RoPE base, head size |
//! | `{arch}.attention.layer_norm_rms_epsilon` | RMSNorm epsilon |
//! | `{arch}.attention.key_length` / `value_length` | head size, only when it is not hidden / heads |
//! | `{arch}.vocab_size` | vocabulary size |
//!
//! Llama 3 RoPE scaling is written as llama.cpp does: a `rope_freqs.weight` tensor of
//! per-frequency factors, not as metadata. Tied embeddings are written once, as
//! `token_embd.weight`, with no `output.weight` (llama.cpp ties them back on load). Which
//! tensors there are, their llama.cpp names and which ones have their rows permuted is the
//! tensor list's ([`super::arch::tensors`]).

use candle_core::{CpuStorage, Result, Storage, StorageRef, Tensor};

use super::arch::{self, TensorSpec};
use super::config::Config;
use super::error::ModelError;
use super::gguf_order::permute;
use super::llama::Model;
use super::load::{model_err, LoadError};
use super::safetensors::{self, MappedTensor};
use crate::gguf::GgufValue;

/// The `{arch}.*` hyper-parameter metadata (plus `general.architecture`).
pub fn arch_metadata(cfg: &Config) -> Vec<(String, GgufValue)> {
    let a = cfg.arch.spec().gguf_name;
    let u = |v: usize| GgufValue::U32(v as u32);
    let mut kv = vec![
        ("general.architecture".to_string(), GgufValue::String(a.into())),
        (format!("{a}.context_length"), u(cfg.max_position_embeddings)),
        (format!("{a}.embedding_length"), u(cfg.hidden_size)),
        (format!("{a}.feed_forward_length"), u(cfg.intermediate_size)),
        (format!("{a}.block_count"), u(cfg.num_layers)),
        (format!("{a}.attention.head_count"), u(cfg.num_heads)),
        (format!("{a}.attention.head_count_kv"), u(cfg.num_kv_heads)),
        (format!("{a}.rope.freq_base"), GgufValue::F32(cfg.rope_theta as f32)),
        (format!("{a}.rope.dimension_count"), u(cfg.head_dim)),
        (format!("{a}.attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg.rms_norm_eps as f32)),
        (format!("{a}.vocab_size"), u(cfg.vocab_size)),
    ];
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size {
        kv.push((format!("{a}.attention.key_length"), u(cfg.head_dim)));
        kv.push((format!("{a}.attention.value_length"), u(cfg.head_dim)));
    }
    kv
}

/// Llama 3 RoPE frequency factors, computed as `LlamaModel.generate_extra_tensors` in
/// llama.cpp's converter does (float32 base frequencies, float64 arithmetic).
pub fn rope_factors(cfg: &Config) -> Option<Vec<f32>> {
    let s = cfg.rope_scaling?;
    let dim = cfg.head_dim;
    let old = s.original_max_position_embeddings as f64;
    let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
    let factors = (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = f64::from(1.0f32 / (cfg.rope_theta as f32).powf(i as f32 / dim as f32));
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor as f32
            } else {
                let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 / ((1.0 - smooth) / s.factor + smooth)) as f32
            }
        })
        .collect();
    Some(factors)
}

/// One tensor to export: its GGUF name, row-major shape, and where its values come from.
#[derive(Debug, Clone)]
pub struct ExportTensor {
    /// llama.cpp name.
    pub name: String,
    /// Row-major shape (`[out, in]` for projections).
    pub shape: Vec<usize>,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// A model tensor, with the number of heads when its rows need llama.cpp's Q/K permutation.
    Model { tensor: Tensor, permute_heads: Option<usize> },
    /// Values computed here (`rope_freqs.weight`).
    Values(Vec<f32>),
    /// A tensor of a memory-mapped safetensors file, with the heads to permute as above.
    Mapped { tensor: MappedTensor, permute_heads: Option<usize> },
}

/// An export tensor's values in llama.cpp order (see [`ExportTensor::values`]): a slice.
///
/// Borrowed from the model's own storage when the tensor is a contiguous f32 tensor on the CPU
/// and needs no reordering (holding a read lock on that storage until dropped), or from a
/// mapped safetensors file when it holds them as aligned f32 in that order; otherwise owned.
/// Borrowing spares a copy of every tensor into freshly allocated memory, which an export of a
/// whole model into a new process pays for in page faults (see BENCHMARKS.md, Export).
pub struct Values<'a>(ValuesInner<'a>);

enum ValuesInner<'a> {
    Owned(Vec<f32>),
    Slice(&'a [f32]),
    /// A contiguous f32 CPU tensor's storage and the range of its values in it.
    Storage {
        storage: StorageRef<'a>,
        start: usize,
        end: usize,
    },
}

impl std::ops::Deref for Values<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.0 {
            ValuesInner::Owned(v) => v,
            ValuesInner::Slice(v) => v,
            ValuesInner::Storage { storage, start, end } => match &**storage {
                Storage::Cpu(CpuStorage::F32(v)) => &v[*start..*end],
                _ => unreachable!("only f32 CPU storage is borrowed"),
            },
        }
    }
}

impl std::fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq<Vec<f32>> for Values<'_> {
    fn eq(&self, other: &Vec<f32>) -> bool {
        **self == **other
    }
}

impl ExportTensor {
    /// The values in llama.cpp order, as f32: borrowed where the model's storage already holds
    /// them so (see [`Values`]).
    pub fn values(&self) -> Result<Values<'_>> {
        let (tensor, permute_heads) = match &self.source {
            Source::Values(v) => return Ok(Values(ValuesInner::Slice(v))),
            Source::Model { tensor, permute_heads } => (tensor, *permute_heads),
            Source::Mapped { tensor, permute_heads } => {
                return Ok(Values(match (tensor.as_f32(), permute_heads) {
                    (Some(v), None) => ValuesInner::Slice(v),
                    (Some(v), Some(h)) => ValuesInner::Owned(permute(v, self.shape[0], self.shape[1], *h)),
                    (None, None) => ValuesInner::Owned(tensor.to_f32()),
                    (None, Some(h)) => ValuesInner::Owned(permute(&tensor.to_f32(), self.shape[0], self.shape[1], *h)),
                }));
            }
        };
        let (storage, layout) = tensor.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(Values(match permute_heads {
                Some(h) => ValuesInner::Owned(permute(&v[start..end], self.shape[0], self.shape[1], h)),
                None => ValuesInner::Storage { storage, start, end },
            }));
        }
        drop(storage);
        let v: Vec<f32> = tensor.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Values(ValuesInner::Owned(match permute_heads {
            Some(h) => permute(&v, self.shape[0], self.shape[1], h),
            None => v,
        })))
    }
}

/// Every tensor of `model` under its llama.cpp name, in the converter's order (embedding, the
/// blocks, final norm, output head), preceded by `rope_freqs.weight` when the model has Llama 3
/// RoPE scaling.
pub fn tensors(model: &Model) -> Vec<ExportTensor> {
    let named = model.named_tensors().into_iter().map(|(spec, tensor)| (spec, tensor.dims().to_vec(), tensor));
    build(&model.cfg, named, |tensor, permute_heads| Source::Model { tensor, permute_heads })
}

/// The tensors [`tensors`] gives for the model of `cfg` in the Hugging Face folder `dir`, in
/// the same order with the same values, without loading the model: each is read from the
/// memory-mapped safetensors files when its values are asked for (in place when the file
/// holds them as f32 in llama.cpp's order). `Ok(None)` when a file holds a dtype other than
/// F32, F16 or BF16 (load the model instead).
pub fn tensors_from_folder(dir: &std::path::Path, cfg: &Config) -> std::result::Result<Option<Vec<ExportTensor>>, LoadError> {
    let Some(mut files) = safetensors::map_folder(dir)? else { return Ok(None) };
    let mut mapped = Vec::new();
    for spec in arch::tensors(cfg) {
        let t = files.remove(&spec.hf).ok_or_else(|| model_err(dir)(ModelError::MissingTensor { name: spec.hf.clone() }))?;
        if t.shape() != spec.shape {
            let (got, want) = (t.shape().to_vec(), spec.shape.clone());
            return Err(model_err(dir)(ModelError::ShapeMismatch { name: spec.hf, got, want }));
        }
        mapped.push((spec, t.shape().to_vec(), t));
    }
    Ok(Some(build(cfg, mapped, |tensor, permute_heads| Source::Mapped { tensor, permute_heads })))
}

/// The export tensors for a model of `cfg` with the tensors `named` (entry of the tensor
/// list, shape, source), in the list's order.
fn build<T>(
    cfg: &Config,
    named: impl IntoIterator<Item = (TensorSpec, Vec<usize>, T)>,
    source: impl Fn(T, Option<usize>) -> Source,
) -> Vec<ExportTensor> {
    let mut out = Vec::new();
    if let Some(f) = rope_factors(cfg) {
        out.push(ExportTensor { name: "rope_freqs.weight".into(), shape: vec![f.len()], source: Source::Values(f) });
    }
    for (spec, shape, tensor) in named {
        let permute_heads = spec.gguf_permute_heads(cfg);
        out.push(ExportTensor { name: spec.gguf, shape, source: source(tensor, permute_heads) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, RopeScaling};
    use candle_core::Device;

    #[test]
    fn values_are_the_same_borrowed_offset_strided_converted_and_permuted() {
        let dev = Device::Cpu;
        let plain = Tensor::arange(0f32, 96., &dev).unwrap().reshape((8, 12)).unwrap();
        let cases = [
            ("contiguous", plain.clone(), true),
            ("offset", Tensor::arange(-96f32, 96., &dev).unwrap().reshape((16, 12)).unwrap().narrow(0, 8, 8).unwrap(), true),
            ("strided", plain.t().unwrap().contiguous().unwrap().t().unwrap(), false),
            ("bf16", plain.to_dtype(candle_core::DType::BF16).unwrap(), false),
        ];
        let want: Vec<f32> = plain.flatten_all().unwrap().to_vec1().unwrap();
        for (what, tensor, borrowed) in cases {
            for heads in [None, Some(2)] {
                let e = ExportTensor {
                    name: "w".into(),
                    shape: vec![8, 12],
                    source: Source::Model { tensor: tensor.clone(), permute_heads: heads },
                };
                let v = e.values().unwrap();
                let want = heads.map_or(want.clone(), |h| permute(&want, 8, 12, h));
                assert_eq!(v, want, "{what} {heads:?}");
                let is_borrowed = matches!(v.0, ValuesInner::Storage { .. });
                assert_eq!(is_borrowed, borrowed && heads.is_none(), "{what} {heads:?}");
            }
        }
    }

    #[test]
    fn tied_llama_has_no_output_tensor_and_permutes_only_q_and_k_weights() {
        let cfg = Config::tiny(Arch::Llama, 64, 32);
        let model = Model::random(cfg.clone(), 1, &Device::Cpu).unwrap();
        let t = tensors(&model);
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names[0], "token_embd.weight");
        assert!(!names.contains(&"output.weight"));
        assert_eq!(*names.last().unwrap(), "output_norm.weight");
        assert_eq!(names.len(), 1 + cfg.num_layers * 9 + 1);
        let q = t.iter().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
        let hf: Vec<f32> = model.layers[0].q.w.as_dense().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(q.values().unwrap(), permute(&hf, cfg.q_dim(), cfg.hidden_size, cfg.num_heads));
        let v = t.iter().find(|t| t.name == "blk.0.attn_v.weight").unwrap();
        assert_eq!(v.values().unwrap(), model.layers[0].v.w.as_dense().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn qwen2_keeps_hugging_face_row_order_and_writes_biases() {
        let cfg = Config::tiny(Arch::Qwen2, 64, 32);
        let model = Model::random(cfg, 1, &Device::Cpu).unwrap();
        let t = tensors(&model);
        assert!(t.iter().any(|t| t.name == "blk.1.attn_q.bias"));
        assert!(t.iter().any(|t| t.name == "output.weight"));
        let q = t.iter().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
        assert_eq!(q.values().unwrap(), model.layers[0].q.w.as_dense().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let meta = arch_metadata(&model.cfg);
        assert_eq!(meta[0].1, GgufValue::String("qwen2".into()));
        assert!(meta.iter().any(|(k, v)| k == "qwen2.attention.head_count_kv" && *v == GgufValue::U32(2)));
    }

    /// Qwen3: the q/k norms under llama.cpp's names, nothing permuted, no biases, and the head
    /// size written because heads x head size is not the hidden size.
    #[test]
    fn qwen3_writes_its_head_norms_and_head_size() {
        let cfg = Config { head_dim: 16, ..Config::tiny(Arch::Qwen3, 64, 32) };
        let mut model = Model::random(cfg.clone(), 1, &Device::Cpu).unwrap();
        let w: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 / 16.0).collect();
        model.layers[1].k_norm = Some(Tensor::from_vec(w.clone(), 16, &Device::Cpu).unwrap());
        let t = tensors(&model);
        let norm = t.iter().find(|t| t.name == "blk.1.attn_k_norm.weight").unwrap();
        assert_eq!(norm.shape, [16]);
        assert_eq!(norm.values().unwrap(), w);
        assert!(t.iter().any(|t| t.name == "blk.0.attn_q_norm.weight"));
        assert!(!t.iter().any(|t| t.name.ends_with(".bias")));
        let q = t.iter().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
        assert_eq!(q.shape, [64, 32]);
        assert_eq!(q.values().unwrap(), model.layers[0].q.w.as_dense().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let meta = arch_metadata(&cfg);
        assert_eq!(meta[0].1, GgufValue::String("qwen3".into()));
        for key in ["qwen3.attention.key_length", "qwen3.attention.value_length", "qwen3.rope.dimension_count"] {
            assert!(meta.iter().any(|(k, v)| k == key && *v == GgufValue::U32(16)), "{key}");
        }
    }

    #[test]
    fn rope_factors_divide_the_scaled_frequencies_back_out() {
        let mut cfg = Config::tiny(Arch::Llama, 64, 128);
        cfg.rope_theta = 500000.0;
        cfg.rope_scaling = Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let f = rope_factors(&cfg).unwrap();
        let scaled = cfg.inv_freq();
        cfg.rope_scaling = None;
        let plain = cfg.inv_freq();
        assert_eq!(f.len(), plain.len());
        for i in 0..f.len() {
            let r = plain[i] / f[i];
            assert!((r - scaled[i]).abs() <= 1e-5 * scaled[i].abs(), "{i}: {r} vs {}", scaled[i]);
        }
        assert_eq!(f[0], 1.0);
        assert_eq!(*f.last().unwrap(), 8.0);
    }
}
