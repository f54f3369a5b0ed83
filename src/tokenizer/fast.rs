//! An ids-only encoder for byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM, DeepSeek...).
//!
//! The `tokenizers` crate's general `encode` builds a full `Encoding` (token strings, offsets,
//! alignment bookkeeping) that tokenize throws away; most of its time and allocations go there.
//! This encoder produces only the ids, with the same semantics, for the tokenizer shapes pipe
//! builds and the common Hugging Face byte-level ones:
//!
//! 1. added tokens (special or not, none with lstrip/rstrip/single_word) are split out first,
//!    leftmost-longest, in the two passes `tokenizers`' added vocabulary makes: tokens with
//!    `normalized: false` on the text, then tokens with `normalized: true` on what is left;
//! 2. each remaining segment is split by the pre-tokenizer's regexes (`Split`, `Isolated`, not
//!    inverted; or `ByteLevel` with its built-in GPT-2 regex), in order;
//! 3. each piece's bytes are mapped to GPT-2's printable alphabet and run through BPE merges
//!    (lowest rank first, leftmost among equals), with a per-thread cache of piece -> ids.
//!
//! Two regexes are so common that they have hand-written splitters: `\p{N}` (every digit on its
//! own) and the GPT-2 pattern (also in the variant without the final `|\s+`, which gives the
//! same pieces). They classify characters (letter, number, space, other) by asking Oniguruma
//! itself once per character and remembering the answer, so the classes are exactly the
//! regex engine's; the tests compare both splitters with Oniguruma on real and random text.
//! Every other pattern runs on Oniguruma, as `tokenizers` does.
//!
//! [`FastBpe::from_json`] builds the encoder straight from a `tokenizer.json` (no general
//! tokenizer, no JSON round trip); [`FastBpe::from_tokenizer`] from an already built tokenizer
//! (the GGUF path). Both return `None` for any other shape (a normalizer, truncation or
//! padding, byte fallback, dropout, added tokens with surprising ids, ...), and the caller keeps
//! the general path. Equality with the general path is tested on real and random text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use aho_corasick::{AhoCorasick, MatchKind};
use onig::Regex;
use rayon::prelude::*;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;
use tokenizers::Tokenizer;

/// The GPT-2 regex `ByteLevel` uses when `use_regex` is true.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The GPT-2 regex without its final `|\s+` (SmolLM, StarCoder): the same pieces, since a lone
/// whitespace character it leaves unmatched becomes a piece of its own anyway.
const GPT2_REGEX_NO_TAIL: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Each numeric character on its own (SmolLM, Qwen 2 style digit splitting).
const EACH_NUMBER_REGEX: &str = r"\p{N}";

/// The cache of pieces is cleared when it holds this many, to bound memory on huge inputs.
const CACHE_LIMIT: usize = 1 << 20;

/// FxHash (rustc's): a fast, non-keyed hash for the encoder's maps, whose keys are the
/// tokenizer's own strings and pieces of the text being encoded, not attacker-chosen lookups.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Merges by pair of token ids: (rank, id of the merged token).
type MergeMap = FxMap<(u32, u32), (u32, u32)>;

/// Character classes of the GPT-2 pattern; 0 means "not asked yet".
const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 3;
const OTHER: u8 = 4;

/// How one pre-tokenizer regex splits a piece (`Isolated`: matches and the gaps between them
/// both become pieces).
enum Splitter {
    /// `\p{N}`.
    EachNumber,
    /// The GPT-2 pattern, with or without its final `|\s+`.
    Gpt2,
    /// Any other pattern, on Oniguruma.
    Onig(Regex),
}

/// The regexes that classify characters (`\p{L}`, `\p{N}`, `\s`), asked once per character.
struct Classes {
    letter: Regex,
    number: Regex,
    space: Regex,
    ascii: [u8; 128],
}

impl Classes {
    fn new() -> Option<Classes> {
        let mut c = Classes {
            letter: Regex::new(r"\A\p{L}\z").ok()?,
            number: Regex::new(r"\A\p{N}\z").ok()?,
            space: Regex::new(r"\A\s\z").ok()?,
            ascii: [0; 128],
        };
        for b in 0..128u8 {
            c.ascii[b as usize] = c.ask(b as char);
        }
        Some(c)
    }

    fn ask(&self, ch: char) -> u8 {
        let mut buf = [0u8; 4];
        let s = ch.encode_utf8(&mut buf);
        if self.letter.find(s).is_some() {
            LETTER
        } else if self.number.find(s).is_some() {
            NUMBER
        } else if self.space.find(s).is_some() {
            SPACE
        } else {
            OTHER
        }
    }
}

/// Per-thread working memory for [`FastBpe::encode_into`]: the piece cache, the remembered
/// character classes, and buffers reused from one text to the next. Cheap to create, but its
/// cache is what makes encoding fast: keep one per worker thread for the whole job (rayon's
/// `map_init` would make one per split job, each starting cold).
#[derive(Default)]
pub struct Scratch {
    /// piece -> range of its ids in `arena`.
    cache: FxMap<Box<str>, (u32, u32)>,
    arena: Vec<u32>,
    /// Classes of the Basic Multilingual Plane, 0 where not asked yet (64 KiB, made on first use).
    bmp: Vec<u8>,
    astral: FxMap<u32, u8>,
    /// The segment being split: each character's byte offset and class, then a sentinel.
    chars: Vec<(u32, u8)>,
    /// Pieces as ranges of indices into `chars`.
    pieces: Vec<(usize, usize)>,
    next: Vec<(usize, usize)>,
    prefixed: String,
    misses: u64,
    miss_bytes: u64,
}

impl Scratch {
    /// A fresh scratch.
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Pieces that were not in the cache (and went through BPE), and bytes of those pieces.
    pub fn misses(&self) -> (u64, u64) {
        (self.misses, self.miss_bytes)
    }
}

