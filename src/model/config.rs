//! Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.
//!
//! What differs between architectures (names, biases, defaults) is [`super::arch`]'s; this
//! file reads and writes the numbers every architecture shares.

use serde::{Deserialize, Serialize};

pub use super::arch::Arch;
use super::arch::PRESETS;
use super::error::{ModelError, NoLlama3Scaling};

/// Llama 3 style RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: usize,
}

/// Everything the model code needs to know about a checkpoint's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Family.
    pub arch: Arch,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP size.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: usize,
    /// Per-head size.
    pub head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Optional Llama 3 scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Per-dimension RoPE frequency divisors (`head_dim / 2` of them), as GGUF files of Llama 3.1
    /// style models store them in `rope_freqs.weight`; each inverse frequency is divided by its
    /// factor, as llama.cpp's `ggml_rope_ext` does with `freq_factors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_freq_factors: Option<Vec<f32>>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// The output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Context length.
    pub max_position_embeddings: usize,
}

impl Config {
    /// Query projection width.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Key/value projection width.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// RoPE inverse frequencies (head_dim / 2 of them), Llama 3 scaling and frequency factors
    /// applied.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let mut f: Vec<f64> = (0..d / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
        if let Some(s) = self.rope_scaling {
            let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
            for x in f.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *x;
                *x = if wavelen < high_wavelen {
                    *x
                } else if wavelen > low_wavelen {
                    *x / s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings as f64 / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * *x / s.factor + smooth * *x
                };
            }
        }
        if let Some(ff) = &self.rope_freq_factors {
            // llama.cpp: theta = p * base^(-2i/d) / freq_factors[i].
            for (x, &d) in f.iter_mut().zip(ff) {
                *x /= f64::from(d);
            }
        }
        f.into_iter().map(|x| x as f32).collect()
    }

    /// The RoPE scaling to write into a Hugging Face config.json. Frequency factors (from a GGUF)
    /// have no field there, but the ones llama.cpp's converter writes come from `llama3` scaling,
    /// and that is recovered exactly: with `s = (1/f - 1/factor) / (1 - 1/factor)` per pair
    /// (`f` its factor), the pairs between the two wavelength bounds have `s` linear in
    /// `1/wavelength`, which two of them pin down (taking `low_freq_factor = 1`, which leaves the
    /// frequencies unchanged). Errors when the factors do not fit that shape to 1e-5.
    pub fn hf_rope_scaling(&self) -> Result<Option<RopeScaling>, ModelError> {
        let Some(ff) = &self.rope_freq_factors else { return Ok(self.rope_scaling) };
        let base = Config { rope_freq_factors: None, ..self.clone() };
        if ff.iter().all(|&f| f == 1.0) {
            return Ok(base.rope_scaling);
        }
        let refuse = |why: NoLlama3Scaling| Err(ModelError::RopeFactors(why));
        if self.rope_scaling.is_some() {
            return refuse(NoLlama3Scaling::BothFactorsAndScaling);
        }
        let factor = f64::from(ff.iter().cloned().fold(f32::MIN, f32::max));
        if factor <= 1.0 {
            return refuse(NoLlama3Scaling::NoFactorAboveOne);
        }
        let inv = base.inv_freq();
        let two_pi = 2.0 * std::f64::consts::PI;
        // (1/wavelength, s) of the pairs strictly between the unchanged and the fully scaled ones.
        let s_of = |f: f32| (1.0 / f64::from(f) - 1.0 / factor) / (1.0 - 1.0 / factor);
        let smooth: Vec<(f64, f64)> = ff
            .iter()
            .zip(&inv)
            .map(|(&f, &x)| (f64::from(x) / two_pi, s_of(f)))
            .filter(|(_, s)| *s > 1e-4 && *s < 1.0 - 1e-4)
            .collect();
        let (Some(&(x0, s0)), Some(&(x1, s1))) = (smooth.first(), smooth.last()) else {
            return refuse(NoLlama3Scaling::BoundsUndetermined);
        };
        if x0 == x1 {
            return refuse(NoLlama3Scaling::OneFrequency);
        }
        // s = a * (1/wavelength) + b; llama3: a = orig / (high - low), b = -low / (high - low).
        let a = (s1 - s0) / (x1 - x0);
        let b = s0 - a * x0;
        if b >= 0.0 {
            return refuse(NoLlama3Scaling::NotRising);
        }
        let orig = (-a / b).round();
        let fit = RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 1.0 - 1.0 / b,
            original_max_position_embeddings: orig as usize,
        };
        let want = self.inv_freq();
        let got = Config { rope_scaling: Some(fit), ..base }.inv_freq();
        match want.iter().zip(&got).map(|(w, g)| f64::from((w - g).abs() / w.abs())).fold(0.0, f64::max) {
            e if e <= 1e-5 => Ok(Some(fit)),
            e => refuse(NoLlama3Scaling::OffBy(e)),
        }
    }

    /// A tiny model shape for tests, examples and benchmarks: 2 layers, 4 query and 2 key/value
    /// heads (so GQA is exercised), MLP twice the hidden size; embeddings tied as the
    /// architecture's [`ArchSpec::tied_in_tiny`](super::arch::ArchSpec::tied_in_tiny) says.
    pub fn tiny(arch: Arch, vocab_size: usize, hidden_size: usize) -> Config {
        Config {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: hidden_size * 2,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: hidden_size / 4,
            rope_theta: 10000.0,
            rope_scaling: None,
            rope_freq_factors: None,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: arch.spec().tied_in_tiny,
            max_position_embeddings: 512,
        }
    }

    /// The names [`Config::preset`] knows.
    pub const PRESETS: &'static [&'static str] = &super::arch::PRESET_NAMES;

    /// The shape of a well-known model ([`super::arch::PRESETS`]): SmolLM2-135M, TinyLlama-1.1B,
    /// deepseek-llm-7b (30 layers, hidden 4096, MLP 11008, vocab 102400), and `tiny`
    /// ([`Config::tiny`] with hidden 64 and vocab 512).
    pub fn preset(name: &str) -> Option<Config> {
        PRESETS.iter().find(|p| p.name == name).map(|p| p.config())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(v: &serde_json::Value) -> Result<Config, ModelError> {
        let model_type = v.get("model_type").and_then(|m| m.as_str());
        let arch = Arch::from_hf_model_type(model_type)
            .ok_or_else(|| ModelError::UnknownModelType { model_type: model_type.unwrap_or_default().to_string() })?;
        let u =
            |key: &'static str| v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or(ModelError::MissingConfig { key });
        let hidden = u("hidden_size")?;
        let heads = u("num_attention_heads")?;
        for key in ["num_attention_heads", "num_key_value_heads"] {
            if v.get(key).and_then(|x| x.as_u64()) == Some(0) {
                return Err(ModelError::ZeroHeads { key: key.to_string() });
            }
        }
        let rope_scaling = v.get("rope_scaling").filter(|s| !s.is_null()).and_then(|s| {
            let ty = s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str())?;
            if ty != "llama3" {
                return None;
            }
            Some(RopeScaling {
                factor: s.get("factor")?.as_f64()?,
                low_freq_factor: s.get("low_freq_factor")?.as_f64()?,
                high_freq_factor: s.get("high_freq_factor")?.as_f64()?,
                original_max_position_embeddings: s.get("original_max_position_embeddings")?.as_u64()? as usize,
            })
        });
        Ok(Config {
            arch,
            vocab_size: u("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: u("intermediate_size")?,
            num_layers: u("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: u("num_key_value_heads").unwrap_or(heads),
            head_dim: u("head_dim").unwrap_or(hidden / heads),
            rope_theta: v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10000.0),
            rope_scaling,
            rope_freq_factors: None,
            rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(arch.spec().hf_tied_default),
            max_position_embeddings: u("max_position_embeddings").unwrap_or(4096),
        })
    }

    /// Writes a Hugging Face `config.json` for this model (check [`Config::hf_rope_scaling`]
    /// first when the model may carry RoPE frequency factors).
    pub fn to_hf_json(&self, bos: Option<u32>, eos: Option<u32>, dtype: &str) -> serde_json::Value {
        let spec = self.arch.spec();
        let mut v = serde_json::json!({
            "architectures": [spec.hf_class],
            "model_type": spec.hf_model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "torch_dtype": dtype,
            "attention_bias": spec.qkv_bias,
            "bos_token_id": bos,
            "eos_token_id": eos,
        });
        if let Ok(Some(s)) = self.hf_rope_scaling() {
            v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings});
        }
        v
    }
}
