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
//! Labels are -100 on prompt tokens; everything is cut at `max_length`. A record left with no
//! trained token (a prompt longer than `max_length`) would silently train on nothing, so it is an
//! error by default, with a count; `on_empty: skip` drops such records instead.
//!
//! Key extras: the resolved end token, the digests of every tokenizer file read (a
//! `tokenizer_config.json` beside a `tokenizer.json` included), and a digest of the template
//! rendered on a probe conversation, so a change anywhere that alters the text reruns the node.
//!
//! How it runs (BENCHMARKS.md, section 2, has the numbers):
//! 1. the records file is parsed into borrowed `Record`s (only the three named fields) while
//!    the tokenizer loads on the other core ([`load_encoder`]: the ids-only fast encoder for
//!    byte-level BPE tokenizers, the general `tokenizers` path otherwise);
//! 2. one worker per pool thread claims chunks of `CHUNK` (256) records in order, and encodes them
//!    into its own reused buffers, keeping its piece cache for the whole run;
//! 3. each chunk's ids are written to the dataset file as soon as those of the chunks before it
//!    are ([`DatasetWriter`]), so the ids are never all in memory; the header, offsets and label
//!    flags follow at the end.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

use super::{Accepts, Extra, Extras, InputSpec, NodeError, NodeKind, OutputSpec, RunCtx};
use crate::dataset::DatasetWriter;
use crate::spec::params::{Default, ParamSpec, ParamType, Params};
use crate::tokenizer::fast::Scratch;
use crate::tokenizer::load::{load_encoder, EncoderBundle};
use crate::tokenizer::template::{self, ChatTemplate};

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
];

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
}

struct Prepared {
    bundle: EncoderBundle,
    eos: (u32, String),
    chat: Option<ChatTemplate>,
}

fn prepare(params: &Params, tokenizer: &Path) -> Result<Prepared, NodeError> {
    let bundle = load_encoder(tokenizer).map_err(|e| NodeError::Failed(e.to_string()))?;
    let eos = match params.str("eos_token") {
        Some(text) => {
            let id = bundle.encoder.token_to_id(text).ok_or_else(|| {
                NodeError::Failed(format!("param `eos_token`: `{text}` is not a token of {}", tokenizer.display()))
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
        return Err(NodeError::Failed(format!(
            "param `eos_token`: `{}` is the padding token, not the end-of-sentence token",
            eos.1
        )));
    }
    let chat = if params.str("format") == Some("chat_template") {
        let src = bundle.chat_template.as_deref().ok_or_else(|| {
            NodeError::Failed(format!("format `chat_template`: {} has no chat template; use `format: seed`", tokenizer.display()))
        })?;
        let bos = bundle.bos.as_ref().map(|b| b.1.as_str()).unwrap_or("");
        Some(ChatTemplate::new(src, bos, &eos.1).map_err(|e| NodeError::Failed(format!("chat template: {e}")))?)
    } else {
        None
    };
    Ok(Prepared { bundle, eos, chat })
}

impl Prepared {
    fn pair(&self, params: &Params, ins: &str, inp: &str, out: &str) -> Result<(String, String), String> {
        match &self.chat {
            None => Ok(template::seed(ins, inp, out)),
            Some(t) => t.pair(params.str("system"), &format!("{ins}{inp}"), out).map_err(|e| format!("chat template: {e}")),
        }
    }
}

/// One record: the three fields tokenize reads, borrowed from the records file where they have
/// no escapes. A field that is missing or not a string is `None`.
#[derive(Default)]
struct Record<'a> {
    instruction: Option<Cow<'a, str>>,
    input: Option<Cow<'a, str>>,
    output: Option<Cow<'a, str>>,
}

/// Reads a JSON array of records, keeping only the fields named `names` (instruction, input,
/// output); every other value is skipped without being built. A duplicate key's last value
/// wins and an element that is not an object has no fields, as with `serde_json::Value`.
struct Records<'n> {
    names: [&'n str; 3],
}

impl<'de, 'n> DeserializeSeed<'de> for Records<'n> {
    type Value = Vec<Record<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 'n> Visitor<'de> for Records<'n> {
    type Value = Vec<Record<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(r) = seq.next_element_seed(OneRecord { names: self.names })? {
            out.push(r);
        }
        Ok(out)
    }
}

struct OneRecord<'n> {
    names: [&'n str; 3],
}

impl<'de, 'n> DeserializeSeed<'de> for OneRecord<'n> {
    type Value = Record<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'n> Visitor<'de> for OneRecord<'n> {
    type Value = Record<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut r = Record::default();
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let key = key.unwrap_or_default();
            let hits = self.names.map(|n| n == key);
            if !hits.contains(&true) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let Text(value) = map.next_value::<Text<'de>>()?;
            for (slot, hit) in [&mut r.instruction, &mut r.input, &mut r.output].into_iter().zip(hits) {
                if hit {
                    slot.clone_from(&value);
                }
            }
        }
        Ok(r)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Record::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Record::default())
    }
}

