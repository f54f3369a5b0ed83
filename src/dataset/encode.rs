//! Encoding records into a token dataset, in parallel, in record order.
//!
//! 1. One worker per pool thread claims chunks of [`CHUNK`] records in order and encodes them into
//!    its own reused buffers, keeping its piece cache ([`Scratch`]) for the whole run.
//! 2. Each chunk's ids are written to the dataset file as soon as those of the chunks before it
//!    are ([`DatasetWriter`]), so the ids are never all in memory; the writer keeps only the few
//!    chunks that finish early and hands their buffers back for reuse.
//! 3. The first failure in record order is the one reported; the workers stop claiming chunks.
//!
//! A pair is the prompt and the completion of one record: the seed format
//! ([`template::seed_into`]) or a chat template, each tokenized without special tokens, the end
//! token appended unless the chat template already emitted it, the whole cut at `max_len`.
//! Labels are the completion's tokens; a record left with none is counted in [`Encoded::empty`]
//! (and dropped under `skip_empty`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::records::Record;
use super::DatasetWriter;
use crate::tokenizer::encoder::Encoder;
use crate::tokenizer::fast::Scratch;
use crate::tokenizer::template::{self, ChatTemplate};

/// How records become training pairs.
pub struct EncodeSpec<'a> {
    /// Text to ids.
    pub encoder: &'a Encoder,
    /// The chat template; `None` is the seed format.
    pub chat: Option<&'a ChatTemplate>,
    /// The system prompt given to the chat template.
    pub system: Option<&'a str>,
    /// The end-of-sentence token id appended to each completion.
    pub eos: u32,
    /// Records are cut to this many tokens.
    pub max_len: usize,
    /// Drop records with no trained token instead of keeping them.
    pub skip_empty: bool,
}

/// What encoding wrote, and the totals over the records written.
pub struct Encoded {
    /// The dataset, every record pushed; the caller finishes it.
    pub writer: DatasetWriter,
    /// 1-based numbers of the records with no trained token (kept, or dropped under `skip_empty`).
    pub empty: Vec<usize>,
    /// Records cut at `max_len`.
    pub truncated: usize,
    /// The longest record written, in tokens.
    pub max_seen: usize,
    /// Tokens that are labels.
    pub trained_tokens: u64,
    /// Tokens written.
    pub tokens: u64,
    /// Pieces that were not in a worker's cache (went through BPE), and their bytes.
    pub misses: (u64, u64),
}

/// Why encoding stopped: the first failure in record order.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A record lacks the instruction or the output field (or one is not a string).
    #[error("record {record} has no string instruction and output fields")]
    Fields {
        /// 1-based record number.
        record: usize,
    },
    /// The chat template failed on a record.
    #[error("record {record}: chat template: {source}")]
    Template {
        /// 1-based record number.
        record: usize,
        /// minijinja's error.
        source: minijinja::Error,
    },
    /// The tokenizer failed.
    #[error("tokenizing: {0}")]
    Tokenize(tokenizers::Error),
    /// Writing the dataset failed.
    #[error("writing the dataset: {0}")]
    Write(std::io::Error),
}

/// Records are encoded in chunks of this many, each chunk by one worker into its own buffers.
pub const CHUNK: usize = 256;

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
    error: Option<(usize, EncodeError)>,
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

    fn fail(&mut self, chunk: usize, e: EncodeError) {
        if self.error.as_ref().is_none_or(|(c, _)| chunk < *c) {
            self.error = Some((chunk, e));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Encodes chunk `c` (records `chunk`) into `part`'s buffers.
fn encode_chunk(p: &EncodeSpec, w: &mut Worker, c: usize, chunk: &[Record], mut part: Part) -> Result<Part, EncodeError> {
    let (max_len, skip_empty, eos) = (p.max_len, p.skip_empty, p.eos);
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
            return Err(EncodeError::Fields { record: n });
        };
        let inp = r.input.as_deref().unwrap_or("");
        match p.chat {
            None => template::seed_into(ins, inp, out, &mut w.prompt, &mut w.answer),
            Some(t) => {
                (w.prompt, w.answer) = t
                    .pair(p.system, &format!("{ins}{inp}"), out)
                    .map_err(|source| EncodeError::Template { record: n, source })?;
            }
        }
        let encoder = p.encoder;
        let start = part.ids.len();
        encoder.encode_into(&w.prompt, &mut w.scratch, &mut part.ids).map_err(EncodeError::Tokenize)?;
        let prompt_len = part.ids.len() - start;
        encoder.encode_into(&w.answer, &mut w.scratch, &mut part.ids).map_err(EncodeError::Tokenize)?;
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

/// Encodes `records` into `writer` on every thread of the current rayon pool (see the module
/// docs). On success every kept record has been pushed; the caller finishes the writer.
pub fn encode_records(spec: &EncodeSpec, records: &[Record], writer: DatasetWriter) -> Result<Encoded, EncodeError> {
    let total = records.len();
    let n_chunks = total.div_ceil(CHUNK);
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
            let part = encode_chunk(spec, &mut w, c, chunk, part);
            let mut sh = lock(&shared);
            match part {
                Ok(part) => {
                    sh.ready.insert(c, part);
                    if let Err(e) = sh.write_ready() {
                        sh.fail(c, EncodeError::Write(e));
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
    let sh = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some((_, e)) = sh.error {
        return Err(e);
    }
    let Collect { writer, empty, truncated, max_seen, trained_tokens, tokens, .. } = sh;
    Ok(Encoded {
        writer: writer.expect("the writer lives until the end"),
        empty,
        truncated,
        max_seen,
        trained_tokens,
        tokens,
        misses: misses.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}
