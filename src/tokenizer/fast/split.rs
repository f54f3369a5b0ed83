//! The pre-tokenizer's regex splits. Two regexes are so common that they have hand-written
//! splitters: `\p{N}` (every digit on its own) and the GPT-2 pattern (also without its final
//! `|\s+`, which gives the same pieces). They classify characters (letter, number, space, other)
//! by asking Oniguruma once per character and remembering the answer in the [`Scratch`], so the
//! classes are exactly the regex engine's. Every other pattern runs on Oniguruma.

use onig::Regex;

use super::Scratch;

/// The GPT-2 regex `ByteLevel` uses when `use_regex` is true.
pub(super) const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The GPT-2 regex without its final `|\s+` (SmolLM, StarCoder): the same pieces, since a lone
/// whitespace character it leaves unmatched becomes a piece of its own anyway.
pub(super) const GPT2_REGEX_NO_TAIL: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Each numeric character on its own (SmolLM, Qwen 2 style digit splitting).
pub(super) const EACH_NUMBER_REGEX: &str = r"\p{N}";

/// Character classes of the GPT-2 pattern; 0 means "not asked yet".
pub(super) const LETTER: u8 = 1;
pub(super) const NUMBER: u8 = 2;
pub(super) const SPACE: u8 = 3;
pub(super) const OTHER: u8 = 4;

/// How one pre-tokenizer regex splits a piece (`Isolated`: matches and the gaps between them
/// both become pieces).
pub(super) enum Splitter {
    /// `\p{N}`.
    EachNumber,
    /// The GPT-2 pattern, with or without its final `|\s+`.
    Gpt2,
    /// Any other pattern, on Oniguruma.
    Onig(Regex),
}

/// The regexes that classify characters (`\p{L}`, `\p{N}`, `\s`), asked once per character.
pub(super) struct Classes {
    letter: Regex,
    number: Regex,
    space: Regex,
    ascii: [u8; 128],
}

impl Classes {
    pub(super) fn new() -> Option<Classes> {
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

impl Splitter {
    pub(super) fn new(pattern: &str) -> Option<Splitter> {
        Some(match pattern {
            EACH_NUMBER_REGEX => Splitter::EachNumber,
            GPT2_REGEX | GPT2_REGEX_NO_TAIL => Splitter::Gpt2,
            _ => Splitter::Onig(Regex::new(pattern).ok()?),
        })
    }

    /// Splits the characters `a..b` of `seg` (`chars` from [`classify`]), pushing the pieces as
    /// ranges of character indices to `out`.
    pub(super) fn split(&self, seg: &str, chars: &[(u32, u8)], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
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
pub(super) fn class_of(c: char, classes: &Classes, scratch: &mut Scratch) -> u8 {
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
pub(super) fn classify(seg: &str, classes: &Classes, with_classes: bool, scratch: &mut Scratch, chars: &mut Vec<(u32, u8)>) {
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
pub(super) fn gpt2_split(bytes: &[u8], chars: &[(u32, u8)], a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
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

pub(super) fn onig_escape(lit: &str) -> String {
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
    use super::super::tests::fortune_texts;
    use super::*;
    use proptest::prelude::*;

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
    }
}
