//! `merge`: fold a LoRA adapter into the base weights and write a Hugging Face model folder
//! (without an adapter: convert the base, e.g. a GGUF file, to a Hugging Face folder).
//!
//! The folder holds `config.json`, `model.safetensors` (sharded with an index above
//! `shard_size_mb`), `generation_config.json`, and the tokenizer: `tokenizer.json` and
//! `tokenizer_config.json` (with the chat template and special tokens), taken from the base model
//! (built from GGUF metadata when the base is a GGUF file). It loads with
//! `AutoModelForCausalLM.from_pretrained(folder)`, and in pipe as a model input.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::{Accepts, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::model::base_quant::BaseQuant;
use crate::model::{load, peft};
use crate::params::{Default, ParamSpec, ParamType, Params};
use crate::tokenizer::load::load as load_tokenizer;
use crate::tokenizer::save::write_hf_tokenizer;

/// The `merge` kind.
pub struct Merge;

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        accepts: Accepts::Model,
        doc: "the base model (GGUF file, Hugging Face folder, or source)",
    },
    InputSpec {
        name: "adapter",
        required: false,
        accepts: Accepts::Model,
        doc: "a LoRA adapter folder in peft's format (lora-train's `adapter`, or one trained by peft); without it, the base is converted as is",
    },
];

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "dtype",
        ty: ParamType::Enum(&["f32", "bf16", "f16"]),
        default: Default::Str("f32"),
        doc: "dtype of the written weights",
    },
    ParamSpec {
        name: "shard_size_mb",
        ty: ParamType::Int { min: 1, max: i64::MAX },
        default: Default::Int(5000),
        doc: "split model.safetensors into shards of at most this size",
    },
];

/// Writes tensors as `model.safetensors`, or shards plus `model.safetensors.index.json`.
pub fn write_weights(out: &Path, tensors: Vec<(String, Tensor)>, dtype: DType, shard_bytes: usize) -> Result<(), NodeError> {
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut size = 0usize;
    let mut total = 0usize;
    for (name, t) in tensors {
        let t = t.to_dtype(dtype)?;
        let bytes = t.elem_count() * dtype.size_in_bytes();
        if size + bytes > shard_bytes && !shards.last().expect("one shard").is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        total += bytes;
        shards.last_mut().expect("one shard").push((name, t));
    }
    if shards.len() == 1 {
        let map: HashMap<String, Tensor> = shards.pop().expect("one shard").into_iter().collect();
        return Ok(candle_core::safetensors::save(&map, out.join("model.safetensors"))?);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), file.clone().into());
        }
        let map: HashMap<String, Tensor> = shard.into_iter().collect();
        candle_core::safetensors::save(&map, out.join(&file))?;
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).expect("json"))
        .map_err(NodeError::io("writing", out))
}

impl NodeKind for Merge {
    fn name(&self) -> &'static str {
        "merge"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "Merge a LoRA adapter (pipe's or peft's) into the base weights and write a Hugging Face model folder with its tokenizer."
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn device_sensitive(&self) -> bool {
        true
    }
    fn outputs(&self, _params: &Params) -> Vec<OutputSpec> {
        vec![OutputSpec { name: "model", dir: true, doc: "Hugging Face folder: config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json" }]
    }

    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError> {
        let base = ctx.input("model")?.to_path_buf();
        let adapter = ctx.inputs.get("adapter").cloned();
        ctx.log(format!("loading {}", base.display()));
        // An adapter trained over a quantized base goes onto the values training saw: the base
        // through the same quantizer, dequantized (as peft merges a QLoRA adapter).
        let quant = match &adapter {
            Some(a) => peft::read_base_quant(a)?,
            None => BaseQuant::None,
        };
        let mut model = load::load_with(&base, &ctx.candle_device()?, DType::F32, quant)?;
        if quant != BaseQuant::None {
            ctx.log(format!("the adapter trained over a {} base: merging onto it, dequantized", quant.name()));
            model.dequantize_base()?;
        }
        // A Hugging Face config cannot hold every RoPE variant a GGUF can: refuse before working.
        model.cfg.hf_rope_scaling()?;
        let merged_pairs = match &adapter {
            Some(adapter) => {
                let (layout, params) = peft::read_adapter(adapter, &model.cfg)?;
                model.merge_lora(&layout, &params)?;
                layout.entries.len()
            }
            None => 0,
        };
        let out = ctx.output("model");
        std::fs::create_dir_all(&out).map_err(NodeError::io("creating", &out))?;
        let (dtype, name) = match ctx.params.str("dtype") {
            Some("bf16") => (DType::BF16, "bfloat16"),
            Some("f16") => (DType::F16, "float16"),
            _ => (DType::F32, "float32"),
        };
        write_hf_tokenizer(&base, &out)?;
        let tk = load_tokenizer(&out).ok();
        if !out.join("generation_config.json").exists() {
            let id = |b: Option<&(u32, String)>| b.map(|x| x.0);
            let gen = serde_json::json!({
                "bos_token_id": tk.as_ref().and_then(|b| id(b.bos.as_ref())),
                "eos_token_id": tk.as_ref().and_then(|b| id(b.eos.as_ref())),
                "do_sample": false,
            });
            std::fs::write(out.join("generation_config.json"), serde_json::to_string_pretty(&gen).expect("json"))
                .map_err(NodeError::io("writing", &out))?;
        }
        let id = |f: fn(&crate::tokenizer::load::Bundle) -> Option<u32>| tk.as_ref().and_then(f);
        let cfg = model.cfg.to_hf_json(id(|b| b.bos.as_ref().map(|x| x.0)), id(|b| b.eos.as_ref().map(|x| x.0)), name);
        std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&cfg).expect("json"))
            .map_err(NodeError::io("writing", &out))?;
        let shard = ctx.params.int("shard_size_mb") as usize * 1_000_000;
        write_weights(&out, model.hf_tensors(), dtype, shard)?;
        ctx.set_summary(match adapter {
            Some(_) => format!("{merged_pairs} adapter pairs merged, {name} weights"),
            None => format!("converted to a Hugging Face folder, {name} weights"),
        });
        Ok(())
    }
}
