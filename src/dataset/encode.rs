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
//!
//! A conversation ([`Items::Chats`]) is rendered whole with the chat template, which also gives
//! the byte range of each assistant turn ([`ChatTemplate::assistant_spans`]); the text is
//! tokenized once, with offsets, and a token is trained when its text lies in a trained turn
//! ([`TrainOn`]), so a token is never split at a turn's edge. No end token is appended: the
//! template's end-of-turn tokens are part of each assistant turn, and trained with it. A
//! conversation longer than `max_len` is cut after the last assistant turn that fits whole and
//! leaves a trained token; only when none does is it cut at `max_len` itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use std::ops::Range;

use super::records::Record;
use super::DatasetWriter;
use crate::tokenizer::encoder::Encoder;
use crate::tokenizer::fast::Scratch;
use crate::tokenizer::template::{self, ChatTemplate, Message};

/// Which tokens of a conversation are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOn {
    /// Every assistant turn.
    AllAssistant,
    /// The last assistant turn only.
    LastAssistant,
    /// Every token, the prompts' included.
    All,
}

impl TrainOn {
    /// The `train_on` param's choices.
    pub const NAMES: &'static [&'static str] = &["all_assistant", "last_assistant", "all"];

    /// The value of a `train_on` param (`None` for an unknown name).
    pub fn parse(name: &str) -> Option<TrainOn> {
        match name {
            "all_assistant" => Some(TrainOn::AllAssistant),
            "last_assistant" => Some(TrainOn::LastAssistant),
            "all" => Some(TrainOn::All),
            _ => None,
        }
    }
}

/// What is encoded.
#[derive(Clone, Copy)]
pub enum Items<'r, 'a> {
    /// Prompt/answer records (alpaca).
    Pairs(&'r [Record<'a>]),
    /// Conversations, rendered with [`EncodeSpec::chat`].
    Chats(&'r [Vec<Message>]),
}

