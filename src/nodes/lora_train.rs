//! `lora-train`: LoRA fine-tuning of a model (any architecture of [`crate::model::arch`]) on a
//! tokenized dataset.
//!
//! Adapts between the pipeline (params, inputs, outputs, progress, the per-key work folder) and
//! [`crate::train::trainer`]. Checkpoints live in the node's work folder, which is keyed by the
//! node key: a rerun after a kill resumes from the newest checkpoint, and a run with any
//! different parameter, input or version has a different key and so never sees an incompatible
//! checkpoint. On success the work folder is removed with the rest of the staging.
//!
//! Outputs: `adapter` (peft format), `log` (JSON lines: step, epoch, loss, lr, grad_norm,
//! tokens, and with `dtype: f16` loss_scale and skipped; deterministic, so `pipe verify` can
//! compare it; tokens/s goes to the run log), and `curve` (the loss curve as a PNG).
//!
//! The optional `init` input is a peft adapter folder the LoRA parameters start from instead of
//! the seeded init (checked against r, alpha and targets; a resumed checkpoint wins), so pipe and
//! peft can train from the same initial values (`scripts/peft_train_parity.py`). Being an
//! input, its bytes are in the node key.
//!
//! `dtype` picks the compute dtype: the model is loaded with its frozen weights in it (bf16 and
//! f16 halve the weights' memory) while the LoRA weights, their gradients and the AdamW moments
//! stay f32 (see [`crate::model::llama`] for the full split); f16 adds dynamic loss scaling
//! ([`crate::train::scaler`]). The adapter is written in f32 whatever the dtype, as peft saves
//! adapters trained on a bf16/f16 base (peft's default `autocast_adapter_dtype=True` upcasts the
//! adapter weights to f32). The dtype is a param, so it is in the node key, and the node is
//! device-sensitive, so the device type is too.
//!
//! `gpus: N | all` (a node key, not a param) trains data-parallel on the N GPUs of the lease:
//! one rank per GPU, each with its own copy of the model and its shard of every micro-batch, the
//! LoRA gradients summed with NCCL ([`crate::train::parallel`]). `batch_size` stays the global
//! micro-batch, so N GPUs follow one GPU's loss curve (up to rounding); the world size is in the
//! key. Rank 0 writes the log, the checkpoints and the outputs.

use candle_core::DType;

use super::{Accepts, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::dataset::TokenDataset;
use crate::model::base_quant::BaseQuant;
use crate::model::lora::Module;
use crate::model::{load, peft};
use crate::params::{Default, ParamSpec, ParamType, Params};
use crate::train::optim::{AdamWConfig, Schedule};
use crate::train::parallel::train_on_gpus;
use crate::train::scaler::ScalerConfig;
use crate::train::trainer::{train, LogEntry, TrainConfig};

/// The `lora-train` kind.
pub struct LoraTrain;

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        accepts: Accepts::Model,
        doc: "the base model: a GGUF file, a Hugging Face folder, or a source",
    },
    InputSpec { name: "dataset", required: true, accepts: Accepts::File, doc: "a token dataset (tokenize's `dataset`)" },
    InputSpec {
        name: "init",
        required: false,
        accepts: Accepts::Model,
        doc: "a LoRA adapter folder in peft's format to start from instead of the seeded init (e.g. one peft saved before training, to train both from the same values); its r, alpha and targets must match the params. A resumed checkpoint takes precedence",
    },
];

const INT: ParamType = ParamType::Int { min: 0, max: i64::MAX };
const POS: ParamType = ParamType::Int { min: 1, max: i64::MAX };

