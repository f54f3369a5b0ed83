//! `tokenize`: records + tokenizer -> a binary token dataset with masked prompt labels.
//!
//! Formats:
//! - `seed` (the tutorial's): prompt `User: {instruction}{input}\n\n`, completion
//!   `Assistant: {output}`, then the tokenizer's end-of-sentence token. Prompt and completion are
//!   tokenized separately without special tokens and concatenated, exactly as the tutorial's
//!   `process_func` does.
//! - `chat_template`: the model's own Jinja template (optional `system` prompt); the prompt is
//!   the rendered conversation up to the assistant turn, the completion the rest. The end token
//!   is appended only if the template did not already emit it.
//!
//! Records are alpaca-style (instruction / input / output) by default. With `schema: messages`
//! or `schema: sharegpt` each record is a conversation ([`crate::dataset::chat`]), rendered whole
//! with the chat template (`format: seed` renders it with the seed's format as a template,
//! [`template::seed_chat_template`]); `train_on` picks the trained tokens: every assistant turn
//! (default), the last one, or all. Each assistant turn is located by rendering prefixes of the
//! conversation and the rendered text is tokenized once, with offsets, so a turn's edges fall
//! exactly between tokens ([`crate::dataset::encode`]). A conversation longer than `max_length`
//! is cut after its last whole assistant turn that fits, else at `max_length`; `stats` counts the
//! conversations cut and those left with no trained token (which follow `on_empty`).
//!
//! Labels are -100 on prompt tokens; everything is cut at `max_length`. A record left with no
//! trained token (a prompt longer than `max_length`) would silently train on nothing, so it is an
//! error by default, with a count; `on_empty: skip` drops such records instead.
//!
//! Key extras: the resolved end token, the digests of every tokenizer file read (a
//! `tokenizer_config.json` beside a `tokenizer.json` included), and a digest of the template
//! rendered on a probe conversation, so a change anywhere that alters the text reruns the node.
//!
//! How it runs:
//! 1. the records file is parsed into borrowed records ([`read_records`]: only the three named
//!    fields) while the tokenizer loads on the other core ([`load_encoder`]: the ids-only fast
//!    encoder for byte-level BPE tokenizers, the general `tokenizers` path otherwise);
//! 2. the records are encoded in parallel, in chunks, and written in order as they are done
//!    ([`encode_records`]), so the ids are never all in memory; the header, offsets and label
//!    flags follow at the end ([`DatasetWriter`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::chat_params::{chat_schema, CONTENT_FIELD, MESSAGES_FIELD, ROLE_FIELD};
use super::{Accepts, Extra, Extras, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::dataset::chat::{self, ChatFields, Schema};
use crate::dataset::encode::{encode_records, EncodeError, EncodeSpec, Encoded, Items, TrainOn};
use crate::dataset::records::{json_position, read_records};
use crate::dataset::DatasetWriter;
use crate::params::{Default, ParamSpec, ParamType, Params};
use crate::tokenizer::load::{load_encoder, EncoderBundle};
use crate::tokenizer::template::{self, ChatTemplate, Message};

/// The `tokenize` kind.
pub struct Tokenize;

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "records",
        required: true,
        accepts: Accepts::File,
        doc: "a JSON array of records (fix-json's `records`, `train` or `eval`)",
    },
    InputSpec {
        name: "tokenizer",
        required: true,
        accepts: Accepts::FileOrModel,
        doc: "a tokenizer.json, a Hugging Face model folder, or a GGUF model (file or source)",
    },
];

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "format",
        ty: ParamType::Enum(&["seed", "chat_template"]),
        default: Default::Str("seed"),
        doc: "prompt format: the tutorial's User:/Assistant: or the model's chat template",
    },
    ParamSpec {
        name: "max_length",
        ty: ParamType::Int { min: 2, max: 1 << 20 },
        default: Default::Int(384),
        doc: "truncate every record to this many tokens",
    },
    ParamSpec {
        name: "eos_token",
        ty: ParamType::Str,
        default: Default::Null,
        doc: "end-of-sentence token text (default: the tokenizer's own)",
    },
    ParamSpec { name: "system", ty: ParamType::Str, default: Default::Null, doc: "system prompt for `chat_template`" },
    ParamSpec {
        name: "on_empty",
        ty: ParamType::Enum(&["fail", "skip"]),
        default: Default::Str("fail"),
        doc: "records with no trained token after truncation: fail the node or drop them",
    },
    ParamSpec {
        name: "instruction_field",
        ty: ParamType::Str,
        default: Default::Str("instruction"),
        doc: "record field holding the instruction",
    },
    ParamSpec {
        name: "input_field",
        ty: ParamType::Str,
        default: Default::Str("input"),
        doc: "record field appended to the instruction (missing = empty)",
    },
    ParamSpec {
        name: "output_field",
        ty: ParamType::Str,
        default: Default::Str("output"),
        doc: "record field holding the answer",
    },
    ParamSpec {
        name: "schema",
        ty: ParamType::Enum(chat::SCHEMAS),
        default: Default::Str("alpaca"),
        doc: "records: alpaca (instruction/input/output), messages (OpenAI role/content) or sharegpt (from/value) conversations",
    },
    ParamSpec {
        name: "train_on",
        ty: ParamType::Enum(TrainOn::NAMES),
        default: Default::Str("all_assistant"),
        doc: "conversations: train on every assistant turn, the last one, or every token",
    },
    MESSAGES_FIELD,
    ROLE_FIELD,
    CONTENT_FIELD,
];