impl Items<'_, '_> {
    fn len(&self) -> usize {
        match self {
            Items::Pairs(r) => r.len(),
            Items::Chats(c) => c.len(),
        }
    }
}

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
    /// Which tokens of a conversation are trained.
    pub train_on: TrainOn,
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
    /// A conversation has no assistant turn to train on.
    #[error("record {record}: the conversation has no assistant message to train on")]
    NoAssistant {
        /// 1-based record number.
        record: usize,
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
    /// Kept records as (length, number of mask runs).
    records: Vec<(u32, u32)>,
    /// The records' mask runs, untrained and trained in turn (see [`DatasetWriter`]).
    runs: Vec<u32>,
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
        self.runs.clear();
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
            self.writer.as_mut().expect("the writer lives until the end").push(&part.records, &part.runs, &part.ids)?;
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

/// Encodes chunk `c` (items `chunk`) into `part`'s buffers.
fn encode_chunk(p: &EncodeSpec, w: &mut Worker, c: usize, chunk: Items, part: Part) -> Result<Part, EncodeError> {
    match chunk {
        Items::Pairs(records) => encode_pairs(p, w, c, records, part),
        Items::Chats(chats) => encode_chats(p, c, chats, part),
    }
}

/// Encodes conversations (see the module docs).
fn encode_chats(p: &EncodeSpec, c: usize, chats: &[Vec<Message>], mut part: Part) -> Result<Part, EncodeError> {
    let Some(t) = p.chat else { unreachable!("conversations are encoded with a chat template") };
    let tokenizer = p.encoder.tokenizer().map_err(EncodeError::Tokenize)?;
    let mut flags = Vec::new();
    for (k, conv) in chats.iter().enumerate() {
        let n = c * CHUNK + k + 1;
        let (text, spans) = t.assistant_spans(conv).map_err(|source| EncodeError::Template { record: n, source })?;
        if spans.is_empty() {
            return Err(EncodeError::NoAssistant { record: n });
        }
        let enc = tokenizer.encode(text.as_str(), false).map_err(EncodeError::Tokenize)?;
        let (ids, offsets) = (enc.get_ids(), enc.get_offsets());
        let everything = [Range { start: 0, end: usize::MAX }];
        let trained: &[Range<usize>] = match p.train_on {
            TrainOn::AllAssistant => &spans,
            TrainOn::LastAssistant => &spans[spans.len() - 1..],
            TrainOn::All => &everything,
        };
        flags.clear();
        flags.extend(offsets.iter().map(|&(s, e)| trained.iter().any(|r| overlaps(s, e, r))));
        let mut len = ids.len();
        if len > p.max_len {
            // The end of each assistant turn, in tokens: the first token that starts at or after it.
            let whole = spans
                .iter()
                .map(|r| offsets.partition_point(|&(s, _)| s < r.end))
                .filter(|&end| end <= p.max_len && flags[..end].contains(&true))
                .max();
            len = whole.unwrap_or(p.max_len);
            part.truncated += 1;
        }
        let n_trained = flags[..len].iter().filter(|&&f| f).count();
        if n_trained == 0 {
            part.empty.push(n);
            if p.skip_empty {
                continue;
            }
        }
        part.ids.extend_from_slice(&ids[..len]);
        let before = part.runs.len();
        runs_of(&flags[..len], &mut part.runs);
        part.records.push((len as u32, (part.runs.len() - before) as u32));
        part.max_seen = part.max_seen.max(len);
        part.trained_tokens += n_trained as u64;
    }
    Ok(part)
}

/// Whether a token with byte offsets `s..e` is text of `r`. A token with empty offsets (the
/// tokenizer trimmed a space off it) counts where it starts.
fn overlaps(s: usize, e: usize, r: &Range<usize>) -> bool {
    if s == e {
        r.contains(&s)
    } else {
        s < r.end && e > r.start
    }
}

/// Appends the mask runs of `flags`: untrained and trained run lengths in turn, starting with
/// untrained (0 when the first token is trained).
fn runs_of(flags: &[bool], runs: &mut Vec<u32>) {
    let mut want = false;
    let mut i = 0;
    while i < flags.len() {
        let n = flags[i..].iter().take_while(|&&f| f == want).count();
        runs.push(n as u32);
        i += n;
        want = !want;
    }
}

/// Encodes prompt/answer records.
fn encode_pairs(p: &EncodeSpec, w: &mut Worker, c: usize, chunk: &[Record], mut part: Part) -> Result<Part, EncodeError> {
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
        part.records.push((len as u32, 2));
        part.runs.extend_from_slice(&[untrained as u32, (len - untrained) as u32]);
    }
    Ok(part)
}

