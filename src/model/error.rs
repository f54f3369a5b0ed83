//! [`ModelError`]: what the model code itself finds wrong with a model, its configuration or an
//! adapter.
//!
//! An architecture pipe does not run, a tensor missing from the files or of another shape than
//! the configuration implies, a RoPE variant that a format cannot express, an adapter pipe
//! cannot apply. Tensor arithmetic fails with `candle_core::Error`, and reading a model's files
//! with [`LoadError`](super::load::LoadError), which carries a `ModelError` with the path it is
//! about ([`LoadError::Model`](super::load::LoadError::Model)).

use std::path::PathBuf;

use super::arch::Arch;

/// A failure of the model code (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// config.json's `model_type` names an architecture pipe does not run.
    #[error("unsupported model_type `{model_type}` (supported: {})", Arch::hf_model_types())]
    UnknownModelType {
        /// The `model_type`.
        model_type: String,
    },
    /// A GGUF file's `general.architecture` names an architecture pipe does not run.
    #[error("architecture `{name}` is not supported (supported: {})", Arch::gguf_names())]
    UnknownGgufArch {
        /// The `general.architecture`.
        name: String,
    },
    /// A GGUF file's RoPE scaling is one pipe does not implement.
    #[error("{kind} RoPE scaling is not supported")]
    UnsupportedRopeScaling {
        /// `rope.scaling.type` (`linear`, `yarn`).
        kind: String,
    },
    /// RoPE turns only some of each head's dimensions.
    #[error("RoPE over {rotated} of each head's {head_dim} dimensions is not supported")]
    PartialRotary {
        /// Dimensions turned (`rope.dimension_count`).
        rotated: usize,
        /// The head size (`attention.key_length`).
        head_dim: usize,
    },
    /// config.json lacks a hyper-parameter every model needs.
    #[error("config.json: missing `{key}`")]
    MissingConfig {
        /// The key.
        key: &'static str,
    },
    /// A head count is 0 (the head size is the width divided by it).
    #[error("the model's `{key}` is 0; it must be at least 1")]
    ZeroHeads {
        /// The key, as the file names it.
        key: String,
    },
    /// A tensor of the model's tensor list (or of an adapter's entries) is not there.
    #[error("missing tensor `{name}`")]
    MissingTensor {
        /// Its name where it was looked for.
        name: String,
    },
    /// A tensor's shape is not the one the configuration implies.
    #[error("tensor `{name}` has shape {got:?}, the configuration implies {want:?}")]
    ShapeMismatch {
        /// Its name.
        name: String,
        /// The shape it has.
        got: Vec<usize>,
        /// The shape it should have.
        want: Vec<usize>,
    },
    /// A tensor holds an element type pipe cannot read.
    #[error("tensor `{name}` has type {ty}, which pipe cannot dequantize")]
    UnsupportedTensorType {
        /// Its name.
        name: String,
        /// The type's name.
        ty: String,
    },
    /// Converting or moving a tensor failed.
    #[error("tensor `{name}`: {source}")]
    Tensor {
        /// Its name.
        name: String,
        /// What candle said.
        source: candle_core::Error,
    },
    /// The model's RoPE frequency factors (from a GGUF) have no config.json form.
    #[error("the GGUF's RoPE frequency factors (`rope_freqs.weight`) cannot be written to config.json: {0}")]
    RopeFactors(#[source] NoLlama3Scaling),
    /// An adapter folder holds an adapter pipe cannot apply.
    #[error("{}: {reason}", path.display())]
    UnsupportedAdapter {
        /// Its adapter_config.json.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An adapter folder's [`super::peft::BASE_QUANT_FILE`] names no storage pipe knows.
    #[error("{}: `base_quant` is {value:?}, expected one of none, nf4, q8_0, q4_k, gguf", path.display())]
    UnknownBaseQuant {
        /// The file.
        path: PathBuf,
        /// What it says.
        value: String,
    },
    /// An adapter's rank is 0 or wider than every layer of the model.
    #[error("{}: `r` is {r}; a LoRA rank is between 1 and the model's widest layer ({max})", path.display())]
    AdapterRank {
        /// Its adapter_config.json.
        path: PathBuf,
        /// The rank it gives.
        r: u64,
        /// The widest layer of the model.
        max: usize,
    },
    /// Reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A safetensors file cannot be read.
    #[error("{}: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What candle's reader said.
        source: candle_core::Error,
    },
    /// A failure about a tensor of the file `path`.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: Box<ModelError>,
    },
}

impl ModelError {
    /// Wraps a failure with the file it is about.
    pub fn in_file(path: impl Into<PathBuf>) -> impl FnOnce(ModelError) -> ModelError {
        let path = path.into();
        move |e| ModelError::InFile { path, source: Box::new(e) }
    }
}

/// Why RoPE frequency factors are not a `llama3` scaling (the only RoPE scaling config.json
/// can hold that factors come from).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum NoLlama3Scaling {
    /// The model has factors and a `rope_scaling` at once.
    #[error("the model has both frequency factors and `rope_scaling`")]
    BothFactorsAndScaling,
    /// No factor is above 1.
    #[error("they are not a llama3 scaling (a llama3 scaling divides by at least 1)")]
    NoFactorAboveOne,
    /// Fewer than two factors are strictly between 1 and the largest.
    #[error("fewer than two factors lie between 1 and the largest, so the llama3 bounds are not determined")]
    BoundsUndetermined,
    /// The factors between 1 and the largest all belong to one frequency.
    #[error("the smooth region has one frequency")]
    OneFrequency,
    /// The factors fall towards low frequencies.
    #[error("they do not rise towards low frequencies as llama3's do")]
    NotRising,
    /// The closest llama3 scaling's frequencies are off by this much, relative.
    #[error("the closest llama3 scaling is off by {0:.1e} relative")]
    OffBy(f64),
}
