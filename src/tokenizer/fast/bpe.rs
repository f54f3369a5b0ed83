//! Byte-level BPE: the vocabulary, the merges by pair of ids, and GPT-2's byte alphabet (each
//! byte a printable character); [`Bpe::encode`] runs the merges on one piece of text.

use std::collections::HashMap;

use tokenizers::Tokenizer;

use super::FxMap;

/// Merges by pair of token ids: (rank, id of the merged token).
pub(super) type MergeMap = FxMap<(u32, u32), (u32, u32)>;

/// A vocabulary with its merges, as the encoder applies them to one piece.
pub(super) struct Bpe {
    byte_char: [char; 256],
    /// The id of each byte's one-character token (`None`: not in the vocabulary).
    byte_id: [Option<u32>; 256],
    /// Token text -> id.
    pub(super) vocab: FxMap<Box<str>, u32>,
    merges: MergeMap,
    /// A piece that is a whole token is that token, whatever the merges say (Llama 3).
    ignore_merges: bool,
}

impl Bpe {
    /// The model of a vocabulary and its resolved merges.
    pub(super) fn new(vocab: FxMap<Box<str>, u32>, merges: MergeMap, ignore_merges: bool) -> Bpe {
        let byte_char = bytes_to_unicode();
        let mut byte_id = [None; 256];
        for (id, c) in byte_id.iter_mut().zip(byte_char) {
            *id = vocab.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied();
        }
        Bpe { byte_char, byte_id, vocab, merges, ignore_merges }
    }

    /// The ids of one piece (the pre-tokenizer's output), or `None` where a byte has no token.
    pub(super) fn encode(&self, piece: &str) -> Option<Vec<u32>> {
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
