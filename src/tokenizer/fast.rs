//! An ids-only encoder for byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM, DeepSeek...).
//!
//! The `tokenizers` crate's general `encode` builds a full `Encoding` (token strings, offsets,
//! alignment bookkeeping) that tokenize throws away; most of its time and allocations go there.
//! This encoder produces only the ids, with the same semantics, for the tokenizer shapes pipe
//! builds and the common Hugging Face byte-level ones:
//!
//! 1. added tokens (special or not, none with lstrip/rstrip/single_word) are split out first,
//!    leftmost-longest, as `tokenizers`' added vocabulary does;
//! 2. each remaining segment is split by the pre-tokenizer's regexes (`Split`, `Isolated`, not
//!    inverted; or `ByteLevel` with its built-in GPT-2 regex), in order;
//! 3. each piece's bytes are mapped to GPT-2's printable alphabet and run through BPE merges
//!    (lowest rank first, leftmost among equals), with a per-thread cache of piece -> ids.
//!
//! [`FastBpe::from_tokenizer`] returns `None` for any other shape (a normalizer, a post-processor
//! that adds tokens when asked not to, byte fallback, dropout, ...), and the caller keeps the
//! general path. Equality with the general path is tested on real and random text.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use onig::Regex;
use serde_json::Value as Json;
use tokenizers::Tokenizer;