/// The params added with conversations: at their defaults (alpaca) they change nothing, so
/// they stay out of the key and the keys of existing pipelines hold.
const ADDED_WITH_CONVERSATIONS: &[&str] = &["schema", "train_on", "messages_field", "role_field", "content_field"];

/// Dataset statistics written as the `stats` output.
#[derive(Debug, Serialize)]
pub struct Stats {
    records: usize,
    tokens: u64,
    trained_tokens: u64,
    truncated_records: usize,
    skipped_empty: usize,
    mean_length: f64,
    max_length_seen: usize,
    trained_fraction: f64,
    max_length: usize,
    format: String,
    eos_id: u32,
    eos_token: String,
    /// Conversation schemas only (absent for alpaca, whose stats stay as they were).
    #[serde(skip_serializing_if = "Option::is_none")]
    conversations: Option<ChatStats>,
}

impl Stats {
    /// The stats of a finished encoding (every record pushed to its writer); `conversations` is
    /// left for the conversation path to fill.
    fn of(e: &Encoded, skip_empty: bool, max_length: usize, params: &Params, eos: &(u32, String)) -> Stats {
        let n = e.writer.len();
        Stats {
            records: n,
            tokens: e.tokens,
            trained_tokens: e.trained_tokens,
            truncated_records: e.truncated,
            skipped_empty: if skip_empty { e.empty.len() } else { 0 },
            mean_length: if n == 0 { 0.0 } else { e.tokens as f64 / n as f64 },
            max_length_seen: e.max_seen,
            trained_fraction: if e.tokens == 0 { 0.0 } else { e.trained_tokens as f64 / e.tokens as f64 },
            max_length,
            format: params.str("format").unwrap_or("seed").into(),
            eos_id: eos.0,
            eos_token: eos.1.clone(),
            conversations: None,
        }
    }

    /// Writes the `stats` output.
    fn write(&self, ctx: &RunCtx) -> Result<(), NodeError> {
        let sp = ctx.output("stats");
        std::fs::write(&sp, serde_json::to_string_pretty(self).expect("stats serialise")).map_err(NodeError::io("writing", &sp))
    }
}

/// The conversation part of [`Stats`].
#[derive(Debug, Serialize)]
pub struct ChatStats {
    schema: String,
    train_on: String,
    /// Conversations cut at `max_length` (after their last whole assistant turn that fit, or at
    /// `max_length` itself).
    cut: usize,
    /// Conversations the cut left with no trained token (kept, or dropped under `on_empty: skip`).
    cut_to_nothing: usize,
}

