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
//!
//! | file | |
//! |---|---|
//! | [`split`] | the pre-tokenizer's splitters: hand-written GPT-2 and `\p{N}`, Oniguruma for the rest |
//! | [`bpe`] | the vocabulary, the merges and the byte alphabet; the merge loop |
//! | [`json`] | reading a `tokenizer.json`: only what the encoder needs, strings borrowed from the file |
//! | [`fxhash`] | the fast non-keyed hash of the encoder's maps |

pub mod bpe;
pub mod fxhash;
pub mod json;
pub mod split;

use aho_corasick::{AhoCorasick, MatchKind};
use serde::Deserialize;
use serde_json::Value as Json;
use tokenizers::Tokenizer;

pub use bpe::token_bytes;
use bpe::Bpe;
pub use fxhash::{FxHasher, FxMap};
use json::{resolve_merges, FileJson};
use split::{classify, onig_escape, Classes, Splitter, GPT2_REGEX};

/// The cache of pieces is cleared when it holds this many, to bound memory on huge inputs.
const CACHE_LIMIT: usize = 1 << 20;

/// Per-thread working memory for [`FastBpe::encode_into`]: the piece cache, the remembered
/// character classes, and buffers reused from one text to the next. Cheap to create, but its
/// cache is what makes encoding fast: keep one per worker thread for the whole job (rayon's
/// `map_init` would make one per split job, each starting cold).
#[derive(Default)]
pub struct Scratch {
    /// piece -> range of its ids in `arena`.
    pub(super) cache: FxMap<Box<str>, (u32, u32)>,
    pub(super) arena: Vec<u32>,
    /// Classes of the Basic Multilingual Plane, 0 where not asked yet (64 KiB, made on first use).
    pub(super) bmp: Vec<u8>,
    pub(super) astral: FxMap<u32, u8>,
    /// The segment being split: each character's byte offset and class, then a sentinel.
    pub(super) chars: Vec<(u32, u8)>,
    /// Pieces as ranges of indices into `chars`.
    pub(super) pieces: Vec<(usize, usize)>,
    pub(super) next: Vec<(usize, usize)>,
    pub(super) prefixed: String,
    pub(super) misses: u64,
    pub(super) miss_bytes: u64,
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
    /// The vocabulary and merges.
    bpe: Bpe,
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
        Some(FastBpe {
            added,
            added_ids,
            needs_classes: splitters.iter().any(|s| !matches!(s, Splitter::Onig(_))),
            splitters,
            classes: Classes::new()?,
            add_prefix_space,
            bpe: Bpe::new(vocab, merges, ignore_merges),
        })
    }

    /// The id of a token's text (added tokens first, then the vocabulary), as
    /// `Tokenizer::token_to_id`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids.get(token).copied().or_else(|| self.bpe.vocab.get(token).copied())
    }

    /// The text of a token id, as `Tokenizer::id_to_token` (a linear search; for the odd lookup).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        let added = self.added_ids.iter().find(|(_, &i)| i == id).map(|(t, _)| t.clone());
        added.or_else(|| self.bpe.vocab.iter().find(|(_, &i)| i == id).map(|(t, _)| t.to_string()))
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
        let ids = self.bpe.encode(piece)?;
        scratch.misses += 1;
        scratch.miss_bytes += piece.len() as u64;
        out.extend_from_slice(&ids);
        let at = scratch.arena.len() as u32;
        scratch.arena.extend_from_slice(&ids);
        scratch.cache.insert(piece.into(), (at, ids.len() as u32));
        Some(())
    }
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

    pub(super) fn fortune_texts() -> Vec<String> {
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
    fn token_lookups_match_the_general_tokenizer() {
        let t = tiny();
        let f = FastBpe::from_json(&std::fs::read(TINY).unwrap()).unwrap();
        for (text, id) in t.get_vocab(true) {
            assert_eq!(f.token_to_id(&text), Some(id), "{text}");
            assert_eq!(f.id_to_token(id), t.id_to_token(id), "{id}");
        }
        assert_eq!(f.token_to_id("no such token at all"), None);
    }

    proptest! {
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
