//! `random-model`: a randomly initialised model of a known shape ([`crate::model::arch::PRESETS`]),
//! as a Hugging Face folder around a given tokenizer.
//!
//! Weights cannot be downloaded at run time, so a pipeline that must run at a model's full size
//! without its weights (`pipelines/fortune-7b.yaml`: the tutorial's deepseek-llm-7b settings on
//! one GPU) trains a random model of exactly that shape: the speed, the memory and every step of
//! the pipeline are the real ones, only the answers are noise. Give the real folder instead and
//! nothing else changes.
//!
//! Weights are normal(0, `std`), norms are ones. Element `i` of tensor `t` is a pure function of
//! (seed, t, i) (SplitMix64 and Box-Muller), so the parallel generation is deterministic and the
//! bytes depend only on the parameters. The safetensors file is streamed one tensor at a time: a
//! 7B model needs one tensor's memory (the 0.8 GB embedding), not 14 GB.

use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;

use super::{Accepts, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::model::arch::{self, Init};
use crate::model::config::Config;
use crate::model::rng::{normal, splitmix};
use crate::params::{Default, ParamSpec, ParamType, Params, Value};

/// The `random-model` kind.
pub struct RandomModel;

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "tokenizer",
    required: true,
    accepts: Accepts::FileOrModel,
    doc: "the tokenizer to ship with the model (tokenizer.json, a GGUF file or a model folder); its vocabulary must fit the shape's",
}];

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "shape",
        ty: ParamType::Enum(Config::PRESETS),
        default: Default::Required,
        doc: "a published model's shape (architecture, sizes, RoPE base), or a tiny one for tests (2 layers, hidden 64)",
    },
    ParamSpec {
        name: "layers",
        ty: ParamType::Int { min: 1, max: 1024 },
        default: Default::Null,
        doc: "override the shape's number of decoder blocks",
    },
    ParamSpec {
        name: "vocab",
        ty: ParamType::Int { min: 1, max: 1 << 24 },
        default: Default::Null,
        doc: "override the shape's vocabulary size (at least the tokenizer's)",
    },
    ParamSpec {
        name: "seed",
        ty: ParamType::Int { min: 0, max: i64::MAX },
        default: Default::Int(0),
        doc: "seed of the weights",
    },
    ParamSpec {
        name: "std",
        ty: ParamType::Float { min: 0.0, max: 10.0 },
        default: Default::Float(0.02),
        doc: "standard deviation of the weights (transformers' initializer_range)",
    },
    ParamSpec {
        name: "dtype",
        ty: ParamType::Enum(&["bf16", "f16", "f32"]),
        default: Default::Str("bf16"),
        doc: "dtype of the written weights",
    },
];

/// The model's configuration after the `layers` and `vocab` overrides.
pub fn config(params: &Params) -> Result<Config, (String, String)> {
    let shape = params.str("shape").unwrap_or_default();
    let mut cfg = Config::preset(shape)
        .ok_or_else(|| ("shape".to_string(), format!("unknown shape `{shape}` (one of {})", Config::PRESETS.join(", "))))?;
    if let Value::Int(l) = params.get("layers") {
        cfg.num_layers = *l as usize;
    }
    if let Value::Int(v) = params.get("vocab") {
        cfg.vocab_size = *v as usize;
    }
    Ok(cfg)
}

/// The little-endian bytes of one tensor.
fn tensor_bytes(n: usize, random: bool, seed: u64, std: f64, dtype: &str) -> Vec<u8> {
    let width = if dtype == "f32" { 4 } else { 2 };
    let mut out = vec![0u8; n * width];
    out.par_chunks_mut(width * 16384).enumerate().for_each(|(c, chunk)| {
        for (j, b) in chunk.chunks_mut(width).enumerate() {
            let x = if random { normal(seed, (c * 16384 + j) as u64, std) } else { 1.0 };
            match dtype {
                "f32" => b.copy_from_slice(&x.to_le_bytes()),
                "f16" => b.copy_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                _ => b.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
            }
        }
    });
    out
}