/// Encodes `records` into `writer` on every thread of the current rayon pool (see the module
/// docs). On success every kept record has been pushed; the caller finishes the writer.
pub fn encode_records(spec: &EncodeSpec, records: Items, writer: DatasetWriter) -> Result<Encoded, EncodeError> {
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
            let range = c * CHUNK..total.min((c + 1) * CHUNK);
            let chunk = match records {
                Items::Pairs(r) => Items::Pairs(&r[range]),
                Items::Chats(r) => Items::Chats(&r[range]),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::TokenDataset;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-tokenizer/tokenizer.json");
    const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    /// Encodes conversations; returns the dataset and (truncated, empty).
    fn encode(chats: &[Vec<Message>], train_on: TrainOn, max_len: usize, skip_empty: bool) -> (TokenDataset, usize, Vec<usize>) {
        let tok = tokenizers::Tokenizer::from_file(TINY).unwrap();
        let encoder = Encoder::general(tok);
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let spec = EncodeSpec { encoder: &encoder, chat: Some(&t), system: None, eos: 2, max_len, skip_empty, train_on };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.bin");
        let writer = DatasetWriter::create(&path, chats.len()).unwrap();
        let e = encode_records(&spec, Items::Chats(chats), writer).unwrap();
        let (truncated, empty) = (e.truncated, e.empty.clone());
        e.writer.finish().unwrap();
        (TokenDataset::read(&path).unwrap(), truncated, empty)
    }

    /// The decoded text of the trained tokens of record `r`, one string per run.
    fn trained_text(ds: &TokenDataset, r: usize) -> Vec<String> {
        let tok = tokenizers::Tokenizer::from_file(TINY).unwrap();
        let (ids, labels) = ds.record(r);
        let mut out: Vec<Vec<u32>> = Vec::new();
        let mut prev = false;
        for (id, l) in ids.iter().zip(labels) {
            let t = l != -100;
            if t && !prev {
                out.push(Vec::new());
            }
            if t {
                out.last_mut().unwrap().push(*id);
            }
            prev = t;
        }
        out.iter().map(|ids| tok.decode(ids, false).unwrap()).collect()
    }

    fn two_turns() -> Vec<Message> {
        vec![
            msg("system", "Be brief."),
            msg("user", "你好"),
            msg("assistant", "您好！"),
            msg("user", "Bye?"),
            msg("assistant", "Farewell, friend."),
        ]
    }

    #[test]
    fn all_assistant_trains_every_assistant_turn_with_its_end_tokens() {
        let (ds, truncated, empty) = encode(&[two_turns()], TrainOn::AllAssistant, 1000, false);
        assert_eq!((truncated, empty), (0, vec![]));
        assert_eq!(trained_text(&ds, 0), ["您好！<|im_end|>\n", "Farewell, friend.<|im_end|>\n"]);
        let tok = tokenizers::Tokenizer::from_file(TINY).unwrap();
        let whole = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n您好！<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n<|im_start|>assistant\nFarewell, friend.<|im_end|>\n";
        assert_eq!(ds.record(0).0, tok.encode(whole, false).unwrap().get_ids(), "the ids are the whole rendered text's");
    }

    #[test]
    fn last_assistant_and_all_pick_their_tokens() {
        let (ds, _, _) = encode(&[two_turns()], TrainOn::LastAssistant, 1000, false);
        assert_eq!(trained_text(&ds, 0), ["Farewell, friend.<|im_end|>\n"]);
        let (ds, _, _) = encode(&[two_turns()], TrainOn::All, 1000, false);
        assert!(ds.record(0).1.iter().all(|&l| l != -100));
    }

    #[test]
    fn truncation_keeps_whole_turns_and_counts_conversations_cut_to_nothing() {
        let (full, _, _) = encode(&[two_turns()], TrainOn::AllAssistant, 1000, false);
        let n = full.record(0).0.len();
        // One token short of the whole: the cut falls after the first assistant turn.
        let (ds, truncated, empty) = encode(&[two_turns()], TrainOn::AllAssistant, n - 1, false);
        assert_eq!((truncated, empty), (1, vec![]));
        assert_eq!(trained_text(&ds, 0), ["您好！<|im_end|>\n"]);
        let first_turn_end = ds.record(0).0.len();
        assert_eq!(ds.record(0).0, &full.record(0).0[..first_turn_end]);
        // Only the last turn is trained and the cut falls before it: cut at max_len, nothing trained.
        let cut = first_turn_end + 3;
        let (ds, truncated, empty) = encode(&[two_turns(), two_turns()], TrainOn::LastAssistant, cut, false);
        assert_eq!((truncated, empty.clone()), (2, vec![1, 2]));
        assert_eq!(ds.record(0).0.len(), cut);
        let (ds, _, empty) = encode(&[two_turns()], TrainOn::LastAssistant, cut, true);
        assert_eq!((ds.len(), empty), (0, vec![1]));
        // Not even the first turn fits: a plain cut at max_len, trained up to there.
        let (ds, _, empty) = encode(&[two_turns()], TrainOn::AllAssistant, 20, false);
        assert_eq!(ds.record(0).0.len(), 20);
        assert!(empty.is_empty() == ds.record(0).1.iter().any(|&l| l != -100));
    }

    #[test]
    fn runs_alternate_starting_untrained() {
        let mut runs = Vec::new();
        runs_of(&[true, true, false, true], &mut runs);
        runs_of(&[false, false], &mut runs);
        runs_of(&[], &mut runs);
        assert_eq!(runs, [0, 2, 1, 1, 2]);
        assert!(overlaps(3, 3, &(3..5)) && !overlaps(5, 5, &(3..5)) && overlaps(2, 4, &(3..5)) && !overlaps(1, 3, &(3..5)));
    }
}
