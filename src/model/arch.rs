//! Model architectures: everything that differs between the families pipe runs, in one place.
//!
//! Every family is the same kind of decoder (RMSNorm, rotary attention with grouped-query heads,
//! a SwiGLU MLP); what differs is data, and [`ArchSpec`] holds all of it:
//!
//! | decision | field | read by |
//! |---|---|---|
//! | Hugging Face `model_type` and `architectures` class | [`ArchSpec::hf_model_type`], [`ArchSpec::hf_class`] | config.json, both ways ([`super::config`]) |
//! | llama.cpp's `general.architecture` | [`ArchSpec::gguf_name`] | the GGUF loader ([`super::load`]) and writer ([`super::to_gguf`]) |
//! | q/k/v projection biases | [`ArchSpec::qkv_bias`] | the tensor list |
//! | a per-head RMSNorm on q and on k, before RoPE | [`ArchSpec::qk_norm`] | the tensor list (the forward and backward apply the norms a model has) |
//! | Q/K rows permuted in GGUF | [`ArchSpec::gguf_permutes_qk`] | the tensor list ([`TensorSpec::gguf_permute_heads`]) |
//! | tied embeddings when config.json does not say | [`ArchSpec::hf_tied_default`] | [`Config::from_hf_json`] |
//! | tied embeddings in the test shape | [`ArchSpec::tied_in_tiny`] | [`Config::tiny`] |
//! | llama.cpp's "70B" size class | [`ArchSpec::llama_cpp_70b`] | the export's quantization mixture ([`crate::gguf::ftype`]) |
//!
//! # The tensor list
//!
//! [`tensors`] lists every tensor a model of a [`Config`] has, once, in the order pipe writes
//! them: where it sits in a [`Model`](super::llama::Model) ([`Slot`]), its Hugging Face and
//! llama.cpp names, its shape, and how a random model initialises it ([`Init`]). Everything
//! that walks a model's tensors goes through it: the safetensors and GGUF loaders, the random
//! constructors ([`Model::random_with_std`](super::llama::Model::random_with_std) and its
//! siblings), the `random-model` node, `merge` (through
//! [`Model::hf_tensors`](super::llama::Model::hf_tensors)) and the GGUF export.
//!
//! # Presets
//!
//! [`PRESETS`] holds the shapes of well-known models of each architecture, which `random-model`
//! and the benchmarks build random models of.
//!
//! # Adding an architecture
//!
//! A variant of [`Arch`] with its [`ArchSpec`] (and its presets, if any), its tensors in
//! [`tensors`] where it has some the others lack, and its arithmetic in the forward and
//! backward passes of [`super::llama`].

use serde::{Deserialize, Serialize};

use super::config::Config;
use super::lora::Module;

/// An architecture family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama, Llama 2/3, TinyLlama, SmolLM, deepseek-llm.
    Llama,
    /// Qwen2, Qwen2.5 (q/k/v projections have a bias).
    Qwen2,
    /// Qwen3 (dense): no biases, a per-head RMSNorm on q and on k; `head_dim` is given in
    /// config.json and need not be hidden / heads.
    Qwen3,
}

/// What an architecture decides (see the module docs for who reads each field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchSpec {
    /// config.json's `model_type`, written and read.
    pub hf_model_type: &'static str,
    /// Other `model_type` values read as this architecture.
    pub hf_model_type_aliases: &'static [&'static str],
    /// The class config.json's `architectures` names.
    pub hf_class: &'static str,
    /// llama.cpp's name, GGUF's `general.architecture` and the prefix of its hyper-parameter keys.
    pub gguf_name: &'static str,
    /// The q, k and v projections have a bias (config.json's `attention_bias`).
    pub qkv_bias: bool,
    /// Each head of q and of k goes through an RMSNorm (weights `[head_dim]`, the model's
    /// epsilon) after the projection and before RoPE.
    pub qk_norm: bool,
    /// llama.cpp's converter reorders the rows of the Q and K projections for its interleaved
    /// RoPE (see [`super::gguf_order`]); the loader and the export undo and redo it.
    pub gguf_permutes_qk: bool,
    /// `tie_word_embeddings` when config.json does not give it (transformers' default).
    pub hf_tied_default: bool,
    /// Whether [`Config::tiny`] ties the embeddings (the test shapes cover both ways).
    pub tied_in_tiny: bool,
    /// When llama.cpp counts a model of this architecture as "70B".
    pub llama_cpp_70b: Llm70b,
}