/// The GPT-2 regex `ByteLevel` uses when `use_regex` is true.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// An ids-only byte-level BPE encoder.
pub struct FastBpe {
    added: Option<(AhoCorasick, Vec<u32>)>,
    regexes: Vec<Regex>,
    add_prefix_space: bool,
    byte_char: [char; 256],
    vocab: HashMap<String, u32>,
    merges: HashMap<(u32, u32), (u32, u32)>,
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

impl FastBpe {
    /// Builds the encoder when `tok` has a supported shape.
    pub fn from_tokenizer(tok: &Tokenizer) -> Option<FastBpe> {
        let v: Json = serde_json::from_str(&tok.to_string(false).ok()?).ok()?;
        if !v.get("normalizer").is_none_or(Json::is_null) {
            return None;
        }
        let model = v.get("model")?;
        if model.get("type")?.as_str()? != "BPE"
            || !model.get("dropout").is_none_or(Json::is_null)
            || model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false)
            || !model.get("continuing_subword_prefix").is_none_or(Json::is_null)
            || !model.get("end_of_word_suffix").is_none_or(Json::is_null)
        {
            return None;
        }
        let ignore_merges = model.get("ignore_merges").and_then(Json::as_bool).unwrap_or(false);
        let vocab: HashMap<String, u32> = model
            .get("vocab")?
            .as_object()?
            .iter()
            .map(|(k, id)| Some((k.clone(), id.as_u64()? as u32)))
            .collect::<Option<_>>()?;
        let mut merges = HashMap::new();
        for (rank, m) in model.get("merges")?.as_array()?.iter().enumerate() {
            let (a, b) = match m {
                Json::String(s) => s.split_once(' ')?,
                Json::Array(p) if p.len() == 2 => (p[0].as_str()?, p[1].as_str()?),
                _ => return None,
            };
            let (ia, ib) = (*vocab.get(a)?, *vocab.get(b)?);
            let joined = *vocab.get(&format!("{a}{b}"))?;
            merges.entry((ia, ib)).or_insert((rank as u32, joined));
        }
        // Pre-tokenizer: regex splits, then a ByteLevel without its own regex; or a lone ByteLevel.
        let pre = v.get("pre_tokenizer")?;
        let steps: Vec<&Json> = match pre.get("type")?.as_str()? {
            "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
            _ => vec![pre],
        };
        let (last, splits) = steps.split_last()?;
        if last.get("type")?.as_str()? != "ByteLevel" {
            return None;
        }
        let mut regexes = Vec::new();
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
            regexes.push(Regex::new(&re).ok()?);
        }
        if last.get("use_regex").and_then(Json::as_bool).unwrap_or(true) {
            regexes.push(Regex::new(GPT2_REGEX).ok()?);
        }
        let add_prefix_space = last.get("add_prefix_space").and_then(Json::as_bool).unwrap_or(false);
        // Added tokens.
        let mut patterns = Vec::new();
        let mut ids = Vec::new();
        for t in v.get("added_tokens")?.as_array()? {
            if t.get("lstrip").and_then(Json::as_bool).unwrap_or(false)
                || t.get("rstrip").and_then(Json::as_bool).unwrap_or(false)
                || t.get("single_word").and_then(Json::as_bool).unwrap_or(false)
            {
                return None;
            }
            patterns.push(t.get("content")?.as_str()?.to_string());
            ids.push(t.get("id")?.as_u64()? as u32);
        }
        let added = if patterns.is_empty() {
            None
        } else {
            Some((AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).ok()?, ids))
        };
        Some(FastBpe { added, regexes, add_prefix_space, byte_char: bytes_to_unicode(), vocab, merges, ignore_merges })
    }

    /// The ids of `text` (no special tokens added), or `None` where a character is outside the
    /// vocabulary (the caller then uses the general path).
    pub fn encode(&self, text: &str, cache: &mut HashMap<String, Vec<u32>>) -> Option<Vec<u32>> {
        let mut out = Vec::new();
        let mut at = 0;
        if let Some((ac, ids)) = &self.added {
            for m in ac.find_iter(text) {
                self.encode_segment(&text[at..m.start()], cache, &mut out)?;
                out.push(ids[m.pattern().as_usize()]);
                at = m.end();
            }
        }
        self.encode_segment(&text[at..], cache, &mut out)?;
        Some(out)
    }

    fn encode_segment(&self, seg: &str, cache: &mut HashMap<String, Vec<u32>>, out: &mut Vec<u32>) -> Option<()> {
        if seg.is_empty() {
            return Some(());
        }
        let owned;
        let seg = if self.add_prefix_space && !seg.starts_with(' ') {
            owned = format!(" {seg}");
            owned.as_str()
        } else {
            seg
        };
        let mut pieces: Vec<&str> = vec![seg];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for (s, e) in re.find_iter(p) {
                    if s > last {
                        next.push(&p[last..s]);
                    }
                    if e > s {
                        next.push(&p[s..e]);
                    }
                    last = e;
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        for p in pieces {
            if let Some(ids) = cache.get(p) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(p)?;
            out.extend_from_slice(&ids);
            cache.insert(p.to_string(), ids);
        }
        Some(())
    }

    fn bpe(&self, piece: &str) -> Option<Vec<u32>> {
        let mapped: String = piece.bytes().map(|b| self.byte_char[b as usize]).collect();
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(&mapped) {
                return Some(vec![id]);
            }
        }
        let mut syms: Vec<u32> = Vec::with_capacity(mapped.len());
        let mut buf = [0u8; 4];
        for c in mapped.chars() {
            syms.push(*self.vocab.get(c.encode_utf8(&mut buf) as &str)?);
        }
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&(rank, new)) = self.merges.get(&(syms[i], syms[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, new));
                    }
                }
            }
            let Some((rank, _, new)) = best else { break };
            // Merge every leftmost-first, non-overlapping occurrence of this pair, left to right,
            // as a rank-ordered heap processes equal ranks by position.
            let pair = syms
                .iter()
                .enumerate()
                .find(|(i, _)| self.merges.get(&(syms[*i], *syms.get(*i + 1).unwrap_or(&u32::MAX))).is_some_and(|m| m.0 == rank))
                .map(|(i, _)| (syms[i], syms[i + 1]))?;
            let mut merged = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && (syms[i], syms[i + 1]) == pair {
                    merged.push(new);
                    i += 2;
                } else {
                    merged.push(syms[i]);
                    i += 1;
                }
            }
            syms = merged;
        }
        Some(syms)
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

    fn tiny() -> Tokenizer {
        Tokenizer::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-tokenizer/tokenizer.json")).unwrap()
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
            ])
            .collect()
    }

    fn check(t: &Tokenizer, texts: &[String]) {
        let f = FastBpe::from_tokenizer(t).expect("supported shape");
        let mut cache = HashMap::new();
        for s in texts {
            assert_eq!(f.encode(s, &mut cache).unwrap(), general(t, s), "text {s:?}");
        }
    }

    #[test]
    fn matches_the_general_path_on_the_tiny_tokenizer() {
        check(&tiny(), &fortune_texts());
    }

    #[test]
    fn matches_the_general_path_on_the_default_models_tokenizer() {
        let Some(gguf) = std::env::var_os("PIPE_TEST_GGUF") else {
            assert!(std::env::var_os("PIPE_REQUIRE_MODELS").is_none(), "PIPE_TEST_GGUF must be set");
            return;
        };
        let file = crate::gguf::GgufFile::open(std::path::Path::new(&gguf)).unwrap();
        let t = crate::tokenizer::gguf::from_gguf(&file).unwrap().tokenizer;
        check(&t, &fortune_texts());
    }

    fn default_model() -> Option<&'static (Tokenizer, FastBpe)> {
        static T: std::sync::OnceLock<Option<(Tokenizer, FastBpe)>> = std::sync::OnceLock::new();
        T.get_or_init(|| {
            let gguf = std::env::var_os("PIPE_TEST_GGUF")?;
            let file = crate::gguf::GgufFile::open(std::path::Path::new(&gguf)).unwrap();
            let t = crate::tokenizer::gguf::from_gguf(&file).unwrap().tokenizer;
            let f = FastBpe::from_tokenizer(&t).unwrap();
            Some((t, f))
        })
        .as_ref()
    }

    #[test]
    fn matches_llama_cpp_reference_ids_on_the_default_model() {
        let Some((_, f)) = default_model() else { return };
        let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm2_tokens.json")).unwrap();
        let samples: Vec<Json> = serde_json::from_str(&json).unwrap();
        let mut cache = HashMap::new();
        for s in &samples {
            let want: Vec<u32> = s["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(f.encode(s["text"].as_str().unwrap(), &mut cache).unwrap(), want, "{s}");
        }
    }

    proptest! {
        #[test]
        fn random_text_encodes_like_the_general_path_on_the_default_model(s in "[a-zA-Z0-9 '\\n\\t.,!?一-龥😀-😆<|>_]{0,60}") {
            let Some((t, f)) = default_model() else { return Ok(()) };
            let mut cache = HashMap::new();
            if let Some(ids) = f.encode(&s, &mut cache) {
                prop_assert_eq!(ids, general(t, &s));
            }
        }

        #[test]
        fn random_text_encodes_like_the_general_path(s in "[a-zA-Z0-9 '\\n\\t.,!?一-龥😀-😆<|>_]{0,60}") {
            let t = tiny();
            let f = FastBpe::from_tokenizer(&t).unwrap();
            let mut cache = HashMap::new();
            if let Some(ids) = f.encode(&s, &mut cache) {
                prop_assert_eq!(ids, general(&t, &s));
            }
        }
    }
}