struct Prepared {
    bundle: EncoderBundle,
    eos: (u32, String),
    chat: Option<ChatTemplate>,
}

fn prepare(params: &Params, tokenizer: &Path) -> Result<Prepared, NodeError> {
    let bundle = load_encoder(tokenizer)?;
    let eos = match params.str("eos_token") {
        Some(text) => {
            let id = bundle.encoder.token_to_id(text).ok_or_else(|| {
                NodeError::Param { param: "eos_token".into(), message: format!("`{text}` is not a token of {}", tokenizer.display()) }
            })?;
            (id, text.to_string())
        }
        None => bundle.eos.clone().ok_or_else(|| {
            NodeError::Failed(format!(
                "cannot tell the end-of-sentence token of {} (no tokenizer_config.json beside it with `eos_token`); set params.eos_token",
                tokenizer.display()
            ))
        })?,
    };
    if Some(eos.0) == bundle.pad && bundle.eos.as_ref().map(|e| e.0) != Some(eos.0) {
        return Err(NodeError::Param {
            param: "eos_token".into(),
            message: format!("`{}` is the padding token, not the end-of-sentence token", eos.1),
        });
    }
    let bos = bundle.bos.as_ref().map(|b| b.1.as_str()).unwrap_or("");
    let chat = if params.str("format") == Some("chat_template") {
        let src = bundle.chat_template.as_deref().ok_or_else(|| {
            NodeError::Failed(format!("format `chat_template`: {} has no chat template; use `format: seed`", tokenizer.display()))
        })?;
        Some(ChatTemplate::new(src, bos, &eos.1).map_err(NodeError::ChatTemplate)?)
    } else if chat_schema(params).is_some() {
        // Conversations in the seed format: the seed's format as a template.
        Some(ChatTemplate::new(&template::seed_chat_template(&eos.1), bos, &eos.1).map_err(NodeError::ChatTemplate)?)
    } else {
        None
    };
    Ok(Prepared { bundle, eos, chat })
}

impl Prepared {
    fn pair(&self, params: &Params, ins: &str, inp: &str, out: &str) -> Result<(String, String), NodeError> {
        match &self.chat {
            None => Ok(template::seed(ins, inp, out)),
            Some(t) => t.pair(params.str("system"), &format!("{ins}{inp}"), out).map_err(NodeError::ChatTemplate),
        }
    }
}

