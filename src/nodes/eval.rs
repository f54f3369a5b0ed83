//! `eval`: held-out loss and perplexity, and generations, for the base and the tuned model side
//! by side.
//!
//! Loss is the mean next-token cross-entropy over the dataset's labelled tokens (the same masking
//! as training). Generation renders each prompt in the training format, decodes greedily (or with
//! seeded temperature / top-p sampling) with a KV cache, and stops at the end-of-sentence token
//! or `max_new_tokens`. Writes `report.md` and `report.json` into the `report` folder.

use serde_json::json;

use super::{Accepts, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::dataset::TokenDataset;
use crate::model::generate::generate;
use crate::model::llama::{Batch, Model};
use crate::model::load;
use crate::params::{Default, ParamSpec, ParamType, Params};
use crate::tokenizer::load::{load as load_tokenizer, Bundle};
use crate::tokenizer::template::{self, ChatTemplate};

/// The `eval` kind.
pub struct Eval;

const INPUTS: &[InputSpec] = &[
    InputSpec { name: "base", required: true, accepts: Accepts::Model, doc: "the base model" },
    InputSpec { name: "tuned", required: true, accepts: Accepts::Model, doc: "the tuned model (merge's `model`)" },
    InputSpec {
        name: "dataset",
        required: true,
        accepts: Accepts::File,
        doc: "held-out token dataset (tokenize's `dataset` of the eval split)",
    },
    InputSpec { name: "prompts", required: false, accepts: Accepts::File, doc: "a text file of prompts, one per line" },
];

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "format",
        ty: ParamType::Enum(&["seed", "chat_template"]),
        default: Default::Str("seed"),
        doc: "how prompts are rendered (as in tokenize)",
    },
    ParamSpec { name: "system", ty: ParamType::Str, default: Default::Null, doc: "system prompt for `chat_template`" },
    ParamSpec {
        name: "max_new_tokens",
        ty: ParamType::Int { min: 1, max: 4096 },
        default: Default::Int(64),
        doc: "generation length limit",
    },
    ParamSpec {
        name: "temperature",
        ty: ParamType::Float { min: 0.0, max: 10.0 },
        default: Default::Float(0.0),
        doc: "0: greedy; else sampling temperature",
    },
    ParamSpec {
        name: "top_p",
        ty: ParamType::Float { min: 0.0, max: 1.0 },
        default: Default::Float(1.0),
        doc: "nucleus sampling mass",
    },
    ParamSpec { name: "seed", ty: ParamType::Int { min: 0, max: i64::MAX }, default: Default::Int(42), doc: "sampling seed" },
    ParamSpec {
        name: "batch_size",
        ty: ParamType::Int { min: 1, max: 1024 },
        default: Default::Int(8),
        doc: "records per loss batch",
    },
    ParamSpec {
        name: "dtype",
        ty: ParamType::Enum(&["f32", "bf16", "f16"]),
        default: Default::Str("f32"),
        doc: "compute dtype of both models (bf16 halves the memory of a 7B evaluation)",
    },
];

/// Mean loss over labelled tokens.
pub fn dataset_loss(model: &Model, ds: &TokenDataset, batch_size: usize) -> Result<(f64, usize), NodeError> {
    let (mut sum, mut n) = (0f64, 0usize);
    let recs: Vec<(&[u32], Vec<i64>)> = (0..ds.len()).map(|r| ds.record(r)).collect();
    for chunk in recs.chunks(batch_size.max(1)) {
        let b = Batch::new(chunk, 0, &model.device)?;
        let (s, c) = model.loss_and_grad(&b, None, 1.0, None, true)?;
        sum += f64::from(s.to_scalar::<f32>()?);
        n += c;
    }
    Ok((if n == 0 { f64::NAN } else { sum / n as f64 }, n))
}

fn render_prompt(params: &Params, tk: &Bundle, prompt: &str) -> Result<String, NodeError> {
    if params.str("format") == Some("chat_template") {
        let src = tk
            .chat_template
            .as_deref()
            .ok_or_else(|| NodeError::Failed("format `chat_template`: the tuned model has no chat template".into()))?;
        let eos = tk.eos.as_ref().map(|e| e.1.as_str()).unwrap_or("");
        let bos = tk.bos.as_ref().map(|e| e.1.as_str()).unwrap_or("");
        let t = ChatTemplate::new(src, bos, eos).map_err(NodeError::ChatTemplate)?;
        return Ok(t.pair(params.str("system"), prompt, "").map_err(NodeError::ChatTemplate)?.0);
    }
    let (p, a) = template::seed(prompt, "", "");
    Ok(format!("{p}{a}"))
}