/// Writes `model.safetensors` for `cfg`, one tensor at a time; calls `step` after each tensor.
pub fn write_safetensors(
    path: &Path,
    cfg: &Config,
    seed: u64,
    std: f64,
    dtype: &str,
    mut step: impl FnMut(usize),
) -> std::io::Result<()> {
    let tensors = arch::tensors(cfg);
    let width = if dtype == "f32" { 4 } else { 2 };
    let st_dtype = match dtype {
        "f32" => "F32",
        "f16" => "F16",
        _ => "BF16",
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in &tensors {
        let bytes = t.shape.iter().product::<usize>() * width;
        header.insert(
            t.hf.clone(),
            serde_json::json!({"dtype": st_dtype, "shape": t.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_string(&header).expect("json").into_bytes();
    // The data starts 8-byte aligned, as the safetensors library writes it.
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut w = BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(&json)?;
    for (t, spec) in tensors.iter().enumerate() {
        let n = spec.shape.iter().product::<usize>();
        let random = spec.init == Init::Normal;
        w.write_all(&tensor_bytes(n, random, splitmix(seed ^ splitmix(t as u64 + 1)), std, dtype))?;
        step(t + 1);
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

impl NodeKind for RandomModel {
    fn name(&self) -> &'static str {
        "random-model"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "A randomly initialised model of a known shape (`shape` lists them) as a Hugging Face folder, for full-size runs without the weights."
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self, _params: &Params) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "model",
            dir: true,
            doc: "Hugging Face folder: config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json",
        }]
    }
    fn check_params(&self, params: &Params) -> Result<(), (String, String)> {
        config(params).map(|_| ())
    }

    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError> {
        let cfg = config(ctx.params).map_err(|(param, message)| NodeError::Param { param, message })?;
        let tok_path = ctx.input("tokenizer")?.to_path_buf();
        let out = ctx.output("model");
        std::fs::create_dir_all(&out).map_err(NodeError::io("creating", &out))?;
        crate::tokenizer::save::write_hf_tokenizer(&tok_path, &out)?;
        let tk = crate::tokenizer::load::load(&out)?;
        let n_tok = tk.tokenizer.get_vocab_size(true);
        if n_tok > cfg.vocab_size {
            return Err(NodeError::Param {
                param: "vocab".into(),
                message: format!(
                    "the tokenizer {} has {n_tok} tokens, more than the model's vocabulary of {} (set it to at least {n_tok})",
                    tok_path.display(),
                    cfg.vocab_size
                ),
            });
        }
        let dtype = ctx.params.str("dtype").unwrap_or("bf16").to_string();
        let torch_dtype = match dtype.as_str() {
            "f32" => "float32",
            "f16" => "float16",
            _ => "bfloat16",
        };
        let (bos, eos) = (tk.bos.as_ref().map(|b| b.0), tk.eos.as_ref().map(|e| e.0));
        let write_json = |name: &str, v: &serde_json::Value| {
            let p = out.join(name);
            std::fs::write(&p, serde_json::to_string_pretty(v).expect("json")).map_err(NodeError::io("writing", &p))
        };
        write_json("config.json", &cfg.to_hf_json(bos, eos, torch_dtype))?;
        if !out.join("generation_config.json").exists() {
            write_json(
                "generation_config.json",
                &serde_json::json!({"bos_token_id": bos, "eos_token_id": eos, "do_sample": false}),
            )?;
        }
        let tensors = arch::tensors(&cfg);
        let n_tensors = tensors.len();
        let params: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
        ctx.log(format!("{} tensors, {params} parameters, {dtype}", n_tensors));
        ctx.progress.start(Some(n_tensors as u64), "tensors");
        let progress = ctx.progress.clone();
        let seed = ctx.params.int("seed") as u64;
        let st = out.join("model.safetensors");
        write_safetensors(&st, &cfg, seed, ctx.params.float("std"), &dtype, |t| progress.update(t as u64, None))
            .map_err(NodeError::io("writing", &st))?;
        let shape = ctx.params.str("shape").unwrap_or_default().to_string();
        let size =
            if params >= 1_000_000_000 { format!("{:.2}B", params as f64 / 1e9) } else { format!("{:.2}M", params as f64 / 1e6) };
        ctx.set_summary(format!("{shape}: {} layers, {size} parameters, {dtype}, seed {seed}", cfg.num_layers));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_written_file_loads_and_is_a_pure_function_of_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::preset("tiny").unwrap();
        cfg.num_layers = 3;
        let write = |name: &str, seed: u64| {
            let p = dir.path().join(name);
            write_safetensors(&p, &cfg, seed, 0.02, "bf16", |_| {}).unwrap();
            std::fs::read(&p).unwrap()
        };
        let (a, b, c) = (write("a", 7), write("b", 7), write("c", 8));
        assert_eq!(a, b, "same seed, same bytes");
        assert_ne!(a, c, "another seed, other weights");
        let tensors = candle_core::safetensors::load(dir.path().join("a"), &Device::Cpu).unwrap();
        assert_eq!(tensors.len(), arch::tensors(&cfg).len());
        let emb = tensors["model.embed_tokens.weight"].to_dtype(candle_core::DType::F32).unwrap();
        assert_eq!(emb.dims(), &[512, 64]);
        let v = emb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3 && (sd - 0.02).abs() < 1e-3, "normal(0, 0.02): mean {mean}, sd {sd}");
        let norm = tensors["model.layers.2.input_layernorm.weight"].to_dtype(candle_core::DType::F32).unwrap();
        assert!(norm.to_vec1::<f32>().unwrap().iter().all(|&x| x == 1.0));
    }

    #[test]
    fn presets_have_the_published_shapes() {
        let d = Config::preset("deepseek-llm-7b").unwrap();
        assert_eq!((d.num_layers, d.hidden_size, d.intermediate_size, d.vocab_size), (30, 4096, 11008, 102400));
        let count = |c: &Config| arch::tensors(c).iter().map(|t| t.shape.iter().product::<usize>()).sum::<usize>();
        let n = count(&d);
        assert_eq!(n, 6_910_365_696, "deepseek-llm-7b's parameter count");
        let s = Config::preset("smollm2-135m").unwrap();
        let n = count(&s);
        assert_eq!(n, 134_515_008, "SmolLM2-135M's parameter count");
    }
}