const PARAMS: &[ParamSpec] = &[
    ParamSpec { name: "r", ty: POS, default: Default::Int(8), doc: "LoRA rank" },
    ParamSpec {
        name: "alpha",
        ty: ParamType::Float { min: 0.0, max: 1e6 },
        default: Default::Float(32.0),
        doc: "LoRA alpha (scaling = alpha / r)",
    },
    ParamSpec {
        name: "dropout",
        ty: ParamType::Float { min: 0.0, max: 0.99 },
        default: Default::Float(0.1),
        doc: "dropout on the LoRA input",
    },
    ParamSpec {
        name: "targets",
        ty: ParamType::StrList,
        default: Default::StrList(&["q", "k", "v", "o", "gate", "up", "down"]),
        doc: "projections to adapt: q, k, v, o, gate, up, down (or q_proj, ...)",
    },
    ParamSpec {
        name: "lr",
        ty: ParamType::Float { min: 0.0, max: 1.0 },
        default: Default::Float(1e-4),
        doc: "peak learning rate",
    },
    ParamSpec {
        name: "schedule",
        ty: ParamType::Enum(&["linear", "cosine", "constant"]),
        default: Default::Str("linear"),
        doc: "learning-rate schedule after warmup",
    },
    ParamSpec { name: "warmup_steps", ty: INT, default: Default::Int(0), doc: "linear warmup steps" },
    ParamSpec { name: "beta1", ty: ParamType::Float { min: 0.0, max: 1.0 }, default: Default::Float(0.9), doc: "AdamW beta1" },
    ParamSpec { name: "beta2", ty: ParamType::Float { min: 0.0, max: 1.0 }, default: Default::Float(0.999), doc: "AdamW beta2" },
    ParamSpec { name: "eps", ty: ParamType::Float { min: 0.0, max: 1.0 }, default: Default::Float(1e-8), doc: "AdamW epsilon" },
    ParamSpec {
        name: "weight_decay",
        ty: ParamType::Float { min: 0.0, max: 1.0 },
        default: Default::Float(0.0),
        doc: "AdamW decoupled weight decay",
    },
    ParamSpec { name: "batch_size", ty: POS, default: Default::Int(8), doc: "records per micro-batch" },
    ParamSpec { name: "grad_accum", ty: POS, default: Default::Int(2), doc: "micro-batches per optimizer step" },
    ParamSpec { name: "epochs", ty: POS, default: Default::Int(3), doc: "passes over the dataset (ignored when max_steps > 0)" },
    ParamSpec {
        name: "max_steps",
        ty: INT,
        default: Default::Int(0),
        doc: "stop after this many optimizer steps (0: use epochs)",
    },
    ParamSpec {
        name: "max_grad_norm",
        ty: ParamType::Float { min: 0.0, max: 1e9 },
        default: Default::Float(1.0),
        doc: "clip the global gradient norm (0: off)",
    },
    ParamSpec { name: "seed", ty: INT, default: Default::Int(42), doc: "seed of LoRA init, data order and dropout" },
    ParamSpec {
        name: "dtype",
        ty: ParamType::Enum(&["f32", "bf16", "f16"]),
        default: Default::Str("f32"),
        doc: "compute dtype: f32, or bf16/f16 mixed precision (frozen weights and activations in it; LoRA weights, gradients and AdamW state in f32; f16 with dynamic loss scaling). On the CPU bf16/f16 work but are slower than f32",
    },
    ParamSpec {
        name: "gradient_checkpointing",
        ty: ParamType::Bool,
        default: Default::Bool(true),
        doc: "recompute each block in the backward pass instead of keeping activations",
    },
    ParamSpec {
        name: "base_quant",
        ty: ParamType::Enum(BaseQuant::NAMES),
        default: Default::Str("none"),
        doc: "storage of the frozen projection weights while training (QLoRA): none (the compute dtype), nf4 (bitsandbytes' NF4 with double-quantized scales, as peft's QLoRA), q8_0 or q4_k (ggml blocks), gguf (a GGUF model's own blocks, as stored). Dequantized per matmul; the adapter records it and merge puts the adapter onto the same dequantized base",
    },
    ParamSpec { name: "logging_steps", ty: POS, default: Default::Int(10), doc: "a training-log line every N steps" },
    ParamSpec { name: "save_steps", ty: INT, default: Default::Int(100), doc: "a checkpoint every N steps (0: none)" },
    ParamSpec { name: "save_total_limit", ty: POS, default: Default::Int(1), doc: "checkpoints kept" },
];