/// An ids-only byte-level BPE encoder.
pub struct FastBpe {
    /// Added tokens: `[normalized: false, normalized: true]`, each an automaton and the ids of
    /// its patterns.
    added: [Option<(AhoCorasick, Vec<u32>)>; 2],
    /// Every added token's text and id, for [`FastBpe::token_to_id`].
    added_ids: FxMap<String, u32>,
    splitters: Vec<Splitter>,
    classes: Classes,
    /// Whether a hand-written splitter needs character classes.
    needs_classes: bool,
    add_prefix_space: bool,
    byte_char: [char; 256],
    /// The id of each byte's one-character token (`None`: not in the vocabulary).
    byte_id: [Option<u32>; 256],
    vocab: FxMap<Box<str>, u32>,
    merges: MergeMap,
    ignore_merges: bool,
}

/// The bytes a token stands for, as llama.cpp's `llama_token_to_piece` prints them: byte-level
/// BPE tokens mapped back through the GPT-2 byte alphabet; SentencePiece tokens with `▁` as a
/// space and `<0xNN>` as one byte. Added tokens (`<|im_end|>`) are their own text either way.
pub fn token_bytes(tok: &Tokenizer, id: u32) -> Option<Vec<u8>> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| bytes_to_unicode().iter().enumerate().map(|(b, c)| (*c, b as u8)).collect());
    let text = tok.id_to_token(id)?;
    if let Some(bytes) = text.chars().map(|c| table.get(&c).copied()).collect::<Option<Vec<u8>>>() {
        return Some(bytes);
    }
    if let Some(hex) = text.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
        if let Ok(b) = u8::from_str_radix(hex, 16) {
            return Some(vec![b]);
        }
    }
    Some(text.replace('\u{2581}', " ").into_bytes())
}

fn bytes_to_unicode() -> [char; 256] {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = [' '; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).expect("valid code point");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading a tokenizer.json: only the parts the encoder needs, strings borrowed from the file.

/// A JSON string, borrowed from the input where it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(s.to_string())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
struct FileJson<'a> {
    #[serde(default, borrow)]
    version: Option<Str<'a>>,
    #[serde(default)]
    truncation: Option<IgnoredAny>,
    #[serde(default)]
    padding: Option<IgnoredAny>,
    #[serde(default, borrow)]
    added_tokens: Vec<AddedJson<'a>>,
    #[serde(default)]
    normalizer: Option<IgnoredAny>,
    #[serde(default)]
    pre_tokenizer: Option<Json>,
    #[serde(default)]
    post_processor: Option<Json>,
    #[serde(default)]
    decoder: Option<Json>,
    #[serde(borrow)]
    model: ModelJson<'a>,
}

/// `tokenizers`' `AddedToken` (every field required, as there).
#[derive(Deserialize)]
struct AddedJson<'a> {
    id: u32,
    #[serde(borrow)]
    content: Str<'a>,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    #[allow(dead_code)]
    special: bool,
}

/// The `model` section.
struct ModelJson<'a> {
    kind: Option<Str<'a>>,
    dropout: Option<IgnoredAny>,
    continuing_subword_prefix: Option<IgnoredAny>,
    end_of_word_suffix: Option<IgnoredAny>,
    byte_fallback: Option<bool>,
    ignore_merges: Option<bool>,
    vocab: Option<FxMap<Box<str>, u32>>,
    merges: Option<MergesJson<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ModelJson<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ModelJson<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tokenizer model")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = ModelJson {
                    kind: None,
                    dropout: None,
                    continuing_subword_prefix: None,
                    end_of_word_suffix: None,
                    byte_fallback: None,
                    ignore_merges: None,
                    vocab: None,
                    merges: None,
                };
                while let Some(key) = m.next_key::<Str<'de>>()? {
                    match key.0.as_ref() {
                        "type" => out.kind = m.next_value()?,
                        "dropout" => out.dropout = m.next_value()?,
                        "continuing_subword_prefix" => out.continuing_subword_prefix = m.next_value()?,
                        "end_of_word_suffix" => out.end_of_word_suffix = m.next_value()?,
                        "byte_fallback" => out.byte_fallback = m.next_value()?,
                        "ignore_merges" => out.ignore_merges = m.next_value()?,
                        "vocab" => out.vocab = Some(m.next_value::<VocabJson>()?.0),
                        "merges" => out.merges = Some(m.next_value()?),
                        // Unused here (a character outside the vocabulary goes to the general
                        // path), but typed as `tokenizers` reads them.
                        "unk_token" => {
                            m.next_value::<Option<Str<'de>>>()?;
                        }
                        "fuse_unk" => {
                            m.next_value::<Option<bool>>()?;
                        }
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

struct VocabJson(FxMap<Box<str>, u32>);

impl<'de> Deserialize<'de> for VocabJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VocabJson;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of token -> id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut vocab = FxMap::with_capacity_and_hasher(m.size_hint().unwrap_or(1 << 15), Default::default());
                // Later duplicates win, as in `tokenizers`' map.
                while let Some((k, id)) = m.next_entry::<Str<'de>, u32>()? {
                    vocab.insert(Box::<str>::from(k.0.as_ref()), id);
                }
                Ok(VocabJson(vocab))
            }
        }
        d.deserialize_map(V)
    }
}

/// The merges as text, as `["a b", ...]` (legacy) or `[["a", "b"], ...]`.
struct MergesJson<'a> {
    all: Vec<OneMerge<'a>>,
}

/// (a, b) -> (rank, merged id) for the merges as `tokenizers` reads them: pairs ranked by
/// position, or legacy `"a b"` lines ranked by position among the lines that are not
/// `#version` comments; later duplicates win. `None` where pairs and lines are mixed, a line is
/// not two tokens, or a token is not in the vocabulary (`tokenizers` refuses such files).
///
/// Three vocabulary lookups a merge are most of the cost of loading a tokenizer, so chunks of
/// merges are resolved in parallel (the map is then filled in order).
fn resolve_merges(vocab: &FxMap<Box<str>, u32>, all: &[OneMerge]) -> Option<MergeMap> {
    resolve_merges_in_chunks(vocab, all, 4096)
}