/// When llama.cpp's `load_arch_hparams` gives a model the size class `LLM_TYPE_70B`, the one
/// size class its quantization rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Llm70b {
    /// Never (no size of the architecture is 70B).
    Never,
    /// At 80 layers.
    At80Layers,
    /// At 80 layers with fewer key/value heads than query heads (with as many, the model is
    /// LLaMA-1 65B).
    At80LayersWithGqa,
}

const LLAMA: ArchSpec = ArchSpec {
    hf_model_type: "llama",
    hf_model_type_aliases: &["mistral"],
    hf_class: "LlamaForCausalLM",
    gguf_name: "llama",
    qkv_bias: false,
    qk_norm: false,
    gguf_permutes_qk: true,
    hf_tied_default: false,
    tied_in_tiny: true,
    llama_cpp_70b: Llm70b::At80LayersWithGqa,
};

const QWEN2: ArchSpec = ArchSpec {
    hf_model_type: "qwen2",
    hf_model_type_aliases: &[],
    hf_class: "Qwen2ForCausalLM",
    gguf_name: "qwen2",
    qkv_bias: true,
    qk_norm: false,
    gguf_permutes_qk: false,
    hf_tied_default: false,
    tied_in_tiny: false,
    llama_cpp_70b: Llm70b::At80Layers,
};

const QWEN3: ArchSpec = ArchSpec {
    hf_model_type: "qwen3",
    hf_model_type_aliases: &[],
    hf_class: "Qwen3ForCausalLM",
    gguf_name: "qwen3",
    qkv_bias: false,
    qk_norm: true,
    gguf_permutes_qk: false,
    hf_tied_default: false,
    tied_in_tiny: true,
    llama_cpp_70b: Llm70b::Never,
};

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

    /// Its decisions.
    pub fn spec(self) -> &'static ArchSpec {
        match self {
            Arch::Llama => &LLAMA,
            Arch::Qwen2 => &QWEN2,
            Arch::Qwen3 => &QWEN3,
        }
    }

    /// The architecture of config.json's `model_type` (absent: Llama, as in early Llama
    /// checkpoints); `None` for one pipe does not run.
    pub fn from_hf_model_type(model_type: Option<&str>) -> Option<Arch> {
        let Some(t) = model_type else { return Some(Arch::Llama) };
        Arch::ALL.into_iter().find(|a| a.spec().hf_model_type == t || a.spec().hf_model_type_aliases.contains(&t))
    }

    /// The architecture of GGUF's `general.architecture`; `None` for one pipe does not run.
    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.spec().gguf_name == name)
    }

    /// The `model_type` values pipe runs, for messages (`llama, qwen2`).
    pub fn hf_model_types() -> String {
        Arch::ALL.map(|a| a.spec().hf_model_type).join(", ")
    }

    /// The `general.architecture` values pipe runs, for messages.
    pub fn gguf_names() -> String {
        Arch::ALL.map(|a| a.spec().gguf_name).join(", ")
    }

    /// Whether llama.cpp counts a model of this architecture and shape as "70B".
    pub fn is_llama_cpp_70b(self, n_layer: usize, n_head: usize, n_head_kv: usize) -> bool {
        match self.spec().llama_cpp_70b {
            Llm70b::Never => false,
            Llm70b::At80Layers => n_layer == 80,
            Llm70b::At80LayersWithGqa => n_layer == 80 && n_head != n_head_kv,
        }
    }
}

/// Where a tensor sits in a [`Model`](super::llama::Model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The token embedding, `[vocab, hidden]`.
    Embed,
    /// A tensor of decoder block `N`.
    Layer(usize, LayerSlot),
    /// The final norm, `[hidden]`.
    Norm,
    /// The output projection, `[vocab, hidden]`, when not tied to the embedding.
    LmHead,
}

/// Where a tensor sits in a decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerSlot {
    /// The norm before attention, `[hidden]`.
    AttnNorm,
    /// The norm before the MLP, `[hidden]`.
    MlpNorm,
    /// The per-head norm of q, `[head_dim]`.
    QNorm,
    /// The per-head norm of k, `[head_dim]`.
    KNorm,
    /// A projection's weight, `[out, in]`.
    Weight(Module),
    /// A projection's bias, `[out]`.
    Bias(Module),
}

impl Slot {
    /// (Hugging Face name, llama.cpp name).
    fn names(self) -> (String, String) {
        let (hf, gguf) = match self {
            Slot::Embed => ("model.embed_tokens.weight", "token_embd.weight"),
            Slot::Norm => ("model.norm.weight", "output_norm.weight"),
            Slot::LmHead => ("lm_head.weight", "output.weight"),
            Slot::Layer(l, s) => {
                let (hf, gguf) = s.names();
                return (format!("model.layers.{l}.{hf}"), format!("blk.{l}.{gguf}"));
            }
        };
        (hf.to_string(), gguf.to_string())
    }
}