fn targets(params: &Params) -> Result<Vec<Module>, (String, String)> {
    let mut out = Vec::new();
    for t in params.str_list("targets") {
        match Module::parse(&t) {
            Some(m) if !out.contains(&m) => out.push(m),
            Some(_) => {}
            None => return Err(("targets".into(), format!("unknown projection `{t}` (q, k, v, o, gate, up, down)"))),
        }
    }
    if out.is_empty() {
        return Err(("targets".into(), "at least one projection is needed".into()));
    }
    Ok(out)
}

/// The storage of the frozen projections a node's params ask for.
pub fn base_quant(params: &Params) -> BaseQuant {
    params.str("base_quant").and_then(BaseQuant::parse).unwrap_or(BaseQuant::None)
}

/// The trainer configuration for a node's params.
pub fn train_config(params: &Params) -> Result<TrainConfig, (String, String)> {
    Ok(TrainConfig {
        r: params.int("r") as usize,
        alpha: params.float("alpha") as f32,
        dropout: params.float("dropout") as f32,
        targets: targets(params)?,
        lr: params.float("lr"),
        schedule: match params.str("schedule") {
            Some("cosine") => Schedule::Cosine,
            Some("constant") => Schedule::Constant,
            _ => Schedule::Linear,
        },
        warmup_steps: params.int("warmup_steps") as u64,
        adamw: AdamWConfig {
            beta1: params.float("beta1"),
            beta2: params.float("beta2"),
            eps: params.float("eps"),
            weight_decay: params.float("weight_decay"),
        },
        batch_size: params.int("batch_size") as usize,
        grad_accum: params.int("grad_accum") as usize,
        epochs: params.int("epochs") as usize,
        max_steps: params.int("max_steps") as u64,
        max_grad_norm: params.float("max_grad_norm"),
        seed: params.int("seed") as u64,
        checkpointing: params.bool("gradient_checkpointing"),
        logging_steps: params.int("logging_steps") as u64,
        save_steps: params.int("save_steps") as u64,
        save_total_limit: params.int("save_total_limit") as usize,
        loss_scaler: ScalerConfig::default(),
        init: None,
    })
}

