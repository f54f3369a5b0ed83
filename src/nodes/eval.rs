//! `eval`: held-out loss and perplexity, and generations, for the base and the tuned model side
//! by side.
//!
//! Loss is the mean next-token cross-entropy over the dataset's labelled tokens (the same masking
//! as training). Generation renders each prompt in the training format, decodes greedily (or with
//! seeded temperature / top-p sampling) with a KV cache, and stops at the end-of-sentence token
//! or `max_new_tokens`. Writes `report.md` and `report.json` into the `report` folder.
//!
//! The prompts file holds one prompt per line, or with `schema: messages | sharegpt` one
//! conversation per line (JSON Lines, as fix-json reads them). A conversation is replayed: its
//! turns up to its last user (or tool) message are rendered with the template and the models
//! write the next assistant turn; a final assistant message is the reference answer, reported
//! beside theirs.

use serde_json::json;

use super::chat_params::{chat_schema, CONTENT_FIELD, MESSAGES_FIELD, ROLE_FIELD};
use super::{Accepts, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::dataset::chat;
use crate::dataset::TokenDataset;
use crate::model::generate::generate;
use crate::model::llama::{Batch, Model};
use crate::model::load;
use crate::params::{Default, ParamSpec, ParamType, Params};
use crate::tokenizer::load::{load as load_tokenizer, Bundle};
use crate::tokenizer::template::{self, ChatTemplate, Message};

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
    InputSpec {
        name: "prompts",
        required: false,
        accepts: Accepts::File,
        doc: "prompts, one per line; with `schema` messages or sharegpt, JSON Lines of conversations to replay",
    },
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
        name: "schema",
        ty: ParamType::Enum(chat::SCHEMAS),
        default: Default::Str("alpaca"),
        doc: "the prompts file: alpaca (one prompt per line) or messages / sharegpt conversations (JSON Lines), each replayed up to its last user turn",
    },
    MESSAGES_FIELD,
    ROLE_FIELD,
    CONTENT_FIELD,
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

/// The params added with conversation prompts: at their defaults they change nothing, so they
/// stay out of the key and the keys of existing pipelines hold.
const ADDED_WITH_CONVERSATIONS: &[&str] = &["schema", "messages_field", "role_field", "content_field"];

/// One prompt of the prompts file.
enum Prompt {
    /// A line of text: one user turn.
    Text(String),
    /// A conversation up to the turn the models answer, and the answer it had, if any.
    Conversation { messages: Vec<Message>, reference: Option<String> },
}

impl Prompt {
    /// The text that heads the prompt in the report: the last user (or tool) message.
    fn title(&self) -> &str {
        match self {
            Prompt::Text(t) => t,
            Prompt::Conversation { messages, .. } => messages.last().map_or("", |m| m.content.as_str()),
        }
    }
}

/// Reads the prompts file: lines of text, or JSON Lines of conversations.
fn read_prompts(params: &Params, path: &std::path::Path) -> Result<Vec<Prompt>, NodeError> {
    let text = std::fs::read_to_string(path).map_err(NodeError::io("reading", path))?;
    let Some((schema, fields)) = chat_schema(params) else {
        return Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| Prompt::Text(l.into())).collect());
    };
    let bad = |line: usize, col: usize, message: String| NodeError::BadInput {
        path: path.to_path_buf(),
        location: Some((line, col)),
        message,
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).map_err(|e| {
            bad(
                i + 1,
                e.column(),
                format!(
                    "not a JSON object: {e} (schema `{}`: one conversation per line)",
                    params.str("schema").unwrap_or_default()
                ),
            )
        })?;
        let mut messages = chat::messages(&obj, schema, &fields).map_err(|p| bad(i + 1, 1, p.to_string()))?;
        let reference = match messages.last() {
            Some(m) if m.role == "assistant" => messages.pop().map(|m| m.content),
            _ => None,
        };
        match messages.last() {
            Some(m) if m.role == "user" || m.role == "tool" => {}
            _ => {
                return Err(bad(
                    i + 1,
                    1,
                    format!("`{}`: nothing to answer: a conversation to replay ends with a user turn (or a user turn and the reference answer)", fields.messages),
                ))
            }
        }
        out.push(Prompt::Conversation { messages, reference });
    }
    Ok(out)
}

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