impl LayerSlot {
    /// (Hugging Face name under `model.layers.N.`, llama.cpp name under `blk.N.`).
    fn names(self) -> (String, String) {
        let (hf, gguf) = match self {
            LayerSlot::AttnNorm => ("input_layernorm.weight", "attn_norm.weight"),
            LayerSlot::MlpNorm => ("post_attention_layernorm.weight", "ffn_norm.weight"),
            LayerSlot::QNorm => ("self_attn.q_norm.weight", "attn_q_norm.weight"),
            LayerSlot::KNorm => ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            LayerSlot::Weight(m) => return (format!("{}.weight", m.hf_path()), format!("{}.weight", gguf_module(m))),
            LayerSlot::Bias(m) => return (format!("{}.bias", m.hf_path()), format!("{}.bias", gguf_module(m))),
        };
        (hf.to_string(), gguf.to_string())
    }
}

/// llama.cpp's name of a projection.
fn gguf_module(m: Module) -> &'static str {
    match m {
        Module::Q => "attn_q",
        Module::K => "attn_k",
        Module::V => "attn_v",
        Module::O => "attn_output",
        Module::Gate => "ffn_gate",
        Module::Up => "ffn_up",
        Module::Down => "ffn_down",
    }
}

/// How a random model initialises a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Normal(0, std) values (weights, biases, embeddings).
    Normal,
    /// Ones (norm weights).
    Ones,
}

/// One tensor of a model (see [`tensors`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Where it sits.
    pub slot: Slot,
    /// Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    pub hf: String,
    /// llama.cpp name (`blk.0.attn_q.weight`).
    pub gguf: String,
    /// Row-major shape (`[out, in]` for projections).
    pub shape: Vec<usize>,
    /// How a random model initialises it.
    pub init: Init,
}

impl TensorSpec {
    fn new(slot: Slot, shape: Vec<usize>, init: Init) -> TensorSpec {
        let (hf, gguf) = slot.names();
        TensorSpec { slot, hf, gguf, shape, init }
    }

    /// The number of heads whose rows llama.cpp's converter permutes in this tensor (the Q and K
    /// weights of an architecture that permutes them), `None` for the tensors it stores as
    /// Hugging Face does.
    pub fn gguf_permute_heads(&self, cfg: &Config) -> Option<usize> {
        if !cfg.arch.spec().gguf_permutes_qk {
            return None;
        }
        match self.slot {
            Slot::Layer(_, LayerSlot::Weight(Module::Q)) => Some(cfg.num_heads),
            Slot::Layer(_, LayerSlot::Weight(Module::K)) => Some(cfg.num_kv_heads),
            _ => None,
        }
    }
}

/// Every tensor a model of `cfg` has, in the order pipe writes them: the embedding; per block
/// its two norms (and the q and k norms, where the architecture has them), then each
/// projection's weight (and bias, where the architecture has one) in [`Module::ALL`]'s order;
/// the final norm; the output projection unless tied.
pub fn tensors(cfg: &Config) -> Vec<TensorSpec> {
    let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
    let spec = cfg.arch.spec();
    let mut out = vec![TensorSpec::new(Slot::Embed, vec![vocab, h], Init::Normal)];
    for l in 0..cfg.num_layers {
        let mut add = |s: LayerSlot, shape: Vec<usize>, init: Init| out.push(TensorSpec::new(Slot::Layer(l, s), shape, init));
        add(LayerSlot::AttnNorm, vec![h], Init::Ones);
        add(LayerSlot::MlpNorm, vec![h], Init::Ones);
        if spec.qk_norm {
            add(LayerSlot::QNorm, vec![cfg.head_dim], Init::Ones);
            add(LayerSlot::KNorm, vec![cfg.head_dim], Init::Ones);
        }
        for m in Module::ALL {
            let (i, o) = m.dims(cfg);
            add(LayerSlot::Weight(m), vec![o, i], Init::Normal);
            if spec.qkv_bias && matches!(m, Module::Q | Module::K | Module::V) {
                add(LayerSlot::Bias(m), vec![o], Init::Normal);
            }
        }
    }
    out.push(TensorSpec::new(Slot::Norm, vec![h], Init::Ones));
    if !cfg.tie_word_embeddings {
        out.push(TensorSpec::new(Slot::LmHead, vec![vocab, h], Init::Normal));
    }
    out
}