impl NodeKind for Tokenize {
    fn name(&self) -> &'static str {
        "tokenize"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "Tokenize records into prompt/answer pairs (the tutorial's User:/Assistant: format or the model's chat template) with prompt labels masked, truncated at max_length."
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self, _params: &Params) -> Vec<OutputSpec> {
        vec![
            OutputSpec { name: "dataset", dir: false, doc: "binary token dataset (layout in the README)" },
            OutputSpec {
                name: "stats",
                dir: false,
                doc: "JSON: records, tokens, truncated records, mean/max length, trained fraction",
            },
        ]
    }

    fn fingerprint_inputs(&self) -> &'static [&'static str] {
        &["tokenizer"]
    }

    fn key_neutral_params(&self) -> &'static [&'static str] {
        ADDED_WITH_CONVERSATIONS
    }

    fn fingerprint_extra(&self, params: &Params, inputs: &BTreeMap<String, PathBuf>) -> Result<Extras, NodeError> {
        let tok = inputs.get("tokenizer").ok_or_else(|| NodeError::NotConnected("tokenizer".into()))?;
        let p = prepare(params, tok)?;
        let mut extra = Extra::new();
        extra.insert("end token".into(), format!("{} {:?}", p.eos.0, p.eos.1));
        // The tokenizer input itself is already in the key by content; hash only the side files.
        for f in p.bundle.files.iter().filter(|f| *f != tok) {
            let name = f.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            let d = crate::hash::hash_file(f).map_err(NodeError::io("hashing", f))?;
            extra.insert(format!("tokenizer file {name}"), d);
        }
        let probe = p.pair(params, "PROBE-INSTRUCTION", "PROBE-INPUT", "PROBE-OUTPUT")?;
        extra.insert(
            "rendered template".into(),
            blake3::hash(format!("{}\u{0}{}\u{0}{}", probe.0, probe.1, p.eos.1).as_bytes()).to_hex().to_string(),
        );
        if let (Some(_), Some(t)) = (chat_schema(params), &p.chat) {
            // Where the assistant turns of a multi-turn conversation fall, too.
            let m = |role: &str, content: &str| Message { role: role.into(), content: content.into() };
            let conv = [
                m("system", "PROBE-S"),
                m("user", "PROBE-U1"),
                m("assistant", "PROBE-A1"),
                m("tool", "PROBE-T"),
                m("user", "PROBE-U2"),
                m("assistant", "PROBE-A2"),
            ];
            let rendered = match t.assistant_spans(&conv) {
                Ok((text, spans)) => format!("{text}\u{0}{spans:?}"),
                // A template that rejects a role of the probe: hash what it says.
                Err(e) => format!("error\u{0}{e}"),
            };
            extra.insert("rendered conversation".into(), blake3::hash(rendered.as_bytes()).to_hex().to_string());
        }
        Ok(Extras { values: extra, files: p.bundle.files.iter().filter(|f| *f != tok).cloned().collect() })
    }

    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError> {
        let rec_path = ctx.input("records")?.to_path_buf();
        let tok_path = ctx.input("tokenizer")?.to_path_buf();
        let params = ctx.params;
        let (fi, fx, fo) = (
            params.str("instruction_field").unwrap_or("instruction"),
            params.str("input_field").unwrap_or("input"),
            params.str("output_field").unwrap_or("output"),
        );
        let t0 = std::time::Instant::now();
        let text = std::fs::read_to_string(&rec_path).map_err(NodeError::io("reading", &rec_path))?;
        if let Some((schema, fields)) = chat_schema(params) {
            return run_chats(ctx, &rec_path, &tok_path, &text, schema, &fields);
        }
        // Parsing the records and loading the tokenizer are independent: one on each core.
        let (records, p) = rayon::join(
            || {
                let r = read_records(&text, [fi, fx, fo]);
                tracing::debug!("records read and parsed in {:?}", t0.elapsed());
                r
            },
            || {
                let t = std::time::Instant::now();
                let p = prepare(params, &tok_path);
                tracing::debug!(
                    "tokenizer loaded in {:?} (fast path: {})",
                    t.elapsed(),
                    p.as_ref().is_ok_and(|p| p.bundle.encoder.is_fast())
                );
                p
            },
        );
        let records = records.map_err(|e| NodeError::BadInput {
            path: rec_path.clone(),
            location: Some(json_position(&text, &e)),
            message: format!("expected a JSON array of records ({e}); run the file through a fix-json node first"),
        })?;
        let p = p?;
        ctx.progress.start(Some(records.len() as u64), "records");
        let max_len = params.int("max_length") as usize;
        let skip_empty = params.str("on_empty") == Some("skip");
        let total = records.len();
        let out = ctx.output("dataset");
        let writer = DatasetWriter::create(&out, total).map_err(NodeError::io("writing", &out))?;
        let spec = EncodeSpec {
            encoder: &p.bundle.encoder,
            chat: p.chat.as_ref(),
            system: params.str("system"),
            eos: p.eos.0,
            max_len,
            skip_empty,
            train_on: TrainOn::AllAssistant,
        };
        let encoded = encode_records(&spec, Items::Pairs(&records), writer);
        drop(records);
        let encoded = encoded.map_err(|e| match e {
            EncodeError::Fields { record } => NodeError::BadInput {
                path: rec_path.clone(),
                location: None,
                message: format!("record {record} has no string fields `{fi}` and `{fo}`"),
            },
            EncodeError::Write(e) => NodeError::io("writing", &out)(e),
            e => e.into(),
        })?;
        let stats = Stats::of(&encoded, skip_empty, max_len, params, &p.eos);
        let Encoded { writer, empty, truncated, misses: (n_miss, miss_bytes), .. } = encoded;
        tracing::debug!(
            "{total} records encoded and their ids written at {:?}; {n_miss} pieces ({miss_bytes} bytes) went through BPE",
            t0.elapsed()
        );
        if !empty.is_empty() {
            ctx.log(format!("records with no trained token after truncation: {empty:?}"));
            if !skip_empty {
                let first: Vec<String> = empty.iter().take(5).map(|r| r.to_string()).collect();
                return Err(NodeError::BadInput {
                    path: rec_path,
                    location: None,
                    message: format!(
                        "{} record{} would train on nothing: the prompt fills all {max_len} tokens (records {}{}); raise `max_length` or set `on_empty: skip`",
                        empty.len(),
                        if empty.len() == 1 { "" } else { "s" },
                        first.join(", "),
                        if empty.len() > 5 { ", …" } else { "" }
                    ),
                });
            }
        }
        ctx.progress.update(total as u64, None);
        writer.finish().map_err(NodeError::io("writing", &out))?;
        tracing::debug!("dataset written at {:?}", t0.elapsed());
        stats.write(ctx)?;
        ctx.set_summary(format!(
            "{} records, {} tokens ({:.0}% trained), {truncated} truncated",
            stats.records,
            stats.tokens,
            stats.trained_fraction * 100.0
        ));
        Ok(())
    }
}