/// The template prompts are rendered with: the tuned model's own chat template, or the seed's
/// format as a chat template (what export-gguf writes for it).
fn prompt_template(params: &Params, tk: &Bundle) -> Result<ChatTemplate, NodeError> {
    let eos = tk.eos.as_ref().map(|e| e.1.as_str()).unwrap_or("");
    let bos = tk.bos.as_ref().map(|e| e.1.as_str()).unwrap_or("");
    let source = if params.str("format") == Some("chat_template") {
        tk.chat_template
            .clone()
            .ok_or_else(|| NodeError::Failed("format `chat_template`: the tuned model has no chat template".into()))?
    } else {
        template::seed_chat_template(eos)
    };
    ChatTemplate::new(&source, bos, eos).map_err(NodeError::ChatTemplate)
}

fn render_prompt(params: &Params, template: &ChatTemplate, prompt: &Prompt) -> Result<String, NodeError> {
    match prompt {
        Prompt::Text(text) if params.str("format") == Some("chat_template") => {
            Ok(template.pair(params.str("system"), text, "").map_err(NodeError::ChatTemplate)?.0)
        }
        Prompt::Text(text) => {
            let (p, a) = template::seed(text, "", "");
            Ok(format!("{p}{a}"))
        }
        Prompt::Conversation { messages, .. } => {
            let system = params.str("system").filter(|_| messages.first().is_none_or(|m| m.role != "system"));
            let with_system: Vec<Message> = system
                .map(|s| Message { role: "system".into(), content: s.into() })
                .into_iter()
                .chain(messages.iter().cloned())
                .collect();
            template.render(&with_system, true).map_err(NodeError::ChatTemplate)
        }
    }
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
    fn key_neutral_params(&self) -> &'static [&'static str] {
        ADDED_WITH_CONVERSATIONS
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
        let prompts = match ctx.inputs.get("prompts") {
            Some(p) => read_prompts(ctx.params, p)?,
            None => Vec::new(),
        };
        let template = if prompts.is_empty() { None } else { Some(prompt_template(ctx.params, &tk)?) };
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
            let text = render_prompt(ctx.params, template.as_ref().expect("prompts have a template"), p)?;
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
            let mut g = json!({"prompt": p.title(), "base": outs[0], "tuned": outs[1]});
            if let Prompt::Conversation { messages, reference } = p {
                g["conversation"] = json!(messages);
                g["reference"] = json!(reference);
            }
            gens.push(g);
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
            md += &format!("### {}\n\n", g["prompt"].as_str().unwrap_or(""));
            if let Some(turns) = g["conversation"].as_array() {
                for t in &turns[..turns.len().saturating_sub(1)] {
                    md += &format!(
                        "> **{}:** {}\n>\n",
                        t["role"].as_str().unwrap_or(""),
                        t["content"].as_str().unwrap_or("").trim()
                    );
                }
                md += "\n";
            }
            if let Some(r) = g["reference"].as_str() {
                md += &format!("**reference:** {}\n\n", r.trim());
            }
            md += &format!(
                "**base:** {}\n\n**tuned:** {}\n\n",
                g["base"].as_str().unwrap_or("").trim(),
                g["tuned"].as_str().unwrap_or("").trim()
            );
        }
        std::fs::write(dir.join("report.md"), md).map_err(NodeError::io("writing", &dir))?;
        ctx.set_summary(format!("held-out loss base {base_loss:.4} -> tuned {tuned_loss:.4}"));
        Ok(())
    }
}
