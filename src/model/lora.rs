//! LoRA parameters for every (layer, projection) pair, in one flat f32 buffer.
//!
//! One buffer (with one gradient buffer and one pair of Adam moments beside it) instead of
//! hundreds of small tensors: the optimizer is one loop, checkpoints are three arrays, and the
//! per-tensor overhead that TRAINING.md measured disappears. [`Layout`] maps (layer, module) to
//! the offsets of A (`r x in`) and B (`out x r`), in the order layers x targets.
//!
//! Initialisation follows peft: A is Kaiming-uniform with a = sqrt(5) (bound 1/sqrt(in)), B is
//! zero, the scaling is alpha / r.

use rand::{Rng, SeedableRng};

use super::config::Config;

/// A projection LoRA can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Module {
    /// All modules, in peft's usual order.
    pub const ALL: [Module; 7] = [Module::Q, Module::K, Module::V, Module::O, Module::Gate, Module::Up, Module::Down];

    /// The short name used in pipelines (`q`, `gate`, ...).
    pub fn short(self) -> &'static str {
        match self {
            Module::Q => "q",
            Module::K => "k",
            Module::V => "v",
            Module::O => "o",
            Module::Gate => "gate",
            Module::Up => "up",
            Module::Down => "down",
        }
    }

    /// The Hugging Face module name (`q_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Gate => "gate_proj",
            Module::Up => "up_proj",
            Module::Down => "down_proj",
        }
    }

    /// The path inside a decoder layer (`self_attn.q_proj`).
    pub fn hf_path(self) -> String {
        let parent = match self {
            Module::Q | Module::K | Module::V | Module::O => "self_attn",
            _ => "mlp",
        };
        format!("{parent}.{}", self.hf_name())
    }

    /// Parses `q`, `q_proj`, `gate`, `gate_proj`, ...
    pub fn parse(s: &str) -> Option<Module> {
        let s = s.strip_suffix("_proj").unwrap_or(s);
        Module::ALL.into_iter().find(|m| m.short() == s)
    }

    /// (in, out) features of this projection.
    pub fn dims(self, c: &Config) -> (usize, usize) {
        match self {
            Module::Q => (c.hidden_size, c.q_dim()),
            Module::K | Module::V => (c.hidden_size, c.kv_dim()),
            Module::O => (c.q_dim(), c.hidden_size),
            Module::Gate | Module::Up => (c.hidden_size, c.intermediate_size),
            Module::Down => (c.intermediate_size, c.hidden_size),
        }
    }
}

/// Where one adapter pair lives in the flat buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub layer: usize,
    pub module: Module,
    pub in_dim: usize,
    pub out_dim: usize,
    /// Offset of A (`r x in`, row-major).
    pub a: usize,
    /// Offset of B (`out x r`, row-major).
    pub b: usize,
}

/// The shape of the LoRA buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Rank.
    pub r: usize,
    /// alpha / r.
    pub scaling: f32,
    /// Entries in buffer order.
    pub entries: Vec<Entry>,
    /// Total floats.
    pub len: usize,
}

impl Layout {
    /// A layout for `targets` on every layer of `cfg`.
    pub fn new(cfg: &Config, r: usize, alpha: f32, targets: &[Module]) -> Layout {
        let mut entries = Vec::new();
        let mut off = 0;
        for layer in 0..cfg.num_layers {
            for &module in Module::ALL.iter().filter(|m| targets.contains(m)) {
                let (in_dim, out_dim) = module.dims(cfg);
                let a = off;
                off += r * in_dim;
                let b = off;
                off += out_dim * r;
                entries.push(Entry { layer, module, in_dim, out_dim, a, b });
            }
        }
        Layout { r, scaling: alpha / r as f32, entries, len: off }
    }

    /// The entry for (layer, module), if targeted.
    pub fn find(&self, layer: usize, module: Module) -> Option<&Entry> {
        self.entries.iter().find(|e| e.layer == layer && e.module == module)
    }

    /// peft-initialised parameters: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut data = vec![0f32; self.len];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for e in &self.entries {
            let bound = 1.0 / (e.in_dim as f32).sqrt();
            for x in &mut data[e.a..e.a + self.r * e.in_dim] {
                *x = rng.random_range(-bound..bound);
            }
        }
        data
    }

    /// peft's tensor names for an entry: (A name, B name).
    pub fn peft_names(&self, e: &Entry) -> (String, String) {
        let base = format!("base_model.model.model.layers.{}.{}", e.layer, e.module.hf_path());
        (format!("{base}.lora_A.weight"), format!("{base}.lora_B.weight"))
    }
}
