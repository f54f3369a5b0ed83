//! `export-gguf`: a model to one GGUF file for llama.cpp plus an Ollama `Modelfile`, verified.
//!
//! The node adapts the pipeline to [`crate::export`]: it loads the model and the training
//! tokenizer, picks the chat template the model was trained with (`format`, as in tokenize),
//! writes `model/model.gguf` and `model/Modelfile`, then runs the verification gate and writes
//! `report/report.json` and `report/report.md`. With the gate off (`verify: false`) a Hugging
//! Face folder is not loaded: its tensors stream from the safetensors files into the GGUF
//! file, which is byte for byte the same. A failed check fails the node, so nothing
//! downstream (and no cache entry) ever sees an export that llama.cpp would read differently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

use super::{Accepts, Extras, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::dataset::records::json_position;
use crate::export::gate::{Check, Gate};
use crate::export::llamacpp::{self, LlamaCpp};
use crate::export::modelfile::Modelfile;
use crate::export::{write_gguf, write_gguf_from_folder};
use crate::gguf::ftype::{FileType, FileTypeError};
use crate::gguf::{GgufFile, GgufValue};
use crate::model::load;
use crate::params::{Default, ParamSpec, ParamType, Params};
use crate::tokenizer::load::{load as load_tokenizer, with_tokenizer as tokenizer_with, Bundle};
use crate::tokenizer::template::{self, ChatTemplate};
use crate::tokenizer::to_gguf::{to_gguf, HfTokenizer, ToGgufError, TokenizerMetadata};

/// The `export-gguf` kind.
pub struct ExportGguf;

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        accepts: Accepts::Model,
        doc: "the model to export (merge's `model`, a Hugging Face folder, a GGUF file, or a source)",
    },
    InputSpec {
        name: "prompts",
        required: false,
        accepts: Accepts::File,
        doc: "prompts, one per line: the gate compares llama.cpp's greedy continuation with pipe's",
    },
    InputSpec {
        name: "heldout",
        required: false,
        accepts: Accepts::File,
        doc: "held-out records (a JSON array, fix-json's `eval`): the gate's perplexity check for 4-6 bit types",
    },
];

const TYPES: &[&str] =
    &["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0"];

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "type",
        ty: ParamType::Enum(TYPES),
        default: Default::Str("Q8_0"),
        doc: "file type; Q4_K_M mixes Q4_K with Q6_K (or llama.cpp's fallbacks) per tensor as llama-quantize does",
    },
    ParamSpec { name: "name", ty: ParamType::Str, default: Default::Null, doc: "`general.name` (default: the node's name)" },
    ParamSpec {
        name: "format",
        ty: ParamType::Enum(&["seed", "chat_template"]),
        default: Default::Str("seed"),
        doc: "the prompt format the model was trained with (as in tokenize); becomes the GGUF chat template and the Modelfile TEMPLATE",
    },
    ParamSpec { name: "system", ty: ParamType::Str, default: Default::Null, doc: "system prompt: the Modelfile's SYSTEM" },
    ParamSpec {
        name: "pre",
        ty: ParamType::Str,
        default: Default::Null,
        doc: "`tokenizer.ggml.pre` override, for a tokenizer llama.cpp's table does not know",
    },
    ParamSpec { name: "verify", ty: ParamType::Bool, default: Default::Bool(true), doc: "run the verification gate" },
    ParamSpec {
        name: "llama_cpp",
        ty: ParamType::Enum(&["auto", "require", "off"]),
        default: Default::Str("auto"),
        doc: "the gate's llama.cpp checks: when found (PIPE_LLAMA_CPP or PATH), always (missing is an error), or never",
    },
    ParamSpec {
        name: "greedy_tokens",
        ty: ParamType::Int { min: 1, max: 4096 },
        default: Default::Int(32),
        doc: "tokens of greedy continuation compared with llama.cpp (F32/F16/BF16/Q8_0)",
    },
    ParamSpec {
        name: "greedy_tie_margin",
        ty: ParamType::Float { min: 0.0, max: 100.0 },
        default: Default::Null,
        doc: "the greedy check accepts a parting from llama.cpp only where pipe's top-2 logit margin is below this (a near-tie); default 0.25, and 0.5 for Q8_0, whose emulation of ggml's 8-bit activations lands up to ~0.13 off llama.cpp's logits",
    },
    ParamSpec {
        name: "ppl_tolerance",
        ty: ParamType::Float { min: 0.0, max: 10.0 },
        default: Default::Null,
        doc: "allowed held-out perplexity rise over an F16 export, as a fraction (default per type: Q6_K and Q5_K 0.08, Q5_0/Q5_1 0.10, Q4_K 0.15, Q4_0/Q4_1 0.30)",
    },
];