impl NodeKind for Eval {
    fn name(&self) -> &'static str {
        "eval"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "Held-out loss and perplexity plus generations for base and tuned models side by side (report.md, report.json)."
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
        vec![OutputSpec { name: "report", dir: true, doc: "report.md and report.json: loss, perplexity, generations" }]
    }

    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError> {
        let dev = ctx.candle_device()?;
        let dtype = match ctx.params.str("dtype") {
            Some("bf16") => candle_core::DType::BF16,
            Some("f16") => candle_core::DType::F16,
            _ => candle_core::DType::F32,
        };
        let base = load::load_as(ctx.input("base")?, &dev, dtype)?;
        let tuned_path = ctx.input("tuned")?.to_path_buf();
        let tuned = load::load_as(&tuned_path, &dev, dtype)?;
        let tk = load_tokenizer(&tuned_path)?;
        let ds_path = ctx.input("dataset")?.to_path_buf();
        let ds = TokenDataset::read(&ds_path)?;
        let bs = ctx.params.int("batch_size") as usize;
        let prompts: Vec<String> = match ctx.inputs.get("prompts") {
            Some(p) => std::fs::read_to_string(p)
                .map_err(NodeError::io("reading", p))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            None => Vec::new(),
        };
        ctx.progress.start(Some(2 + prompts.len() as u64), "tasks");
        let (base_loss, n) = dataset_loss(&base, &ds, bs)?;
        ctx.progress.update(1, Some(format!("base loss {base_loss:.4}")));
        let (tuned_loss, _) = dataset_loss(&tuned, &ds, bs)?;
        ctx.progress.update(2, Some(format!("tuned loss {tuned_loss:.4}")));
        let stop: Vec<u32> = tk.eos.iter().map(|e| e.0).collect();
        let (max_new, temp, top_p, seed) = (
            ctx.params.int("max_new_tokens") as usize,
            ctx.params.float("temperature"),
            ctx.params.float("top_p"),
            ctx.params.int("seed") as u64,
        );
        let mut gens = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let text = render_prompt(ctx.params, &tk, p)?;
            let ids = tk
                .tokenizer
                .encode_fast(text.as_str(), false)
                .map_err(|source| NodeError::Tokenizers { action: format!("tokenizing prompt {}", i + 1), source })?
                .get_ids()
                .to_vec();
            let mut outs = Vec::new();
            for m in [&base, &tuned] {
                let g = generate(m, &ids, &stop, max_new, temp, top_p, seed)?;
                let text = tk
                    .tokenizer
                    .decode(&g, true)
                    .map_err(|source| NodeError::Tokenizers { action: "decoding".into(), source })?;
                // A generation cut at max_new_tokens can end inside a multi-byte character.
                outs.push(text.trim_end_matches('\u{FFFD}').to_string());
            }
            ctx.progress.update(3 + i as u64, None);
            gens.push(json!({"prompt": p, "base": outs[0], "tuned": outs[1]}));
        }
        let report = json!({
            "tokens": n,
            "base": {"loss": base_loss, "perplexity": base_loss.exp()},
            "tuned": {"loss": tuned_loss, "perplexity": tuned_loss.exp()},
            "generation": {"max_new_tokens": max_new, "temperature": temp, "top_p": top_p, "seed": seed},
            "generations": gens,
        });
        let dir = ctx.output("report");
        std::fs::create_dir_all(&dir).map_err(NodeError::io("creating", &dir))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report).expect("json"))
            .map_err(NodeError::io("writing", &dir))?;
        let mut md = format!(
            "# Evaluation\n\nHeld-out set: {} records, {n} labelled tokens.\n\n| model | loss | perplexity |\n|---|---|---|\n| base | {base_loss:.4} | {:.2} |\n| tuned | {tuned_loss:.4} | {:.2} |\n\n",
            ds.len(),
            base_loss.exp(),
            tuned_loss.exp()
        );
        let how = if temp <= 0.0 { "greedy".to_string() } else { format!("temperature {temp}, top-p {top_p}, seed {seed}") };
        md += &format!("## Generations ({how}, at most {max_new} new tokens)\n\n");
        for g in &gens {
            md += &format!(
                "### {}\n\n**base:** {}\n\n**tuned:** {}\n\n",
                g["prompt"].as_str().unwrap_or(""),
                g["base"].as_str().unwrap_or("").trim(),
                g["tuned"].as_str().unwrap_or("").trim()
            );
        }
        std::fs::write(dir.join("report.md"), md).map_err(NodeError::io("writing", &dir))?;
        ctx.set_summary(format!("held-out loss base {base_loss:.4} -> tuned {tuned_loss:.4}"));
        Ok(())
    }
}