/// `tokenize` on conversation records (see the module docs).
fn run_chats(
    ctx: &mut RunCtx,
    rec_path: &Path,
    tok_path: &Path,
    text: &str,
    schema: Schema,
    fields: &ChatFields,
) -> Result<(), NodeError> {
    let params = ctx.params;
    let bad = |location: Option<(usize, usize)>, message: String| NodeError::BadInput {
        path: rec_path.to_path_buf(),
        location,
        message,
    };
    let (values, p) = rayon::join(|| serde_json::from_str::<Vec<serde_json::Value>>(text), || prepare(params, tok_path));
    let values = values.map_err(|e| {
        bad(
            Some(json_position(text, &e)),
            format!("expected a JSON array of records ({e}); run the file through a fix-json node first"),
        )
    })?;
    let p = p?;
    let system = params.str("system");
    let mut chats = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let serde_json::Value::Object(obj) = v else {
            return Err(bad(None, format!("record {} is {}, not an object", i + 1, chat::type_name(v))));
        };
        let mut conv = chat::conversation(obj, schema, fields).map_err(|problem| {
            bad(
                None,
                format!(
                    "record {}: {problem}; a fix-json node with the same `schema` drops such records and reports them",
                    i + 1
                ),
            )
        })?;
        if let Some(s) = system.filter(|_| conv[0].role != "system") {
            conv.insert(0, Message { role: "system".into(), content: s.into() });
        }
        chats.push(conv);
    }
    drop(values);
    let total = chats.len();
    ctx.progress.start(Some(total as u64), "conversations");
    let max_len = params.int("max_length") as usize;
    let skip_empty = params.str("on_empty") == Some("skip");
    let train_on = params.str("train_on").and_then(TrainOn::parse).unwrap_or(TrainOn::AllAssistant);
    let out = ctx.output("dataset");
    let writer = DatasetWriter::create(&out, total).map_err(NodeError::io("writing", &out))?;
    let spec = EncodeSpec {
        encoder: &p.bundle.encoder,
        chat: p.chat.as_ref(),
        system: None,
        eos: p.eos.0,
        max_len,
        skip_empty,
        train_on,
    };
    let encoded = encode_records(&spec, Items::Chats(&chats), writer).map_err(|e| match e {
        EncodeError::Write(e) => NodeError::io("writing", &out)(e),
        e => e.into(),
    })?;
    let mut stats = Stats::of(&encoded, skip_empty, max_len, params, &p.eos);
    let Encoded { writer, empty, truncated, .. } = encoded;
    if !empty.is_empty() {
        ctx.log(format!("conversations with no trained token after truncation: {empty:?}"));
        if !skip_empty {
            let first: Vec<String> = empty.iter().take(5).map(|r| r.to_string()).collect();
            return Err(bad(
                None,
                format!(
                    "{} conversation{} would train on nothing: no trained token is left in the first {max_len} tokens (records {}{}); raise `max_length` or set `on_empty: skip`",
                    empty.len(),
                    if empty.len() == 1 { "" } else { "s" },
                    first.join(", "),
                    if empty.len() > 5 { ", …" } else { "" }
                ),
            ));
        }
    }
    ctx.progress.update(total as u64, None);
    writer.finish().map_err(NodeError::io("writing", &out))?;
    stats.conversations = Some(ChatStats {
        schema: params.str("schema").unwrap_or_default().into(),
        train_on: params.str("train_on").unwrap_or_default().into(),
        cut: truncated,
        cut_to_nothing: empty.len(),
    });
    stats.write(ctx)?;
    ctx.set_summary(format!(
        "{} conversations, {} tokens ({:.0}% trained), {truncated} cut",
        stats.records,
        stats.tokens,
        stats.trained_fraction * 100.0
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::{eval::Eval, fix_json::FixJson, key_params, NodeKind};
    use crate::params::Value;

    fn defaults(kind: &dyn NodeKind) -> Params {
        Params(kind.params().iter().filter_map(|p| Some((p.name.to_string(), p.default.value()?))).collect())
    }

    fn key_names(kind: &dyn NodeKind, p: &Params) -> Vec<String> {
        key_params(kind, p).into_keys().collect()
    }

    /// The params of the key before conversations existed: a pipeline that does not use them
    /// keeps its keys (and its cache).
    #[test]
    fn the_conversation_params_at_their_defaults_leave_keys_as_they_were() {
        let before =
            ["eos_token", "format", "input_field", "instruction_field", "max_length", "on_empty", "output_field", "system"];
        let mut p = defaults(&Tokenize);
        assert_eq!(key_names(&Tokenize, &p), before);
        p.0.insert("schema".into(), Value::Str("messages".into()));
        p.0.insert("role_field".into(), Value::Str("speaker".into()));
        let names = key_names(&Tokenize, &p);
        assert!(names.contains(&"schema".into()) && names.contains(&"role_field".into()), "{names:?}");
        assert!(!names.contains(&"train_on".into()), "{names:?}");

        let before = ["dedupe", "eval_fraction", "on_error", "required", "seed"];
        let mut p = defaults(&FixJson);
        assert_eq!(key_names(&FixJson, &p), before);
        p.0.insert("input_format".into(), Value::Str("csv".into()));
        assert!(key_names(&FixJson, &p).contains(&"input_format".into()));

        let before = ["batch_size", "dtype", "format", "max_new_tokens", "seed", "system", "temperature", "top_p"];
        let mut p = defaults(&Eval);
        assert_eq!(key_names(&Eval, &p), before);
        p.0.insert("schema".into(), Value::Str("sharegpt".into()));
        assert!(key_names(&Eval, &p).contains(&"schema".into()));
    }

    #[test]
    fn field_names_default_by_schema_and_can_be_overridden() {
        let mut p = defaults(&Tokenize);
        assert!(chat_schema(&p).is_none());
        p.0.insert("schema".into(), Value::Str("sharegpt".into()));
        let (schema, fields) = chat_schema(&p).unwrap();
        assert_eq!(
            (schema, fields.messages.as_str(), fields.role.as_str(), fields.content.as_str()),
            (Schema::ShareGpt, "conversations", "from", "value")
        );
        p.0.insert("content_field".into(), Value::Str("text".into()));
        assert_eq!(chat_schema(&p).unwrap().1.content, "text");
    }
}