fn resolve_merges_in_chunks(vocab: &FxMap<Box<str>, u32>, all: &[OneMerge], chunk_len: usize) -> Option<MergeMap> {
    let lines = all.iter().filter(|m| matches!(m, OneMerge::Line(_))).count();
    if lines != 0 && lines != all.len() {
        return None;
    }
    let comment = |m: &OneMerge| matches!(m, OneMerge::Line(l) if l.0.starts_with("#version"));
    // The rank of each chunk's first merge: its position, less the comments before it.
    let mut first_rank = Vec::with_capacity(all.len().div_ceil(chunk_len));
    let mut rank = 0;
    for chunk in all.chunks(chunk_len) {
        first_rank.push(rank);
        rank += chunk.iter().filter(|m| !comment(m)).count();
    }
    let resolved: Vec<Vec<_>> = all
        .par_chunks(chunk_len)
        .zip(first_rank)
        .map(|(chunk, mut rank)| {
            let mut joined = String::new();
            let mut out = Vec::with_capacity(chunk.len());
            for m in chunk.iter().filter(|m| !comment(m)) {
                let (a, b) = match m {
                    OneMerge::Pair(a, b) => (a.0.as_ref(), b.0.as_ref()),
                    OneMerge::Line(l) => {
                        let mut parts = l.0.split(' ');
                        let ab = (parts.next()?, parts.next()?);
                        if parts.next().is_some() {
                            return None;
                        }
                        ab
                    }
                };
                let (ia, ib) = (*vocab.get(a)?, *vocab.get(b)?);
                joined.clear();
                joined.push_str(a);
                joined.push_str(b);
                let new = *vocab.get(joined.as_str())?;
                out.push(((ia, ib), (rank as u32, new)));
                rank += 1;
            }
            Some(out)
        })
        .collect::<Option<_>>()?;
    let mut map = FxMap::with_capacity_and_hasher(all.len(), Default::default());
    for (pair, v) in resolved.into_iter().flatten() {
        map.insert(pair, v);
    }
    Some(map)
}