/// The shape of a well-known model, as its config.json gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// The name `random-model`'s `shape` takes.
    pub name: &'static str,
    /// Architecture.
    pub arch: Arch,
    /// `hidden_size`.
    pub hidden: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim`.
    pub head_dim: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `tie_word_embeddings`.
    pub tied: bool,
    /// `max_position_embeddings`.
    pub context: usize,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
}

impl Preset {
    /// The model configuration.
    pub fn config(&self) -> Config {
        Config {
            arch: self.arch,
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.intermediate,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            rope_scaling: None,
            rope_freq_factors: None,
            rms_norm_eps: self.rms_norm_eps,
            tie_word_embeddings: self.tied,
            max_position_embeddings: self.context,
        }
    }
}

/// Known shapes: `tiny` ([`Config::tiny`] of Llama with hidden 64 and vocab 512), `tiny-qwen3`
/// (the same size as Qwen3, with heads of 32 so that heads x head size is twice the hidden
/// size, as in Qwen3-0.6B), and the published SmolLM2-135M, TinyLlama-1.1B, deepseek-llm-7b
/// (the shapes of shared/bench/peft_baseline.py) and Qwen3-0.6B.
pub const PRESETS: [Preset; 6] = [
    Preset {
        name: "tiny",
        arch: Arch::Llama,
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        vocab: 512,
        tied: true,
        context: 512,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
    },
    Preset {
        name: "tiny-qwen3",
        arch: Arch::Qwen3,
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        vocab: 512,
        tied: true,
        context: 512,
        rope_theta: 1000000.0,
        rms_norm_eps: 1e-6,
    },
    Preset {
        name: "smollm2-135m",
        arch: Arch::Llama,
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49152,
        tied: true,
        context: 8192,
        rope_theta: 100000.0,
        rms_norm_eps: 1e-5,
    },
    Preset {
        name: "tinyllama-1.1b",
        arch: Arch::Llama,
        hidden: 2048,
        intermediate: 5632,
        layers: 22,
        heads: 32,
        kv_heads: 4,
        head_dim: 64,
        vocab: 32000,
        tied: false,
        context: 2048,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
    },
    Preset {
        name: "deepseek-llm-7b",
        arch: Arch::Llama,
        hidden: 4096,
        intermediate: 11008,
        layers: 30,
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
        vocab: 102400,
        tied: false,
        context: 4096,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
    },
    Preset {
        name: "qwen3-0.6b",
        arch: Arch::Qwen3,
        hidden: 1024,
        intermediate: 3072,
        layers: 28,
        heads: 16,
        kv_heads: 8,
        head_dim: 128,
        vocab: 151936,
        tied: true,
        context: 40960,
        rope_theta: 1000000.0,
        rms_norm_eps: 1e-6,
    },
];

/// The names of [`PRESETS`], in order.
pub const PRESET_NAMES: [&str; PRESETS.len()] = {
    let mut names = [""; PRESETS.len()];
    let mut i = 0;
    while i < PRESETS.len() {
        names[i] = PRESETS[i].name;
        i += 1;
    }
    names
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_their_architecture() {
        for a in Arch::ALL {
            let s = a.spec();
            assert_eq!(Arch::from_hf_model_type(Some(s.hf_model_type)), Some(a));
            for alias in s.hf_model_type_aliases {
                assert_eq!(Arch::from_hf_model_type(Some(alias)), Some(a));
            }
            assert_eq!(Arch::from_gguf_name(s.gguf_name), Some(a));
            let json = serde_json::to_value(a).unwrap();
            assert_eq!(json, s.hf_model_type, "the serde name is the model_type");
        }
        assert_eq!(Arch::from_hf_model_type(None), Some(Arch::Llama));
        assert_eq!(Arch::from_hf_model_type(Some("gpt2")), None);
        assert_eq!(Arch::from_gguf_name("mistral"), None);
        assert_eq!(Arch::hf_model_types(), "llama, qwen2, qwen3");
    }

    #[test]
    fn every_tensor_has_a_distinct_slot_and_names() {
        for a in Arch::ALL {
            for tie in [false, true] {
                let cfg = Config { tie_word_embeddings: tie, ..Config::tiny(a, 40, 16) };
                let t = tensors(&cfg);
                let distinct = |f: fn(&TensorSpec) -> String| t.iter().map(f).collect::<std::collections::HashSet<_>>().len();
                assert_eq!(distinct(|s| format!("{:?}", s.slot)), t.len());
                assert_eq!(distinct(|s| s.hf.clone()), t.len());
                assert_eq!(distinct(|s| s.gguf.clone()), t.len());
                assert_eq!(t.iter().any(|s| s.slot == Slot::LmHead), !tie, "{a:?} tied {tie}");
            }
        }
        let llama = tensors(&Config::tiny(Arch::Llama, 40, 16));
        let q = llama.iter().find(|s| s.hf == "model.layers.1.self_attn.q_proj.weight").unwrap();
        assert_eq!((q.gguf.as_str(), q.shape.as_slice()), ("blk.1.attn_q.weight", &[16, 16][..]));
        let qwen = tensors(&Config::tiny(Arch::Qwen2, 40, 16));
        let kb = qwen.iter().find(|s| s.gguf == "blk.0.attn_k.bias").unwrap();
        assert_eq!((kb.hf.as_str(), kb.shape.as_slice()), ("model.layers.0.self_attn.k_proj.bias", &[8][..]));
        assert!(!llama.iter().any(|s| matches!(s.slot, Slot::Layer(_, LayerSlot::Bias(_)))));
        // Qwen3: no biases, a q and a k norm of the head size per block, before the projections.
        let cfg = Config { head_dim: 8, ..Config::tiny(Arch::Qwen3, 40, 16) };
        let qwen3 = tensors(&cfg);
        assert!(!qwen3.iter().any(|s| matches!(s.slot, Slot::Layer(_, LayerSlot::Bias(_)))));
        let block: Vec<(&str, &str, &[usize])> =
            qwen3[1..5].iter().map(|s| (s.hf.as_str(), s.gguf.as_str(), s.shape.as_slice())).collect();
        assert_eq!(
            block,
            [
                ("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", &[16][..]),
                ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight", &[16][..]),
                ("model.layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight", &[8][..]),
                ("model.layers.0.self_attn.k_norm.weight", "blk.0.attn_k_norm.weight", &[8][..]),
            ]
        );
        let q = qwen3.iter().find(|s| s.gguf == "blk.1.attn_q.weight").unwrap();
        assert_eq!(q.shape, [32, 16], "heads x head size need not be the hidden size");
        assert!(qwen3.iter().all(|s| s.gguf_permute_heads(&cfg).is_none()));
        assert_eq!(qwen3.len(), 1 + 2 * (4 + 7) + 1);
    }

    #[test]
    fn only_llamas_q_and_k_weights_are_permuted() {
        let cfg = Config::tiny(Arch::Llama, 40, 16);
        let permuted: Vec<(String, usize)> =
            tensors(&cfg).iter().filter_map(|s| Some((s.gguf.clone(), s.gguf_permute_heads(&cfg)?))).collect();
        let want: Vec<(String, usize)> =
            (0..2).flat_map(|l| [(format!("blk.{l}.attn_q.weight"), 4), (format!("blk.{l}.attn_k.weight"), 2)]).collect();
        assert_eq!(permuted, want);
        let qwen = Config::tiny(Arch::Qwen2, 40, 16);
        assert!(tensors(&qwen).iter().all(|s| s.gguf_permute_heads(&qwen).is_none()));
    }

    #[test]
    fn the_tiny_preset_is_config_tiny() {
        let tiny = PRESETS.iter().find(|p| p.name == "tiny").unwrap();
        assert_eq!(tiny.config(), Config::tiny(Arch::Llama, 512, 64));
        assert_eq!(PRESET_NAMES, ["tiny", "tiny-qwen3", "smollm2-135m", "tinyllama-1.1b", "deepseek-llm-7b", "qwen3-0.6b"]);
        for p in PRESETS {
            assert_eq!(p.heads % p.kv_heads, 0, "{}: query heads share key/value heads evenly", p.name);
        }
    }

    #[test]
    fn qwen3_0_6b_has_its_published_parameter_count() {
        let cfg = PRESETS.iter().find(|p| p.name == "qwen3-0.6b").unwrap().config();
        let count = |c: &Config| tensors(c).iter().map(|t| t.shape.iter().product::<usize>()).sum::<usize>();
        // 0.6B, of which 0.44B outside the embedding, as its model card says.
        assert_eq!(count(&cfg), 596_049_920);
        assert_eq!(count(&cfg) - cfg.vocab_size * cfg.hidden_size, 440_467_456);
    }

    #[test]
    fn llama_cpp_70b_classes() {
        assert!(Arch::Llama.is_llama_cpp_70b(80, 64, 8));
        assert!(!Arch::Llama.is_llama_cpp_70b(80, 64, 64));
        assert!(Arch::Qwen2.is_llama_cpp_70b(80, 64, 64));
        assert!(!Arch::Qwen2.is_llama_cpp_70b(64, 40, 8));
        assert!(!Arch::Qwen3.is_llama_cpp_70b(80, 64, 8));
    }
}