impl NodeKind for LoraTrain {
    fn name(&self) -> &'static str {
        "lora-train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "LoRA fine-tuning (peft-compatible init, AdamW, linear/cosine schedule, gradient accumulation and clipping) with checkpoints that resume bit-identically after a kill."
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self, _params: &Params) -> Vec<OutputSpec> {
        vec![
            OutputSpec {
                name: "adapter",
                dir: true,
                doc: "the LoRA adapter in peft's format (adapter_model.safetensors, adapter_config.json)",
            },
            OutputSpec {
                name: "log",
                dir: false,
                doc: "training log, JSON lines: step, epoch, loss, lr, grad_norm, tokens (f16 adds loss_scale and skipped)",
            },
            OutputSpec { name: "curve", dir: false, doc: "the loss curve as a PNG" },
        ]
    }
    fn device_sensitive(&self) -> bool {
        true
    }
    fn resume_point(&self, work: &std::path::Path) -> Option<String> {
        crate::train::checkpoint::newest_step(work).filter(|&n| n > 0).map(|n| format!("the checkpoint at step {n}"))
    }

    fn data_parallel(&self) -> bool {
        true
    }
    fn key_neutral_params(&self) -> &'static [&'static str] {
        // Added after keys were in use; `none` is what every run before it did.
        &["base_quant"]
    }
    fn check_params(&self, params: &Params) -> Result<(), (String, String)> {
        train_config(params).map(|_| ())
    }

    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError> {
        let mut cfg = train_config(ctx.params).map_err(|(param, message)| NodeError::Param { param, message })?;
        cfg.init = ctx.inputs.get("init").cloned();
        let dtype = match ctx.params.str("dtype") {
            Some("bf16") => DType::BF16,
            Some("f16") => DType::F16,
            _ => DType::F32,
        };
        let quant = base_quant(ctx.params);
        let model_path = ctx.input("model")?.to_path_buf();
        let data_path = ctx.input("dataset")?.to_path_buf();
        let ds = TokenDataset::read(&data_path)?;
        let records: Vec<(Vec<u32>, Vec<i64>)> = (0..ds.len())
            .map(|r| {
                let (ids, labels) = ds.record(r);
                (ids.to_vec(), labels)
            })
            .collect();
        let gpus = ctx.lease.gpus();
        let model = if gpus.len() > 1 {
            None
        } else {
            ctx.log(format!("loading {}", model_path.display()));
            let device = ctx.candle_device()?;
            let model = load::load_with(&model_path, &device, dtype, quant)?;
            if quant != BaseQuant::None {
                let (bytes, n) = model.quantized_bytes();
                ctx.log(format!("base_quant {}: {n} projection weights stored quantized, {:.1} MB", quant.name(), bytes as f64 / 1e6));
            }
            Some(model)
        };
        let (_, total) = crate::train::trainer::plan(records.len(), &cfg);
        // A run of this key that was killed or cancelled left checkpoints: the first progress
        // line says it goes on from there (the next step report comes only after a step).
        match crate::train::checkpoint::newest_step(&ctx.work).filter(|&n| n > 0 && n <= total) {
            Some(n) => ctx.progress.start_at(Some(total), "steps", n, format!("resuming from the checkpoint at step {n}")),
            None => ctx.progress.start(Some(total), "steps"),
        }
        let progress = ctx.progress.clone();
        let log_file = ctx.log.clone();
        let mut on_step = |r: &crate::train::trainer::StepReport| {
            progress.update(r.step, Some(format!("loss {:.4} · {:.0} tok/s", r.loss, r.tokens_per_sec)));
            if let Ok(mut f) = log_file.lock() {
                use std::io::Write;
                let scale = match (r.loss_scale, r.skipped) {
                    (Some(s), true) => format!(" loss_scale {s} (gradients overflowed: step skipped)"),
                    (Some(s), false) => format!(" loss_scale {s}"),
                    (None, _) => String::new(),
                };
                let _ = writeln!(
                    f,
                    "step {}/{} loss {:.5} lr {:.3e} grad_norm {:.4} tokens {} tokens/s {:.1}{scale}",
                    r.step, r.total, r.loss, r.lr, r.grad_norm, r.tokens, r.tokens_per_sec
                );
            }
        };
        let log_file = ctx.log.clone();
        let mut note = |s: &str| {
            if let Ok(mut f) = log_file.lock() {
                use std::io::Write;
                let _ = writeln!(f, "{s}");
            }
        };
        let work = ctx.work.clone();
        let trained = match &model {
            Some(model) => train(model, &records, &cfg, &work, &mut on_step, &mut note),
            None => train_on_gpus(&gpus, &model_path, dtype, quant, &records, &cfg, &work, &mut on_step, &mut note),
        }?;
        let adapter = ctx.output("adapter");
        let base = model_path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        peft::write_adapter(&adapter, &trained.layout, &trained.params, cfg.alpha, cfg.dropout, &cfg.targets, &base)
            .map_err(NodeError::WriteAdapter)?;
        peft::write_base_quant(&adapter, quant).map_err(NodeError::io("writing", &adapter))?;
        let log_path = ctx.output("log");
        let lines: Vec<String> = trained.log.iter().map(LogEntry::to_json_line).collect();
        std::fs::write(&log_path, lines.join("\n") + "\n").map_err(NodeError::io("writing", &log_path))?;
        let points: Vec<(f64, f64)> = trained.log.iter().map(|e| (e.step as f64, e.loss)).collect();
        let curve = ctx.output("curve");
        std::fs::write(&curve, crate::report::plot::loss_curve_png(&points, 640, 360))
            .map_err(NodeError::io("writing", &curve))?;
        let loss = trained.log.last().map_or(f64::NAN, |e| e.loss);
        let resumed =
            if trained.resumed_from > 0 { format!(", resumed at step {}", trained.resumed_from) } else { String::new() };
        let skipped = trained.log.iter().filter(|e| e.scaling.is_some_and(|s| s.skipped)).count();
        let skipped = if skipped > 0 { format!(", {skipped} skipped for f16 overflow") } else { String::new() };
        ctx.set_summary(format!("{total} steps, final loss {loss:.4}{skipped}{resumed}"));
        Ok(())
    }
}