/// Texts the gate's tokenizer checks always include: Chinese, English, code, numbers, spacing.
const SAMPLES: &[&str] = &[
    "现在你要扮演我碰到一位神秘的算命大师, 你是谁?今天我的事业运道如何?",
    "Hello world! How's the weather today? I'm fine, thanks.",
    "  leading spaces, trailing spaces  \n\nand\ttabs\r\n",
    "def f(x):\n    return x**2 + 3.14159 # 12345 67890",
    "🙂 emoji, Ünïcödé, ﬁ ligature, 日本語のテキスト, 한국어",
];

fn err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Failed(e.to_string())
}

/// The chat template the model was trained with: the seed's, or the model's own.
fn chat_template(params: &Params, tk: &Bundle) -> Result<String, NodeError> {
    let eos = tk.eos.as_ref().map(|e| e.1.as_str()).unwrap_or("");
    match params.str("format") {
        Some("chat_template") => tk.chat_template.clone().ok_or_else(|| NodeError::Param {
            param: "format".into(),
            message: "`chat_template`, but the model has no chat template; use `format: seed`".into(),
        }),
        _ => Ok(template::seed_chat_template(eos)),
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>, NodeError> {
    Ok(std::fs::read_to_string(path)
        .map_err(NodeError::io("reading", path))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Held-out records rendered in the training format, one conversation after another.
fn heldout_text(path: &Path, template: &ChatTemplate, system: Option<&str>) -> Result<String, NodeError> {
    let text = std::fs::read_to_string(path).map_err(NodeError::io("reading", path))?;
    let records: Vec<Json> = serde_json::from_str(&text).map_err(|e| NodeError::BadInput {
        path: path.to_path_buf(),
        location: Some(json_position(&text, &e)),
        message: format!("held-out records must be a JSON array of objects: {e}"),
    })?;
    let mut out = String::new();
    for (i, r) in records.iter().enumerate() {
        let field = |k: &str| r.get(k).and_then(Json::as_str).unwrap_or("");
        let (p, c) = template
            .pair(system, &format!("{}{}", field("instruction"), field("input")), field("output"))
            .map_err(|e| err(format!("{}: record {}: chat template: {e}", path.display(), i + 1)))?;
        out.push_str(&p);
        out.push_str(&c);
        out.push('\n');
    }
    Ok(out)
}

/// The tokenizer of `src` and its `tokenizer.*` metadata without the chat template: converted
/// from a Hugging Face folder as llama.cpp's converter does (the folder's `tokenizer.json` is
/// built into a tokenizer once, for both), or copied from a GGUF source.
fn read_tokenizer(src: &Path, pre: Option<&str>) -> Result<(Bundle, Vec<(String, GgufValue)>), NodeError> {
    if src.is_dir() {
        let hf = HfTokenizer::from_dir(src)?;
        let kv = to_gguf(&hf, pre)
            .map_err(|e| match e {
                ToGgufError::UnknownPreTokenizer { .. } => err(format!("{e}: the export-gguf param `pre`")),
                e => e.into(),
            })?
            .into_pairs();
        let tk = tokenizer_with(&src.join("tokenizer.json"), hf.into_tokenizer())?;
        return Ok((tk, kv));
    }
    let tk = load_tokenizer(src)?;
    let f = GgufFile::open(src)?;
    let mut kv: Vec<(String, GgufValue)> = f.metadata.into_iter().filter(|(k, _)| k.starts_with("tokenizer.")).collect();
    if let Some(p) = pre {
        kv.retain(|(k, _)| k != "tokenizer.ggml.pre");
        kv.push(("tokenizer.ggml.pre".into(), GgufValue::String(p.into())));
    }
    Ok((tk, kv))
}

/// The `tokenizer.*` metadata `kv` with the training chat template.
fn with_chat_template(mut kv: Vec<(String, GgufValue)>, chat_template: &str) -> TokenizerMetadata {
    let template = ("tokenizer.chat_template".to_string(), GgufValue::String(chat_template.into()));
    match kv.iter_mut().find(|(k, _)| k == "tokenizer.chat_template") {
        Some(slot) => *slot = template,
        None => kv.push(template),
    }
    TokenizerMetadata { kv }
}

/// The greedy check's near-tie bound: about twice how far pipe's logits sit from llama.cpp's on
/// the default model (F32/F16/BF16, and Q8_0 with its 8-bit activations emulated in
/// `model::ggml_cpu`; BENCHMARKS.md section 13 has the measurements), so a parting at a smaller
/// margin is rounding, not a wrong file.
fn default_tie_margin(t: FileType) -> f32 {
    match t {
        FileType::Q8_0 => 0.5,
        _ => 0.25,
    }
}

/// The stated perplexity bound per type: about twice the rise the default model measures
/// (BENCHMARKS.md section 13), so a broken quantizer fails while honest rounding passes.
fn default_ppl_tolerance(t: FileType) -> f64 {
    match t {
        FileType::Q6_K | FileType::Q5_K_M | FileType::Q5_K_S => 0.08,
        FileType::Q5_0 | FileType::Q5_1 => 0.10,
        FileType::Q4_K_M | FileType::Q4_K_S => 0.15,
        _ => 0.30,
    }
}

fn llama_cpp(params: &Params) -> Result<Option<LlamaCpp>, NodeError> {
    match params.str("llama_cpp") {
        Some("off") => Ok(None),
        Some("require") => LlamaCpp::find().map(Some).ok_or_else(|| NodeError::Param {
            param: "llama_cpp: require".into(),
            message: format!("llama.cpp not found in {}", llamacpp::search_description()),
        }),
        _ => Ok(LlamaCpp::find()),
    }
}

impl NodeKind for ExportGguf {
    fn name(&self) -> &'static str {
        "export-gguf"
    }
    fn version(&self) -> u32 {
        // 2: the report no longer holds the write time (a cached output must not depend on the
        // clock; the log keeps it).
        2
    }
    fn summary(&self) -> &'static str {
        "Write a model as one GGUF file for llama.cpp with an Ollama Modelfile, then verify it (re-read, tokenizer, llama.cpp's greedy output and perplexity)."
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self, _params: &Params) -> Vec<OutputSpec> {
        vec![
            OutputSpec { name: "model", dir: true, doc: "model.gguf and a Modelfile for `ollama create NAME -f Modelfile`" },
            OutputSpec { name: "report", dir: true, doc: "the verification gate's report.json and report.md" },
        ]
    }

    /// Whether llama.cpp takes part in the gate changes the report, so it is part of the key.
    fn fingerprint_extra(&self, params: &Params, _inputs: &BTreeMap<String, PathBuf>) -> Result<Extras, NodeError> {
        let mut e = Extras::default();
        if params.bool("verify") {
            let found = llama_cpp(params)?.is_some();
            e.values.insert("llama.cpp in the gate".into(), if found { "yes" } else { "no" }.into());
        }
        Ok(e)
    }

    fn run(&self, ctx: &mut RunCtx) -> Result<(), NodeError> {
        let file_type: FileType = ctx
            .params
            .str("type")
            .unwrap_or("Q8_0")
            .parse()
            .map_err(|e: FileTypeError| NodeError::Param { param: "type".into(), message: e.to_string() })?;
        let verify = ctx.params.bool("verify");
        let llama = if verify { llama_cpp(ctx.params)? } else { None };
        let src = ctx.input("model")?.to_path_buf();
        ctx.progress.start(Some(3), "steps");
        // The gate runs the model; without it a Hugging Face folder is streamed from its
        // files to the GGUF file (the same bytes) and the model is never loaded.
        let model = if verify || !src.is_dir() {
            ctx.log(format!("loading {}", src.display()));
            Some(load::load(&src, &candle_core::Device::Cpu)?)
        } else {
            None
        };
        let (tk, tok_kv) = read_tokenizer(&src, ctx.params.str("pre"))?;
        let template_src = chat_template(ctx.params, &tk)?;
        let eos_text = tk.eos.as_ref().map(|e| e.1.as_str()).unwrap_or("");
        let bos_text = tk.bos.as_ref().map(|e| e.1.as_str()).unwrap_or("");
        let template = ChatTemplate::new(&template_src, bos_text, eos_text).map_err(NodeError::ChatTemplate)?;
        let tok_meta = with_chat_template(tok_kv, &template_src);
        let stop_texts = tok_meta.end_of_generation_tokens();
        let stop: Vec<u32> = stop_texts.iter().filter_map(|t| tk.tokenizer.token_to_id(t)).collect();
        let mut mf = Modelfile::for_tokenizer("model.gguf", &tok_meta)?;
        if let Some(system) = ctx.params.str("system") {
            mf = mf.with_system(system);
        }
        let mf = mf.render()?;
        let tok_kv = tok_meta.into_pairs();
        let out = ctx.output("model");
        std::fs::create_dir_all(&out).map_err(NodeError::io("creating", &out))?;
        let gguf = out.join("model.gguf");
        let name = ctx.params.str("name").unwrap_or(ctx.node).to_string();
        let t0 = std::time::Instant::now();
        let written = match &model {
            Some(m) => write_gguf(m, tok_kv.clone(), file_type, &name, &gguf)?,
            None => {
                ctx.log(format!("streaming the tensors of {}", src.display()));
                let cfg = load::config(&src)?;
                match write_gguf_from_folder(&src, &cfg, tok_kv.clone(), file_type, &name, &gguf)? {
                    Some(w) => w,
                    None => {
                        ctx.log(format!("a dtype the stream cannot read: loading {}", src.display()));
                        let m = load::load(&src, &candle_core::Device::Cpu)?;
                        write_gguf(&m, tok_kv.clone(), file_type, &name, &gguf)?
                    }
                }
            }
        };
        let write_s = t0.elapsed().as_secs_f64();
        let types = written.types.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
        ctx.log(format!("wrote {} ({} bytes, {types}) in {write_s:.2} s", gguf.display(), written.bytes));
        ctx.progress.update(1, Some(format!("{} written", file_type.name())));

        std::fs::write(out.join("Modelfile"), mf).map_err(NodeError::io("writing", &out))?;
        ctx.progress.update(2, Some("Modelfile written".into()));

        let mut checks: Vec<Check> = Vec::new();
        if let Some(model) = model.as_ref().filter(|_| verify) {
            let scratch = ctx.work.join("gate");
            std::fs::create_dir_all(&scratch).map_err(NodeError::io("creating", &scratch))?;
            let system = ctx.params.str("system");
            let prompts = match ctx.inputs.get("prompts") {
                Some(p) => read_lines(p)?,
                None => Vec::new(),
            };
            let rendered: Vec<String> = prompts
                .iter()
                .map(|p| template.pair(system, p, "").map(|x| x.0).map_err(NodeError::ChatTemplate))
                .collect::<Result<_, _>>()?;
            let mut samples: Vec<String> = SAMPLES.iter().map(|s| s.to_string()).collect();
            samples.extend(rendered.iter().cloned());
            samples.push(stop_texts.iter().map(|t| format!("a{t}b")).collect::<String>());
            let wants_ppl = !matches!(file_type, FileType::F32 | FileType::F16 | FileType::BF16 | FileType::Q8_0);
            let perplexity = match (ctx.inputs.get("heldout"), &llama) {
                (Some(h), Some(l)) if wants_ppl && l.perplexity.is_some() => {
                    let text = scratch.join("heldout.txt");
                    std::fs::write(&text, heldout_text(h, &template, system)?).map_err(NodeError::io("writing", &text))?;
                    let reference = scratch.join("reference-f16.gguf");
                    write_gguf(model, tok_kv, FileType::F16, &name, &reference)?;
                    Some((text, reference))
                }
                _ => None,
            };
            let gate = Gate {
                source: model,
                tokenizer: &tk.tokenizer,
                gguf: &gguf,
                written: &written,
                file_type,
                samples,
                prompts: rendered,
                stop,
                greedy_tokens: ctx.params.int("greedy_tokens") as usize,
                perplexity,
                ppl_tolerance: match ctx.params.get("ppl_tolerance") {
                    crate::params::Value::Null => default_ppl_tolerance(file_type),
                    _ => ctx.params.float("ppl_tolerance"),
                },
                tie_margin: match ctx.params.get("greedy_tie_margin") {
                    crate::params::Value::Null => default_tie_margin(file_type),
                    _ => ctx.params.float("greedy_tie_margin") as f32,
                },
                llama,
                scratch,
            };
            let log = ctx.log.clone();
            checks = gate.run(|c| {
                if let Ok(mut f) = log.lock() {
                    use std::io::Write;
                    let _ = writeln!(f, "gate: {}: {}: {}", c.name, c.status, c.detail);
                }
            });
            // The F16 reference and the held-out text are only for the gate.
            let _ = std::fs::remove_dir_all(&gate.scratch);
        }
        ctx.progress.update(3, Some("verified".into()));

        let report = json!({
            "file": "model.gguf",
            "type": file_type.name(),
            "bytes": written.bytes,
            "tensor_types": written.types,
            "stop_tokens": stop_texts,
            "checks": checks,
        });
        let dir = ctx.output("report");
        std::fs::create_dir_all(&dir).map_err(NodeError::io("creating", &dir))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report).expect("json"))
            .map_err(NodeError::io("writing", &dir))?;
        let mut md = format!(
            "# GGUF export\n\n`model.gguf`: {}, {} bytes ({types}).\n\n| check | status | detail |\n|---|---|---|\n",
            file_type.name(),
            written.bytes
        );
        for c in &checks {
            md += &format!("| {} | {} | {} |\n", c.name, c.status, c.detail.replace('|', "\\|").replace('\n', " "));
        }
        std::fs::write(dir.join("report.md"), md).map_err(NodeError::io("writing", &dir))?;

        let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok()).collect();
        if !failed.is_empty() {
            let lines: Vec<String> = failed.iter().map(|c| format!("  {}: {}", c.name, c.detail)).collect();
            return Err(err(format!("the exported file failed the verification gate:\n{}", lines.join("\n"))));
        }
        let passed = checks.iter().filter(|c| c.status == "pass").count();
        ctx.set_summary(format!(
            "{} {:.1} MB; gate: {passed} passed, {} skipped",
            file_type.name(),
            written.bytes as f64 / 1e6,
            checks.len() - passed
        ));
        Ok(())
    }
}
