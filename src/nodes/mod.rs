//! Node kinds: the one trait every step of a pipeline implements, and the registry of kinds.
//!
//! A node kind is a pure function from input files and parameters to output files. The runner
//! owns everything around that function (hashing, caching, locking, scheduling, progress), so a
//! kind only declares its interface and does its work:
//!
//! | method | contract |
//! |---|---|
//! | [`NodeKind::name`] | the `kind:` string in YAML, kebab-case; the file is its snake_case |
//! | [`NodeKind::version`] | bump whenever the same inputs and params would give different bytes |
//! | [`NodeKind::inputs`] / [`NodeKind::params`] | the schema; drives validation, defaults and docs |
//! | [`NodeKind::outputs`] | named outputs, which may depend on params (fix-json's split) |
//! | [`NodeKind::default_device`] / [`NodeKind::device_sensitive`] / [`NodeKind::data_parallel`] | where it runs, whether the device type is in the key, whether it takes `gpus:` |
//! | [`NodeKind::key_neutral_params`] | params added after keys were in use: left out of the key while at their default |
//! | [`NodeKind::fingerprint_extra`] | anything else that determines the output and is not an input file's bytes or a param |
//! | [`NodeKind::run`] | read inputs from [`RunCtx::input`], write each output to [`RunCtx::output`] |
//!
//! `run` writes into a private staging folder; the store publishes the outputs atomically only
//! after `run` returns `Ok`, so a kind never needs to care about partial writes or kills.

mod chat_params;
pub mod eval;
pub mod export_gguf;
pub mod fix_json;
pub mod lora_train;
pub mod merge;
pub mod random_model;
pub mod tokenize;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::device::{DeviceReq, Lease};
use crate::params::{ParamSpec, Params};
use crate::report::progress::NodeProgress;

/// What an input slot accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// A file (or another node's file output).
    File,
    /// A model: a GGUF file, a Hugging Face folder, `hf:` or `pypi:` source, or a node's model output.
    Model,
    /// A file or a model folder (a tokenizer can be `tokenizer.json` or a model).
    FileOrModel,
}

/// One named input of a node kind.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    /// The key under `inputs:`.
    pub name: &'static str,
    /// False when the slot may be left out.
    pub required: bool,
    /// What the slot accepts.
    pub accepts: Accepts,
    /// One line for docs.
    pub doc: &'static str,
}

/// One named output of a node kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSpec {
    /// Referenced downstream as `node.name`.
    pub name: &'static str,
    /// True when the output is a folder.
    pub dir: bool,
    /// One line for docs.
    pub doc: &'static str,
}