/// One merge as written in the file.
enum OneMerge<'a> {
    Pair(Str<'a>, Str<'a>),
    Line(Str<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for OneMerge<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneMerge<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge: \"a b\" or [\"a\", \"b\"]")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(OneMerge::Line(Str(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(OneMerge::Line(Str(Cow::Owned(s.to_string()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let a = s.next_element::<Str<'de>>()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b = s.next_element::<Str<'de>>()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if s.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(OneMerge::Pair(a, b))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for MergesJson<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MergesJson<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of merges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut m = MergesJson { all: Vec::with_capacity(1 << 16) };
                while let Some(one) = s.next_element::<OneMerge<'de>>()? {
                    m.all.push(one);
                }
                Ok(m)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

fn is_null(v: &Option<Json>) -> bool {
    v.as_ref().is_none_or(Json::is_null)
}

impl FastBpe {
    /// Builds the encoder straight from the bytes of a `tokenizer.json`, when the tokenizer has
    /// a supported shape and `tokenizers` would load it with the same ids. `None` means: use
    /// the general tokenizer (which also reports whatever is wrong with the file).
    pub fn from_json(bytes: &[u8]) -> Option<FastBpe> {
        Self::from_json_with(bytes, false)
    }

    /// Builds the encoder when `tok` has a supported shape (through its JSON form: `tokenizers`
    /// keeps the merges private).
    pub fn from_tokenizer(tok: &Tokenizer) -> Option<FastBpe> {
        // The serialized added tokens carry the ids the tokenizer really uses.
        Self::from_json_with(tok.to_string(false).ok()?.as_bytes(), true)
    }

    fn from_json_with(bytes: &[u8], trust_added_ids: bool) -> Option<FastBpe> {
        // One UTF-8 check of the whole file is cheaper than one per string.
        let f: FileJson = serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()?;
        if f.version.as_ref().is_some_and(|v| v.0 != "1.0")
            || f.truncation.is_some()
            || f.padding.is_some()
            || f.normalizer.is_some()
        {
            return None;
        }
        // The parts the encoder does not use must still be what `tokenizers` accepts, so that
        // a file it would refuse is not tokenized here.
        if !is_null(&f.post_processor) {
            tokenizers::PostProcessorWrapper::deserialize(f.post_processor.as_ref()?).ok()?;
        }
        if !is_null(&f.decoder) {
            tokenizers::DecoderWrapper::deserialize(f.decoder.as_ref()?).ok()?;
        }
        let pre = f.pre_tokenizer.as_ref().filter(|p| !p.is_null())?;
        tokenizers::PreTokenizerWrapper::deserialize(pre).ok()?;

        let model = f.model;
        if model.kind.as_ref().map(|k| k.0.as_ref()) != Some("BPE")
            || model.dropout.is_some()
            || model.byte_fallback.unwrap_or(false)
            || model.continuing_subword_prefix.is_some()
            || model.end_of_word_suffix.is_some()
        {
            return None;
        }
        let ignore_merges = model.ignore_merges.unwrap_or(false);
        let vocab = model.vocab?;
        let merges = resolve_merges(&vocab, &model.merges?.all)?;

        // Pre-tokenizer: regex splits, then a ByteLevel without its own regex; or a lone ByteLevel.
        let steps: Vec<&Json> = match pre.get("type")?.as_str()? {
            "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
            _ => vec![pre],
        };
        let (last, splits) = steps.split_last()?;
        if last.get("type")?.as_str()? != "ByteLevel" {
            return None;
        }
        let add_prefix_space = last.get("add_prefix_space").and_then(Json::as_bool).unwrap_or(false);
        // ByteLevel adds its prefix space to each piece the earlier splits made; only the lone
        // ByteLevel (one piece per segment) is supported.
        if add_prefix_space && !splits.is_empty() {
            return None;
        }
        let mut splitters = Vec::new();
        for s in splits {
            if s.get("type")?.as_str()? != "Split"
                || s.get("behavior")?.as_str()? != "Isolated"
                || s.get("invert").and_then(Json::as_bool).unwrap_or(false)
            {
                return None;
            }
            let pat = s.get("pattern")?;
            let re = match (pat.get("Regex").and_then(Json::as_str), pat.get("String").and_then(Json::as_str)) {
                (Some(r), _) => r.to_string(),
                (None, Some(lit)) => onig_escape(lit),
                _ => return None,
            };
            splitters.push(Splitter::new(&re)?);
        }
        if last.get("use_regex").and_then(Json::as_bool).unwrap_or(true) {
            splitters.push(Splitter::new(GPT2_REGEX)?);
        }

        // Added tokens, with the ids `tokenizers` gives them: the vocabulary's id for a text
        // already in it, else the next id after the vocabulary, in file order.
        let mut patterns: [(Vec<&str>, Vec<u32>); 2] = Default::default();
        let mut added_ids = FxMap::default();
        let mut next_id = vocab.len() as u32;
        for t in &f.added_tokens {
            if t.lstrip || t.rstrip || t.single_word || t.content.0.is_empty() {
                return None;
            }
            let content: &str = &t.content.0;
            if added_ids.contains_key(content) {
                return None;
            }
            let id = if trust_added_ids {
                t.id
            } else {
                match vocab.get(content) {
                    Some(&id) => id,
                    None => {
                        next_id += 1;
                        next_id - 1
                    }
                }
            };
            if id != t.id {
                return None;
            }
            added_ids.insert(content.to_string(), id);
            let stage = &mut patterns[usize::from(t.normalized)];
            stage.0.push(content);
            stage.1.push(id);
        }
        let mut added: [Option<(AhoCorasick, Vec<u32>)>; 2] = [None, None];
        for (slot, (pats, ids)) in added.iter_mut().zip(patterns) {
            if !pats.is_empty() {
                *slot = Some((AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&pats).ok()?, ids));
            }
        }
        let byte_char = bytes_to_unicode();
        let mut byte_id = [None; 256];
        for (id, c) in byte_id.iter_mut().zip(byte_char) {
            *id = vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied();
        }
        Some(FastBpe {
            added,
            added_ids,
            needs_classes: splitters.iter().any(|s| !matches!(s, Splitter::Onig(_))),
            splitters,
            classes: Classes::new()?,
            add_prefix_space,
            byte_char,
            byte_id,
            vocab,
            merges,
            ignore_merges,
        })
    }

    /// The id of a token's text (added tokens first, then the vocabulary), as
    /// `Tokenizer::token_to_id`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids.get(token).copied().or_else(|| self.vocab.get(token).copied())
    }

    /// The text of a token id, as `Tokenizer::id_to_token` (a linear search; for the odd lookup).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        let added = self.added_ids.iter().find(|(_, &i)| i == id).map(|(t, _)| t.clone());
        added.or_else(|| self.vocab.iter().find(|(_, &i)| i == id).map(|(t, _)| t.to_string()))
    }

    /// The ids of `text` (no special tokens added), or `None` where a character is outside the
    /// vocabulary (the caller then uses the general path).
    pub fn encode(&self, text: &str, scratch: &mut Scratch) -> Option<Vec<u32>> {
        let mut out = Vec::new();
        self.encode_into(text, scratch, &mut out)?;
        Some(out)
    }

    /// Appends the ids of `text` to `out`. On `None` (a character outside the vocabulary) `out`
    /// may hold part of them; the caller truncates it and uses the general path.
    pub fn encode_into(&self, text: &str, scratch: &mut Scratch, out: &mut Vec<u32>) -> Option<()> {
        if scratch.cache.len() > CACHE_LIMIT {
            scratch.cache.clear();
            scratch.arena.clear();
        }
        self.encode_added(0, text, scratch, out)
    }

    fn encode_added(&self, stage: usize, text: &str, scratch: &mut Scratch, out: &mut Vec<u32>) -> Option<()> {
        let Some(level) = self.added.get(stage) else {
            return self.encode_segment(text, scratch, out);
        };
        let Some((ac, ids)) = level else {
            return self.encode_added(stage + 1, text, scratch, out);
        };
        let mut at = 0;
        for m in ac.find_iter(text) {
            if m.start() > at {
                self.encode_added(stage + 1, &text[at..m.start()], scratch, out)?;
            }
            out.push(ids[m.pattern().as_usize()]);
            at = m.end();
        }
        if at < text.len() {
            self.encode_added(stage + 1, &text[at..], scratch, out)?;
        }
        Some(())
    }

    fn encode_segment(&self, seg: &str, scratch: &mut Scratch, out: &mut Vec<u32>) -> Option<()> {
        if seg.is_empty() {
            return Some(());
        }
        let mut prefixed = std::mem::take(&mut scratch.prefixed);
        let seg = if self.add_prefix_space && !seg.starts_with(' ') {
            prefixed.clear();
            prefixed.push(' ');
            prefixed.push_str(seg);
            prefixed.as_str()
        } else {
            seg
        };
        let r = self.encode_pieces(seg, scratch, out);
        scratch.prefixed = prefixed;
        r
    }

    fn encode_pieces(&self, seg: &str, scratch: &mut Scratch, out: &mut Vec<u32>) -> Option<()> {
        // Positions are kept as u32 (a segment of 4 GiB goes to the general path).
        if seg.len() >= u32::MAX as usize {
            return None;
        }
        let mut chars = std::mem::take(&mut scratch.chars);
        let mut pieces = std::mem::take(&mut scratch.pieces);
        let mut next = std::mem::take(&mut scratch.next);
        classify(seg, &self.classes, self.needs_classes, scratch, &mut chars);
        pieces.clear();
        pieces.push((0, chars.len() - 1));
        for sp in &self.splitters {
            next.clear();
            for &(a, b) in &pieces {
                sp.split(seg, &chars, a, b, &mut next);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        let mut r = Some(());
        for &(a, b) in &pieces {
            if self.encode_piece(&seg[chars[a].0 as usize..chars[b].0 as usize], scratch, out).is_none() {
                r = None;
                break;
            }
        }
        scratch.chars = chars;
        scratch.pieces = pieces;
        scratch.next = next;
        r
    }

    fn encode_piece(&self, piece: &str, scratch: &mut Scratch, out: &mut Vec<u32>) -> Option<()> {
        if let Some(&(at, n)) = scratch.cache.get(piece) {
            out.extend_from_slice(&scratch.arena[at as usize..(at + n) as usize]);
            return Some(());
        }
        let ids = self.bpe(piece)?;
        scratch.misses += 1;
        scratch.miss_bytes += piece.len() as u64;
        out.extend_from_slice(&ids);
        let at = scratch.arena.len() as u32;
        scratch.arena.extend_from_slice(&ids);
        scratch.cache.insert(piece.into(), (at, ids.len() as u32));
        Some(())
    }

    fn bpe(&self, piece: &str) -> Option<Vec<u32>> {
        if self.ignore_merges {
            let mapped: String = piece.bytes().map(|b| self.byte_char[b as usize]).collect();
            if let Some(&id) = self.vocab.get(mapped.as_str()) {
                return Some(vec![id]);
            }
        }
        let mut syms: Vec<u32> = piece.bytes().map(|b| self.byte_id[b as usize]).collect::<Option<_>>()?;
        // The rank and result of merging each adjacent pair (u32::MAX: no merge); after a
        // round only pairs next to a merged symbol are looked up again.
        const NONE: (u32, u32) = (u32::MAX, 0);
        let pair = |a: u32, b: u32| self.merges.get(&(a, b)).copied().unwrap_or(NONE);
        let mut ranks: Vec<(u32, u32)> = syms.windows(2).map(|w| pair(w[0], w[1])).collect();
        let (mut next_syms, mut next_ranks, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
        // The lowest rank names one pair; merge every leftmost-first, non-overlapping occurrence
        // of it, left to right, as a rank-ordered heap processes equal ranks by position.
        while let Some(&(rank, new)) = ranks.iter().min_by_key(|r| r.0).filter(|r| r.0 != u32::MAX) {
            next_syms.clear();
            fresh.clear();
            // For each output symbol: merged now, or the input index it was copied from.
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && ranks[i].0 == rank {
                    next_syms.push(new);
                    fresh.push(usize::MAX);
                    i += 2;
                } else {
                    next_syms.push(syms[i]);
                    fresh.push(i);
                    i += 1;
                }
            }
            next_ranks.clear();
            for j in 0..next_syms.len().saturating_sub(1) {
                next_ranks.push(match (fresh[j], fresh[j + 1]) {
                    // Two symbols that were neighbours before and are unchanged.
                    (a, b) if a != usize::MAX && b == a + 1 => ranks[a],
                    _ => pair(next_syms[j], next_syms[j + 1]),
                });
            }
            std::mem::swap(&mut syms, &mut next_syms);
            std::mem::swap(&mut ranks, &mut next_ranks);
        }
        Some(syms)
    }
}

impl Splitter {
    fn new(pattern: &str) -> Option<Splitter> {
        Some(match pattern {
            EACH_NUMBER_REGEX => Splitter::EachNumber,
            GPT2_REGEX | GPT2_REGEX_NO_TAIL => Splitter::Gpt2,
            _ => Splitter::Onig(Regex::new(pattern).ok()?),
        })
    }

    /// Splits the characters `a..b` of `seg` (`chars` from [`classify`]), pushing the pieces as
    /// ranges of character indices to `out`.
    fn split(&self, seg: &str, chars: &[(u32, u8)], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
        match self {
            Splitter::Onig(re) => {
                let base = chars[a].0 as usize;
                let text = &seg[base..chars[b].0 as usize];
                // Byte offset in `text` -> character index (matches end on character boundaries).
                let at = |p: usize| a + chars[a..=b].partition_point(|c| (c.0 as usize) < base + p);
                let mut last = a;
                for (s, e) in re.find_iter(text) {
                    let (s, e) = (at(s), at(e));
                    if s > last {
                        out.push((last, s));
                    }
                    if e > s {
                        out.push((s, e));
                    }
                    last = e;
                }
                if last < b {
                    out.push((last, b));
                }
            }
            Splitter::EachNumber => {
                let mut last = a;
                for (i, c) in chars.iter().enumerate().take(b).skip(a) {
                    if c.1 == NUMBER {
                        if i > last {
                            out.push((last, i));
                        }
                        out.push((i, i + 1));
                        last = i + 1;
                    }
                }
                if last < b {
                    out.push((last, b));
                }
            }
            Splitter::Gpt2 => gpt2_split(seg.as_bytes(), chars, a, b, out),
        }
    }
}

/// The class of `c` as Oniguruma sees it, remembered in `scratch`.
#[inline]
fn class_of(c: char, classes: &Classes, scratch: &mut Scratch) -> u8 {
    let u = c as u32;
    if u < 128 {
        return classes.ascii[u as usize];
    }
    if u < 0x10000 {
        if scratch.bmp.is_empty() {
            scratch.bmp = vec![0; 0x10000];
        }
        let k = &mut scratch.bmp[u as usize];
        if *k == 0 {
            *k = classes.ask(c);
        }
        return *k;
    }
    *scratch.astral.entry(u).or_insert_with(|| classes.ask(c))
}

/// Fills `chars` with each character's byte offset and class (0 unless `with_classes`), then
/// the end of `seg` as a sentinel with class 0.
fn classify(seg: &str, classes: &Classes, with_classes: bool, scratch: &mut Scratch, chars: &mut Vec<(u32, u8)>) {
    chars.clear();
    if with_classes {
        chars.extend(seg.char_indices().map(|(i, c)| (i as u32, class_of(c, classes, scratch))));
    } else {
        chars.extend(seg.char_indices().map(|(i, _)| (i as u32, 0)));
    }
    chars.push((seg.len() as u32, 0));
}

/// The GPT-2 pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// by hand on the characters `a..b`: at each position the first alternative that matches, as
/// a backtracking engine tries them.
fn gpt2_split(bytes: &[u8], chars: &[(u32, u8)], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    let mut i = a;
    while i < b {
        let (pos, cls) = chars[i];
        let pos = pos as usize;
        let byte = bytes[pos];
        // `'s|'t|'re|'ve|'m|'ll|'d`: all ASCII, so characters are bytes here.
        if byte == b'\'' && i + 1 < b {
            let second = |want: u8| i + 2 < b && bytes[pos + 2] == want;
            let k = match bytes[pos + 1] {
                b's' | b't' | b'm' | b'd' => 2,
                b'r' | b'v' if second(b'e') => 3,
                b'l' if second(b'l') => 3,
                _ => 0,
            };
            if k > 0 {
                out.push((i, i + k));
                i += k;
                continue;
            }
        }
        // ` ?X+` for X in letters, numbers, others: the optional space first.
        let run = if byte == b' ' && i + 1 < b {
            match chars[i + 1].1 {
                SPACE => None,
                k => Some((i + 1, k)),
            }
        } else if cls != SPACE {
            Some((i, cls))
        } else {
            None
        };
        if let Some((start, k)) = run {
            let mut j = start + 1;
            while j < b && chars[j].1 == k {
                j += 1;
            }
            out.push((i, j));
            i = j;
            continue;
        }
        // Whitespace: `\s+(?!\S)` takes the run but its last character when a non-space follows;
        // a lone whitespace character before a non-space is a piece on its own (`\s+`, or the
        // gap the pattern without `|\s+` leaves).
        let mut j = i + 1;
        while j < b && chars[j].1 == SPACE {
            j += 1;
        }
        let end = if j == b || j == i + 1 { j } else { j - 1 };
        out.push((i, end));
        i = end;
    }
}

fn onig_escape(lit: &str) -> String {
    let mut s = String::new();
    for c in lit.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-tokenizer/tokenizer.json");

    fn tiny() -> Tokenizer {
        Tokenizer::from_file(TINY).unwrap()
    }

    fn general(t: &Tokenizer, s: &str) -> Vec<u32> {
        t.encode_fast(s, false).unwrap().get_ids().to_vec()
    }

    fn fortune_texts() -> Vec<String> {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/data/heldout.jsonl")).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .flat_map(|r| ["instruction", "output"].map(|k| r[k].as_str().unwrap_or("").to_string()))
            .chain([
                "User: 你好\n\nAssistant: 老夫掐指一算<|im_end|>".to_string(),
                "  2024年 3.14159 don't   stop\t\n\n ok".to_string(),
                // Long pieces and repeated pairs, where the merge order matters.
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa abababababababababab eeeeeeeeee".to_string(),
                "一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十大师大师大师大师大师".to_string(),
                "x".repeat(300),
            ])
            .collect()
    }

    fn check(t: &Tokenizer, f: &FastBpe, texts: &[String]) {
        let mut scratch = Scratch::new();
        for s in texts {
            assert_eq!(f.encode(s, &mut scratch).unwrap(), general(t, s), "text {s:?}");
        }
    }

    #[test]
    fn matches_the_general_path_on_the_tiny_tokenizer() {
        let t = tiny();
        check(&t, &FastBpe::from_tokenizer(&t).expect("supported shape"), &fortune_texts());
        let f = FastBpe::from_json(&std::fs::read(TINY).unwrap()).expect("supported shape");
        check(&t, &f, &fortune_texts());
    }

    #[test]
    fn matches_the_general_path_on_the_default_models_tokenizer() {
        let Some(gguf) = std::env::var_os("PIPE_TEST_GGUF") else {
            assert!(std::env::var_os("PIPE_REQUIRE_MODELS").is_none(), "PIPE_TEST_GGUF must be set");
            return;
        };
        let file = crate::gguf::GgufFile::open(std::path::Path::new(&gguf)).unwrap();
        let t = crate::tokenizer::gguf::from_gguf(&file).unwrap().tokenizer;
        check(&t, &FastBpe::from_tokenizer(&t).expect("supported shape"), &fortune_texts());
        let f = FastBpe::from_json(t.to_string(true).unwrap().as_bytes()).expect("supported shape");
        check(&t, &f, &fortune_texts());
    }

    fn default_model() -> Option<&'static (Tokenizer, FastBpe)> {
        static T: std::sync::OnceLock<Option<(Tokenizer, FastBpe)>> = std::sync::OnceLock::new();
        T.get_or_init(|| {
            let gguf = std::env::var_os("PIPE_TEST_GGUF")?;
            let file = crate::gguf::GgufFile::open(std::path::Path::new(&gguf)).unwrap();
            let t = crate::tokenizer::gguf::from_gguf(&file).unwrap().tokenizer;
            let f = FastBpe::from_json(t.to_string(false).unwrap().as_bytes()).unwrap();
            Some((t, f))
        })
        .as_ref()
    }

    #[test]
    fn matches_llama_cpp_reference_ids_on_the_default_model() {
        let Some((_, f)) = default_model() else { return };
        let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2_tokens.json")).unwrap();
        let samples: Vec<Json> = serde_json::from_str(&json).unwrap();
        let mut scratch = Scratch::new();
        for s in &samples {
            let want: Vec<u32> = s["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(f.encode(s["text"].as_str().unwrap(), &mut scratch).unwrap(), want, "{s}");
        }
    }

    /// An edit of a tokenizer's JSON.
    type Edit = Box<dyn Fn(&mut Json)>;

    /// The tiny tokenizer with `edit` applied to its JSON.
    fn tiny_edited(edit: impl FnOnce(&mut Json)) -> (Tokenizer, Vec<u8>) {
        let mut v: Json = serde_json::from_slice(&std::fs::read(TINY).unwrap()).unwrap();
        edit(&mut v);
        let bytes = serde_json::to_vec(&v).unwrap();
        (Tokenizer::from_bytes(&bytes).unwrap(), bytes)
    }

    #[test]
    fn shapes_the_encoder_does_not_cover_are_left_to_the_general_path() {
        let cases: [(&str, Edit); 5] = [
            (
                "truncation",
                Box::new(|v| {
                    v["truncation"] =
                        serde_json::json!({"max_length": 4, "strategy": "LongestFirst", "stride": 0, "direction": "Right"})
                }),
            ),
            ("normalizer", Box::new(|v| v["normalizer"] = serde_json::json!({"type": "Lowercase"}))),
            ("dropout", Box::new(|v| v["model"]["dropout"] = serde_json::json!(0.5))),
            ("byte fallback", Box::new(|v| v["model"]["byte_fallback"] = serde_json::json!(true))),
            ("lstrip", Box::new(|v| v["added_tokens"][0]["lstrip"] = serde_json::json!(true))),
        ];
        for (what, edit) in cases {
            let (_, bytes) = tiny_edited(edit);
            assert!(FastBpe::from_json(&bytes).is_none(), "{what}");
        }
    }

    #[test]
    fn a_file_tokenizers_refuses_is_not_taken_by_the_fast_path() {
        let cases: [(&str, Edit); 4] = [
            ("unknown decoder", Box::new(|v| v["decoder"] = serde_json::json!({"type": "NoSuchDecoder"}))),
            ("unk_token not a string", Box::new(|v| v["model"]["unk_token"] = serde_json::json!(5))),
            ("fuse_unk not a bool", Box::new(|v| v["model"]["fuse_unk"] = serde_json::json!("yes"))),
            ("version", Box::new(|v| v["version"] = serde_json::json!("2.0"))),
        ];
        for (what, edit) in cases {
            let mut v: Json = serde_json::from_slice(&std::fs::read(TINY).unwrap()).unwrap();
            edit(&mut v);
            let bytes = serde_json::to_vec(&v).unwrap();
            assert!(Tokenizer::from_bytes(&bytes).is_err(), "{what}: tokenizers refuses it");
            assert!(FastBpe::from_json(&bytes).is_none(), "{what}");
        }
    }

    #[test]
    fn added_token_passes_follow_the_normalized_flag() {
        // `cd` (normalized: false) is split out before `abcdef` (normalized: true) is looked
        // for, so it wins inside it although leftmost-longest over both would pick `abcdef`.
        let (t, bytes) = tiny_edited(|v| {
            let mk = |id: u64, content: &str, normalized: bool| serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": normalized, "special": false});
            let toks = v["added_tokens"].as_array_mut().unwrap();
            toks.push(mk(1000, "abcdef", true));
            toks.push(mk(1001, "cd", false));
        });
        let texts = ["xxabcdefyy".to_string(), "abcdef".to_string(), "cd abcdef cd".to_string()];
        assert!(general(&t, "abcdef").contains(&1001), "the general path splits `cd` out first");
        check(&t, &FastBpe::from_json(&bytes).expect("supported shape"), &texts);
        check(&t, &FastBpe::from_tokenizer(&t).expect("supported shape"), &texts);
    }

    #[test]
    fn added_tokens_with_ids_tokenizers_would_not_give_are_left_to_the_general_path() {
        let (_, bytes) = tiny_edited(|v| {
            v["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({"id": 1500, "content": "zzz", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
        });
        assert!(FastBpe::from_json(&bytes).is_none());
    }

    #[test]
    fn merges_in_either_form_and_before_the_vocabulary_read_the_same() {
        let as_lines = |v: &mut Json| {
            let lines: Vec<Json> = v["model"]["merges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Json::from(format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap())))
                .collect();
            v["model"]["merges"] = Json::Array([vec![Json::from("#version: 0.2")], lines].concat());
        };
        let merges_first = |v: &mut Json| {
            let model = v["model"].as_object().unwrap().clone();
            let mut reordered = serde_json::Map::new();
            reordered.insert("merges".into(), model["merges"].clone());
            for (k, x) in model {
                reordered.entry(k).or_insert(x);
            }
            v["model"] = Json::Object(reordered);
        };
        let edits: [(&str, Edit); 3] = [
            ("legacy lines", Box::new(as_lines)),
            ("merges before vocab", Box::new(merges_first)),
            (
                "both",
                Box::new(move |v: &mut Json| {
                    as_lines(v);
                    merges_first(v);
                }),
            ),
        ];
        for (what, edit) in edits {
            let (t, bytes) = tiny_edited(edit);
            let f = FastBpe::from_json(&bytes).unwrap_or_else(|| panic!("{what}: supported shape"));
            check(&t, &f, &fortune_texts());
        }
        let refused = [Json::from("a b"), serde_json::json!(["zzzq", "b"])];
        for (what, merge) in ["pairs and lines mixed", "a merge of a token outside the vocabulary"].into_iter().zip(refused) {
            let mut v: Json = serde_json::from_slice(&std::fs::read(TINY).unwrap()).unwrap();
            v["model"]["merges"].as_array_mut().unwrap().push(merge);
            let bytes = serde_json::to_vec(&v).unwrap();
            assert!(Tokenizer::from_bytes(&bytes).is_err(), "{what}: tokenizers refuses it");
            assert!(FastBpe::from_json(&bytes).is_none(), "{what}");
        }
    }

    #[test]
    fn merges_resolve_the_same_in_any_chunking_with_comments_anywhere() {
        let v: Json = serde_json::from_slice(&std::fs::read(TINY).unwrap()).unwrap();
        let vocab: FxMap<Box<str>, u32> = v["model"]["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, id)| (k.as_str().into(), id.as_u64().unwrap() as u32))
            .collect();
        let mut texts: Vec<String> = v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
            .collect();
        for at in [0, 5, 300] {
            texts.insert(at, "#version: 0.2".into());
        }
        let all: Vec<OneMerge> = texts.iter().map(|t| OneMerge::Line(Str(Cow::Borrowed(t)))).collect();
        let whole = resolve_merges_in_chunks(&vocab, &all, 4096).unwrap();
        assert_eq!(whole.len(), texts.len() - 3);
        assert!(whole.values().any(|&(rank, _)| rank as usize == texts.len() - 4), "comments take no rank");
        for chunk_len in [1, 7, 64] {
            assert_eq!(resolve_merges_in_chunks(&vocab, &all, chunk_len).unwrap(), whole, "chunks of {chunk_len}");
        }
    }

    #[test]
    fn token_lookups_match_the_general_tokenizer() {
        let t = tiny();
        let f = FastBpe::from_json(&std::fs::read(TINY).unwrap()).unwrap();
        for (text, id) in t.get_vocab(true) {
            assert_eq!(f.token_to_id(&text), Some(id), "{text}");
            assert_eq!(f.id_to_token(id), t.id_to_token(id), "{id}");
        }
        assert_eq!(f.token_to_id("no such token at all"), None);
    }

    /// Pieces of `text` from a splitter and from Oniguruma with the same pattern.
    fn both_splits(pattern: &str, text: &str) -> (Vec<String>, Vec<String>) {
        let classes = Classes::new().unwrap();
        let mut scratch = Scratch::new();
        let fast = Splitter::new(pattern).unwrap();
        assert!(!matches!(fast, Splitter::Onig(_)), "{pattern} has a hand-written splitter");
        let slow = Splitter::Onig(Regex::new(pattern).unwrap());
        let mut chars = Vec::new();
        classify(text, &classes, true, &mut scratch, &mut chars);
        let run = |s: &Splitter| {
            let mut out = Vec::new();
            s.split(text, &chars, 0, chars.len() - 1, &mut out);
            out.into_iter().map(|(a, b)| text[chars[a].0 as usize..chars[b].0 as usize].to_string()).collect::<Vec<_>>()
        };
        (run(&fast), run(&slow))
    }

    #[test]
    fn hand_written_splitters_match_oniguruma_on_the_fortune_data() {
        for text in fortune_texts() {
            for pattern in [GPT2_REGEX, GPT2_REGEX_NO_TAIL, EACH_NUMBER_REGEX] {
                let (fast, slow) = both_splits(pattern, &text);
                assert_eq!(fast, slow, "{pattern} on {text:?}");
            }
        }
    }

    #[test]
    fn hand_written_splitters_match_oniguruma_on_tricky_text() {
        let texts = [
            "",
            " ",
            "  ",
            " 's",
            "''s",
            "'S",
            "x'll'd're've'm't's",
            "a  \n\n b",
            "\t\tx",
            "\n",
            "x\n",
            "x \u{a0}y",
            "\u{a0}\u{a0}",
            "1 2  3   x",
            " 1",
            "  1",
            "½ Ⅻ ٣",
            "é é",
            "e\u{301}",
            "😀 😀😀",
            "a\r\n\r\nb",
            "\u{3000}中文\u{3000}",
            "end   ",
            "end \n",
            "?? !!",
            " ?!",
            "x\u{2028}y",
            "\u{85}a",
        ];
        for text in texts {
            for pattern in [GPT2_REGEX, GPT2_REGEX_NO_TAIL, EACH_NUMBER_REGEX] {
                let (fast, slow) = both_splits(pattern, text);
                assert_eq!(fast, slow, "{pattern} on {text:?}");
            }
        }
    }

    #[test]
    fn character_classes_match_oniguruma_on_every_plane() {
        let classes = Classes::new().unwrap();
        let mut scratch = Scratch::new();
        let letter = Regex::new(r"\p{L}").unwrap();
        let space = Regex::new(r"\s").unwrap();
        // Every 7th code point (all of them takes a while unoptimised) plus the whole Latin-1 range.
        for u in (0..0x11_0000u32).step_by(7).chain(0..0x100) {
            let Some(c) = char::from_u32(u) else { continue };
            let s = c.to_string();
            let k = class_of(c, &classes, &mut scratch);
            assert_eq!(k == LETTER, letter.find(&s).is_some(), "{u:#x}");
            assert_eq!(k == SPACE, space.find(&s).is_some(), "{u:#x}");
        }
    }

    proptest! {
        #[test]
        fn hand_written_splitters_match_oniguruma(s in "[a-zA-Z0-9 '\\n\\t\\r.,!?一-龥😀-😆<|>_\u{a0}\u{85}\u{2028}\u{3000}\u{300}\u{660}-\u{669}\u{2160}\u{bd}sdtmlrev]{0,40}") {
            for pattern in [GPT2_REGEX, GPT2_REGEX_NO_TAIL, EACH_NUMBER_REGEX] {
                let (fast, slow) = both_splits(pattern, &s);
                prop_assert_eq!(fast, slow, "{}", pattern);
            }
        }

        #[test]
        fn random_text_encodes_like_the_general_path_on_the_default_model(s in "[a-zA-Z0-9 '\\n\\t.,!?一-龥😀-😆<|>_]{0,60}") {
            let Some((t, f)) = default_model() else { return Ok(()) };
            let mut scratch = Scratch::new();
            if let Some(ids) = f.encode(&s, &mut scratch) {
                prop_assert_eq!(ids, general(t, &s));
            }
        }

        #[test]
        fn random_text_encodes_like_the_general_path(s in "[a-zA-Z0-9 '\\n\\t.,!?一-龥😀-😆<|>_]{0,60}") {
            let t = tiny();
            let f = FastBpe::from_json(&std::fs::read(TINY).unwrap()).unwrap();
            let mut scratch = Scratch::new();
            if let Some(ids) = f.encode(&s, &mut scratch) {
                prop_assert_eq!(ids, general(&t, &s));
            }
        }
    }
}