/// A JSON value that is a string (borrowed where it has no escapes), or `None` for any other value.
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> de::Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(s.to_string()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(s))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Records are encoded in chunks of this many, each chunk by one worker into its own buffers.
const CHUNK: usize = 256;

/// One chunk's output.
#[derive(Default)]
struct Part {
    /// Kept records as (length, untrained prefix length).
    records: Vec<(u32, u32)>,
    ids: Vec<u32>,
    truncated: usize,
    /// 1-based numbers of the records with no trained token.
    empty: Vec<usize>,
    trained_tokens: u64,
    max_seen: usize,
}

impl Part {
    fn clear(&mut self) {
        self.records.clear();
        self.ids.clear();
        self.truncated = 0;
        self.empty.clear();
        self.trained_tokens = 0;
        self.max_seen = 0;
    }
}

/// Why a chunk stopped; the first in record order is reported.
enum ChunkError {
    Fields(usize),
    Template(usize, String),
    Tokenize(tokenizers::Error),
    Write(std::io::Error),
}

/// Per-worker state of the encode loop, kept from chunk to chunk (the piece cache above all).
#[derive(Default)]
struct Worker {
    scratch: Scratch,
    prompt: String,
    answer: String,
}

/// What the workers share: the file being written and the totals.
#[derive(Default)]
struct Collect {
    writer: Option<DatasetWriter>,
    /// Chunks done but not written yet (one before them is still being encoded).
    ready: BTreeMap<usize, Part>,
    next: usize,
    /// Buffers of written chunks, for reuse.
    spare: Vec<Part>,
    /// The failure of the lowest chunk that failed.
    error: Option<(usize, ChunkError)>,
    empty: Vec<usize>,
    truncated: usize,
    max_seen: usize,
    trained_tokens: u64,
    tokens: u64,
}

impl Collect {
    /// Writes the chunks that are next in order.
    fn write_ready(&mut self) -> std::io::Result<()> {
        while let Some(mut part) = self.ready.remove(&self.next) {
            self.writer.as_mut().expect("the writer lives until the end").push(&part.records, &part.ids)?;
            self.empty.extend_from_slice(&part.empty);
            self.truncated += part.truncated;
            self.max_seen = self.max_seen.max(part.max_seen);
            self.trained_tokens += part.trained_tokens;
            self.tokens += part.ids.len() as u64;
            self.next += 1;
            part.clear();
            self.spare.push(part);
        }
        Ok(())
    }