/// A failure inside a node's `run` (or its `fingerprint_extra`).
///
/// Errors from the modules a kind calls keep their type (`#[from]`) and their message, so `?`
/// is all a kind writes for them; the scheduler wraps the error with the node's name and kind.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// The input data is wrong in a way the user must fix.
    #[error("{path}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    BadInput { path: PathBuf, location: Option<(usize, usize)>, message: String },
    /// A parameter's value cannot be used with these inputs or the other parameters.
    #[error("param `{param}`: {message}")]
    Param { param: String, message: String },
    /// An input slot the kind needs is not connected.
    #[error("input `{0}` is not connected")]
    NotConnected(String),
    /// The device of the lease could not be opened.
    #[error("opening {lease}: {source}")]
    Device { lease: Lease, source: candle_core::Error },
    /// The chat template failed to compile or to render.
    #[error("chat template: {0}")]
    ChatTemplate(#[source] minijinja::Error),
    /// The tokenizer failed to encode or decode.
    #[error("{action}: {source}")]
    Tokenizers { action: String, source: tokenizers::Error },
    /// Tensor code failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The trained adapter could not be written.
    #[error("writing the adapter: {0}")]
    WriteAdapter(#[source] candle_core::Error),
    /// A model could not be loaded.
    #[error(transparent)]
    Model(#[from] crate::model::load::LoadError),
    /// The model code refused a configuration, tensor or adapter.
    #[error(transparent)]
    ModelCode(#[from] crate::model::error::ModelError),
    /// A tokenizer could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::load::LoadError),
    /// Writing a model folder's tokenizer files failed.
    #[error(transparent)]
    TokenizerFiles(#[from] crate::tokenizer::save::SaveError),
    /// A tokenizer could not be exported to GGUF metadata.
    #[error(transparent)]
    TokenizerToGguf(#[from] crate::tokenizer::to_gguf::ToGgufError),
    /// A token dataset could not be read.
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    /// Encoding records into a token dataset failed.
    #[error(transparent)]
    Encode(#[from] crate::dataset::encode::EncodeError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] crate::train::trainer::TrainError),
    /// A GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// Writing the GGUF export failed.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// The Ollama Modelfile could not be written.
    #[error("Modelfile: {0}")]
    Modelfile(#[from] crate::export::modelfile::ModelfileError),
    /// Anything else the kind wants to report, already phrased for the user.
    #[error("{0}")]
    Failed(String),
}

impl NodeError {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
        move |source| NodeError::Io { action, path: path.to_path_buf(), source }
    }
}

/// What a node kind sees while it runs.
pub struct RunCtx<'a> {
    /// The node's name in the pipeline.
    pub node: &'a str,
    /// Effective parameters.
    pub params: &'a Params,
    /// Resolved input paths by slot name (absent optional slots are missing).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Staging folder: each output is written to `staging/<output name>`.
    pub staging: PathBuf,
    /// A folder that survives kills and reruns of the same key (checkpoints live here).
    pub work: PathBuf,
    /// The node's log file.
    pub log: Arc<Mutex<std::fs::File>>,
    /// Progress reporting.
    pub progress: NodeProgress,
    /// A one-line summary for the "Finished" line and the node record.
    pub summary: Option<String>,
    /// The device slot the scheduler gave this run.
    pub lease: Lease,
}

impl RunCtx<'_> {
    /// The path of a required input.
    pub fn input(&self, name: &str) -> Result<&Path, NodeError> {
        self.inputs.get(name).map(PathBuf::as_path).ok_or_else(|| NodeError::NotConnected(name.to_string()))
    }

    /// Where to write the output called `name`.
    pub fn output(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// The candle device for this run's lease.
    pub fn candle_device(&self) -> Result<candle_core::Device, NodeError> {
        self.lease.candle_device().map_err(|source| NodeError::Device { lease: self.lease, source })
    }

    /// Sets the one-line summary shown when the node finishes ("334 records, 4 bad").
    pub fn set_summary(&mut self, s: impl Into<String>) {
        let s = s.into();
        self.log(format!("summary: {s}"));
        self.summary = Some(s);
    }

    /// Appends a line to the node's log.
    pub fn log(&self, line: impl AsRef<str>) {
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "{}", line.as_ref());
        }
    }
}

/// Extra key components a kind computes from its inputs (name to a short digest or value).
pub type Extra = BTreeMap<String, String>;

/// What [`NodeKind::fingerprint_extra`] returns: the components, and every file it read that is
/// not an input (so the runner can tell when a memoised result is stale).
#[derive(Debug, Default)]
pub struct Extras {
    /// The components.
    pub values: Extra,
    /// Side files read.
    pub files: Vec<PathBuf>,
}

/// The interface of a node kind. See the module docs for the contract of each method.
pub trait NodeKind: Send + Sync {
    /// The `kind:` string, e.g. `fix-json`.
    fn name(&self) -> &'static str;
    /// The implementation version, part of every key of this kind.
    fn version(&self) -> u32;
    /// One sentence for `pipe kinds`.
    fn summary(&self) -> &'static str;
    /// Named input slots.
    fn inputs(&self) -> &'static [InputSpec];
    /// Parameters with types and defaults.
    fn params(&self) -> &'static [ParamSpec];
    /// Named outputs for the given parameters.
    fn outputs(&self, params: &Params) -> Vec<OutputSpec>;
    /// Where the node runs when the pipeline does not say; CPU by default.
    fn default_device(&self) -> DeviceReq {
        DeviceReq::Cpu
    }
    /// True when the output depends on the device type it ran on (GPU kernels round differently
    /// from the CPU), so the device type becomes part of the key. Default: false.
    fn device_sensitive(&self) -> bool {
        false
    }
    /// What a run of this key would resume from, given its work folder (where an earlier run of
    /// the same key, killed or cancelled, left its checkpoints): said in the `Running` line and
    /// by `pipe status --why`. Default: nothing (the kind starts over).
    fn resume_point(&self, _work: &Path) -> Option<String> {
        None
    }
    /// True when the kind can run data-parallel over several GPUs, so a node of it may say
    /// `gpus: N | all`; the world size then becomes part of the key. Default: false.
    fn data_parallel(&self) -> bool {
        false
    }
    /// Cross-parameter checks after type checks; the error names the parameter.
    fn check_params(&self, _params: &Params) -> Result<(), (String, String)> {
        Ok(())
    }
    /// Parameters added after keys of this kind were in use, whose default keeps the old
    /// behaviour byte for byte: each is left out of the key while it has its default, so the
    /// keys of existing pipelines stay valid (see [`key_params`]). Default: none.
    fn key_neutral_params(&self) -> &'static [&'static str] {
        &[]
    }
    /// The input slots [`NodeKind::fingerprint_extra`] reads (an upstream output named here is
    /// pulled from the remote cache before the key is computed). Default: none.
    fn fingerprint_inputs(&self) -> &'static [&'static str] {
        &[]
    }
    /// Key components beyond input bytes and params. Default: none. Reads only the inputs
    /// [`NodeKind::fingerprint_inputs`] names.
    fn fingerprint_extra(&self, _params: &Params, _inputs: &BTreeMap<String, PathBuf>) -> Result<Extras, NodeError> {
        Ok(Extras::default())
    }
    /// Does the work.
    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError>;
}

/// The params that go into a node's key: every effective param, less those of
/// [`NodeKind::key_neutral_params`] that have their default value.
pub fn key_params(kind: &dyn NodeKind, params: &Params) -> BTreeMap<String, crate::params::Value> {
    let mut out = params.0.clone();
    for name in kind.key_neutral_params() {
        let default = kind.params().iter().find(|p| p.name == *name).and_then(|p| p.default.value());
        if default.is_some() && out.get(*name) == default.as_ref() {
            out.remove(*name);
        }
    }
    out
}

/// Every node kind this build knows.
pub fn registry() -> &'static [&'static dyn NodeKind] {
    &[
        &fix_json::FixJson,
        &tokenize::Tokenize,
        &lora_train::LoraTrain,
        &merge::Merge,
        &eval::Eval,
        &export_gguf::ExportGguf,
        &random_model::RandomModel,
    ]
}

/// Looks a kind up by its YAML name.
pub fn find(name: &str) -> Option<&'static dyn NodeKind> {
    registry().iter().copied().find(|k| k.name() == name)
}
