//! Reading a `tokenizer.json`: only the parts the encoder needs, strings borrowed from the file
//! where they have no escapes. Fields the encoder does not use are still typed as `tokenizers`
//! reads them, so a file it would refuse is refused here too.

use std::borrow::Cow;
use std::fmt;

use rayon::prelude::*;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;

use super::bpe::MergeMap;
use super::FxMap;

/// A JSON string, borrowed from the input where it has no escapes.
pub(super) struct Str<'a>(pub(super) Cow<'a, str>);

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
pub(super) struct FileJson<'a> {
    #[serde(default, borrow)]
    pub(super) version: Option<Str<'a>>,
    #[serde(default)]
    pub(super) truncation: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) padding: Option<IgnoredAny>,
    #[serde(default, borrow)]
    pub(super) added_tokens: Vec<AddedJson<'a>>,
    #[serde(default)]
    pub(super) normalizer: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) pre_tokenizer: Option<Json>,
    #[serde(default)]
    pub(super) post_processor: Option<Json>,
    #[serde(default)]
    pub(super) decoder: Option<Json>,
    #[serde(borrow)]
    pub(super) model: ModelJson<'a>,
}

/// `tokenizers`' `AddedToken` (every field required, as there).
#[derive(Deserialize)]
pub(super) struct AddedJson<'a> {
    pub(super) id: u32,
    #[serde(borrow)]
    pub(super) content: Str<'a>,
    pub(super) single_word: bool,
    pub(super) lstrip: bool,
    pub(super) rstrip: bool,
    pub(super) normalized: bool,
    #[allow(dead_code)]
    pub(super) special: bool,
}

/// The `model` section.
pub(super) struct ModelJson<'a> {
    pub(super) kind: Option<Str<'a>>,
    pub(super) dropout: Option<IgnoredAny>,
    pub(super) continuing_subword_prefix: Option<IgnoredAny>,
    pub(super) end_of_word_suffix: Option<IgnoredAny>,
    pub(super) byte_fallback: Option<bool>,
    pub(super) ignore_merges: Option<bool>,
    pub(super) vocab: Option<FxMap<Box<str>, u32>>,
    pub(super) merges: Option<MergesJson<'a>>,
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
pub(super) struct MergesJson<'a> {
    pub(super) all: Vec<OneMerge<'a>>,
}

/// (a, b) -> (rank, merged id) for the merges as `tokenizers` reads them: pairs ranked by
/// position, or legacy `"a b"` lines ranked by position among the lines that are not
/// `#version` comments; later duplicates win. `None` where pairs and lines are mixed, a line is
/// not two tokens, or a token is not in the vocabulary (`tokenizers` refuses such files).
///
/// Three vocabulary lookups a merge are most of the cost of loading a tokenizer, so chunks of
/// merges are resolved in parallel (the map is then filled in order).
pub(super) fn resolve_merges(vocab: &FxMap<Box<str>, u32>, all: &[OneMerge]) -> Option<MergeMap> {
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
pub(super) enum OneMerge<'a> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-tokenizer/tokenizer.json");

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
}
