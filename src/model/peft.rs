//! PEFT's adapter format: `adapter_model.safetensors` with peft's tensor names and
//! `adapter_config.json`, so `PeftModel.from_pretrained(base, folder)` loads what pipe trains,
//! and pipe can merge adapters that peft trained.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::base_quant::BaseQuant;
use super::config::Config;
use super::error::ModelError;
use super::lora::{Layout, Module};

/// The `adapter_config.json` peft writes for a LoRA adapter on a causal LM.
pub fn adapter_config(layout: &Layout, alpha: f32, dropout: f32, targets: &[Module], base: &str) -> serde_json::Value {
    let mut modules: Vec<&str> = targets.iter().map(|m| m.hf_name()).collect();
    modules.sort_unstable();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": layout.r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": false,
        "use_dora": false,
        "revision": null,
    })
}

/// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir`.
pub fn write_adapter(
    dir: &Path,
    layout: &Layout,
    params: &[f32],
    alpha: f32,
    dropout: f32,
    targets: &[Module],
    base: &str,
) -> candle_core::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tensors = HashMap::new();
    let r = layout.r;
    for e in &layout.entries {
        let (an, bn) = layout.peft_names(e);
        tensors.insert(an, Tensor::from_slice(&params[e.a..e.a + r * e.in_dim], (r, e.in_dim), &Device::Cpu)?);
        tensors.insert(bn, Tensor::from_slice(&params[e.b..e.b + e.out_dim * r], (e.out_dim, r), &Device::Cpu)?);
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
    let cfg = adapter_config(layout, alpha, dropout, targets, base);
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&cfg).expect("json"))?;
    Ok(())
}

/// The file beside a peft adapter that says which [`BaseQuant`] its base weights were stored in
/// while it trained (written only for a quantized base; peft ignores it).
pub const BASE_QUANT_FILE: &str = "pipe_base_quant.json";

/// Records in `dir` that the adapter was trained over base weights stored as `quant`, so that a
/// merge puts it onto the same (dequantized) values. Nothing is written for `none`.
pub fn write_base_quant(dir: &Path, quant: BaseQuant) -> std::io::Result<()> {
    if quant == BaseQuant::None {
        return Ok(());
    }
    let v = json!({
        "base_quant": quant.name(),
        "about": "pipe trained this adapter over base projection weights stored this way; its merge dequantizes the base through the same quantizer first",
    });
    std::fs::write(dir.join(BASE_QUANT_FILE), serde_json::to_string_pretty(&v).expect("json") + "\n")
}

/// The [`BaseQuant`] an adapter folder was trained over: `none` without [`BASE_QUANT_FILE`].
pub fn read_base_quant(dir: &Path) -> Result<BaseQuant, ModelError> {
    let path = dir.join(BASE_QUANT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BaseQuant::None),
        Err(source) => return Err(ModelError::Io { path, source }),
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    let name = v.get("base_quant").and_then(|x| x.as_str()).unwrap_or("");
    BaseQuant::parse(name).ok_or_else(|| ModelError::UnknownBaseQuant { path, value: name.to_string() })
}

/// Reads an adapter folder (ours or peft's) for `cfg`: the layout and the flat parameters.
pub fn read_adapter(dir: &Path, cfg: &Config) -> Result<(Layout, Vec<f32>), ModelError> {
    let cpath = dir.join("adapter_config.json");
    let bytes = std::fs::read(&cpath).map_err(|source| ModelError::Io { path: cpath.clone(), source })?;
    let c: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| ModelError::Json { path: cpath.clone(), source })?;
    let unsupported = |reason| ModelError::UnsupportedAdapter { path: cpath.clone(), reason };
    if c.get("peft_type").and_then(|v| v.as_str()) != Some("LORA") {
        return Err(unsupported("only LoRA adapters are supported"));
    }
    let r = c.get("r").and_then(|v| v.as_u64()).ok_or_else(|| unsupported("no `r`"))?;
    // The rank sizes the parameter buffer before the weights are read: bound it by the model.
    let max = Module::ALL.iter().map(|m| m.dims(cfg)).map(|(i, o)| i.max(o)).max().unwrap_or(0);
    let r = match usize::try_from(r) {
        Ok(r) if (1..=max).contains(&r) => r,
        _ => return Err(ModelError::AdapterRank { path: cpath.clone(), r, max }),
    };
    let alpha = c.get("lora_alpha").and_then(|v| v.as_f64()).unwrap_or(r as f64) as f32;
    if c.get("use_rslora").and_then(|v| v.as_bool()) == Some(true) || c.get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        return Err(unsupported("rsLoRA and DoRA adapters are not supported"));
    }
    let targets: Vec<Module> = match c.get("target_modules") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|m| m.as_str().and_then(Module::parse)).collect(),
        _ => return Err(unsupported("`target_modules` must be a list")),
    };
    let layout = Layout::new(cfg, r, alpha, &targets);
    let wpath = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
        .map_err(|source| ModelError::Safetensors { path: wpath.clone(), source })?;
    let mut params = vec![0f32; layout.len];
    for e in &layout.entries {
        let (an, bn) = layout.peft_names(e);
        for (name, off, shape) in [(an, e.a, (r, e.in_dim)), (bn, e.b, (e.out_dim, r))] {
            // peft also writes names without the `.weight` adapter suffix variants; accept both.
            let t = tensors
                .get(&name)
                .or_else(|| {
                    tensors.get(
                        &name
                            .replace(".lora_A.weight", ".lora_A.default.weight")
                            .replace(".lora_B.weight", ".lora_B.default.weight"),
                    )
                })
                .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })
                .map_err(ModelError::in_file(&wpath))?;
            if t.dims() != [shape.0, shape.1] {
                let e = ModelError::ShapeMismatch { name, got: t.dims().to_vec(), want: vec![shape.0, shape.1] };
                return Err(ModelError::in_file(&wpath)(e));
            }
            let v = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|source| ModelError::Tensor { name, source })
                .map_err(ModelError::in_file(&wpath))?;
            params[off..off + v.len()].copy_from_slice(&v);
        }
    }
    Ok((layout, params))
}