    fn fail(&mut self, chunk: usize, e: ChunkError) {
        if self.error.as_ref().is_none_or(|(c, _)| chunk < *c) {
            self.error = Some((chunk, e));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Encodes chunk `c` (records `chunk`) into `part`'s buffers.
fn encode_chunk(
    p: &Prepared,
    params: &Params,
    w: &mut Worker,
    c: usize,
    chunk: &[Record],
    mut part: Part,
) -> Result<Part, ChunkError> {
    let max_len = params.int("max_length") as usize;
    let skip_empty = params.str("on_empty") == Some("skip");
    let eos = p.eos.0;
    // Room for the chunk's ids, guessed from its text (about 2 bytes a token, at most
    // max_length a record), so the buffer rarely grows.
    let guess: usize = chunk
        .iter()
        .map(|r| {
            let bytes = [&r.instruction, &r.input, &r.output].iter().map(|f| f.as_ref().map_or(0, |t| t.len())).sum::<usize>();
            (bytes / 2 + 16).min(max_len)
        })
        .sum();
    part.ids.reserve(guess + max_len);
    for (k, r) in chunk.iter().enumerate() {
        let n = c * CHUNK + k + 1;
        let (Some(ins), Some(out)) = (r.instruction.as_deref(), r.output.as_deref()) else {
            return Err(ChunkError::Fields(n));
        };
        let inp = r.input.as_deref().unwrap_or("");
        match &p.chat {
            None => template::seed_into(ins, inp, out, &mut w.prompt, &mut w.answer),
            Some(t) => {
                (w.prompt, w.answer) = t
                    .pair(params.str("system"), &format!("{ins}{inp}"), out)
                    .map_err(|e| ChunkError::Template(n, format!("chat template: {e}")))?;
            }
        }
        let encoder = &p.bundle.encoder;
        let start = part.ids.len();
        encoder.encode_into(&w.prompt, &mut w.scratch, &mut part.ids).map_err(ChunkError::Tokenize)?;
        let prompt_len = part.ids.len() - start;
        encoder.encode_into(&w.answer, &mut w.scratch, &mut part.ids).map_err(ChunkError::Tokenize)?;
        if p.chat.is_none() || !part.ids[start + prompt_len..].contains(&eos) {
            part.ids.push(eos);
        }
        let mut len = part.ids.len() - start;
        if len > max_len {
            part.ids.truncate(start + max_len);
            len = max_len;
            part.truncated += 1;
        }
        let untrained = prompt_len.min(len);
        if untrained == len {
            part.empty.push(n);
            if skip_empty {
                part.ids.truncate(start);
                continue;
            }
        }
        part.max_seen = part.max_seen.max(len);
        part.trained_tokens += (len - untrained) as u64;
        part.records.push((len as u32, untrained as u32));
    }
    Ok(part)
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

    fn fingerprint_extra(&self, params: &Params, inputs: &BTreeMap<String, PathBuf>) -> Result<Extras, NodeError> {
        let tok = inputs.get("tokenizer").ok_or_else(|| NodeError::Failed("input `tokenizer` is not connected".into()))?;
        let p = prepare(params, tok)?;
        let mut extra = Extra::new();
        extra.insert("end token".into(), format!("{} {:?}", p.eos.0, p.eos.1));
        // The tokenizer input itself is already in the key by content; hash only the side files.
        for f in p.bundle.files.iter().filter(|f| *f != tok) {
            let name = f.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            let d = crate::hash::hash_file(f).map_err(NodeError::io("hashing", f))?;
            extra.insert(format!("tokenizer file {name}"), d);
        }
        let probe = p.pair(params, "PROBE-INSTRUCTION", "PROBE-INPUT", "PROBE-OUTPUT").map_err(NodeError::Failed)?;
        extra.insert(
            "rendered template".into(),
            blake3::hash(format!("{}\u{0}{}\u{0}{}", probe.0, probe.1, p.eos.1).as_bytes()).to_hex().to_string(),
        );
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
        // Parsing the records and loading the tokenizer are independent: one on each core.
        let (records, p) = rayon::join(
            || {
                let mut de = serde_json::Deserializer::from_str(&text);
                let r = Records { names: [fi, fx, fo] }.deserialize(&mut de).and_then(|r| de.end().map(|()| r));
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
            location: Some(crate::nodes::fix_json::json_position(&text, &e)),
            message: format!("expected a JSON array of records ({e}); run the file through a fix-json node first"),
        })?;
        let p = p?;
        ctx.progress.start(Some(records.len() as u64), "records");
        let max_len = params.int("max_length") as usize;
        let skip_empty = params.str("on_empty") == Some("skip");
        let total = records.len();
        let n_chunks = total.div_ceil(CHUNK);
        let out = ctx.output("dataset");
        let writer = DatasetWriter::create(&out, total).map_err(NodeError::io("writing", &out))?;
        // Workers claim chunks in order, so they finish nearly in order: the writer keeps only
        // the few that finish early, writes each chunk's ids as soon as those before it are
        // written, and hands its buffers back. The dataset's ids are never all in memory.
        let next_chunk = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let shared = Mutex::new(Collect { writer: Some(writer), ..Collect::default() });
        let misses = Mutex::new((0u64, 0u64));
        let work = || {
            let mut w = Worker::default();
            loop {
                let c = next_chunk.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks || stop.load(Ordering::Relaxed) {
                    break;
                }
                let chunk = &records[c * CHUNK..total.min((c + 1) * CHUNK)];
                let part = lock(&shared).spare.pop().unwrap_or_default();
                let part = encode_chunk(&p, params, &mut w, c, chunk, part);
                let mut sh = lock(&shared);
                match part {
                    Ok(part) => {
                        sh.ready.insert(c, part);
                        if let Err(e) = sh.write_ready() {
                            sh.fail(c, ChunkError::Write(e));
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        sh.fail(c, e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            let (n, bytes) = w.scratch.misses();
            let mut m = lock(&misses);
            (m.0, m.1) = (m.0 + n, m.1 + bytes);
        };
        rayon::scope(|s| {
            for _ in 0..rayon::current_num_threads() {
                s.spawn(|_| work());
            }
        });
        drop(records);
        let (n_miss, miss_bytes) = *lock(&misses);
        tracing::debug!(
            "{total} records encoded and their ids written at {:?}; {n_miss} pieces ({miss_bytes} bytes) went through BPE",
            t0.elapsed()
        );
        let sh = shared.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some((_, e)) = sh.error {
            return Err(match e {
                ChunkError::Fields(n) => NodeError::BadInput {
                    path: rec_path.clone(),
                    location: None,
                    message: format!("record {n} has no string fields `{fi}` and `{fo}`"),
                },
                ChunkError::Template(n, m) => NodeError::Failed(format!("record {n}: {m}")),
                ChunkError::Tokenize(e) => NodeError::Failed(format!("tokenizing: {e}")),
                ChunkError::Write(e) => NodeError::io("writing", &out)(e),
            });
        }
        let Collect { writer, empty, truncated, max_seen, trained_tokens, tokens, .. } = sh;
        let writer = writer.expect("the writer lives until the end");
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
        let n = writer.len();
        writer.finish().map_err(NodeError::io("writing", &out))?;
        tracing::debug!("dataset written at {:?}", t0.elapsed());
        let stats = Stats {
            records: n,
            tokens,
            trained_tokens,
            truncated_records: truncated,
            skipped_empty: if skip_empty { empty.len() } else { 0 },
            mean_length: if n == 0 { 0.0 } else { tokens as f64 / n as f64 },
            max_length_seen: max_seen,
            trained_fraction: if tokens == 0 { 0.0 } else { trained_tokens as f64 / tokens as f64 },
            max_length: max_len,
            format: params.str("format").unwrap_or("seed").into(),
            eos_id: p.eos.0,
            eos_token: p.eos.1.clone(),
        };
        let sp = ctx.output("stats");
        std::fs::write(&sp, serde_json::to_string_pretty(&stats).expect("stats serialise"))
            .map_err(NodeError::io("writing", &sp))?;
        ctx.set_summary(format!(
            "{n} records, {tokens} tokens ({:.0}% trained), {truncated} truncated",
            stats.trained_fraction * 100.0
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn parse<'a>(text: &'a str, names: [&str; 3]) -> Result<Vec<Record<'a>>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let r = Records { names }.deserialize(&mut de)?;
        de.end()?;
        Ok(r)
    }

    /// What the fields were when records were read as `serde_json::Value`s.
    fn by_value(text: &str, names: [&str; 3]) -> Vec<[Option<String>; 3]> {
        let v: Vec<Json> = serde_json::from_str(text).unwrap();
        v.iter().map(|r| names.map(|n| r.get(n).and_then(Json::as_str).map(String::from))).collect()
    }

    #[test]
    fn records_read_like_json_values() {
        let names = ["instruction", "input", "output"];
        let text = r#"[
            {"instruction": "plain", "input": "", "output": "ok"},
            {"instruction": "esc\"aped\n\u00e9", "output": "tab\there", "extra": {"deep": [1, {"x": null}]}},
            {"instruction": 3, "input": null, "output": ["not", "a", "string"]},
            {"instruction": "first", "instruction": "last wins", "output": "x", "output": 5},
            "not an object", 7, null, [1, 2], {},
            {"other": "x", "instruction": "中文", "input": "输入", "output": "答"}
        ]"#;
        let got: Vec<[Option<String>; 3]> = parse(text, names)
            .unwrap()
            .into_iter()
            .map(|r| [r.instruction, r.input, r.output].map(|f| f.map(|c| c.into_owned())))
            .collect();
        assert_eq!(got, by_value(text, names));
    }

    #[test]
    fn one_field_name_may_feed_two_fields() {
        let text = r#"[{"text": "t", "input": "i"}]"#;
        let r = parse(text, ["text", "input", "text"]).unwrap();
        assert_eq!(
            (r[0].instruction.as_deref(), r[0].input.as_deref(), r[0].output.as_deref()),
            (Some("t"), Some("i"), Some("t"))
        );
    }

    #[test]
    fn fields_without_escapes_are_borrowed() {
        let r = parse(r#"[{"instruction": "a", "output": "b\n"}]"#, ["instruction", "input", "output"]).unwrap();
        assert!(matches!(r[0].instruction, Some(Cow::Borrowed("a"))));
        assert!(matches!(r[0].output, Some(Cow::Owned(_))));
    }

    #[test]
    fn what_is_not_an_array_of_records_is_an_error_with_a_position() {
        let names = ["instruction", "input", "output"];
        for bad in ["{\"instruction\": \"a\"}\n{}", "[{\"a\": 1}", "[1] x", ""] {
            let e = parse(bad, names).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert!(e.line() >= 1, "{bad:?}: {e}");
        }
    }
}
